"""The /collect receiver, served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import httpx
import pytest
from conftest import serve_on_loopback

from roder_analyticsd.fleet.receiver import check_listen_allowed, create_app, serve
from roder_analyticsd.fleet.stores.sqlite import (
    fleet_dau,
    fleet_errors,
    fleet_instances,
    fleet_modules,
    fleet_sessions,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "collect.sqlite3"


@pytest.fixture
def start(db: Path) -> Iterator[Callable[..., str]]:
    """start(**create_app kwargs) -> base URL; servers stop at teardown."""
    with contextlib.ExitStack() as stack:

        def _start(**kwargs: Any) -> str:
            kwargs.setdefault("token", None)
            return stack.enter_context(serve_on_loopback(create_app(str(db), **kwargs)))

        yield _start


def event(
    i: int | str,
    *,
    day: str = "2025-03-01",
    installation: str = "inst-a",
    instance: str = "proc-1",
    name: str = "feature_used",
    props: dict[str, Any] | None = None,
    **over: Any,
) -> dict[str, Any]:
    ev = {
        "schemaVersion": "analytics.v2",
        "eventId": f"ev-{i}",
        "eventName": name,
        "occurredAt": f"{day}T12:00:00Z",
        "installationId": installation,
        "instanceId": instance,
        "deploymentMode": "source",
        "commitHash": "abc123",
        "appVersion": "1.2.3",
        "platform": "linux",
        "properties": props or {"module": "session", "loopStage": "loop_start"},
    }
    ev.update(over)
    return ev


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # One client for the module: creating one (its TLS context) costs ~0.1 s.
    with httpx.Client(timeout=10) as client:
        yield client


def post(http: httpx.Client, base: str, batch: Any, **kwargs: Any) -> httpx.Response:
    return http.post(f"{base}/collect", json=batch, **kwargs)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def query(db: Path, fn: Callable[..., Any], **kwargs: Any) -> Any:
    async def go() -> Any:
        async with aiosqlite.connect(db) as conn:
            return await fn(conn, **kwargs)

    return anyio.run(go)


def test_same_batch_thirty_times_counts_once(
    start: Callable[..., str], http: httpx.Client, db: Path
) -> None:
    base = start()
    batch = [event(i) for i in range(5)]
    ids = [f"ev-{i}" for i in range(5)]
    responses = [http.post(f"{base}/collect", json=batch) for _ in range(30)]
    assert all(r.status_code == 200 for r in responses)
    assert responses[0].json() == {"accepted": ids, "duplicates": [], "rejected": []}
    for r in responses[1:]:
        assert r.json() == {"accepted": [], "duplicates": ids, "rejected": []}
    assert rows(db, "SELECT COUNT(*) FROM collected_events") == [(5,)]
    assert query(db, fleet_modules) == [{"module": "session", "events": 5}]


def test_mixed_batch(start: Callable[..., str], http: httpx.Client, db: Path) -> None:
    base = start()
    batch = [
        event(0),
        event(1, name="app_started"),
        {"eventId": "ev-2", "schemaVersion": "analytics.v2"},
        event(3, occurredAt="last tuesday"),
        17,
        event(5, deploymentMode="mainframe"),
        event(6),
        event(0),  # same id again in the same batch
    ]
    r = post(http, base, batch)
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == ["ev-0", "ev-6"]
    assert body["duplicates"] == ["ev-0"]
    rejected = {x["index"]: x for x in body["rejected"]}
    assert sorted(rejected) == [1, 2, 3, 4, 5]
    assert rejected[1]["eventId"] == "ev-1" and "removed" in rejected[1]["reason"]
    assert rejected[2]["eventId"] == "ev-2"
    assert rejected[4]["eventId"] is None
    assert "RFC 3339" in rejected[3]["reason"]
    assert all(x["reason"] for x in body["rejected"])
    assert rows(db, "SELECT event_id FROM collected_events ORDER BY 1") == [("ev-0",), ("ev-6",)]


def test_refused_bodies(start: Callable[..., str], http: httpx.Client, db: Path) -> None:
    base = start(max_body=2048)
    url = f"{base}/collect"
    json_type = {"content-type": "application/json"}
    cases = [
        (b"[{]", json_type, 400),
        (b'{"eventId": "x"}', json_type, 400),
        (b"[1, 2", json_type, 400),
        (b"\xff[]", json_type, 400),
        (b"[]", {"content-type": "text/plain"}, 415),
        (b"[]", {}, 415),
        (b"[]", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b"[" + b" " * 4096 + b"]", json_type, 413),
    ]
    for content, headers, status in cases:
        r = http.post(url, content=content, headers=headers)
        assert r.status_code == status, (content[:20], r.text)
        assert r.json()["error"]

    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(10):
            yield b" " * 1000  # no Content-Length: the limit applies while streaming
        yield b"]"

    r = http.post(url, content=chunks(), headers=json_type)
    assert r.status_code == 413
    exact = b"[" + b" " * 2046 + b"]"
    assert http.post(url, content=exact, headers=json_type).json()["accepted"] == []
    r = http.post(url, content=b"[]", headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    assert http.get(f"{base}/healthz").json() == {"ok": True}
    assert rows(db, "SELECT COUNT(*) FROM collected_events") == [(0,)]


def test_fleet_over_three_days(start: Callable[..., str], http: httpx.Client, db: Path) -> None:
    base = start()
    d1, d2, d3 = "2025-03-01", "2025-03-02", "2025-03-03"
    user = {"module": "session", "ownerModule": "session", "executionKind": "user_session"}
    sub = {"module": "session", "ownerModule": "session", "executionKind": "subagent"}
    user_start = {**user, "loopStage": "loop_start"}
    user_end = {**user, "loopStage": "loop_end", "outcome": "success"}
    user_tool_ok = {**user, "loopStage": "tool_call", "outcome": "success"}
    user_tool_failed = {**user, "loopStage": "tool_call", "outcome": "failed"}
    router = {"module": "router", "loopStage": "module_event"}
    memory = {"module": "memory", "loopStage": "module_event"}
    s1, s2, s3 = ("a" * 24, "b" * 24, "c" * 24)
    err = "error_occurred"
    batch = [
        # d1: installations a, b; instances a1, a2, b1
        event(1, day=d1, installation="a", instance="a1", props=user_start, sessionId=s1),
        event(2, day=d1, installation="a", instance="a2", props={**sub, "loopStage": "loop_start"},
              sessionId=s2),
        event(3, day=d1, installation="b", instance="b1", name=err, props=user_tool_failed,
              sessionId=s3),
        event(4, day=d1, installation="b", instance="b1", props=router),
        # d2: installation a only, one instance
        event(5, day=d2, installation="a", instance="a1", props=user_end, sessionId=s1),
        # d3: a, b, c; instances a1, b2, c1, c2 (00:30+02:00 on the 4th is the 3rd in UTC)
        event(6, day=d3, installation="a", instance="a1", props=user_tool_ok),
        event(7, day=d3, installation="b", instance="b2", props=memory),
        event(8, day=d3, installation="c", instance="c1", name=err, props=user_tool_failed,
              sessionId=s1),
        event(9, installation="c", instance="c2", props=memory,
              occurredAt="2025-03-04T00:30:00+02:00"),
    ]  # fmt: skip
    assert post(http, base, batch).json()["accepted"] == [f"ev-{i}" for i in range(1, 10)]
    assert post(http, base, batch).json()["accepted"] == []  # a resend changes nothing

    assert query(db, fleet_dau) == [
        {"day": d1, "installations": 2},
        {"day": d2, "installations": 1},
        {"day": d3, "installations": 3},
    ]
    assert query(db, fleet_instances) == [
        {"day": d1, "instances": 3},
        {"day": d2, "instances": 1},
        {"day": d3, "instances": 4},
    ]
    day2_ms = 1740873600000  # 2025-03-02T00:00:00Z
    day3_ms = day2_ms + 86_400_000
    assert query(db, fleet_dau, since_ms=day2_ms, until_ms=day3_ms) == [
        {"day": d2, "installations": 1}
    ]
    assert query(db, fleet_modules) == [
        {"module": "session", "events": 6},
        {"module": "memory", "events": 2},
        {"module": "router", "events": 1},
    ]
    errors = query(db, fleet_errors)
    assert errors[0] == {
        "module": "session",
        "loopStage": "tool_call",
        "outcome": "failed",
        "events": 2,
        "errorEvents": 2,
    }
    assert sum(e["events"] for e in errors) == 9
    assert sum(e["errorEvents"] for e in errors) == 2
    assert query(db, fleet_sessions) == [
        {"day": d1, "sessions": 3},
        {"day": d2, "sessions": 1},
        {"day": d3, "sessions": 1},
    ]
    assert query(db, fleet_sessions, user_sessions=True) == [
        {"day": d1, "sessions": 2},
        {"day": d2, "sessions": 1},
        {"day": d3, "sessions": 1},
    ]


def test_bearer_token(start: Callable[..., str], http: httpx.Client) -> None:
    base = start(token="s3cret-token")
    batch = [event(1)]
    assert post(http, base, batch).status_code == 401
    assert post(http, base, batch, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert (
        post(http, base, batch, headers={"authorization": "Basic s3cret-token"}).status_code == 401
    )
    # Auth comes first: an unauthenticated client learns nothing else.
    assert http.post(f"{base}/collect", content=b"x").status_code == 401
    r = post(http, base, batch, headers={"authorization": "Bearer s3cret-token"})
    assert r.status_code == 200 and r.json()["accepted"] == ["ev-1"]
    assert http.get(f"{base}/healthz").status_code == 200


def test_redacted_values_never_stored(
    start: Callable[..., str], http: httpx.Client, db: Path
) -> None:
    base = start()
    raw_session = "raw-session-key-MARKER7"
    batch = [
        event(
            1,
            props={
                "module": "session",
                "loopStage": "tool_call",
                "toolName": "shell-KEPT",
                "path": "MARKER1-relative-under-path-key",
                "nested": [{"workspaceRoot": "MARKER2"}, "/home/alice/MARKER3", "kept-in-list"],
                "note": "~/MARKER4/notes",
                "win": "C:\\Users\\MARKER5",
                "unc": "\\\\fileserver\\MARKER6",
                "projectCommitHash": "MARKER8",
                "providerBaseUrl": "https://user:MARKER9@api.example.com/v1?key=MARKER10#MARKER11",
            },
            sessionId=raw_session,
            projectPath="/srv/MARKER12",
        ),
        event(
            2,
            name="error_occurred",
            props={
                "module": "session",
                "loopStage": "tool_call",
                "outcome": "failed",
                "errorCategory": "tool_runtime_error",
                "code": "E_KEPT",
                "message": "MARKER13 could not open file",
                "stack": "Traceback MARKER14",
                "callerMeta": {"x": "MARKER15"},
            },
        ),
    ]
    r = post(http, base, batch)
    assert r.json()["accepted"] == ["ev-1", "ev-2"]

    def stored_bytes() -> bytes:
        files = [db, db.with_name(db.name + "-wal")]
        return b"".join(p.read_bytes() for p in files if p.exists())

    data = stored_bytes()
    for needle in [b"shell-KEPT", b"kept-in-list", b"E_KEPT", b"https://api.example.com/v1"]:
        assert needle in data  # the events really are in these bytes
    assert hashlib.sha256(raw_session.encode()).hexdigest()[:24].encode() in data
    for i in range(1, 16):
        assert f"MARKER{i}".encode() not in data, i
    assert b"/home/alice" not in data and b"raw-session-key" not in data
    props = rows(db, "SELECT properties_json FROM collected_events WHERE event_id = 'ev-1'")
    assert '"path"' not in props[0][0] and "workspaceRoot" not in props[0][0]


def test_healthz_reports_unwritable_store(
    start: Callable[..., str], http: httpx.Client, db: Path
) -> None:
    base = start(busy_timeout_ms=50)
    assert http.get(f"{base}/healthz").json() == {"ok": True}
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the store
        r = http.get(f"{base}/healthz")
        assert r.status_code == 503 and r.json()["ok"] is False
        # A batch that cannot be stored is a 503 (retry), not a rejection.
        assert post(http, base, [event(1)]).status_code == 503
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert http.get(f"{base}/healthz").status_code == 200
    assert post(http, base, [event(1)]).json()["accepted"] == ["ev-1"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_always_allowed(host: str) -> None:
    check_listen_allowed(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com", ""])
def test_non_loopback_needs_token(host: str) -> None:
    with pytest.raises(ValueError, match="refusing to listen on non-loopback"):
        check_listen_allowed(host, None)
    with pytest.raises(ValueError):
        check_listen_allowed(host, "")
    check_listen_allowed(host, "token")


def test_serve_refuses_before_binding(db: Path) -> None:
    with pytest.raises(ValueError, match="analytics.collect"):
        anyio.run(functools.partial(serve, str(db), "0.0.0.0", 0, None))
    assert not db.exists()
