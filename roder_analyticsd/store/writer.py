"""The batch writer: the only code that writes analytics rows.

Each batch is one transaction: its rows and the checkpoints of the lines
they came from commit together, so a crash at any instant either keeps
both or neither. Replays are harmless because every statement is an
order-independent, idempotent upsert.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from operator import itemgetter

import aiosqlite

from roder_analyticsd.pipeline.batch import Checkpoint, Rows
from roder_analyticsd.store.deferred_indexes import MESSAGE_INDEX
from roder_analyticsd.store.schema import AGENTS, DAY_MS, day_number_sql
from roder_analyticsd.store.transaction import transaction


def _newer(at: str, key: str) -> str:
    """SQL twin of project._newer: does the excluded row's value win?"""
    return (
        f"(excluded.{at} IS NOT NULL AND ({at} IS NULL OR excluded.{at} > {at}"
        f" OR (excluded.{at} = {at} AND COALESCE(excluded.{key}, '') > COALESCE({key}, ''))))"
    )


UPSERT_SESSION = """
INSERT INTO sessions (thread_id, workspace_key, workspace_label, workspace_at_ms,
                      provider, provider_at_ms, model, model_at_ms, created_at_ms, updated_at_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (thread_id) DO UPDATE SET
    workspace_key = CASE WHEN {ws_newer} THEN excluded.workspace_key ELSE workspace_key END,
    workspace_label = CASE WHEN {ws_newer} THEN excluded.workspace_label ELSE workspace_label END,
    workspace_at_ms = CASE WHEN {ws_newer} THEN excluded.workspace_at_ms ELSE workspace_at_ms END,
    provider = CASE WHEN {p_newer} THEN excluded.provider ELSE provider END,
    provider_at_ms = CASE WHEN {p_newer} THEN excluded.provider_at_ms ELSE provider_at_ms END,
    model = CASE WHEN {m_newer} THEN excluded.model ELSE model END,
    model_at_ms = CASE WHEN {m_newer} THEN excluded.model_at_ms ELSE model_at_ms END,
    created_at_ms = COALESCE(min(excluded.created_at_ms, created_at_ms),
                             excluded.created_at_ms, created_at_ms),
    updated_at_ms = COALESCE(max(excluded.updated_at_ms, updated_at_ms),
                             excluded.updated_at_ms, updated_at_ms)
""".format(
    # each of workspace, provider and model: the latest non-null value wins
    ws_newer=_newer("workspace_at_ms", "workspace_key"),
    p_newer=_newer("provider_at_ms", "provider"),
    m_newer=_newer("model_at_ms", "model"),
)


def _above(column: str) -> str:
    """SQL twin of project.above: does the excluded row's event id win a tie?"""
    return f"(excluded.{column} IS NOT NULL AND ({column} IS NULL OR excluded.{column} > {column}))"


def _event_of(newer: str, event: str, cls: str) -> str:
    """The SET clauses of an event (id and class) that goes with the instant
    `newer` picks. An id of 0 stays: that event is a row of `activity`
    (stored before rows held their events; see store/schema.py)."""
    return (
        f"    {event} = CASE WHEN {event} = 0 THEN 0"
        f" WHEN {newer} THEN excluded.{event} ELSE {event} END,\n"
        f"    {cls} = CASE WHEN {newer} THEN excluded.{cls} ELSE {cls} END"
    )


