"""The dashboard as one ASGI app: the page, its static files, `/api/*`,
and the guard in front of them (access and security headers)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from roder_analyticsd.web.api import api_routes
from roder_analyticsd.web.store import ReadOnlyStore

STATIC = Path(__file__).parent / "static"
COOKIE = "roder_dashboard"
# Nothing but this origin: no inline script or style, no other host, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def _loopback_host(host_header: str) -> bool:
    """Is the Host header a loopback name? (Without a token the page trusts
    only loopback: a DNS-rebinding page would send its own host name.)"""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return is_loopback(host)


def is_loopback(host: str) -> bool:
    """A loopback name or address (`localhost`, 127.0.0.0/8, ::1)."""
    bare = host.strip().strip("[]").lower()
    if bare == "localhost" or bare.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, not the token itself."""
    return hmac.new(token.encode(), b"roder-dashboard-session", hashlib.sha256).hexdigest()


class Guard:
    """Access control and security headers for every response.

    No token: only requests whose Host is a loopback name. With a token:
    `Authorization: Bearer <token>`, or the cookie that a one-time
    `?token=<token>` sets (answered with a redirect to the same URL
    without it, so the token leaves the address bar and history).
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        request = Request(scope)
        refusal = self._check(request)
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def _check(self, request: Request) -> Response | None:
        api = request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/")
        if self.token is None:
            if _loopback_host(request.headers.get("host", "")):
                return None
            return _refuse(403, "this dashboard answers on loopback only", api)
        token = self.token
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), token.encode()
        ):
            return None
        cookies = SimpleCookie()
        try:
            cookies.load(request.headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no credential
            cookies = SimpleCookie()
        held = cookies.get(COOKIE)
        if held is not None and hmac.compare_digest(
            held.value.encode(), cookie_value(token).encode()
        ):
            return None
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            rest = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True)]
            rest = [(k, v) for k, v in rest if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = Response(status_code=303, headers={"Location": target})
            response.set_cookie(
                COOKIE,
                cookie_value(token),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
            return response
        return _refuse(401, "a token is required: open the page with ?token=…", api)


def _refuse(status: int, message: str, api: bool) -> Response:
    from roder_analyticsd.web.api import error

    if api:
        response: Response = error(status, message)
    else:
        response = Response(f"{message}\n", status_code=status, media_type="text/plain")
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


class _Static(StaticFiles):
    """The page's files: revalidated on every load (an upgrade never mixes
    an old script with a new API)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def create_app(
    store: Path,
    *,
    token: str | None = None,
    status: Callable[[], Any] | None = None,
) -> Starlette:
    """The dashboard over the store at `store` (opened read-only).

    `status` gathers the `status --json` object (the daemon's view of the
    data dir); without it `/api/status` reports only the store. Mounted into
    another app (`serve`), call `app.state.store.close()` on its shutdown.
    """
    ro = ReadOnlyStore(store)

    async def store_only() -> dict[str, Any]:
        return {"store": str(store), "storeExists": store.exists()}

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await ro.close()

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            *api_routes(ro, status or store_only),
            Mount("/static", _Static(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.store = ro
    app.add_middleware(Guard, token=token)
    return app


def mount_dashboard(
    host_app: Starlette,
    store: Path,
    *,
    token: str | None = None,
    status: Callable[[], Any] | None = None,
) -> Starlette:
    """Serve the dashboard at `/` of another Starlette app (the receiver of
    `serve`): its own routes keep precedence, every other path is the
    dashboard's, and the dashboard's read-only connections close with the
    host app's lifespan."""
    dashboard = create_app(store, token=token, status=status)
    host_app.router.routes.append(Mount("/", app=dashboard))
    inner = host_app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        try:
            async with inner(app) as state:
                yield state
        finally:
            await dashboard.state.store.close()

    host_app.router.lifespan_context = lifespan
    return host_app
