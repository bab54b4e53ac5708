"""Opening the store: one place for pragmas, migrations and clear errors."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import aiosqlite

from roder_analyticsd.store.schema import StoreError, migrate

BUSY_TIMEOUT_MS = 5000
CACHE_KIB = 24 * 1024  # page cache: index updates stay in memory; with two workers, < 150 MB


def describe_sqlite_error(exc: sqlite3.Error, path: Path) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"store {path} is locked by another process ({text})"
    if "readonly" in text or "read-only" in text:
        return f"store {path} is read-only ({text})"
    if "disk is full" in text or "database or disk is full" in text:
        return f"disk full while writing store {path}"
    if "not a database" in text or "malformed" in text:
        return f"store {path} is not a valid roder-analyticsd database ({text})"
    return f"store {path}: {text}"


async def open_store(path: Path, *, readonly: bool = False) -> aiosqlite.Connection:
    """Open (creating and migrating unless readonly) the SQLite store."""
    try:
        if readonly:
            if not path.exists():
                raise StoreError(f"no store at {path}: run `roder-analyticsd --once` first")
            conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(path, isolation_level=None)
    except OSError as exc:
        raise StoreError(f"cannot create store at {path}: {exc.strerror or exc}") from None
    except sqlite3.Error as exc:
        raise StoreError(describe_sqlite_error(exc, path)) from None
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not readonly:
            await conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a crash of the process never loses a commit; rows and
            # their checkpoint are always in the same transaction either way.
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            await migrate(conn)
            await ensure_installation_id(conn)
    except sqlite3.Error as exc:
        await conn.close()
        raise StoreError(describe_sqlite_error(exc, path)) from None
    except BaseException:
        await conn.close()
        raise
    return conn


async def ensure_installation_id(conn: aiosqlite.Connection) -> str:
    """The analytics.v2 installationId: generated once, kept in the store."""
    async with conn.execute("SELECT value FROM meta WHERE key = 'installation_id'") as cur:
        row = await cur.fetchone()
    if row:
        return str(row[0])
    new_id = uuid.uuid4().hex
    await conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('installation_id', ?)", (new_id,)
    )
    async with conn.execute("SELECT value FROM meta WHERE key = 'installation_id'") as cur:
        row = await cur.fetchone()
    return str(row[0]) if row else new_id


def store_is_writable(path: Path) -> bool:
    return os.access(path.parent if not path.exists() else path, os.W_OK)