# a turn's terminal status is only ever replaced by a later terminal event
_TURN_END_NEWER = (
    "(excluded.terminal_status IS NOT NULL AND (terminal_status IS NULL"
    " OR excluded.completed_at_ms > completed_at_ms OR (excluded.completed_at_ms = completed_at_ms"
    " AND (excluded.terminal_status > terminal_status"
    " OR (excluded.terminal_status = terminal_status"
    f" AND {_above('end_event_id')})))))"
)
_TURN_START_NEWER = (
    "(excluded.started_at_ms IS NOT NULL AND (started_at_ms IS NULL"
    " OR excluded.started_at_ms < started_at_ms OR (excluded.started_at_ms = started_at_ms"
    f" AND {_above('start_event_id')})))"
)
UPSERT_TURN = """
INSERT INTO turns (thread_id, turn_id, runtime_profile, started_at_ms, provider, model,
                   model_at_ms, completed_at_ms, terminal_status, error_kind,
                   start_event_id, start_class_id, end_event_id, end_class_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (thread_id, turn_id) DO UPDATE SET
    runtime_profile = COALESCE(max(excluded.runtime_profile, runtime_profile),
                               excluded.runtime_profile, runtime_profile),
    started_at_ms = COALESCE(min(excluded.started_at_ms, started_at_ms),
                             excluded.started_at_ms, started_at_ms),
{start_event},
    provider = CASE WHEN {m_newer} THEN excluded.provider ELSE provider END,
    model = CASE WHEN {m_newer} THEN excluded.model ELSE model END,
    model_at_ms = CASE WHEN {m_newer} THEN excluded.model_at_ms ELSE model_at_ms END,
    completed_at_ms = CASE WHEN {t_newer} THEN excluded.completed_at_ms ELSE completed_at_ms END,
    terminal_status = CASE WHEN {t_newer} THEN excluded.terminal_status ELSE terminal_status END,
    error_kind = CASE WHEN {t_newer} THEN excluded.error_kind ELSE error_kind END,
{end_event}
""".format(
    # the turn's provider/model is that of its last InferenceStarted
    m_newer=_newer("model_at_ms", "model"),
    t_newer=_TURN_END_NEWER,
    start_event=_event_of(_TURN_START_NEWER, "start_event_id", "start_class_id"),
    end_event=_event_of(_TURN_END_NEWER, "end_event_id", "end_class_id"),
)

_COMPLETION_NEWER = (
    "(excluded.completed_at_ms IS NOT NULL AND (completed_at_ms IS NULL"
    " OR excluded.completed_at_ms > completed_at_ms OR (excluded.completed_at_ms = completed_at_ms"
    " AND (excluded.is_error > is_error"
    f" OR (excluded.is_error = is_error AND {_above('event_id')})))))"
)
UPSERT_TOOL_CALL = """
INSERT INTO tool_calls (thread_id, turn_id, tool_id, tool_name, started_at_ms,
                        completed_at_ms, is_error, event_id, class_id)
VALUES (?, ?, ?, ?, ?, ?, COALESCE(?, 0), ?, ?)
ON CONFLICT (thread_id, turn_id, tool_id) DO UPDATE SET
    tool_name = COALESCE(min(excluded.tool_name, tool_name), excluded.tool_name, tool_name),
    started_at_ms = COALESCE(min(excluded.started_at_ms, started_at_ms),
                             excluded.started_at_ms, started_at_ms),
    completed_at_ms = CASE WHEN {c_newer} THEN excluded.completed_at_ms ELSE completed_at_ms END,
    is_error = CASE WHEN {c_newer} THEN excluded.is_error ELSE is_error END,
{event}
""".format(c_newer=_COMPLETION_NEWER, event=_event_of(_COMPLETION_NEWER, "event_id", "class_id"))

UPSERT_TOKEN_USAGE = """
INSERT INTO token_usage (thread_id, turn_id, recorded_at_ms, prompt_tokens, completion_tokens,
                         total_tokens, cached_prompt_tokens, cache_creation_prompt_tokens)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (thread_id, turn_id) DO UPDATE SET
    recorded_at_ms = excluded.recorded_at_ms,
    prompt_tokens = excluded.prompt_tokens,
    completion_tokens = excluded.completion_tokens,
    total_tokens = excluded.total_tokens,
    cached_prompt_tokens = excluded.cached_prompt_tokens,
    cache_creation_prompt_tokens = excluded.cache_creation_prompt_tokens
WHERE excluded.recorded_at_ms > recorded_at_ms
   OR (excluded.recorded_at_ms = recorded_at_ms AND excluded.total_tokens > total_tokens)
"""

