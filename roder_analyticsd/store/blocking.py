"""The store read in this thread, with no event loop: one-shot CLI queries.

The queries are written against aiosqlite's awaitable API, which runs each
statement in a thread of its own and needs an event loop: importing asyncio,
anyio and aiosqlite costs a `stats` run more than its query does. This
module gives that same API over `sqlite3` directly, for a read-only
connection, and `run` drives such a coroutine to its end: it awaits nothing
but these calls, which never suspend, so one `send` finishes it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Coroutine, Generator
from typing import Any


class Cursor:
    """aiosqlite's Cursor over a sqlite3 one."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def description(self) -> Any:
        return self._cursor.description

    async def close(self) -> None:
        self._cursor.close()

    def __aiter__(self) -> Cursor:
        return self

    async def __anext__(self) -> Any:
        row = self._cursor.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row


class _Executed:
    """What `execute` returns: awaited, or used as `async with`, like aiosqlite's."""

    def __init__(self, cursor: Cursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Generator[Any, None, Cursor]:
        return self._value().__await__()

    async def _value(self) -> Cursor:
        return self._cursor

    async def __aenter__(self) -> Cursor:
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        await self._cursor.close()


class Connection:
    """aiosqlite's Connection (the part the queries use) over sqlite3."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = ()) -> _Executed:
        return _Executed(Cursor(self._conn.execute(sql, parameters)))

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    async def create_function(
        self, name: str, num_params: int, func: Any, *, deterministic: bool = False
    ) -> None:
        self._conn.create_function(name, num_params, func, deterministic=deterministic)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()


async def connect(database: str, *, uri: bool = False) -> Connection:
    """store/connection.py's `_connect`, without aiosqlite."""
    return Connection(sqlite3.connect(database, uri=uri, isolation_level=None))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that awaits only this module's calls, to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a blocking store query waited on something else")
