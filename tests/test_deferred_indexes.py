"""A first backfill builds its random-key indexes once, at the end: the
store ends with the same indexes, and a backfill killed with them dropped
gets them back when the store is next opened for writing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from conftest import SAMPLE_DIR, SAMPLES, dump_tables, run_cli

from roder_analyticsd.pipeline.batch import Rows
from roder_analyticsd.pipeline.project import NO_EVENTS
from roder_analyticsd.store import deferred_indexes, maintenance
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


CLAUDE_ROOT = SAMPLES / "claude-code" / "home" / ".claude"


def _rollups(path: Path) -> dict[str, list[tuple]]:
    """The store's rows (conftest.dump_tables), its token rollups, and what
    is left of a first backfill's bookkeeping."""
    tables = dump_tables(path)
    conn = sqlite3.connect(path)
    try:
        for name, sql in (
            ("token_rollups", "SELECT * FROM token_rollups ORDER BY 1, 2, 3, 4, 5, 6"),
            ("dirty", "SELECT * FROM rollup_dirty_days"),
            ("held", "SELECT * FROM pending_sidechain_calls"),
        ):
            tables[name] = conn.execute(sql).fetchall()
    finally:
        conn.close()
    return tables


def test_a_first_backfill_ends_as_a_rebuild_of_it(tmp_path: Path) -> None:
    """`--once` into a new store builds its indexes while a second connection
    computes the daily rollups, and holds Claude Code's sidechain calls back
    until the load's end; a `--rebuild` (one transaction, so no second
    connection) does each step in turn. Same rows, same rollups, nothing
    left over."""
    store = tmp_path / "store.sqlite3"
    args = ("--once", "--best-effort", "--json", "--data-dir", SAMPLE_DIR, "--store", store,
            "--claude-dir", CLAUDE_ROOT)  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    first = _rollups(store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite3"]
    proc = run_cli(*args, "--rebuild")
    assert proc.returncode == 0, proc.stderr
    assert _rollups(store) == first
    assert first["daily_rollups"] and first["token_rollups"] and not first["dirty"]
    assert not first["held"] and any(row[13] for row in first["token_usage"])  # sidechain rows


def _call(session: str, request: str, message: str, sidechain: int) -> tuple:
    return (session, f"{message}:{request}", 1_790_000_000_000, 1, 1, 2, 0, 0, 0, "anthropic",
            "claude-x", message, sidechain, None, None, -1 - sidechain)  # fmt: skip


def test_held_sidechain_calls_outlive_a_kill(tmp_path: Path) -> None:
    """A first backfill killed with sidechain calls held back: they are
    committed with their lines, no reader counts a copy the rule drops, and
    the next open for writing puts them through the rule."""
    path = tmp_path / "store.sqlite3"
    copy, own, kept = (
        _call("s1", "r2", "m1", 1),
        _call("s1", "r1", "m1", 0),
        _call("s1", "r1", "m2", 1),
    )

    async def killed() -> None:
        conn = await open_store(path)
        try:
            assert await deferred_indexes.drop_if_empty(conn)
            await write_rows(conn, Rows(api_calls=[copy, kept]), [], "claude-code")
            await write_rows(conn, Rows(api_calls=[own]), [], "claude-code")
        finally:
            await conn.close()  # as if killed: nothing builds the indexes

    async def reopen() -> None:
        conn = await open_store(path)
        await conn.close()

    anyio.run(killed)
    before = _rollups(path)
    assert [row[:2] for row in before["token_usage"]] == [own[:2]] and len(before["held"]) == 2
    conn = sqlite3.connect(path, isolation_level=None)
    try:  # as if the day's rollups were refreshed meanwhile: it is marked again
        conn.execute("DELETE FROM rollup_dirty_days")
    finally:
        conn.close()
    anyio.run(reopen)
    after = _rollups(path)
    assert [row[:2] for row in after["token_usage"]] == [own[:2], kept[:2]]
    assert not after["held"] and not _pending(path)
    assert after["dirty"] == [(1_790_000_000_000 // 86_400_000,)]
    assert set(deferred_indexes.DEFERRED) <= set(_indexes(path))


DAY = 1_790_000_000_000 // 86_400_000


def _day_total(path: Path) -> tuple:
    conn = sqlite3.connect(path)
    try:
        day = conn.execute(
            "SELECT total_tokens FROM daily_rollups WHERE scope = 'all' AND key = ''"
        ).fetchall()
        return day, conn.execute("SELECT * FROM rollup_dirty_days").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("other_writer", [False, True])
def test_the_rollups_beside_the_build_are_those_of_the_rows_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_writer: bool
) -> None:
    """While the indexes are built a second connection computes the daily
    rollups from the rows as they were; another process writing meanwhile
    (to a day already dirty: the dirty days alone don't show it) makes the
    refresh start over from the rows at its end."""
    path = tmp_path / "store.sqlite3"
    fallbacks: list[int] = []
    plain = maintenance.refresh_rollups

    async def counted(conn, *args, **kwargs) -> int:
        fallbacks.append(1)
        return await plain(conn, *args, **kwargs)

    monkeypatch.setattr(maintenance, "refresh_rollups", counted)

    async def work() -> None:  # the index build's place
        await anyio.sleep(0.3)  # (the second connection has read the rows by now)
        if other_writer:
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute(
                    "INSERT INTO token_usage (thread_id, turn_id, recorded_at_ms, prompt_tokens,"
                    " completion_tokens, total_tokens, cached_prompt_tokens,"
                    " cache_creation_prompt_tokens) VALUES ('t2', 'u2', ?, 5, 5, 10, 0, 0)",
                    (DAY * 86_400_000 + 5,),
                )
                other.execute("INSERT OR IGNORE INTO rollup_dirty_days VALUES (?)", (DAY,))
                other.execute("COMMIT")
            finally:
                other.close()

    async def run() -> int:
        conn = await open_store(path)
        try:
            token = ("t1", "u1", DAY * 86_400_000 + 1, 1, 2, 3, 0, 0)
            await write_rows(conn, Rows(token_usage=[token]), [])
            return await maintenance._refresh_rollups_beside(conn, path, work)
        finally:
            await conn.close()

    assert anyio.run(run) == 2  # the day's rows: all, and its one (unknown) model
    assert _day_total(path) == ([(13,)] if other_writer else [(3,)], [])
    assert fallbacks == ([1] if other_writer else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite3"]


def test_a_build_that_fails_beside_the_rollups_raises_its_own_error(tmp_path: Path) -> None:
    """A store error of the index build (a full disk, say) reaches the caller
    as itself, for its one-line message, not wrapped in an exception group;
    the rollups stay dirty."""
    path = tmp_path / "store.sqlite3"

    async def work() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    async def run() -> None:
        conn = await open_store(path)
        try:
            token = ("t1", "u1", DAY * 86_400_000 + 1, 1, 2, 3, 0, 0)
            await write_rows(conn, Rows(token_usage=[token]), [])
            with pytest.raises(sqlite3.OperationalError, match="disk is full"):
                await maintenance._refresh_rollups_beside(conn, path, work)
        finally:
            await conn.close()

    anyio.run(run)
    assert _day_total(path) == ([], [(DAY,)])
