"""Claude Code's facts → analytics.v2 activity and store rows. Pure.

The same stages as Roder's (redact → attribute → project) over what
`sources/claude_code.py` decodes. Projection rules (claude-code.md):

- one API call per `(message.id, requestId)`: its streamed lines merge to
  the largest token total; a non-sidechain copy beats a sidechain one (a
  side question replaying its parent's message under a new requestId is
  resolved by message id in the store, see `store/writer.py`);
- the session is the line's own `sessionId` (a resumed session's replays
  stay with the session they came from); sidechain lines are subagents;
- a tool call is its `tool_use` (start) and `tool_result` (completion);
- a prompt is a turn, keyed by its line's uuid, its model its latest API
  call's; the calls until the next prompt belong to it: tool calls and API
  calls keep their own keys (a replay may start mid-turn: a key by turn
  could count a call twice) and carry the prompt's uuid in `prompt_id`
  (None: not known), merged as every other fact: a known prompt beats
  none, and of two the greater is kept.

Every merge is a max over a total order, so rows converge whatever order
the lines arrive in, however often they are replayed.
"""

from __future__ import annotations

import dataclasses

from roder_analyticsd.pipeline.attribute import ERROR, FEATURE, activity_id, class_row
from roder_analyticsd.pipeline.batch import Batch, Rows
from roder_analyticsd.pipeline.project import (
    NO_EVENTS,
    _put,
    merge_session,
    merge_tool_call,
    merge_turn,
)
from roder_analyticsd.sources.claude_code import CALL, PROMPT, PROVIDER, TOOL_RESULT, TOOL_USE

# Claude Code's tool calls are keyed by session and tool id alone (the turn
# id of every one of them is this); their prompt is `prompt_id`.
NO_TURN = ""


def _kind(sidechain: bool) -> str:
    return "subagent" if sidechain else "user_session"


def _classes(sidechain: bool) -> dict[str, tuple]:
    owner = "session"
    kind = _kind(sidechain)
    return {
        PROMPT: class_row((FEATURE, "session", owner, kind, "loop_start", None, None, None)),
        CALL: class_row((FEATURE, "session", owner, kind, "model_request", None, None, None)),
        "ok": class_row((FEATURE, "session", owner, kind, "tool_call", "success", None, None)),
        "error": class_row(
            (ERROR, "session", owner, kind, "tool_call", "failed", "tool_runtime_error", None)
        ),
    }


_CLASSES = {False: _classes(False), True: _classes(True)}
# the same rows by sidechain flag, one lookup a fact
_PROMPT_ROWS = {side: rows[PROMPT] for side, rows in _CLASSES.items()}
_CALL_ROWS = {side: rows[CALL] for side, rows in _CLASSES.items()}
_TOOL_ROWS = {(error, side): rows["error" if error else "ok"]
              for side, rows in _CLASSES.items() for error in (False, True)}  # fmt: skip


def attribute(batch: Batch) -> Batch:
    """Claude Code's analytics.v2 events are all held by the rows they
    project to (see project): a prompt's loop_start by its turn, a tool
    result's tool_call by its tool call, an API call's model_request by its
    token row (once its stream's last line is read). No activity rows."""
    return dataclasses.replace(batch, activity=[], activity_classes=[], thread_owners=[])


# api_calls: (thread_id, turn_id = call key, recorded_at_ms, prompt, completion, total,
#             cached, cache_creation, cache_creation_1h, provider, model, message_id,
#             is_sidechain, prompt_id, event_id, class_id); event_id: the call's
# model_request, known once a line that ends its stream is read (the same id
# on every copy: it hashes the key), class_id that of the copy's sidechain flag
def call_rank(row: tuple) -> tuple:
    """The total order of a call's copies: a non-sidechain copy first, then the
    largest total (the final state of a stream), then the latest."""
    return (-row[12], row[5], row[2], row[4], row[10] or "")


def merge_prompt(a: str | None, b: str | None) -> str | None:
    """A row's prompt: a known one beats None; of two, the greater (copies
    normally agree; this only makes the merge a max over a total order).
    store/writer.py's upserts are its SQL twin."""
    if a is None:
        return b
    return a if b is None or a >= b else b


def prompt_rank(row: tuple) -> tuple:
    """Which copy of a call gives its prompt: merge_prompt's order, after a
    non-sidechain copy first (as in call_rank: the store drops a sidechain
    copy of a message a non-sidechain row holds, so the prompt it had must
    not depend on whether it was merged before being dropped)."""
    return (-row[12], row[13] is not None, row[13] or "")


