"""Prometheus' HTTP API over a query :class:`~fleetscope.query.Engine`, for Grafana and any client.

Routes (all under the app's token guard; GET, and form-encoded POST where Prometheus has it):
``/api/v1/query``, ``/api/v1/query_range``, ``/api/v1/series``, ``/api/v1/labels``,
``/api/v1/label/<name>/values`` (GET only, as in Prometheus), ``/api/v1/query_exemplars``
(always empty: Fleetscope keeps no exemplars), ``/api/v1/metadata`` (from :mod:`fleetscope.catalog`)
and ``/api/v1/status/buildinfo``.

Answers copy Prometheus 2.42 byte for byte where it matters to clients:

- ``{"status":"success","data":…}`` plus ``"warnings":[…]`` when the engine returned partial
  results; errors are ``{"status":"error","errorType":…,"error":…}`` with HTTP 400 (``bad_data``),
  422 (``execution``), 503 (``timeout``, ``canceled``, ``unavailable``) or 500 (``internal``).
- Sample times are unix seconds with at most three decimals (``1435781451.781``); values are
  strings in Go's ``strconv.FormatFloat(v, 'f', -1, 64)`` form (shortest round-trip digits, no
  exponent) with ``NaN``, ``+Inf`` and ``-Inf`` — except that vector and matrix samples below
  1e-6 or from 1e21 on take Go's exponent form (``1e-07``), as Prometheus' JSON encoder does.
- Parameters are parsed as Prometheus does: times as RFC 3339 or unix seconds (rounded to the
  millisecond), ``step``/``timeout`` as a duration (``15s``, ``1m30s``) or float seconds; a bad
  or missing one is a 400 ``bad_data`` naming it (``invalid parameter "step": …``). Form body
  values come before URL values, as with Go's ``Request.FormValue``.

Deliberate differences from Prometheus 2.42: an engine's ``bad_data`` error always names its
parameter (``invalid parameter "query": …``; 2.42 does so for instant queries and series but not
for range queries and label calls); ``limit`` on series, labels and label values truncates the
answer with a warning (as Prometheus ≥ 2.49 does; 2.42 ignores it); NaN, infinite or int64-
overflowing times are refused instead of evaluated at a nonsense time. Engine work (and the JSON
rendering of its result) runs on a worker thread; the ``timeout`` parameter (and the router's
default) bound how long the client waits, but the :class:`~fleetscope.query.Engine` protocol has
no cancellation, so an abandoned evaluation runs on to completion in its thread.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from fleetscope import __version__, catalog
from fleetscope.config import parse_duration_ms
from fleetscope.query import MAX_POINTS_PER_SERIES, Engine, QueryError, QueryResult

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PROMETHEUS_VERSION",
    "format_scalar",
    "format_time",
    "format_value",
    "make_router",
    "parse_duration_ns",
    "parse_time_ms",
]

log = logging.getLogger(__name__)

PROMETHEUS_VERSION = "2.42.0"  # the Prometheus API version these routes copy (Grafana reads it)
DEFAULT_TIMEOUT_S = 120.0  # Prometheus' default --query.timeout (2m)

STATUS_CODES: dict[str, int] = {
    "bad_data": 400,
    "execution": 422,
    "canceled": 503,
    "timeout": 503,
    "unavailable": 503,
    "internal": 500,
}

# Prometheus' own sentinels for "no bound" (Go's minTime/maxTime formatted as RFC 3339), which
# client_golang sends for series/labels calls without a time range.
MIN_TIME_TEXT = "-292273086-05-16T16:47:06Z"
MAX_TIME_TEXT = "292277025-08-18T07:12:54.999999999Z"
MIN_TIME_MS = (-(2**63 // 1000) + 62135596801) * 1000  # timestamp.FromTime of those two
MAX_TIME_MS = ((2**63 - 1) // 1000 - 62135596801) * 1000 + 999

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_GO_FLOAT = re.compile(
    r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])$"
)
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)
_ZERO_DURATION = re.compile(r"^(?:0+(?:y|w|d|h|m|s|ms))+$")
_MAX_ABS_SECONDS = 9.2e15  # beyond this a time in milliseconds overflows int64
_NS_PER_MS = 1_000_000
_INT64_MAX = 2**63 - 1

Call = Callable[[], tuple[str, list[str]]]  # engine work for a thread: (data JSON, warnings)
Work = Callable[["Params"], Call]  # checks a request's parameters, returns its engine work


# ----------------------------------------------------------------------------- formatting


def format_scalar(value: float) -> str:
    """A scalar result's value as Prometheus writes it: Go's ``FormatFloat(v, 'f', -1, 64)``
    (shortest round-trip digits, never an exponent), ``NaN``, ``+Inf``, ``-Inf``."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    text = repr(value)
    if "e" not in text:
        return text
    return format(Decimal(text), "f")


