"""`export` / `import`: the store as schema-versioned, body-free JSON lines.

One record per line, `kind` first, then `schemaVersion`, then the row's
columns in camelCase (`session`, `turn`, `tool_call`, `token_usage`). Records
carry what the store holds and nothing else: ids, names, labels, times and
counts, never a body. A record also carries the *when* columns the store's
upserts merge on (`workspaceAtMs`, `modelAtMs`), so an import merges into a
live store exactly as re-ingesting the events would. `tool_call.status` and
`durationMs` are derived: written for readers, ignored on import.

Export streams each table in primary-key order in fixed-size chunks (flat
memory whatever the store's size) and is deterministic, so export → import
into an empty store → export gives the same bytes. Import validates the
whole file first (nothing is written from a bad file; a count or a time
outside `bounds` is a bad record like any other), then writes through
`store.writer.write_rows`: the same idempotent upserts as ingestion, so
importing a file twice changes no row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiosqlite
import msgspec

from roder_analyticsd.bounds import TimeMs, TokenCount
from roder_analyticsd.pipeline.batch import Rows

SCHEMA_VERSION = 1
CHUNK = 2000  # rows per fetch on export, records per transaction on import


class _Record(msgspec.Struct, tag_field="kind", rename="camel"):
    schema_version: int


class SessionRecord(_Record, tag="session"):
    thread_id: str
    workspace_key: str | None = None
    workspace_label: str | None = None
    workspace_at_ms: TimeMs | None = None
    provider: str | None = None
    provider_at_ms: TimeMs | None = None
    model: str | None = None
    model_at_ms: TimeMs | None = None
    created_at_ms: TimeMs | None = None
    updated_at_ms: TimeMs | None = None


class TurnRecord(_Record, tag="turn"):
    thread_id: str
    turn_id: str
    status: Literal["running", "completed", "failed", "interrupted", "timeout"] = "running"
    error_kind: str | None = None
    provider: str | None = None
    model: str | None = None
    model_at_ms: TimeMs | None = None
    runtime_profile: str | None = None
    started_at_ms: TimeMs | None = None
    completed_at_ms: TimeMs | None = None


class ToolCallRecord(_Record, tag="tool_call"):
    thread_id: str
    turn_id: str
    tool_id: str
    tool_name: str | None = None
    started_at_ms: TimeMs | None = None
    completed_at_ms: TimeMs | None = None
    is_error: bool = False
    status: str | None = None  # derived
    duration_ms: int | None = None  # derived


class TokenUsageRecord(_Record, tag="token_usage"):
    thread_id: str
    turn_id: str
    recorded_at_ms: TimeMs
    prompt_tokens: TokenCount
    completion_tokens: TokenCount
    total_tokens: TokenCount
    cached_prompt_tokens: TokenCount = 0
    cache_creation_prompt_tokens: TokenCount = 0


Record = SessionRecord | TurnRecord | ToolCallRecord | TokenUsageRecord
KINDS = ("session", "turn", "tool_call", "token_usage")
# record counts in `--json` reports
COUNT_KEYS = {"session": "sessions", "turn": "turns", "tool_call": "toolCalls",
              "token_usage": "tokenUsage"}  # fmt: skip


class ExchangeError(Exception):
    """A bad import file: `path:line: reason`."""


# --- export -------------------------------------------------------------------

_EXPORTS: tuple[tuple[str, Callable[..., Record]], ...] = (
    (
        """SELECT thread_id, workspace_key, workspace_label, workspace_at_ms, provider,
                  provider_at_ms, model, model_at_ms, created_at_ms, updated_at_ms
           FROM sessions ORDER BY thread_id""",
        lambda *r: SessionRecord(SCHEMA_VERSION, *r),
    ),
    (
        """SELECT thread_id, turn_id, status, error_kind, provider, model, model_at_ms,
                  runtime_profile, started_at_ms, completed_at_ms
           FROM turns ORDER BY thread_id, turn_id""",
        lambda *r: TurnRecord(SCHEMA_VERSION, *r),
    ),
    (
        """SELECT thread_id, turn_id, tool_id, tool_name, started_at_ms, completed_at_ms,
                  is_error, status, duration_ms
           FROM tool_calls ORDER BY thread_id, turn_id, tool_id""",
        lambda t, u, i, n, s, c, e, st, d: ToolCallRecord(
            SCHEMA_VERSION, t, u, i, n, s, c, bool(e), st, d
        ),
    ),
    (
        """SELECT thread_id, turn_id, recorded_at_ms, prompt_tokens, completion_tokens,
                  total_tokens, cached_prompt_tokens, cache_creation_prompt_tokens
           FROM token_usage ORDER BY thread_id, turn_id""",
        lambda *r: TokenUsageRecord(SCHEMA_VERSION, *r),
    ),
)


async def export_chunks(conn: aiosqlite.Connection) -> AsyncIterator[tuple[str, int, bytes]]:
    """(kind, record count, JSON lines) chunk by chunk, sessions first."""
    encoder = msgspec.json.Encoder()
    for kind, (sql, make) in zip(KINDS, _EXPORTS, strict=True):
        async with conn.execute(sql) as cur:
            while rows := await cur.fetchmany(CHUNK):
                records = [make(*row) for row in rows]
                yield kind, len(records), encoder.encode_lines(records)


# --- import -------------------------------------------------------------------


@dataclass(slots=True)
class ImportReport:
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    rollup_rows_refreshed: int = 0

    def to_json(self) -> dict[str, int]:
        counts = {COUNT_KEYS[kind]: n for kind, n in self.records.items()}
        return {**counts, "rollupRowsRefreshed": self.rollup_rows_refreshed}


_decoder = msgspec.json.Decoder(Record)


def read_records(path: Path) -> Iterator[Record]:
    """Decode and validate every record of an export file, one at a time."""
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = _decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise ExchangeError(f"{path}:{line_no}: {_reason(exc)}") from None
            if record.schema_version != SCHEMA_VERSION:
                raise ExchangeError(
                    f"{path}:{line_no}: schemaVersion {record.schema_version} is not supported "
                    f"(this roder-analyticsd reads {SCHEMA_VERSION})"
                )
            yield record


def _reason(exc: msgspec.DecodeError) -> str:
    text = str(exc).splitlines()[0] if str(exc) else "not a record"
    if "Invalid value" in text and "kind" in text:
        return f"unknown record kind ({text}); expected one of {', '.join(KINDS)}"
    return text


def _add(rows: Rows, record: Record) -> None:
    if isinstance(record, SessionRecord):
        rows.sessions.append(
            (record.thread_id, record.workspace_key, record.workspace_label,
             record.workspace_at_ms, record.provider, record.provider_at_ms, record.model,
             record.model_at_ms, record.created_at_ms, record.updated_at_ms)
        )  # fmt: skip
    elif isinstance(record, TurnRecord):
        terminal = None if record.status == "running" else record.status
        rows.turns.append(
            (record.thread_id, record.turn_id, record.runtime_profile, record.started_at_ms,
             record.provider, record.model, record.model_at_ms, record.completed_at_ms,
             terminal, record.error_kind)
        )  # fmt: skip
    elif isinstance(record, ToolCallRecord):
        rows.tool_calls.append(
            (record.thread_id, record.turn_id, record.tool_id, record.tool_name,
             record.started_at_ms, record.completed_at_ms, int(record.is_error))
        )  # fmt: skip
    else:
        rows.token_usage.append(
            (record.thread_id, record.turn_id, record.recorded_at_ms, record.prompt_tokens,
             record.completion_tokens, record.total_tokens, record.cached_prompt_tokens,
             record.cache_creation_prompt_tokens)
        )  # fmt: skip


async def import_file(conn: aiosqlite.Connection, path: Path) -> ImportReport:
    """Validate the whole file, then upsert it chunk by chunk and refresh rollups."""
    from roder_analyticsd.store.maintenance import refresh_rollups
    from roder_analyticsd.store.writer import write_rows

    for _ in read_records(path):
        pass  # a bad line stops the import before anything is written
    report = ImportReport()
    rows, pending = Rows(), 0
    for record in read_records(path):
        _add(rows, record)
        report.records[record.__struct_config__.tag] += 1  # type: ignore[index]
        pending += 1
        if pending >= CHUNK:
            await write_rows(conn, rows, [])
            rows, pending = Rows(), 0
    if pending:
        await write_rows(conn, rows, [])
    # the days the rows changed were marked dirty as they were written
    report.rollup_rows_refreshed = await refresh_rollups(conn)
    return report
