"""Query stage: PromQL in, Prometheus-shaped results out, whichever backend answers.

:class:`Engine` is the port every consumer (HTTP API, analytics, alert rules, UI panels) uses.
Two adapters implement it: the embedded evaluator over a :class:`~fleetscope.store.MetricStore`
(``query.engine``) and the remote adapter that sends PromQL to a Prometheus-compatible HTTP API
(``store.prometheus_api``). Callers never know which one answered.

Conventions:

- Times are integer milliseconds since the epoch; ranges ``[start_ms, end_ms]`` are inclusive
  and range-query steps are ``start_ms + k * step_ms <= end_ms``.
- A result is a :class:`QueryResult` whose ``result_type`` is Prometheus' (``vector``,
  ``matrix``, ``scalar``, ``string``). Vector and matrix results are lists of :class:`Series`
  (a vector's series have exactly one point each). Series are sorted by label set unless the
  query is ordered (``sort``, ``sort_desc``, ``topk``…), as Prometheus' API returns them.
- Errors are :class:`QueryError` with Prometheus' ``errorType`` (``bad_data`` for a query that
  does not parse or uses something unsupported, ``execution`` for a failure while evaluating,
  ``timeout``, ``canceled``, ``unavailable`` for a backend that cannot be reached).
- Engines are safe to call from several threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from fleetscope.store import Series

ResultType = Literal["vector", "matrix", "scalar", "string"]
ErrorType = Literal["bad_data", "execution", "timeout", "canceled", "unavailable", "internal"]

MAX_POINTS_PER_SERIES = 11_000  # Prometheus refuses range queries that would exceed this


class QueryError(Exception):
    """A query that cannot be answered; ``error_type`` is Prometheus' ``errorType``."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type: ErrorType = error_type
        self.message = message


@dataclass
class QueryResult:
    """What a query returned (see the module docstring).

    ``series`` holds vector and matrix results; ``scalar`` a scalar's ``(t_ms, value)``;
    ``string`` a string's ``(t_ms, text)``. ``warnings`` are partial-result notes.
    """

    result_type: ResultType
    series: list[Series] = field(default_factory=list)
    scalar: tuple[int, float] | None = None
    string: tuple[int, str] | None = None
    warnings: list[str] = field(default_factory=list)


class Engine(Protocol):
    """Answers PromQL and the metadata calls of Prometheus' HTTP API."""

    def instant(self, query: str, t_ms: int) -> QueryResult:
        """Evaluate ``query`` at one time (``/api/v1/query``)."""
        ...

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> QueryResult:
        """Evaluate ``query`` at every step (``/api/v1/query_range``); always a matrix."""
        ...

    def series(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[dict[str, str]]:
        """Label sets of series matching any of the ``match`` selectors (``/api/v1/series``)."""
        ...

    def label_names(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        """Label names, of series matching ``match`` when given (``/api/v1/labels``)."""
        ...

    def label_values(
        self, name: str, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        """Values of one label (``/api/v1/label/<name>/values``)."""
        ...
