"""JSON API for the fleet overview: ``/api/v1/fleet/usage`` and ``/api/v1/fleet/overview``.

Metric numbers are PromQL answered by the query :class:`~fleetscope.query.Engine` (never the
simulator); jobs come from the record store. Bad parameters are answered 400 with
``{"detail": message}``; a usage query the engine cannot answer 503 (backend unavailable, timed
out) or 500, with the engine's message.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from fleetscope.analyze import overview as ov
from fleetscope.query import Engine, QueryError
from fleetscope.store import RecordStore
from fleetscope.web import view
from fleetscope.web.params import parse_duration
from fleetscope.web.settings import WebSettings

UNAVAILABLE = ("unavailable", "timeout", "canceled")


def _window_ms(window: str) -> int:
    try:
        return parse_duration(window)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def make_router(settings: WebSettings, engine: Engine, records: RecordStore) -> APIRouter:
    router = APIRouter(prefix="/api/v1/fleet", tags=["fleet"])

    @router.get("/usage")
    def usage(window: str = "7d", by: str = "team") -> dict[str, float]:
        """GPU-hours allocated per ``by`` label value over the last ``window`` (e.g. ``7d``):
        ``sum by (<by>) (count_over_time(fleet_gpu_allocation[<window>])) * <interval s> / 3600``
        at now, with the sampling interval measured by ``ov.PROMQL_INTERVAL``."""
        window_ms = _window_ms(window)
        if by not in ov.USAGE_LABELS:
            raise HTTPException(400, f"by must be one of {', '.join(ov.USAGE_LABELS)}, not {by!r}")
        now_ms = int(settings.clock() * 1000)
        try:
            interval = ov.sampling_interval_ms(engine, now_ms, window_ms)
            return ov.gpu_hours_by(engine, now_ms, window_ms, interval, by)
        except QueryError as exc:
            status = 503 if exc.error_type in UNAVAILABLE else 500
            raise HTTPException(status, f"{exc.error_type}: {exc.message}") from None

    @router.get("/overview")
    def overview(window: str = "") -> dict[str, Any]:
        """Everything the overview page shows for the last ``window`` (questions, charts, jobs)."""
        window = window or settings.default_window
        built = view.build(
            engine,
            records,
            window=window,
            window_ms=_window_ms(window),
            now_ms=int(settings.clock() * 1000),
            idle_threshold=settings.idle_threshold,
        )
        return built.to_json()

    return router
