"""Stage 3: classify each projected event in analytics.v2 terms. Pure.

Who owns a thread (a user, a parent thread's subagent, an automation run)
is often only known from another file, or later. So this stage records two
things: an activity row whose owner fields are set only where the mapping
fixes them, and ownership facts about threads. The store resolves the
owner at query time (see `store/schema.py`, view `activity_v2`), so counts
are exact whatever order the files arrive in.
"""

from __future__ import annotations

import dataclasses
import hashlib

from roder_analyticsd import events as ev
from roder_analyticsd.pipeline.batch import Batch, Event

FEATURE = "feature_used"
ERROR = "error_occurred"

# TurnFailed.error_kind → errorCategory
_FAILED_CATEGORY = {
    "provider": "model_request_error",
    "tool": "tool_runtime_error",
    "timeout": "loop_error",
}


def activity_id(thread_id: str | None, event_id: str, kind: str) -> str:
    """A stable analytics.v2 eventId: replays of a line map to the same id."""
    raw = f"{thread_id or ''}\x00{event_id}\x00{kind}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def classify(event: Event) -> tuple | None:
    """(eventName, module, ownerModule, executionKind, loopStage, outcome,
    errorCategory, phase, provider, model) for one event, or None."""
    p = event.payload
    kind = event.kind
    if isinstance(p, ev.TurnStarted):
        return (FEATURE, "session", None, None, "loop_start", None, None, None, None, None)
    if isinstance(p, ev.InferenceStarted):
        provider = p.model.provider if p.model else None
        model = p.model.model if p.model else None
        return (FEATURE, "session", None, None, "model_request", None, None, None, provider, model)
    if isinstance(p, ev.InferenceRoutingDecision):
        fallback = p.decision is not None and p.decision.outcome == "fallback"
        sel = p.selected_selection
        return (
            FEATURE, "router", None, "router_judge", "module_event",
            "failed" if fallback else "success", None,
            "fallback" if fallback else "decision",
            sel.provider if sel else None, sel.model if sel else None,
        )  # fmt: skip
    if isinstance(p, ev.ToolCallValidationRecorded):
        return (ERROR, "session", None, None, "tool_prepare", "failed", "tool_param_error",
                None, None, None)  # fmt: skip
    if isinstance(p, ev.ApprovalResolved):
        if p.approved:
            return (FEATURE, "session", None, None, "permission_check", "success", None,
                    None, None, None)  # fmt: skip
        return (ERROR, "session", None, None, "permission_check", "denied", "permission_error",
                None, None, None)  # fmt: skip
    if isinstance(p, ev.ToolCallCompleted):
        if p.is_error:
            return (ERROR, "session", None, None, "tool_call", "failed", "tool_runtime_error",
                    None, None, None)  # fmt: skip
        return (FEATURE, "session", None, None, "tool_call", "success", None, None, None, None)
    if isinstance(p, ev.TurnCompleted):
        return (FEATURE, "session", None, None, "loop_end", "success", None, None, None, None)
    if isinstance(p, ev.TurnFailed):
        category = _FAILED_CATEGORY.get(p.error_kind or "", "runtime_error")
        return (ERROR, "session", None, None, "loop_end", "failed", category, None, None, None)
    if kind == "turn.interrupted":
        return (FEATURE, "session", None, None, "loop_end", "aborted", None, None, None, None)
    if kind == "turn.deadline_exceeded":
        return (ERROR, "session", None, None, "loop_end", "timeout", "loop_error",
                None, None, None)  # fmt: skip
    if isinstance(p, ev.ContextCompactionRecorded):
        return (FEATURE, "session", None, "compaction", "module_event", "success", None,
                "compaction", None, None)  # fmt: skip
    if isinstance(p, ev.AutomationEvent):
        stage = kind.rsplit(".", 1)[1]
        if stage == "failed":
            return (ERROR, "cron_job", "cron_job", "cron_job", "loop_end", "failed",
                    "runtime_error", stage, None, None)  # fmt: skip
        loop_stage = "loop_start" if stage == "started" else "loop_end"
        outcome = None if stage == "started" else "success"
        return (FEATURE, "cron_job", "cron_job", "cron_job", loop_stage, outcome, None,
                stage, None, None)  # fmt: skip
    if kind.startswith("memory."):
        return (FEATURE, "memory", "memory", "memory", "module_event", None, None,
                kind.split(".", 1)[1], None, None)  # fmt: skip
    return None


def _thread_of(event: Event) -> str | None:
    thread_id = getattr(event.payload, "thread_id", None)
    if isinstance(event.payload, ev.AutomationEvent):
        thread_id = event.payload.run.thread_id
    return thread_id or event.thread_id


def _turn_of(event: Event) -> str | None:
    if isinstance(event.payload, ev.AutomationEvent):
        return event.payload.run.turn_id
    return getattr(event.payload, "turn_id", None)


def attribute(batch: Batch) -> Batch:
    activity: list[tuple] = []
    owners: list[tuple] = []
    for event in batch.events:
        p = event.payload
        if isinstance(p, ev.SubagentEvent):
            owners.append((p.thread_id, "subagent", p.parent_thread_id))
        elif isinstance(p, ev.AutomationEvent) and p.run.thread_id:
            owners.append((p.run.thread_id, "cron_job", None))
        fields = classify(event)
        if fields is None:
            continue
        thread_id = _thread_of(event)
        activity.append(
            (activity_id(thread_id, event.event_id, event.kind), thread_id, _turn_of(event),
             event.at_ms, *fields)
        )  # fmt: skip
    return dataclasses.replace(batch, activity=activity, thread_owners=owners)
