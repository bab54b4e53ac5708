"""`stats activity` and `stats fleet …` over a real store: the sample built
by a real `--once`, plus events received the way `serve` stores them.

Expected numbers are recomputed from the raw tables in Python, not with the
SQL under test. Queries run in-process through click's CliRunner.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiosqlite
import anyio
import pytest
from click.testing import CliRunner
from conftest import copy_sample, run_cli

from roder_analyticsd.cli import main
from roder_analyticsd.fleet.model import decode_event
from roder_analyticsd.fleet.stores import sqlite as sqlite_store

USER = ("session", "session", "user_session")


def cli(*args: str | Path, code: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result.stdout if code == 0 else result.stderr


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fleet")
    data_dir = copy_sample(root / "roder-data")
    store = root / "usage.sqlite3"
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store, "--json")
    return data_dir, store


def stats(sample: tuple[Path, Path], *args: str) -> Any:
    data_dir, store = sample
    out = cli("stats", *args, "--json", "--data-dir", data_dir, "--store", store)
    assert out.count("\n") == 1  # one JSON document, nothing else
    return json.loads(out)


def activity_rows(store: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(store) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM activity_v2")]


def utc_day(ms: int, tz: Any = UTC) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# --- stats activity -----------------------------------------------------------------


def test_activity_by_every_attribute_adds_up(sample, expected):
    rows = activity_rows(sample[1])
    columns = {
        "module": "module",
        "owner-module": "owner_module",
        "execution-kind": "execution_kind",
        "loop-stage": "loop_stage",
        "outcome": "outcome",
        "phase": "phase",
        "error-category": "error_category",
    }
    for by, column in columns.items():
        got = stats(sample, "activity", "--by", by)
        assert all(list(r) == ["key", "events", "errorEvents"] for r in got)
        events = Counter(r[column] or "(none)" for r in rows)
        errors = Counter(r[column] or "(none)" for r in rows if r["event_name"] == "error_occurred")
        want = sorted(
            ({"key": k, "events": n, "errorEvents": errors[k]} for k, n in events.items()),
            key=lambda r: (-r["events"], r["key"]),
        )
        assert got == want, by
    # ordinary user chat only: the sample's own expected numbers
    users = {r["key"]: r["events"] for r in stats(sample, "activity", "--by", "loop-stage",
                                                  "--user-sessions")}  # fmt: skip
    assert users["loop_start"] == expected["activity"]["loopStartByExecutionKind"]["user_session"]
    assert (
        users["model_request"]
        == expected["activity"]["modelRequestByExecutionKind"]["user_session"]
    )
    kinds = stats(sample, "activity", "--by", "execution-kind", "--loop-stage", "model_request")
    session_kinds = Counter(
        r["execution_kind"]
        for r in rows
        if r["loop_stage"] == "model_request" and r["module"] == "session"
    )
    assert session_kinds == expected["activity"]["modelRequestByExecutionKind"]
    assert {r["key"]: r["events"] for r in kinds} == dict(
        Counter(r["execution_kind"] for r in rows if r["loop_stage"] == "model_request")
    )


def test_activity_window_thread_and_limit(sample):
    rows = activity_rows(sample[1])
    instants = sorted(r["occurred_at_ms"] for r in rows)
    lo, hi = instants[len(instants) // 4], instants[3 * len(instants) // 4]
    got = stats(sample, "activity", "--by", "module", "--since", iso(lo), "--until", iso(hi))
    want = Counter(r["module"] for r in rows if lo <= r["occurred_at_ms"] < hi)
    assert {r["key"]: r["events"] for r in got} == dict(want)
    assert 0 < sum(want.values()) < len(rows)

    thread = Counter(r["thread_id"] for r in rows if r["thread_id"]).most_common(1)[0][0]
    got = stats(sample, "activity", "--by", "loop-stage", "--thread", thread)
    assert {r["key"]: r["events"] for r in got} == dict(
        Counter(r["loop_stage"] for r in rows if r["thread_id"] == thread)
    )
    assert len(stats(sample, "activity", "--by", "loop-stage", "--limit", "2")) == 2


def test_activity_usage_errors_and_table(sample):
    data_dir, store = sample
    err = cli("stats", "activity", "--by", "colour", "--data-dir", data_dir, "--store", store,
              code=2)  # fmt: skip
    assert err.count("\n") == 1 and "colour" in err
    err = cli("stats", "activity", "--by", "module", "--tool", "shell", "--data-dir", data_dir,
              "--store", store, code=2)  # fmt: skip
    assert err.startswith("roder-analyticsd: error: --tool") and err.count("\n") == 1
    out = cli("stats", "activity", "--by", "module", "--data-dir", data_dir, "--store", store)
    assert "session" in out and "router" in out and "Total" in out


# --- stats fleet ------------------------------------------------------------------


def received(day: str, n: int, *, installation: str, instance: str, **props: Any) -> list[Any]:
    base = {"module": "session", "loopStage": "loop_start"} | props
    return [
        decode_event(
            json.dumps(
                {
                    "schemaVersion": "analytics.v2",
                    "eventId": f"{installation}-{day}-{i}-{sorted(props.items())}",
                    "eventName": "error_occurred" if base.get("errorCategory") else "feature_used",
                    "occurredAt": f"{day}T23:30:00Z",
                    "installationId": installation,
                    "instanceId": instance,
                    "deploymentMode": "docker",
                    "sessionId": f"session-{installation}-{i % 2}",  # hashed on insert
                    "commitHash": "abc",
                    "appVersion": "1.0.0",
                    "platform": "linux",
                    "properties": base,
                }
            ).encode()
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def with_collected(sample: tuple[Path, Path]) -> tuple[Path, Path]:
    """The sample store plus received events, stored the way `serve` does."""
    events = (
        received("2026-10-20", 3, installation="far-a", instance="pa1")
        + received("2026-10-20", 2, installation="far-b", instance="pb1")
        + received("2026-10-20", 1, installation="far-b", instance="pb2", ownerModule="cron_job")
        + received(
            "2026-12-01",
            4,
            installation="far-a",
            instance="pa2",
            module="router",
            loopStage="module_event",
            outcome="failed",
        )  # fmt: skip
        + received(
            "2026-12-01",
            1,
            installation="far-a",
            instance="pa2",
            loopStage="tool_call",
            outcome="failed",
            errorCategory="tool_runtime_error",
        )  # fmt: skip
    )

    async def insert() -> None:
        async with aiosqlite.connect(sample[1], isolation_level=None) as conn:
            await sqlite_store.insert_collected(conn, events)

    anyio.run(insert)
    return sample


def local_view(store: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(store) as conn:
        conn.row_factory = sqlite3.Row
        install = conn.execute("SELECT value FROM meta WHERE key = 'installation_id'").fetchone()
        rows = [dict(r) for r in conn.execute("SELECT * FROM activity_v2")]
    for r in rows:
        r["installation_id"] = r["instance_id"] = install[0]
        r["session_id"] = r["thread_id"]
    return rows


def collected_view(store: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(store) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM collected_events")]


def per_day(rows: list[dict[str, Any]], column: str, tz: Any = UTC) -> list[dict[str, Any]]:
    days: dict[str, set[Any]] = defaultdict(set)
    for r in rows:
        if r[column] is not None:
            days[utc_day(r["occurred_at_ms"], tz)].add(r[column])
    return [{"day": d, "n": len(v)} for d, v in sorted(days.items())]


def test_fleet_day_metrics_by_source(with_collected):
    store = with_collected[1]
    local, far = local_view(store), collected_view(store)
    assert len(far) == 11
    for source, rows in (("local", local), ("collected", far), ("all", local + far)):
        for metric, key, column in (
            ("dau", "installations", "installation_id"),
            ("instances", "instances", "instance_id"),
            ("sessions", "sessions", "session_id"),
        ):
            got = stats(with_collected, "fleet", metric, "--source", source)
            want = [{"day": r["day"], key: r["n"]} for r in per_day(rows, column)]
            assert got == want, (source, metric)
    # local rows: one installation, and instance = installation
    assert {r["installations"] for r in stats(with_collected, "fleet", "dau", "--source",
                                              "local")} == {1}  # fmt: skip
    first = stats(with_collected, "fleet", "dau")[0]
    assert first == {"day": "2026-10-20", "installations": 3}
    # default source is all
    assert stats(with_collected, "fleet", "modules") == stats(
        with_collected, "fleet", "modules", "--source", "all"
    )


def test_fleet_modules_errors_and_user_sessions(with_collected):
    store = with_collected[1]
    rows = local_view(store) + collected_view(store)
    modules = Counter(r["module"] for r in rows)
    assert stats(with_collected, "fleet", "modules") == [
        {"module": m, "events": n}
        for m, n in sorted(modules.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    errors = stats(with_collected, "fleet", "errors")
    assert all(
        list(r) == ["module", "loopStage", "outcome", "events", "errorEvents"] for r in errors
    )
    key = lambda r: (r["module"], r["loop_stage"], r["outcome"])  # noqa: E731
    events = Counter(map(key, rows))
    errs = Counter(key(r) for r in rows if r["event_name"] == "error_occurred")
    assert {(r["module"], r["loopStage"], r["outcome"]): (r["events"], r["errorEvents"])
            for r in errors} == {k: (n, errs[k]) for k, n in events.items()}  # fmt: skip
    assert errors[0]["errorEvents"] == max(errs.values())

    users = [r for r in rows if (r["module"], r["owner_module"], r["execution_kind"]) == USER]
    got = stats(with_collected, "fleet", "sessions", "--user-sessions")
    assert got == [{"day": r["day"], "sessions": r["n"]} for r in per_day(users, "session_id")]
    assert got != stats(with_collected, "fleet", "sessions")


def test_fleet_window_timezone_and_limit(with_collected):
    store = with_collected[1]
    rows = local_view(store) + collected_view(store)
    # a zone far from UTC with DST: the received 23:30Z events move a day
    tz = ZoneInfo("America/Los_Angeles")
    got = stats(with_collected, "fleet", "sessions", "--timezone", "America/Los_Angeles")
    want = per_day(rows, "session_id", tz)
    assert got == [{"day": r["day"], "sessions": r["n"]} for r in want]
    assert got != stats(with_collected, "fleet", "sessions")

    lo = datetime(2026, 11, 1, tzinfo=tz)
    hi = datetime(2026, 12, 1, 12, tzinfo=tz)
    since, until = lo.isoformat(), hi.isoformat()
    inside = [
        r for r in rows if lo.timestamp() * 1000 <= r["occurred_at_ms"] < hi.timestamp() * 1000
    ]
    for zone, tzinfo in (("UTC", UTC), ("America/Los_Angeles", tz)):
        got = stats(with_collected, "fleet", "dau", "--since", since, "--until", until,
                    "--timezone", zone)  # fmt: skip
        assert got == [
            {"day": r["day"], "installations": r["n"]}
            for r in per_day(inside, "installation_id", tzinfo)
        ], zone
    modules = stats(with_collected, "fleet", "modules", "--since", since, "--until", until)
    assert {r["module"]: r["events"] for r in modules} == dict(Counter(r["module"] for r in inside))

    every = stats(with_collected, "fleet", "dau")
    assert stats(with_collected, "fleet", "dau", "--limit", "3") == every[-3:]  # latest days
    assert len(stats(with_collected, "fleet", "modules", "--limit", "1")) == 1


def test_fleet_usage_errors_and_tables(with_collected):
    data_dir, store = with_collected
    common = ("--data-dir", data_dir, "--store", store)
    for bad in (("--thread", "t"), ("--workspace", "w"), ("--source", "moon")):
        err = cli("stats", "fleet", "dau", *bad, *common, code=2)
        assert err.count("\n") == 1 and err.startswith("roder-analyticsd: error:")
    cli("stats", "fleet", "dau", "--user-sessions", *common, code=2)  # sessions only
    out = cli("stats", "fleet", "errors", *common)
    assert "tool_call" in out and "Total" in out
    out = cli("stats", "fleet", "dau", *common)
    assert "2026-10-20" in out


def test_fleet_without_a_store_is_one_line(tmp_path):
    err = cli("stats", "fleet", "dau", "--data-dir", tmp_path, "--store", tmp_path / "none.db",
              code=1)  # fmt: skip
    assert err.count("\n") == 1 and "--once" in err


def test_migration_creates_collected_tables_as_collected_ddl(sample):
    """Migration 3 creates the receiver tables exactly as fleet/stores/sqlite.DDL does."""

    def shape(conn: sqlite3.Connection) -> dict[str, Any]:
        out = {}
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name IN ('collected_events', 'forward_queue', 'forward_acked')"
        ):
            out[name] = conn.execute(f"PRAGMA table_xinfo({name})").fetchall()
            out[name + ".indexes"] = sorted(
                (i[1], tuple(c[2] for c in conn.execute(f"PRAGMA index_info({i[1]})")))
                for i in conn.execute(f"PRAGMA index_list({name})")
            )
        return out

    fresh = sqlite3.connect(":memory:")
    fresh.executescript(sqlite_store.DDL)
    with sqlite3.connect(sample[1]) as store:
        assert shape(store) == shape(fresh)
        assert len(shape(store)) == 6
