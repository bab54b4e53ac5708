"""Stage 4: events → parameter rows for the store's upserts. Pure.

Every row carries only what its event knows (NULL elsewhere); the upserts
in `store/writer.py` merge halves in any order and never downgrade a
terminal status, which is what makes replays idempotent.
"""

from __future__ import annotations

import dataclasses

from roder_analyticsd import events as ev
from roder_analyticsd.pipeline.batch import Batch, Rows

_TERMINAL_STATUS = {
    "turn.completed": "completed",
    "turn.failed": "failed",
    "turn.interrupted": "interrupted",
    "turn.deadline_exceeded": "timeout",
}


def _usage_row(thread_id: str, turn_id: str, at_ms: int, usage: ev.TokenUsage | None):
    if usage is None:
        return None
    if not (usage.prompt_tokens or usage.completion_tokens or usage.total_tokens):
        return None  # an all-zero usage is "no usage", not a row
    return (
        thread_id, turn_id, at_ms, usage.prompt_tokens, usage.completion_tokens,
        usage.total_tokens, usage.cached_prompt_tokens, usage.cache_creation_prompt_tokens,
    )  # fmt: skip


def project(batch: Batch) -> Batch:
    rows = Rows(activity=batch.activity, thread_owners=batch.thread_owners)
    sessions, turns, tools, tokens = rows.sessions, rows.turns, rows.tool_calls, rows.token_usage

    for s in batch.sessions:
        at = s.updated_at_ms if s.updated_at_ms is not None else s.created_at_ms
        sessions.append(
            (s.thread_id, s.workspace_key, s.workspace_label, at if s.workspace_key else None,
             s.provider, s.model, at if (s.provider or s.model) else None,
             s.created_at_ms, s.updated_at_ms)
        )  # fmt: skip

    for event in batch.events:
        p = event.payload
        at = event.at_ms
        if p is None:
            continue
        if isinstance(p, ev.ToolCallStarted):
            tools.append((p.thread_id, p.turn_id, p.tool_id, p.tool_name, at, None, None))
        elif isinstance(p, ev.ToolCallCompleted):
            tools.append(
                (p.thread_id, p.turn_id, p.tool_id, p.tool_name, None, at, int(p.is_error))
            )
        elif isinstance(p, ev.TurnStarted):
            turns.append(
                (p.thread_id, p.turn_id, p.runtime_profile, at, None, None, None, None, None, None)
            )
        elif isinstance(p, ev.InferenceStarted):
            provider = p.model.provider if p.model else None
            model = p.model.model if p.model else None
            turns.append(
                (p.thread_id, p.turn_id, None, None, provider, model, at, None, None, None)
            )
            sessions.append((p.thread_id, None, None, None, provider, model, at, at, at))
        elif event.kind in _TERMINAL_STATUS and isinstance(
            p, ev.TurnCompleted | ev.TurnFailed | ev.TurnEvent
        ):
            status = _TERMINAL_STATUS[event.kind]
            error_kind = (p.error_kind or "unknown") if isinstance(p, ev.TurnFailed) else None
            turns.append(
                (p.thread_id, p.turn_id, None, None, None, None, None, at, status, error_kind)
            )
            if isinstance(p, ev.TurnCompleted | ev.TurnFailed):
                usage = _usage_row(p.thread_id, p.turn_id, at, p.usage)
                if usage is not None:
                    tokens.append(usage)
        elif event.kind == "thread.created" and isinstance(p, ev.ThreadEvent):
            sessions.append((p.thread_id, None, None, None, None, None, None, at, at))

    return dataclasses.replace(
        batch, events=[], sessions=[], activity=[], thread_owners=[], rows=rows
    )
