"""Opening the store: one place for pragmas, migrations and clear errors.

A store is looked at before anything touches it: a file that is not ours
(someone else's SQLite file, a newer schema) is refused before any write or
any pragma that changes the file (journal mode, migrations). A new store is
created private (0600, in a 0700 dir) and migrated under the write lock, so
two processes starting together on a missing store both succeed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roder_analyticsd.store import deferred_indexes
from roder_analyticsd.store.schema import SCHEMA_VERSION, StoreError, migrate

if TYPE_CHECKING:  # imported where used: a `stats` run reads without them (store/blocking.py)
    import aiosqlite

BUSY_TIMEOUT_MS = 5000
CACHE_KIB = 16 * 1024  # page cache: index updates mostly in memory; with two workers, < 150 MB


class StorePathError(StoreError):
    """The store path itself is unusable (a directory, ...): bad input."""


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


async def _connect(database: str, *, uri: bool = False) -> aiosqlite.Connection:
    import aiosqlite

    pending = aiosqlite.connect(database, uri=uri, isolation_level=None)
    try:
        return await pending
    except sqlite3.Error:
        # aiosqlite stops its worker thread without waiting for it; wait here,
        # while the event loop is still open for the thread's last callback
        thread = getattr(pending, "_thread", None)
        if thread is not None and thread.is_alive():
            import anyio.to_thread

            await anyio.to_thread.run_sync(thread.join, 5)
        raise


def _check_path(path: Path) -> None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return  # missing: created (or that fails with its own message)
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise StorePathError(f"store {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise StorePathError(f"store {path} is not a regular file")


async def check_ours(conn: aiosqlite.Connection, path: Path, *, for_writing: bool) -> int:
    """The store's schema version, after making sure (by reading only) the
    file is a roder-analyticsd store this version can use; StoreError if not.

    An empty file (version 0, no tables) is a new store."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
        tables = {str(r[0]) for r in await cur.fetchall()}
    if (version or tables) and not {"meta", "files"} <= tables:
        raise StoreError(f"store {path} is an SQLite file of another application: left untouched")
    if not version and not for_writing:
        raise StoreError(f"store {path} is empty: run `roder-analyticsd --once` first")
    if for_writing and version > SCHEMA_VERSION:
        raise StoreError(
            f"store schema version {version} is newer than this roder-analyticsd "
            f"({SCHEMA_VERSION}): left untouched"
        )
    return version


def _private_dir(path: Path) -> None:
    if not path.parent.is_dir():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store at {path}: {exc.strerror or exc}") from None


async def _create(path: Path) -> None:
    """A missing store is built beside its place and linked in complete:
    nobody ever opens a half-made one, and of two processes creating it
    together one links its copy and the other uses that. It is created 0600
    in a 0700 dir whatever the umask (SQLite gives -wal and -shm the store's
    own mode); an existing store keeps the permissions its user gave it."""
    _private_dir(path)
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        conn = await _connect(str(tmp))
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            await migrate(conn)
            await ensure_installation_id(conn)
        finally:
            await conn.close()  # the last connection: the WAL is folded in and removed
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first: its store is as good
        except OSError:
            # no hard links on this filesystem: an empty store, created only
            # if missing (O_EXCL), is migrated in place under the write lock
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise StoreError(f"cannot create store at {path}: {exc.strerror or exc}") from None
    except sqlite3.Error as exc:
        raise StoreError(describe_sqlite_error(exc, path)) from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)


Connect = Callable[..., Awaitable[Any]]  # _connect, or store/blocking.py's connect


async def open_store(
    path: Path, *, readonly: bool = False, connect: Connect | None = None
) -> aiosqlite.Connection:
    """Open (creating and migrating unless readonly) the SQLite store.
    `connect` (readonly only): how to connect, aiosqlite's way by default."""
    _check_path(path)
    if readonly:
        return await _open_readonly(path, connect or _connect)
    if not path.exists():
        await _create(path)
    try:
        conn = await _connect(str(path))
    except sqlite3.Error as exc:
        raise StoreError(_describe_open_error(exc, path)) from None
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await check_ours(conn, path, for_writing=True)  # before anything changes the file
        await _use_wal(conn)
        # WAL + NORMAL: a crash of the process never loses a commit; rows and
        # their checkpoint are always in the same transaction either way.
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        await migrate(conn)
        await deferred_indexes.build(conn)  # left pending by a backfill that was killed
        await ensure_installation_id(conn)
    except sqlite3.Error as exc:
        await conn.close()
        raise StoreError(_describe_open_error(exc, path)) from None
    except BaseException:
        await conn.close()
        raise
    return conn


async def open_checkpointer(path: Path) -> aiosqlite.Connection:
    """A second connection to an open store (already ours and migrated)
    that only runs WAL checkpoints, beside the writer's connection."""
    conn = await _connect(str(path))
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _use_wal(conn: aiosqlite.Connection) -> None:
    """Switch to WAL (a no-op once it is). Switching needs the file to
    itself, and SQLite does not wait for that: a store still empty, opened by
    two processes at once, is retried within the busy timeout."""
    import anyio

    deadline = anyio.current_time() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or anyio.current_time() > deadline:
                raise
        await anyio.sleep(0.05)


def _describe_open_error(exc: sqlite3.Error, path: Path) -> str:
    # SQLite says "unable to open" when it cannot create the -wal/-shm files
    if "unable to open" in str(exc) and not store_is_writable(path):
        return f"store {path} is read-only (only stats, export and status can read it)"
    return describe_sqlite_error(exc, path)


async def _open_readonly(path: Path, connect: Connect) -> aiosqlite.Connection:
    """Read without writing anything, even on a read-only file or filesystem.

    A WAL store needs its -shm file; where it cannot be created (read-only
    dir or filesystem) and no -wal is left (the last writer closed cleanly,
    so the store file holds everything), it is opened `immutable`."""
    if not path.exists():
        raise StoreError(f"no store at {path}: run `roder-analyticsd --once` first")
    uri = path.absolute().as_uri()
    try:
        return await _probe(connect, f"{uri}?mode=ro", path)
    except sqlite3.OperationalError as exc:
        wal = path.with_name(path.name + "-wal")
        wal_pending = wal.exists() and wal.stat().st_size > 0
        if wal_pending or not _cannot_open(exc):
            raise StoreError(describe_sqlite_error(exc, path)) from None
    try:
        return await _probe(connect, f"{uri}?mode=ro&immutable=1", path)
    except sqlite3.Error as exc:
        raise StoreError(describe_sqlite_error(exc, path)) from None


def _cannot_open(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "unable to open" in text or "readonly" in text or "read-only" in text


async def _probe(connect: Connect, uri: str, path: Path) -> aiosqlite.Connection:
    """A read-only connection that has read the schema (a bad file fails here)."""
    conn = await connect(uri, uri=True)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await check_ours(conn, path, for_writing=False)
    except sqlite3.OperationalError:
        await conn.close()
        raise
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
    """The store (or, if missing, its dir) can be written, and so can its
    dir, where SQLite keeps the -wal and -shm files."""
    if not os.access(path.parent, os.W_OK):
        return False
    return not path.exists() or os.access(path, os.W_OK)
