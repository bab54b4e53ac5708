"""Rollups and retention: derived tables and pruning, kept exact."""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable

import aiosqlite

from roder_analyticsd.store.schema import DAY_MS
from roder_analyticsd.store.transaction import transaction

# Each day's rollup rows, recomputed from raw rows (UTC days).
_ROLLUP_SQL = """
INSERT INTO daily_rollups (day, scope, key, turns, tool_calls, tool_errors, tool_duration_ms,
    prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
    cache_creation_prompt_tokens, refreshed_at_ms)
SELECT :day, scope, key, sum(turns), sum(calls), sum(errors), sum(dur), sum(p), sum(c), sum(t),
       sum(cp), sum(cc), :now
FROM (
    SELECT 'all' AS scope, '' AS key, count(*) AS turns, 0 AS calls, 0 AS errors, 0 AS dur,
           0 AS p, 0 AS c, 0 AS t, 0 AS cp, 0 AS cc
    FROM turns WHERE started_at_ms >= :lo AND started_at_ms < :hi
    UNION ALL
    SELECT 'all', '', 0, count(*), coalesce(sum(is_error), 0), coalesce(sum(duration_ms), 0),
           0, 0, 0, 0, 0
    FROM tool_calls WHERE at_ms >= :lo AND at_ms < :hi
    UNION ALL
    SELECT 'all', '', 0, 0, 0, 0, sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
           sum(cached_prompt_tokens), sum(cache_creation_prompt_tokens)
    FROM token_usage WHERE recorded_at_ms >= :lo AND recorded_at_ms < :hi
    UNION ALL
    SELECT 'tool', coalesce(tool_name, '(unknown)'), 0, count(*), sum(is_error),
           coalesce(sum(duration_ms), 0), 0, 0, 0, 0, 0
    FROM tool_calls WHERE at_ms >= :lo AND at_ms < :hi GROUP BY 2
    UNION ALL
    SELECT 'model', coalesce(t.provider, '(unknown)') || '/' || coalesce(t.model, '(unknown)'),
           0, 0, 0, 0, sum(u.prompt_tokens), sum(u.completion_tokens), sum(u.total_tokens),
           sum(u.cached_prompt_tokens), sum(u.cache_creation_prompt_tokens)
    FROM token_usage u LEFT JOIN turns t ON t.thread_id = u.thread_id AND t.turn_id = u.turn_id
    WHERE u.recorded_at_ms >= :lo AND u.recorded_at_ms < :hi GROUP BY 2
)
GROUP BY scope, key
HAVING sum(turns) + sum(calls) + coalesce(sum(t), 0) > 0
"""


def day_bounds(day: str) -> tuple[int, int]:
    """[start, end) of a UTC day in epoch ms."""
    lo = calendar.timegm(time.strptime(day, "%Y-%m-%d")) * 1000
    return lo, lo + DAY_MS


async def dirty_days(conn: aiosqlite.Connection) -> set[str]:
    """Days written since their rollups were last refreshed (marked by the
    triggers of schema migration 4)."""
    sql = "SELECT strftime('%Y-%m-%d', day * 86400, 'unixepoch') FROM rollup_dirty_days"
    async with conn.execute(sql) as cur:
        return {row[0] for row in await cur.fetchall()}


async def _refresh_days(conn: aiosqlite.Connection, days: Iterable[str], now: int) -> int:
    written = 0
    for day in sorted(set(days)):
        lo, hi = day_bounds(day)
        await conn.execute("DELETE FROM daily_rollups WHERE day = ?", (day,))
        cur = await conn.execute(_ROLLUP_SQL, {"day": day, "lo": lo, "hi": hi, "now": now})
        written += max(cur.rowcount, 0)
    return written


async def refresh_rollups(conn: aiosqlite.Connection, days: Iterable[str] = ()) -> int:
    """Recompute the rollup rows of these UTC days and of every day marked
    dirty; returns rows written. Nothing to do writes nothing."""
    now = int(time.time() * 1000)
    async with transaction(conn):
        todo = set(days) | await dirty_days(conn)
        if not todo:
            return 0
        written = await _refresh_days(conn, todo, now)
        await conn.execute("DELETE FROM rollup_dirty_days")
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_rollup_ms', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(now),),
        )
    return written


async def all_days(conn: aiosqlite.Connection) -> set[str]:
    sql = """
    SELECT DISTINCT strftime('%Y-%m-%d', ms / 1000, 'unixepoch') FROM (
        SELECT started_at_ms AS ms FROM turns WHERE started_at_ms IS NOT NULL
        UNION SELECT at_ms FROM tool_calls UNION SELECT recorded_at_ms FROM token_usage)
    """
    async with conn.execute(sql) as cur:
        return {row[0] for row in await cur.fetchall() if row[0]}


_DAY = "strftime('%Y-%m-%d', {c} / 1000, 'unixepoch')"
# The days of the rows a prune deletes (as rollups see them), so exactly
# those days are recomputed; days left with no rows lose their rollups.
_PRUNED_DAYS = f"""
SELECT {_DAY.format(c="recorded_at_ms")} FROM token_usage WHERE recorded_at_ms < :cutoff
UNION SELECT {_DAY.format(c="at_ms")} FROM tool_calls WHERE at_ms < :cutoff
UNION SELECT {_DAY.format(c="t.started_at_ms")} FROM turns t
    WHERE COALESCE(t.completed_at_ms, t.started_at_ms, t.model_at_ms) < :cutoff
      AND t.started_at_ms IS NOT NULL
UNION SELECT {_DAY.format(c="u.recorded_at_ms")} FROM turns t
    JOIN token_usage u ON u.thread_id = t.thread_id AND u.turn_id = t.turn_id
    WHERE COALESCE(t.completed_at_ms, t.started_at_ms, t.model_at_ms) < :cutoff
"""


async def prune(conn: aiosqlite.Connection, retention_days: int, now_ms: int | None = None) -> int:
    """Delete raw rows older than the retention window; 0 days keeps all.

    The rollups of the days it touched are recomputed in the same
    transaction, so they stay equal to a full recompute. Returns the raw
    rows (and sessions) deleted.
    """
    if retention_days <= 0:
        return 0
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    cutoff = now_ms - retention_days * DAY_MS
    deleted = 0
    async with transaction(conn):
        async with conn.execute(_PRUNED_DAYS, {"cutoff": cutoff}) as cur:
            days = {row[0] for row in await cur.fetchall() if row[0]}
        for sql in (
            "DELETE FROM token_usage WHERE recorded_at_ms < ?",
            "DELETE FROM tool_calls WHERE at_ms < ?",
            "DELETE FROM turns WHERE COALESCE(completed_at_ms, started_at_ms, model_at_ms) < ?",
            "DELETE FROM activity WHERE occurred_at_ms < ?",
        ):
            cur = await conn.execute(sql, (cutoff,))
            deleted += max(cur.rowcount, 0)
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
        if days:
            await _refresh_days(conn, days, now_ms)
    return deleted
