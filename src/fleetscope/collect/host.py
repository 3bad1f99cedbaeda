"""Host collector: CPU utilization, memory and load average of a node, read from its ``/proc``.

:class:`HostCollector` reads a node root directory ``root`` (``/`` on a real node, a fake tree in
tests and in the simulator) and emits, with labels ``{node}``:

====================================  ==========================================================
metric                                source → unit conversion
====================================  ==========================================================
``fleet_node_cpu_utilization_ratio``  ``psutil.cpu_times()`` (the ``cpu`` line of ``/proc/stat``,
                                      proc(5)): non-idle share of the CPU time that elapsed
                                      between this collect and the previous one, 0–1
``fleet_node_memory_used_bytes``      ``psutil.virtual_memory()``: ``total − available``
                                      (``MemTotal − MemAvailable`` of ``/proc/meminfo``, bytes)
``fleet_node_memory_total_bytes``     ``psutil.virtual_memory().total`` (``MemTotal``, bytes)
``fleet_node_load1``                  first field of ``/proc/loadavg`` (one-minute load average)
====================================  ==========================================================

Conventions:

- **CPU utilization is a delta.** ``/proc/stat`` counts the time all CPUs spent in each state since
  boot. The ratio is ``(Δtotal − Δidle) / Δtotal`` between two consecutive collects, computed as
  psutil's ``cpu_percent`` and ``top`` do: ``Δidle = Δidle + Δiowait`` (a CPU waiting for I/O does
  nothing), ``total`` excludes ``guest`` and ``guest_nice`` (the kernel already counts them in
  ``user`` and ``nice``), and a field that went backwards counts as 0 (``iowait`` can, on some
  kernels). The first collect only records the reading and yields no CPU sample; so does a
  collect over which no CPU time elapsed (``Δtotal = 0``). A failed read keeps the last good
  reading, so the next sample covers the whole gap.
- **Another node's /proc.** psutil reads ``psutil.PROCFS_PATH`` (its documented knob for a
  different ``/proc``) at every call of ``cpu_times`` and ``virtual_memory``. :func:`procfs` sets
  it to ``root/proc`` for the duration of the calls under a module-level lock and restores it, so
  several collectors for several fake nodes can run in one process (the simulator). Other code in
  the process that calls psutil's system-wide functions with a non-default root should use
  :func:`procfs` too. ``psutil.getloadavg`` is ``os.getloadavg`` on Linux, which ignores
  ``PROCFS_PATH``, so ``root/proc/loadavg`` is read here directly.
- **Missing values.** A file that cannot be read or parsed costs only its own samples (logged
  once). When none of ``stat``, ``meminfo`` and ``loadavg`` can be read, ``collect`` yields
  nothing and ``init_error`` says why (``None`` again once any of them reads).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil

from fleetscope.collect import Sample

__all__ = ["CPUTimes", "HostCollector", "cpu_busy_ratio", "procfs", "read_loadavg"]

log = logging.getLogger(__name__)

_PROCFS_LOCK = threading.Lock()
_T = TypeVar("_T")

# Reading errors of one /proc file: vanished or unreadable (OSError), short or non-numeric lines
# (psutil builds its named tuples positionally: TypeError, ValueError), a missing key (KeyError).
_READ_ERRORS = (OSError, ValueError, TypeError, IndexError, KeyError)


@contextmanager
def procfs(root: Path | str) -> Iterator[None]:
    """Point psutil's system-wide readers at ``root/proc`` while the block runs.

    Holds a module-level lock for the whole block (so keep it short) and restores the previous
    ``psutil.PROCFS_PATH`` on exit, also when the block raises.
    """
    path = str(Path(root) / "proc")
    with _PROCFS_LOCK:
        previous = psutil.PROCFS_PATH
        psutil.PROCFS_PATH = path
        try:
            yield
        finally:
            psutil.PROCFS_PATH = previous


class CPUTimes:
    """Cumulative CPU seconds since boot per state, summed over all CPUs (/proc/stat ``cpu``).

    Built from a ``psutil.cpu_times()`` named tuple: ``fields`` maps each state (``user``,
    ``nice``, ``system``, ``idle``, ``iowait`` … ``guest_nice``) to seconds.
    """

    def __init__(self, times: Any) -> None:
        self.fields: dict[str, float] = {
            name: float(getattr(times, name)) for name in times._fields
        }


def cpu_busy_ratio(before: CPUTimes, after: CPUTimes) -> float | None:
    """Non-idle share of the CPU time between two readings; ``None`` when none elapsed.

    Each state's delta is clamped at 0 (psutil and procps ``top`` do the same).
    """
    delta = {
        name: max(0.0, value - before.fields.get(name, value))
        for name, value in after.fields.items()
    }
    total = sum(delta.values()) - delta.get("guest", 0.0) - delta.get("guest_nice", 0.0)
    if total <= 0:
        return None
    idle = delta.get("idle", 0.0) + delta.get("iowait", 0.0)
    return min(1.0, max(0.0, (total - idle) / total))


def read_loadavg(root: Path | str = "/") -> float:
    """The one-minute load average from ``root/proc/loadavg``.

    Raises ``OSError`` when the file cannot be read and ``ValueError`` when it is malformed.
    """
    text = (Path(root) / "proc" / "loadavg").read_text(encoding="ascii", errors="replace")
    fields = text.split()
    if not fields:
        raise ValueError("empty loadavg")
    value = float(fields[0])
    if not value >= 0:  # also rejects nan
        raise ValueError(f"bad load average {fields[0]!r}")
    return value


class HostCollector:
    """Emits the host metrics of one node from ``root/proc`` (see the module docstring)."""

    name = "host"

    def __init__(self, node: str, root: Path | str = "/") -> None:
        self.node = node
        self.root = Path(root)
        self.init_error: str | None = None
        self._previous_cpu: CPUTimes | None = None
        self._logged: set[str] = set()

    def collect(self) -> list[Sample]:
        labels = {"node": self.node}
        out: list[Sample] = []
        errors: list[str] = []
        with procfs(self.root):
            cpu = self._read("stat", psutil.cpu_times, errors)
            memory = self._read("meminfo", _virtual_memory, errors)
        load = self._read("loadavg", lambda: read_loadavg(self.root), errors)

        if cpu is not None:
            now = CPUTimes(cpu)
            if self._previous_cpu is not None:
                ratio = cpu_busy_ratio(self._previous_cpu, now)
                if ratio is not None:
                    out.append(Sample("fleet_node_cpu_utilization_ratio", labels, ratio))
            self._previous_cpu = now
        if memory is not None:
            total = float(memory.total)
            used = total - float(memory.available)
            if total > 0 and 0 <= used <= total:
                out.append(Sample("fleet_node_memory_used_bytes", labels, used))
                out.append(Sample("fleet_node_memory_total_bytes", labels, total))
        if load is not None:
            out.append(Sample("fleet_node_load1", labels, load))

        if len(errors) == 3:
            self.init_error = f"cannot read {self.root / 'proc'}: " + "; ".join(errors)
            self._log_once(self.init_error)
        else:
            self.init_error = None
        return out

    def _read(self, what: str, read: Callable[[], _T], errors: list[str]) -> _T | None:
        """``read()``, or ``None`` after recording and logging (once) why it failed."""
        try:
            return read()
        except _READ_ERRORS as err:
            message = f"{what}: {type(err).__name__}: {err}"
            errors.append(message)
            self._log_once(f"cannot read {self.root / 'proc'}/{message}")
            return None

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s on %s (logged once)", message, self.node)


def _virtual_memory() -> Any:
    """``psutil.virtual_memory()`` without its warning about fields this collector does not use.

    psutil warns (``RuntimeWarning``) when ``/proc/meminfo`` lacks ``Buffers``, ``Cached``,
    ``Shmem`` …; only ``MemTotal`` and ``MemAvailable`` matter here (a missing ``MemTotal`` raises
    ``KeyError``; a missing ``MemAvailable`` (kernels before 3.14) is estimated by psutil).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return psutil.virtual_memory()
