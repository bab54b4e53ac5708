"""Roder's logs: where they are (discovery), what a line is (typed views of
only the fields we project) and the decode stage (bytes → typed events).

msgspec skips every field a Struct does not declare, so prompt text, tool
output, payloads, error messages and titles are parsed past without ever
becoming Python objects.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path

import msgspec

from roder_analyticsd.bounds import MAX_TIME_MS, MIN_TIME_MS, TokenCount, check_time_ms
from roder_analyticsd.pipeline.batch import Batch, Event, ParseError
from roder_analyticsd.sources.files import FileError, describe, open_regular, relative
from roder_analyticsd.timewindow import rfc3339_to_ms


class _Base(msgspec.Struct, gc=False):
    pass


class ModelRef(_Base):
    provider: str | None = None
    model: str | None = None


class TokenUsage(_Base):
    """Counts outside [0, MAX_TOKENS] fail the line's decode (see bounds)."""

    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0
    total_tokens: TokenCount = 0
    cached_prompt_tokens: TokenCount = 0
    cache_creation_prompt_tokens: TokenCount = 0


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


# --- discovery ---------------------------------------------------------------

EVENT_DIRS = ("threads", "archived_threads")
EVENTS_FILE = "events.jsonl"
METADATA_FILE = "metadata.json"


def discover(data_dir: Path) -> tuple[list[Path], list[Path]]:
    """Every events.jsonl and metadata.json under threads/ and archived_threads/."""
    events: list[Path] = []
    metadata: list[Path] = []
    for sub in EVENT_DIRS:
        root = data_dir / sub
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if not entry.is_dir():
                    continue
            except OSError:
                continue
            thread_dir = Path(entry.path)
            events.append(thread_dir / EVENTS_FILE)
            metadata.append(thread_dir / METADATA_FILE)
    return events, metadata


MAX_METADATA_BYTES = 1 << 20  # a real metadata.json is a few hundred bytes
METADATA_READ_STEP = 64 << 10  # reads past the size fstat gave (a file still being written)


def _read_bounded(path: Path) -> bytes | None:
    """The file's bytes; None when it is over MAX_METADATA_BYTES (never read whole)."""
    with open_regular(path) as fh:
        # Ask for what the file holds (+1 to see its end), not for the bound:
        # a read of the bound allocates 1 MiB, and the few hundred bytes it
        # shrinks to keep a whole page each (~4 KiB a file, ~45 MB for 10k
        # threads). A file that grew since fstat is read on, to the bound.
        want = min(os.fstat(fh.fileno()).st_size, MAX_METADATA_BYTES) + 1
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_METADATA_BYTES and (chunk := fh.read(want)):
            chunks.append(chunk)
            total += len(chunk)
            want = min(METADATA_READ_STEP, MAX_METADATA_BYTES + 1 - total)
    raw = b"".join(chunks)
    return raw if len(raw) <= MAX_METADATA_BYTES else None


def read_metadata(
    paths: list[Path], data_dir: Path
) -> tuple[list[tuple[str, bytes]], list[FileError]]:
    files: list[tuple[str, bytes]] = []
    problems: list[FileError] = []
    for path in paths:
        try:
            raw = _read_bounded(path)
            if raw is None:
                message = f"larger than {MAX_METADATA_BYTES} bytes: not a thread's metadata"
                problems.append(FileError(relative(path, data_dir), message))
            else:
                files.append((relative(path, data_dir), raw))
        except FileNotFoundError:
            continue  # metadata.json may be missing; the thread dir may be gone
        except NotADirectoryError:
            continue
        except OSError as exc:
            problems.append(FileError(relative(path, data_dir), describe(exc)))
    return files, problems


# --- decode stage: bytes → typed events. Pure: a Batch of raw lines in, events out.
# A line that is not a valid envelope becomes a ParseError naming file:line,
# and so does one whose token counts or projected time lie outside `bounds`;
# a valid envelope of a variant we don't project is only counted by kind.

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
        at = rfc3339_to_ms(payload.timestamp)
        if not MIN_TIME_MS <= at < MAX_TIME_MS:  # check_time_ms, inlined
            check_time_ms(at)
        return Event(env.kind, payload, at, env.event_id, env.thread_id)
    if not env.kind.startswith("memory."):
        # counted by kind, projected nowhere: its time is not needed
        return Event(env.kind, None, 0, env.event_id, env.thread_id)
    try:
        bodies = _memory.decode(line).event
    except msgspec.DecodeError as exc:
        raise ValueError(_short(exc)) from None
    stamp = next(iter(bodies.values())).timestamp if bodies else env.timestamp
    return Event(env.kind, None, check_time_ms(rfc3339_to_ms(stamp)), env.event_id,
                 env.thread_id)  # fmt: skip


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
    # the source's own (a runaway line) come first: they precede the lines
    errors: list[ParseError] = list(batch.errors)
    unknown: Counter[str] = Counter()
    ingested = 0
    decode_envelope = _envelope.decode
    keep = events.append
    number = batch.first_line_no - 1
    variant_of = _VARIANT_OF_KIND.get
    for line in batch.lines:
        number += 1
        try:
            env = decode_envelope(line)
            kind = env.kind
            variant = variant_of(kind)
            payload = getattr(env.event, variant) if variant is not None else None
            if payload is not None:  # _event's common case, inlined
                at = rfc3339_to_ms(payload.timestamp)
                if not MIN_TIME_MS <= at < MAX_TIME_MS:
                    check_time_ms(at)
                ingested += 1
                keep(Event(kind, payload, at, env.event_id, env.thread_id))
                continue
            if not kind.startswith("memory."):
                # counted by kind, projected nowhere (as _event + below)
                ingested += 1
                unknown[kind] += 1
                continue
            event = _event(env, line)
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
