"""Forwarding local activity to an analytics.v2 receiver (`[analytics.forward]`).

The path of one activity row:

    activity, tool_calls, turns, token_usage ──triggers──▶ forward_outbox ──pump──▶ forward_queue
        ──Forwarder──▶ receiver
                   └─ 2xx ─▶ forward_acked

- An event is a row of `activity` or is held by a tool call's, a turn's or
  a token row (store/schema.py, `activity_events`). The triggers are normal (not
  TEMP) triggers, so they fire for the ingest writer's own connection,
  inside the writer's transaction: no event is missed. They exist only
  while forwarding is on: `enable_forwarding` creates them and, in the same
  transaction, puts every event not yet acknowledged in the outbox (an
  event is either copied then or caught by a trigger, never neither);
  `disable_forwarding` drops them. (A trigger that always exists but checks
  a flag would cost every ingest ~4 µs per activity row even with
  forwarding off: ~70% more time inserting activity.)
- The pump builds events from `activity_v2` for a chunk of outbox ids, hands
  them to `Forwarder.enqueue` and then deletes the ids. The two steps are on
  different connections, so not one transaction; that is harmless: a chunk
  pumped twice (a crash in between, or ids back after `--once --rebuild`)
  is ignored, since acknowledged ids are skipped and queued ids are not
  queued twice.
- It pumps only while the queue is short: the backlog waits in the outbox
  (one integer a row) and the Forwarder's overflow (drop oldest) never
  triggers.

Attribution is the one known when the event is built: an event is sent
once, so if a thread's owner is only learned later (a subagent thread
ingested before its parent's SubagentStarted) the sent event keeps the
earlier owner. So an event waits until it occurred `settle_seconds` ago
before it is built (live events: about that long after ingest; old ones at
once), and the daemon should start forwarding after its first catch-up.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import structlog

from roder_analyticsd.config import Settings
from roder_analyticsd.fleet.forwarder import Forwarder
from roder_analyticsd.fleet.local import events_for
from roder_analyticsd.store.connection import ensure_installation_id, open_store
from roder_analyticsd.store.schema import HELD_EVENTS
from roder_analyticsd.store.transaction import transaction

log = structlog.get_logger()

OUTBOX_CHUNK = 500  # activity rows built per pump
QUEUE_BATCHES = 10  # pump while fewer than this many batches are queued
SETTLE_SECONDS = 10.0
POLL_SECONDS = 2.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


TRIGGER = "activity_forward_outbox"  # its presence is "forwarding is on"
_OUTBOX = "INSERT OR IGNORE INTO forward_outbox (occurred_at_ms, event_id, thread_id)"


def _held_triggers(table: str) -> list[tuple[str, str]]:
    """(name, CREATE) of the triggers that put the events a row of `table`
    holds in the outbox: when inserted, and when an event's id or instant
    changes (an outbox row whose key no longer matches is consumed as gone)."""
    events = [(held.occurred_at_ms, held.event_id) for held in HELD_EVENTS if held.table == table]
    on_insert = "".join(
        f"    {_OUTBOX} SELECT NEW.{at}, NEW.{ident}, NEW.thread_id WHERE NEW.{ident} <> 0;\n"
        for at, ident in events
    )
    on_update = "".join(
        f"    {_OUTBOX} SELECT NEW.{at}, NEW.{ident}, NEW.thread_id"
        f" WHERE NEW.{ident} <> 0"
        f" AND (NEW.{ident} IS NOT OLD.{ident} OR NEW.{at} IS NOT OLD.{at});\n"
        for at, ident in events
    )
    columns = ", ".join(dict.fromkeys(column for event in events for column in event))
    return [
        (
            f"{table}_insert_forward_outbox",
            f"CREATE TRIGGER IF NOT EXISTS {table}_insert_forward_outbox"
            f" AFTER INSERT ON {table}\nBEGIN\n{on_insert}END",
        ),
        (
            f"{table}_update_forward_outbox",
            f"CREATE TRIGGER IF NOT EXISTS {table}_update_forward_outbox"
            f" AFTER UPDATE OF {columns} ON {table}\nBEGIN\n{on_update}END",
        ),
    ]


_TRIGGERS = [
    (
        TRIGGER,
        f"CREATE TRIGGER IF NOT EXISTS {TRIGGER} AFTER INSERT ON activity\nBEGIN\n"
        f"    {_OUTBOX} VALUES (NEW.occurred_at_ms, NEW.event_id, NEW.thread_id);\nEND",
    ),
    *(trigger for table in dict.fromkeys(h.table for h in HELD_EVENTS)
      for trigger in _held_triggers(table)),
]  # fmt: skip


async def _write(conn: aiosqlite.Connection, *statements: str) -> list[int]:
    """Run statements in one immediate transaction; their row counts."""
    counts = []
    async with transaction(conn):
        for sql in statements:
            cur = await conn.execute(sql)
            counts.append(cur.rowcount)
            await cur.close()
    return counts


async def forwarding_enabled(conn: aiosqlite.Connection) -> bool:
    async with conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?", (TRIGGER,)
    ) as cur:
        return await cur.fetchone() is not None


async def enable_forwarding(conn: aiosqlite.Connection) -> int:
    """Create the outbox triggers; when forwarding was off, every event not
    yet acknowledged joins the outbox. Returns how many did."""
    creates = [sql for _, sql in _TRIGGERS]
    if await forwarding_enabled(conn):
        # (a store forwarding since before migration 9 gains the triggers of
        # the tool call and turn rows; every event they held then is a row
        # of `activity`, so none is missing from the outbox)
        await _write(conn, *creates)
        return 0
    *_, added = await _write(
        conn,
        *creates,
        f"{_OUTBOX} SELECT a.occurred_at_ms, a.event_id, a.thread_id FROM activity_events a"
        " WHERE NOT EXISTS (SELECT 1 FROM forward_acked k"
        " WHERE k.event_id = printf('%016x', a.event_id))",
    )
    return max(added, 0)


async def disable_forwarding(conn: aiosqlite.Connection) -> None:
    """Drop the trigger and empty the outbox (for a daemon whose
    `[analytics.forward] endpoint` was removed). Queued events are kept; a
    later enable picks up whatever was not acknowledged."""
    if await forwarding_enabled(conn):
        drops = [f"DROP TRIGGER IF EXISTS {name}" for name, _ in _TRIGGERS]
        await _write(conn, *drops, "DELETE FROM forward_outbox")


async def pump(
    conn: aiosqlite.Connection,
    forwarder: Forwarder,
    *,
    installation_id: str,
    instance_id: str,
    occurred_before_ms: int,
    limit: int = OUTBOX_CHUNK,
) -> int:
    """Move up to `limit` outbox rows whose event occurred before
    `occurred_before_ms` into the forwarder's queue (a row whose activity
    is gone is just consumed); returns how many outbox rows were consumed."""
    async with conn.execute(
        "SELECT occurred_at_ms, event_id, thread_id FROM forward_outbox WHERE occurred_at_ms < ?"
        " ORDER BY occurred_at_ms LIMIT ?",
        (occurred_before_ms, limit),
    ) as cur:
        keys = [tuple(row) for row in await cur.fetchall()]
    if not keys:
        return 0
    events = await events_for(conn, keys, installation_id=installation_id, instance_id=instance_id)
    if events:
        await forwarder.enqueue(events)
    # after the enqueue has committed: a crash in between re-pumps, harmlessly
    await conn.execute(
        "DELETE FROM forward_outbox WHERE (occurred_at_ms, event_id) IN"
        " (SELECT value ->> 0, value ->> 1 FROM json_each(?))",
        (json.dumps([key[:2] for key in keys]),),
    )
    return len(keys)


async def _send(forwarder: Forwarder, stopped: anyio.Event, retry_seconds: float) -> None:
    # The Forwarder's own loop; a store error (e.g. locked longer than the
    # busy timeout by a big ingest transaction) is logged and retried.
    while not stopped.is_set():
        try:
            await forwarder.run()
            return
        except sqlite3.Error as exc:
            log.warning("forward_store_error", stage="send", error=str(exc))
            with anyio.move_on_after(retry_seconds):
                await stopped.wait()


async def _feed(
    conn: aiosqlite.Connection,
    forwarder: Forwarder,
    stopped: anyio.Event,
    *,
    installation_id: str,
    instance_id: str,
    poll_seconds: float,
    settle_seconds: float,
) -> None:
    """Pump the outbox into the queue while the queue is short, until stopped."""
    high_water = QUEUE_BATCHES * forwarder.batch_size
    while not stopped.is_set():
        moved, full = 0, False
        try:
            full = await forwarder.pending() >= high_water
            if not full:
                moved = await pump(
                    conn,
                    forwarder,
                    installation_id=installation_id,
                    instance_id=instance_id,
                    occurred_before_ms=_now_ms() - int(settle_seconds * 1000),
                )
        except sqlite3.Error as exc:
            log.warning("forward_store_error", stage="pump", error=str(exc))
        if moved:
            continue
        # a full queue drains quickly; an empty outbox waits for ingest
        with anyio.move_on_after(min(poll_seconds, 0.25) if full else poll_seconds):
            await stopped.wait()


async def run_forwarding(
    store_path: str | os.PathLike[str],
    settings: Settings,
    instance_id: str,
    *,
    stop_event: anyio.Event | None = None,
    poll_seconds: float = POLL_SECONDS,
    settle_seconds: float = SETTLE_SECONDS,
    forwarder_options: Mapping[str, Any] | None = None,
) -> None:
    """Forward local activity to `settings.forward_endpoint` until
    `stop_event` is set (or the task is cancelled); the daemon starts it in
    its task group when the endpoint is set. Returns at once when it is not.
    `instance_id` is this process's analytics.v2 instanceId;
    `forwarder_options` go to `Forwarder` (backoff, timeouts, max_queue).
    Raises StoreError when the store cannot be opened."""
    endpoint = settings.forward_endpoint
    if not endpoint:
        return
    stopped = stop_event if stop_event is not None else anyio.Event()
    options: dict[str, Any] = {
        "batch_size": settings.forward_batch_size,
        # a receiver off loopback requires a bearer token (no such setting yet)
        "token": settings.forward_token,
        **(forwarder_options or {}),
    }
    conn = await open_store(Path(store_path))
    try:
        installation_id = await ensure_installation_id(conn)
        while True:  # a long ingest transaction may hold the write lock a while
            try:
                added = await enable_forwarding(conn)
                break
            except sqlite3.OperationalError as exc:
                log.warning("forward_store_error", stage="enable", error=str(exc))
                with anyio.move_on_after(poll_seconds):
                    await stopped.wait()
                if stopped.is_set():
                    return
        if added:
            log.info("forward_enabled", backlog=added)
        async with (
            Forwarder(store_path, endpoint, **options) as forwarder,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(_send, forwarder, stopped, poll_seconds)
            await _feed(
                conn,
                forwarder,
                stopped,
                installation_id=installation_id,
                instance_id=instance_id,
                poll_seconds=poll_seconds,
                settle_seconds=settle_seconds,
            )
            forwarder.stop()
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()
