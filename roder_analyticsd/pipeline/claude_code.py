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
- a prompt is a turn, keyed by its line's uuid.

Every merge is a max over a total order, so rows converge whatever order
the lines arrive in, however often they are replayed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

from roder_analyticsd.pipeline.attribute import ERROR, FEATURE, class_row
from roder_analyticsd.pipeline.batch import Batch, Rows
from roder_analyticsd.pipeline.project import _put, merge_session, merge_tool_call, merge_turn
from roder_analyticsd.sources.claude_code import CALL, PROMPT, PROVIDER, TOOL_RESULT, TOOL_USE

# Claude Code's tool calls are not tied to a turn (a tool_result line does
# not say which prompt it answers): they share this turn id.
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
_ACTIVITY_ID = struct.Struct(">q").unpack  # = attribute.activity_id's int.from_bytes


def attribute(batch: Batch) -> Batch:
    """A prompt is a loop_start, an API call a model_request (once: on the
    line that ends its stream), a tool result a tool_call."""
    activity: list[tuple] = []
    classes: dict[int, tuple] = {}
    keep = activity.append
    blake2b = hashlib.blake2b
    unpack = _ACTIVITY_ID
    for fact in batch.events:
        kind = fact[0]
        if kind == CALL:
            if not fact[12]:
                continue  # a partial line of a streamed response
            session, ident, at = fact[1], fact[2], fact[3]
            row, provider, model = _CALL_ROWS[fact[11]], PROVIDER, fact[4]
        elif kind == TOOL_RESULT:
            _, session, ident, at, is_error, side = fact
            row, provider, model = _TOOL_ROWS[bool(is_error), side], None, None
        elif kind == PROMPT:
            _, session, ident, at, side = fact
            row, provider, model = _PROMPT_ROWS[side], None, None
        else:  # TOOL_USE: its result is the tool_call
            continue
        class_id = row[0]
        classes[class_id] = row
        # activity_id(session, ident, kind), inlined
        raw = f"{session or ''}\x00{ident}\x00{kind}".encode()
        keep((unpack(blake2b(raw, digest_size=8).digest())[0], session, at, class_id, provider,
              model))  # fmt: skip
    return dataclasses.replace(
        batch, activity=activity, activity_classes=list(classes.values()), thread_owners=[]
    )


# api_calls: (thread_id, turn_id = call key, recorded_at_ms, prompt, completion, total,
#             cached, cache_creation, cache_creation_1h, provider, model, message_id,
#             is_sidechain)
def call_rank(row: tuple) -> tuple:
    """The total order of a call's copies: a non-sidechain copy first, then the
    largest total (the final state of a stream), then the latest."""
    return (-row[12], row[5], row[2], row[4], row[10] or "")


def merge_call(a: tuple, b: tuple) -> tuple:
    return b if call_rank(b) > call_rank(a) else a


def project(batch: Batch) -> Batch:
    sessions: dict[str, tuple] = {}
    turns: dict[tuple, tuple] = {}
    tools: dict[tuple, tuple] = {}
    calls: dict[tuple, tuple] = {}
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
             message_id, sidechain, _final) = fact  # fmt: skip
            row = (
                session, key, at, prompt, completion, prompt + completion, cached, creation,
                creation_1h, PROVIDER, model, message_id, 1 if sidechain else 0,
            )  # fmt: skip
            old = calls.get(key := (session, key))
            calls[key] = row if old is None or call_rank(row) > call_rank(old) else old
        elif kind == TOOL_USE:
            _, session, tool_id, name, at, _side = fact
            row = (session, NO_TURN, tool_id, name, at, None, None)
            old = tools.get(key := (session, NO_TURN, tool_id))
            tools[key] = row if old is None else merge_tool_call(old, row)
        elif kind == TOOL_RESULT:
            _, session, tool_id, at, is_error, _side = fact
            row = (session, NO_TURN, tool_id, None, None, at, 1 if is_error else 0)
            old = tools.get(key := (session, NO_TURN, tool_id))
            tools[key] = row if old is None else merge_tool_call(old, row)
        elif kind == PROMPT:
            _, session, uuid, at, _side = fact
            row = (session, uuid, None, at, PROVIDER, None, None, None, None, None)
            old = turns.get(key := (session, uuid))
            turns[key] = row if old is None else merge_turn(old, row)
    rows = Rows(
        sessions=list(sessions.values()),
        turns=list(turns.values()),
        tool_calls=list(tools.values()),
        api_calls=list(calls.values()),
        activity=list({row[0]: row for row in batch.activity}.values()),
        activity_classes=batch.activity_classes,
    )
    return dataclasses.replace(
        batch, events=[], sessions=[], activity=[], activity_classes=[], thread_owners=[],
        rows=rows,
    )  # fmt: skip
