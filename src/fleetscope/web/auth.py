"""Admin-token authentication: the token file, the login cookie, and the guard on every route.

The first start writes a random token to ``DATA/admin.token`` (mode 0600); later starts reuse
it. Scripts and agents send ``Authorization: Bearer <token>``; a browser opens the login URL
(``/login?token=…``) once, which sets an HttpOnly cookie holding an HMAC of the token (never the
token itself) and redirects to ``/``. Every path except ``/healthz`` and the login/logout pages
needs one of the two; without, HTML requests get a 401 page saying how to log in and everything
else a 401 JSON body. Tokens are compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetscope.web.settings import WebSettings

log = logging.getLogger(__name__)

TOKEN_FILE = "admin.token"
OPEN_PATHS = frozenset({"/healthz", "/login", "/logout"})
_SESSION_SALT = b"fleetscope-session-v1"


def login_url(base: str, token: str) -> str:
    """The URL that logs a browser in: ``http://host:port/login?token=…``."""
    return f"{base.rstrip('/')}/login?{urlencode({'token': token})}"


@dataclass(frozen=True)
class AdminToken:
    """The server's admin token and the file it lives in."""

    value: str
    path: Path

    @classmethod
    def load_or_create(cls, data_dir: Path) -> AdminToken:
        """Read ``data_dir/admin.token``, or create it (mode 0600) with a new random token.

        Creation is atomic (a private temporary file linked into place), so two servers
        starting together end up with the same token. Raises ``ValueError`` for an empty file.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / TOKEN_FILE
        if not path.exists():
            value = secrets.token_urlsafe(32)
            tmp = data_dir / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, f"{value}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
                log.info("wrote a new admin token to %s", path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        value = path.read_text().strip()
        if not value:
            raise ValueError(f"{path} is empty: delete it to have a new admin token generated")
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users; chmod 600 it", path)
        return cls(value, path)

    def check(self, candidate: str) -> bool:
        """True when ``candidate`` is the token (constant-time comparison)."""
        return hmac.compare_digest(candidate.encode(), self.value.encode())

    def session(self) -> str:
        """The login cookie's value: an HMAC of the token, so the cookie never holds it."""
        return hmac.new(self.value.encode(), _SESSION_SALT, hashlib.sha256).hexdigest()

    def check_session(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.session().encode())

    def login_url(self, base: str) -> str:
        return login_url(base, self.value)

    def allows(self, conn: HTTPConnection, cookie_name: str) -> bool:
        """True when a request carries the bearer token or the login cookie."""
        scheme, _, credential = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.check(credential.strip()):
            return True
        cookie = conn.cookies.get(cookie_name)
        return cookie is not None and self.check_session(cookie)


def wants_html(request: Request) -> bool:
    """True for a browser page request (not ``/api/v1/…`` and accepting ``text/html``)."""
    return not request.url.path.startswith("/api/v1/") and "text/html" in request.headers.get(
        "accept", ""
    )


def _safe_next(target: str) -> str:
    """A local path to go to after login; anything else (other hosts, schemes) becomes ``/``."""
    ok = target.startswith("/") and not target.startswith(("//", "/\\"))
    return target if ok else "/"


class Guard:
    """Deny responses: an HTML page that explains how to log in, or a JSON body for clients."""

    def __init__(self, token: AdminToken, settings: WebSettings, templates: Jinja2Templates):
        self.token = token
        self.settings = settings
        self.templates = templates

    def deny(self, request: Request, message: str = "") -> Response:
        if wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.url.path in OPEN_PATHS:
                target = request.query_params.get("next", "/")
            return self.templates.TemplateResponse(
                request,
                "unauthorized.html",
                {
                    "title": self.settings.title,
                    "token_path": str(self.token.path.resolve()),
                    "message": message,
                    "next": _safe_next(target),
                },
                status_code=401,
            )
        return JSONResponse(
            {
                "detail": message
                or "authentication required: send 'Authorization: Bearer <token>' with the "
                f"admin token from {self.token.path.name} in the server's data directory"
            },
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="fleetscope"'},
        )


class RequireToken:
    """ASGI middleware letting a request through only with the admin token (bearer or cookie).

    Guards everything mounted in the app (pages, API, static files, ingest) except
    :data:`OPEN_PATHS`.
    """

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.guard.token.allows(HTTPConnection(scope), self.guard.settings.cookie_name):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.guard.deny(Request(scope, receive))(scope, receive, send)


def make_router(guard: Guard) -> APIRouter:
    """``/login`` (GET with ``?token=``, or the form of the 401 page) and ``/logout``."""
    router = APIRouter()
    settings = guard.settings

    def _login(request: Request, token: str, target: str) -> Response:
        if not token:
            return guard.deny(request)
        if not guard.token.check(token):
            return guard.deny(request, "That token is not this server's admin token.")
        response = RedirectResponse(_safe_next(target), status_code=303)
        response.set_cookie(
            settings.cookie_name,
            guard.token.session(),
            max_age=settings.cookie_max_age_s,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    @router.get("/login", include_in_schema=False)
    def login(request: Request, token: str = "", next: str = "/") -> Response:
        return _login(request, token, next)

    @router.post("/login", include_in_schema=False)
    def login_form(
        request: Request,
        token: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        return _login(request, token.strip(), next)

    @router.get("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(settings.cookie_name, httponly=True, samesite="lax")
        return response

    return router
