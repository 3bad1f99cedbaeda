"""The comparison harness: a reference client for Prometheus' HTTP API and the result comparer.

:class:`PrometheusHTTP` asks a real Prometheus (``/api/v1/query``, ``/api/v1/query_range``) and
parses its JSON itself, so the reference side shares no code with what it checks.
:func:`compare` judges two outcomes as prometheus/compliance's PromQL tester does: the same
result type, the same label sets, the same timestamps, values equal within
:data:`REL_TOLERANCE` (:data:`ABS_TOLERANCE` near zero), NaN equal to NaN, series compared as a
set unless the query's output order is defined (:func:`is_ordered`). Both sides failing with the
same ``errorType`` is agreement; one side failing is a difference.
"""

from __future__ import annotations

import math
import re
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from fleetscope.query import QueryError, QueryResult
from fleetscope.store import Series

Outcome = QueryResult | QueryError


class Querier(Protocol):
    """The part of :class:`~fleetscope.query.Engine` the harness compares."""

    def instant(self, query: str, t_ms: int) -> QueryResult: ...

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> QueryResult: ...


REL_TOLERANCE = 1e-6
ABS_TOLERANCE = 1e-9
MAX_SHOWN = 4  # differences of one kind listed before "… and N more"


class PrometheusHTTP:
    """Instant and range queries against a Prometheus-compatible HTTP API (the reference)."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def instant(self, query: str, t_ms: int) -> QueryResult:
        return self._ask("/api/v1/query", {"query": query, "time": seconds(t_ms)})

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> QueryResult:
        params = {
            "query": query,
            "start": seconds(start_ms),
            "end": seconds(end_ms),
            "step": seconds(step_ms),
        }
        return self._ask("/api/v1/query_range", params)

    def _ask(self, path: str, params: dict[str, str]) -> QueryResult:
        try:
            resp = self._client.post(self.url + path, data=params)
        except httpx.HTTPError as e:
            raise QueryError("unavailable", f"{self.url}: {e}") from None
        try:
            body: dict[str, Any] = resp.json()
        except ValueError:
            raise QueryError("unavailable", f"HTTP {resp.status_code}: {resp.text[:200]}") from None
        if body.get("status") != "success":
            raise QueryError(body.get("errorType", "internal"), str(body.get("error", body)))
        return parse_data(body["data"])


def seconds(t_ms: int) -> str:
    """Milliseconds as the API's decimal seconds, exactly."""
    sign = "-" if t_ms < 0 else ""
    return f"{sign}{abs(t_ms) // 1000}.{abs(t_ms) % 1000:03d}"


def _ms(t: float | str) -> int:
    return round(float(t) * 1000)


def parse_data(data: dict[str, Any]) -> QueryResult:
    """A :class:`QueryResult` from the ``data`` object of a successful query answer."""
    kind = data["resultType"]
    result = data["result"]
    if kind == "scalar":
        return QueryResult("scalar", scalar=(_ms(result[0]), float(result[1])))
    if kind == "string":
        return QueryResult("string", string=(_ms(result[0]), str(result[1])))
    series = []
    for item in result:
        points = [item["value"]] if kind == "vector" else item["values"]
        series.append(
            Series(
                dict(item["metric"]),
                np.asarray([_ms(p[0]) for p in points], np.int64),
                np.asarray([float(p[1]) for p in points], np.float64),
            )
        )
    if kind not in ("vector", "matrix"):
        raise QueryError("internal", f"unknown resultType {kind!r}")
    return QueryResult(kind, series=series)


def outcome(call: Callable[[], QueryResult]) -> Outcome:
    """What a query call returned, or the :class:`QueryError` it raised. Any other exception
    is a crash, reported as an ``internal`` error naming where it happened."""
    try:
        return call()
    except QueryError as e:
        return e
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        return QueryError("internal", f"crash: {type(e).__name__}: {e} (at {where})")


# ------------------------------------------------------------------ ordering

_ORDERED = re.compile(r"(sort|sort_desc|topk|bottomk)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(")
_GROUPED = re.compile(r"(by|without)\s*\(")


