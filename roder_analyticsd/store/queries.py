"""The questions `stats` answers, as SQL over the store.

Percentiles are exact nearest-rank, computed in SQLite with window
functions over the raw durations: p = sorted[ceil(q·n) − 1], clamped to
the first element. ceil(q·n) is done in integers, (q100·n + 99) / 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiosqlite

UNKNOWN = "(unknown)"


@dataclass(frozen=True, slots=True)
class Filters:
    since_ms: int | None = None
    until_ms: int | None = None
    thread: str | None = None
    tool: str | None = None
    provider: str | None = None
    model: str | None = None
    workspace: str | None = None
    limit: int = 50


def _where(
    f: Filters,
    *,
    at: str,
    thread: str,
    tool: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    workspace: str | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if f.since_ms is not None:
        clauses.append(f"{at} >= ?")
        params.append(f.since_ms)
    if f.until_ms is not None:
        clauses.append(f"{at} < ?")
        params.append(f.until_ms)
    if f.thread is not None:
        clauses.append(f"{thread} = ?")
        params.append(f.thread)
    for column, value in (
        (tool, f.tool),
        (provider, f.provider),
        (model, f.model),
        (workspace, f.workspace),
    ):
        if value is None:
            continue
        if column is None:
            clauses.append("0")  # the filter names a dimension this table lacks
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" AND ".join(clauses) or "1"), params


async def _all(conn: aiosqlite.Connection, sql: str, params: list[Any]) -> list[tuple]:
    async with conn.execute(sql, params) as cur:
        return list(await cur.fetchall())


# Filters reach tool calls and token rows through their turn and session.
_TOOL_FROM = """tool_calls c
    LEFT JOIN turns t ON t.thread_id = c.thread_id AND t.turn_id = c.turn_id
    LEFT JOIN sessions s ON s.thread_id = c.thread_id"""
_TOKEN_FROM = """token_usage u
    LEFT JOIN turns t ON t.thread_id = u.thread_id AND t.turn_id = u.turn_id
    LEFT JOIN sessions s ON s.thread_id = u.thread_id"""
_TURN_FROM = """turns t LEFT JOIN sessions s ON s.thread_id = t.thread_id"""


def tool_where(f: Filters) -> tuple[str, list[Any]]:
    return _where(
        f,
        at="c.at_ms",
        thread="c.thread_id",
        tool="c.tool_name",
        provider="t.provider",
        model="t.model",
        workspace="s.workspace_label",
    )


def token_where(f: Filters) -> tuple[str, list[Any]]:
    return _where(
        f,
        at="u.recorded_at_ms",
        thread="u.thread_id",
        provider="t.provider",
        model="t.model",
        workspace="s.workspace_label",
    )


def turn_where(f: Filters) -> tuple[str, list[Any]]:
    return _where(
        f,
        at="t.started_at_ms",
        thread="t.thread_id",
        provider="t.provider",
        model="t.model",
        workspace="s.workspace_label",
    )


async def tool_stats(conn: aiosqlite.Connection, f: Filters) -> list[dict[str, Any]]:
    where, params = tool_where(f)
    sql = f"""
    WITH c AS (
        SELECT coalesce(c.tool_name, '{UNKNOWN}') AS tool_name, c.duration_ms, c.is_error
        FROM {_TOOL_FROM} WHERE {where}
    ),
    ranked AS (
        SELECT tool_name, duration_ms,
               row_number() OVER (PARTITION BY tool_name ORDER BY duration_ms) AS rn,
               count(*) OVER (PARTITION BY tool_name) AS n
        FROM c WHERE duration_ms IS NOT NULL
    ),
    pct AS (
        SELECT tool_name,
               max(CASE WHEN rn = max(1, (n * 50 + 99) / 100) THEN duration_ms END) AS p50,
               max(CASE WHEN rn = max(1, (n * 95 + 99) / 100) THEN duration_ms END) AS p95,
               max(CASE WHEN rn = max(1, (n * 99 + 99) / 100) THEN duration_ms END) AS p99
        FROM ranked GROUP BY tool_name
    )
    SELECT c.tool_name, count(*), sum(c.is_error), coalesce(sum(c.duration_ms), 0),
           count(c.duration_ms), pct.p50, pct.p95, pct.p99
    FROM c LEFT JOIN pct ON pct.tool_name = c.tool_name
    GROUP BY c.tool_name
    ORDER BY count(*) DESC, c.tool_name ASC
    LIMIT ?
    """
    rows = await _all(conn, sql, [*params, f.limit])
    return [
        {
            "toolName": name,
            "callCount": calls,
            "errorCount": errors,
            "errorRate": round(errors / calls, 6) if calls else 0.0,
            "totalDurationMs": total,
            "avgDurationMs": round(total / timed, 3) if timed else None,
            "p50DurationMs": p50,
            "p95DurationMs": p95,
            "p99DurationMs": p99,
        }
        for name, calls, errors, total, timed, p50, p95, p99 in rows
    ]


async def token_groups(conn: aiosqlite.Connection, f: Filters, group: str) -> list[dict[str, Any]]:
    key = {
        "day": "strftime('%Y-%m-%d', u.recorded_at_ms / 1000, 'unixepoch')",
        "week": "strftime('%Y-W%W', u.recorded_at_ms / 1000, 'unixepoch')",
        "month": "strftime('%Y-%m', u.recorded_at_ms / 1000, 'unixepoch')",
        "session": "u.thread_id",
        "provider": f"coalesce(t.provider, '{UNKNOWN}')",
        "model": f"coalesce(t.model, '{UNKNOWN}')",
        "workspace": f"coalesce(s.workspace_label, '{UNKNOWN}')",
    }[group]
    where, params = token_where(f)
    sql = f"""
    SELECT {key} AS g, sum(u.prompt_tokens), sum(u.completion_tokens), sum(u.total_tokens),
           sum(u.cached_prompt_tokens), sum(u.cache_creation_prompt_tokens), count(*)
    FROM {_TOKEN_FROM} WHERE {where}
    GROUP BY g ORDER BY sum(u.total_tokens) DESC, g ASC LIMIT ?
    """
    rows = await _all(conn, sql, [*params, f.limit])
    return [
        {
            "group": g,
            "promptTokens": p,
            "completionTokens": c,
            "totalTokens": t,
            "cachedPromptTokens": cp,
            "cacheCreationPromptTokens": cc,
            "turnCount": n,
            "costUsd": None,
        }
        for g, p, c, t, cp, cc, n in rows
    ]


async def summary(conn: aiosqlite.Connection, f: Filters) -> dict[str, Any]:
    twhere, tparams = turn_where(f)
    turns = (
        await _all(
            conn,
            f"""
        SELECT count(*), count(*) FILTER (WHERE t.status = 'completed'),
               count(*) FILTER (WHERE t.status = 'failed'),
               count(*) FILTER (WHERE t.status = 'interrupted'),
               count(DISTINCT t.thread_id)
        FROM {_TURN_FROM} WHERE {twhere}""",
            tparams,
        )
    )[0]
    cwhere, cparams = tool_where(f)
    calls = (
        await _all(
            conn,
            f"""
        SELECT count(*), coalesce(sum(c.is_error), 0) FROM {_TOOL_FROM} WHERE {cwhere}""",
            cparams,
        )
    )[0]
    top = await _all(
        conn,
        f"""
        SELECT c.tool_name FROM {_TOOL_FROM} WHERE {cwhere} AND c.tool_name IS NOT NULL
        GROUP BY c.tool_name ORDER BY count(*) DESC, c.tool_name ASC LIMIT 1""",
        cparams,
    )
    uwhere, uparams = token_where(f)
    tokens = (
        await _all(
            conn,
            f"""
        SELECT coalesce(sum(u.prompt_tokens), 0), coalesce(sum(u.completion_tokens), 0),
               coalesce(sum(u.total_tokens), 0), coalesce(sum(u.cached_prompt_tokens), 0),
               coalesce(sum(u.cache_creation_prompt_tokens), 0)
        FROM {_TOKEN_FROM} WHERE {uwhere}""",
            uparams,
        )
    )[0]
    swhere, sparams = _where(
        f,
        at="coalesce(s.updated_at_ms, s.created_at_ms)",
        thread="s.thread_id",
        provider="s.provider",
        model="s.model",
        workspace="s.workspace_label",
    )
    sessions = (await _all(conn, f"SELECT count(*) FROM sessions s WHERE {swhere}", sparams))[0]
    return {
        "sessionCount": sessions[0],
        "turnCount": turns[0],
        "completedTurnCount": turns[1],
        "failedTurnCount": turns[2],
        "interruptedTurnCount": turns[3],
        "toolCallCount": calls[0],
        "toolErrorCount": calls[1],
        "promptTokens": tokens[0],
        "completionTokens": tokens[1],
        "totalTokens": tokens[2],
        "cachedPromptTokens": tokens[3],
        "cacheCreationPromptTokens": tokens[4],
        "mostCalledTool": top[0][0] if top else None,
        "costUsd": None,
    }


async def turn_status_counts(conn: aiosqlite.Connection) -> dict[str, int]:
    rows = await _all(conn, "SELECT status, count(*) FROM turns GROUP BY status", [])
    return {status: n for status, n in rows}


async def activity_counts(
    conn: aiosqlite.Connection,
    by: str,
    loop_stage: str | None = None,
    user_sessions: bool = False,
) -> list[dict[str, Any]]:
    column = {
        "module": "module",
        "owner-module": "owner_module",
        "execution-kind": "execution_kind",
        "loop-stage": "loop_stage",
        "outcome": "outcome",
        "phase": "phase",
        "error-category": "error_category",
    }[by]
    clauses, params = [], []
    if loop_stage:
        clauses.append("loop_stage = ?")
        params.append(loop_stage)
    if user_sessions:
        clauses.append(
            "module = 'session' AND owner_module = 'session' AND execution_kind = 'user_session'"
        )
    where = " AND ".join(clauses) or "1"
    rows = await _all(
        conn,
        f"""
        SELECT coalesce({column}, '(none)') AS k, count(*),
               count(*) FILTER (WHERE event_name = 'error_occurred')
        FROM activity_v2 WHERE {where} GROUP BY k ORDER BY count(*) DESC, k ASC""",
        params,
    )
    return [{"key": k, "events": n, "errorEvents": e} for k, n, e in rows]
