"""The real PostgreSQL server for tests: a fresh database per test, dropped
after; receivers as real `serve` subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from conftest import REPO, _env, unavailable

PG_HOST = os.environ.get("RODER_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("RODER_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("RODER_TEST_PGUSER", "postgres")
ADMIN_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


def url_of(name: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database on the real server; its URL. Dropped after."""
    name = f"roder_test_{uuid.uuid4().hex[:12]}"
    try:
        anyio.run(_admin, f"CREATE DATABASE {name}")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable(f"no PostgreSQL server at {PG_HOST}:{PG_PORT}: {exc}")
    try:
        yield url_of(name)
    finally:
        anyio.run(_admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def fetchval(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def value(url: str, sql: str, *args: Any) -> Any:
    return anyio.run(fetchval, url, sql, *args)


def start_serve(tmp_path: Path, store: str, *extra: str, env: dict[str, str] | None = None):
    """`serve --listen 127.0.0.1:0 --json --store STORE`: (process, base URL)."""
    data = tmp_path / f"data-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "serve", "--listen", "127.0.0.1:0", "--json",
         "--data-dir", str(data), "--store", store, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**_env(), **(env or {})},
        cwd=REPO,
    )  # fmt: skip
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"serve did not start: {out} {err}")
    return proc, json.loads(line)["listen"]


@contextmanager
def serving(tmp_path: Path, store: str, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    proc, base = start_serve(tmp_path, store, *extra)
    try:
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
