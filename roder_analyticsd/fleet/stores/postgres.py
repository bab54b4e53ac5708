"""The fleet store on PostgreSQL: many stateless receivers, one database.

Layout (versioned migrations in `MIGRATIONS`, the version in `fleet_schema`):

- `collected_events`: the received events, declaratively partitioned by
  UTC day of occurredAt (`collected_events_pYYYYMMDD`), so retention drops
  whole partitions and a day's queries read only that day. Columns as in
  the SQLite store (`properties_json` the redacted properties, keys sorted).
- `collected_event_ids`: the dedupe ledger, one row per eventId ever
  stored (with its day), primary key eventId, not partitioned.

Why a ledger: a unique key on a partitioned table must contain the
partition key, so `collected_events` alone could only be unique on
(day, eventId) and an eventId resent with another occurredAt would count
twice, where SQLite counts it once. The ledger makes eventId itself unique
(exactly SQLite's rule) at the cost of a second, narrow insert. Events are
claimed in the ledger and stored in one statement (one transaction): a
batch that two receivers get at once is claimed by one of them; the other
waits on the first's row locks, then finds every id taken. Ids are claimed
in sorted order, so two overlapping batches never deadlock on each other.

Retention (`prune_before`) drops the day partitions before a day, deletes
those days' ledger rows and records the day in `fleet_meta`; an event
older than that day arriving later is counted as a duplicate (it was
stored and pruned, or would be pruned at once) rather than stored.

Errors reach the receiver as StoreUnavailable, and the CLI as StoreError,
with messages built here: never the password (`describe`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import msgspec

from roder_analyticsd.fleet import vocabulary
from roder_analyticsd.fleet.model import AnalyticsEvent, occurred_at_ms
from roder_analyticsd.fleet.redact import redact_event
from roder_analyticsd.fleet.stores import StoreUnavailable
from roder_analyticsd.fleet.stores.sqlite import now_ms

# pg_advisory_xact_lock keys: migrations, partition creation, retention
_LOCK_MIGRATE = 0x524F_4445_5201
_LOCK_PARTITION = 0x524F_4445_5202
_LOCK_PRUNE = 0x524F_4445_5203

_COLUMNS = (
    "event_id", "day", "received_at_ms", "occurred_at_ms", "event_name", "installation_id",
    "instance_id", "deployment_mode", "session_id", "commit_hash", "app_version", "platform",
    "module", "owner_module", "execution_kind", "phase", "loop_stage", "outcome",
    "error_category", "provider", "model", "properties_json",
)  # fmt: skip
_TYPES = (
    "text", "date", "int8", "int8", "text", "text", "text", "text", "text", "text", "text",
    "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text",
)  # fmt: skip
_PROPERTY_COLUMNS = vocabulary.CLASSIFICATION_KEYS

MIGRATIONS: list[str] = [
    # 1: events partitioned by day, the eventId ledger, store-wide facts
    """
    CREATE TABLE collected_event_ids (
        event_id text PRIMARY KEY,
        day date NOT NULL
    );
    CREATE TABLE collected_events (
        event_id text NOT NULL,
        day date NOT NULL,                  -- UTC day of occurred_at_ms
        received_at_ms bigint NOT NULL,
        occurred_at_ms bigint NOT NULL,
        event_name text NOT NULL,
        installation_id text NOT NULL,
        instance_id text NOT NULL,
        deployment_mode text NOT NULL,
        session_id text,
        commit_hash text NOT NULL,
        app_version text NOT NULL,
        platform text NOT NULL,
        module text,
        owner_module text,
        execution_kind text,
        phase text,
        loop_stage text,
        outcome text,
        error_category text,
        provider text,
        model text,
        properties_json text NOT NULL
    ) PARTITION BY RANGE (day);
    CREATE TABLE fleet_meta (
        key text PRIMARY KEY,
        value text NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT = f"""
WITH incoming AS (
    SELECT * FROM unnest({", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TYPES))})
        AS t({", ".join(_COLUMNS)})
), claimed AS (
    INSERT INTO collected_event_ids (event_id, day)
    SELECT event_id, day FROM incoming ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
INSERT INTO collected_events ({", ".join(_COLUMNS)})
SELECT {", ".join(f"i.{c}" for c in _COLUMNS)} FROM incoming i JOIN claimed USING (event_id)
RETURNING event_id
"""

_EPOCH_DAY = date(1970, 1, 1)
_DAY_MS = 86_400_000


class StoreError(Exception):
    """The store cannot be used (one line for the CLI, no secret in it)."""


# --- connection targets and safe messages -----------------------------------


def safe_url(url: str) -> str:
    """postgresql://user@host:port/db: the URL without password or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "postgresql://(unparseable URL)"
    user = f"{unquote(parts.username)}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}:{port}{parts.path}"


def _secrets(url: str) -> list[str]:
    found = []
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in (password, unquote(password) if password else None, os.environ.get("PGPASSWORD")):
        if secret:
            found.append(secret)
    return found


def scrub(text: str, url: str) -> str:
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def describe(exc: BaseException, url: str) -> str:
    """One line about a failure to reach or use the database: the server, the
    kind of failure, never a password (PostgreSQL does not echo it; the
    URL's and PGPASSWORD are masked all the same)."""
    where = safe_url(url)
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):  # noqa: E501
        reason = "authentication failed"
        detail = str(exc)
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        reason, detail = "no such database", str(exc)
    elif isinstance(exc, asyncpg.CannotConnectNowError):
        reason, detail = "not accepting connections now", str(exc)
    elif isinstance(exc, OSError | TimeoutError):
        reason = "unreachable"
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    elif isinstance(exc, asyncpg.PostgresError):
        reason, detail = type(exc).__name__, str(exc)
    else:
        reason, detail = type(exc).__name__, str(exc)
    line = f"PostgreSQL at {where}: {reason}" + (f" ({detail})" if detail else "")
    return " ".join(scrub(line, url).split())


# exceptions that mean "the database cannot take this now"
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=10, **kwargs)
    except DATABASE_ERRORS as exc:
        raise StoreError(describe(exc, url)) from None
    except ValueError as exc:  # a malformed URL
        raise StoreError(f"bad PostgreSQL URL {safe_url(url)}: {scrub(str(exc), url)}") from None