def format_value(value: float) -> str:
    """A vector or matrix sample's value as Prometheus writes it: like :func:`format_scalar`,
    but with an exponent (Go's ``'e'``: ``1e-07``, ``1.5e+21``) below 1e-6 and from 1e21 on."""
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or 1e21 <= magnitude < math.inf):
        return repr(value)  # Python's exponent form is Go's: shortest digits, ≥ 2 exponent digits
    return format_scalar(value)


def format_time(t_ms: int) -> str:
    """A timestamp as Prometheus writes it: unix seconds, ``.`` and three digits when not whole."""
    sign = "-" if t_ms < 0 else ""
    seconds, millis = divmod(abs(t_ms), 1000)
    return f"{sign}{seconds}.{millis:03d}" if millis else f"{sign}{seconds}"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _point(t_ms: int, value: float, form: Callable[[float], str] = format_value) -> str:
    return f'[{format_time(t_ms)},"{form(value)}"]'


def _format_values(values: list[float]) -> list[str]:
    """:func:`format_value` of many values, fast: ``repr`` is already Go's form for most."""
    return [
        format_value(float(r)) if "e" in r or "n" in r else r[:-2] if r.endswith(".0") else r
        for r in map(repr, values)
    ]


def _points(t_ms: list[int], values: list[float], times: dict[int, str]) -> str:
    """``[t,"v"],…`` of one series; ``times`` caches formatted times across series."""
    stamps = [times.get(t) or times.setdefault(t, format_time(t)) for t in t_ms]
    return ",".join(map('[{},"{}"]'.format, stamps, _format_values(values)))


def render_result(result: QueryResult) -> str:
    """The ``data`` object of a query answer: ``{"resultType":…,"result":…}`` as JSON text."""
    kind = result.result_type
    if kind == "scalar":
        if result.scalar is None:
            raise QueryError("internal", "the engine returned a scalar result without a value")
        body = _point(*result.scalar, form=format_scalar)
    elif kind == "string":
        if result.string is None:
            raise QueryError("internal", "the engine returned a string result without a value")
        t_ms, text = result.string
        body = f"[{format_time(t_ms)},{_dumps(text)}]"
    elif kind == "vector":
        items = []
        for s in result.series:
            if len(s.t_ms):
                value = _point(int(s.t_ms[0]), float(s.values[0]))
                items.append(f'{{"metric":{_dumps(s.labels)},"value":{value}}}')
        body = f"[{','.join(items)}]"
    elif kind == "matrix":
        items = []
        times: dict[int, str] = {}
        for s in result.series:
            points = _points(s.t_ms.tolist(), s.values.tolist(), times)
            items.append(f'{{"metric":{_dumps(s.labels)},"values":[{points}]}}')
        body = f"[{','.join(items)}]"
    else:
        raise QueryError("internal", f"the engine returned an unknown result type {kind!r}")
    return f'{{"resultType":"{kind}","result":{body}}}'


def _success(data_json: str, warnings: Sequence[str]) -> Response:
    text = f'{{"status":"success","data":{data_json}'
    if warnings:
        text += f',"warnings":{_dumps(list(warnings))}'
    return Response(text + "}", media_type="application/json")


def _error(error: QueryError) -> Response:
    body = {"status": "error", "errorType": error.error_type, "error": error.message}
    return Response(
        _dumps(body),
        status_code=STATUS_CODES.get(error.error_type, 500),
        media_type="application/json",
    )


# ----------------------------------------------------------------------------- parameters


def _bad(parameter: str, message: str) -> QueryError:
    return QueryError("bad_data", f'invalid parameter "{parameter}": {message}')


def _round_half_away(x: float) -> float:
    """Go's ``math.Round`` (half away from zero), exact for every float."""
    whole = math.floor(abs(x))
    if abs(x) - whole >= 0.5:
        whole += 1
    return math.copysign(whole, x)


