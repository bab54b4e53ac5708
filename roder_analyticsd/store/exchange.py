"""`export` / `import`: the store as schema-versioned, body-free JSON lines.

One record per line, `kind` first, then `schemaVersion`, then `agent`
(`roder` | `claude-code`: whose log the row came from), then the row's
columns in camelCase (`session`, `turn`, `tool_call`, `token_usage`). Records
carry what the store holds and nothing else: ids, names, labels, times and
counts, never a body. A record also carries the *when* columns the store's
upserts merge on (`workspaceAtMs`, `modelAtMs`), so an import merges into a
live store exactly as re-ingesting the events would. `tool_call.status` and
`durationMs` are derived: written for readers, ignored on import.
A `token_usage` record also carries a Claude Code API call's own fields
(`cacheCreation1hPromptTokens`, `provider`, `model`, `messageId`,
`isSidechain`; zero, null and false on Roder's rows, whose model is their
turn's): they decide its cost and which copy of a call is kept.

Schema version 3 added `promptId` to Claude Code's `tool_call` and
`token_usage` records: the turn (prompt) the call belongs to (null when
not known, and on Roder's rows, whose `turnId` is their turn). Bumped for
the reason version 2 was: a version-2 reader would drop it without a word,
and `--tool` / `--provider` / `--model` answers of the imported store
would differ from the original's. Version 1 and 2 records still import
(their calls untied, as their store had them).

Schema version 2 added `agent` and those per-call fields. The version was
bumped rather than the fields made optional in version 1 because a reader of
version 1 ignores fields it does not know: it would import a Claude Code
store as Roder's, priced at the wrong model and without its 1-hour cache
writes, without a word. Version 2 makes such a reader refuse the file with
a clear line instead. This reader takes both versions (a file may mix them):
a version-1 record is Roder's, with the per-call fields at their defaults.

Export streams each table in primary-key order in fixed-size chunks (flat
memory whatever the store's size) and is deterministic, so export → import
into an empty store → export gives the same bytes. Import validates the
whole file first (nothing is written from a bad file; a count or a time
outside `bounds`, an unknown agent, or per-call fields on a Roder row is a
bad record like any other), then writes through `store.writer.write_rows`,
one agent per call: the same idempotent upserts as ingestion (Claude Code's
token rows through its API-call upsert, which keeps the best copy of a call
and drops a sidechain copy of a message a non-sidechain row holds, in any
arrival order), so importing a file twice changes no row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import aiosqlite
import msgspec

from roder_analyticsd.bounds import TimeMs, TokenCount
from roder_analyticsd.pipeline.batch import Rows
from roder_analyticsd.store.schema import AGENTS

SCHEMA_VERSION = 3
READS = (1, 2, 3)  # the schema versions import accepts
CHUNK = 2000  # rows per fetch on export, records per transaction on import

Agent = Literal["roder", "claude-code"]
assert set(get_args(Agent)) == set(AGENTS)


class _Record(msgspec.Struct, tag_field="kind", rename="camel"):
    schema_version: int
    agent: Agent = "roder"  # absent from version 1: every row was Roder's


class SessionRecord(_Record, tag="session", kw_only=True):
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


class TurnRecord(_Record, tag="turn", kw_only=True):
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


class ToolCallRecord(_Record, tag="tool_call", kw_only=True):
    thread_id: str
    turn_id: str
    tool_id: str
    tool_name: str | None = None
    started_at_ms: TimeMs | None = None
    completed_at_ms: TimeMs | None = None
    is_error: bool = False
    status: str | None = None  # derived
    duration_ms: int | None = None  # derived
    prompt_id: str | None = None  # a Claude Code call's turn (version 3)


class TokenUsageRecord(_Record, tag="token_usage", kw_only=True):
    thread_id: str
    turn_id: str
    recorded_at_ms: TimeMs
    prompt_tokens: TokenCount
    completion_tokens: TokenCount
    total_tokens: TokenCount
    cached_prompt_tokens: TokenCount = 0
    cache_creation_prompt_tokens: TokenCount = 0
    # a Claude Code API call's own (store/writer.py UPSERT_API_CALL); the first
    # is the 1-hour part of cache_creation_prompt_tokens (camel would spell "1H")
    cache_creation_1h_prompt_tokens: TokenCount = msgspec.field(
        default=0, name="cacheCreation1hPromptTokens"
    )
    provider: str | None = None
    model: str | None = None
    message_id: str | None = None
    is_sidechain: bool = False
    prompt_id: str | None = None  # a Claude Code call's turn (version 3)


Record = SessionRecord | TurnRecord | ToolCallRecord | TokenUsageRecord
KINDS = ("session", "turn", "tool_call", "token_usage")
# record counts in `--json` reports
COUNT_KEYS = {"session": "sessions", "turn": "turns", "tool_call": "toolCalls",
              "token_usage": "tokenUsage"}  # fmt: skip


class ExchangeError(Exception):
    """A bad import file: `path:line: reason`."""


# --- export -------------------------------------------------------------------


_V = SCHEMA_VERSION  # records built with explicit keywords: several times faster than **dict
_EXPORTS: tuple[tuple[str, Callable[..., Record]], ...] = (
    (
        """SELECT agent, thread_id, workspace_key, workspace_label, workspace_at_ms, provider,
                  provider_at_ms, model, model_at_ms, created_at_ms, updated_at_ms
           FROM sessions ORDER BY thread_id""",
        lambda a, t, wk, wl, wa, p, pa, m, ma, c, u: SessionRecord(
            schema_version=_V, agent=a, thread_id=t, workspace_key=wk, workspace_label=wl,
            workspace_at_ms=wa, provider=p, provider_at_ms=pa, model=m, model_at_ms=ma,
            created_at_ms=c, updated_at_ms=u,
        ),
    ),
    (
        """SELECT agent, thread_id, turn_id, status, error_kind, provider, model, model_at_ms,
                  runtime_profile, started_at_ms, completed_at_ms
           FROM turns ORDER BY thread_id, turn_id""",
        lambda a, t, u, st, e, p, m, ma, rp, s, c: TurnRecord(
            schema_version=_V, agent=a, thread_id=t, turn_id=u, status=st, error_kind=e,
            provider=p, model=m, model_at_ms=ma, runtime_profile=rp, started_at_ms=s,
            completed_at_ms=c,
        ),
    ),
    (
        """SELECT agent, thread_id, turn_id, tool_id, tool_name, started_at_ms, completed_at_ms,
                  is_error, status, duration_ms, prompt_id
           FROM tool_calls ORDER BY thread_id, turn_id, tool_id""",
        lambda a, t, u, i, n, s, c, e, st, d, pr: ToolCallRecord(
            schema_version=_V, agent=a, thread_id=t, turn_id=u, tool_id=i, tool_name=n,
            started_at_ms=s, completed_at_ms=c, is_error=bool(e), status=st, duration_ms=d,
            prompt_id=pr,
        ),
    ),
    (
        """SELECT agent, thread_id, turn_id, recorded_at_ms, prompt_tokens, completion_tokens,
                  total_tokens, cached_prompt_tokens, cache_creation_prompt_tokens,
                  cache_creation_1h_prompt_tokens, provider, model, message_id, is_sidechain,
                  prompt_id
           FROM token_usage ORDER BY thread_id, turn_id""",
        lambda a, t, u, r, p, c, tot, ca, cc, cc1, pv, m, mid, side, pr: TokenUsageRecord(
            schema_version=_V, agent=a, thread_id=t, turn_id=u, recorded_at_ms=r,
            prompt_tokens=p, completion_tokens=c, total_tokens=tot, cached_prompt_tokens=ca,
            cache_creation_prompt_tokens=cc, cache_creation_1h_prompt_tokens=cc1, provider=pv,
            model=m, message_id=mid, is_sidechain=bool(side), prompt_id=pr,
        ),
    ),
)  # fmt: skip


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
            if record.schema_version not in READS:
                raise ExchangeError(
                    f"{path}:{line_no}: schemaVersion {record.schema_version} is not supported "
                    f"(this roder-analyticsd reads {', '.join(map(str, READS))})"
                )
            if isinstance(record, TokenUsageRecord) and (problem := _call_problem(record)):
                raise ExchangeError(f"{path}:{line_no}: {problem}")
            if isinstance(record, ToolCallRecord | TokenUsageRecord) and (
                problem := _prompt_problem(record)
            ):
                raise ExchangeError(f"{path}:{line_no}: {problem}")
            yield record


def _call_problem(r: TokenUsageRecord) -> str | None:
    if r.cache_creation_1h_prompt_tokens > r.cache_creation_prompt_tokens:
        return "cacheCreation1hPromptTokens is more than cacheCreationPromptTokens"
    if r.agent == "roder" and (
        r.cache_creation_1h_prompt_tokens or r.provider is not None or r.model is not None
        or r.message_id is not None or r.is_sidechain
    ):  # fmt: skip
        # Roder's usage rows take their turn's model; these would be dropped
        return "a roder token_usage record has Claude Code's per-call fields"
    return None


def _prompt_problem(r: ToolCallRecord | TokenUsageRecord) -> str | None:
    if r.prompt_id is None:
        return None
    if r.agent == "roder":  # a Roder row's turn is its turnId
        return f"a roder {r.__struct_config__.tag} record has a promptId"
    if r.schema_version < 3:
        return f"promptId is a schemaVersion 3 field (this record is version {r.schema_version})"
    return None


def _reason(exc: msgspec.DecodeError) -> str:
    text = str(exc).splitlines()[0] if str(exc) else "not a record"
    if "Invalid value" in text and "kind" in text:
        return f"unknown record kind ({text}); expected one of {', '.join(KINDS)}"
    if text.startswith("Invalid enum value") and text.endswith("`$.agent`"):
        found = text.removeprefix("Invalid enum value ").split(" - at ", 1)[0]
        return f"unknown agent {found}; expected one of {', '.join(AGENTS)}"
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
        # (an export has no analytics.v2 events: see store/schema.py, activity_events)
        rows.turns.append(
            (record.thread_id, record.turn_id, record.runtime_profile, record.started_at_ms,
             record.provider, record.model, record.model_at_ms, record.completed_at_ms,
             terminal, record.error_kind, None, None, None, None)
        )  # fmt: skip
    elif isinstance(record, ToolCallRecord):
        row = (record.thread_id, record.turn_id, record.tool_id, record.tool_name,
               record.started_at_ms, record.completed_at_ms, int(record.is_error), None,
               None)  # fmt: skip
        # (Claude Code's tool-call upsert takes the prompt too: writer._statements)
        rows.tool_calls.append(row if record.agent == "roder" else (*row, record.prompt_id))
    elif record.agent == "roder":
        rows.token_usage.append(
            (record.thread_id, record.turn_id, record.recorded_at_ms, record.prompt_tokens,
             record.completion_tokens, record.total_tokens, record.cached_prompt_tokens,
             record.cache_creation_prompt_tokens)
        )  # fmt: skip
    else:  # an API call (pipeline/claude_code.py: the api_calls tuple)
        rows.api_calls.append(
            (record.thread_id, record.turn_id, record.recorded_at_ms, record.prompt_tokens,
             record.completion_tokens, record.total_tokens, record.cached_prompt_tokens,
             record.cache_creation_prompt_tokens, record.cache_creation_1h_prompt_tokens,
             record.provider, record.model, record.message_id, int(record.is_sidechain),
             record.prompt_id, None, None)
        )  # fmt: skip


async def import_file(conn: aiosqlite.Connection, path: Path) -> ImportReport:
    """Validate the whole file, then upsert it chunk by chunk (one write per
    agent in a chunk: `write_rows` tags one agent's rows) and refresh rollups."""
    from roder_analyticsd.store.maintenance import refresh_rollups
    from roder_analyticsd.store.writer import write_rows

    for _ in read_records(path):
        pass  # a bad line stops the import before anything is written
    report = ImportReport()
    by_agent: dict[str, Rows] = {}
    pending = 0
    for record in read_records(path):
        _add(by_agent.get(record.agent) or by_agent.setdefault(record.agent, Rows()), record)
        report.records[record.__struct_config__.tag] += 1  # type: ignore[index]
        pending += 1
        if pending >= CHUNK:
            for agent in sorted(by_agent):
                await write_rows(conn, by_agent[agent], [], agent)
            by_agent, pending = {}, 0
    for agent in sorted(by_agent):
        await write_rows(conn, by_agent[agent], [], agent)
    # the days the rows changed were marked dirty as they were written
    report.rollup_rows_refreshed = await refresh_rollups(conn)
    return report
