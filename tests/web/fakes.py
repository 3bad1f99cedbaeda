"""A table-driven fake :class:`~fleetscope.query.Engine` for tests of the Prometheus API.

It evaluates nothing: instant and range queries are looked up by their exact text, series and
label calls select from a list of label sets by bare metric name. It records every call, and can
be held at a gate to test timeouts.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleetscope.query import QueryError, QueryResult
from fleetscope.store import Series

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

Instant = Callable[[int], QueryResult]  # t_ms → result
Range = Callable[[int, int, int], QueryResult]  # start_ms, end_ms, step_ms → result


def series(labels: dict[str, str], points: Sequence[tuple[int, float]]) -> Series:
    """A :class:`Series` from ``(t_ms, value)`` pairs."""
    return Series(
        dict(labels),
        np.asarray([t for t, _ in points], np.int64),
        np.asarray([v for _, v in points], np.float64),
    )


def unknown(query: str) -> QueryError:
    return QueryError("bad_data", f"1:1: parse error: the fake knows no query {query!r}")


@dataclass
class FakeEngine:
    """Answers from tables; raises what a table holds when it holds an exception."""

    instant_results: dict[str, Instant | Exception] = field(default_factory=dict)
    range_results: dict[str, Range | Exception] = field(default_factory=dict)
    label_sets: list[dict[str, str]] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    gate: threading.Event | None = None  # when given, every call waits (≤ 10 s) for it

    def _wait(self) -> None:
        if self.gate is not None:
            self.gate.wait(10)

    def instant(self, query: str, t_ms: int) -> QueryResult:
        self.calls.append(("instant", query, t_ms))
        self._wait()
        answer = self.instant_results.get(query, unknown(query))
        if isinstance(answer, Exception):
            raise answer
        return answer(t_ms)

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> QueryResult:
        self.calls.append(("range", query, start_ms, end_ms, step_ms))
        self._wait()
        answer = self.range_results.get(query, unknown(query))
        if isinstance(answer, Exception):
            raise answer
        return answer(start_ms, end_ms, step_ms)

    def _select(self, match: Sequence[str]) -> list[dict[str, str]]:
        for m in match:
            if not _METRIC_NAME.match(m):
                raise QueryError("bad_data", f"1:1: parse error: unexpected character in {m!r}")
        names = set(match)
        return [ls for ls in self.label_sets if not names or ls.get("__name__") in names]

    def series(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[dict[str, str]]:
        self.calls.append(("series", list(match), start_ms, end_ms))
        return self._select(match)

    def label_names(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        self.calls.append(("label_names", list(match), start_ms, end_ms))
        return sorted({name for ls in self._select(match) for name in ls})

    def label_values(
        self, name: str, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        self.calls.append(("label_values", name, list(match), start_ms, end_ms))
        return sorted({ls[name] for ls in self._select(match) if name in ls})
