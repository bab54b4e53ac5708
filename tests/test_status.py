"""`status` (running, store, schema, files, lag, last rollup) and the
install-service / uninstall-service commands, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, _env, run_cli, run_json

from roder_analyticsd.live.lock import LockHeld, StoreLock
from roder_analyticsd.store.schema import SCHEMA_VERSION


def status(data_dir: Path, store: Path) -> dict:
    return run_json("status", "--data-dir", data_dir, "--store", store)


def complete_lines(data_dir: Path) -> tuple[int, int, int]:
    """(files, complete lines, their bytes) over every events.jsonl."""
    files = lines = size = 0
    for path in data_dir.glob("*/*/events.jsonl"):
        data = path.read_bytes()
        files += 1
        lines += data.count(b"\n")
        size += data.rfind(b"\n") + 1
    return files, lines, size


def test_status_before_any_store(data_dir: Path, store: Path) -> None:
    out = status(data_dir, store)
    files, lines, size = complete_lines(data_dir)
    assert out["running"] is False and out["pid"] is None
    assert out["store"] == str(store) and out["storeExists"] is False
    assert out["schemaVersion"] is None and out["filesTracked"] == 0
    assert (out["lagLines"], out["lagBytes"]) == (lines, size)  # a half line is not lag
    assert len(out["laggingFiles"]) == files
    assert out["lastRollupMs"] is None
    assert not store.exists()  # status only reads


def test_status_after_backfill_then_appends(data_dir: Path, store: Path, expected) -> None:
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store)
    out = status(data_dir, store)
    files, _, _ = complete_lines(data_dir)
    assert out["storeExists"] is True and out["schemaVersion"] == SCHEMA_VERSION
    assert out["filesTracked"] == files
    assert (out["lagLines"], out["lagBytes"], out["laggingFiles"]) == (0, 0, [])
    assert abs(out["lastRollupMs"] / 1000 - time.time()) < 120

    # the half-written line gets its newline; another file gets a blank line
    partial = expected["partial"]
    rel = partial["path"]
    with open(data_dir / rel, "ab") as fh:
        fh.write(partial["rest"].encode())
    with open(data_dir / "threads" / "runtime" / "events.jsonl", "ab") as fh:
        fh.write(b"\n")
    out = status(data_dir, store)
    assert out["lagLines"] == 2
    lagging = {f["path"]: f for f in out["laggingFiles"]}
    assert set(lagging) == {rel, "threads/runtime/events.jsonl"}
    assert lagging["threads/runtime/events.jsonl"] == {
        "path": "threads/runtime/events.jsonl",
        "lagBytes": 1,
        "lagLines": 1,
    }
    assert out["lagBytes"] == sum(f["lagBytes"] for f in out["laggingFiles"])

    human = run_cli("status", "--data-dir", data_dir, "--store", store).stdout
    assert "daemon: not running" in human
    assert f"files tracked: {files}" in human and "lag: 2 lines" in human

    # once ingested, nothing lags
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store)
    assert status(data_dir, store)["lagLines"] == 0


def test_status_sees_the_lock_holder(data_dir: Path, store: Path) -> None:
    lock = StoreLock(store)
    lock.acquire()
    try:
        out = status(data_dir, store)
        assert out["running"] is True and out["pid"] == os.getpid()
        with pytest.raises(LockHeld) as held:
            StoreLock(store).acquire()  # a second daemon: refused, naming the owner
        assert held.value.pid == os.getpid()
    finally:
        lock.release()
    out = status(data_dir, store)
    assert out["running"] is False and out["pid"] is None


# --------------------------------------------------------------- services

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd unit")


def service_cli(home: Path, path: str, *args: str | Path) -> subprocess.CompletedProcess:
    env = _env() | {"HOME": str(home), "PATH": path}
    return subprocess.run(
        [sys.executable, "-m", "roder_analyticsd", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH holding only a fake systemctl that records its arguments."""
    path = tmp_path / "bin"
    path.mkdir()
    script = path / "systemctl"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{tmp_path / 'calls.log'}'\n")
    script.chmod(0o755)
    return path


@linux_only
def test_install_service_dry_run_prints_the_unit(home: Path, bin_dir: Path, tmp_path: Path) -> None:
    data_dir, store = tmp_path / "my data", tmp_path / "s.sqlite3"
    unit_path = home / ".config" / "systemd" / "user" / "roder-analyticsd.service"
    args = ("install-service", "--dry-run", "--data-dir", data_dir, "--store", store)
    done = service_cli(home, str(bin_dir), *args)
    assert done.returncode == 0, done.stderr
    assert f"would write {unit_path}" in done.stderr
    exec_start = [x for x in done.stdout.splitlines() if x.startswith("ExecStart=")]
    assert len(exec_start) == 1
    assert exec_start[0].endswith(f'--data-dir "{data_dir}" --store {store}')
    assert "Restart=on-failure" in done.stdout
    as_json = json.loads(service_cli(home, str(bin_dir), *args, "--json").stdout)
    assert as_json == {"path": str(unit_path), "content": done.stdout, "dryRun": True}
    assert not unit_path.exists() and not (tmp_path / "calls.log").exists()


@linux_only
def test_install_and_uninstall_service(home: Path, bin_dir: Path, tmp_path: Path) -> None:
    unit_path = home / ".config" / "systemd" / "user" / "roder-analyticsd.service"
    dry = service_cli(home, str(bin_dir), "install-service", "--dry-run")
    done = service_cli(home, str(bin_dir), "install-service")
    assert done.returncode == 0, done.stderr
    assert unit_path.read_text() == dry.stdout
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert "--user daemon-reload" in calls
    assert "--user enable --now roder-analyticsd.service" in calls

    planned = service_cli(home, str(bin_dir), "uninstall-service", "--dry-run", "--json")
    assert json.loads(planned.stdout)["commands"] == [
        "systemctl --user disable --now roder-analyticsd.service",
        "systemctl --user daemon-reload",
    ]
    assert unit_path.exists()
    done = service_cli(home, str(bin_dir), "uninstall-service")
    assert done.returncode == 0, done.stderr
    assert not unit_path.exists()
    assert "--user disable --now roder-analyticsd.service" in (tmp_path / "calls.log").read_text()
    again = service_cli(home, str(bin_dir), "uninstall-service")
    assert again.returncode == 0 and "nothing installed" in again.stdout


@linux_only
def test_install_service_without_systemctl_fails_in_one_line(home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = service_cli(home, str(empty), "install-service")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "systemctl not found" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (home / ".config" / "systemd" / "user" / "roder-analyticsd.service").exists()
