"""Local activity in analytics.v2 terms: fleet metrics over the store's
sources, and the events the forwarder sends.

Sources (all in the one store, see store/schema.py migration 3):

- `local`: the view `local_v2_events` over `activity_v2`. It has one
  installation (meta `installation_id`); a local row belongs to no process,
  so its instance_id is the installation id too (`stats fleet instances
  --source local` counts 1 per active day); session_id is the raw thread id
  (distinct counts are what matter; the hash is applied when an event
  leaves the machine).
- `collected`: the table `collected_events` (what `serve` received).
- `all`: both, UNION ALL. An event is counted where it is: a local event
  that was also forwarded to a receiver writing this same store would be
  counted twice.

Fleet days are calendar days in the requested time zone. For a zone other
than UTC every row's instant is shifted by that zone's offset at that instant
(a SQL function), so `sqlite_store.build_fleet_query`'s UTC day of the shifted
instant is the local day, exact across DST changes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

import aiosqlite

from roder_analyticsd import __version__
from roder_analyticsd.fleet.model import AnalyticsEvent
from roder_analyticsd.fleet.redact import hash24, redact_event
from roder_analyticsd.fleet.stores import sqlite as sqlite_store
from roder_analyticsd.pipeline.attribute import event_id_hex
from roder_analyticsd.store.schema import HELD_EVENTS, V2_COLUMNS, V2_JOINS
from roder_analyticsd.timewindow import is_utc

Source = Literal["local", "collected", "all"]
SOURCES: tuple[str, ...] = ("local", "collected", "all")
METRICS: tuple[str, ...] = ("dau", "instances", "modules", "errors", "sessions")
DAY_METRICS = frozenset(("dau", "instances", "sessions"))
LOCAL_VIEW = "local_v2_events"
_TABLES = {"local": LOCAL_VIEW, "collected": sqlite_store.COLLECTED}
_OFFSET_FN = "roder_tz_offset_ms"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def fleet_source(
    source: Source,
    *,
    shifted: bool = False,
    since_ms: int | None = None,
    until_ms: int | None = None,
    columns: Sequence[str] = sqlite_store.SOURCE_COLUMNS,
) -> str:
    """The SQL `source` for `sqlite_store.build_fleet_query`.

    `shifted`: instants are moved by the time-zone offset function and the
    window (on the real instants) is applied here, so the caller passes no
    since/until to build_fleet_query. `columns`: the ones the query reads
    (SQLite computes every column a compound subquery names).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown fleet source {source!r}")
    cols = ", ".join(columns)
    if source == "all":
        inner = (
            f"SELECT {cols} FROM {LOCAL_VIEW} UNION ALL SELECT {cols} FROM {sqlite_store.COLLECTED}"
        )
    elif not shifted:
        return _TABLES[source]
    else:
        inner = f"SELECT {cols} FROM {_TABLES[source]}"
    if not shifted:
        return f"({inner})"
    moved = ", ".join(
        f"occurred_at_ms + {_OFFSET_FN}(occurred_at_ms) AS occurred_at_ms"
        if c == "occurred_at_ms"
        else c
        for c in columns
    )
    where = [
        f"occurred_at_ms {op} {int(bound)}"  # ints chosen by code: safe to inline
        for op, bound in ((">=", since_ms), ("<", until_ms))
        if bound is not None
    ]
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    return f"(SELECT {moved} FROM ({inner}){cond})"


def _offset_ms(tz: tzinfo):
    def offset(ms: int | None) -> int:
        if ms is None:
            return 0
        try:
            moment = (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz)
        except (OverflowError, ValueError):
            return 0
        delta = moment.utcoffset() or timedelta(0)
        return delta // timedelta(milliseconds=1)

    return offset


