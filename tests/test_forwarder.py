"""The forwarder against real loopback HTTP servers."""

from __future__ import annotations

import collections
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import pytest
from conftest import serve_on_loopback
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from roder_analyticsd.fleet.forwarder import Forwarder, backoff_delay
from roder_analyticsd.fleet.model import AnalyticsEvent
from roder_analyticsd.fleet.receiver import create_app
from roder_analyticsd.fleet.stores import sqlite as sqlite_store

pytestmark = pytest.mark.anyio

FAST = {"backoff_base": 0.001, "backoff_cap": 0.01}


@contextmanager
def running(app: Starlette) -> Iterator[str]:
    with serve_on_loopback(app) as base:
        yield f"{base}/collect"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Sink:
    """A receiver stand-in: answers 503 to its first `fail` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.requests = 0
        self.batches: list[list[str]] = []
        self.headers: list[dict[str, str]] = []

    async def collect(self, request: Request) -> Response:
        self.requests += 1
        body = await request.body()
        if self.requests <= self.fail:
            return JSONResponse({"error": "unavailable"}, status_code=503)
        self.headers.append(dict(request.headers))
        ids = [ev["eventId"] for ev in json.loads(body)]
        self.batches.append(ids)
        return JSONResponse({"accepted": ids, "duplicates": [], "rejected": []})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/collect", self.collect, methods=["POST"])])

    @property
    def received(self) -> list[str]:
        return [i for batch in self.batches for i in batch]


def make_event(i: int, **props: Any) -> AnalyticsEvent:
    return AnalyticsEvent(
        schema_version="analytics.v2",
        event_id=f"ev-{i:04d}",
        event_name="feature_used",
        occurred_at="2025-03-01T12:00:00Z",
        installation_id="inst-local",
        instance_id="proc-1",
        deployment_mode="source",
        commit_hash="abc",
        app_version="1.0.0",
        platform="linux",
        properties={"module": "session", "loopStage": "loop_start", **props},
        session_id=f"thread-{i % 3}",
    )


async def until_empty(fw: Forwarder, timeout: float = 5) -> None:
    with anyio.fail_after(timeout):
        while await fw.pending():
            await anyio.sleep(0.005)


async def test_every_event_arrives_despite_failures(tmp_path: Path) -> None:
    sink = Sink(fail=3)
    events = [make_event(i) for i in range(95)]
    late = [make_event(i) for i in range(95, 107)]
    with running(sink.app()) as url:
        # A long poll interval: the late events only go out because enqueue wakes the loop.
        async with Forwarder(tmp_path / "fw.sqlite3", url, poll_interval=60, **FAST) as fw:
            assert await fw.enqueue(events) == 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(fw.run)
                await until_empty(fw)
                await fw.enqueue(late)
                await until_empty(fw)
                fw.stop()
    sent = [ev.event_id for ev in events + late]
    assert sink.received == sent  # each exactly once, oldest first
    assert all(1 <= len(batch) <= 20 for batch in sink.batches)
    assert [len(b) for b in sink.batches[:5]] == [20, 20, 20, 20, 15]
    assert sink.requests == 3 + len(sink.batches)
    assert all(h["content-type"] == "application/json" for h in sink.headers)
    with sqlite3.connect(tmp_path / "fw.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM forward_acked").fetchone() == (107,)
        assert conn.execute("SELECT COUNT(*) FROM forward_queue").fetchone() == (0,)


async def test_restarts_keep_the_queue_and_never_resend(tmp_path: Path) -> None:
    db = tmp_path / "fw.sqlite3"
    sink = Sink(fail=10**9)  # down until told otherwise
    events = [make_event(i) for i in range(30)]
    with running(sink.app()) as url:
        # 1: the receiver is down; the forwarder stops with everything unsent.
        async with Forwarder(db, url, **FAST) as fw:
            await fw.enqueue(events)
            async with anyio.create_task_group() as tg:
                tg.start_soon(fw.run)
                with anyio.fail_after(5):
                    while sink.requests < 3:
                        await anyio.sleep(0.005)
                fw.stop()
            assert await fw.pending() == 30
        assert sink.received == []

        # 2: a new forwarder on the same store sends the persisted queue.
        sink.fail = 0
        async with Forwarder(db, url, **FAST) as fw:
            await fw.drain()
            assert await fw.pending() == 0
        assert sink.received == [ev.event_id for ev in events]

        # 3: re-enqueueing acknowledged events queues nothing; new ones go out.
        fresh = [make_event(i) for i in range(30, 35)]
        async with Forwarder(db, url, **FAST) as fw:
            await fw.enqueue(events + fresh)
            assert await fw.pending() == 5
            await fw.drain()
        assert sink.received == [ev.event_id for ev in events + fresh]
    assert max(collections.Counter(sink.received).values()) == 1


async def test_overflow_drops_oldest_and_logs(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(15)]
    async with Forwarder(tmp_path / "fw.sqlite3", "http://127.0.0.1:9/collect", max_queue=10) as fw:
        with capture_logs() as logs:
            assert await fw.enqueue(events[:8]) == 0
            assert await fw.enqueue(events[8:]) == 5
        queued = await sqlite_store.next_batch(fw.conn, 100)
    assert [q.event_id for q in queued] == [ev.event_id for ev in events[5:]]
    overflow = [e for e in logs if e["event"] == "forward_queue_overflow"]
    assert overflow and overflow[0]["dropped"] == 5 and overflow[0]["log_level"] == "warning"
    assert overflow[0]["policy"] == "drop_oldest"


async def test_backoff_limits_the_retry_rate(tmp_path: Path) -> None:
    sink = Sink(fail=10**9)
    with running(sink.app()) as url, capture_logs() as logs:
        secret_url = url.replace("http://", "http://user:pw-SECRET@") + "?key=SECRET"
        async with Forwarder(
            tmp_path / "fw.sqlite3", secret_url, backoff_base=0.05, backoff_cap=0.1
        ) as fw:
            await fw.enqueue([make_event(1)])
            with anyio.move_on_after(0.5):
                await fw.run()
            rows = await sqlite_store.next_batch(fw.conn, 10)
    # Without backoff a loopback server takes hundreds of requests in 0.5 s.
    assert 2 <= sink.requests <= 25
    # The last request may have been cut off by the timeout before it was counted.
    assert rows[0].attempts in (sink.requests - 1, sink.requests)
    failures = [e for e in logs if e["event"] == "forward_failed"]
    assert failures and failures[0]["error"] == "HTTP 503"
    assert "SECRET" not in repr(logs)


def test_endpoint_must_be_http(tmp_path: Path) -> None:
    for bad in ("ftp://example.com/collect", "/collect", "collect"):
        with pytest.raises(ValueError, match="http"):
            Forwarder(tmp_path / "fw.sqlite3", bad)


def test_backoff_delay_is_full_jitter_under_the_cap() -> None:
    for attempt in range(0, 80):
        ceiling = min(60.0, 0.5 * 2**attempt)
        samples = [backoff_delay(attempt, 0.5, 60.0) for _ in range(50)]
        assert all(0.0 <= s <= ceiling for s in samples)
    assert max(backoff_delay(30, 0.5, 60.0) for _ in range(200)) > 30  # spread, not fixed


async def test_forwards_redacted_events_into_the_real_receiver(tmp_path: Path) -> None:
    receiver_db = tmp_path / "receiver.sqlite3"
    app = create_app(str(receiver_db), token="fleet-token")
    events = [make_event(i, cwd="/home/alice/secret-project", note="~/private") for i in range(25)]
    with running(app) as url:
        async with Forwarder(tmp_path / "fw.sqlite3", url, token="fleet-token", **FAST) as fw:
            await fw.enqueue(events)
            bodies = b"".join(q.body for q in await sqlite_store.next_batch(fw.conn, 100))
            assert b"/home/alice" not in bodies and b"~/private" not in bodies
            await fw.drain()
    async with aiosqlite.connect(receiver_db) as conn:
        assert await sqlite_store.fleet_dau(conn) == [{"day": "2025-03-01", "installations": 1}]
        sql = (
            "SELECT COUNT(*), COUNT(DISTINCT session_id), MAX(properties_json)"
            " FROM collected_events"
        )
        async with conn.execute(sql) as cur:
            count, sessions, props = await cur.fetchone()
    assert (count, sessions) == (25, 3)
    assert json.loads(props) == {"loopStage": "loop_start", "module": "session"}
