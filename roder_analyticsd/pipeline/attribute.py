"""Stage 3: classify each projected event in analytics.v2 terms. Pure.

Who owns a thread (a user, a parent thread's subagent, an automation run)
is often only known from another file, or later. So this stage records two
things: an activity row whose owner fields are set only where the mapping
fixes them, and ownership facts about threads. The store resolves the
owner at query time (see `store/schema.py`, view `activity_v2`), so counts
are exact whatever order the files arrive in. The events of a tool call's
completion and of a turn's start and end get no activity row: `project`
keeps their id and class on the tool call's and the turn's row.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct

from roder_analyticsd.pipeline.batch import Batch, Event
from roder_analyticsd.sources import roder as ev

FEATURE = "feature_used"
ERROR = "error_occurred"

# TurnFailed.error_kind → errorCategory
_FAILED_CATEGORY = {
    "provider": "model_request_error",
    "tool": "tool_runtime_error",
    "timeout": "loop_error",
}


def activity_id(thread_id: str | None, event_id: str, kind: str) -> int:
    """A stable 64-bit id for the activity row of one source line.

    Replays of a line map to the same id; the analytics.v2 eventId is its
    16-hex-digit form (see `event_id_hex`).
    """
    raw = f"{thread_id or ''}\x00{event_id}\x00{kind}".encode()
    return _read_id(hashlib.blake2b(raw, digest_size=8).digest())[0]


# int.from_bytes(digest, "big", signed=True), precompiled
_read_id = struct.Struct(">q").unpack


def event_id_hex(activity_id: int) -> str:
    return f"{activity_id & 0xFFFFFFFFFFFFFFFF:016x}"


# (eventName, module, ownerModule, executionKind, loopStage, outcome,
#  errorCategory, phase, provider, model); owner fields None = the thread's owner
_FIXED: dict[str, tuple] = {
    "turn.started": (FEATURE, "session", None, None, "loop_start", None, None, None, None, None),
    "tool.call_validation": (
        ERROR, "session", None, None, "tool_prepare", "failed", "tool_param_error", None, None, None
    ),
    "turn.completed": (
        FEATURE, "session", None, None, "loop_end", "success", None, None, None, None
    ),
    "turn.interrupted": (
        FEATURE, "session", None, None, "loop_end", "aborted", None, None, None, None
    ),
    "turn.deadline_exceeded": (
        ERROR, "session", None, None, "loop_end", "timeout", "loop_error", None, None, None
    ),
    "context.compaction_recorded": (
        FEATURE, "session", None, "compaction", "module_event", "success", None, "compaction", None,
        None,
    ),
    "automation.started": (
        FEATURE, "cron_job", "cron_job", "cron_job", "loop_start", None, None, "started", None, None
    ),
    "automation.completed": (
        FEATURE, "cron_job", "cron_job", "cron_job", "loop_end", "success", None, "completed", None,
        None,
    ),
    "automation.failed": (
        ERROR, "cron_job", "cron_job", "cron_job", "loop_end", "failed", "runtime_error", "failed",
        None, None,
    ),
}  # fmt: skip
_TOOL_OK = (FEATURE, "session", None, None, "tool_call", "success", None, None, None, None)
_TOOL_ERROR = (
    ERROR, "session", None, None, "tool_call", "failed", "tool_runtime_error", None, None, None
)  # fmt: skip
_APPROVED = (FEATURE, "session", None, None, "permission_check", "success", None, None, None, None)
_DENIED = (
    ERROR, "session", None, None, "permission_check", "denied", "permission_error", None, None, None
)  # fmt: skip


def classify(event: Event) -> tuple | None:
    """The analytics.v2 fields of one event (see _FIXED), or None if unmapped."""
    kind = event.kind
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed
    p = event.payload
    if isinstance(p, ev.ToolCallCompleted):
        return _TOOL_ERROR if p.is_error else _TOOL_OK
    if isinstance(p, ev.InferenceStarted):
        provider = p.model.provider if p.model else None
        model = p.model.model if p.model else None
        return (FEATURE, "session", None, None, "model_request", None, None, None, provider, model)
    if isinstance(p, ev.ApprovalResolved):
        return _APPROVED if p.approved else _DENIED
    if isinstance(p, ev.TurnFailed):
        category = _FAILED_CATEGORY.get(p.error_kind or "", "runtime_error")
        return (ERROR, "session", None, None, "loop_end", "failed", category, None, None, None)
    if isinstance(p, ev.InferenceRoutingDecision):
        fallback = p.decision is not None and p.decision.outcome == "fallback"
        sel = p.selected_selection
        return (
            FEATURE, "router", None, "router_judge", "module_event",
            "failed" if fallback else "success", None,
            "fallback" if fallback else "decision",
            sel.provider if sel else None, sel.model if sel else None,
        )  # fmt: skip
    if kind.startswith("memory."):
        return (FEATURE, "memory", "memory", "memory", "module_event", None, None,
                kind.split(".", 1)[1], None, None)  # fmt: skip
    return None


@functools.lru_cache(maxsize=1024)
def class_row(fields: tuple) -> tuple:
    """(class_id, *fields) for one classification (the first eight fields);
    class_id is a stable 64-bit hash, the same in every store."""
    raw = "\x00".join("" if f is None else f for f in fields).encode()
    cid = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)
    return (cid, *fields)


_FIXED_ROWS = {kind: class_row(fields[:8]) for kind, fields in _FIXED.items()}


# the classes of the most frequent lines, found without `classify`
_TOOL_ROWS = {False: class_row(_TOOL_OK[:8]), True: class_row(_TOOL_ERROR[:8])}
_INFERENCE_ROW = class_row(
    (FEATURE, "session", None, None, "model_request", None, None, None)
)  # provider and model are the activity row's, not the class's


# Kinds whose analytics.v2 event is kept on the row it projects to, not as
# an activity row (see store/schema.py, view `activity_events`): a tool
# call's completion, a turn's start and its end. A tool call's start has
# no event of its own: its completion is the tool_call.
TURN_ENDS = ("turn.completed", "turn.failed", "turn.interrupted", "turn.deadline_exceeded")
DERIVED = frozenset(("tool.call_started", "tool.call_completed", "turn.started", *TURN_ENDS))


def tool_class(is_error: bool) -> tuple:
    """The class row of a tool call's completion."""
    return _TOOL_ROWS[bool(is_error)]


