"""The web app: ``create_app`` wires the token guard, pages, JSON API, ingest and static files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetscope.query import Engine
from fleetscope.store import MetricStore, RecordStore
from fleetscope.web import api, auth, nodes, pages, prometheus
from fleetscope.web.settings import WebSettings
from fleetscope.web.view import humanize

__all__ = ["WebSettings", "create_app", "plotly_js"]

HERE = Path(__file__).parent
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", _CSP.encode()),
]


def plotly_js() -> Path:
    """``plotly.min.js`` of the installed ``plotly`` package (served at /static/plotly.min.js)."""
    path = Path(str(resources.files("plotly").joinpath("package_data", "plotly.min.js")))
    if not path.is_file():
        raise RuntimeError(f"the plotly package has no {path}: reinstall plotly")
    return path


class SecurityHeaders:
    """ASGI middleware adding defensive headers (CSP, nosniff, no framing) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def embedded_engine(metrics: MetricStore) -> Engine:
    """The embedded PromQL evaluator over ``metrics``."""
    from fleetscope.query.engine import Evaluator

    return Evaluator(metrics)


def create_app(
    settings: WebSettings,
    metrics: MetricStore,
    records: RecordStore,
    engine: Engine | None = None,
) -> FastAPI:
    """The FastAPI app over the two stores; creates ``DATA/admin.token`` on first start.

    ``engine`` answers PromQL — for the Prometheus API (``/api/v1/query`` …), the overview page
    and the fleet JSON API alike; by default the embedded evaluator over ``metrics``, which
    otherwise only takes ingested samples.
    """
    from fleetscope.ingest.receiver import make_router as ingest_router

    token = auth.AdminToken.load_or_create(settings.data_dir)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["duration"] = humanize
    guard = auth.Guard(token, settings, templates)
    app = FastAPI(
        title=settings.title,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.admin_token = token
    app.add_middleware(auth.RequireToken, guard=guard)
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz", response_class=PlainTextResponse, include_in_schema=False)
    def healthz() -> str:
        return "ok"

    plotly_path = plotly_js()

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_min_js() -> FileResponse:
        return FileResponse(
            plotly_path,
            media_type="text/javascript",
            headers={"cache-control": "public, max-age=86400"},
        )

    engine = engine if engine is not None else embedded_engine(metrics)
    app.include_router(auth.make_router(guard))
    app.include_router(pages.make_router(settings, engine, records, templates))
    app.include_router(api.make_router(settings, engine, records))
    app.include_router(nodes.make_router(settings, engine, records, templates))
    app.include_router(ingest_router(metrics, records))
    app.include_router(prometheus.make_router(engine, settings.clock))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
