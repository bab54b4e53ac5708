"""A first backfill builds its random-key indexes once, at the end: the
store ends with the same indexes, and a backfill killed with them dropped
gets them back when the store is next opened for writing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from conftest import SAMPLE_DIR, run_cli

from roder_analyticsd.pipeline.batch import Rows
from roder_analyticsd.pipeline.project import NO_EVENTS
from roder_analyticsd.store import deferred_indexes
from roder_analyticsd.store.connection import open_store
from roder_analyticsd.store.writer import write_rows


def _indexes(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
        return {name: sql for name, sql in rows if sql}
    finally:
        conn.close()


def _pending(path: Path) -> bool:
    conn = sqlite3.connect(path)
    try:
        key = deferred_indexes.META_KEY
        return conn.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone() is not None
    finally:
        conn.close()


def test_a_killed_first_backfill_gets_its_indexes_back_on_open(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"

    async def drop() -> bool:
        conn = await open_store(path)
        try:
            return await deferred_indexes.drop_if_empty(conn)
        finally:
            await conn.close()  # as if killed: nothing builds them

    async def reopen() -> None:
        conn = await open_store(path)
        await conn.close()

    anyio.run(reopen)
    before = _indexes(path)
    assert set(deferred_indexes.DEFERRED) <= set(before)
    assert anyio.run(drop) is True
    assert not set(deferred_indexes.DEFERRED) & set(_indexes(path)) and _pending(path)
    anyio.run(reopen)
    assert _indexes(path) == before and not _pending(path)


@pytest.mark.parametrize("value", ["not json {", '["DROP TABLE turns"]', "42", "null"])
def test_a_damaged_pending_value_neither_runs_nor_stops_the_open(
    tmp_path: Path, value: str
) -> None:
    """The pending key holding anything at all: the store opens, every
    deferred index comes back as the schema defines it, and no stored text
    is run as SQL."""
    path = tmp_path / "store.sqlite3"

    async def reopen() -> None:
        conn = await open_store(path)
        await conn.close()

    anyio.run(reopen)
    before = _indexes(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP INDEX tool_calls_at")
        conn.execute("DROP INDEX turns_started")
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                     (deferred_indexes.META_KEY, value))  # fmt: skip
    finally:
        conn.close()
    anyio.run(reopen)
    assert _indexes(path) == before and not _pending(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM turns").fetchone() == (0,)
    finally:
        conn.close()


def test_a_store_with_rows_keeps_its_indexes(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    rows = Rows()
    rows.turns.append(
        ("thr", "turn", None, 1_000, "openai", "gpt-5", 1_000, None, None, None, *NO_EVENTS)
    )

    async def run() -> bool:
        conn = await open_store(path)
        try:
            await write_rows(conn, rows, [])
            return await deferred_indexes.drop_if_empty(conn)
        finally:
            await conn.close()

    assert anyio.run(run) is False
    assert set(deferred_indexes.DEFERRED) <= set(_indexes(path)) and not _pending(path)


def test_a_first_backfill_ends_with_every_index(tmp_path: Path) -> None:
    """`--once` into a new store and into one that had a run before: the
    same indexes, none left pending, the same answers."""
    fresh, again = tmp_path / "fresh.sqlite3", tmp_path / "again.sqlite3"
    for store in (fresh, again):
        proc = run_cli("--once", "--best-effort", "--json", "--data-dir", SAMPLE_DIR,
                       "--store", store, "--claude-dir", tmp_path / "none")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    proc = run_cli("--once", "--best-effort", "--json", "--data-dir", SAMPLE_DIR,
                   "--store", again, "--claude-dir", tmp_path / "none")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _indexes(fresh) == _indexes(again)
    assert set(deferred_indexes.DEFERRED) <= set(_indexes(fresh))
    assert not _pending(fresh) and not _pending(again)
    answers = [
        run_cli("stats", "tools", "--json", "--data-dir", SAMPLE_DIR, "--store", s).stdout
        for s in (fresh, again)
    ]
    assert answers[0] == answers[1]


def test_a_locked_store_is_loaded_with_its_indexes(tmp_path: Path) -> None:
    """Another writer holding the lock when a load starts: no deferral, no
    error (the daemon must not die of it); the indexes stay."""
    path = tmp_path / "store.sqlite3"

    async def run() -> None:
        conn = await open_store(path)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            await conn.execute("PRAGMA busy_timeout = 50")
            other.execute("BEGIN IMMEDIATE")
            async with deferred_indexes.deferred(conn):
                pass
        finally:
            other.rollback()
            other.close()
            await conn.close()

    anyio.run(run)
    assert set(deferred_indexes.DEFERRED) <= set(_indexes(path)) and not _pending(path)