# --- schema -------------------------------------------------------------------


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION (once, whoever else migrates at the
    same time); StoreError, touching nothing, when it is newer."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_MIGRATE)
        await conn.execute("CREATE TABLE IF NOT EXISTS fleet_schema (version integer NOT NULL)")
        version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM fleet_schema")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the fleet store's schema is version {version}, newer than this"
                f" roder-analyticsd knows ({SCHEMA_VERSION}): upgrade roder-analyticsd"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[number - 1])
            await conn.execute("INSERT INTO fleet_schema (version) VALUES ($1)", number)
    return SCHEMA_VERSION


def partition_name(day: date) -> str:
    return f"collected_events_p{day:%Y%m%d}"


async def existing_partitions(conn: asyncpg.Connection) -> set[date]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'collected_events'::regclass"
    )
    return {datetime.strptime(r["relname"][-8:], "%Y%m%d").date() for r in rows}


async def ensure_partitions(conn: asyncpg.Connection, days: Iterable[date]) -> None:
    """Create the day partitions that do not exist yet (one creator at a time)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_PARTITION)
        have = await existing_partitions(conn)
        for day in sorted(set(days) - have):
            await conn.execute(
                f"CREATE TABLE {partition_name(day)} PARTITION OF collected_events"
                f" FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(1)).isoformat()}')"
            )


async def retained_from(conn: asyncpg.Connection) -> date | None:
    value = await conn.fetchval("SELECT value FROM fleet_meta WHERE key = 'retained_from'")
    return date.fromisoformat(value) if value else None


async def prune_before(conn: asyncpg.Connection, day: date) -> list[date]:
    """Retention: drop every day partition before `day` (whole tables, no
    row deletes in collected_events); returns the days dropped."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_PRUNE)
        dropped = sorted(d for d in await existing_partitions(conn) if d < day)
        for old in dropped:
            await conn.execute(f"DROP TABLE {partition_name(old)}")
        await conn.execute("DELETE FROM collected_event_ids WHERE day < $1", day)
        await conn.execute(
            "INSERT INTO fleet_meta (key, value) VALUES ('retained_from', $1)"
            " ON CONFLICT (key) DO UPDATE SET value = greatest(fleet_meta.value, excluded.value)",
            day.isoformat(),
        )
    return dropped


