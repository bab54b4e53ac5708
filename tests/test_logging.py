"""What the daemon and `serve` tell people and machines (issue 14, item 22):
one structlog JSON format for both, a real file count at start, a plain line
on a terminal, and a watch failure that says why without naming a path."""

from __future__ import annotations

import errno
import io
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
from conftest import REPO, SAMPLE_DIR, _env, copy_sample

from roder_analyticsd.live.service import render_launchd_plist
from roder_analyticsd.live.watcher import Watcher, describe_failure
from roder_analyticsd.logs import configure_logging
from roder_analyticsd.sources.roder import discover

CANARY = "CANARYPATH9b1e77"
QUIET = "[analytics.daemon]\nflush_interval_ms = 40\nrollup_interval_s = 0.3\n"


def _daemon(data_dir: Path, store: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "--data-dir", str(data_dir),
         "--store", str(store)],
        env=_env(), cwd=REPO, **popen,
    )  # fmt: skip


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    out = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object: nothing plain
        assert {"event", "level", "timestamp"} <= set(record), line
        out.append(record)
    return out


def test_daemon_started_counts_the_files_and_logs_only_json_off_a_terminal(tmp_path):
    data_dir = copy_sample(tmp_path / "roder")
    (data_dir / "config.toml").write_text(QUIET)
    store = tmp_path / "usage.sqlite3"
    proc = _daemon(data_dir, store, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = ""
    try:
        deadline = time.monotonic() + 60
        while "catch_up_done" not in err and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                err += os.read(proc.stderr.fileno(), 65536).decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == ""
    records = _json_lines(err + rest)
    started = next(r for r in records if r["event"] == "daemon_started")
    want = len(discover(data_dir)[0])
    assert want > 1 and started["files"] == want
    assert "Ctrl-C" not in err + rest  # the plain line is for terminals only


def test_daemon_says_what_it_watches_and_how_to_stop_it_on_a_terminal(tmp_path):
    data_dir = copy_sample(tmp_path / "roder")
    (data_dir / "config.toml").write_text(QUIET)
    store = tmp_path / "usage.sqlite3"
    master, slave = pty.openpty()
    proc = _daemon(data_dir, store, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"Ctrl-C" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;]*m", "", seen.decode(errors="replace"))
    line = next(x for x in text.splitlines() if "Ctrl-C" in x)
    files = len(discover(data_dir)[0])
    assert f"watching {files} events.jsonl under {data_dir}" in line
    assert str(store) in line and "install-service" in line
    assert proc.returncode == 0


def test_serve_logs_the_same_json_lines_as_the_daemon(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "serve", "--listen", "127.0.0.1:0", "--json",
         "--data-dir", str(data_dir), "--store", str(tmp_path / "s.sqlite3")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    try:
        url = json.loads(proc.stdout.readline())["listen"]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        # a request uvicorn itself rejects and logs through the standard library
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GARBAGE /{CANARY} \x00\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    records = _json_lines(err)
    assert any(r["event"] == "receiver_listening" and r["listen"] == url for r in records)
    assert any(r.get("logger", "").startswith("uvicorn") for r in records), err
    assert CANARY not in err


def test_dashboard_logs_the_same_json_lines(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "dashboard", "--listen", "127.0.0.1:0",
         "--json", "--data-dir", str(data_dir), "--store", str(tmp_path / "s.sqlite3")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    try:
        url = json.loads(proc.stdout.readline())["listen"]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GARBAGE /{CANARY} \x00\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    records = _json_lines(err)
    assert any(r["event"] == "dashboard_listening" and r["listen"] == url for r in records)
    assert any(r.get("logger", "").startswith("uvicorn") for r in records), err
    assert CANARY not in err


def test_watch_failure_names_the_class_and_a_safe_reason():
    kind, reason = describe_failure(OSError(errno.ENOSPC, "No space left", f"/home/{CANARY}"))
    assert kind == "OSError" and reason.startswith("ENOSPC") and "max_user_watches" in reason
    kind, reason = describe_failure(
        RuntimeError(f'OS file watch limit reached. about ["/home/u/{CANARY}/threads"]')
    )
    assert kind == "RuntimeError" and "watch limit" in reason and CANARY not in reason
    for text in (f"cannot watch /srv/{CANARY}/x: denied", f"bad '{CANARY}' and ~/{CANARY}"):
        kind, reason = describe_failure(RuntimeError(text))
        assert CANARY not in reason and reason
    assert describe_failure(ValueError()) == ("ValueError", "no reason given")


def test_watch_failed_is_logged_with_class_and_reason_never_a_path(tmp_path):
    # watchfiles (ignore_permission_denied) swallows the failures this machine can
    # cause; the inotify limit can't be reached here: feed the watcher's failure
    # path the errors it meets in the field
    watcher = Watcher(tmp_path, lambda _changes: None, step_ms=20, debounce_ms=20)
    out = io.StringIO()
    configure_logging(json_lines=True, stream=out)

    async def fail(*errors: Exception) -> None:
        stop = anyio.Event()
        stop.set()  # no back-off wait in a test
        for exc in errors:
            await watcher._failed(exc, stop)

    limit = OSError(errno.ENOSPC, "No space left on device", f"/home/u/{CANARY}/threads")
    anyio.run(fail, limit, limit, FileNotFoundError(f"No path was found. /{CANARY}"))
    failed = [r for r in _json_lines(out.getvalue()) if r["event"] == "watch_failed"]
    assert [r["error"] for r in failed] == ["OSError", "FileNotFoundError"]  # each kind once
    assert "max_user_watches" in failed[0]["reason"] and failed[0]["retry_in_s"] > 0
    assert "vanished" in failed[1]["reason"]
    assert CANARY not in out.getvalue()


def test_readme_names_the_real_macos_log_and_the_venv_executable():
    readme = (REPO / "README.md").read_text()
    agent = render_launchd_plist("/x/roder-analyticsd")
    err_log = Path(re.search(r"<key>StandardErrorPath</key>\s*<string>([^<]+)", agent)[1]).name
    assert f"~/Library/Logs/{err_log}" in readme  # the daemon logs to stderr
    tour = readme[readme.index("## A short tour") :].split("## ", 2)[1]
    assert ".venv/bin/roder-analyticsd" in tour or "activate" in tour
    assert SAMPLE_DIR.is_dir()