def parse_time_ms(text: str) -> int:
    """Milliseconds of a Prometheus API time: unix seconds (float) or RFC 3339.

    Float seconds are rounded to the millisecond as Prometheus does; RFC 3339 fractions are
    truncated. Raises ``ValueError`` with Prometheus' message (``cannot parse "x" to a valid
    timestamp``); also for NaN, infinities and times beyond int64 milliseconds.
    """
    failure = ValueError(f"cannot parse {_dumps(text)} to a valid timestamp")
    if _GO_FLOAT.match(text):
        t = float(text)
        if not math.isfinite(t) or abs(t) >= _MAX_ABS_SECONDS:
            raise failure
        frac, whole = math.modf(t)
        nanos = int(_round_half_away(frac * 1000) / 1000 * 1e9)  # as Prometheus' parseTime
        return (int(whole) * 1_000_000_000 + nanos) // _NS_PER_MS
    if text == MIN_TIME_TEXT:
        return MIN_TIME_MS
    if text == MAX_TIME_TEXT:
        return MAX_TIME_MS
    m = _RFC3339.match(text)
    if m is None:
        raise failure
    year, month, day, hour, minute, second, frac_text, zone = m.groups()
    try:
        offset = "+00:00" if zone == "Z" else zone
        stamp = datetime.fromisoformat(
            f"{year}-{month}-{day}T{hour}:{minute}:{second}{offset}"
        ).astimezone(UTC)
    except ValueError:
        raise failure from None
    millis = int((frac_text or "0").ljust(9, "0")[:3])
    return int(stamp.timestamp()) * 1000 + millis


def parse_duration_ns(text: str) -> int:
    """Nanoseconds of a Prometheus API duration: float seconds or ``1h30m``-style text.

    Zero and negative values are returned (callers decide); anything unparsable raises
    ``ValueError`` with Prometheus' message.
    """
    if _GO_FLOAT.match(text):
        ns = float(text) * 1e9
        if math.isnan(ns):
            raise ValueError(f"cannot parse {_dumps(text)} to a valid duration")
        if abs(ns) > _INT64_MAX:
            raise ValueError(f"cannot parse {_dumps(text)} to a valid duration. It overflows int64")
        return int(ns)
    if _ZERO_DURATION.match(text):
        return 0
    try:
        if text != text.strip():
            raise ValueError(text)
        ns = parse_duration_ms(text) * _NS_PER_MS
    except ValueError:
        raise ValueError(f"cannot parse {_dumps(text)} to a valid duration") from None
    if ns > _INT64_MAX:
        raise ValueError(f"cannot parse {_dumps(text)} to a valid duration. It overflows int64")
    return ns


@dataclass(frozen=True)
class Params:
    """Request parameters: form body values first, then URL values (Go's ``Request.Form``)."""

    items: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str:
        """The first value of ``name``, or ``""``."""
        return next((v for k, v in self.items if k == name), "")

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]

    def time_ms(self, name: str, default: int | None) -> int | None:
        """An optional time parameter; ``default`` when absent or empty."""
        text = self.get(name)
        if not text:
            return default
        try:
            return parse_time_ms(text)
        except ValueError as exc:
            raise _bad(name, f"Invalid time value for '{name}': {exc}") from None

    def required_time_ms(self, name: str) -> int:
        try:
            return parse_time_ms(self.get(name))
        except ValueError as exc:
            raise _bad(name, str(exc)) from None

    def timeout_s(self, default_s: float) -> float:
        """The ``timeout`` parameter in seconds, capped at the server's ``default_s``."""
        text = self.get("timeout")
        if not text:
            return default_s
        try:
            ns = parse_duration_ns(text)
        except ValueError as exc:
            raise _bad("timeout", str(exc)) from None
        return min(default_s, max(ns, 0) / 1e9)

    def limit(self) -> int:
        """The ``limit`` parameter (0 = no limit)."""
        text = self.get("limit")
        if not text:
            return 0
        try:
            limit = int(text)
        except ValueError:
            raise _bad("limit", f"cannot parse {_dumps(text)} to a valid limit") from None
        if limit < 0:
            raise _bad("limit", "limit must be non-negative")
        return limit


