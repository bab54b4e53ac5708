"""Schema and migrations. The store is a public interface (people open it
with sqlite3, Datasette, notebooks): columns are only ever added.

Merging is done by upserts (see writer.py) over columns that record *when*
each fact was true, so rows converge to the same values whatever order the
events arrive in and however often they are replayed. Derived values
(`status`, `duration_ms`) are generated columns: they cannot disagree with
the facts they are derived from.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # queries import this module without an event loop
    import aiosqlite

from roder_analyticsd.store.transaction import transaction

DAY_MS = 86_400_000

# The analytics.v2 receiver's and forwarder's tables (migration 3; the
# receiver also creates them in a store of its own, see fleet/stores/sqlite.py).
COLLECTED_DDL = """
CREATE TABLE IF NOT EXISTS collected_events (
    event_id TEXT PRIMARY KEY,
    received_at_ms INTEGER NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    day TEXT NOT NULL,                  -- UTC YYYY-MM-DD of occurred_at_ms
    event_name TEXT NOT NULL,           -- feature_used | error_occurred
    installation_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    deployment_mode TEXT NOT NULL,
    session_id TEXT,                    -- 24 lowercase hex
    commit_hash TEXT NOT NULL,
    app_version TEXT NOT NULL,
    platform TEXT NOT NULL,
    module TEXT,                        -- properties.* when a string
    owner_module TEXT,
    execution_kind TEXT,
    phase TEXT,
    loop_stage TEXT,
    outcome TEXT,
    error_category TEXT,
    provider TEXT,
    model TEXT,
    properties_json TEXT NOT NULL       -- redacted properties, keys sorted
);
CREATE INDEX IF NOT EXISTS collected_events_at ON collected_events (occurred_at_ms);
CREATE INDEX IF NOT EXISTS collected_events_day_installation
    ON collected_events (day, installation_id);
CREATE INDEX IF NOT EXISTS collected_events_module
    ON collected_events (module, loop_stage, outcome);

-- unsent events of the forwarder, oldest first (by rowid)
CREATE TABLE IF NOT EXISTS forward_queue (
    event_id TEXT PRIMARY KEY,
    body BLOB NOT NULL,                 -- the redacted event, JSON
    enqueued_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);

-- acknowledged by the receiver: never enqueued again
CREATE TABLE IF NOT EXISTS forward_acked (
    event_id TEXT PRIMARY KEY
) WITHOUT ROWID;
"""


# The views over `activity` as migrations 1, 3 and 4 made them (9 replaced them).
ACTIVITY_V2_VIEW_V1 = """
    CREATE VIEW activity_v2 AS
    SELECT a.event_id, a.thread_id, a.occurred_at_ms, c.event_name, c.module,
           COALESCE(c.owner_module, t.owner_module, 'session') AS owner_module,
           COALESCE(c.execution_kind, t.execution_kind, 'user_session') AS execution_kind,
           c.loop_stage, c.outcome, c.error_category, c.phase, a.provider, a.model
    FROM activity a
    JOIN activity_classes c ON c.class_id = a.class_id
    LEFT JOIN thread_attribution t ON t.thread_id = a.thread_id;
"""


class HeldEvent(NamedTuple):
    """Where a row holds an analytics.v2 event (migration 9): its id, instant
    and class columns, and its provider/model (SQL: a column or NULL). An id
    of 0 means the event is a row of `activity`."""

    table: str
    event_id: str
    occurred_at_ms: str
    class_id: str
    provider: str = "NULL"
    model: str = "NULL"

    def columns(self, alias: str = "") -> str:
        """The event's columns in `activity_events` order, read from `alias`."""
        p = f"{alias}." if alias else ""
        return ", ".join(
            f"{p}{c}" if c != "NULL" else c
            for c in (self.event_id, "thread_id", self.occurred_at_ms, self.class_id,
                      self.provider, self.model)
        )  # fmt: skip


