"""The fleet store on the real PostgreSQL server: real `serve` subprocesses,
real HTTP on loopback, each test in its own database."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import run_cli, unavailable
from pg import fresh_database, serving, start_serve, value

from roder_analyticsd.fleet.model import decode_event
from roder_analyticsd.fleet.stores import postgres, sqlite
from roder_analyticsd.fleet.stores.postgres import PostgresFleetStore

JSON = {"content-type": "application/json"}
MODULES = ["session", "router", "Session", "tools", "memory", "_x", "ä-mod"]
STAGES = ["loop_start", "model_request", "tool_call", "loop_end"]
OUTCOMES = [None, "success", "failed", "timeout"]


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def event(i: int, *, day: str = "2025-03-01", inst: str = "inst-a", **over: Any) -> dict[str, Any]:
    ev = {
        "schemaVersion": "analytics.v2",
        "eventId": f"ev-{i}",
        "eventName": "feature_used",
        "occurredAt": f"{day}T12:00:00Z",
        "installationId": inst,
        "instanceId": "proc-1",
        "deploymentMode": "source",
        "commitHash": "abc",
        "appVersion": "1.0.0",
        "platform": "linux",
        "properties": {"module": "session", "loopStage": "loop_start"},
    }
    ev.update(over)
    return ev


def varied_events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        props: dict[str, Any] = {
            "module": rng.choice(MODULES),
            "loopStage": rng.choice(STAGES),
            "ownerModule": rng.choice(["session", "router"]),
            "executionKind": rng.choice(["user_session", "subagent"]),
        }
        outcome = rng.choice(OUTCOMES)
        if outcome:
            props["outcome"] = outcome
        out.append(
            event(
                i,
                # around midnight UTC, so --timezone moves events across days
                occurredAt=f"2025-03-{rng.randint(1, 6):02d}T{rng.choice(['00', '03', '12', '23'])}"
                f":{rng.randint(0, 59):02d}:00.{rng.randint(0, 999):03d}Z",
                installationId=f"inst-{rng.randint(1, 9)}",
                instanceId=f"proc-{rng.randint(1, 15)}",
                eventName=rng.choice(["feature_used", "feature_used", "error_occurred"]),
                sessionId=rng.choice([None, f"raw-session-{rng.randint(1, 20)}"]),
                properties=props,
            )
        )
    return out


def post(base: str, batch: list[dict[str, Any]], timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{base}/collect", json=batch, timeout=timeout)


def counts(url: str) -> tuple[int, int]:
    return (
        value(url, "SELECT count(*) FROM collected_events"),
        value(url, "SELECT count(DISTINCT event_id) FROM collected_events"),
    )


def test_thirty_resends_count_once(tmp_path: Path, pg_url: str) -> None:
    batch = [event(i) for i in range(50)]
    with serving(tmp_path, pg_url) as (_, base):
        first = post(base, batch).json()
        assert len(first["accepted"]) == 50 and first["duplicates"] == []
        for _ in range(29):
            again = post(base, batch).json()
            assert again["accepted"] == [] and len(again["duplicates"]) == 50
        assert httpx.get(f"{base}/healthz").json() == {"ok": True}
    assert counts(pg_url) == (50, 50)
    assert value(pg_url, "SELECT count(*) FROM collected_event_ids") == 50
    # partitioned by day (declarative): the rows are in the day's partition
    assert value(pg_url, "SELECT count(*) FROM collected_events_p20250301") == 50
    assert value(pg_url, "SELECT relkind FROM pg_class WHERE relname = 'collected_events'") == b"p"


def test_same_batches_to_two_receivers_at_once_count_once(tmp_path: Path, pg_url: str) -> None:
    batches = [[event(b * 100 + i, day=f"2025-03-0{1 + b % 3}") for i in range(100)]
               for b in range(12)]  # fmt: skip
    accepted: list[str] = []
    lock = threading.Lock()
    with serving(tmp_path, pg_url) as (_, one), serving(tmp_path, pg_url) as (_, two):

        def send(base: str, batch: list[dict[str, Any]], gate: threading.Barrier) -> None:
            gate.wait()
            r = post(base, batch)
            assert r.status_code == 200, r.text
            with lock:
                accepted.extend(r.json()["accepted"])

        for batch in batches:
            gate = threading.Barrier(4)
            threads = [
                threading.Thread(target=send, args=(base, batch, gate))
                for base in (one, two, one, two)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
    assert len(accepted) == 1200 and len(set(accepted)) == 1200  # each accepted exactly once
    assert counts(pg_url) == (1200, 1200)


class Client(threading.Thread):
    """Sends its batches in order; each retried (on any failure, against the
    next receiver) until a 200 answers it: an at-least-once client."""

    def __init__(self, bases: list[str], batches: list[list[dict[str, Any]]]) -> None:
        super().__init__(daemon=True)
        self.bases = bases
        self.batches = batches
        self.accepted: list[str] = []
        self.retries = 0
        self.statuses: set[int] = set()

    def run(self) -> None:
        turn = 0
        with httpx.Client(timeout=10) as http:
            for batch in self.batches:
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    base = self.bases[turn % len(self.bases)]
                    turn += 1
                    try:
                        r = http.post(f"{base}/collect", json=batch)
                        self.statuses.add(r.status_code)
                        if r.status_code == 200:
                            self.accepted.extend(r.json()["accepted"])
                            break
                    except httpx.HTTPError:
                        pass
                    self.retries += 1
                    time.sleep(0.05)
                else:
                    raise AssertionError("a batch was never accepted")


def make_batches(clients: int, per_client: int, size: int) -> list[list[list[dict[str, Any]]]]:
    return [
        [[event(f"{c}-{b}-{i}", day=f"2025-03-0{1 + i % 4}") for i in range(size)]
         for b in range(per_client)]
        for c in range(clients)
    ]  # fmt: skip


def test_kill9_of_a_receiver_under_load_loses_and_doubles_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    work = make_batches(clients=6, per_client=25, size=40)
    victim, victim_base = start_serve(tmp_path, pg_url)
    try:
        with serving(tmp_path, pg_url) as (_, survivor_base):
            clients = [Client([victim_base, survivor_base], w) for w in work]
            for c in clients:
                c.start()
            _wait_for_rows(pg_url, more_than=2000)  # under load
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            for c in clients:
                c.join(120)
                assert not c.is_alive()
    finally:
        if victim.poll() is None:
            victim.kill()
    total = 6 * 25 * 40
    accepted = [i for c in clients for i in c.accepted]
    assert sum(c.retries for c in clients) > 0  # the kill was felt
    # an id may have been stored by the victim without its answer arriving:
    # then its retry reports a duplicate, never a second row
    assert len(accepted) == len(set(accepted)) <= total
    assert counts(pg_url) == (total, total)


def _pg_cluster(action: str) -> None:
    import subprocess

    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action, "-m", "fast"]
        if action in ("stop", "restart")
        else ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action],
        check=True,
        timeout=60,
        capture_output=True,
    )


def _wait_for_rows(url: str, more_than: int = 0) -> None:
    deadline = time.monotonic() + 30
    while counts(url)[0] <= more_than:
        assert time.monotonic() < deadline, "the clients made no progress"
        time.sleep(0.05)


def _pg_up() -> bool:
    try:
        value("postgresql://postgres@127.0.0.1:5432/postgres", "SELECT 1")
        return True
    except Exception:  # noqa: BLE001
        return False


def test_database_gone_then_back_under_load_ends_exact(tmp_path: Path, pg_url: str) -> None:
    import shutil

    if not Path("/etc/postgresql").is_dir() or not shutil.which("pg_ctlcluster"):
        unavailable("stopping the server needs a pg_ctlcluster cluster")
    work = make_batches(clients=4, per_client=30, size=30)
    try:
        with serving(tmp_path, pg_url) as (_, base):
            clients = [Client([base], w) for w in work]
            for c in clients:
                c.start()
            _wait_for_rows(pg_url)  # under load
            _pg_cluster("stop")
            # gone: a POST gets 503 with Retry-After, /healthz says so
            r = post(base, [event("during-outage")])
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
            assert "PostgreSQL" not in r.text or "password" not in r.text
            health = httpx.get(f"{base}/healthz", timeout=10)
            assert health.status_code == 503 and health.json()["ok"] is False
            time.sleep(1.0)
            _pg_cluster("start")
            for c in clients:
                c.join(150)
                assert not c.is_alive()
            # reconnected by itself
            assert post(base, [event("after")]).json()["accepted"] == ["ev-after"]
            assert httpx.get(f"{base}/healthz", timeout=10).json() == {"ok": True}
            # and a restart (not a stop) under load ends exact too
            more = [Client([base], w) for w in make_batches(clients=3, per_client=20, size=30)]
            for m in more:
                for batch in m.batches:
                    for ev in batch:
                        ev["eventId"] += "-r"
                m.start()
            _wait_for_rows(pg_url, more_than=counts(pg_url)[0])
            _pg_cluster("restart")
            for m in more:
                m.join(150)
                assert not m.is_alive()
    finally:
        if not _pg_up():
            _pg_cluster("start")
    total = 4 * 30 * 30 + 3 * 20 * 30 + 1
    assert counts(pg_url) == (total, total)


def test_fleet_metrics_equal_the_sqlite_backend(tmp_path: Path, pg_url: str) -> None:
    raw = varied_events(1500)
    raw += raw[:40]  # resends
    raw.append(event(9999, occurredAt="2025-03-03T12:00:00Z", eventId="ev-5"))  # same id, other day
    events = [decode_event(json.dumps(e).encode()) for e in raw]
    db = tmp_path / "received.sqlite3"

    async def load() -> None:
        from roder_analyticsd.store.connection import open_store

        await (await open_store(db)).close()  # the store `serve` writes into
        lite = await sqlite.SqliteFleetStore.open(db)
        pg = await PostgresFleetStore.open(pg_url)
        try:
            for start in range(0, len(events), 200):
                chunk = events[start : start + 200]
                assert await lite.insert(chunk) == await pg.insert(chunk)
        finally:
            await lite.close()
            await pg.close()

    anyio.run(load)
    cases = [
        [],
        ["--timezone", "America/New_York"],
        ["--timezone", "Asia/Kolkata", "--since", "2025-03-02", "--until", "2025-03-05"],
        ["--since", "2025-03-02T03:00:00Z", "--limit", "3"],
    ]
    data = tmp_path / "data"
    for metric in ("dau", "instances", "modules", "errors", "sessions"):
        extra = [["--user-sessions"]] if metric == "sessions" else []
        for args in cases + extra:
            lite = run_cli("stats", "fleet", metric, "--source", "collected", "--store", db,
                           "--data-dir", data, "--json", *args)  # fmt: skip
            pg = run_cli("stats", "fleet", metric, "--store", pg_url, "--data-dir", data,
                         "--json", *args)  # fmt: skip
            assert json.loads(pg.stdout) == json.loads(lite.stdout), (metric, args)
            assert json.loads(lite.stdout), (metric, args)  # something to compare
    human = run_cli("stats", "fleet", "modules", "--store", pg_url, "--data-dir", data)
    assert "Total" in human.stdout


def test_retention_drops_whole_day_partitions(pg_url: str) -> None:
    days = ["2025-03-01", "2025-03-02", "2025-03-03"]
    events = [decode_event(json.dumps(event(f"{d}-{i}", day=d)).encode())
              for d in days for i in range(10)]  # fmt: skip

    async def go() -> None:
        store = await PostgresFleetStore.open(pg_url)
        try:
            await store.insert(events)
            import asyncpg

            conn = await asyncpg.connect(pg_url)
            try:
                dropped = await postgres.prune_before(conn, date(2025, 3, 3))
                assert dropped == [date(2025, 3, 1), date(2025, 3, 2)]
                assert await postgres.existing_partitions(conn) == {date(2025, 3, 3)}
                assert await conn.fetchval("SELECT count(*) FROM collected_events") == 10
                assert await conn.fetchval("SELECT count(*) FROM collected_event_ids") == 10
            finally:
                await conn.close()
            # a resend of a pruned day is not stored again (no partition comes back)
            fresh = PostgresFleetStore(store._pool, pg_url)
            accepted, duplicates = await fresh.insert(events[:10] + events[20:])
            assert accepted == [] and len(duplicates) == 20
        finally:
            await store.close()

    anyio.run(go)
    assert value(pg_url, "SELECT to_regclass('collected_events_p20250301')") is None


def test_newer_schema_is_refused_with_one_line(tmp_path: Path, pg_url: str) -> None:
    anyio.run(lambda: _open_close(pg_url))
    value(pg_url, "INSERT INTO fleet_schema (version) VALUES (99) RETURNING version")
    before = value(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    for args in (["serve", "--listen", "127.0.0.1:0"], ["stats", "fleet", "dau"]):
        proc = run_cli(*args, "--store", pg_url, "--data-dir", tmp_path / "d", check=False)
        assert proc.returncode == 1, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "newer than this roder-analyticsd knows" in lines[0], lines
    assert value(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == before


async def _open_close(url: str) -> None:
    store = await PostgresFleetStore.open(url)
    await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://nosuchrole:CANARYpw42@127.0.0.1:5432/postgres",
        "postgresql://postgres:CANARYpw42@127.0.0.1:1/postgres",
        "postgresql://postgres:CANARYpw42@127.0.0.1:5432/no_such_db_here",
    ],
)
def test_wrong_credentials_or_unreachable_is_one_line_without_secret(
    tmp_path: Path, url: str
) -> None:
    with fresh_database():  # the server must be there for this to mean anything
        pass
    for args in (["serve", "--listen", "127.0.0.1:0"], ["stats", "fleet", "modules"]):
        proc = run_cli(*args, "--store", url, "--data-dir", tmp_path / "d", check=False)
        assert proc.returncode == 1, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("roder-analyticsd: error: PostgreSQL"), lines
        assert "CANARY" not in proc.stderr + proc.stdout


def test_other_commands_refuse_a_postgres_store(tmp_path: Path) -> None:
    proc = run_cli("stats", "summary", "--store", "postgresql://x@h/db", check=False)
    assert proc.returncode == 2 and "serve" in proc.stderr
    proc = run_cli(
        "stats", "fleet", "dau", "--source", "local", "--store", "postgresql://x@h/db",
        "--data-dir", tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--source collected" in proc.stderr


def test_workers_share_the_socket_and_stop_together(tmp_path: Path, pg_url: str) -> None:
    with serving(tmp_path, pg_url, "--workers", "3") as (proc, base):
        with httpx.Client(timeout=10) as http:
            for b in range(30):  # new connections: spread over the workers
                r = http.post(f"{base}/collect", json=[event(f"w{b}-{i}") for i in range(10)],
                              headers={"connection": "close"})  # fmt: skip
                assert len(r.json()["accepted"]) == 10
        assert counts(pg_url) == (300, 300)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_daemon_forwarder_delivers_into_a_postgres_receiver(
    tmp_path: Path, pg_url: str, expected: dict[str, Any]
) -> None:
    import sqlite3

    from conftest import copy_sample

    data_dir = copy_sample(tmp_path / "roder-data")
    store = tmp_path / "store" / "usage.sqlite3"
    with serving(tmp_path, pg_url) as (_, base):
        (data_dir / "config.toml").write_text(
            f'[analytics.forward]\nendpoint = "{base}/collect"\nbatch_size = 7\n'
        )
        daemon = run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store,
                         "--json", check=False)  # fmt: skip
        assert daemon.returncode == 0, daemon.stderr
        with sqlite3.connect(store) as conn:
            total = conn.execute("SELECT count(*) FROM activity_events").fetchone()[0]
        assert total > 0
        # the live daemon forwards; run it until the receiver has everything
        import subprocess
        import sys

        from conftest import REPO, _env

        live = subprocess.Popen(
            [sys.executable, "-m", "roder_analyticsd", "--data-dir", str(data_dir),
             "--store", str(store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and counts(pg_url)[0] < total:
                time.sleep(0.2)
        finally:
            live.send_signal(signal.SIGTERM)
            live.wait(20)
    assert counts(pg_url) == (total, total)
    received = value(
        pg_url,
        "SELECT string_agg(properties_json || coalesce(session_id, ''), '') FROM collected_events",
    )
    assert "CANARY" not in received and str(tmp_path) not in received


def test_serve_applies_retention_days_by_dropping_partitions(tmp_path: Path, pg_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    days = [today - timedelta(40), today - timedelta(31), today - timedelta(2), today]
    raw = [event(f"r{d}-{i}", day=d.isoformat()) for d in days for i in range(5)]
    events = [decode_event(json.dumps(e).encode()) for e in raw]

    async def load() -> None:
        store = await PostgresFleetStore.open(pg_url)
        try:
            await store.insert(events)
        finally:
            await store.close()

    anyio.run(load)
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text("[analytics]\nretention_days = 30\n")
    proc, base = start_serve(tmp_path, pg_url, "--data-dir", str(data))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and counts(pg_url)[0] != 10:
            time.sleep(0.1)
        assert counts(pg_url) == (10, 10)
        names = value(pg_url, "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class"
                      " WHERE relname LIKE 'collected_events_p%' AND relkind = 'r'")  # fmt: skip
        assert names.split(",") == [postgres.partition_name(d) for d in days[2:]]
        # an event of a pruned day is not stored again
        old = event("late", day=days[0].isoformat())
        assert post(base, [old]).json() == {
            "accepted": [],
            "duplicates": ["ev-late"],
            "rejected": [],
        }
    finally:
        proc.kill()
        proc.wait(10)
