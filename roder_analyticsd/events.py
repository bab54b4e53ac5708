"""Typed views of Roder's event lines: only the fields we project.

msgspec skips every field a Struct does not declare, so prompt text, tool
output, payloads, error messages and titles are parsed past without ever
becoming Python objects.
"""

from __future__ import annotations

import msgspec


class _Base(msgspec.Struct, gc=False):
    pass


class ModelRef(_Base):
    provider: str | None = None
    model: str | None = None


class TokenUsage(_Base):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    cache_creation_prompt_tokens: int = 0


class ThreadEvent(_Base):
    """ThreadCreated / ThreadLoaded."""

    thread_id: str
    timestamp: str


class TurnStarted(_Base):
    thread_id: str
    turn_id: str
    timestamp: str
    runtime_profile: str | None = None


class TurnEvent(_Base):
    """TurnInterrupted / TurnDeadlineExceeded: identity and time only."""

    thread_id: str
    turn_id: str
    timestamp: str


class TurnCompleted(_Base):
    thread_id: str
    turn_id: str
    timestamp: str
    usage: TokenUsage | None = None


class TurnFailed(_Base):
    thread_id: str
    turn_id: str
    timestamp: str
    error_kind: str | None = None
    usage: TokenUsage | None = None


class InferenceStarted(_Base):
    thread_id: str
    turn_id: str
    timestamp: str
    model: ModelRef | None = None


class RoutingDecision(_Base):
    outcome: str | None = None


class InferenceRoutingDecision(_Base):
    thread_id: str
    turn_id: str
    timestamp: str
    selected_selection: ModelRef | None = None
    decision: RoutingDecision | None = None


class ToolCallStarted(_Base):
    thread_id: str
    turn_id: str
    tool_id: str
    timestamp: str
    tool_name: str | None = None


class ToolCallCompleted(_Base):
    thread_id: str
    turn_id: str
    tool_id: str
    timestamp: str
    tool_name: str | None = None
    is_error: bool = False


class ToolCallValidationRecorded(_Base):
    thread_id: str
    turn_id: str
    timestamp: str
    tool_name: str | None = None


class ApprovalResolved(_Base):
    thread_id: str
    turn_id: str
    timestamp: str
    approved: bool = True
    tool_name: str | None = None


class SubagentEvent(_Base):
    thread_id: str
    timestamp: str
    parent_thread_id: str | None = None


class ContextCompactionRecorded(_Base):
    thread_id: str
    timestamp: str
    turn_id: str | None = None


class AutomationRun(_Base, rename="camel"):
    run_id: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None


class AutomationEvent(_Base):
    run: AutomationRun
    timestamp: str


class TimestampOnly(_Base):
    timestamp: str


class EventBody(_Base):
    """The externally tagged `event` object: at most one of these is set.

    Any other variant leaves every field None and is counted by `kind`.
    """

    ThreadCreated: ThreadEvent | None = None
    ThreadLoaded: ThreadEvent | None = None
    TurnStarted: TurnStarted | None = None
    TurnCompleted: TurnCompleted | None = None
    TurnFailed: TurnFailed | None = None
    TurnInterrupted: TurnEvent | None = None
    TurnDeadlineExceeded: TurnEvent | None = None
    InferenceStarted: InferenceStarted | None = None
    InferenceRoutingDecision: InferenceRoutingDecision | None = None
    ToolCallStarted: ToolCallStarted | None = None
    ToolCallCompleted: ToolCallCompleted | None = None
    ToolCallValidationRecorded: ToolCallValidationRecorded | None = None
    ApprovalResolved: ApprovalResolved | None = None
    SubagentStarted: SubagentEvent | None = None
    SubagentCompleted: SubagentEvent | None = None
    SubagentFailed: SubagentEvent | None = None
    ContextCompactionRecorded: ContextCompactionRecorded | None = None
    AutomationStarted: AutomationEvent | None = None
    AutomationCompleted: AutomationEvent | None = None
    AutomationFailed: AutomationEvent | None = None


class Envelope(_Base):
    event_id: str
    kind: str
    timestamp: str
    event: EventBody
    thread_id: str | None = None
    turn_id: str | None = None


class MemoryEnvelope(_Base):
    """Second look at a `memory.*` line: the payload's timestamp, nothing else."""

    event: dict[str, TimestampOnly]


class ThreadMetadata(_Base):
    """metadata.json: `title` and the rest are never decoded."""

    thread_id: str
    workspace: str | None = None
    provider: str | None = None
    model: str | None = None
    created_at: str | None = None
    updated_at: str | None = None


PROJECTED_KINDS = frozenset(
    {
        "thread.created",
        "thread.loaded",
        "turn.started",
        "turn.completed",
        "turn.failed",
        "turn.interrupted",
        "turn.deadline_exceeded",
        "inference.started",
        "inference.routing_decision",
        "tool.call_started",
        "tool.call_completed",
        "tool.call_validation",
        "approval.resolved",
        "subagent.started",
        "subagent.completed",
        "subagent.failed",
        "context.compaction_recorded",
        "automation.started",
        "automation.completed",
        "automation.failed",
    }
)
