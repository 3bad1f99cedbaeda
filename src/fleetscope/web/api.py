"""JSON API for the fleet overview: ``/api/v1/fleet/usage`` and ``/api/v1/fleet/overview``.

Numbers come from the stored metrics (never from the simulator). Bad parameters are answered
400 with ``{"detail": message}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from fleetscope.analyze import overview as ov
from fleetscope.store import MetricStore, RecordStore
from fleetscope.web import view
from fleetscope.web.params import parse_duration
from fleetscope.web.settings import WebSettings


def _window_ms(window: str) -> int:
    try:
        return parse_duration(window)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def make_router(settings: WebSettings, metrics: MetricStore, records: RecordStore) -> APIRouter:
    router = APIRouter(prefix="/api/v1/fleet", tags=["fleet"])

    @router.get("/usage")
    def usage(window: str = "7d", by: str = "team") -> dict[str, float]:
        """GPU-hours allocated per ``by`` label value over the last ``window`` (e.g. ``7d``)."""
        window_ms = _window_ms(window)
        if by not in ov.USAGE_LABELS:
            raise HTTPException(400, f"by must be one of {', '.join(ov.USAGE_LABELS)}, not {by!r}")
        now_ms = int(settings.clock() * 1000)
        return ov.gpu_hours_by(metrics, now_ms - window_ms, now_ms, by)

    @router.get("/overview")
    def overview(window: str = "") -> dict[str, Any]:
        """Everything the overview page shows for the last ``window`` (questions, charts, jobs)."""
        window = window or settings.default_window
        built = view.build(
            metrics,
            records,
            window=window,
            window_ms=_window_ms(window),
            now_ms=int(settings.clock() * 1000),
            idle_threshold=settings.idle_threshold,
        )
        return built.to_json()

    return router
