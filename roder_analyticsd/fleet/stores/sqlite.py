"""Storage for analytics.v2: events received on /collect, the forwarder's
queue, and the fleet queries.

Every write function runs in its own transaction (a SAVEPOINT when the
connection is already in one) and redacts before writing, so nothing
unredacted is ever stored whoever the caller is. Calls that share one
connection must be serialized by the caller (one at a time).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import aiosqlite
import anyio
import msgspec

from roder_analyticsd.fleet import vocabulary
from roder_analyticsd.fleet.model import AnalyticsEvent, encode_event, occurred_at_ms, utc_day
from roder_analyticsd.fleet.redact import redact_event
from roder_analyticsd.fleet.stores import StoreUnavailable
from roder_analyticsd.store.schema import COLLECTED_DDL
from roder_analyticsd.store.transaction import transaction

# the receiver's and the forwarder's tables live in the one store
DDL = COLLECTED_DDL

# Columns a fleet `source` (table, view or parenthesized subquery) must have.
SOURCE_COLUMNS = (
    "occurred_at_ms",
    "event_name",
    "installation_id",
    "instance_id",
    "session_id",
    "module",
    "owner_module",
    "execution_kind",
    "loop_stage",
    "outcome",
)
COLLECTED = "collected_events"


def metric_columns(metric: str, *, user_sessions: bool = False) -> tuple[str, ...]:
    """The SOURCE_COLUMNS one metric reads: a source built as a subquery
    need not compute the rest (the local view's attribution joins)."""
    columns = {
        "dau": ("occurred_at_ms", "installation_id"),
        "instances": ("occurred_at_ms", "instance_id"),
        "sessions": ("occurred_at_ms", "session_id"),
        "modules": ("occurred_at_ms", "module"),
        "errors": ("occurred_at_ms", "event_name", "module", "loop_stage", "outcome"),
    }[metric]
    if metric == "sessions" and user_sessions:
        columns += ("module", "owner_module", "execution_kind")
    return columns


DAY_SQL = "strftime('%Y-%m-%d', occurred_at_ms / 1000, 'unixepoch')"  # UTC day
USER_SESSIONS_SQL = (
    "module = 'session' AND owner_module = 'session' AND execution_kind = 'user_session'"
)
FleetMetric = Literal["dau", "instances", "modules", "errors", "sessions"]

_INSERT_COLLECTED = """
INSERT OR IGNORE INTO collected_events (
    event_id, received_at_ms, occurred_at_ms, day, event_name, installation_id,
    instance_id, deployment_mode, session_id, commit_hash, app_version, platform,
    module, owner_module, execution_kind, phase, loop_stage, outcome, error_category,
    provider, model, properties_json
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_PROPERTY_COLUMNS = vocabulary.CLASSIFICATION_KEYS
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHUNK = 500  # well under SQLite's bound-variable limit


class Queued(NamedTuple):
    event_id: str
    body: bytes
    attempts: int


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def ensure_schema(conn: aiosqlite.Connection) -> None:
    await conn.executescript(DDL)


async def open_db(
    path: str | os.PathLike[str], *, busy_timeout_ms: int = 5000
) -> aiosqlite.Connection:
    """An autocommit connection (WAL, busy timeout) with the v2 tables."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await ensure_schema(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _collected_row(ev: AnalyticsEvent, received_at_ms: int) -> tuple[Any, ...]:
    at = occurred_at_ms(ev)
    props = ev.properties
    extracted = [props.get(k) if isinstance(props.get(k), str) else None for k in _PROPERTY_COLUMNS]
    return (
        ev.event_id,
        received_at_ms,
        at,
        utc_day(at),
        ev.event_name,
        ev.installation_id,
        ev.instance_id,
        ev.deployment_mode,
        ev.session_id,
        ev.commit_hash,
        ev.app_version,
        ev.platform,
        *extracted,
        msgspec.json.encode(props, order="sorted").decode(),
    )


async def insert_collected(
    conn: aiosqlite.Connection,
    events: Iterable[AnalyticsEvent],
    *,
    received_at_ms: int | None = None,
) -> tuple[list[str], list[str]]:
    """Store (redacted) events; (new ids, duplicate ids) in batch order.
    A duplicate is an id already stored or seen earlier in the same batch."""
    received = now_ms() if received_at_ms is None else received_at_ms
    batch = [redact_event(ev) for ev in events]
    first: dict[str, AnalyticsEvent] = {}
    for ev in batch:
        first.setdefault(ev.event_id, ev)
    if not first:
        return [], []  # no write lock for an empty batch
    ids = list(first)
    existing: set[str] = set()
    async with transaction(conn):
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT event_id FROM collected_events WHERE event_id IN ({marks})"
            async with conn.execute(sql, chunk) as cur:
                existing.update(row[0] for row in await cur.fetchall())
        rows = [_collected_row(ev, received) for i, ev in first.items() if i not in existing]
        await conn.executemany(_INSERT_COLLECTED, rows)
    accepted: list[str] = []
    duplicates: list[str] = []
    for ev in batch:
        new = ev.event_id not in existing and first.get(ev.event_id) is ev
        (accepted if new else duplicates).append(ev.event_id)
    return accepted, duplicates


# SQLITE_BUSY, SQLITE_LOCKED: another writer holds the store, for now
_CONTENTION = {5, 6}
_PROBE_SQL = (
    "INSERT INTO collected_events (event_id, received_at_ms, occurred_at_ms, day, event_name,"
    " installation_id, instance_id, deployment_mode, commit_hash, app_version, platform,"
    " properties_json) VALUES ('', 0, 0, '', '', '', '', '', '', '', '', '{}')"
)


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    code = getattr(exc, "sqlite_errorcode", None)
    return StoreUnavailable(
        f"store: {exc}", transient=code is not None and code & 0xFF in _CONTENTION
    )


class SqliteFleetStore:
    """The receiver's SQLite store: one connection, one transaction at a time."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = anyio.Lock()

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, busy_timeout_ms: int = 5000
    ) -> SqliteFleetStore:
        return cls(await open_db(path, busy_timeout_ms=busy_timeout_ms))

    async def insert(self, events: Sequence[AnalyticsEvent]) -> tuple[list[str], list[str]]:
        try:
            async with self._lock:
                return await insert_collected(self._conn, events)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from None

    async def probe(self) -> None:
        # A committed write that leaves nothing behind: taking the write lock
        # alone writes no page, and would pass on a full disk.
        try:
            async with self._lock, transaction(self._conn):
                await self._conn.execute(_PROBE_SQL)
                await self._conn.execute("DELETE FROM collected_events WHERE event_id = ''")
        except sqlite3.Error as exc:
            raise _unavailable(exc) from None

    async def close(self) -> None:
        await self._conn.close()


async def enqueue(
    conn: aiosqlite.Connection, events: Iterable[AnalyticsEvent], max_queue: int
) -> int:
    """Queue (redacted) events for forwarding, skipping ids already queued or
    acknowledged. Over `max_queue`, the oldest queued events are dropped
    (recent activity is worth more than a stale backlog); returns how many."""
    at = now_ms()
    rows = [
        {"id": ev.event_id, "body": encode_event(ev), "at": at} for ev in map(redact_event, events)
    ]
    async with transaction(conn):
        await conn.executemany(
            "INSERT OR IGNORE INTO forward_queue (event_id, body, enqueued_at_ms)"
            " SELECT :id, :body, :at"
            " WHERE NOT EXISTS (SELECT 1 FROM forward_acked WHERE event_id = :id)",
            rows,
        )
        excess = await queue_size(conn) - max_queue
        if excess > 0:
            await conn.execute(
                "DELETE FROM forward_queue WHERE rowid IN"
                " (SELECT rowid FROM forward_queue ORDER BY rowid LIMIT ?)",
                (excess,),
            )
    return max(excess, 0)


async def queue_size(conn: aiosqlite.Connection) -> int:
    async with conn.execute("SELECT COUNT(*) FROM forward_queue") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def next_batch(conn: aiosqlite.Connection, n: int) -> list[Queued]:
    """The oldest `n` queued events."""
    async with conn.execute(
        "SELECT event_id, body, attempts FROM forward_queue ORDER BY rowid LIMIT ?", (n,)
    ) as cur:
        return [Queued(row[0], bytes(row[1]), row[2]) for row in await cur.fetchall()]


async def ack(conn: aiosqlite.Connection, ids: Sequence[str]) -> None:
    """The receiver has these: remember them and take them off the queue."""
    params = [(i,) for i in ids]
    async with transaction(conn):
        await conn.executemany("INSERT OR IGNORE INTO forward_acked (event_id) VALUES (?)", params)
        await conn.executemany("DELETE FROM forward_queue WHERE event_id = ?", params)


async def record_attempt(conn: aiosqlite.Connection, ids: Sequence[str]) -> None:
    async with transaction(conn):
        await conn.executemany(
            "UPDATE forward_queue SET attempts = attempts + 1 WHERE event_id = ?",
            [(i,) for i in ids],
        )


def _from(source: str) -> str:
    # `source` is SQL chosen by code (a table, a view or a subquery), never user input.
    if _IDENT.fullmatch(source):
        return source
    if source.startswith("(") and source.endswith(")"):
        return f"{source} AS src"
    raise ValueError(f"fleet source must be a table/view name or a (subquery): {source!r}")


def build_fleet_query(
    metric: FleetMetric,
    *,
    source: str = COLLECTED,
    since_ms: int | None = None,
    until_ms: int | None = None,
    user_sessions: bool = False,
) -> tuple[str, list[int]]:
    """SQL and parameters of one fleet metric over `source` (see
    SOURCE_COLUMNS). since_ms is inclusive, until_ms exclusive; days are UTC."""
    where: list[str] = []
    params: list[int] = []
    if since_ms is not None:
        where.append("occurred_at_ms >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("occurred_at_ms < ?")
        params.append(until_ms)
    if metric == "sessions":
        where.append("session_id IS NOT NULL")
        if user_sessions:
            where.append(USER_SESSIONS_SQL)
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    src = _from(source)
    if metric in ("dau", "instances", "sessions"):
        column = {"dau": "installation_id", "instances": "instance_id", "sessions": "session_id"}
        sql = (
            # Positional GROUP BY: a source may have its own `day` column.
            f"SELECT {DAY_SQL}, COUNT(DISTINCT {column[metric]}) FROM {src}{cond}"
            " GROUP BY 1 ORDER BY 1"
        )
    elif metric == "modules":
        sql = (
            f"SELECT module, COUNT(*) AS events FROM {src}{cond}"
            " GROUP BY module ORDER BY events DESC, module"
        )
    elif metric == "errors":
        sql = (
            "SELECT module, loop_stage, outcome, COUNT(*) AS events,"
            f" SUM(event_name = 'error_occurred') AS error_events FROM {src}{cond}"
            " GROUP BY module, loop_stage, outcome"
            " ORDER BY error_events DESC, events DESC, module, loop_stage, outcome"
        )
    else:
        raise ValueError(f"unknown fleet metric {metric!r}")
    return sql, params


_FLEET_KEYS: dict[str, tuple[str, ...]] = {
    "dau": ("day", "installations"),
    "instances": ("day", "instances"),
    "modules": ("module", "events"),
    "errors": ("module", "loopStage", "outcome", "events", "errorEvents"),
    "sessions": ("day", "sessions"),
}


async def fleet(
    conn: aiosqlite.Connection,
    metric: FleetMetric,
    *,
    source: str = COLLECTED,
    since_ms: int | None = None,
    until_ms: int | None = None,
    user_sessions: bool = False,
) -> list[dict[str, Any]]:
    """One fleet metric as a list of dicts with the `stats fleet` JSON keys."""
    sql, params = build_fleet_query(
        metric, source=source, since_ms=since_ms, until_ms=until_ms, user_sessions=user_sessions
    )
    keys = _FLEET_KEYS[metric]
    async with conn.execute(sql, params) as cur:
        return [dict(zip(keys, row, strict=True)) for row in await cur.fetchall()]


async def fleet_dau(
    conn: aiosqlite.Connection,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    source: str = COLLECTED,
) -> list[dict[str, Any]]:
    """[{day, installations}]: distinct installationId per UTC day."""
    return await fleet(conn, "dau", source=source, since_ms=since_ms, until_ms=until_ms)


async def fleet_instances(
    conn: aiosqlite.Connection,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    source: str = COLLECTED,
) -> list[dict[str, Any]]:
    """[{day, instances}]: distinct instanceId per UTC day."""
    return await fleet(conn, "instances", source=source, since_ms=since_ms, until_ms=until_ms)


async def fleet_modules(
    conn: aiosqlite.Connection,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    source: str = COLLECTED,
) -> list[dict[str, Any]]:
    """[{module, events}]: events by properties.module, most used first."""
    return await fleet(conn, "modules", source=source, since_ms=since_ms, until_ms=until_ms)


async def fleet_errors(
    conn: aiosqlite.Connection,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    source: str = COLLECTED,
) -> list[dict[str, Any]]:
    """[{module, loopStage, outcome, events, errorEvents}]."""
    return await fleet(conn, "errors", source=source, since_ms=since_ms, until_ms=until_ms)


async def fleet_sessions(
    conn: aiosqlite.Connection,
    user_sessions: bool = False,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    source: str = COLLECTED,
) -> list[dict[str, Any]]:
    """[{day, sessions}]: distinct sessionId per UTC day; `user_sessions`
    keeps ordinary user chat only."""
    return await fleet(
        conn,
        "sessions",
        source=source,
        since_ms=since_ms,
        until_ms=until_ms,
        user_sessions=user_sessions,
    )
