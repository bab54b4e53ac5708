"""Forwarding local activity: a real store built by `--once`, the real
receiver app under uvicorn on 127.0.0.1 (failing its first requests), and
`run_forwarding` until everything is acknowledged."""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import copy_sample, run_cli, serve_on_loopback

from roder_analyticsd.config import load_settings
from roder_analyticsd.fleet.forwarding import (
    TRIGGER,
    disable_forwarding,
    enable_forwarding,
    forwarding_enabled,
    run_forwarding,
)
from roder_analyticsd.fleet.receiver import create_app
from roder_analyticsd.pipeline.attribute import event_id_hex
from roder_analyticsd.store.connection import open_store

pytestmark = pytest.mark.anyio

FAST = {"backoff_base": 0.001, "backoff_cap": 0.01}
INSTANCE = "proc-test-1"
FAILING = 3
HEX24 = re.compile(r"[0-9a-f]{24}")
ABSOLUTE = re.compile(r"^\s*(/|\\|~|[A-Za-z]:[\\/]|file:)")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Flaky:
    """ASGI wrapper of the real receiver: records every /collect body and
    answers 503 to the first `fail` of them."""

    def __init__(self, app: Any, fail: int) -> None:
        self.app = app
        self.fail = fail
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/collect":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        if len(self.bodies) <= self.fail:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@contextmanager
def receiver(db: Path, fail: int) -> Iterator[tuple[str, Flaky]]:
    app = Flaky(create_app(str(db), token=None), fail)
    with serve_on_loopback(app) as base:
        yield f"{base}/collect", app


def one(db: Path, sql: str) -> Any:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchone()[0]


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


async def forward(store: Path, settings: Any, *, until: Any, settle: float = 0.0) -> None:
    """run_forwarding until `until()` holds (or 15 s), then stop it."""
    stop = anyio.Event()
    run = functools.partial(
        run_forwarding,
        store,
        settings,
        INSTANCE,
        stop_event=stop,
        poll_seconds=0.02,
        settle_seconds=settle,
        forwarder_options=FAST,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(15):
            while not until():
                await anyio.sleep(0.02)
        stop.set()


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


async def test_local_activity_is_forwarded_exactly_once(tmp_path, expected):
    data_dir = copy_sample(tmp_path / "roder-data")
    store = tmp_path / "store" / "usage.sqlite3"
    received = tmp_path / "receiver.sqlite3"
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store, "--json")
    # forwarding never turned on: no trigger, nothing in the outbox
    assert not one(store, f"SELECT count(*) FROM sqlite_master WHERE name = '{TRIGGER}'")
    assert one(store, "SELECT count(*) FROM forward_outbox") == 0
    total = one(store, "SELECT count(*) FROM activity_events")
    # events held by tool call and turn rows are forwarded as those in `activity` are
    assert one(store, "SELECT count(*) FROM activity") < total
    local = {
        event_id_hex(r[0]): r[1:]
        for r in rows(
            store,
            "SELECT event_id, occurred_at_ms, event_name, module, owner_module, execution_kind,"
            " loop_stage, outcome, error_category, phase FROM activity_v2",
        )
    }
    threads = {r[0] for r in rows(store, "SELECT DISTINCT thread_id FROM activity_events") if r[0]}
    installation = one(store, "SELECT value FROM meta WHERE key = 'installation_id'")

    with receiver(received, FAILING) as (url, app):
        (data_dir / "config.toml").write_text(f'[analytics.forward]\nendpoint = "{url}"\n')
        settings = load_settings(data_dir, store)
        assert settings.forward_endpoint == url and settings.forward_batch_size == 20

        def drained(n: int):
            def check() -> bool:
                return (
                    received.exists()
                    and one(received, "SELECT count(*) FROM collected_events") == n
                    and one(store, "SELECT count(*) FROM forward_queue") == 0
                    and one(store, "SELECT count(*) FROM forward_outbox") == 0
                )

            return check

        await forward(store, settings, until=drained(total))

        # every local event arrived, once, as what it is locally
        got = rows(
            received,
            "SELECT event_id, occurred_at_ms, event_name, module, owner_module, execution_kind,"
            " loop_stage, outcome, error_category, phase FROM collected_events",
        )
        assert {r[0]: r[1:] for r in got} == local
        assert one(store, "SELECT count(*) FROM forward_acked") == total
        sent = app.bodies
        assert len(sent) > FAILING  # the failed batches were retried
        events = [ev for body in sent for ev in json.loads(body)]
        assert all(len(json.loads(body)) <= 20 for body in sent)
        assert len({ev["eventId"] for ev in events}) == total
        # privacy: no body, path, canary or raw thread id ever left, failed requests included
        everything = b"".join(sent)
        assert expected["canaries"] and all(c.startswith("CANARY") for c in expected["canaries"])
        assert b"CANARY" not in everything  # so none of the canaries
        assert str(tmp_path).encode() not in everything
        assert not [t for t in threads if t.encode() in everything]
        for ev in events:
            assert not [s for s in strings(ev) if ABSOLUTE.match(s)], ev
            assert ev["instanceId"] == INSTANCE and ev["installationId"] == installation
            assert ev["occurredAt"].endswith("Z") and ev["schemaVersion"] == "analytics.v2"
            if "sessionId" in ev:
                assert HEX24.fullmatch(ev["sessionId"])
        unique = {ev["eventId"]: ev for ev in events}.values()
        assert sum("sessionId" in ev for ev in unique) == one(
            store, "SELECT count(*) FROM activity_events WHERE thread_id IS NOT NULL"
        )

        # a second run sends nothing, even with every row put back in the outbox
        # (as after `--rebuild`, or a crash between enqueue and outbox delete)
        requests = len(sent)
        with sqlite3.connect(store) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO forward_outbox"
                " SELECT occurred_at_ms, event_id, thread_id FROM activity_events"
            )
        assert one(store, "SELECT count(*) FROM forward_outbox") == total
        await forward(store, settings, until=drained(total))
        await anyio.sleep(0.2)
        assert len(app.bodies) == requests

        # activity ingested while forwarding is on reaches the outbox (the
        # trigger fires on the ingest process's connection) and is sent once
        partial = expected["partial"]
        with open(data_dir / partial["path"], "a", encoding="utf-8") as fh:
            fh.write(partial["rest"])
        run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store, "--json")
        assert one(store, "SELECT count(*) FROM activity_events") == total + 1
        assert one(store, "SELECT count(*) FROM forward_outbox") == 1
        new_id = event_id_hex(one(store, "SELECT event_id FROM forward_outbox"))
        # not before it has settled (here: a settle time longer than its age)
        settling = anyio.Event()
        with anyio.move_on_after(0.3):
            await forward(store, settings, settle=100 * 365 * 86400, until=settling.is_set)
        assert one(store, "SELECT count(*) FROM forward_outbox") == 1
        assert len(app.bodies) == requests
        await forward(store, settings, until=drained(total + 1))
        assert len(app.bodies) == requests + 1
        assert [ev["eventId"] for ev in json.loads(app.bodies[-1])] == [new_id]

    # off again: the trigger goes; on again: only unacknowledged rows return
    conn = await open_store(store)
    try:
        await disable_forwarding(conn)
        assert not await forwarding_enabled(conn)
        assert await enable_forwarding(conn) == 0  # all acknowledged
        assert await forwarding_enabled(conn)
        await conn.execute("DELETE FROM forward_acked WHERE event_id = ?", (new_id,))
        await disable_forwarding(conn)
        assert await enable_forwarding(conn) == 1
    finally:
        await conn.close()
