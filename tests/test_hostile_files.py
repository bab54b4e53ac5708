"""Odd things in the data dir never stop ingestion of everything else: a
thread dir whose name is not UTF-8, a FIFO or device named events.jsonl, a
relative data dir, a symlink loop under threads/. Real subprocesses of the
CLI and the daemon, each bounded by a timeout (the old symptom was a hang)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import REPO, dump_tables, run_cli
from test_daemon import CONFIG, Daemon, until

BAD_NAME = os.fsdecode(b"thr-\xff")  # surrogate-escaped, as os.listdir gives it
THREAD = "thr-0000-73ab4876"


def reference(data_dir: Path, tmp_path: Path) -> dict:
    store = tmp_path / "reference.sqlite3"
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store)
    return dump_tables(store)


def once_json(data_dir: Path, store: Path, *extra: str) -> dict:
    proc = run_cli(
        "--once", "--best-effort", "--json", "--data-dir", data_dir, "--store", store, *extra,
        timeout=60,
    )  # fmt: skip
    return json.loads(proc.stdout)


def a_line_of(path: Path) -> bytes:
    """A complete line of the file, to append again (an idempotent replay)."""
    return path.read_bytes().splitlines(keepends=True)[1]


def file_offset(store: Path, path: bytes | str) -> int | None:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT offset FROM files WHERE path = ?", (path,)).fetchone()
    return row[0] if row else None


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    yield started
    for proc in (p for d in started for p in d.procs):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ item 3


def test_a_thread_dir_name_that_is_not_utf8(data_dir: Path, tmp_path: Path, daemons) -> None:
    want = reference(data_dir, tmp_path)
    os.rename(data_dir / "threads" / THREAD, data_dir / "threads" / BAD_NAME)
    store = tmp_path / "store" / "usage.sqlite3"
    first = once_json(data_dir, store)
    assert first["fileErrors"] == [] and first["filesScanned"] == 31
    assert dump_tables(store) == want  # every thread, that one included
    stored = b"threads/thr-\xff/events.jsonl"
    assert file_offset(store, stored) == len(
        (data_dir / "threads" / BAD_NAME / "events.jsonl").read_bytes()
    )
    again = once_json(data_dir, store)
    assert again["linesIngested"] == 0  # its checkpoint round-trips: nothing read twice
    status = json.loads(
        run_cli("status", "--json", "--data-dir", data_dir, "--store", store).stdout
    )
    assert status["lagLines"] == 0 and status["filesTracked"] == 31

    # the daemon tails it like any other
    (data_dir / "config.toml").write_text(CONFIG.format(rescan=30))
    daemon = Daemon(data_dir, store, tmp_path / "daemon.log").start()
    daemons.append(daemon)
    events = data_dir / "threads" / BAD_NAME / "events.jsonl"
    with open(events, "ab") as fh:
        fh.write(a_line_of(events))
    size = events.stat().st_size
    until(lambda: file_offset(store, stored) == size, timeout=10, what="the append")
    assert daemon.stop() == 0
    assert dump_tables(store) == want


# ------------------------------------------------------------------ item 4


def _odd_files(data_dir: Path) -> dict[str, str]:
    fifo_dir = data_dir / "threads" / "thr-fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "events.jsonl")
    os.mkfifo(fifo_dir / "metadata.json")
    zero_dir = data_dir / "threads" / "thr-zero"
    zero_dir.mkdir()
    (zero_dir / "events.jsonl").symlink_to("/dev/zero")
    (zero_dir / "metadata.json").symlink_to("/dev/zero")
    return {
        "threads/thr-fifo/events.jsonl": "not a regular file (a FIFO)",
        "threads/thr-fifo/metadata.json": "not a regular file (a FIFO)",
        "threads/thr-zero/events.jsonl": "not a regular file (a character device)",
        "threads/thr-zero/metadata.json": "not a regular file (a character device)",
    }


def test_fifos_and_devices_are_file_errors(data_dir: Path, tmp_path: Path, daemons) -> None:
    want = reference(data_dir, tmp_path)
    odd = _odd_files(data_dir)
    store = tmp_path / "store" / "usage.sqlite3"
    report = once_json(data_dir, store)  # would block forever in open()
    assert {e["path"]: e["message"] for e in report["fileErrors"]} == odd
    assert dump_tables(store) == want
    strict = run_cli("--once", "--data-dir", data_dir, "--store", store, check=False, timeout=60)
    assert strict.returncode == 1 and "not a regular file" in strict.stderr
    assert "Traceback" not in strict.stderr
    status = run_cli("status", "--json", "--data-dir", data_dir, "--store", store, timeout=30)
    unreadable = json.loads(status.stdout)["unreadableFiles"]
    assert sorted(unreadable) == sorted(p for p in odd if p.endswith("events.jsonl"))

    # the daemon reports each once, keeps tailing the rest, and stops on SIGTERM
    (data_dir / "config.toml").write_text(CONFIG.format(rescan=0.3))
    daemon = Daemon(data_dir, store, tmp_path / "daemon.log").start()
    daemons.append(daemon)
    events = data_dir / "threads" / THREAD / "events.jsonl"
    with open(events, "ab") as fh:
        fh.write(a_line_of(events))
    size = events.stat().st_size
    rel = f"threads/{THREAD}/events.jsonl"
    until(lambda: file_offset(store, rel) == size, timeout=10, what="the append")
    time.sleep(1.5)  # several rescans and file retries
    assert daemon.stop(signal.SIGTERM, timeout=10) == 0
    logged = [e["path"] for e in daemon.events() if e.get("event") == "file_unreadable"]
    assert sorted(logged) == sorted(odd)  # once each, over several rescans


# ------------------------------------------------------------------ item 6


def _tails_within_flush(daemon: Daemon, data_dir: Path, store: Path) -> float:
    events = data_dir / "threads" / THREAD / "events.jsonl"
    rel = f"threads/{THREAD}/events.jsonl"
    with open(events, "ab") as fh:
        fh.write(a_line_of(events))
    size = events.stat().st_size
    # the rescan is 30 s away: only the watcher can see it this soon
    return until(lambda: file_offset(store, rel) == size, timeout=5, what="a live append")


def test_a_relative_data_dir_is_tailed_live(data_dir: Path, tmp_path: Path, daemons) -> None:
    (data_dir / "config.toml").write_text(CONFIG.format(rescan=30))
    relative = Path(os.path.relpath(data_dir, REPO))  # the daemon runs in REPO
    assert not relative.is_absolute()
    store = tmp_path / "store" / "usage.sqlite3"
    daemon = Daemon(relative, Path(os.path.relpath(store, REPO)), tmp_path / "daemon.log")
    daemons.append(daemon.start())
    assert _tails_within_flush(daemon, data_dir, store) < 5
    assert daemon.stop() == 0


def test_a_symlink_loop_under_threads_is_tailed_live(
    data_dir: Path, tmp_path: Path, daemons
) -> None:
    (data_dir / "config.toml").write_text(CONFIG.format(rescan=30))
    (data_dir / "threads" / "up").symlink_to("..")
    store = tmp_path / "store" / "usage.sqlite3"
    daemon = Daemon(data_dir, store, tmp_path / "daemon.log")
    daemons.append(daemon.start())
    assert _tails_within_flush(daemon, data_dir, store) < 5
    assert daemon.stop() == 0
