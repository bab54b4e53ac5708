"""Shared fixtures: a writable copy of the sample data dir, and the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import HealthCheck, settings

from roder_analyticsd.store import schema

# Property tests are judged by what they find, never by this machine's speed:
# no deadlines and no "too slow" health checks, on a loaded machine or in CI.
# Under CI the examples are derived from each test's name, so a verdict
# can be reproduced; runs elsewhere draw new examples every time, which is
# where new failures are found.
settings.register_profile(
    "any-speed",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("CI") == "true",
)
settings.load_profile("any-speed")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"
SAMPLE_DIR = SAMPLES / "roder-data"
EXPECTED_PATH = SAMPLES / "expected.json"


@pytest.fixture(autouse=True)
def no_real_claude_logs(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Never read this machine's own Claude Code logs: every test, and every
    subprocess it starts, sees an empty CLAUDE_CONFIG_DIR unless it sets one."""
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path_factory.mktemp("no-claude")))


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose real dependency (a browser, a database server) is
    missing here; under CI=true that is a failure, so such tests always run in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
    pytest.skip(reason)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RODER_CONFIG_DIR", None)
    env.pop("RODER_DATA_DIR", None)
    return env


def run_cli(
    *args: str | Path, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "roder_analyticsd", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


def run_json(*args: str | Path) -> Any:
    return json.loads(run_cli(*args, "--json").stdout)


def copy_sample(dest: Path) -> Path:
    shutil.copytree(SAMPLE_DIR, dest)
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    os.chmod(dest, 0o755)
    return dest


def prompt_ties(store: Path) -> dict[str, list]:
    """Each Claude Code call's prompt (its turn), and each turn's model."""
    with sqlite3.connect(store) as conn:
        return {
            "tool_calls": conn.execute(
                "SELECT thread_id, tool_id, prompt_id FROM tool_calls ORDER BY 1, 2"
            ).fetchall(),
            "token_usage": conn.execute(
                "SELECT thread_id, turn_id, prompt_id FROM token_usage ORDER BY 1, 2"
            ).fetchall(),
            "turns": conn.execute("SELECT thread_id, turn_id, model FROM turns ORDER BY 1, 2")
            .fetchall(),
        }  # fmt: skip


_TURN_COLUMNS = (
    "thread_id, turn_id, provider, model, model_at_ms, runtime_profile, started_at_ms,"
    " completed_at_ms, terminal_status, error_kind, agent"
)
_TOKEN_COLUMNS = (
    "thread_id, turn_id, recorded_at_ms, prompt_tokens, completion_tokens, total_tokens,"
    " cached_prompt_tokens, cache_creation_prompt_tokens, agent, provider, model,"
    " cache_creation_1h_prompt_tokens, message_id, is_sidechain, prompt_id"
)
_TOOL_COLUMNS = (
    "thread_id, turn_id, tool_id, tool_name, started_at_ms, completed_at_ms, is_error, agent,"
    " prompt_id"
)


# Statements that take a store of this version back to version 8 (for
# migration tests): migration 10 undone, then 9.
UNDO_MIGRATION_9 = (
    "DROP TABLE pending_sidechain_calls",  # (its index with it)
    "DROP VIEW local_v2_events",
    "DROP VIEW activity_v2",
    "DROP VIEW activity_events",
    *(f"ALTER TABLE tool_calls DROP COLUMN {c}" for c in ("event_id", "class_id")),
    *(
        f"ALTER TABLE turns DROP COLUMN {c}"
        for c in ("start_event_id", "start_class_id", "end_event_id", "end_class_id")
    ),
    *(f"ALTER TABLE token_usage DROP COLUMN {c}" for c in ("event_id", "class_id")),
    "ALTER TABLE forward_outbox DROP COLUMN thread_id",
    schema.ACTIVITY_V2_VIEW_V1,
    schema.LOCAL_V2_VIEW,
)


def dump_tables(store: Path) -> dict[str, list[tuple]]:
    """Every analytics table's rows, in a stable order (volatile columns left out)."""
    conn = sqlite3.connect(store)
    try:
        out = {
            "sessions": "SELECT * FROM sessions ORDER BY thread_id",
            # (the analytics.v2 events these rows hold are under "activity")
            "turns": f"SELECT {_TURN_COLUMNS}, status FROM turns ORDER BY thread_id, turn_id",
            "tool_calls": f"SELECT {_TOOL_COLUMNS}, duration_ms, status FROM tool_calls "
            "ORDER BY thread_id, turn_id, tool_id",
            "token_usage": f"SELECT {_TOKEN_COLUMNS} FROM token_usage ORDER BY thread_id, turn_id",
            "activity": "SELECT * FROM activity_events ORDER BY event_id, occurred_at_ms",
            "thread_owners": "SELECT * FROM thread_owners ORDER BY thread_id",
            "daily_rollups": "SELECT day, scope, key, turns, tool_calls, tool_errors, "
            "tool_duration_ms, prompt_tokens, completion_tokens, total_tokens, "
            "cached_prompt_tokens, cache_creation_prompt_tokens FROM daily_rollups "
            "ORDER BY day, scope, key",
        }
        return {name: conn.execute(sql).fetchall() for name, sql in out.items()}
    finally:
        conn.close()


@contextlib.contextmanager
def serve_on_loopback(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on an ephemeral loopback
    port; yields its base URL."""
    import uvicorn

    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on such sockets
    # (without it each keep-alive response waits ~40 ms for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


@pytest.fixture(scope="session")
def expected() -> dict[str, Any]:
    return json.loads(EXPECTED_PATH.read_text())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return copy_sample(tmp_path / "roder-data")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store" / "usage.sqlite3"
