"""Shared by the dashboard's API and browser tests: stores to serve, the
dashboard as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import REPO, _env, run_cli


def backfill(data_dir: Path, store: Path) -> Path:
    run_cli("--once", "--best-effort", "--json", "--data-dir", data_dir, "--store", store)
    return store


def generated_corpus(dest: Path, events: int = 20_000, seed: int = 11) -> Path:
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "gen_corpus.py"), str(dest),
         "--events", str(events), "--seed", str(seed), "--force"],
        check=True, capture_output=True, env=_env(), cwd=REPO, timeout=120,
    )  # fmt: skip
    return dest


def cli_json(data_dir: Path, store: Path, *args: str) -> Any:
    """`roder-analyticsd stats … --json` on this store (a real subprocess)."""
    out = run_cli("stats", *args, "--json", "--data-dir", data_dir, "--store", store)
    return json.loads(out.stdout)


def app_for(data_dir: Path, store: Path, token: str | None = None):
    """The dashboard app as `roder-analyticsd dashboard` builds it."""
    from roder_analyticsd.config import load_settings
    from roder_analyticsd.live.status import gather_status
    from roder_analyticsd.web import create_app

    settings = load_settings(data_dir, store)
    return create_app(store, token=token, status=lambda: gather_status(settings))


@contextmanager
def dashboard_process(
    data_dir: Path, store: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`roder-analyticsd dashboard --listen 127.0.0.1:0 --json`: (process, URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "dashboard", "--listen", "127.0.0.1:0",
         "--json", "--data-dir", str(data_dir), "--store", str(store), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, f"dashboard did not start: {proc.communicate(timeout=10)}"
        yield proc, json.loads(line)["listen"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
