"""Stage 4: events → parameter rows for the store's upserts. Pure.

Every row carries only what its event knows (NULL elsewhere). Rows with
the same key are merged here first, with exactly the rules the upserts in
`store/writer.py` apply in SQL, so a chunk writes one row per turn, tool
call and session instead of one per event. Each rule is a max over a total
order (or min/max of a timestamp), so merging is associative and
commutative: merging here and then in the store gives the same result as
replaying events one by one, in any order, any number of times.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from roder_analyticsd.pipeline.attribute import activity_id, tool_class, turn_class
from roder_analyticsd.pipeline.batch import Batch, Rows
from roder_analyticsd.sources import roder as ev

_TERMINAL_STATUS = {
    "turn.completed": "completed",
    "turn.failed": "failed",
    "turn.interrupted": "interrupted",
    "turn.deadline_exceeded": "timeout",
}


def _min(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _max(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def above(b: int | None, a: int | None) -> bool:
    """The tie-break between two event ids: a known one beats None, then the
    greater. (The store's 0, "its event is a row of `activity`", is kept
    whatever comes: see store/writer.py; a batch never holds it.)"""
    return b is not None and (a is None or b > a)


def _newer(a_at: int | None, a_key: Any, b_at: int | None, b_key: Any) -> bool:
    """Does b's value replace a's? Later wins; ties go to the larger key."""
    if b_at is None:
        return False
    if a_at is None or b_at > a_at:
        return True
    return b_at == a_at and (b_key or "") > (a_key or "")


# sessions: (thread_id, workspace_key, workspace_label, workspace_at_ms, provider,
#            provider_at_ms, model, model_at_ms, created_at_ms, updated_at_ms)
def merge_session(a: tuple, b: tuple) -> tuple:
    ws = b[1:4] if _newer(a[3], a[1], b[3], b[1]) else a[1:4]
    provider = b[4:6] if _newer(a[5], a[4], b[5], b[4]) else a[4:6]
    model = b[6:8] if _newer(a[7], a[6], b[7], b[6]) else a[6:8]
    return (a[0], *ws, *provider, *model, _min(a[8], b[8]), _max(a[9], b[9]))


# turns: (thread_id, turn_id, runtime_profile, started_at_ms, provider, model,
#         model_at_ms, completed_at_ms, terminal_status, error_kind,
#         start_event_id, start_class_id, end_event_id, end_class_id);
# the start's and the end's analytics.v2 event go with the instant they set
def merge_turn(a: tuple, b: tuple) -> tuple:
    model = b[4:7] if _newer(a[6], a[5], b[6], b[5]) else a[4:7]
    # a terminal status is only ever replaced by a later terminal event
    if b[8] is not None and (
        a[8] is None
        or b[7] > a[7]
        or (b[7] == a[7] and (b[8] > a[8] or (b[8] == a[8] and above(b[12], a[12]))))
    ):
        terminal, end = b[7:10], b[12:14]
    else:
        terminal, end = a[7:10], a[12:14]
    if b[3] is not None and (a[3] is None or b[3] < a[3] or (b[3] == a[3] and above(b[10], a[10]))):
        started, start = b[3], b[10:12]
    else:
        started, start = a[3], a[10:12]
    return (a[0], a[1], _max(a[2], b[2]), started, *model, *terminal, *start, *end)


# tool_calls: (thread_id, turn_id, tool_id, tool_name, started_at_ms,
#              completed_at_ms, is_error, event_id, class_id); the event is
# the completion's, so it goes with it
def merge_tool_call(a: tuple, b: tuple) -> tuple:
    if b[5] is not None and (
        a[5] is None
        or b[5] > a[5]
        or (b[5] == a[5] and (b[6] > a[6] or (b[6] == a[6] and above(b[7], a[7]))))
    ):
        completion = b[5:9]
    else:
        completion = a[5:9]
    return (a[0], a[1], a[2], _min(a[3], b[3]), _min(a[4], b[4]), *completion)


# token_usage: (thread_id, turn_id, recorded_at_ms, prompt, completion, total,
#               cached, cache_creation); the terminal event's usage, latest wins
def merge_token_usage(a: tuple, b: tuple) -> tuple:
    return b if (b[2], b[5]) > (a[2], a[5]) else a


NO_EVENTS = (None, None, None, None)  # a turn row that holds neither its start's nor its end's


def _put(rows: dict, key: tuple, row: tuple, merge) -> None:
    old = rows.get(key)
    rows[key] = row if old is None else merge(old, row)


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
    sessions: dict[str, tuple] = {}
    turns: dict[tuple, tuple] = {}
    tools: dict[tuple, tuple] = {}
    tokens: dict[tuple, tuple] = {}
    # the classes of the events the turn and tool rows hold
    classes: dict[int, tuple] = {}
    # InferenceStarted is frequent: its session facts are folded in place
    # ([first_at, last_at, provider_at, provider, model_at, model]) and merged once
    inferred: dict[str, list] = {}
    # one str object per distinct id: rows then pickle (to the writer
    # process) and unpickle much smaller, since pickle shares repeated objects
    same = {}.setdefault

    for s in batch.sessions:
        at = s.updated_at_ms if s.updated_at_ms is not None else s.created_at_ms
        row = (
            s.thread_id, s.workspace_key, s.workspace_label, at if s.workspace_key else None,
            s.provider, at if s.provider else None, s.model, at if s.model else None,
            s.created_at_ms, s.updated_at_ms,
        )  # fmt: skip
        _put(sessions, s.thread_id, row, merge_session)

    # the payload type always matches the kind (decode picks it by kind)
    for event in batch.events:
        p = event.payload
        if p is None:
            continue
        kind = event.kind
        at = event.at_ms
        if kind == "tool.call_completed":
            thread_id = same(p.thread_id, p.thread_id)
            turn_id = same(p.turn_id, p.turn_id)
            event_id = activity_id(p.thread_id or event.thread_id, event.event_id, kind)
            cls = tool_class(p.is_error)
            classes[cls[0]] = cls
            row = (
                thread_id, turn_id, p.tool_id, p.tool_name, None, at, 1 if p.is_error else 0,
                event_id, cls[0],
            )  # fmt: skip
            old = tools.get(key := (thread_id, turn_id, p.tool_id))
            tools[key] = row if old is None else merge_tool_call(old, row)
        elif kind == "tool.call_started":
            thread_id = same(p.thread_id, p.thread_id)
            turn_id = same(p.turn_id, p.turn_id)
            row = (thread_id, turn_id, p.tool_id, p.tool_name, at, None, None, None, None)
            old = tools.get(key := (thread_id, turn_id, p.tool_id))
            tools[key] = row if old is None else merge_tool_call(old, row)
        elif kind == "inference.started":
            ref = p.model
            provider = ref.provider if ref is not None else None
            model = ref.model if ref is not None else None
            thread_id = same(p.thread_id, p.thread_id)
            turn_id = same(p.turn_id, p.turn_id)
            row = (
                thread_id, turn_id, None, None, provider, model, at, None, None, None, *NO_EVENTS
            )  # fmt: skip
            old = turns.get(key := (thread_id, turn_id))
            turns[key] = row if old is None else merge_turn(old, row)
            facts = inferred.get(p.thread_id)
            if facts is None:
                inferred[p.thread_id] = [at, at, None, None, None, None]
                facts = inferred[p.thread_id]
            elif at < facts[0]:
                facts[0] = at
            elif at > facts[1]:
                facts[1] = at
            # _newer(facts[i], facts[i + 1], at, value), inlined
            if provider and (
                facts[2] is None
                or at > facts[2]
                or (at == facts[2] and provider > (facts[3] or ""))
            ):
                facts[2], facts[3] = at, provider
            if model and (
                facts[4] is None or at > facts[4] or (at == facts[4] and model > (facts[5] or ""))
            ):
                facts[4], facts[5] = at, model
        elif kind == "turn.started":
            cls = turn_class(kind, None)
            classes[cls[0]] = cls
            row = (
                p.thread_id, p.turn_id, p.runtime_profile, at, None, None, None, None, None, None,
                activity_id(p.thread_id or event.thread_id, event.event_id, kind), cls[0],
                None, None,
            )  # fmt: skip
            old = turns.get(key := (p.thread_id, p.turn_id))
            turns[key] = row if old is None else merge_turn(old, row)
        elif kind in _TERMINAL_STATUS:
            status = _TERMINAL_STATUS[kind]
            error_kind = (p.error_kind or "unknown") if kind == "turn.failed" else None
            cls = turn_class(kind, p.error_kind if kind == "turn.failed" else None)
            classes[cls[0]] = cls
            key = (p.thread_id, p.turn_id)
            event_id = activity_id(p.thread_id or event.thread_id, event.event_id, kind)
            row = (*key, None, None, None, None, None, at, status, error_kind, None, None,
                   event_id, cls[0])  # fmt: skip
            _put(turns, key, row, merge_turn)
            if kind == "turn.completed" or kind == "turn.failed":
                usage = _usage_row(p.thread_id, p.turn_id, at, p.usage)
                if usage is not None:
                    _put(tokens, key, usage, merge_token_usage)
        elif kind == "thread.created":
            row = (p.thread_id, None, None, None, None, None, None, None, at, at)
            _put(sessions, p.thread_id, row, merge_session)

    for thread_id, (first, last, provider_at, provider, model_at, model) in inferred.items():
        row = (thread_id, None, None, None, provider, provider_at, model, model_at, first, last)
        _put(sessions, thread_id, row, merge_session)

    rows = Rows(
        sessions=list(sessions.values()),
        turns=list(turns.values()),
        tool_calls=list(tools.values()),
        token_usage=list(tokens.values()),
        activity=list({row[0]: row for row in batch.activity}.values()),
        activity_classes=[*batch.activity_classes, *classes.values()],
        thread_owners=list(dict.fromkeys(batch.thread_owners)),
    )
    return dataclasses.replace(
        batch, events=[], sessions=[], activity=[], activity_classes=[], thread_owners=[],
        rows=rows,
    )  # fmt: skip
