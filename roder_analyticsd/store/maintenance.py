"""Rollups and retention: derived tables and pruning, kept exact."""

from __future__ import annotations

import calendar
import functools
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # queries import this module without an event loop
    import aiosqlite

from roder_analyticsd.store import deferred_indexes, token_rollups
from roder_analyticsd.store.schema import DAY_MS, day_number_sql
from roder_analyticsd.store.transaction import transaction

# meta key: the UTC day number before which daily rollups are final
FINAL_BEFORE_KEY = "rollups_final_before_day"

# Each day's rollup rows, recomputed from raw rows (UTC days). One
# statement serves one day (`:day`, rows found through the time indexes in
# [:lo, :hi)) or many (`:days`, a JSON list of day numbers: one scan of each
# table, every row placed by the floor of its instant over DAY_MS).
_ROLLUP_TEMPLATE = """
INSERT INTO daily_rollups (day, scope, key, turns, tool_calls, tool_errors, tool_duration_ms,
    prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
    cache_creation_prompt_tokens, refreshed_at_ms)
WITH per_tool AS (
    SELECT {call_day} AS d, coalesce(tool_name, '(unknown)') AS key, count(*) AS calls,
           coalesce(sum(is_error), 0) AS errors,
           coalesce(sum(completed_at_ms - started_at_ms), 0) AS dur
    FROM tool_calls {scan} WHERE {call_rows} GROUP BY 1, 2
)
SELECT {day_out}, scope, key, sum(turns), sum(calls), sum(errors), sum(dur), sum(p), sum(c),
       sum(t), sum(cp), sum(cc), :now
FROM (
    SELECT {turn_day} AS d, 'all' AS scope, '' AS key, count(*) AS turns, 0 AS calls,
           0 AS errors, 0 AS dur, 0 AS p, 0 AS c, 0 AS t, 0 AS cp, 0 AS cc
    FROM turns {scan} WHERE {turn_rows} GROUP BY 1
    UNION ALL
    SELECT d, 'all', '', 0, sum(calls), sum(errors), sum(dur), 0, 0, 0, 0, 0
    FROM per_tool GROUP BY d
    UNION ALL
    SELECT d, 'tool', key, 0, calls, errors, dur, 0, 0, 0, 0, 0 FROM per_tool
    UNION ALL
    SELECT {usage_day}, 'all', '', 0, 0, 0, 0, sum(prompt_tokens), sum(completion_tokens),
           sum(total_tokens), sum(cached_prompt_tokens), sum(cache_creation_prompt_tokens)
    FROM token_usage {scan} WHERE {usage_rows} GROUP BY 1
    UNION ALL
    SELECT {u_usage_day}, 'model', coalesce({provider}, '(unknown)') || '/'
           || coalesce({model}, '(unknown)'),
           0, 0, 0, 0, sum(u.prompt_tokens), sum(u.completion_tokens), sum(u.total_tokens),
           sum(u.cached_prompt_tokens), sum(u.cache_creation_prompt_tokens)
    FROM token_usage u {scan} {turn_join}
    WHERE {u_usage_rows} GROUP BY 1, 3
)
WHERE {chosen}
GROUP BY d, scope, key
HAVING sum(turns) + sum(calls) + coalesce(sum(t), 0) > 0
"""


_CALL_AT = "coalesce(started_at_ms, completed_at_ms)"  # = tool_calls.at_ms