async def read_params(request: Request) -> Params:
    """The parameters of a GET or a form-encoded (or multipart) POST."""
    items: list[tuple[str, str]] = []
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and content_type.startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        try:
            form = await request.form()
        except Exception as exc:  # malformed bodies raise several starlette/multipart types
            raise QueryError("bad_data", f"error parsing form values: {exc}") from None
        items.extend((k, v) for k, v in form.multi_items() if isinstance(v, str))
    items.extend(request.query_params.multi_items())
    return Params(tuple(items))


# ----------------------------------------------------------------------------- the router


def _name_parameter(error: QueryError, parameter: str) -> QueryError:
    """An engine's ``bad_data`` error about ``parameter``, phrased as Prometheus' API does."""
    if error.error_type != "bad_data" or error.message.startswith("invalid parameter "):
        return error
    return _bad(parameter, error.message)


def _limited(values: list[Any], limit: int, warnings: list[str]) -> list[Any]:
    if limit and len(values) > limit:
        warnings.append("results truncated due to limit")
        return values[:limit]
    return values


def metadata(params: Params) -> dict[str, list[dict[str, str]]]:
    """``/api/v1/metadata`` from the catalog: ``{metric: [{type, help, unit}]}``."""
    text = params.get("limit")
    limit = -1
    if text:
        try:
            limit = int(text)
        except ValueError:
            raise QueryError("bad_data", "limit must be a number") from None
    wanted = params.get("metric")
    out: dict[str, list[dict[str, str]]] = {}
    for metric in catalog.METRICS.values():
        if limit >= 0 and len(out) >= limit:
            break
        if wanted and metric.name != wanted:
            continue
        entry = {"type": metric.prometheus_type, "help": metric.help, "unit": metric.unit}
        out[metric.name] = [entry]
    return out


def build_info() -> dict[str, str]:
    """``/api/v1/status/buildinfo``: Prometheus 2.42's fields, plus which Fleetscope answers.

    There is deliberately no ``features`` key: Grafana takes a buildinfo with features for
    Mimir and then expects a ruler API.
    """
    return {
        "version": PROMETHEUS_VERSION,
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "application": "Fleetscope",
        "fleetscopeVersion": __version__,
    }