def turn_class(kind: str, error_kind: str | None) -> tuple:
    """The class row of a turn's start or end (`error_kind`: TurnFailed's)."""
    if kind == "turn.failed":
        category = _FAILED_CATEGORY.get(error_kind or "", "runtime_error")
        return class_row((ERROR, "session", None, None, "loop_end", "failed", category, None))
    return _FIXED_ROWS[kind]


def attribute(batch: Batch) -> Batch:
    activity: list[tuple] = []
    classes: dict[int, tuple] = {}
    owners: list[tuple] = []
    same = {}.setdefault  # one str object per distinct value: smaller pickles (see project)
    keep = activity.append
    blake2b = hashlib.blake2b
    read_id = _read_id
    for event in batch.events:
        p = event.payload
        kind = event.kind
        provider = model = None
        if kind == "inference.started":
            row = _INFERENCE_ROW
            ref = p.model
            if ref is not None:
                provider, model = ref.provider, ref.model
            thread_id = p.thread_id or event.thread_id
        elif kind in DERIVED:
            continue  # the rows of its tool call or turn hold its event (see project)
        else:
            row = _FIXED_ROWS.get(kind)
            if isinstance(p, ev.AutomationEvent):
                thread_id = p.run.thread_id or event.thread_id
                if p.run.thread_id:
                    owners.append((p.run.thread_id, "cron_job", None))
            else:
                thread_id = getattr(p, "thread_id", None) or event.thread_id
            if row is None:
                if isinstance(p, ev.SubagentEvent):
                    owners.append((p.thread_id, "subagent", p.parent_thread_id))
                fields = classify(event)
                if fields is None:
                    continue
                row = class_row(fields[:8])
                provider, model = fields[8], fields[9]
        classes[row[0]] = row
        # activity_id(thread_id, event.event_id, kind), inlined
        raw = f"{thread_id or ''}\x00{event.event_id}\x00{kind}".encode()
        keep(
            (read_id(blake2b(raw, digest_size=8).digest())[0], same(thread_id, thread_id),
             event.at_ms, row[0], same(provider, provider), same(model, model))
        )  # fmt: skip
    return dataclasses.replace(
        batch, activity=activity, activity_classes=list(classes.values()), thread_owners=owners
    )