# a token row's provider and model are its own, else its turn's (sought
# only for a row without: Claude Code's rows have both)
_TOKEN_ROW = {
    "provider": token_rollups.TOKEN_PROVIDER,
    "model": token_rollups.TOKEN_MODEL,
    "turn_join": token_rollups.TOKEN_TURN_JOIN,
}
_ONE_DAY_SQL = _ROLLUP_TEMPLATE.format(
    **_TOKEN_ROW, day_out=":day", scan="", chosen="1",
    turn_day="0", call_day="0", usage_day="0", u_usage_day="0",
    turn_rows="started_at_ms >= :lo AND started_at_ms < :hi",
    call_rows="at_ms >= :lo AND at_ms < :hi",
    usage_rows="recorded_at_ms >= :lo AND recorded_at_ms < :hi",
    u_usage_rows="u.recorded_at_ms >= :lo AND u.recorded_at_ms < :hi",
)  # fmt: skip
_MANY_DAYS_SQL = _ROLLUP_TEMPLATE.format(
    **_TOKEN_ROW,
    day_out=f"strftime('%Y-%m-%d', d * {DAY_MS // 1000}, 'unixepoch')", scan="NOT INDEXED",
    chosen="d IN (SELECT value FROM json_each(:days))",
    # tool_calls.at_ms spelled out: a generated column costs more to read
    turn_day=day_number_sql("started_at_ms"), call_day=day_number_sql(_CALL_AT),
    usage_day=day_number_sql("recorded_at_ms"), u_usage_day=day_number_sql("u.recorded_at_ms"),
    turn_rows="started_at_ms IS NOT NULL", call_rows=f"{_CALL_AT} IS NOT NULL", usage_rows="1",
    u_usage_rows="1",
)  # fmt: skip
# From this many days on, one scan of the tables beats a walk of the time
# indexes per day (each row found there costs a seek in its table).
SCAN_FROM_DAYS = 8
SCAN_CACHE_SIZE = -2048  # KiB (negative: a size, not pages)
BESIDE_CACHE_SIZE = -512  # KiB: the same scan, beside the index build (see _daily_apart)


def day_bounds(day: str) -> tuple[int, int]:
    """[start, end) of a UTC day in epoch ms."""
    lo = calendar.timegm(time.strptime(day, "%Y-%m-%d")) * 1000
    return lo, lo + DAY_MS


async def dirty_days(conn: aiosqlite.Connection) -> set[str]:
    """Days written since their rollups were last refreshed (the writer
    marks them in each batch's transaction)."""
    sql = "SELECT strftime('%Y-%m-%d', day * 86400, 'unixepoch') FROM rollup_dirty_days"
    async with conn.execute(sql) as cur:
        return {row[0] for row in await cur.fetchall()}


async def _refresh_days(
    conn: aiosqlite.Connection,
    days: Iterable[str],
    now: int,
    *,
    scan: bool | None = None,
    scan_cache: int = SCAN_CACHE_SIZE,
) -> int:
    """Replace these days' rollup rows; `scan` (default: for SCAN_FROM_DAYS
    days or more) computes them all in one statement, its page cache (and
    so each sort's memory) `scan_cache`."""
    todo = sorted(set(days))
    if not todo:
        return 0
    if scan is None:
        scan = len(todo) >= SCAN_FROM_DAYS
    await conn.executemany("DELETE FROM daily_rollups WHERE day = ?", [(day,) for day in todo])
    if scan:
        numbers = json.dumps([_day_number(day) for day in todo])
        # its sorts (one per GROUP BY) may each hold a page cache's worth of
        # rows in memory: a small cache for this one statement bounds them
        # (it reads each table once, in order, so it needs no cache)
        async with conn.execute("PRAGMA cache_size") as cur:
            (cache,) = await cur.fetchone()
        await conn.execute(f"PRAGMA cache_size = {scan_cache}")
        try:
            cur = await conn.execute(_MANY_DAYS_SQL, {"days": numbers, "now": now})
        finally:
            await conn.execute(f"PRAGMA cache_size = {int(cache)}")
        return max(cur.rowcount, 0)
    written = 0
    for day in todo:
        lo, hi = day_bounds(day)
        cur = await conn.execute(_ONE_DAY_SQL, {"day": day, "lo": lo, "hi": hi, "now": now})
        written += max(cur.rowcount, 0)
    return written