# A Claude Code tool call: Roder's upsert, and its prompt (pipeline/claude_code.py
# merge_prompt: a known prompt beats NULL, of two the greater; `max` is NULL
# when either is)
_PROMPT_MERGE = "COALESCE(max(excluded.prompt_id, prompt_id), excluded.prompt_id, prompt_id)"
UPSERT_PROMPTED_TOOL_CALL = (
    UPSERT_TOOL_CALL.replace("class_id)\nVALUES", "class_id, prompt_id)\nVALUES", 1)
    .replace("COALESCE(?, 0), ?, ?)", "COALESCE(?, 0), ?, ?, ?)", 1)
    .rstrip()
    + f",\n    prompt_id = {_PROMPT_MERGE}\n"
)

INSERT_ACTIVITY = """
INSERT OR IGNORE INTO activity (event_id, thread_id, occurred_at_ms, class_id, provider, model)
VALUES (?, ?, ?, ?, ?, ?)
"""

INSERT_ACTIVITY_CLASS = """
INSERT OR IGNORE INTO activity_classes (class_id, event_name, module, owner_module,
                                        execution_kind, loop_stage, outcome, error_category, phase)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

UPSERT_THREAD_OWNER = """
INSERT INTO thread_owners (thread_id, owner_kind, parent_thread_id) VALUES (?, ?, ?)
ON CONFLICT (thread_id) DO UPDATE SET
    owner_kind = excluded.owner_kind,
    parent_thread_id = COALESCE(excluded.parent_thread_id, parent_thread_id)
