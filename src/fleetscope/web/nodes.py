"""Node pages and their JSON: ``/nodes``, ``/nodes/{node}``, ``/api/v1/fleet/nodes[/{node}]``.

Server-rendered (Jinja2) like the overview, from :mod:`fleetscope.analyze.nodes` through the
query :class:`~fleetscope.query.Engine`; XID events from the record store. View state lives in
the query string (``window``: the range of error counts, XID events and the utilization chart;
``refresh``), so a view can be shared by URL. Every section shows the PromQL it ran. A node the
fleet does not know is a 404 page (JSON: ``{"detail": …}``); a failing inventory query is a 503
(backend unavailable or timed out) or 500, as in :mod:`fleetscope.web.api`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import plotly
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from fleetscope.analyze import nodes as an
from fleetscope.analyze.overview import promql_duration
from fleetscope.query import Engine, QueryError
from fleetscope.store import RecordStore
from fleetscope.web import view
from fleetscope.web.params import nav_context, parse_duration, step_for, view_state
from fleetscope.web.settings import WebSettings

UNAVAILABLE = ("unavailable", "timeout", "canceled")
RTT_RED_S = 0.002  # mesh cells shade from green (0) to red at this RTT


# ------------------------------------------------------------------ formatting

_SI = (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def si(value: float | None, unit: str = "", digits: int = 1) -> str:
    """``1.5e9, "B"`` → ``1.5 GB``; ``None`` → an en dash."""
    if value is None:
        return "–"
    for prefix, size in _SI:
        if abs(value) >= size:
            return f"{value / size:.{digits}f} {prefix}{unit}"
    return f"{value:.{digits}f} {unit}".rstrip() if value % 1 else f"{value:.0f} {unit}".rstrip()


def pct(ratio: float | None, digits: int = 0) -> str:
    """A 0–1 ratio as a percentage (``–`` when unknown)."""
    return "–" if ratio is None else f"{ratio * 100:.{digits}f}%"


def seconds(value: float | None) -> str:
    """A short time: ``850 µs``, ``12.3 ms``, ``1.20 s``."""
    if value is None:
        return "–"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def width(ratio: float | None) -> str:
    """A bar's CSS width for a 0–1 ratio, clamped."""
    return f"{max(0.0, min(1.0, ratio or 0.0)) * 100:.0f}%"


def rtt_color(rtt: float | None, loss: float | None) -> str:
    """Background of a mesh cell: green (fast) to red (≥ :data:`RTT_RED_S` or any loss)."""
    if rtt is None:
        return "transparent"
    x = 1.0 if loss else min(rtt / RTT_RED_S, 1.0)
    hue = 120 * (1 - x)
    return f"hsl({hue:.0f}, 65%, 85%)"


FORMAT: dict[str, Callable[..., str]] = {
    "si": si, "pct": pct, "seconds": seconds, "number": number, "width": width,
    "rtt_color": rtt_color,
}  # fmt: skip


def node_url(node: str, **state: str) -> str:
    query = {k: v for k, v in state.items() if v and not (k == "refresh" and v == "off")}
    return f"/nodes/{quote(node, safe='')}" + (f"?{urlencode(query)}" if query else "")


# ------------------------------------------------------------------ the chart


def _utilization_chart(
    history: dict[str, tuple[list[int], list[float]]], node: str, start: int, end: int
) -> view.Chart:
    traces = [
        {
            "type": "scatter", "mode": "lines", "name": f"GPU {gpu}",
            "x": [view.utc(t) for t in times], "y": values,
            "hovertemplate": f"GPU {gpu} %{{x}}<br>%{{y:.1%}}<extra></extra>",
        }
        for gpu, (times, values) in history.items()
    ]  # fmt: skip
    layout = {
        "height": 260,
        "margin": {"l": 56, "r": 16, "t": 8, "b": 40},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        "yaxis": {"tickformat": ".0%", "range": [0, 1.02], "title": {"text": "utilization"}},
        "xaxis": {"type": "date", "range": [view.utc(start), view.utc(end)]},
    }
    return view.Chart(
        "chart-node-utilization",
        "GPU utilization",
        an.promql_utilization_history(node),
        {"data": traces, "layout": layout},
        any(times for times, _ in history.values()),
    )


# ------------------------------------------------------------------ the router


def _fail(exc: QueryError) -> HTTPException:
    status = 503 if exc.error_type in UNAVAILABLE else 500
    return HTTPException(status, f"{exc.error_type}: {exc.message}")