def make_router(
    engine: Engine, clock: Callable[[], float], *, default_timeout_s: float = DEFAULT_TIMEOUT_S
) -> APIRouter:
    """The Prometheus API routes over ``engine``; ``clock`` gives the default query time (s)."""
    router = APIRouter(prefix="/api/v1", tags=["prometheus"])

    async def answer(request: Request, work: Work) -> Response:
        """Parse parameters, run ``work``'s engine call on a thread, render the answer."""
        try:
            params = await read_params(request)
            call = work(params)
            timeout_s = params.timeout_s(default_timeout_s)
            try:
                with anyio.fail_after(timeout_s):
                    data, warnings = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
            except TimeoutError:
                raise QueryError("timeout", "query timed out in expression evaluation") from None
        except QueryError as exc:
            return _error(exc)
        except Exception as exc:
            log.exception("Prometheus API %s failed", request.url.path)
            return _error(QueryError("internal", f"{type(exc).__name__}: {exc}"))
        return _success(data, warnings)

    def run_query(result: Callable[[], QueryResult]) -> tuple[str, list[str]]:
        try:
            answered = result()
        except QueryError as exc:
            raise _name_parameter(exc, "query") from None
        return render_result(answered), list(answered.warnings)

    def query_text(params: Params) -> str:
        query = params.get("query")
        if not query.strip():
            raise _bad("query", "1:1: parse error: no expression found in input")
        return query

    def instant(params: Params) -> Call:
        t_ms = params.time_ms("time", None)
        if t_ms is None:
            t_ms = int(clock() * 1000)
        query = query_text(params)
        at_ms: int = t_ms
        return lambda: run_query(lambda: engine.instant(query, at_ms))

    def ranged(params: Params) -> Call:
        start_ms = params.required_time_ms("start")
        end_ms = params.required_time_ms("end")
        if end_ms < start_ms:
            raise _bad("end", "end timestamp must not be before start time")
        try:
            step_ns = parse_duration_ns(params.get("step"))
        except ValueError as exc:
            raise _bad("step", str(exc)) from None
        step_ms = step_ns // _NS_PER_MS
        if step_ms <= 0:
            raise _bad(
                "step",
                "zero or negative query resolution step widths are not accepted. "
                "Try a positive integer",
            )
        if (end_ms - start_ms) * _NS_PER_MS // step_ns > MAX_POINTS_PER_SERIES:
            raise QueryError(
                "bad_data",
                f"exceeded maximum resolution of {MAX_POINTS_PER_SERIES:,} points per timeseries. "
                "Try decreasing the query resolution (?step=XX)",
            )
        query = query_text(params)
        return lambda: run_query(lambda: engine.range(query, start_ms, end_ms, step_ms))

    def bounds(params: Params) -> tuple[int | None, int | None]:
        start_ms = params.time_ms("start", None)
        end_ms = params.time_ms("end", None)
        return (
            None if start_ms == MIN_TIME_MS else start_ms,
            None if end_ms == MAX_TIME_MS else end_ms,
        )

    def series(params: Params) -> Call:
        match = params.getlist("match[]")
        if not match:
            raise QueryError("bad_data", "no match[] parameter provided")
        start_ms, end_ms = bounds(params)
        limit = params.limit()

        def call() -> tuple[str, list[str]]:
            try:
                found = engine.series(match, start_ms, end_ms)
            except QueryError as exc:
                raise _name_parameter(exc, "match[]") from None
            warnings: list[str] = []
            return _dumps(_limited(found, limit, warnings)), warnings

        return call

    def label_names(params: Params) -> Call:
        start_ms, end_ms = bounds(params)
        match = params.getlist("match[]")
        limit = params.limit()

        def call() -> tuple[str, list[str]]:
            try:
                names = engine.label_names(match, start_ms, end_ms)
            except QueryError as exc:
                raise _name_parameter(exc, "match[]") from None
            warnings: list[str] = []
            return _dumps(_limited(names, limit, warnings)), warnings

        return call

    def label_values(name: str) -> Work:
        def work(params: Params) -> Call:
            if not _LABEL_NAME.match(name):
                raise QueryError("bad_data", f"invalid label name: {_dumps(name)}")
            start_ms, end_ms = bounds(params)
            match = params.getlist("match[]")
            limit = params.limit()

            def call() -> tuple[str, list[str]]:
                try:
                    values = engine.label_values(name, match, start_ms, end_ms)
                except QueryError as exc:
                    raise _name_parameter(exc, "match[]") from None
                warnings: list[str] = []
                return _dumps(_limited(values, limit, warnings)), warnings

            return call

        return work

    def exemplars(params: Params) -> Call:
        start_ms, end_ms = bounds(params)
        if start_ms is not None and end_ms is not None and end_ms < start_ms:
            raise QueryError("bad_data", "end timestamp must not be before start timestamp")
        query_text(params)
        return lambda: ("[]", [])

    def static(make: Callable[[Params], Any]) -> Work:
        def work(params: Params) -> Call:
            data = _dumps(make(params))
            return lambda: (data, [])

        return work

    both = ["GET", "POST"]

    @router.api_route("/query", methods=both)
    async def query(request: Request) -> Response:
        """PromQL at one time: ``query``, ``time`` (default now), ``timeout``."""
        return await answer(request, instant)

    @router.api_route("/query_range", methods=both)
    async def query_range(request: Request) -> Response:
        """PromQL at every ``step`` from ``start`` to ``end`` (at most 11,000 points)."""
        return await answer(request, ranged)

    @router.api_route("/query_exemplars", methods=both)
    async def query_exemplars(request: Request) -> Response:
        """Exemplars of a query: always none (Fleetscope stores no exemplars)."""
        return await answer(request, exemplars)

    @router.api_route("/series", methods=both)
    async def series_route(request: Request) -> Response:
        """Label sets of the series matching any ``match[]`` selector in [``start``, ``end``]."""
        return await answer(request, series)

    @router.api_route("/labels", methods=both)
    async def labels_route(request: Request) -> Response:
        """Label names (of series matching ``match[]`` when given)."""
        return await answer(request, label_names)

    @router.get("/label/{name}/values")
    async def label_values_route(request: Request, name: str) -> Response:
        """Values of label ``name`` (of series matching ``match[]`` when given)."""
        return await answer(request, label_values(name))

    @router.get("/metadata")
    async def metadata_route(request: Request) -> Response:
        """Type, help and unit of every catalog metric (``limit``, ``metric`` filter)."""
        return await answer(request, static(metadata))

    @router.get("/status/buildinfo")
    async def buildinfo_route(request: Request) -> Response:
        """Build information in Prometheus' shape (Grafana's data source reads ``version``)."""
        return await answer(request, static(lambda _params: build_info()))

    return router