# The view, the forwarder's triggers and its pump read events from these
# (and `activity`). Migration 9's view was made from this list: a change to
# it needs a migration of its own.
HELD_EVENTS = (
    HeldEvent("tool_calls", "event_id", "completed_at_ms", "class_id"),
    HeldEvent("turns", "start_event_id", "started_at_ms", "start_class_id"),
    HeldEvent("turns", "end_event_id", "completed_at_ms", "end_class_id"),
    HeldEvent("token_usage", "event_id", "recorded_at_ms", "class_id", "provider", "model"),
)

# Every local analytics.v2 event: a row of `activity`, or held by the tool
# call, turn or token row whose instant it is (migration 9).
ACTIVITY_EVENTS_VIEW = (
    "\n    CREATE VIEW activity_events AS\n"
    "    SELECT event_id, thread_id, occurred_at_ms, class_id, provider, model FROM activity\n"
    + "".join(
        f"    UNION ALL\n    SELECT {held.columns()}\n"
        f"    FROM {held.table} WHERE {held.event_id} <> 0\n"
        for held in HELD_EVENTS
    ).rstrip()
    + ";\n"
)

# The analytics.v2 fields of an event row `a` (of activity_events) with its
# class `c` and its thread's attribution `t`.
V2_COLUMNS = """a.event_id, a.thread_id, a.occurred_at_ms, c.event_name, c.module,
           COALESCE(c.owner_module, t.owner_module, 'session') AS owner_module,
           COALESCE(c.execution_kind, t.execution_kind, 'user_session') AS execution_kind,
           c.loop_stage, c.outcome, c.error_category, c.phase, a.provider, a.model"""
V2_JOINS = """JOIN activity_classes c ON c.class_id = a.class_id
    LEFT JOIN thread_attribution t ON t.thread_id = a.thread_id"""

ACTIVITY_V2_VIEW = f"""
    CREATE VIEW activity_v2 AS
    SELECT {V2_COLUMNS}
    FROM activity_events a
    {V2_JOINS};
"""

LOCAL_V2_VIEW = """
    CREATE VIEW local_v2_events AS
    SELECT printf('%016x', a.event_id) AS event_id,   -- the analytics.v2 eventId
           a.occurred_at_ms, a.event_name,
           (SELECT value FROM meta WHERE key = 'installation_id') AS installation_id,
           (SELECT value FROM meta WHERE key = 'installation_id') AS instance_id,
           a.thread_id AS session_id,
           a.module, a.owner_module, a.execution_kind, a.phase, a.loop_stage, a.outcome,
           a.error_category, a.provider, a.model
    FROM activity_v2 a;
"""


# 4: backfill speed.
# - `activity` is keyed by (occurred_at_ms, event_id). It used to be keyed by
#   the hash alone, so every batch's inserts landed on random pages and each
#   commit rewrote most of the table; a thread's events sit together in
#   time, so now a batch touches a few pages, and time windows and
#   retention read one key range (no second index). A source line's
#   identity is its hash and its time, both fixed by the line.
# - the days whose rollups are stale are rows of `rollup_dirty_days`, not
#   one JSON value in `meta` rewritten by every batch. (Triggers could mark
#   them, but any UPDATE trigger on tool_calls, even one that never fires,
#   doubles the cost of its upserts.)
MIGRATION_4 = (
    """
    DROP VIEW local_v2_events;
    DROP VIEW activity_v2;
    CREATE TABLE activity_by_time (
        occurred_at_ms INTEGER NOT NULL,
        event_id INTEGER NOT NULL,          -- 64-bit hash of the source line's identity
        thread_id TEXT,
        class_id INTEGER NOT NULL,
        provider TEXT,
        model TEXT,
        PRIMARY KEY (occurred_at_ms, event_id)
    ) WITHOUT ROWID;
    INSERT INTO activity_by_time (occurred_at_ms, event_id, thread_id, class_id, provider, model)
        SELECT occurred_at_ms, event_id, thread_id, class_id, provider, model FROM activity;
    DROP TABLE activity;
    ALTER TABLE activity_by_time RENAME TO activity;
    """
    + ACTIVITY_V2_VIEW_V1
    + LOCAL_V2_VIEW
    + """
    -- emptied: enabling forwarding refills it from unacknowledged activity
    DROP TABLE forward_outbox;
    CREATE TABLE forward_outbox (
        occurred_at_ms INTEGER NOT NULL,
        event_id INTEGER NOT NULL,
        PRIMARY KEY (occurred_at_ms, event_id)
    ) WITHOUT ROWID;

    CREATE TABLE rollup_dirty_days (
        day INTEGER PRIMARY KEY             -- UTC day number: days since 1970-01-01
    );
    INSERT OR IGNORE INTO rollup_dirty_days (day)
        SELECT CAST(julianday(value) - 2440587.5 AS INTEGER)
        FROM json_each((SELECT value FROM meta WHERE key = 'rollup_dirty_days'));
    DELETE FROM meta WHERE key = 'rollup_dirty_days';
    """
)


