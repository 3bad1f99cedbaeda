"""Agent-side sources: the one small interface every collector implements.

A :class:`Collector` reads one source on the node (NVML, prolog files, /proc, sysfs …) and
yields :class:`Sample` values. The contract every collector keeps:

- **Omit what cannot be read.** An unknown value is ``None`` inside the collector and is simply
  not yielded: never -1, 0, NaN or a placeholder string. A per-source ``…_up`` gauge (e.g.
  ``fleet_gpu_up``) tells "absent" from "broken".
- **Never raise for one bad device or field.** A failing GPU, file or field costs only its own
  samples; the others are still yielded. ``collect`` may raise only when the whole source is
  unusable in a way the collector cannot express (the agent counts and logs that, and still runs
  the other collectors).
- **Say when the whole source is missing.** A collector whose source cannot be opened at all
  (no NVML library, no driver) yields nothing and sets an ``init_error`` attribute to the reason
  (``None`` once it works); the agent turns that into ``fleet_agent_collector_up 0``, so a node
  without GPUs' libraries is told apart from a node with no GPUs.
- **Base units, canonical names.** ``name`` is a canonical metric name from ``catalog.py``
  (DESIGN.md "Canonical metrics"); values are in base units: ratios 0–1, bytes, seconds, watts,
  joules, hertz, celsius. Counters end in ``_total`` and are cumulative.
- **No timestamps.** A sample is one reading at collection time; the agent stamps every sample of
  a cycle with the same millisecond timestamp.

Collectors are not required to be thread-safe: the agent calls ``collect`` from one thread, one
call at a time. A collector may keep state between calls (capability caches, integrated counters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Collector", "Sample"]


@dataclass(frozen=True)
class Sample:
    """One reading at collection time; the agent stamps the time.

    ``labels`` excludes ``__name__`` (that is ``name``); ``value`` is in the metric's base unit.
    """

    name: str  # canonical metric name
    labels: Mapping[str, str]
    value: float


class Collector(Protocol):
    """A source of samples (see the module docstring for the contract)."""

    name: str

    def collect(self) -> Iterable[Sample]:
        """The current readings; never raises for one bad device or field."""
        ...
