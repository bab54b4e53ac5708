"""The analytics.v2 receiver: `POST /collect` and `GET /healthz`.

Delivery is at-least-once, so the receiver deduplicates by eventId. A bad
event is rejected in a 200 response (never a 5xx: clients retry those); only
a bad body as a whole is refused (400, 413, 415). 503 means the store could
not be written and the client should retry.
"""

from __future__ import annotations

import hmac
import ipaddress
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from roder_analyticsd.fleet.model import NotABatchError, validate_batch
from roder_analyticsd.fleet.stores.sqlite import insert_collected, open_db

DEFAULT_MAX_BODY = 10 * 1024 * 1024

log = structlog.get_logger()


class _TooLarge(Exception):
    pass


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _authorized(request: Request, token: str) -> bool:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    # compare_digest: no timing hint about how much of the token matched.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credential.strip().encode(), token.encode()
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (without reading on) once it passes `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    db_path: str,
    *,
    token: str | None,
    max_body: int = DEFAULT_MAX_BODY,
    busy_timeout_ms: int = 5000,
) -> Starlette:
    """The receiver as an ASGI app. With a (non-empty) `token`, /collect
    requires `Authorization: Bearer <token>`; /healthz never does."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        conn = await open_db(db_path, busy_timeout_ms=busy_timeout_ms)
        try:
            # One connection: the lock keeps one transaction at a time on it.
            yield {"conn": conn, "lock": anyio.Lock()}
        finally:
            await conn.close()

    async def collect(request: Request) -> Response:
        if token and not _authorized(request, token):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        if _media_type(request) != "application/json":
            return _error(415, "Content-Type must be application/json")
        try:
            body = await _read_body(request, max_body)
        except _TooLarge:
            return _error(413, f"body is larger than {max_body} bytes")
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            # Off the event loop: a 10 MiB batch takes a while to validate.
            events, rejected = await anyio.to_thread.run_sync(validate_batch, body)
        except NotABatchError as exc:
            return _error(400, str(exc))
        try:
            async with request.state.lock:
                accepted, duplicates = await insert_collected(request.state.conn, events)
        except sqlite3.Error as exc:
            log.error("collect_store_failed", error=str(exc), events=len(events))
            return _error(503, "store unavailable, retry later")
        return JSONResponse(
            {
                "accepted": accepted,
                "duplicates": duplicates,
                "rejected": [
                    {"index": r.index, "eventId": r.event_id, "reason": r.reason} for r in rejected
                ],
            }
        )

    async def healthz(request: Request) -> Response:
        try:
            async with request.state.lock:
                # Cheapest real write check: take the write lock, write nothing.
                await request.state.conn.execute("BEGIN IMMEDIATE")
                await request.state.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/collect", collect, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def is_loopback(host: str) -> bool:
    bare = host.strip().strip("[]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def check_listen_allowed(host: str, token: str | None) -> None:
    """Raise ValueError for a non-loopback address without a token."""
    if not token and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on non-loopback address {host} without [analytics.collect] token"
        )


async def serve(
    db_path: str,
    host: str,
    port: int,
    token: str | None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
) -> None:
    """Run the receiver until SIGINT/SIGTERM. Raises ValueError (address not
    allowed) or sqlite3.Error/OSError (store unusable) before listening."""
    check_listen_allowed(host, token)
    # Open the store once up front: a failure is a clear exception here, not
    # a uvicorn lifespan failure (which would sys.exit).
    conn = await open_db(db_path)
    await conn.close()
    config = uvicorn.Config(
        create_app(db_path, token=token, max_body=max_body),
        host=host.strip().strip("[]"),
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    await uvicorn.Server(config).serve()