# 5: a second source (Claude Code, see claude-code.md): the agent of every
# row, and what a Claude Code API call knows beyond a Roder turn's usage.
# `activity` rows take their agent from their thread's session row.
MIGRATION_5 = """
    ALTER TABLE sessions ADD COLUMN agent TEXT NOT NULL DEFAULT 'roder';
    ALTER TABLE turns ADD COLUMN agent TEXT NOT NULL DEFAULT 'roder';
    ALTER TABLE tool_calls ADD COLUMN agent TEXT NOT NULL DEFAULT 'roder';
    ALTER TABLE token_usage ADD COLUMN agent TEXT NOT NULL DEFAULT 'roder';
    -- a call's own provider/model (NULL: the turn's, as for Roder's rows)
    ALTER TABLE token_usage ADD COLUMN provider TEXT;
    ALTER TABLE token_usage ADD COLUMN model TEXT;
    -- the 1-hour part of cache_creation_prompt_tokens (priced differently)
    ALTER TABLE token_usage ADD COLUMN cache_creation_1h_prompt_tokens INTEGER NOT NULL DEFAULT 0;
    -- a Claude Code call's message id, and whether a sidechain line gave it:
    -- a sidechain copy of a message a non-sidechain line has is no call of its own
    ALTER TABLE token_usage ADD COLUMN message_id TEXT;
    ALTER TABLE token_usage ADD COLUMN is_sidechain INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX token_usage_message ON token_usage (message_id) WHERE message_id IS NOT NULL;
"""

# 6: token rows summed per UTC day, hour and quarter hour (store/token_rollups.py),
# a cache that queries read for every day not marked dirty; every day with
# token rows starts marked, so the first refresh fills it.
MIGRATION_6 = """
    CREATE TABLE token_rollups (
        width_ms INTEGER NOT NULL,          -- the bucket's width: a day, an hour or a quarter hour
        bucket INTEGER NOT NULL,            -- recorded_at_ms / width_ms
        agent TEXT NOT NULL,
        provider TEXT,                      -- the row's own, else its turn's
        model TEXT,
        band INTEGER NOT NULL,              -- how many PROMPT_BANDS the priced prompt exceeds
        row_count INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,     -- sums of the stored counts
        completion_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        cached_prompt_tokens INTEGER NOT NULL,
        cache_creation_prompt_tokens INTEGER NOT NULL,
        priced_prompt INTEGER NOT NULL,     -- sums of the counts as priced (clamped)
        priced_completion INTEGER NOT NULL,
        priced_cached INTEGER NOT NULL,
        priced_creation INTEGER NOT NULL,
        priced_creation_1h INTEGER NOT NULL,
        first_at_ms INTEGER NOT NULL,       -- the earliest row's instant
        least_priced_prompt INTEGER NOT NULL
    );
    CREATE INDEX token_rollups_bucket ON token_rollups (width_ms, bucket);
    INSERT OR IGNORE INTO rollup_dirty_days (day)
        SELECT DISTINCT recorded_at_ms / 86400000 FROM token_usage;
"""