def merge_call(a: tuple, b: tuple) -> tuple:
    best = b if call_rank(b) > call_rank(a) else a
    prompt = (b if prompt_rank(b) > prompt_rank(a) else a)[13]
    # the event: of the copies with the kept row's sidechain flag, any that
    # ended the stream (a sidechain copy may be dropped in the store, and
    # what it knew must not depend on whether it was merged first)
    if a[12] != b[12]:
        event = (a if a[12] < b[12] else b)[14]
    else:
        event = a[14] if a[14] is not None else b[14]
    if best[13] == prompt and best[14] == event:
        return best
    return (*best[:13], prompt, event, best[15])


# tool_calls: (thread_id, turn_id = NO_TURN, tool_id, tool_name, started_at_ms,
#              completed_at_ms, is_error, event_id, class_id, prompt_id)
def merge_tool(a: tuple, b: tuple) -> tuple:
    return (*merge_tool_call(a, b), merge_prompt(a[9], b[9]))


def project(batch: Batch) -> Batch:
    sessions: dict[str, tuple] = {}
    turns: dict[tuple, tuple] = {}
    tools: dict[tuple, tuple] = {}
    calls: dict[tuple, tuple] = {}
    classes: dict[int, tuple] = {}  # of the events the turn and tool rows hold
    for s in batch.sessions:
        at = s.updated_at_ms if s.updated_at_ms is not None else s.created_at_ms
        row = (
            s.thread_id, s.workspace_key, s.workspace_label, at if s.workspace_key else None,
            s.provider, at if s.provider else None, s.model, at if s.model else None,
            s.created_at_ms, s.updated_at_ms,
        )  # fmt: skip
        _put(sessions, s.thread_id, row, merge_session)
    # _put inlined: a merge only for a key met before
    for fact in batch.events:
        kind = fact[0]
        if kind == CALL:
            (_, session, key, at, model, prompt, completion, cached, creation, creation_1h,
             message_id, sidechain, final, prompt_id) = fact  # fmt: skip
            cls = _CALL_ROWS[sidechain]
            classes[cls[0]] = cls
            row = (
                session, key, at, prompt, completion, prompt + completion, cached, creation,
                creation_1h, PROVIDER, model, message_id, 1 if sidechain else 0, prompt_id,
                activity_id(session, key, kind) if final else None, cls[0],
            )  # fmt: skip
            old = calls.get(key := (session, key))
            calls[key] = row if old is None else merge_call(old, row)
            if prompt_id is not None and model is not None:
                # the prompt's turn: its model is its latest call's (as a Roder
                # turn's is its last inference's)
                row = (
                    session, prompt_id, None, None, PROVIDER, model, at, None, None, None,
                    *NO_EVENTS,
                )  # fmt: skip
                old = turns.get(key := (session, prompt_id))
                turns[key] = row if old is None else merge_turn(old, row)
        elif kind == TOOL_USE:
            _, session, tool_id, name, at, _side, prompt_id = fact
            row = (session, NO_TURN, tool_id, name, at, None, None, None, None, prompt_id)
            old = tools.get(key := (session, NO_TURN, tool_id))
            tools[key] = row if old is None else merge_tool(old, row)
        elif kind == TOOL_RESULT:
            _, session, tool_id, at, is_error, side, prompt_id = fact
            cls = _TOOL_ROWS[bool(is_error), side]
            classes[cls[0]] = cls
            row = (
                session, NO_TURN, tool_id, None, None, at, 1 if is_error else 0,
                activity_id(session, tool_id, kind), cls[0], prompt_id,
            )  # fmt: skip
            old = tools.get(key := (session, NO_TURN, tool_id))
            tools[key] = row if old is None else merge_tool(old, row)
        elif kind == PROMPT:
            _, session, uuid, at, side = fact
            cls = _PROMPT_ROWS[side]
            classes[cls[0]] = cls
            row = (
                session, uuid, None, at, PROVIDER, None, None, None, None, None,
                activity_id(session, uuid, kind), cls[0], None, None,
            )  # fmt: skip
            old = turns.get(key := (session, uuid))
            turns[key] = row if old is None else merge_turn(old, row)
    rows = Rows(
        sessions=list(sessions.values()),
        turns=list(turns.values()),
        tool_calls=list(tools.values()),
        api_calls=list(calls.values()),
        activity=list({row[0]: row for row in batch.activity}.values()),
        activity_classes=[*batch.activity_classes, *classes.values()],
    )
    return dataclasses.replace(
        batch, events=[], sessions=[], activity=[], activity_classes=[], thread_owners=[],
        rows=rows,
    )  # fmt: skip
