"""Stage 1: bytes → typed events. Pure: a Batch of raw lines in, events out.

A line that is not a valid envelope becomes a ParseError naming file:line;
a valid envelope of a variant we don't project is only counted by kind.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import msgspec

from roder_analyticsd.events import (
    PROJECTED_KINDS,
    Envelope,
    MemoryEnvelope,
    ThreadMetadata,
)
from roder_analyticsd.pipeline.batch import Batch, Event, ParseError
from roder_analyticsd.timewindow import rfc3339_to_ms

_envelope = msgspec.json.Decoder(Envelope)
_memory = msgspec.json.Decoder(MemoryEnvelope)
_metadata = msgspec.json.Decoder(ThreadMetadata)

# kind → the EventBody attribute that carries its payload
_VARIANT_OF_KIND = {
    "thread.created": "ThreadCreated",
    "thread.loaded": "ThreadLoaded",
    "turn.started": "TurnStarted",
    "turn.completed": "TurnCompleted",
    "turn.failed": "TurnFailed",
    "turn.interrupted": "TurnInterrupted",
    "turn.deadline_exceeded": "TurnDeadlineExceeded",
    "inference.started": "InferenceStarted",
    "inference.routing_decision": "InferenceRoutingDecision",
    "tool.call_started": "ToolCallStarted",
    "tool.call_completed": "ToolCallCompleted",
    "tool.call_validation": "ToolCallValidationRecorded",
    "approval.resolved": "ApprovalResolved",
    "subagent.started": "SubagentStarted",
    "subagent.completed": "SubagentCompleted",
    "subagent.failed": "SubagentFailed",
    "context.compaction_recorded": "ContextCompactionRecorded",
    "automation.started": "AutomationStarted",
    "automation.completed": "AutomationCompleted",
    "automation.failed": "AutomationFailed",
}
assert set(_VARIANT_OF_KIND) == PROJECTED_KINDS

_MAX_MESSAGE = 200


def _short(exc: Exception) -> str:
    # msgspec messages name the failing JSON path, never the offending value.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:_MAX_MESSAGE]


def _event(env: Envelope, line: bytes) -> Event:
    """The Event of a decoded envelope; payload None for a variant we don't
    project. Raises ValueError (a bad timestamp, a bad memory body)."""
    variant = _VARIANT_OF_KIND.get(env.kind)
    payload = getattr(env.event, variant) if variant is not None else None
    if payload is not None:
        return Event(env.kind, payload, rfc3339_to_ms(payload.timestamp), env.event_id,
                     env.thread_id)  # fmt: skip
    if not env.kind.startswith("memory."):
        # counted by kind, projected nowhere: its time is not needed
        return Event(env.kind, None, 0, env.event_id, env.thread_id)
    try:
        bodies = _memory.decode(line).event
    except msgspec.DecodeError as exc:
        raise ValueError(_short(exc)) from None
    stamp = next(iter(bodies.values())).timestamp if bodies else env.timestamp
    return Event(env.kind, None, rfc3339_to_ms(stamp), env.event_id, env.thread_id)


def decode_line(line: bytes) -> Event | None:
    """Decode one complete line; None for a blank line. Raises ValueError."""
    if not line or line.isspace():
        return None
    try:
        env = _envelope.decode(line)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise ValueError(_short(exc)) from None
    return _event(env, line)


def decode(batch: Batch) -> Batch:
    # decode_line's work, inlined: this loop runs once per input line
    events: list[Event] = []
    errors: list[ParseError] = []
    unknown: Counter[str] = Counter()
    ingested = 0
    decode_envelope = _envelope.decode
    keep = events.append
    number = batch.first_line_no - 1
    for line in batch.lines:
        number += 1
        try:
            event = _event(decode_envelope(line), line)
        except msgspec.DecodeError as exc:
            if line and not line.isspace():  # a blank line is no error
                errors.append(ParseError(batch.path, number, _short(exc)))
            continue
        except ValueError as exc:
            errors.append(ParseError(batch.path, number, str(exc)))
            continue
        ingested += 1
        if event.payload is None:
            unknown[event.kind] += 1
            if not event.kind.startswith("memory."):
                continue  # nothing downstream projects it: counted, then dropped
        keep(event)

    metadata: list[ThreadMetadata] = []
    for path, raw in batch.metadata_files:
        try:
            metadata.append(_metadata.decode(raw))
        except msgspec.DecodeError as exc:
            errors.append(ParseError(path, 0, _short(exc)))

    return dataclasses.replace(
        batch,
        lines=[],  # raw bytes (bodies included) are not kept past the decoder
        metadata_files=[],
        events=events,
        metadata=metadata,
        errors=errors,
        unknown_kinds=unknown,
        lines_ingested=ingested,
    )