def _closing(text: str, open_at: int) -> int:
    """Index of the parenthesis closing the one at ``open_at`` (strings skipped); -1: none."""
    depth, quote, escaped = 0, "", False
    for i in range(open_at, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _strip_parens(query: str) -> str:
    q = query.strip()
    while q.startswith("(") and _closing(q, 0) == len(q) - 1:
        q = q[1:-1].strip()
    return q


def is_ordered(query: str) -> bool:
    """True when an instant query's output order is defined by Prometheus: the whole query is
    ``sort(…)`` or ``sort_desc(…)`` (by value), or an ungrouped ``topk`` (descending) or
    ``bottomk`` (ascending). Ties may come in any order."""
    q = _strip_parens(query)
    m = _ORDERED.match(q)
    if m is None:
        return False
    close = _closing(q, m.end() - 1)
    if close != len(q) - 1:
        return False  # something follows: `sort(x) + y`, `topk(1, x) by (node)`
    # a grouped topk/bottomk orders its groups by first appearance, which Prometheus does not
    # promise
    return m.group(1).startswith("sort") or not _GROUPED.search(q[: m.end()])


# ------------------------------------------------------------------ comparison


def _close(a: float, b: float) -> bool:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        return False
    return abs(a - b) <= max(REL_TOLERANCE * max(abs(a), abs(b)), ABS_TOLERANCE)


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _fmt(labels: dict[str, str] | tuple[tuple[str, str], ...]) -> str:
    items = sorted(labels.items()) if isinstance(labels, dict) else list(labels)
    name = dict(items).get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in items if k != "__name__")
    return f"{name}{{{rest}}}"


def _listed(what: str, items: Sequence[str]) -> list[str]:
    shown = [f"{what}: {i}" for i in items[:MAX_SHOWN]]
    if len(items) > MAX_SHOWN:
        shown.append(f"… and {len(items) - MAX_SHOWN} more {what}")
    return shown


def _describe(o: Outcome) -> str:
    if isinstance(o, QueryError):
        return f"error {o.error_type}: {o.message}"
    if o.result_type in ("vector", "matrix"):
        return f"{o.result_type} of {len(o.series)} series"
    return f"{o.result_type} {o.scalar or o.string}"


def compare(expected: Outcome, got: Outcome, *, ordered: bool = False) -> list[str]:
    """Differences of ``got`` from ``expected`` (the reference); empty when they agree."""
    if isinstance(expected, QueryError) and isinstance(got, QueryError):
        same = expected.error_type == got.error_type
        return [] if same else [f"expected {_describe(expected)}; got {_describe(got)}"]
    if isinstance(expected, QueryError) or isinstance(got, QueryError):
        return [f"expected {_describe(expected)}; got {_describe(got)}"]
    if expected.result_type != got.result_type:
        return [f"expected {_describe(expected)}; got {_describe(got)}"]
    if expected.result_type == "scalar":
        return _compare_points("scalar", [expected.scalar], [got.scalar])
    if expected.result_type == "string":
        if expected.string != got.string:
            return [f"expected string {expected.string}; got {got.string}"]
        return []
    return _compare_series(expected.series, got.series, ordered=ordered)


def _compare_points(
    what: str, a: Sequence[tuple[int, float] | None], b: Sequence[tuple[int, float] | None]
) -> list[str]:
    if a == b:
        return []
    (ta, va), (tb, vb) = a[0] or (0, math.nan), b[0] or (0, math.nan)
    if ta != tb or not _close(va, vb):
        return [f"{what}: expected {va!r} at {ta}; got {vb!r} at {tb}"]
    return []


def _compare_series(expected: list[Series], got: list[Series], *, ordered: bool) -> list[str]:
    diffs: list[str] = []
    exp = {_key(s.labels): s for s in expected}
    out = {_key(s.labels): s for s in got}
    if len(out) != len(got):
        counts = Counter(_key(s.labels) for s in got)
        diffs += _listed("duplicate series", sorted(_fmt(k) for k, c in counts.items() if c > 1))
    diffs += _listed("missing series", [_fmt(k) for k in sorted(exp.keys() - out.keys())])
    diffs += _listed("unexpected series", [_fmt(k) for k in sorted(out.keys() - exp.keys())])
    wrong: list[str] = []
    for key in sorted(exp.keys() & out.keys()):
        e, g = exp[key], out[key]
        et, gt = e.t_ms.tolist(), g.t_ms.tolist()
        if et != gt:
            only_e = sorted(set(et) - set(gt))
            only_g = sorted(set(gt) - set(et))
            wrong.append(
                f"{_fmt(key)} timestamps differ: {len(et)} expected, {len(gt)} got"
                f"; only expected {only_e[:3]}; only got {only_g[:3]}"
            )
            continue
        for t, a, b in zip(et, e.values.tolist(), g.values.tolist(), strict=True):
            if not _close(a, b):
                wrong.append(f"{_fmt(key)} at {t}: expected {a!r}, got {b!r}")
                break
    diffs += _listed("wrong values", wrong)
    if ordered and not diffs:
        ev = [float(s.values[0]) for s in expected]
        gv = [float(s.values[0]) for s in got]
        if len(ev) != len(gv) or not all(_close(a, b) for a, b in zip(ev, gv, strict=True)):
            diffs.append(f"order differs: expected values in order {ev[:8]}; got {gv[:8]}")
    return diffs