def make_router(
    settings: WebSettings, engine: Engine, records: RecordStore, templates: Jinja2Templates
) -> APIRouter:
    """Pages at ``/nodes`` and ``/nodes/{node}``, JSON at ``/api/v1/fleet/nodes[/{node}]``."""
    router = APIRouter()

    def now_ms() -> int:
        return int(settings.clock() * 1000)

    def page_error(request: Request, message: str, status: int) -> Response:
        context = {"title": settings.title, "message": message}
        return templates.TemplateResponse(request, "error.html", context, status_code=status)

    def state(request: Request, window: str, refresh: str) -> tuple[str, int] | Response:
        window = window or settings.default_window
        try:
            return window, view_state(window, refresh)
        except ValueError as exc:
            return page_error(request, str(exc), 400)

    def common(window: str, refresh: str, at_ms: int, base: str) -> dict[str, Any]:
        return nav_context(base, window, refresh, at_ms) | {
            "title": settings.title,
            "node_url": lambda n: node_url(n, window=window, refresh=refresh),
            "fmt": FORMAT,
            "utc": view.utc,
        }

    @router.get("/nodes", response_class=HTMLResponse, include_in_schema=False)
    def nodes_page(request: Request, window: str = "", refresh: str = "off") -> Response:
        parsed = state(request, window, refresh)
        if isinstance(parsed, Response):
            return parsed
        window, _ = parsed
        at = now_ms()
        try:
            inventory = an.node_inventory(engine, at)
        except QueryError as exc:
            return page_error(request, f"the node inventory failed: {exc.message}", 503)
        context = common(window, refresh, at, "/nodes") | {"inventory": inventory}
        return templates.TemplateResponse(request, "nodes.html", context)

    @router.get("/nodes/{node}", response_class=HTMLResponse, include_in_schema=False)
    def node_page(request: Request, node: str, window: str = "", refresh: str = "off") -> Response:
        parsed = state(request, window, refresh)
        if isinstance(parsed, Response):
            return parsed
        window, window_ms = parsed
        at = now_ms()
        range_ = promql_duration(window_ms)
        try:
            detail = an.node_detail(engine, node, at, range_, window_ms, records)
        except QueryError as exc:
            return page_error(request, f"the node's queries failed: {exc.message}", 503)
        if detail is None:
            context = {"title": settings.title, "node": node}
            return templates.TemplateResponse(
                request, "node_missing.html", context, status_code=404
            )
        step = step_for(window_ms)
        end = at - at % step
        warnings = list(detail.warnings)
        try:
            history = an.utilization_history(engine, node, end - window_ms, end, step)
        except QueryError as exc:
            warnings.append(f"GPU utilization: {exc.error_type}: {exc.message}")
            history = {}
        chart = _utilization_chart(history, node, end - window_ms, end)
        context = common(window, refresh, at, node_url(node)) | {
            "d": detail,
            "warnings": warnings,
            "chart": chart,
            "charts": [{"id": chart.id, "figure": chart.figure}],
            "plotly_version": plotly.__version__,
        }
        return templates.TemplateResponse(request, "node.html", context)

    @router.get("/api/v1/fleet/nodes", tags=["fleet"])
    def nodes_api() -> dict[str, Any]:
        """Every node now: GPUs known/up/allocated, utilization, memory, power, jobs, host
        CPU/memory/load, and the PromQL that computed them."""
        try:
            inventory = an.node_inventory(engine, now_ms())
        except QueryError as exc:
            raise _fail(exc) from None
        return {
            "nodes": [dataclasses.asdict(n) for n in inventory.rows],
            "promql": inventory.promql,
        }

    @router.get("/api/v1/fleet/nodes/{node}", tags=["fleet"])
    def node_api(node: str, window: str = "") -> dict[str, Any]:
        """One node now: GPUs with processes and allocations, disks, filesystems, NICs,
        InfiniBand ports, NFS mounts, mesh RTT matrix, XIDs over ``window``, agent health;
        each section with its PromQL. 404 for a node the fleet does not know."""
        window = window or settings.default_window
        try:
            window_ms = parse_duration(window)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            detail = an.node_detail(
                engine, node, now_ms(), promql_duration(window_ms), window_ms, records
            )
        except QueryError as exc:
            raise _fail(exc) from None
        if detail is None:
            raise HTTPException(404, f"no node named {node!r} has reported to Fleetscope")
        return dataclasses.asdict(detail)

    return router