# --- writing ------------------------------------------------------------------


def _day(ms: int) -> date:
    return _EPOCH_DAY + timedelta(days=ms // _DAY_MS)


def _columns(events: Sequence[AnalyticsEvent], received: int) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in _COLUMNS]
    for ev in events:
        at = occurred_at_ms(ev)
        props = ev.properties
        row = (
            ev.event_id, _day(at), received, at, ev.event_name, ev.installation_id,
            ev.instance_id, ev.deployment_mode, ev.session_id, ev.commit_hash, ev.app_version,
            ev.platform,
            *(props.get(k) if isinstance(props.get(k), str) else None for k in _PROPERTY_COLUMNS),
            msgspec.json.encode(props, order="sorted").decode(),
        )  # fmt: skip
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


class PostgresFleetStore:
    """The receiver's PostgreSQL store: a connection pool that reconnects by
    itself (a broken connection is dropped, the next acquire opens anew)."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self._url = url
        self._partitions: set[date] = set()
        self._retained_from: date | None = None

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 4) -> PostgresFleetStore:
        """Migrated, pooled; StoreError when the database cannot be used."""
        conn = await connect(url)
        try:
            await migrate(conn)
        except DATABASE_ERRORS as exc:
            raise StoreError(describe(exc, url)) from None
        finally:
            await conn.close()
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, timeout=10, command_timeout=60
            )
        except DATABASE_ERRORS as exc:
            raise StoreError(describe(exc, url)) from None
        return cls(pool, url)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(describe(exc, self._url))

    async def insert(self, events: Sequence[AnalyticsEvent]) -> tuple[list[str], list[str]]:
        batch = [redact_event(ev) for ev in events]
        first: dict[str, AnalyticsEvent] = {}
        for ev in batch:
            first.setdefault(ev.event_id, ev)
        if not first:
            return [], []
        cols = _columns(list(first.values()), now_ms())
        days = set(cols[1])
        for attempt in range(3):
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    if self._retained_from is None:
                        self._retained_from = await retained_from(conn) or date.min
                    if self._retained_from > date.min and min(days) < self._retained_from:
                        keep = [i for i, d in enumerate(cols[1]) if d >= self._retained_from]
                        cols = [[c[i] for i in keep] for c in cols]
                        days = set(cols[1])
                    if days - self._partitions:
                        await ensure_partitions(conn, days - self._partitions)
                        self._partitions |= days
                    stored = {r[0] for r in await conn.fetch(_INSERT, *cols)} if days else set()
                break
            except asyncpg.DeadlockDetectedError as exc:  # never expected: ids go in sorted
                if attempt == 2:
                    raise self._unavailable(exc) from None
            except asyncpg.UndefinedTableError as exc:  # a partition pruned meanwhile
                self._partitions.clear()
                self._retained_from = None
                if attempt == 2:
                    raise self._unavailable(exc) from None
            except DATABASE_ERRORS as exc:
                self._partitions.clear()
                raise self._unavailable(exc) from None
        accepted: list[str] = []
        duplicates: list[str] = []
        for ev in batch:
            new = ev.event_id in stored and first.get(ev.event_id) is ev
            (accepted if new else duplicates).append(ev.event_id)
        return accepted, duplicates

    async def apply_retention(self, days: int, *, today: date | None = None) -> list[date]:
        """`retention_days`: drop the day partitions older than `days` days."""
        cutoff = (today or datetime.now(UTC).date()) - timedelta(days)
        try:
            async with self._pool.acquire(timeout=10) as conn:
                dropped = await prune_before(conn, cutoff)
        except DATABASE_ERRORS as exc:
            raise self._unavailable(exc) from None
        self._partitions.clear()
        self._retained_from = None
        return dropped

    async def probe(self) -> None:
        try:
            async with self._pool.acquire(timeout=5) as conn:
                await conn.fetchval("SELECT 1", timeout=5)
        except DATABASE_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def close(self) -> None:
        await self._pool.close()


# --- fleet metrics ------------------------------------------------------------

_FLEET_KEYS: dict[str, tuple[str, ...]] = {
    "dau": ("day", "installations"),
    "instances": ("day", "instances"),
    "modules": ("module", "events"),
    "errors": ("module", "loopStage", "outcome", "events", "errorEvents"),
    "sessions": ("day", "sessions"),
}
_DISTINCT = {"dau": "installation_id", "instances": "instance_id", "sessions": "session_id"}
USER_SESSIONS_SQL = (
    "module = 'session' AND owner_module = 'session' AND execution_kind = 'user_session'"
)
DAY_METRICS = frozenset(("dau", "instances", "sessions"))
# SQLite orders text bytewise and NULL first: the same here
_ORDER = 'COLLATE "C" NULLS FIRST'


def build_fleet_query(
    metric: str,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    tz: tzinfo = UTC,
    user_sessions: bool = False,
) -> tuple[str, list[Any]]:
    """SQL and parameters of one fleet metric, as the SQLite backend counts it
    (since inclusive, until exclusive, days in `tz`)."""
    params: list[Any] = []
    where: list[str] = []

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    if since_ms is not None:
        where.append(f"occurred_at_ms >= {param(since_ms)}")
        # the partition key too: only the partitions that can match are read
        where.append(f"day >= {param(_day(since_ms) - timedelta(1))}")
    if until_ms is not None:
        where.append(f"occurred_at_ms < {param(until_ms)}")
        where.append(f"day <= {param(_day(until_ms) + timedelta(1))}")
    if metric == "sessions":
        where.append("session_id IS NOT NULL")
        if user_sessions:
            where.append(USER_SESSIONS_SQL)
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    if metric in DAY_METRICS:
        zone = getattr(tz, "key", None)
        if zone is None or zone.upper() in ("UTC", "ETC/UTC"):
            day = "day"
        else:
            day = f"(to_timestamp(occurred_at_ms / 1000.0) AT TIME ZONE {param(zone)})::date"
        sql = (
            f"SELECT to_char({day}, 'YYYY-MM-DD'), count(DISTINCT {_DISTINCT[metric]})"
            f" FROM collected_events{cond} GROUP BY 1 ORDER BY 1"
        )
    elif metric == "modules":
        sql = (
            f"SELECT module, count(*) AS events FROM collected_events{cond}"
            f" GROUP BY module ORDER BY events DESC, module {_ORDER}"
        )
    elif metric == "errors":
        sql = (
            "SELECT module, loop_stage, outcome, count(*) AS events,"
            " count(*) FILTER (WHERE event_name = 'error_occurred') AS error_events"
            f" FROM collected_events{cond} GROUP BY module, loop_stage, outcome"
            f" ORDER BY error_events DESC, events DESC, module {_ORDER},"
            f" loop_stage {_ORDER}, outcome {_ORDER}"
        )
    else:
        raise ValueError(f"unknown fleet metric {metric!r}")
    return sql, params


async def fleet(
    conn: asyncpg.Connection,
    metric: str,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    tz: tzinfo = UTC,
    user_sessions: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """One `stats fleet` metric, the same rows and keys as the SQLite store's."""
    sql, params = build_fleet_query(
        metric, since_ms=since_ms, until_ms=until_ms, tz=tz, user_sessions=user_sessions
    )
    keys = _FLEET_KEYS[metric]
    rows = [dict(zip(keys, row, strict=True)) for row in await conn.fetch(sql, *params)]
    if limit is not None and len(rows) > limit:
        rows = rows[-limit:] if metric in DAY_METRICS else rows[:limit]
    return rows


async def query(url: str, metric: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Open, check the schema, run one metric, close; StoreError on failure."""
    conn = await connect(url)
    try:
        version = await conn.fetchval(
            "SELECT CASE WHEN to_regclass('fleet_schema') IS NULL THEN 0"
            " ELSE (SELECT coalesce(max(version), 0) FROM fleet_schema) END"
        )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the fleet store's schema is version {version}, newer than this"
                f" roder-analyticsd knows ({SCHEMA_VERSION}): upgrade roder-analyticsd"
            )
        if version < SCHEMA_VERSION:
            return []  # nothing received yet: no tables
        return await fleet(conn, metric, **kwargs)
    except DATABASE_ERRORS as exc:
        raise StoreError(describe(exc, url)) from None
    finally:
        await conn.close()
