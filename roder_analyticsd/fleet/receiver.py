"""The analytics.v2 receiver: `POST /collect` and `GET /healthz`.

Delivery is at-least-once, so the receiver deduplicates by eventId. A bad
event is rejected in a 200 response (never a 5xx: clients retry those); only
a bad body as a whole is refused (400, 408, 413, 415). 503 (with
Retry-After) means the store could not take the batch and nothing of it was
written: the client retries.

Held against slow and many clients (issue "a receiver that holds"):
- a request's headers must arrive within `header_timeout` (`GuardedH11`,
  also between keep-alive requests), its body within `body_timeout`;
- bodies in flight share a byte budget (`bodies_budget`, default twice the
  body limit) taken before a body is read and kept until its batch is
  stored, so memory stays bounded however many clients send at once;
- an oversized body is drained (up to `drain_limit`, discarding it) before
  the 413 goes out, so a plain client that sends the whole body first, as
  urllib does, reads the 413 instead of a connection reset.

The store is a SQLite path or a PostgreSQL URL (`fleet.stores`); the
receiver keeps no state of its own, so any number of them may share one
PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import h11
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from roder_analyticsd.fleet.model import NotABatchError, validate_batch
from roder_analyticsd.fleet.stores import FleetStore, StoreUnavailable, open_fleet_store

DEFAULT_MAX_BODY = 10 * 1024 * 1024
RETRY_AFTER_S = 2
# how long a failed write keeps /healthz at 503 (unless a write succeeds)
FAILURE_MEMORY_S = 10.0

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int = DEFAULT_MAX_BODY
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    bodies_budget: int | None = None  # bytes; None: 2 × max_body
    drain_limit: int | None = None  # bytes; None: 4 × max_body

    @property
    def budget(self) -> int:
        return self.bodies_budget if self.bodies_budget is not None else 2 * self.max_body

    @property
    def drain(self) -> int:
        return self.drain_limit if self.drain_limit is not None else 4 * self.max_body


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's headers: a
    connection that has not sent complete headers `header_timeout` seconds
    after it opened (or after its last response) is closed. uvicorn alone
    waits forever for a client that trickles its headers."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_timer is not None and self.conn.their_state is not h11.IDLE:
            self._header_timer.cancel()  # the headers are in
            self._header_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers, same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


def guarded_protocol(header_timeout: float) -> type[GuardedH11]:
    return type("GuardedH11Timed", (GuardedH11,), {"header_timeout": header_timeout})


class ByteBudget:
    """A counting semaphore in bytes: bodies in flight take their size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._changed = anyio.Condition()

    @asynccontextmanager
    async def take(self, n: int) -> AsyncIterator[None]:
        n = min(n, self.capacity)  # one body alone always fits
        async with self._changed:
            while self.in_use + n > self.capacity:
                await self._changed.wait()
            self.in_use += n
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    self.in_use -= n
                    self._changed.notify_all()


class _TooLarge(Exception):
    pass


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _unavailable_response(message: str) -> JSONResponse:
    return _error(503, message, {"Retry-After": str(RETRY_AFTER_S)})


def _authorized(request: Request, token: str) -> bool:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    # compare_digest: no timing hint about how much of the token matched.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credential.strip().encode(), token.encode()
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


class _Body:
    """The request body over the raw ASGI receive, so that what is left of an
    oversized body can still be drained (request.stream() cannot be resumed)."""

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self.done = False

    async def _next(self) -> bytes:
        message = await self._receive()
        if message["type"] != "http.request":
            self.done = True
            raise ClientDisconnect
        self.done = not message.get("more_body", False)
        return message.get("body", b"")

    async def read(self, limit: int) -> bytes:
        """The whole body; _TooLarge once it passes `limit`."""
        chunks: list[bytes] = []
        size = 0
        while not self.done:
            chunk = await self._next()
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def drain(self, limit: int) -> None:
        """Read and discard what is left, up to `limit` bytes."""
        seen = 0
        try:
            while not self.done and seen <= limit:
                seen += len(await self._next())
        except ClientDisconnect:
            pass


class _Health:
    """The last write's outcome, so /healthz says what a POST would meet."""

    def __init__(self) -> None:
        self.failed_at = 0.0
        self.failure = ""

    def failed(self, exc: StoreUnavailable) -> None:
        if not exc.transient:
            self.failed_at, self.failure = time.monotonic(), str(exc)

    def succeeded(self) -> None:
        self.failed_at, self.failure = 0.0, ""

    def recent_failure(self) -> str | None:
        if self.failure and time.monotonic() - self.failed_at < FAILURE_MEMORY_S:
            return self.failure
        return None