WHERE excluded.owner_kind = 'subagent'  -- a subagent thread stays a subagent
"""

UPSERT_FILE = """
INSERT INTO files (file_key, dev, ino, path, offset, line_no, fp_len, fp_hash, updated_at_ms,
                   prompts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (file_key) DO UPDATE SET
    path = excluded.path, offset = excluded.offset, line_no = excluded.line_no,
    fp_len = excluded.fp_len, fp_hash = excluded.fp_hash, updated_at_ms = excluded.updated_at_ms,
    dev = excluded.dev, ino = excluded.ino, prompts = excluded.prompts
"""


MARK_DIRTY_DAY = "INSERT OR IGNORE INTO rollup_dirty_days (day) VALUES (?)"


def path_for_store(path: str) -> str | bytes:
    """A checkpoint's path as stored: text, or where the name is not UTF-8
    (a thread dir `thr-\\xff`, decoded with surrogate escapes) its raw bytes,
    so it round-trips exactly (`path_from_store`)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def path_from_store(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def tagged(sql: str, agent: str) -> str:
    """An upsert that also sets the row's `agent` (on insert: a row keeps the
    agent that first wrote it). Roder's rows take the column's default."""
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}")
    head, rest = sql.split(")\nVALUES (", 1)
    values, tail = rest.split("\nON CONFLICT", 1)
    values = values.rstrip()
    assert values.endswith(")"), sql
    return f"{head}, agent)\nVALUES ({values[:-1]}, '{agent}')\nON CONFLICT{tail}"


# A Claude Code API call (pipeline/claude_code.py: call_rank is this order).
# A sidechain copy of a message id that a non-sidechain row holds is not
# inserted, and such copies are deleted when the non-sidechain row comes:
# either arrival order ends with the same rows. Non-sidechain calls are
# written first and by a plain VALUES upsert (the check is for sidechain
# copies only; INSERT … SELECT costs twice as much per row), then the
# sidechain ones, checked against every non-sidechain row, new ones too.
_CALL_RANK = (
    "(-{p}is_sidechain, {p}total_tokens, {p}recorded_at_ms, {p}completion_tokens,"
    " COALESCE({p}model, ''))"
)
_CALL_COLUMNS = """
INSERT INTO token_usage (thread_id, turn_id, recorded_at_ms, prompt_tokens, completion_tokens,
                         total_tokens, cached_prompt_tokens, cache_creation_prompt_tokens,
                         cache_creation_1h_prompt_tokens, provider, model, message_id,
                         is_sidechain, prompt_id, event_id, class_id, agent)"""
_CALL_VALUES = (
    "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, 'claude-code'"
)
# The best copy's columns (call_rank) and, on their own, the prompt (merge_prompt).
# SQLite evaluates every SET expression against the stored row before any
# is assigned, so `{better}` sees the old counts in each CASE.
_CALL_SET = (
    "recorded_at_ms", "prompt_tokens", "completion_tokens", "total_tokens",
    "cached_prompt_tokens", "cache_creation_prompt_tokens", "cache_creation_1h_prompt_tokens",
    "provider", "model", "message_id", "is_sidechain",
)  # fmt: skip
_CALL_BETTER = "({excluded} > {stored})".format(
    excluded=_CALL_RANK.format(p="excluded."), stored=_CALL_RANK.format(p="")
)
# pipeline/claude_code.py prompt_rank
_PROMPT_RANK = "(-{p}is_sidechain, {p}prompt_id IS NOT NULL, COALESCE({p}prompt_id, ''))"
_PROMPT_BETTER = "({excluded} > {stored})".format(
    excluded=_PROMPT_RANK.format(p="excluded."), stored=_PROMPT_RANK.format(p="")
)
_EVENT_KNOWN = (
    "(event_id IS NULL AND excluded.event_id IS NOT NULL AND excluded.is_sidechain = is_sidechain)"
)
_CALL_CONFLICT = (
    "\nON CONFLICT (thread_id, turn_id) DO UPDATE SET\n"
    + "".join(
        f"    {c} = CASE WHEN {_CALL_BETTER} THEN excluded.{c} ELSE {c} END,\n" for c in _CALL_SET
    )
    + f"    prompt_id = CASE WHEN {_PROMPT_BETTER} THEN excluded.prompt_id ELSE prompt_id END,\n"
    # the class of the kept copy's flag (a row stored before migration 9 has none)
    + f"    class_id = CASE WHEN {_CALL_BETTER} THEN excluded.class_id"
    " WHEN class_id IS NULL AND excluded.is_sidechain = is_sidechain THEN excluded.class_id"
    " ELSE class_id END,\n"
    # the model_request: known once a copy with the kept sidechain flag ends
    # the stream (claude_code.merge_call; 0: a row of `activity`, see
    # store/schema.py migration 9)
     + "    event_id = CASE WHEN event_id = 0 THEN 0"
    " WHEN excluded.is_sidechain < is_sidechain THEN excluded.event_id"
    " WHEN excluded.is_sidechain = is_sidechain THEN COALESCE(event_id, excluded.event_id)"
    " ELSE event_id END\n"
    # (a copy that is no better may still know the prompt, or end the stream)
     + f"WHERE {_CALL_BETTER} OR {_PROMPT_BETTER} OR {_EVENT_KNOWN}\n"
)
UPSERT_API_CALL = f"{_CALL_COLUMNS}\nVALUES ({_CALL_VALUES}){_CALL_CONFLICT}"


def _no_call_of_its_own(message_id: str, thread_id: str, turn_id: str) -> str:
    """A sidechain copy of a message that a non-sidechain row holds under
    another key (read through the message-id index)."""
    return f"""({message_id} IS NOT NULL AND EXISTS (
    SELECT 1 FROM token_usage x WHERE x.message_id = {message_id} AND x.is_sidechain = 0
                                  AND NOT (x.thread_id = {thread_id} AND x.turn_id = {turn_id})))"""


UPSERT_SIDECHAIN_CALL = f"""{_CALL_COLUMNS}
SELECT {_CALL_VALUES}
WHERE NOT {_no_call_of_its_own("?12", "?1", "?2")}{_CALL_CONFLICT}"""

# While a bulk load has the message-id index deferred (store/deferred_indexes.py),
# sidechain calls wait in pending_sidechain_calls (schema.py migration 10), its
# columns in the order of an API call's row, and go through the rule at the
# load's end.
_PENDING_COLUMNS = (
    "thread_id", "turn_id", "recorded_at_ms", "prompt_tokens", "completion_tokens",
    "total_tokens", "cached_prompt_tokens", "cache_creation_prompt_tokens",
    "cache_creation_1h_prompt_tokens", "provider", "model", "message_id", "is_sidechain",
    "prompt_id", "event_id", "class_id",
)  # fmt: skip
HOLD_SIDECHAIN_CALL = (
    f"INSERT INTO pending_sidechain_calls ({', '.join(_PENDING_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _PENDING_COLUMNS)})"
)
_PENDING_VALUES = ", ".join(f"p.{column}" for column in _PENDING_COLUMNS) + ", 'claude-code'"
# The rule, for the held calls at once: one scan of the token rows, each
# non-sidechain call's message id looked up among the held ones (the
# message-id index is not needed, so it is built beside the others).
_DROP_HELD_COPIES = """
DELETE FROM pending_sidechain_calls WHERE rowid IN (
    SELECT p.rowid FROM token_usage x CROSS JOIN pending_sidechain_calls p
    WHERE x.message_id IS NOT NULL AND x.is_sidechain = 0 AND p.message_id = x.message_id
      AND NOT (x.thread_id = p.thread_id AND x.turn_id = p.turn_id))
"""
# the others as UPSERT_SIDECHAIN_CALL would write them (`WHERE true`: an
# upsert's SELECT needs a WHERE)
APPLY_HELD_CALLS = f"""{_CALL_COLUMNS}
SELECT {_PENDING_VALUES} FROM pending_sidechain_calls p WHERE true{_CALL_CONFLICT}"""
# their days: the rollups of those days may have been refreshed meanwhile
_PENDING_DAYS = f"""
INSERT OR IGNORE INTO rollup_dirty_days (day)
SELECT DISTINCT {day_number_sql("recorded_at_ms")} FROM pending_sidechain_calls
"""


async def apply_pending_sidechains(conn: aiosqlite.Connection) -> bool:
    """The sidechain calls a bulk load held back, through the sidechain rule
    (inside the caller's transaction); True if there were any."""
    async with conn.execute("SELECT EXISTS (SELECT 1 FROM pending_sidechain_calls)") as cur:
        if not (await cur.fetchone())[0]:
            return False
    await conn.execute(_PENDING_DAYS)
    await conn.execute(_DROP_HELD_COPIES)
    await conn.execute(APPLY_HELD_CALLS)
    await conn.execute("DELETE FROM pending_sidechain_calls")
    return True


async def _message_index_deferred(conn: aiosqlite.Connection) -> bool:
    async with conn.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?)",
        (MESSAGE_INDEX,),
    ) as cur:
        return bool((await cur.fetchone())[0])