# 7: a Claude Code call's prompt (claude-code.md, "Turns"). Tool calls and API
# calls keep their keys (a replay may start mid-turn: a key by turn could
# count a call twice); `prompt_id` is the turn id of the prompt they belong
# to (NULL: not known, and on every Roder row, whose turn_id is its turn).
# A file's checkpoint keeps its sessions' current prompts (`files.prompts`,
# JSON; NULL for Roder's), so a read in steps or after a restart ties
# calls as one whole read does. The index serves `--tool` on turns and
# token rows: a prompt's calls of a tool.
MIGRATION_7 = """
    ALTER TABLE tool_calls ADD COLUMN prompt_id TEXT;
    ALTER TABLE token_usage ADD COLUMN prompt_id TEXT;
    ALTER TABLE files ADD COLUMN prompts TEXT;
    CREATE INDEX tool_calls_prompt ON tool_calls (thread_id, prompt_id, tool_name)
        WHERE prompt_id IS NOT NULL;
"""

# 8: the sidechain rule's lookup from a non-sidechain call (its message id's
# stored sidechain copies, store/writer.py) probes an index of the sidechain
# rows alone: a few percent of the calls, always in cache, where the
# message-id index of every call cost a page read per probe (1M lines:
# 1.4 s of lookups became 0.3 s).
MIGRATION_8 = """
    CREATE INDEX token_usage_sidechain ON token_usage (message_id) WHERE is_sidechain = 1;
"""

# 9: fewer rows per event. A tool call's completion, a turn's start and end
# (a Claude Code prompt's too) and a Claude Code API call are analytics.v2
# events that were each a row of `activity` beside the row that already
# holds their instant: half of all activity rows of a Roder log, all of a
# Claude Code log's. Their id and class now go with that instant on the
# tool call's, the turn's or the token row, and `activity_events` is the
# union. An id of 0 marks an event stored before this migration: it stays a
# row of `activity` (kept whatever replays come, so none is counted twice).
# Which API calls had one is found by their ids (`hold_call_events`, run
# after this script): a call whose stream had not ended has none yet.
# `forward_outbox` keeps the thread of an outbox row, which finds a tool
# call's or turn's event by its primary key's prefix.
MIGRATION_9 = (
    """
    DROP VIEW local_v2_events;
    DROP VIEW activity_v2;
    ALTER TABLE tool_calls ADD COLUMN event_id INTEGER;   -- its completion's analytics.v2 id
    ALTER TABLE tool_calls ADD COLUMN class_id INTEGER;
    ALTER TABLE turns ADD COLUMN start_event_id INTEGER;
    ALTER TABLE turns ADD COLUMN start_class_id INTEGER;
    ALTER TABLE turns ADD COLUMN end_event_id INTEGER;
    ALTER TABLE turns ADD COLUMN end_class_id INTEGER;
    ALTER TABLE token_usage ADD COLUMN event_id INTEGER;  -- a Claude Code call's model_request
    ALTER TABLE token_usage ADD COLUMN class_id INTEGER;
    UPDATE tool_calls SET event_id = 0 WHERE completed_at_ms IS NOT NULL;
    UPDATE turns SET start_event_id = CASE WHEN started_at_ms IS NOT NULL THEN 0 END,
                     end_event_id = CASE WHEN terminal_status IS NOT NULL THEN 0 END
    WHERE started_at_ms IS NOT NULL OR terminal_status IS NOT NULL;
    ALTER TABLE forward_outbox ADD COLUMN thread_id TEXT;
    """
    + ACTIVITY_EVENTS_VIEW
    + ACTIVITY_V2_VIEW
    + LOCAL_V2_VIEW
)

