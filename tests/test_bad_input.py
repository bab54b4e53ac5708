"""Bad input gets a clear one-line outcome and loses nothing else."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import anyio
import pytest
from conftest import run_cli, run_json

from roder_analyticsd.config import load_settings
from roder_analyticsd.live.ingest import Ingestor, Report
from roder_analyticsd.pipeline.redact import fnv1a_64
from roder_analyticsd.sources.roder import discover
from roder_analyticsd.store.connection import open_store

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def event(kind: str, variant: str, payload: dict, thread: str = "thr-a") -> str:
    payload = {"thread_id": thread, "turn_id": "turn-1", **payload}
    return json.dumps(
        {
            "event_id": f"evt-{kind}-{payload.get('tool_id', '')}",
            "seq": 1,
            "timestamp": payload["timestamp"],
            "source": "Core",
            "kind": kind,
            "thread_id": thread,
            "turn_id": "turn-1",
            "event": {variant: payload},
        }
    )


def turn_lines(thread: str = "thr-a") -> list[str]:
    return [
        event("turn.started", "TurnStarted", {"timestamp": "2026-11-01T10:00:00Z"}, thread),
        event(
            "tool.call_started",
            "ToolCallStarted",
            {"tool_id": "c1", "tool_name": "shell", "timestamp": "2026-11-01T10:00:01Z"},
            thread,
        ),
        event(
            "tool.call_completed",
            "ToolCallCompleted",
            {
                "tool_id": "c1",
                "tool_name": "shell",
                "output": "x" * 10_000_000,
                "timestamp": "2026-11-01T10:00:02.250Z",
            },
            thread,
        ),
        event(
            "turn.completed",
            "TurnCompleted",
            {
                "timestamp": "2026-11-01T10:00:03Z",
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            },
            thread,
        ),
    ]


def write_thread(data_dir: Path, thread: str, lines: list[bytes | str]) -> Path:
    path = data_dir / "threads" / thread / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for item in lines:
            fh.write((item.encode() if isinstance(item, str) else item) + b"\n")
    return path


def once(data_dir: Path, store: Path, *extra: str):
    return run_cli(
        "--once", "--json", "--data-dir", data_dir, "--store", store, *extra, check=False
    )


def test_garbage_sentinels_blanks_and_a_10mb_line(tmp_path, store):
    data = tmp_path / "data"
    good = turn_lines()
    write_thread(
        data,
        "thr-a",
        [
            good[0],
            b"\x00\xff\xfe binary garbage",
            b"{}",
            b"",
            good[1],
            b"!" * 10_000_000,
            good[2],
            good[3],
        ],
    )
    proc = once(data, store, "--best-effort")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(e["path"], e["line"]) for e in report["parseErrors"]] == [
        ("threads/thr-a/events.jsonl", 2),
        ("threads/thr-a/events.jsonl", 3),
        ("threads/thr-a/events.jsonl", 6),
    ]
    assert all(len(e["message"]) < 300 for e in report["parseErrors"])
    assert report["linesIngested"] == 4  # the 10 MB event with a huge output is fine
    tools = run_json("stats", "tools", "--data-dir", data, "--store", store)
    assert tools[0]["callCount"] == 1 and tools[0]["p50DurationMs"] == 1250
    assert b"xxxxxxxxxx" not in store.read_bytes()


def test_unreadable_file_is_reported_and_the_rest_ingested(tmp_path, store):
    data = tmp_path / "data"
    write_thread(data, "thr-a", turn_lines("thr-a"))
    (data / "threads" / "thr-b" / "events.jsonl").mkdir(parents=True)  # cannot be read as a file
    proc = once(data, store, "--best-effort")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["linesIngested"] == 4
    assert [e["path"] for e in report["fileErrors"]] == ["threads/thr-b/events.jsonl"]
    strict = once(data, store)
    assert strict.returncode == 1
    assert "threads/thr-b/events.jsonl" in strict.stderr and "Traceback" not in strict.stderr


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their mode")
def test_permission_denied_file(tmp_path, store):
    data = tmp_path / "data"
    path = write_thread(data, "thr-a", turn_lines("thr-a"))
    path.chmod(0)
    try:
        report = json.loads(once(data, store, "--best-effort").stdout)
        assert report["fileErrors"] == [
            {"path": "threads/thr-a/events.jsonl", "message": "permission denied"}
        ]
    finally:
        path.chmod(0o644)


def test_thread_dir_deleted_mid_scan_is_skipped_quietly(tmp_path):
    data = tmp_path / "data"
    write_thread(data, "thr-a", turn_lines("thr-a"))
    write_thread(data, "thr-b", turn_lines("thr-b"))
    settings = load_settings(data, tmp_path / "s.sqlite3")

    async def scan() -> Report:
        conn = await open_store(settings.store)
        try:
            ingestor = Ingestor(conn, settings, strict=True)
            await ingestor.start()
            events, metadata = discover(data)
            shutil.rmtree(data / "threads" / "thr-b")  # vanishes between scan and read
            report = Report()
            await ingestor.ingest(events, metadata, report)
            return report
        finally:
            await conn.close()

    report = anyio.run(scan)
    assert report.file_errors == [] and report.parse_errors == []
    assert report.lines_ingested == 4 and report.files_scanned == 1


def test_store_that_cannot_be_created(tmp_path, data_dir):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc = once(data_dir, blocker / "usage.sqlite3", "--best-effort")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "cannot create store" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only dirs")
def test_store_in_read_only_dir(tmp_path, data_dir):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = once(data_dir, ro / "usage.sqlite3", "--best-effort")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
    finally:
        ro.chmod(0o755)


def test_queries_without_a_store_fail_cleanly(tmp_path):
    proc = run_cli(
        "stats",
        "summary",
        "--json",
        "--data-dir",
        tmp_path,
        "--store",
        tmp_path / "none.sqlite3",
        check=False,
    )
    assert proc.returncode == 1 and "--once" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "none.sqlite3").exists()


def test_bad_config_is_a_usage_error(tmp_path, store):
    data = tmp_path / "data"
    write_thread(data, "thr-a", turn_lines())
    (data / "config.toml").write_text("[analytics]\nworkspace_labels = 'everything'\n")
    proc = once(data, store)
    assert proc.returncode == 2 and "workspace_labels" in proc.stderr
    (data / "config.toml").write_text("[analytics\n")
    proc = once(data, store)
    assert proc.returncode == 2 and "config.toml" in proc.stderr and "Traceback" not in proc.stderr


def test_disabled_analytics_records_nothing(tmp_path, store):
    data = tmp_path / "data"
    write_thread(data, "thr-a", turn_lines())
    (data / "config.toml").write_text("[analytics]\nenabled = false\n")
    proc = once(data, store)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["linesIngested"] == 0
    assert not store.exists()


@pytest.mark.parametrize(
    ("mode", "label"),
    [("full_path", "/home/dev/work/webapp"), ("basename_only", "webapp"), ("hashed", None)],
)
def test_workspace_label_modes(tmp_path, store, mode, label):
    data = tmp_path / "data"
    write_thread(data, "thr-a", turn_lines())
    (data / "threads" / "thr-a" / "metadata.json").write_text(
        json.dumps(
            {
                "thread_id": "thr-a",
                "title": "secret title",
                "workspace": "/home/dev/work/webapp",
                "created_at": "2026-11-01T09:00:00Z",
                "updated_at": "2026-11-01T11:00:00Z",
            }
        )
    )
    (data / "config.toml").write_text(f'[analytics]\nworkspace_labels = "{mode}"\n')
    assert once(data, store).returncode == 0
    import sqlite3

    got = (
        sqlite3.connect(store)
        .execute("SELECT workspace_key, workspace_label FROM sessions")
        .fetchone()
    )
    assert got[0] == fnv1a_64("/home/dev/work/webapp")  # the key is the same in every mode
    if label is None:
        assert got[1] == got[0] and b"/home/dev" not in store.read_bytes()
    else:
        assert got[1] == label
    assert b"secret title" not in store.read_bytes()


def test_fnv1a_64_matches_published_test_vectors():
    # from the FNV reference (Landon Curt Noll's test suite)
    assert fnv1a_64("") == "cbf29ce484222325"
    assert fnv1a_64("a") == "af63dc4c8601ec8c"
    assert fnv1a_64("foobar") == "85944171f73967e8"


def test_many_corrupt_lines_are_listed_up_to_a_cap_and_counted_past_it(tmp_path, store):
    """The report lists the first MAX_LISTED_PARSE_ERRORS corrupt lines and
    counts the rest: memory stays bounded however much garbage a dir holds."""
    from roder_analyticsd.live.ingest import MAX_LISTED_PARSE_ERRORS

    data = tmp_path / "data"
    extra = 37
    garbage = [b"{not json"] * (MAX_LISTED_PARSE_ERRORS + extra)
    write_thread(data, "thr-a", [turn_lines()[0], *garbage, turn_lines()[-1]])
    proc = once(data, store, "--best-effort")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    lines = [e["line"] for e in report["parseErrors"]]
    assert lines == list(range(2, MAX_LISTED_PARSE_ERRORS + 2))  # the first ones, in order
    assert report["parseErrorsNotListed"] == extra
    assert report["linesIngested"] == 2

    human = run_cli("--once", "--rebuild", "--best-effort", "--data-dir", data, "--store", store)
    said = human.stderr.splitlines()
    assert sum(line.startswith("skipped ") for line in said) == MAX_LISTED_PARSE_ERRORS
    assert f"… and {extra} more corrupt lines skipped" in said
    assert f"{MAX_LISTED_PARSE_ERRORS + extra} skipped" in human.stdout
