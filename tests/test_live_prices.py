"""The live daemon keeps price entries for models it meets while tailing,
made beside the work loop (a worker start and the price table take seconds)
so ingestion never waits for them."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, _env

CONFIG = "[analytics.daemon]\nflush_interval_ms = 40\nrollup_interval_s = 0.2\n"


def _line(seq: int, kind: str, variant: str, **payload) -> str:
    body = {"thread_id": "thr-p", "turn_id": "t1", "timestamp": "2026-05-01T12:00:00Z", **payload}
    return json.dumps({
        "event_id": f"e{seq}", "seq": seq, "timestamp": body["timestamp"], "source": "Core",
        "kind": kind, "thread_id": "thr-p", "turn_id": "t1", "event": {variant: body},
    }) + "\n"  # fmt: skip


def _kept(store: Path) -> dict:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'price_entries'").fetchone()
    except sqlite3.Error:
        return {}
    return json.loads(row[0])["entries"] if row else {}


def test_daemon_keeps_price_entries_for_a_model_seen_live(tmp_path):
    data_dir, store = tmp_path / "roder", tmp_path / "usage.sqlite3"
    data_dir.mkdir()
    (data_dir / "config.toml").write_text(CONFIG)
    proc = subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "--data-dir", str(data_dir),
         "--store", str(store)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not store.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        thread = data_dir / "threads" / "thr-p"
        thread.mkdir(parents=True)
        usage = {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010}
        (thread / "events.jsonl").write_text(
            _line(1, "turn.started", "TurnStarted")
            + _line(2, "inference.started", "InferenceStarted", engine_id="e",
                    model={"provider": "openai", "model": "gpt-5"})
            + _line(3, "turn.completed", "TurnCompleted", finish_reason="stop", usage=usage)
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while "openai\x1fgpt-5" not in _kept(store) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "openai\x1fgpt-5" in _kept(store)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
