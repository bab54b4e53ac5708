"""`roder-analyticsd serve` as a real subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import REPO, _env

from roder_analyticsd.cli import main

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
JSON = {"content-type": "application/json"}


def event(i: int, day: str, installation: str, **props: Any) -> dict[str, Any]:
    return {
        "schemaVersion": "analytics.v2",
        "eventId": f"ev-{installation}-{i}",
        "eventName": "feature_used",
        "occurredAt": f"{day}T12:00:00.250Z",
        "installationId": installation,
        "instanceId": f"proc-{i % 2}",
        "deploymentMode": "source",
        "sessionId": f"raw-session-{i % 3}",
        "commitHash": "abc",
        "appVersion": "1.0.0",
        "platform": "linux",
        "properties": {"module": "session", "loopStage": "loop_start", **props},
    }


@contextmanager
def serving(data_dir: Path, store: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start `serve --listen 127.0.0.1:0 --json`; yields (process, base URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "serve", "--listen", "127.0.0.1:0", "--json",
         "--data-dir", str(data_dir), "--store", str(store), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""  # the server is up once it says so
        assert line, f"serve did not start: {proc.communicate(timeout=10)}"
        yield proc, json.loads(line)["listen"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def test_collect_then_fleet_stats_and_clean_sigterm(tmp_path):
    data_dir, store = tmp_path / "data", tmp_path / "store" / "usage.sqlite3"
    data_dir.mkdir()
    batch = [event(i, "2026-03-01", "inst-a") for i in range(5)]
    batch += [event(i, "2026-03-02", "inst-b", cwd="/home/someone/project") for i in range(3)]
    with serving(data_dir, store) as (proc, url):
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        with httpx.Client(timeout=10) as http:
            assert http.get(f"{url}/healthz").json() == {"ok": True}
            first = http.post(f"{url}/collect", json=batch).json()
            again = http.post(f"{url}/collect", json=batch).json()  # at-least-once delivery
            bad = http.post(f"{url}/collect", content=b"{}", headers=JSON)
        assert len(first["accepted"]) == 8 and first["rejected"] == []
        assert again["accepted"] == [] and len(again["duplicates"]) == 8
        assert bad.status_code == 400
        code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err

    def fleet(metric: str) -> Any:
        args = ["stats", "fleet", metric, "--source", "collected", "--json"]
        result = CliRunner().invoke(
            main, [*args, "--data-dir", str(data_dir), "--store", str(store)]
        )
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    assert fleet("dau") == [
        {"day": "2026-03-01", "installations": 1},
        {"day": "2026-03-02", "installations": 1},
    ]
    assert fleet("instances") == [
        {"day": "2026-03-01", "instances": 2},
        {"day": "2026-03-02", "instances": 2},
    ]
    assert fleet("sessions") == [
        {"day": "2026-03-01", "sessions": 3},
        {"day": "2026-03-02", "sessions": 3},
    ]
    # the one store: the receiver's rows sit next to the migrated analytics tables
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 3
        rows = conn.execute("SELECT properties_json FROM collected_events").fetchall()
    props = [json.loads(p) for (p,) in rows]
    assert all("cwd" not in p for p in props)  # redacted on receipt


def test_token_is_required_when_configured_and_sigint_stops(tmp_path):
    data_dir, store = tmp_path / "data", tmp_path / "usage.sqlite3"
    data_dir.mkdir()
    (data_dir / "config.toml").write_text('[analytics.collect]\ntoken = "s3cret"\n')
    with serving(data_dir, store) as (proc, url), httpx.Client(timeout=10) as http:
        batch = [event(1, "2026-03-01", "inst-a")]
        assert http.post(f"{url}/collect", json=batch).status_code == 401
        ok = http.post(f"{url}/collect", json=batch, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["accepted"] == ["ev-inst-a-1"]
        code, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def one_line_error(args: list[Any], code: int) -> str:
    # in-process: each of these is refused before anything is served
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    err = result.stderr
    assert err.count("\n") == 1 and err.startswith("roder-analyticsd: error:"), err
    return err


def test_refusals_are_one_line(tmp_path):
    data_dir, store = tmp_path / "data", tmp_path / "usage.sqlite3"
    data_dir.mkdir()
    common = ["--data-dir", data_dir, "--store", store]
    # off loopback without a token: usage error, nothing is bound
    err = one_line_error(["serve", "--listen", "0.0.0.0:8787", *common], 2)
    assert "token" in err
    for bad in ("8787", "localhost:http", "::1:8787", "127.0.0.1:70000", "[::1:80"):
        one_line_error(["serve", "--listen", bad, *common], 2)
    # a port already taken: runtime failure
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = one_line_error(["serve", "--listen", f"127.0.0.1:{port}", *common], 1)
    assert str(port) in err
    # a store that is not a database: runtime failure
    bad_store = tmp_path / "bad.sqlite3"
    bad_store.write_bytes(b"not a database, not at all" * 100)
    args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--store", bad_store]
    assert "not a valid" in one_line_error(args, 1)
    assert not store.exists()  # every refusal came before the store was touched