async def _retention(store: Any, days: int) -> None:
    while True:
        try:
            dropped = await store.apply_retention(days)
            if dropped:
                log.info("retention_dropped_days", days=len(dropped), before=str(dropped[-1]))
        except StoreUnavailable as exc:
            log.warning("retention_failed", error=str(exc))
        await asyncio.sleep(3600)


def create_app(
    store: str,
    *,
    token: str | None,
    max_body: int = DEFAULT_MAX_BODY,
    busy_timeout_ms: int = 5000,
    limits: Limits | None = None,
    retention_days: int = 0,
    extra_routes: list[BaseRoute] | None = None,
) -> Starlette:
    """The receiver as an ASGI app over `store` (a SQLite path or a
    PostgreSQL URL). With a (non-empty) `token`, /collect requires
    `Authorization: Bearer <token>`; /healthz never does. `retention_days`
    applies to stores that prune (PostgreSQL: whole day partitions, at
    start and hourly). `extra_routes` (e.g. a page at `/`) are served
    beside the receiver's own."""
    limits = limits or Limits(max_body=max_body)
    max_body = limits.max_body

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        opened = await open_fleet_store(store, busy_timeout_ms=busy_timeout_ms)
        pruning = None
        if retention_days > 0 and hasattr(opened, "apply_retention"):
            pruning = asyncio.get_running_loop().create_task(_retention(opened, retention_days))
        try:
            yield {"store": opened, "budget": ByteBudget(limits.budget), "health": _Health()}
        finally:
            if pruning is not None:
                pruning.cancel()
            await opened.close()

    async def collect(request: Request) -> Response:
        if token and not _authorized(request, token):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        if _media_type(request) != "application/json":
            return _error(415, "Content-Type must be application/json")
        fleet_store: FleetStore = request.state.store
        health: _Health = request.state.health
        declared = _declared_length(request)
        too_large = _error(413, f"body is larger than {max_body} bytes", {"Connection": "close"})
        reader = _Body(request)
        if declared is not None and declared > max_body:
            with anyio.move_on_after(limits.body_timeout):
                await reader.drain(limits.drain)
            return too_large
        # Memory is bounded by the budget: a body takes its share before it
        # is read, and keeps it until its events are stored.
        async with request.state.budget.take(declared if declared is not None else max_body):
            try:
                with anyio.fail_after(limits.body_timeout):
                    body = await reader.read(max_body)
            except _TooLarge:
                with anyio.move_on_after(limits.body_timeout):
                    await reader.drain(limits.drain)
                return too_large
            except TimeoutError:
                return _error(408, f"body not received within {limits.body_timeout:g} s",
                              {"Connection": "close"})  # fmt: skip
            except ClientDisconnect:
                return Response(status_code=400)
            try:
                # Off the event loop: a 10 MiB batch takes a while to validate.
                events, rejected = await anyio.to_thread.run_sync(validate_batch, body)
            except NotABatchError as exc:
                return _error(400, str(exc))
            del body
            try:
                accepted, duplicates = await fleet_store.insert(events)
            except StoreUnavailable as exc:
                health.failed(exc)
                log.error("collect_store_failed", error=str(exc), events=len(events))
                return _unavailable_response("store unavailable, retry later")
        health.succeeded()
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
        health: _Health = request.state.health
        failure = health.recent_failure()
        if failure is None:
            try:
                await request.state.store.probe()
            except StoreUnavailable as exc:
                failure = str(exc)
        if failure is not None:
            return JSONResponse(
                {"ok": False, "error": failure},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return JSONResponse({"ok": True})

    routes: list[BaseRoute] = [
        Route("/collect", collect, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    # Further routes (the dashboard page) are mounted beside these.
    routes.extend(extra_routes or [])
    return Starlette(routes=routes, lifespan=lifespan)


def uvicorn_config(app: Starlette, limits: Limits, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings for the receiver: the guarded h11 protocol, quiet."""
    return uvicorn.Config(
        app,
        http=guarded_protocol(limits.header_timeout),
        log_level="warning",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=min(5, limits.header_timeout),
        **kwargs,
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
    store: str,
    host: str,
    port: int,
    token: str | None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
) -> None:
    """Run the receiver until SIGINT/SIGTERM. Raises ValueError (address not
    allowed) or StoreUnavailable/OSError (store unusable) before listening."""
    check_listen_allowed(host, token)
    # Open the store once up front: a failure is a clear exception here, not
    # a uvicorn lifespan failure (which would sys.exit).
    opened = await open_fleet_store(store)
    await opened.close()
    limits = Limits(max_body=max_body)
    config = uvicorn_config(
        create_app(store, token=token, limits=limits), limits, host=host.strip().strip("[]"),
        port=port,
    )  # fmt: skip
    await uvicorn.Server(config).serve()