# 10: a first backfill builds the message-id index at its end too: its
# random keys made each Claude Code call cost a page or two (1M lines: the
# calls' upserts 2.6 s, 1.2 s without it). The one rule that reads it
# during a load, a sidechain copy of a message a non-sidechain row holds is
# no call of its own, is then applied at the end: a bulk load keeps the
# sidechain calls here, committed with the lines they came from, and puts
# them through that rule at its end, before the indexes are built
# (store/writer.py apply_pending_sidechains). Readers never see a copy the
# rule drops.
MIGRATION_10 = """
    CREATE TABLE pending_sidechain_calls (  -- an API call's row as the writer gets it
        thread_id TEXT NOT NULL,
        turn_id TEXT NOT NULL,
        recorded_at_ms INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        cached_prompt_tokens INTEGER NOT NULL,
        cache_creation_prompt_tokens INTEGER NOT NULL,
        cache_creation_1h_prompt_tokens INTEGER NOT NULL,
        provider TEXT,
        model TEXT,
        message_id TEXT,
        is_sidechain INTEGER NOT NULL,
        prompt_id TEXT,
        event_id INTEGER,
        class_id INTEGER
    );
    CREATE INDEX pending_sidechain_calls_message ON pending_sidechain_calls (message_id);
"""

AGENTS = ("roder", "claude-code")


def day_number_sql(ms: str) -> str:
    """SQL for the UTC day number of the instant `ms` (an expression), as
    Python's `ms // DAY_MS`: SQLite's integer division truncates toward
    zero, one day late for an instant before 1970 not on a day's start."""
    return f"({ms} / {DAY_MS} - ({ms} < 0 AND {ms} % {DAY_MS} != 0))"


