"""Indexes a first backfill builds once, at its end, instead of row by row.

Their keys (a tool and a duration, an instant) put each new row on a
random page of the index: once a store outgrows the page cache, every row
costs a page read and a page written back. Into empty tables a backfill
drops them, and building each after from the finished table is one sort.
The message-id index too (migration 10): the one rule that reads it during
a load, of Claude Code's sidechain calls, is applied at the end instead. A
load holds those calls back, and `build` first puts them through the rule
(store/writer.py apply_pending_sidechains).

The dropped indexes' definitions are kept in `meta` in the transaction
that drops them, and removed in the one that builds the last of them; a store
opened for writing with that key still there (the process was killed
mid-load) builds them then. What is built comes from our own schema, never
from the stored text, so a damaged or foreign value can neither run SQL
nor stop the store from opening: every deferred index that is missing is
built. Queries never name an index, so one that is missing makes a reader
slower for a while, never wrong.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from roder_analyticsd.store.schema import MIGRATIONS
from roder_analyticsd.store.transaction import transaction

if TYPE_CHECKING:
    import aiosqlite

MESSAGE_INDEX = "token_usage_message"  # the Claude Code sidechain rule's (store/writer.py)
DEFERRED = (
    "tool_calls_stats",
    "tool_calls_at",
    "token_usage_at",
    "turns_started",
    "tool_calls_prompt",
    MESSAGE_INDEX,
)
META_KEY = "deferred_indexes"  # a JSON list of the dropped CREATE statements (a record only)
_EMPTY = """
SELECT NOT EXISTS (SELECT 1 FROM tool_calls) AND NOT EXISTS (SELECT 1 FROM token_usage)
   AND NOT EXISTS (SELECT 1 FROM turns)
"""


def definition(name: str) -> str:
    """The CREATE INDEX statement of a deferred index, as the schema's
    migrations last wrote it (the text SQLite keeps in sqlite_master)."""
    found = re.findall(rf"CREATE INDEX {name} ON [^;]*", "\n".join(MIGRATIONS))
    return found[-1].rstrip()


async def _one(conn: aiosqlite.Connection, sql: str, params: tuple = ()) -> tuple | None:
    async with conn.execute(sql, params) as cur:
        return await cur.fetchone()


async def drop_if_empty(conn: aiosqlite.Connection) -> bool:
    """Drop the deferred indexes if the tables they index are empty (a
    first backfill); True if it did."""
    async with transaction(conn):
        if not (await _one(conn, _EMPTY))[0] or await _one(
            conn, "SELECT 1 FROM meta WHERE key = ?", (META_KEY,)
        ):
            return False
        marks = ", ".join("?" for _ in DEFERRED)
        async with conn.execute(
            f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name IN ({marks})",
            DEFERRED,
        ) as cur:
            found = dict(await cur.fetchall())
        statements = [found[name] for name in DEFERRED if found.get(name)]
        if not statements:
            return False
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)", (META_KEY, json.dumps(statements))
        )
        for name in DEFERRED:
            await conn.execute(f"DROP INDEX IF EXISTS {name}")  # fixed names
    return True


async def build(conn: aiosqlite.Connection) -> bool:
    """Put the sidechain calls a backfill held back through their rule, and
    build the indexes it dropped, if any are pending (one transaction: a
    store opened for writing runs this every time); True if it did."""
    from roder_analyticsd.store.writer import apply_pending_sidechains  # see release_held_calls

    async with transaction(conn):
        released = await apply_pending_sidechains(conn)
        pending = await _one(conn, "SELECT value FROM meta WHERE key = ?", (META_KEY,))
        if pending is None and await _one(
            conn, "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (MESSAGE_INDEX,)
        ):
            return released
        for name in DEFERRED:
            # IF NOT EXISTS: one never dropped, or built by hand in between, is kept
            await _create(conn, name)
        await conn.execute("DELETE FROM meta WHERE key = ?", (META_KEY,))
    return True


async def release_held_calls(conn: aiosqlite.Connection) -> bool:
    """`build`'s first step on its own, committed: the Claude Code sidechain
    calls a backfill held back put through their rule; True if there were
    any. After it, building the indexes changes no row (store/maintenance.py
    reads the rows meanwhile)."""
    # (writer.py imports aiosqlite, which a `stats` run opens the store without)
    from roder_analyticsd.store.writer import apply_pending_sidechains

    async with transaction(conn):
        return await apply_pending_sidechains(conn)


async def _create(conn: aiosqlite.Connection, name: str) -> None:
    await conn.execute(definition(name).replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))


@asynccontextmanager
async def deferred(conn: aiosqlite.Connection) -> AsyncIterator[bool]:
    """Around a backfill: into empty tables, the deferred indexes are dropped
    before and built once after (also when the body fails; a kill, or a
    store that refuses the build, leaves them to the next open). Yields
    whether they were dropped; the body may `build` them itself."""
    # best effort both ways: a store that refuses the write now (locked by
    # another writer, a full disk) is loaded with its indexes, or gets them
    # back when next opened; the load's own writes report such errors
    try:
        dropped = await drop_if_empty(conn)
    except sqlite3.Error:
        dropped = False
    try:
        yield dropped
    finally:
        if dropped:
            import anyio

            with anyio.CancelScope(shield=True), suppress(sqlite3.Error):
                await build(conn)