async def fleet(
    conn: aiosqlite.Connection,
    metric: str,
    *,
    source: Source = "all",
    since_ms: int | None = None,
    until_ms: int | None = None,
    tz: tzinfo = UTC,
    user_sessions: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """One `stats fleet` metric (the cli.md JSON keys). Day series are in
    ascending day order; `limit` keeps their most recent days, and the
    first rows of the other metrics."""
    if metric not in METRICS:
        raise ValueError(f"unknown fleet metric {metric!r}")
    user_sessions = user_sessions and metric == "sessions"
    columns = sqlite_store.metric_columns(metric, user_sessions=user_sessions)
    if is_utc(tz):
        src = fleet_source(source, columns=columns)
        window = {"since_ms": since_ms, "until_ms": until_ms}
    else:
        await conn.create_function(_OFFSET_FN, 1, _offset_ms(tz), deterministic=True)
        src = fleet_source(
            source, shifted=True, since_ms=since_ms, until_ms=until_ms, columns=columns
        )
        window = {}
    rows = await sqlite_store.fleet(
        conn,
        metric,  # type: ignore[arg-type]
        source=src,
        user_sessions=user_sessions,
        **window,
    )
    if limit is not None and len(rows) > limit:
        rows = rows[-limit:] if metric in DAY_METRICS else rows[:limit]
    return rows


# --- local activity as AnalyticsEvents (for the forwarder) -------------------

_PROPERTY_KEYS = (
    "module",
    "ownerModule",
    "executionKind",
    "loopStage",
    "outcome",
    "errorCategory",
    "phase",
    "provider",
    "model",
)


def rfc3339_ms(ms: int) -> str:
    """`2025-03-01T12:00:00.123Z` (UTC, milliseconds)."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def session_id(thread_id: str | None) -> str | None:
    """A thread id never leaves the machine: the first 24 hex of its SHA-256."""
    return hash24(thread_id) if thread_id else None


def to_event(
    row: Sequence[Any], *, installation_id: str, instance_id: str
) -> AnalyticsEvent | None:
    """One `activity_v2` row (`store.schema.V2_COLUMNS` order) as a redacted event;
    None when its instant cannot be written as RFC 3339."""
    event_id, thread_id, at_ms, event_name, *values = row
    try:
        occurred_at = rfc3339_ms(at_ms)
    except (OverflowError, TypeError):
        return None
    properties = {k: v for k, v in zip(_PROPERTY_KEYS, values, strict=True) if v}
    return redact_event(
        AnalyticsEvent(
            schema_version="analytics.v2",
            event_id=event_id_hex(event_id),
            event_name=event_name,
            occurred_at=occurred_at,
            installation_id=installation_id,
            instance_id=instance_id,
            deployment_mode="unknown",  # how Roder itself was installed is not recorded
            session_id=session_id(thread_id),
            commit_hash="unknown",
            app_version=__version__,
            platform=sys.platform,
            properties=properties,
        )
    )


# an outbox key's event held by a row: found by the thread, its primary key's prefix
_HELD_LOOKUPS = "".join(
    f"""
            UNION ALL
            SELECT {held.columns("x")}
            FROM k JOIN {held.table} x ON x.thread_id = k.thread
            WHERE x.{held.event_id} = k.id AND x.{held.occurred_at_ms} = k.at"""
    for held in HELD_EVENTS
)


async def events_for(
    conn: aiosqlite.Connection,
    outbox_keys: Sequence[tuple[int, int, str | None]],
    *,
    installation_id: str,
    instance_id: str,
) -> list[AnalyticsEvent]:
    """The events of these outbox rows, by (occurred_at_ms, event_id,
    thread_id), owner attribution as known now. Events gone (pruned, rebuilt
    away) or already acknowledged are skipped."""
    if not outbox_keys:
        return []
    sql = f"""
        WITH k (at, id, thread) AS (
            SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?)),
        a (event_id, thread_id, occurred_at_ms, class_id, provider, model) AS (
            SELECT a.event_id, a.thread_id, a.occurred_at_ms, a.class_id, a.provider, a.model
            FROM k JOIN activity a ON a.occurred_at_ms = k.at AND a.event_id = k.id
            {_HELD_LOOKUPS})
        SELECT {V2_COLUMNS} FROM a
        {V2_JOINS}
        WHERE NOT EXISTS (SELECT 1 FROM forward_acked k
                          WHERE k.event_id = printf('%016x', a.event_id))
        ORDER BY a.occurred_at_ms, a.event_id"""
    async with conn.execute(sql, (json.dumps(list(outbox_keys)),)) as cur:
        rows = await cur.fetchall()
    out = []
    for row in rows:
        ev = to_event(row, installation_id=installation_id, instance_id=instance_id)
        if ev is not None:
            out.append(ev)
    return out
