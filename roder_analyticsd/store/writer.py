"""The batch writer: the only code that writes analytics rows.

Each batch is one transaction: its rows and the checkpoints of the lines
they came from commit together, so a crash at any instant either keeps
both or neither. Replays are harmless because every statement is an
order-independent, idempotent upsert.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import aiosqlite

from roder_analyticsd.pipeline.batch import Checkpoint, Rows

UPSERT_SESSION = """
INSERT INTO sessions (thread_id, workspace_key, workspace_label, workspace_at_ms,
                      provider, model, model_at_ms, created_at_ms, updated_at_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (thread_id) DO UPDATE SET
    workspace_key = CASE WHEN {ws_newer} THEN excluded.workspace_key ELSE workspace_key END,
    workspace_label = CASE WHEN {ws_newer} THEN excluded.workspace_label ELSE workspace_label END,
    workspace_at_ms = CASE WHEN {ws_newer} THEN excluded.workspace_at_ms ELSE workspace_at_ms END,
    provider = CASE WHEN {m_newer} THEN COALESCE(excluded.provider, provider) ELSE provider END,
    model = CASE WHEN {m_newer} THEN COALESCE(excluded.model, model) ELSE model END,
    model_at_ms = CASE WHEN {m_newer} THEN excluded.model_at_ms ELSE model_at_ms END,
    created_at_ms = COALESCE(min(excluded.created_at_ms, created_at_ms),
                             excluded.created_at_ms, created_at_ms),
    updated_at_ms = COALESCE(max(excluded.updated_at_ms, updated_at_ms),
                             excluded.updated_at_ms, updated_at_ms)
""".format(
    ws_newer="(excluded.workspace_at_ms IS NOT NULL AND (workspace_at_ms IS NULL"
    " OR excluded.workspace_at_ms > workspace_at_ms OR (excluded.workspace_at_ms = workspace_at_ms"
    " AND excluded.workspace_key > COALESCE(workspace_key, ''))))",
    m_newer="(excluded.model_at_ms IS NOT NULL AND (model_at_ms IS NULL"
    " OR excluded.model_at_ms > model_at_ms OR (excluded.model_at_ms = model_at_ms"
    " AND COALESCE(excluded.model, '') > COALESCE(model, ''))))",
)

UPSERT_TURN = """
INSERT INTO turns (thread_id, turn_id, runtime_profile, started_at_ms, provider, model,
                   model_at_ms, completed_at_ms, terminal_status, error_kind)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (thread_id, turn_id) DO UPDATE SET
    runtime_profile = COALESCE(excluded.runtime_profile, runtime_profile),
    started_at_ms = COALESCE(min(excluded.started_at_ms, started_at_ms),
                             excluded.started_at_ms, started_at_ms),
    provider = CASE WHEN {m_newer} THEN excluded.provider ELSE provider END,
    model = CASE WHEN {m_newer} THEN excluded.model ELSE model END,
    model_at_ms = CASE WHEN {m_newer} THEN excluded.model_at_ms ELSE model_at_ms END,
    completed_at_ms = CASE WHEN {t_newer} THEN excluded.completed_at_ms ELSE completed_at_ms END,
    terminal_status = CASE WHEN {t_newer} THEN excluded.terminal_status ELSE terminal_status END,
    error_kind = CASE WHEN {t_newer} THEN excluded.error_kind ELSE error_kind END
""".format(
    # the turn's provider/model is that of its last InferenceStarted
    m_newer="(excluded.model_at_ms IS NOT NULL AND (model_at_ms IS NULL"
    " OR excluded.model_at_ms > model_at_ms OR (excluded.model_at_ms = model_at_ms"
    " AND COALESCE(excluded.model, '') > COALESCE(model, ''))))",
    # a terminal status is only ever replaced by a later terminal event
    t_newer="(excluded.terminal_status IS NOT NULL AND (terminal_status IS NULL"
    " OR excluded.completed_at_ms > completed_at_ms OR (excluded.completed_at_ms = completed_at_ms"
    " AND excluded.terminal_status > terminal_status)))",
)

UPSERT_TOOL_CALL = """
INSERT INTO tool_calls (thread_id, turn_id, tool_id, tool_name, started_at_ms,
                        completed_at_ms, is_error)
VALUES (?, ?, ?, ?, ?, ?, COALESCE(?, 0))
ON CONFLICT (thread_id, turn_id, tool_id) DO UPDATE SET
    tool_name = COALESCE(min(excluded.tool_name, tool_name), excluded.tool_name, tool_name),
    started_at_ms = COALESCE(min(excluded.started_at_ms, started_at_ms),
                             excluded.started_at_ms, started_at_ms),
    completed_at_ms = CASE WHEN {c_newer} THEN excluded.completed_at_ms ELSE completed_at_ms END,
    is_error = CASE WHEN {c_newer} THEN excluded.is_error ELSE is_error END
""".format(
    c_newer="(excluded.completed_at_ms IS NOT NULL AND (completed_at_ms IS NULL"
    " OR excluded.completed_at_ms > completed_at_ms OR (excluded.completed_at_ms = completed_at_ms"
    " AND excluded.is_error > is_error)))",
)

UPSERT_TOKEN_USAGE = """
INSERT INTO token_usage (thread_id, turn_id, recorded_at_ms, prompt_tokens, completion_tokens,
                         total_tokens, cached_prompt_tokens, cache_creation_prompt_tokens)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (thread_id, turn_id) DO UPDATE SET
    recorded_at_ms = excluded.recorded_at_ms,
    prompt_tokens = excluded.prompt_tokens,
    completion_tokens = excluded.completion_tokens,
    total_tokens = excluded.total_tokens,
    cached_prompt_tokens = excluded.cached_prompt_tokens,
    cache_creation_prompt_tokens = excluded.cache_creation_prompt_tokens
WHERE excluded.recorded_at_ms > recorded_at_ms
   OR (excluded.recorded_at_ms = recorded_at_ms AND excluded.total_tokens > total_tokens)
"""

INSERT_ACTIVITY = """
INSERT OR IGNORE INTO activity (event_id, thread_id, turn_id, occurred_at_ms, event_name, module,
                                owner_module, execution_kind, loop_stage, outcome,
                                error_category, phase, provider, model)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

UPSERT_THREAD_OWNER = """
INSERT INTO thread_owners (thread_id, owner_kind, parent_thread_id) VALUES (?, ?, ?)
ON CONFLICT (thread_id) DO UPDATE SET
    owner_kind = excluded.owner_kind,
    parent_thread_id = COALESCE(excluded.parent_thread_id, parent_thread_id)
WHERE excluded.owner_kind = 'subagent'  -- a subagent thread stays a subagent
"""

UPSERT_FILE = """
INSERT INTO files (file_key, dev, ino, path, offset, line_no, fp_len, fp_hash, updated_at_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (file_key) DO UPDATE SET
    path = excluded.path, offset = excluded.offset, line_no = excluded.line_no,
    fp_len = excluded.fp_len, fp_hash = excluded.fp_hash, updated_at_ms = excluded.updated_at_ms,
    dev = excluded.dev, ino = excluded.ino
"""


def _checkpoint_rows(checkpoints: Iterable[Checkpoint], now_ms: int) -> list[tuple]:
    latest: dict[str, Checkpoint] = {}
    for cp in checkpoints:
        latest[cp.identity.key] = cp  # later chunks of a file supersede earlier ones
    return [
        (key, cp.identity.dev, cp.identity.ino, cp.path, cp.offset, cp.line_no, cp.fp_len,
         cp.fp_hash, now_ms)
        for key, cp in latest.items()
    ]  # fmt: skip


async def write_rows(
    conn: aiosqlite.Connection, rows: Rows, checkpoints: Iterable[Checkpoint]
) -> None:
    """Write one batch and its checkpoints in a single transaction."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in (
            (UPSERT_SESSION, rows.sessions),
            (UPSERT_TURN, rows.turns),
            (UPSERT_TOOL_CALL, rows.tool_calls),
            (UPSERT_TOKEN_USAGE, rows.token_usage),
            (INSERT_ACTIVITY, rows.activity),
            (UPSERT_THREAD_OWNER, rows.thread_owners),
            (UPSERT_FILE, _checkpoint_rows(checkpoints, int(time.time() * 1000))),
        ):
            if params:
                await conn.executemany(sql, params)
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise


def touched_days(rows: Rows) -> set[str]:
    """UTC days whose rollups these rows can change."""
    stamps: set[int] = set()
    stamps.update(r[2] for r in rows.token_usage)
    for r in rows.tool_calls:
        stamps.add(r[4] if r[4] is not None else r[5])
    for r in rows.turns:
        for at in (r[3], r[7]):
            if at is not None:
                stamps.add(at)
    return {time.strftime("%Y-%m-%d", time.gmtime(ms // 1000)) for ms in stamps}
