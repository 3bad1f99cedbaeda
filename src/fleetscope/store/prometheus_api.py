"""The scale-out adapter: a query :class:`~fleetscope.query.Engine` over a Prometheus HTTP API.

:class:`PrometheusEngine` sends PromQL and metadata calls to any server with Prometheus' query
API — Prometheus, VictoriaMetrics (single node, or ``http://vmselect:8481/select/0/prometheus``),
Mimir (``http://mimir/prometheus``), Thanos Query — and turns its JSON into
:class:`~fleetscope.query.QueryResult` (DESIGN.md "scale-out"). Queries, series and labels go as
form-encoded POSTs (no URL length limit); label values as a GET, the only method Prometheus has.

Vendor-boundary rules (STYLE.md "Missing values"): every failure becomes a
:class:`~fleetscope.query.QueryError` — the server's own ``errorType`` when it answered in
Prometheus' format (VictoriaMetrics writes the HTTP status there, which is mapped back), else
``unavailable`` for a server that cannot be reached or answers 5xx/401/403/404 without Prometheus
JSON, and ``timeout`` when no answer came within ``timeout_s``. The ``invalid parameter "query":``
prefix Prometheus puts on some messages is removed, so that Fleetscope's own API, which adds it
back, answers exactly what the server said. Native-histogram samples are skipped with a warning.

Thread-safe (one pooled ``httpx.Client``); call :meth:`PrometheusEngine.close` when done.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import quote

import httpx
import numpy as np

from fleetscope.query import ErrorType, QueryError, QueryResult
from fleetscope.store import Series

__all__ = ["PrometheusEngine"]

_ERROR_TYPES: frozenset[str] = frozenset(
    {"bad_data", "execution", "timeout", "canceled", "unavailable", "internal"}
)
_BY_STATUS: dict[int, ErrorType] = {400: "bad_data", 422: "execution", 503: "unavailable"}
_PARAM_PREFIX = re.compile(r'^invalid parameter "(?:query|match\[\])": ')
_HISTOGRAMS_SKIPPED = "native histogram samples were skipped (Fleetscope reads float samples only)"


def _seconds(t_ms: int) -> str:
    """Milliseconds as the exact decimal seconds the API takes (``1700000000.5`` → ``"…500"``)."""
    sign = "-" if t_ms < 0 else ""
    seconds, millis = divmod(abs(t_ms), 1000)
    return f"{sign}{seconds}.{millis:03d}"


def _ms(t: Any) -> int:
    return round(float(t) * 1000)


def _points(pairs: Sequence[Sequence[Any]]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """``[[t_seconds, "value"], …]`` as (int64 milliseconds, float64 values)."""
    if not pairs:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    t = np.fromiter((p[0] for p in pairs), np.float64, len(pairs))
    values = np.array([p[1] for p in pairs], dtype=np.float64)  # parses "NaN", "+Inf", "-Inf"
    return np.rint(t * 1000).astype(np.int64), values


def _parse_result(data: Mapping[str, Any], warnings: list[str]) -> QueryResult:
    kind = data["resultType"]
    result = data["result"]
    if kind == "scalar":
        return QueryResult("scalar", scalar=(_ms(result[0]), float(result[1])), warnings=warnings)
    if kind == "string":
        return QueryResult("string", string=(_ms(result[0]), str(result[1])), warnings=warnings)
    series: list[Series] = []
    skipped = False
    for item in result:
        labels = {str(k): str(v) for k, v in item["metric"].items()}
        if kind == "vector":
            pairs = [item["value"]] if "value" in item else []
        elif kind == "matrix":
            pairs = item.get("values", [])
        else:
            raise ValueError(f"unknown resultType {kind!r}")
        skipped = skipped or "histogram" in item or "histograms" in item
        if pairs:
            t_ms, values = _points(pairs)
            series.append(Series(labels, t_ms, values))
    if skipped:
        warnings.append(_HISTOGRAMS_SKIPPED)
    return QueryResult(kind, series=series, warnings=warnings)


class PrometheusEngine:
    """:class:`~fleetscope.query.Engine` over the HTTP API at ``url`` (see the module docstring).

    ``url`` is the API's base (the part before ``/api/v1``); ``headers`` go with every request
    (``Authorization: Bearer …``, ``X-Scope-OrgID`` for Mimir); ``timeout_s`` bounds each call.
    ``transport`` replaces the network, for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            headers=dict(headers or {}), timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._client.close()

    # --------------------------------------------------------------------- Engine

    def instant(self, query: str, t_ms: int) -> QueryResult:
        form = {"query": query, "time": _seconds(t_ms)}
        data, warnings = self._call("POST", "/api/v1/query", form)
        return self._result(data, warnings)

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> QueryResult:
        form = {
            "query": query,
            "start": _seconds(start_ms),
            "end": _seconds(end_ms),
            "step": _seconds(step_ms),
        }
        data, warnings = self._call("POST", "/api/v1/query_range", form)
        return self._result(data, warnings)

    def series(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[dict[str, str]]:
        form = self._selection(match, start_ms, end_ms)
        data, _ = self._call("POST", "/api/v1/series", form)
        try:
            return [{str(k): str(v) for k, v in labels.items()} for labels in data]
        except (AttributeError, TypeError) as exc:
            raise self._malformed("/api/v1/series", exc) from None

    def label_names(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        form = self._selection(match, start_ms, end_ms)
        data, _ = self._call("POST", "/api/v1/labels", form)
        return self._strings("/api/v1/labels", data)

    def label_values(
        self, name: str, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        path = f"/api/v1/label/{quote(name, safe='')}/values"
        data, _ = self._call("GET", path, self._selection(match, start_ms, end_ms))
        return self._strings(path, data)

    # --------------------------------------------------------------------- HTTP

    @staticmethod
    def _selection(
        match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> dict[str, str | list[str]]:
        form: dict[str, str | list[str]] = {}
        if match:
            form["match[]"] = list(match)
        if start_ms is not None:
            form["start"] = _seconds(start_ms)
        if end_ms is not None:
            form["end"] = _seconds(end_ms)
        return form

    def _call(
        self, method: str, path: str, form: Mapping[str, str | list[str]]
    ) -> tuple[Any, list[str]]:
        """``data`` and ``warnings`` of a successful answer; raises :class:`QueryError`."""
        url = self.url + path
        try:
            if method == "GET":
                response = self._client.get(url, params=form)
            else:
                response = self._client.post(url, data=form)
        except httpx.TimeoutException as exc:
            raise QueryError("timeout", f"no answer from {url} in time: {exc}") from None
        except httpx.HTTPError as exc:
            raise QueryError("unavailable", f"cannot reach {url}: {exc}") from None
        try:
            body = response.json()
            status = body["status"]
        except (ValueError, KeyError, TypeError):
            raise self._not_prometheus(url, response) from None
        if status == "success" and response.is_success:
            warnings = body.get("warnings") or []
            return body.get("data"), [str(w) for w in warnings]
        message = str(body.get("error") or f"HTTP {response.status_code} from {url}")
        error_type = str(body.get("errorType", ""))
        if error_type not in _ERROR_TYPES:
            error_type = _BY_STATUS.get(response.status_code, "internal")
        if error_type == "bad_data":
            message = _PARAM_PREFIX.sub("", message)
        raise QueryError(cast(ErrorType, error_type), message)

    def _result(self, data: Any, warnings: list[str]) -> QueryResult:
        try:
            return _parse_result(data, warnings)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise self._malformed("query", exc) from None

    def _strings(self, path: str, data: Any) -> list[str]:
        if not isinstance(data, list):
            raise self._malformed(path, TypeError(f"data is {type(data).__name__}, not a list"))
        return [str(v) for v in data]

    def _malformed(self, what: str, exc: Exception) -> QueryError:
        return QueryError("internal", f"unexpected {what} answer from {self.url}: {exc!r}")

    @staticmethod
    def _not_prometheus(url: str, response: httpx.Response) -> QueryError:
        code = response.status_code
        snippet = response.text[:200].strip()
        message = f"HTTP {code} from {url} is not a Prometheus API answer: {snippet!r}"
        if code in (400, 422):
            return QueryError(_BY_STATUS[code], message)
        if response.is_success:
            return QueryError("internal", message)
        return QueryError("unavailable", message)