async def final_before_day(conn: aiosqlite.Connection) -> int:
    """UTC day number before which rollups are final: retention pruned those
    days' raw rows, so recomputing them would lose what was counted."""
    async with conn.execute("SELECT value FROM meta WHERE key = ?", (FINAL_BEFORE_KEY,)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row and str(row[0]).isdigit() else 0


def _day_number(day: str) -> int:
    return day_bounds(day)[0] // DAY_MS


class RollupPlan(NamedTuple):
    """What a rollup refresh recomputes."""

    days: frozenset[str]  # every day whose token rollups are recomputed
    open_days: frozenset[str]  # of those, the days whose daily rollups are not final
    dirty: frozenset[str]  # the dirty days it clears
    all_dirty: bool  # every dirty day is cleared (no `limit`)


async def _plan(
    conn: aiosqlite.Connection, days: Iterable[str], limit: int | None
) -> RollupPlan | None:
    dirty = await dirty_days(conn)
    if limit is not None:
        dirty = set(sorted(dirty)[:limit])
    todo = set(days) | dirty
    if not todo:
        return None
    final_before = await final_before_day(conn)
    open_days = {day for day in todo if _day_number(day) >= final_before}
    return RollupPlan(frozenset(todo), frozenset(open_days), frozenset(dirty), limit is None)


async def _token_rollups(conn: aiosqlite.Connection, plan: RollupPlan) -> None:
    # a cache of the raw rows, final days or not: recomputed from what is there
    await token_rollups.refresh_days(conn, {_day_number(day) for day in plan.days})


async def _refreshed(conn: aiosqlite.Connection, plan: RollupPlan, now: int) -> None:
    """The plan's dirty days are clean, and when that happened."""
    if plan.all_dirty:
        await conn.execute("DELETE FROM rollup_dirty_days")
    else:
        await conn.executemany(
            "DELETE FROM rollup_dirty_days WHERE day = ?",
            [(_day_number(day),) for day in sorted(plan.dirty)],
        )
    await conn.execute(
        "INSERT INTO meta (key, value) VALUES ('last_rollup_ms', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(now),),
    )


async def refresh_rollups(
    conn: aiosqlite.Connection, days: Iterable[str] = (), *, limit: int | None = None
) -> int:
    """Recompute the rollup rows of these UTC days and of every day marked
    dirty (except days whose rollups are final); returns rows written.
    Nothing to do writes nothing. `limit`: at most this many of the dirty
    days (oldest first), the others stay marked: a caller that must stay
    responsive (the daemon's loop) refreshes a few days per transaction."""
    now = int(time.time() * 1000)
    async with transaction(conn):
        plan = await _plan(conn, days, limit)
        if plan is None:
            return 0
        written = await _refresh_days(conn, plan.open_days, now)
        await _token_rollups(conn, plan)
        await _refreshed(conn, plan, now)
    return written


async def build_indexes_and_refresh_rollups(
    conn: aiosqlite.Connection, store: Path, *, after_read: Callable[[], object] = lambda: None
) -> int:
    """`deferred_indexes.build(conn)`, then `refresh_rollups(conn)`, in less
    time: the daily rollups are computed while the indexes are built.
    `after_read()` is called once they are (their connection closed, the
    build maybe still running): what else needs memory can start then."""
    # the held calls change rows: first, so that the index build changes none
    await deferred_indexes.release_held_calls(conn)
    return await _refresh_rollups_beside(
        conn, store, functools.partial(deferred_indexes.build, conn), after_read
    )


async def _refresh_rollups_beside(
    conn: aiosqlite.Connection,
    store: Path,
    work: Callable[[], Awaitable[object]],
    after_read: Callable[[], object] = lambda: None,
) -> int:
    """`work()` on `conn`, then `refresh_rollups(conn)`: in less time, as
    the daily rollups are computed during `work`.

    After a first backfill the writer builds the indexes the load deferred,
    and the daily rollups' scan of the tables needs none of them: a second
    connection reads the committed rows meanwhile (on the other core: both
    run in SQLite, outside the GIL). Then one transaction of `conn` writes
    them (a few rows a day) and computes the token rollups (many rows:
    passing them over would cost what it saves), as refresh_rollups would.
    `work` must not change the rows, nor may another process meanwhile:
    that transaction reads the store's data version and the plan again,
    and if either differs, or the second connection fails, refresh_rollups
    does it all after. Inside a caller's transaction (a rebuild: rows
    another connection can't see yet) `work` runs first and then
    refresh_rollups."""
    import anyio

    if conn.in_transaction:
        after_read()
        await work()
        return await refresh_rollups(conn)
    now = int(time.time() * 1000)
    plan = await _plan(conn, (), None)
    if plan is None:
        after_read()
        await work()
        return 0
    version = await _data_version(conn)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(work)
            daily = await _daily_apart(store, plan, now)  # (its own failure: None)
            after_read()
    except BaseExceptionGroup as group:  # work's own error, not a group of one
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    written = None if daily is None else await _finish_beside(conn, daily, plan, version, now)
    if written is None:
        return await refresh_rollups(conn)
    return written


_DAILY_COLUMNS = (
    "day, scope, key, turns, tool_calls, tool_errors, tool_duration_ms, prompt_tokens,"
    " completion_tokens, total_tokens, cached_prompt_tokens, cache_creation_prompt_tokens,"
    " refreshed_at_ms"
)


async def _daily_apart(store: Path, plan: RollupPlan, now: int) -> list[tuple] | None:
    """The plan's daily rollup rows, computed by a connection of its own
    (None: it failed). Its in-memory `daily_rollups` shadows the store's,
    which it attaches read-only: the statements of refresh_rollups read the
    store's raw rows and write there."""
    import aiosqlite
    import anyio

    try:
        reader = await aiosqlite.connect(":memory:", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        await reader.execute("ATTACH ? AS store", (f"{store.absolute().as_uri()}?mode=ro",))
        await reader.execute(
            f"CREATE TABLE daily_rollups AS SELECT {_DAILY_COLUMNS} FROM store.daily_rollups"
            " WHERE 0"
        )
        await reader.execute("BEGIN")  # one snapshot of the store for every statement
        # one scan whatever the days (the time indexes are being built), its
        # sorts smaller than alone: they run beside the index build's
        await reader.execute(f"PRAGMA store.cache_size = {BESIDE_CACHE_SIZE}")
        await _refresh_days(reader, plan.open_days, now, scan=True, scan_cache=BESIDE_CACHE_SIZE)
        async with reader.execute(f"SELECT {_DAILY_COLUMNS} FROM main.daily_rollups") as cur:
            rows = list(await cur.fetchall())
        await reader.execute("COMMIT")
        return rows
    except (sqlite3.Error, ValueError):  # (a path SQLite can't take as a URI, say)
        return None
    finally:
        with anyio.CancelScope(shield=True), suppress(sqlite3.Error):
            await reader.close()


async def _data_version(conn: aiosqlite.Connection) -> int:
    """Changes when another connection commits to the store (SQLite's
    data_version: not this connection's own commits, not a passive
    checkpoint)."""
    async with conn.execute("PRAGMA main.data_version") as cur:
        return (await cur.fetchone())[0]


async def _finish_beside(
    conn: aiosqlite.Connection, daily: list[tuple], plan: RollupPlan, version: int, now: int
) -> int | None:
    """In one transaction: these daily rollup rows in place of the plan's
    days' rows, the token rollups computed, the days clean. None, nothing
    written: the rows may differ from those `daily` was computed from
    (another process wrote since `version` was read: `--once` beside the
    daemon, say; or the plan changed)."""
    async with transaction(conn):
        if await _data_version(conn) != version or await _plan(conn, (), None) != plan:
            return None
        await conn.executemany(
            "DELETE FROM daily_rollups WHERE day = ?", [(day,) for day in sorted(plan.open_days)]
        )
        marks = ", ".join("?" for _ in _DAILY_COLUMNS.split(","))
        await conn.executemany(
            f"INSERT INTO daily_rollups ({_DAILY_COLUMNS}) VALUES ({marks})", daily
        )
        await _token_rollups(conn, plan)
        await _refreshed(conn, plan, now)
    return len(daily)


async def all_days(conn: aiosqlite.Connection) -> set[str]:
    sql = """
    SELECT DISTINCT strftime('%Y-%m-%d', ms / 1000, 'unixepoch') FROM (
        SELECT started_at_ms AS ms FROM turns WHERE started_at_ms IS NOT NULL
        UNION SELECT at_ms FROM tool_calls UNION SELECT recorded_at_ms FROM token_usage)
    """
    async with conn.execute(sql) as cur:
        return {row[0] for row in await cur.fetchall() if row[0]}


def retention_cutoff(retention_days: int, now_ms: int) -> int:
    """Start of the UTC day `retention_days` ago: raw rows of whole days
    before it are pruned, so every day is either kept whole or final."""
    return (now_ms - retention_days * DAY_MS) // DAY_MS * DAY_MS


async def prune(conn: aiosqlite.Connection, retention_days: int, now_ms: int | None = None) -> int:
    """Delete raw rows of the UTC days older than the retention window; 0
    days keeps all. Returns the raw rows (and sessions) deleted.

    Daily rollups are the long-term record and stay: the pruned days'
    rollups are first brought up to date from all their rows, in the same
    transaction, and are final from then on (never recomputed from what
    is left). Days from the cutoff on lose nothing their rollups read.
    """
    if retention_days <= 0:
        return 0
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    cutoff = retention_cutoff(retention_days, now_ms)
    final_before = cutoff // DAY_MS
    deleted = 0
    async with transaction(conn):
        stale = [d for d in await dirty_days(conn) if _day_number(d) < final_before]
        await _refresh_days(conn, stale, now_ms)
        await conn.execute("DELETE FROM rollup_dirty_days WHERE day < ?", (final_before,))
        for sql in (
            "DELETE FROM token_usage WHERE recorded_at_ms < :cutoff",
            "DELETE FROM tool_calls WHERE at_ms < :cutoff",
            # a turn goes when all of it is older, its usage included (the
            # model rollups of a kept day join usage to its turn)
            """DELETE FROM turns
               WHERE COALESCE(completed_at_ms, started_at_ms, model_at_ms) < :cutoff
                 AND (started_at_ms IS NULL OR started_at_ms < :cutoff)
                 AND NOT EXISTS (SELECT 1 FROM token_usage u
                                 WHERE u.thread_id = turns.thread_id AND u.turn_id = turns.turn_id)
            """,
            "DELETE FROM activity WHERE occurred_at_ms < :cutoff",
        ):
            cur = await conn.execute(sql, {"cutoff": cutoff})
            deleted += max(cur.rowcount, 0)
        await token_rollups.drop_before(conn, cutoff)
        # a session goes only when nothing of it is left
        cur = await conn.execute(
            """DELETE FROM sessions WHERE COALESCE(updated_at_ms, created_at_ms, 0) < ?
               AND NOT EXISTS (SELECT 1 FROM turns t WHERE t.thread_id = sessions.thread_id)
               AND NOT EXISTS (SELECT 1 FROM tool_calls c WHERE c.thread_id = sessions.thread_id)
               AND NOT EXISTS (SELECT 1 FROM token_usage u WHERE u.thread_id = sessions.thread_id)
            """,
            (cutoff,),
        )
        deleted += max(cur.rowcount, 0)
        if final_before > await final_before_day(conn):
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (FINAL_BEFORE_KEY, str(final_before)),
            )
    return deleted


# meta key: {"version": price table, "entries": {"provider\x1fmodel": entry}}
PRICE_ENTRIES_KEY = "price_entries"


async def keep_price_entries(
    conn: aiosqlite.Connection,
    version: str,
    compute: Callable[[list[tuple[str, str]]], Awaitable[dict[str, Any]]],
) -> int:
    """Keep a price entry (pricing.py) for every (provider, model) the turns
    name, made from price table `version`, so that queries need not load
    the table. `compute(pairs)` makes the missing ones; it is only called
    when some are missing. Returns how many were added."""
    kept, missing = await missing_price_pairs(conn, version)
    if not missing:
        return 0
    await save_price_entries(conn, version, {**kept, **await compute(missing)})
    return len(missing)


async def missing_price_pairs(
    conn: aiosqlite.Connection, version: str
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The price entries kept for table `version`, and the (provider, model)
    pairs the turns and calls name that have none yet (sorted)."""
    async with conn.execute("SELECT value FROM meta WHERE key = ?", (PRICE_ENTRIES_KEY,)) as cur:
        row = await cur.fetchone()
    entries: dict[str, Any] = {}
    if row is not None:
        try:
            kept = json.loads(row[0])
            if kept["version"] == version:
                entries = dict(kept["entries"])
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: made again
    sql = (
        "SELECT DISTINCT provider, model FROM turns"
        " WHERE provider IS NOT NULL AND model IS NOT NULL"
        # a Claude Code call names its own model
        " UNION SELECT provider, model FROM token_usage"
        " WHERE provider IS NOT NULL AND model IS NOT NULL"
    )
    async with conn.execute(sql) as cur:
        pairs = [(p, m) for p, m in await cur.fetchall() if f"{p}\x1f{m}" not in entries]
    return entries, sorted(pairs)


async def save_price_entries(
    conn: aiosqlite.Connection, version: str, entries: dict[str, Any]
) -> None:
    """Store these price entries (keyed "provider\x1fmodel") of table `version`."""
    value = json.dumps({"version": version, "entries": entries}, sort_keys=True)
    async with transaction(conn):
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (PRICE_ENTRIES_KEY, value),
        )
