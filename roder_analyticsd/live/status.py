"""`roder-analyticsd status`: is a daemon running, and how far behind is it.

Lag is measured against the store's checkpoints the way the reader would
see it: a file whose identity and first bytes match its checkpoint lags by
the complete lines past the checkpoint's offset; any other file (new, or
truncated/replaced) by all of its complete lines. An unfinished last line
is not lag: it cannot be ingested until its newline arrives.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import aiosqlite

from roder_analyticsd.config import Settings
from roder_analyticsd.live.ingest import load_checkpoints
from roder_analyticsd.live.lock import holder
from roder_analyticsd.pipeline.batch import Checkpoint
from roder_analyticsd.sources.files import FINGERPRINT_BYTES, fingerprint, open_regular, relative
from roder_analyticsd.sources.roder import discover
from roder_analyticsd.store.connection import open_store

READ_BLOCK = 1 << 20


def file_lag(path: Path, checkpoints: dict[str, Checkpoint]) -> tuple[int, int] | None:
    """(bytes, lines) of complete lines not yet ingested; None if unreadable."""
    try:
        with open_regular(path) as fh:
            st = os.fstat(fh.fileno())
            known = checkpoints.get(f"{st.st_dev}:{st.st_ino}")
            start = 0
            if known is not None and known.offset <= st.st_size:
                prefix = fh.read(known.fp_len) if known.fp_len <= FINGERPRINT_BYTES else b""
                if len(prefix) == known.fp_len and fingerprint(prefix) == known.fp_hash:
                    start = known.offset
            fh.seek(start)
            lines, position, last_end = 0, start, start
            while block := fh.read(READ_BLOCK):
                count = block.count(b"\n")
                if count:
                    lines += count
                    last_end = position + block.rindex(b"\n") + 1
                position += len(block)
            return last_end - start, lines
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0  # gone between the scan and the read
    except OSError:
        return None


def _store_bytes(store: Path) -> int | None:
    """The store's size on disk with its WAL; None when there is no store."""
    total = None
    for path in (store, store.with_name(store.name + "-wal")):
        if path.exists():
            total = (total or 0) + path.stat().st_size
    return total


async def _meta(conn: aiosqlite.Connection, key: str) -> str | None:
    async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
        row = await cur.fetchone()
    return str(row[0]) if row else None


async def gather_status(settings: Settings) -> dict[str, Any]:
    """The `status --json` object."""
    running, pid = holder(settings.store)
    out: dict[str, Any] = {
        "running": running,
        "pid": pid,
        "store": str(settings.store),
        "dataDir": str(settings.data_dir),
        "storeExists": settings.store.exists(),
        "storeBytes": _store_bytes(settings.store),
        "schemaVersion": None,
        "filesTracked": 0,
        "lagBytes": 0,
        "lagLines": 0,
        "laggingFiles": [],
        "unreadableFiles": [],
        "lastRollupMs": None,
        "lastRollup": None,
    }
    checkpoints: dict[str, Checkpoint] = {}
    if out["storeExists"]:
        conn = await open_store(settings.store, readonly=True)
        try:
            async with conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            out["schemaVersion"] = int(row[0]) if row else None
            checkpoints = await load_checkpoints(conn)
            last = await _meta(conn, "last_rollup_ms")
        finally:
            await conn.close()
        out["filesTracked"] = len(checkpoints)
        if last is not None and last.isdigit():
            out["lastRollupMs"] = int(last)
            out["lastRollup"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(last) // 1000))
    events, _ = discover(settings.data_dir)
    for path in events:
        lag = file_lag(path, checkpoints)
        rel = relative(path, settings.data_dir)
        if lag is None:
            out["unreadableFiles"].append(rel)
        elif lag[1]:
            out["lagBytes"] += lag[0]
            out["lagLines"] += lag[1]
            out["laggingFiles"].append({"path": rel, "lagBytes": lag[0], "lagLines": lag[1]})
    return out
