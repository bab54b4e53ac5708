"""What flows between the stages: one `Batch` per chunk of input."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:  # sources build Batches: a runtime import would be a cycle
    from roder_analyticsd.sources.roder import ThreadMetadata


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A file's identity survives renames (archiving) but not replacement."""

    dev: int
    ino: int

    @property
    def key(self) -> str:
        return f"{self.dev}:{self.ino}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a file has been consumed: just past its last complete line."""

    identity: FileIdentity
    path: str  # relative to the data dir
    offset: int
    line_no: int  # complete lines consumed so far
    fp_len: int  # bytes covered by the fingerprint
    fp_hash: str  # hash of the file's first fp_len bytes
    # the decoder's state at `offset`, opaque here (Claude Code: each
    # session's current prompt, sources/claude_code.py); None for Roder's
    prompts: str | None = None


@dataclass(frozen=True, slots=True)
class ParseError:
    path: str
    line: int
    message: str


class Event(msgspec.Struct, gc=False):
    """A decoded, projected line: its kind, typed payload and time in ms."""

    kind: str
    payload: Any  # one of the payload Structs in roder_analyticsd.sources.roder, or None
    at_ms: int
    event_id: str
    thread_id: str | None


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """A metadata.json after redaction: the workspace only as key + label."""

    thread_id: str
    workspace_key: str | None
    workspace_label: str | None
    provider: str | None
    model: str | None
    created_at_ms: int | None
    updated_at_ms: int | None


@dataclass(slots=True)
class Rows:
    """Parameter tuples for the writer's prepared upserts, table by table."""

    sessions: list[tuple] = field(default_factory=list)
    turns: list[tuple] = field(default_factory=list)
    tool_calls: list[tuple] = field(default_factory=list)
    token_usage: list[tuple] = field(default_factory=list)
    activity: list[tuple] = field(default_factory=list)
    activity_classes: list[tuple] = field(default_factory=list)
    thread_owners: list[tuple] = field(default_factory=list)
    # Claude Code's API calls (token_usage rows with their own model; see
    # pipeline/claude_code.py)
    api_calls: list[tuple] = field(default_factory=list)

    def count(self) -> int:
        return (
            len(self.api_calls)
            + len(self.sessions)
            + len(self.turns)
            + len(self.tool_calls)
            + len(self.token_usage)
            + len(self.activity)
            + len(self.thread_owners)
        )


@dataclass(slots=True)
class Batch:
    """One unit of work; each stage fills in what the next one needs."""

    # from the source
    agent: str = "roder"  # whose log format: roder | claude-code (picks the decoder)
    path: str = ""
    first_line_no: int = 1  # 1-based number of lines[0]
    lines: list[bytes] = field(default_factory=list)
    metadata_files: list[tuple[str, bytes]] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    # the decoder's state before lines[0]: the checkpoint's, for a read's
    # first chunk; a later chunk of the same read `continues` from the state
    # its predecessor ended in (pipeline/chain.py carries it)
    prompts: str | None = None
    continues: bool = False
    # from decode
    events: list[Event] = field(default_factory=list)
    metadata: list[ThreadMetadata] = field(default_factory=list)
    errors: list[ParseError] = field(default_factory=list)
    unknown_kinds: Counter[str] = field(default_factory=Counter)
    lines_ingested: int = 0
    # from redact
    sessions: list[SessionFacts] = field(default_factory=list)
    # from attribute: activity rows, their classes, thread ownership facts
    activity: list[tuple] = field(default_factory=list)
    activity_classes: list[tuple] = field(default_factory=list)
    thread_owners: list[tuple] = field(default_factory=list)
    # from project
    rows: Rows = field(default_factory=Rows)
