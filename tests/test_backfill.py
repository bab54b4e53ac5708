"""`--once` over the sample data dir: exact numbers, idempotence, privacy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import dump_tables, run_cli, run_json

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def backfill(data_dir: Path, store: Path, *extra: str) -> dict[str, Any]:
    return run_json("--once", "--best-effort", "--data-dir", data_dir, "--store", store, *extra)


def stats(data_dir: Path, store: Path, *args: str) -> Any:
    return run_json("stats", *args, "--data-dir", data_dir, "--store", store)


def test_sample_reproduces_expected_numbers(data_dir, store, expected):
    report = backfill(data_dir, store)
    assert report["linesIngested"] == expected["eventLines"]
    assert len(report["parseErrors"]) == expected["corruptLines"]
    for err in report["parseErrors"]:
        assert err["path"].endswith("events.jsonl") and err["line"] >= 1
    assert {"path": "threads/runtime/events.jsonl", "line": 5} in [
        {"path": e["path"], "line": e["line"]} for e in report["parseErrors"]
    ]
    assert report["unknownKinds"]["memory.saved"] == 1

    summary = stats(data_dir, store, "summary")
    for key, value in expected["summary"].items():
        assert summary[key] == value, key
    assert summary["mostCalledTool"] == expected["tools"][0]["toolName"]

    tools = stats(data_dir, store, "tools")
    assert [t["toolName"] for t in tools] == [t["toolName"] for t in expected["tools"]]
    for got, want in zip(tools, expected["tools"], strict=True):
        for key, value in want.items():
            assert got[key] == value, (want["toolName"], key)

    for group, rows in expected["tokens"].items():
        got = stats(data_dir, store, "tokens", "--group", group)
        if group in ("day", "week", "month"):  # listed in time order (cli.md)
            rows = sorted(rows, key=lambda r: r["group"])
        assert [{k: r[k] for k in rows[0]} for r in got] == rows, group


def test_turn_status_and_attribution(data_dir, store, expected):
    import sqlite3

    backfill(data_dir, store)
    conn = sqlite3.connect(store)
    statuses = dict(conn.execute("SELECT status, count(*) FROM turns GROUP BY status"))
    assert statuses == expected["turnStatus"]
    for stage, key in (
        ("loop_start", "loopStartByExecutionKind"),
        ("model_request", "modelRequestByExecutionKind"),
    ):
        rows = conn.execute(
            "SELECT execution_kind, count(*) FROM activity_v2 "
            "WHERE module = 'session' AND loop_stage = ? GROUP BY 1",
            (stage,),
        )
        assert dict(rows) == expected["activity"][key]
    owners = dict(conn.execute("SELECT owner_kind, count(*) FROM thread_owners GROUP BY 1"))
    assert owners == {
        "subagent": expected["subagentThreads"],
        "cron_job": expected["automationThreads"],
    }


def test_second_run_ingests_nothing_and_changes_nothing(data_dir, store):
    backfill(data_dir, store)
    before = dump_tables(store)
    again = backfill(data_dir, store)
    assert again["linesIngested"] == 0
    assert again["parseErrors"] == []
    assert again["linesSkippedByOffset"] > 0
    assert dump_tables(store) == before


def test_finishing_the_half_written_line_counts_it_once(data_dir, store, expected):
    backfill(data_dir, store)
    partial = expected["partial"]
    with open(data_dir / partial["path"], "a", encoding="utf-8") as fh:
        fh.write(partial["rest"])
    report = backfill(data_dir, store)
    assert report["linesIngested"] == 1
    assert report["parseErrors"] == []
    backfill(data_dir, store)  # and once more: still once
    event = partial["last_event"]["event"]["TurnCompleted"]
    summary = stats(data_dir, store, "summary")
    usage = event["usage"]
    assert summary["totalTokens"] == expected["summary"]["totalTokens"] + usage["total_tokens"]
    assert summary["completedTurnCount"] == expected["summary"]["completedTurnCount"] + 1
    sessions = stats(data_dir, store, "tokens", "--group", "session")
    row = next(r for r in sessions if r["group"] == event["thread_id"])
    want = next(r for r in expected["tokens"]["session"] if r["group"] == event["thread_id"])
    assert row["totalTokens"] == want["totalTokens"] + usage["total_tokens"]
    assert row["turnCount"] == want["turnCount"] + 1


def test_archiving_a_thread_changes_nothing(data_dir, store):
    backfill(data_dir, store)
    before = dump_tables(store)
    thread = "thr-0000-73ab4876"
    shutil.move(data_dir / "threads" / thread, data_dir / "archived_threads" / thread)
    report = backfill(data_dir, store)
    assert report["linesIngested"] == 0
    assert dump_tables(store) == before


def test_rebuild_gives_identical_tables(data_dir, store):
    backfill(data_dir, store)
    before = dump_tables(store)
    report = backfill(data_dir, store, "--rebuild")
    assert report["linesIngested"] > 0
    assert dump_tables(store) == before


def test_truncated_file_is_reread_from_the_start(data_dir, store):
    backfill(data_dir, store)
    before = dump_tables(store)
    path = data_dir / "threads" / "thr-0001-f07f7184" / "events.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:10]))  # truncated below its checkpoint
    report = backfill(data_dir, store)
    assert report["linesIngested"] == 10
    assert dump_tables(store) == before  # rows already counted are kept, not doubled
    with open(path, "ab") as fh:
        fh.write(b"".join(lines[10:]))
    report = backfill(data_dir, store)
    assert report["linesIngested"] == len([ln for ln in lines[10:] if ln.strip()]) - 1
    assert dump_tables(store) == before


def test_replaced_file_with_new_content_is_read_from_the_start(data_dir, store):
    backfill(data_dir, store)
    path = data_dir / "threads" / "thr-0001-f07f7184" / "events.jsonl"
    original = path.read_bytes()
    first = original.splitlines(keepends=True)[0]
    other = (data_dir / "threads" / "thr-0004-a6e52b85" / "events.jsonl").read_bytes()
    path.write_bytes(other.splitlines(keepends=True)[0] + original)  # same inode, new prefix
    report = backfill(data_dir, store)
    assert report["linesIngested"] > len(original.splitlines()) // 2
    assert first


def test_no_canary_reaches_store_wal_report_or_stderr(data_dir, store, expected):
    proc = run_cli("--once", "--best-effort", "--json", "--data-dir", data_dir, "--store", store)
    human = run_cli(
        "--once", "--rebuild", "--best-effort", "--data-dir", data_dir, "--store", store
    )
    blobs = [
        proc.stdout.encode(),
        proc.stderr.encode(),
        human.stdout.encode(),
        human.stderr.encode(),
    ]
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(store) + suffix)
        if path.exists():
            blobs.append(path.read_bytes())
    assert Path(str(store) + "-wal").exists() or True
    for canary in expected["canaries"]:
        needle = canary.encode()
        assert not any(needle in blob for blob in blobs), canary
    assert all(b"/home/dev/work/" not in blob for blob in blobs[:4])


def test_strict_mode_fails_cleanly_naming_file_and_line(data_dir, store):
    proc = run_cli("--once", "--data-dir", data_dir, "--store", store, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "events.jsonl:" in lines[0]
    # what came before the bad line is kept; a best-effort run completes the rest
    report = backfill(data_dir, store)
    assert report["linesIngested"] > 0


def test_json_report_has_the_documented_keys(data_dir, store):
    report = backfill(data_dir, store)
    for key in (
        "filesScanned",
        "linesIngested",
        "linesSkippedByOffset",
        "sessionsEnriched",
        "parseErrors",
        "parseErrorsNotListed",
        "unknownKinds",
        "rowsPruned",
        "rollupRowsRefreshed",
    ):
        assert key in report
    assert report["filesScanned"] == 31
    assert report["sessionsEnriched"] == 24
    assert report["rollupRowsRefreshed"] > 0
    json.dumps(report)