MIGRATIONS: list[str] = [
    # 1: the analytics tables, checkpoints, attribution, rollups
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    -- one row per events.jsonl: identity survives a rename (archiving)
    CREATE TABLE files (
        file_key TEXT PRIMARY KEY,          -- "dev:ino"
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        path TEXT NOT NULL,                 -- relative to the data dir, last seen
        offset INTEGER NOT NULL,            -- just past the last complete line consumed
        line_no INTEGER NOT NULL,           -- complete lines consumed
        fp_len INTEGER NOT NULL,
        fp_hash TEXT NOT NULL,              -- hash of the first fp_len bytes
        updated_at_ms INTEGER NOT NULL
    );

    CREATE TABLE sessions (
        thread_id TEXT PRIMARY KEY,
        workspace_key TEXT,                 -- FNV-1a 64 of the path, whatever the label mode
        workspace_label TEXT,               -- per [analytics].workspace_labels
        workspace_at_ms INTEGER,
        provider TEXT,
        provider_at_ms INTEGER,
        model TEXT,
        model_at_ms INTEGER,
        created_at_ms INTEGER,
        updated_at_ms INTEGER
    ) WITHOUT ROWID;

    CREATE TABLE turns (
        thread_id TEXT NOT NULL,
        turn_id TEXT NOT NULL,
        provider TEXT,
        model TEXT,
        model_at_ms INTEGER,                -- time of the InferenceStarted that set provider/model
        runtime_profile TEXT,
        started_at_ms INTEGER,
        completed_at_ms INTEGER,
        terminal_status TEXT,               -- completed | failed | interrupted | timeout
        error_kind TEXT,
        status TEXT GENERATED ALWAYS AS (COALESCE(terminal_status, 'running')) VIRTUAL,
        PRIMARY KEY (thread_id, turn_id)
    ) WITHOUT ROWID;
    CREATE INDEX turns_started ON turns (started_at_ms);

    CREATE TABLE tool_calls (
        thread_id TEXT NOT NULL,
        turn_id TEXT NOT NULL,
        tool_id TEXT NOT NULL,
        tool_name TEXT,
        started_at_ms INTEGER,
        completed_at_ms INTEGER,
        is_error INTEGER NOT NULL DEFAULT 0,
        duration_ms INTEGER GENERATED ALWAYS AS (completed_at_ms - started_at_ms) VIRTUAL,
        status TEXT GENERATED ALWAYS AS (
            CASE WHEN completed_at_ms IS NULL THEN 'running'
                 WHEN is_error THEN 'error' ELSE 'success' END) VIRTUAL,
        -- the day a call belongs to: its start, else its completion
        at_ms INTEGER GENERATED ALWAYS AS (COALESCE(started_at_ms, completed_at_ms)) VIRTUAL,
        PRIMARY KEY (thread_id, turn_id, tool_id)
    ) WITHOUT ROWID;
    CREATE INDEX tool_calls_by_tool ON tool_calls (tool_name, duration_ms);
    CREATE INDEX tool_calls_at ON tool_calls (at_ms);

    CREATE TABLE token_usage (
        thread_id TEXT NOT NULL,
        turn_id TEXT NOT NULL,
        recorded_at_ms INTEGER NOT NULL,    -- the terminal event's time
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        cached_prompt_tokens INTEGER NOT NULL,
        cache_creation_prompt_tokens INTEGER NOT NULL,
        PRIMARY KEY (thread_id, turn_id)
    ) WITHOUT ROWID;
    CREATE INDEX token_usage_at ON token_usage (recorded_at_ms);

    -- analytics.v2 attribution of local events: one narrow row per source
    -- event, its classification in activity_classes (a handful of rows).
    -- Owner fields NULL there mean "the thread's owner" (see activity_v2).
    CREATE TABLE activity_classes (
        class_id INTEGER PRIMARY KEY,       -- 64-bit hash of the fields below
        event_name TEXT NOT NULL,
        module TEXT NOT NULL,
        owner_module TEXT,
        execution_kind TEXT,
        loop_stage TEXT NOT NULL,
        outcome TEXT,
        error_category TEXT,
        phase TEXT
    );

    CREATE TABLE activity (
        event_id INTEGER PRIMARY KEY,       -- 64-bit hash of the source line's identity
        thread_id TEXT,
        occurred_at_ms INTEGER NOT NULL,
        class_id INTEGER NOT NULL,
        provider TEXT,
        model TEXT
    );
    CREATE INDEX activity_at ON activity (occurred_at_ms);

    CREATE TABLE thread_owners (
        thread_id TEXT PRIMARY KEY,
        owner_kind TEXT NOT NULL,           -- subagent | cron_job
        parent_thread_id TEXT
    );

    -- per thread: who owns it, following subagent parents up the chain
    CREATE VIEW thread_attribution AS
    WITH RECURSIVE chain (thread_id, cur, depth) AS (
        SELECT thread_id, thread_id, 0 FROM thread_owners
        UNION ALL
        SELECT c.thread_id, o.parent_thread_id, c.depth + 1
        FROM chain c JOIN thread_owners o ON o.thread_id = c.cur
        WHERE o.owner_kind = 'subagent' AND o.parent_thread_id IS NOT NULL AND c.depth < 32
    )
    SELECT o.thread_id,
           CASE o.owner_kind WHEN 'subagent' THEN 'subagent' ELSE 'cron_job' END AS execution_kind,
           CASE WHEN EXISTS (
                    SELECT 1 FROM chain c JOIN thread_owners p ON p.thread_id = c.cur
                    WHERE c.thread_id = o.thread_id AND p.owner_kind = 'cron_job')
                THEN 'cron_job' ELSE 'session' END AS owner_module
    FROM thread_owners o;

    """
    + ACTIVITY_V2_VIEW_V1
    + """
    -- daily rollups (UTC days): scope 'all' (key ''), 'tool' (tool name),
    -- 'model' (provider/model); recomputed for touched days only
    CREATE TABLE daily_rollups (
        day TEXT NOT NULL,
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        turns INTEGER NOT NULL DEFAULT 0,
        tool_calls INTEGER NOT NULL DEFAULT 0,
        tool_errors INTEGER NOT NULL DEFAULT 0,
        tool_duration_ms INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0,
        cached_prompt_tokens INTEGER NOT NULL DEFAULT 0,
        cache_creation_prompt_tokens INTEGER NOT NULL DEFAULT 0,
        refreshed_at_ms INTEGER NOT NULL,
        PRIMARY KEY (day, scope, key)
    );
    """,
    # 2: `stats tools` reads per-tool counts, errors, durations, time
    # windows and the percentile walks from this one index, never the table.
    # Its keys are expressions over real columns (= duration_ms, and the
    # start/completion that make at_ms): SQLite cannot cover a query that
    # names a generated column. It supersedes (tool_name, duration_ms).
    """
    CREATE INDEX tool_calls_stats ON tool_calls (
        tool_name, (completed_at_ms - started_at_ms), started_at_ms, completed_at_ms, is_error);
    DROP INDEX IF EXISTS tool_calls_by_tool;
    """,
    # 3: analytics.v2 in the same store: the receiver's and forwarder's
    # tables (COLLECTED_DDL, also used by fleet/stores/sqlite.py). forward_outbox
    # holds activity rows not yet handed to the forwarder; the trigger that
    # fills it exists only while forwarding is on (see fleet/forwarding.py), so
    # ingest pays nothing for it otherwise.
    # local_v2_events shows local activity with the columns of a fleet
    # source: one installation, and since local rows belong to no process,
    # instance_id = installation_id; session_id = the raw thread id (it is
    # only hashed when an event leaves the machine).
    COLLECTED_DDL
    + """
    CREATE TABLE forward_outbox (
        event_id INTEGER PRIMARY KEY        -- activity.event_id
    );

    """
    + LOCAL_V2_VIEW,
    MIGRATION_4,
    MIGRATION_5,
    MIGRATION_6,
    MIGRATION_7,
    MIGRATION_8,
    MIGRATION_9,
    MIGRATION_10,
]

SCHEMA_VERSION = len(MIGRATIONS)

ANALYTICS_TABLES = (
    "sessions", "turns", "tool_calls", "token_usage", "activity", "activity_classes",
    "thread_owners",
    "daily_rollups", "rollup_dirty_days", "token_rollups", "files", "pending_sidechain_calls",
)  # fmt: skip


class StoreError(Exception):
    """An expected store failure (locked, read-only, not a database...)."""


async def migrate(conn: aiosqlite.Connection) -> int:
    """Bring the store to SCHEMA_VERSION; returns the version found.

    The version is read under the write lock (BEGIN IMMEDIATE) and every
    pending migration runs in that one transaction: of two processes
    opening a new store together, the second finds it migrated."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    if (int(row[0]) if row else 0) == SCHEMA_VERSION:
        return SCHEMA_VERSION  # the common case: no write lock taken
    async with transaction(conn):
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {found} is newer than this roder-analyticsd "
                f"({SCHEMA_VERSION})"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[version]):
                await conn.execute(statement)
            if version + 1 == 9:
                await hold_call_events(conn)
        if found < SCHEMA_VERSION:
            await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return found