# stored sidechain rows of these message ids (a JSON array of them)
_SIDECHAIN_ROWS = """
SELECT u.message_id, u.thread_id, u.turn_id, u.recorded_at_ms FROM json_each(?) k
JOIN token_usage u ON u.message_id = k.value AND u.is_sidechain = 1
"""
# (still a sidechain row: not one this batch's own non-sidechain call replaced)
DELETE_SIDECHAIN_COPY = (
    "DELETE FROM token_usage WHERE thread_id = ? AND turn_id = ? AND is_sidechain = 1"
)


async def _sidechain_copies(conn: aiosqlite.Connection, calls: list[tuple]) -> list[tuple]:
    """(thread_id, turn_id, recorded_at_ms) of the stored sidechain copies
    that these non-sidechain calls replace: rows of the same message id
    under another key."""
    if not calls:
        return []
    message_ids = list(dict.fromkeys(map(_MESSAGE_ID, calls)))
    async with conn.execute(_SIDECHAIN_ROWS, (json.dumps(message_ids),)) as cur:
        found = await cur.fetchall()
    if not found:
        return []  # the common case: the keys of each call are only gathered here
    wanted = {row[0] for row in found}
    keys: dict[str, set[tuple[str, str]]] = {}
    for r in calls:
        if r[11] in wanted:
            keys.setdefault(r[11], set()).add((r[0], r[1]))
    return [
        (thread_id, turn_id, at)
        for message_id, thread_id, turn_id, at in found
        if keys[message_id] - {(thread_id, turn_id)}
    ]


_MESSAGE_ID = itemgetter(11)  # an API call's message_id


def _checkpoint_rows(checkpoints: Iterable[Checkpoint], now_ms: int) -> list[tuple]:
    latest: dict[str, Checkpoint] = {}
    for cp in checkpoints:
        latest[cp.identity.key] = cp  # later chunks of a file supersede earlier ones
    return [
        (key, cp.identity.dev, cp.identity.ino, path_for_store(cp.path), cp.offset, cp.line_no,
         cp.fp_len, cp.fp_hash, now_ms, cp.prompts)
        for key, cp in latest.items()
    ]  # fmt: skip


