"""Read-only access to the store for the dashboard.

Connections are opened with SQLite's `mode=ro` and autocommit, so a request
holds a read snapshot only while its statement runs: it cannot block the
daemon's writes (WAL readers never do) and leaves no transaction open that
would keep a checkpoint from finishing.

A store that does not exist yet answers as an empty one (an in-memory
database with the current schema): every endpoint keeps its shape and the
page explains how to start the daemon. Once the file appears, it is used.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import anyio

from roder_analyticsd.store.connection import BUSY_TIMEOUT_MS, describe_sqlite_error
from roder_analyticsd.store.schema import StoreError, migrate

POOL_SIZE = 2  # one per core here; a third request waits for a free one


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ReadOnlyStore:
    def __init__(self, path: Path, *, pool_size: int = POOL_SIZE) -> None:
        self.path = path
        self._free: list[tuple[tuple[int, int], aiosqlite.Connection]] = []
        self._slots = anyio.Semaphore(pool_size)
        self._empty: aiosqlite.Connection | None = None
        self._empty_lock = anyio.Lock()
        self._watch: tuple[tuple[int, int], aiosqlite.Connection] | None = None
        self._watch_lock = anyio.Lock()

    def exists(self) -> bool:
        return self.path.exists()

    async def _open(self) -> aiosqlite.Connection:
        try:
            conn = await aiosqlite.connect(
                f"{self.path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreError(describe_sqlite_error(exc, self.path)) from None
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    async def _empty_store(self) -> aiosqlite.Connection:
        async with self._empty_lock:
            if self._empty is None:
                conn = await aiosqlite.connect(":memory:", isolation_level=None)
                await migrate(conn)
                self._empty = conn
            return self._empty

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """A read-only connection to the store (or to an empty one)."""
        async with self._slots:
            identity = _identity(self.path)
            if identity is None:
                yield await self._empty_store()
                return
            conn = None
            while self._free:
                known, candidate = self._free.pop()
                if known == identity:
                    conn = candidate
                    break
                await candidate.close()  # the file was replaced: reopen
            if conn is None:
                conn = await self._open()
            try:
                yield conn
            except BaseException:
                await conn.close()
                raise
            self._free.append((identity, conn))

    async def marker(self) -> str:
        """Changes whenever anything commits to the store (or it appears).

        `PRAGMA data_version` on a connection kept for this: SQLite bumps it
        when another connection has committed since it last looked.
        """
        identity = _identity(self.path)
        if identity is None:
            return "none"
        async with self._watch_lock:
            if self._watch is None or self._watch[0] != identity:
                if self._watch is not None:
                    await self._watch[1].close()
                self._watch = (identity, await self._open())
            async with self._watch[1].execute("PRAGMA data_version") as cur:
                row = await cur.fetchone()
        return f"{identity[0]}:{identity[1]}:{row[0] if row else 0}"

    async def close(self) -> None:
        for _, conn in self._free:
            await conn.close()
        self._free.clear()
        if self._watch is not None:
            await self._watch[1].close()
            self._watch = None
        if self._empty is not None:
            await self._empty.close()
            self._empty = None