async def hold_call_events(conn: aiosqlite.Connection) -> int:
    """Migration 9's step that SQL cannot take: the Claude Code API calls
    whose model_request is a row of `activity` are marked 0 (it stays
    there). Their event ids hash the row's key (pipeline/claude_code.py),
    so only Python can tell which; the others get theirs when their stream
    ends. The ids go through a temporary table, so memory stays bounded
    whatever the store's size. Returns how many were marked."""
    from roder_analyticsd.pipeline.attribute import activity_id
    from roder_analyticsd.sources.claude_code import CALL

    await conn.execute(
        "CREATE TEMP TABLE call_events (event_id INTEGER PRIMARY KEY, thread_id TEXT, turn_id TEXT)"
    )
    try:
        async with conn.execute(
            "SELECT thread_id, turn_id FROM token_usage WHERE agent = 'claude-code'"
        ) as cur:
            while keys := await cur.fetchmany(10_000):
                await conn.executemany(
                    "INSERT OR IGNORE INTO temp.call_events VALUES (?, ?, ?)",
                    [(activity_id(t, u, CALL), t, u) for t, u in keys],
                )
        cur = await conn.execute(
            "UPDATE token_usage SET event_id = 0 WHERE (thread_id, turn_id) IN ("
            " SELECT c.thread_id, c.turn_id FROM activity a"
            " JOIN temp.call_events c ON c.event_id = a.event_id)"
        )
        return cur.rowcount
    finally:
        await conn.execute("DROP TABLE temp.call_events")


def _statements(script: str) -> list[str]:
    """Split a script into statements (sqlite3.complete_statement aware)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