async def write_rows(
    conn: aiosqlite.Connection,
    rows: Rows,
    checkpoints: Iterable[Checkpoint],
    agent: str = "roder",
) -> None:
    """Write one batch and its checkpoints in a single transaction.

    The days whose rollups it changes are marked dirty in the same
    transaction, so a crash before the next rollup refresh cannot leave a
    stale rollup behind.
    """
    async with transaction(conn):
        days = await touched_days(conn, rows)  # reads the stamps the upserts replace
        calls = [r for r in rows.api_calls if not r[12]]
        sidechain_calls = [r for r in rows.api_calls if r[12]]
        copies = await _sidechain_copies(conn, [r for r in calls if r[11] is not None])
        days.update(at // DAY_MS for _, _, at in copies)
        statements = _STATEMENTS.get(agent) or _statements(agent)
        # (during a first backfill: held back, and put through the rule at its end)
        hold = bool(sidechain_calls) and await _message_index_deferred(conn)
        for sql, params in (
            (statements[0], rows.sessions),
            (statements[1], rows.turns),
            (statements[2], rows.tool_calls),
            (UPSERT_TOKEN_USAGE, rows.token_usage),
            (UPSERT_API_CALL, calls),
            (HOLD_SIDECHAIN_CALL if hold else UPSERT_SIDECHAIN_CALL, sidechain_calls),
            (DELETE_SIDECHAIN_COPY, [copy[:2] for copy in copies]),
            (INSERT_ACTIVITY_CLASS, list(dict.fromkeys(rows.activity_classes))),
            (INSERT_ACTIVITY, rows.activity),
            (UPSERT_THREAD_OWNER, rows.thread_owners),
            (UPSERT_FILE, _checkpoint_rows(checkpoints, int(time.time() * 1000))),
            (MARK_DIRTY_DAY, [(day,) for day in days]),
        ):
            if params:
                await conn.executemany(sql, params)


_STATEMENTS: dict[str, tuple[str, str, str]] = {}


def _statements(agent: str) -> tuple[str, str, str]:
    if agent == "roder":
        found = (UPSERT_SESSION, UPSERT_TURN, UPSERT_TOOL_CALL)
    else:  # Claude Code's: its tool calls carry their prompt
        found = tuple(
            tagged(sql, agent) for sql in (UPSERT_SESSION, UPSERT_TURN, UPSERT_PROMPTED_TOOL_CALL)
        )
    _STATEMENTS[agent] = found
    return found


# The stored stamps that place a batch's rows on days, looked up by turn:
# (thread_id, turn_id) pairs go in as one JSON array parameter (no giant SQL
# text to parse, no bound-variable limit), `k.key` is a pair's index in it.
# A turn's tool calls are one primary-key range, so probing by turn is a few
# times cheaper than probing each call.
KEY_CHUNK = 10_000
_TURN_STAMPS = """
SELECT k.key, t.started_at_ms, u.recorded_at_ms FROM json_each(?) k
LEFT JOIN turns t ON t.thread_id = k.value ->> 0 AND t.turn_id = k.value ->> 1
LEFT JOIN token_usage u ON u.thread_id = k.value ->> 0 AND u.turn_id = k.value ->> 1
WHERE t.started_at_ms IS NOT NULL OR u.recorded_at_ms IS NOT NULL
"""
_STORED_THREADS = """
SELECT k.value FROM json_each(?) k
WHERE EXISTS (SELECT 1 FROM tool_calls WHERE thread_id = k.value)
   OR EXISTS (SELECT 1 FROM turns WHERE thread_id = k.value)
   OR EXISTS (SELECT 1 FROM token_usage WHERE thread_id = k.value)
"""
_TOOL_STAMPS = """
SELECT k.key, c.tool_id, c.started_at_ms, c.completed_at_ms FROM json_each(?) k
JOIN tool_calls c ON c.thread_id = k.value ->> 0 AND c.turn_id = k.value ->> 1
"""


async def _stored(conn: aiosqlite.Connection, sql: str, turns: list[tuple]) -> list[tuple]:
    """(turn key, *stamps) rows of `sql` for these turn keys."""
    found: list[tuple] = []
    for start in range(0, len(turns), KEY_CHUNK):
        chunk = turns[start : start + KEY_CHUNK]
        async with conn.execute(sql, (json.dumps(chunk),)) as cur:
            found.extend((chunk[index], *rest) for index, *rest in await cur.fetchall())
    return found


async def _stored_threads(conn: aiosqlite.Connection, threads: set[str]) -> set[str]:
    """Which of these threads have rows in the store already."""
    found: set[str] = set()
    ordered = sorted(threads)
    for start in range(0, len(ordered), KEY_CHUNK):
        chunk = ordered[start : start + KEY_CHUNK]
        async with conn.execute(_STORED_THREADS, (json.dumps(chunk),)) as cur:
            found.update(row[0] for row in await cur.fetchall())
    return found


async def touched_days(conn: aiosqlite.Connection, rows: Rows) -> set[int]:
    """UTC day numbers whose rollups this batch changes. Call in the write
    transaction, before the upserts.

    The days of every stamp the batch writes and of every stored stamp it
    merges with: a tool call belongs to its start's day even when its
    completion comes in a later batch, and a late start moves it off its
    completion's day, so stored halves are read rather than guessed. A
    turn also reaches its token row's day (that rollup is keyed by the
    turn's model). Nothing is missed; a day is only ever extra when two
    different stamps compete for one row (a duplicate start, say).

    Only threads the store already has rows of are looked up: a new thread
    (every thread of a first backfill) is placed by the batch alone. (The
    stamps are picked by `map` and `itemgetter`: a backfill's batches are
    30k rows, a Python loop over each of their lists cost a tenth of a
    second per 200k lines.)
    """
    tool_rows = rows.tool_calls
    threads = set(map(_THREAD, tool_rows))
    for table in (rows.turns, rows.token_usage, rows.api_calls):
        threads.update(map(_THREAD, table))
    stored_threads = await _stored_threads(conn, threads) if threads else set()
    stamps = set(map(_TOOL_START, tool_rows))
    ends = [r for r in tool_rows if r[4] is None]
    ends_only: dict[tuple, int] = {}
    if ends:
        ids = {r[2] for r in ends}  # (few: most calls start in the batch they end in)
        started = {r[:3] for r in tool_rows if r[2] in ids and r[4] is not None}
        ends_only = {r[:3]: r[5] for r in ends if r[:3] not in started}
    if stored_threads:
        mine = [r for r in tool_rows if r[0] in stored_threads]
        keys = {r[:3] for r in mine}
        stored = await _stored(conn, _TOOL_STAMPS, sorted({r[:2] for r in mine}))
        for (thread_id, turn_id), tool_id, start, end in stored:
            key = (thread_id, turn_id, tool_id)
            if key not in keys:
                continue  # another call of the same turn
            stamps.add(start if start is not None else end)  # where it sat before
            if start is not None:
                ends_only.pop(key, None)  # it stays on its start's day
    stamps.update(ends_only.values())  # no start anywhere: its completion's day

    stamps.update(map(_TURN_START, rows.turns))
    stamps.update(map(_RECORDED, rows.token_usage))
    stamps.update(map(_RECORDED, rows.api_calls))
    if stored_threads:
        turn_keys = {
            r[:2]
            for table in (rows.turns, rows.token_usage, rows.api_calls)
            for r in table
            if r[0] in stored_threads
        }
        for _key, start, recorded in await _stored(conn, _TURN_STAMPS, sorted(turn_keys)):
            stamps.update(at for at in (start, recorded) if at is not None)
    stamps.discard(None)  # a tool call's or turn's missing start
    return {ms // DAY_MS for ms in stamps}


# the fields of a batch's row tuples that touched_days reads
_THREAD = itemgetter(0)  # every table's thread_id
_TOOL_START = itemgetter(4)  # tool_calls.started_at_ms
_TURN_START = itemgetter(3)  # turns.started_at_ms
_RECORDED = itemgetter(2)  # token_usage.recorded_at_ms, an API call's too
