"""The opt-in forwarder: sends local analytics.v2 events to a receiver.

Events wait in the SQLite `forward_queue` (so they survive restarts) and are
sent oldest first in batches of at most `batch_size`. Any 2xx acknowledges a
batch: its ids move to `forward_acked` and are never queued again. Anything
else is retried with exponential backoff and full jitter. When the queue is
over `max_queue`, the oldest events are dropped and a warning is logged.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from types import TracebackType

import aiosqlite
import anyio
import httpx
import structlog

from roder_analyticsd.fleet.model import AnalyticsEvent
from roder_analyticsd.fleet.redact import clean_base_url
from roder_analyticsd.fleet.stores import sqlite as sqlite_store

log = structlog.get_logger()


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0.0, min(cap, base * 2 ** min(attempt, 62)))


class Forwarder:
    """Use as `async with Forwarder(...) as fw:` then `await fw.run()` in a
    task (until `stop()` or cancellation), or `await fw.drain()`.

    `db` is a store path (the forwarder opens its own connection) or an open
    connection that nobody else uses concurrently: the forwarder's lock only
    serializes its own transactions."""

    def __init__(
        self,
        db: str | os.PathLike[str] | aiosqlite.Connection,
        endpoint: str,
        *,
        batch_size: int = 20,
        max_queue: int = 100_000,
        token: str | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 60.0,
        poll_interval: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        if batch_size < 1 or max_queue < 1:
            raise ValueError("batch_size and max_queue must be at least 1")
        shown = clean_base_url(endpoint)
        if shown is None:
            raise ValueError("[analytics.forward] endpoint must be an http(s) URL")
        self._db = db
        self.endpoint = endpoint
        self._shown_endpoint = shown  # for logs: no userinfo or query
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.poll_interval = poll_interval
        self._headers = {"content-type": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._conn: aiosqlite.Connection | None = None
        self._owns_conn = False
        self._client: httpx.AsyncClient | None = None
        self._lock = anyio.Lock()  # one transaction at a time on the connection
        self._wake = anyio.Event()  # set by enqueue() and stop()
        self._stopped = anyio.Event()  # set by stop() only
        self._failures = 0

    async def __aenter__(self) -> Forwarder:
        if isinstance(self._db, aiosqlite.Connection):
            self._conn = self._db
            await sqlite_store.ensure_schema(self._conn)
        else:
            self._conn = await sqlite_store.open_db(self._db)
            self._owns_conn = True
        self._client = httpx.AsyncClient(timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            if self._client is not None:
                await self._client.aclose()
            if self._conn is not None and self._owns_conn:
                await self._conn.close()
        self._client = self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("Forwarder is not open: use `async with`")
        return self._conn

    async def enqueue(self, events: Iterable[AnalyticsEvent]) -> int:
        """Queue events (redacted; acknowledged ids skipped); returns how many
        old events were dropped because the queue was full."""
        async with self._lock:
            dropped = await sqlite_store.enqueue(self.conn, events, self.max_queue)
        if dropped:
            log.warning(
                "forward_queue_overflow",
                dropped=dropped,
                max_queue=self.max_queue,
                policy="drop_oldest",
            )
        self._wake.set()
        return dropped

    async def pending(self) -> int:
        async with self._lock:
            return await sqlite_store.queue_size(self.conn)

    async def send_once(self) -> int | None:
        """Send the oldest batch. Number of events acknowledged (0 when the
        queue is empty), or None when the send failed."""
        if self._client is None:
            raise RuntimeError("Forwarder is not open: use `async with`")
        async with self._lock:
            batch = await sqlite_store.next_batch(self.conn, self.batch_size)
        if not batch:
            return 0
        ids = [q.event_id for q in batch]
        body = b"[" + b",".join(q.body for q in batch) + b"]"
        try:
            response = await self._client.post(self.endpoint, content=body, headers=self._headers)
            failure = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            failure = f"{type(exc).__name__}: {exc}"
        async with self._lock:
            if failure is None:
                await sqlite_store.ack(self.conn, ids)
            else:
                await sqlite_store.record_attempt(self.conn, ids)
        if failure is not None:
            log.warning(
                "forward_failed", endpoint=self._shown_endpoint, events=len(ids), error=failure
            )
            return None
        return len(ids)

    async def _backoff(self) -> None:
        delay = backoff_delay(self._failures, self.backoff_base, self.backoff_cap)
        self._failures += 1
        # Only stop() cuts a backoff short: new events must not hammer a
        # failing receiver.
        with anyio.move_on_after(delay):
            await self._stopped.wait()

    async def _idle(self) -> None:
        with anyio.move_on_after(self.poll_interval):
            await self._wake.wait()
        self._wake = anyio.Event()

    async def drain(self) -> None:
        """Send until the queue is empty, retrying failures with backoff."""
        while not self._stopped.is_set():
            sent = await self.send_once()
            if sent is None:
                await self._backoff()
            elif sent == 0:
                return
            else:
                self._failures = 0

    async def run(self) -> None:
        """Forward until stop() is called or the task is cancelled."""
        while not self._stopped.is_set():
            await self.drain()
            if not self._stopped.is_set():
                await self._idle()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
