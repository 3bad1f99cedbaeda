"""HTML pages (Jinja2): the fleet overview at ``/``, its numbers from the query engine.

View state lives in the query string (``window``, ``refresh``) so a view can be shared by URL.
"""

from __future__ import annotations

from typing import Any

import plotly
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from fleetscope.query import Engine
from fleetscope.store import RecordStore
from fleetscope.web import view
from fleetscope.web.params import nav_context, view_state
from fleetscope.web.settings import WebSettings

MAX_ROWS = 50  # job table rows shown


def make_router(
    settings: WebSettings, engine: Engine, records: RecordStore, templates: Jinja2Templates
) -> APIRouter:
    router = APIRouter(default_response_class=HTMLResponse)

    def error(request: Request, message: str) -> Response:
        context = {"title": settings.title, "message": message}
        return templates.TemplateResponse(request, "error.html", context, status_code=400)

    @router.get("/", include_in_schema=False)
    def overview_page(request: Request, window: str = "", refresh: str = "off") -> Response:
        window = window or settings.default_window
        try:
            window_ms = view_state(window, refresh)
        except ValueError as exc:
            return error(request, str(exc))
        now_ms = int(settings.clock() * 1000)
        ov = view.build(
            engine,
            records,
            window=window,
            window_ms=window_ms,
            now_ms=now_ms,
            idle_threshold=settings.idle_threshold,
        )
        context: dict[str, Any] = {
            **nav_context("/", window, refresh, now_ms),
            "title": settings.title,
            "ov": ov,
            "charts": [{"id": c.id, "figure": c.figure} for c in ov.charts],
            "plotly_version": plotly.__version__,
            "max_rows": MAX_ROWS,
        }
        return templates.TemplateResponse(request, "overview.html", context)

    return router
