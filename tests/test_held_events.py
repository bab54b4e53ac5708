"""Events held by the tool call, turn and token rows (migration 9, `activity_events`).

A tool call's completion, a turn's start and end and a Claude Code API
call are analytics.v2 events kept on the row that holds their instant.
These tests check that this is the same set of events a row per event
gave, through a migration from a store that kept them all in `activity`,
and through any replay after it.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import anyio
from conftest import UNDO_MIGRATION_9, copy_sample, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from test_claude_code import copy_tree

from roder_analyticsd.pipeline.attribute import activity_id
from roder_analyticsd.pipeline.project import NO_EVENTS
from roder_analyticsd.sources.claude_code import CALL
from roder_analyticsd.store.schema import MIGRATIONS

EVENTS = (
    "SELECT event_id, thread_id, occurred_at_ms, class_id, provider, model FROM activity_events"
)


def events(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as conn:
        return sorted(conn.execute(EVENTS).fetchall(), key=repr)


def once(data_dir: Path, claude: Path, store: Path) -> None:
    run_cli("--once", "--best-effort", "--json", "--data-dir", data_dir, "--store", store,
            "--claude-dir", claude)  # fmt: skip


def as_version_8(store: Path, old: Path) -> None:
    """A copy of `store` as a version-8 store holds it: every event a row
    of `activity`."""
    shutil.copy(store, old)
    conn = sqlite3.connect(old, isolation_level=None)
    try:
        columns = "event_id, thread_id, occurred_at_ms, class_id, provider, model"
        conn.execute(f"INSERT INTO activity ({columns}) {EVENTS}"
                     " WHERE (event_id, occurred_at_ms) NOT IN"
                     " (SELECT event_id, occurred_at_ms FROM activity)")  # fmt: skip
        for statement in UNDO_MIGRATION_9:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 8")
    finally:
        conn.close()


def test_a_tool_calls_and_a_turns_events_are_the_ones_a_row_per_event_gave(tmp_path):
    """Tool calls and turns hold events of every held loop stage, and a
    Roder completion's event id is its source line's."""
    data_dir = copy_sample(tmp_path / "roder-data")
    claude = copy_tree(tmp_path / "home")
    store = tmp_path / "usage.sqlite3"
    once(data_dir, claude, store)
    with sqlite3.connect(store) as conn:
        held = (
            conn.execute("SELECT count(*) FROM activity_events").fetchone()[0]
            - conn.execute("SELECT count(*) FROM activity").fetchone()[0]
        )
        completions = conn.execute(
            "SELECT thread_id, completed_at_ms, event_id FROM tool_calls"
            " WHERE agent = 'roder' AND completed_at_ms IS NOT NULL"
        ).fetchall()
        loop_stages = dict(
            conn.execute(
                "SELECT loop_stage, count(*) FROM activity_v2 GROUP BY loop_stage"
            ).fetchall()
        )
    assert held > 0 and completions
    assert loop_stages["loop_start"] and loop_stages["loop_end"] and loop_stages["tool_call"]
    # a Roder completion's event id is its line's (thread, event id, kind) hash
    import json

    lines = {}
    for path in data_dir.rglob("*.jsonl"):
        for raw in path.read_bytes().splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and line.get("kind") == "tool.call_completed":
                body = line["event"]["ToolCallCompleted"]
                lines[activity_id(body["thread_id"], line["event_id"], line["kind"])] = body
    for thread_id, _, event_id in completions:
        assert lines[event_id]["thread_id"] == thread_id


def test_a_store_of_version_8_migrates_without_counting_an_event_twice(tmp_path):
    """Every event of a version-8 store is a row of `activity`; after the
    migration none is held a second time by its row, whatever is read
    again, and a Claude Code call whose stream had not ended then gets its
    event when it ends."""
    data_dir = copy_sample(tmp_path / "roder-data")
    claude = copy_tree(tmp_path / "home")
    store = tmp_path / "usage.sqlite3"
    once(data_dir, claude, store)
    wanted = events(store)

    old = tmp_path / "v8.sqlite3"
    as_version_8(store, old)
    with sqlite3.connect(old) as conn:
        assert conn.execute("SELECT count(*) FROM activity").fetchone()[0] == len(wanted)
        # one call's stream had not ended: no model_request yet
        thread_id, turn_id = conn.execute(
            "SELECT thread_id, turn_id FROM token_usage WHERE agent = 'claude-code'"
            " ORDER BY thread_id, turn_id LIMIT 1"
        ).fetchone()
        unended = activity_id(thread_id, turn_id, CALL)
        assert conn.execute("DELETE FROM activity WHERE event_id = ?", (unended,)).rowcount == 1
    once(data_dir, claude, old)  # migrates, nothing new to read
    with sqlite3.connect(old) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert events(old) == [e for e in wanted if e[0] != unended]

    # every line read again (checkpoints gone): the events held before the
    # migration stay rows of `activity`, none is held a second time; the
    # unended call's event is now held by its token row
    with sqlite3.connect(old) as conn:
        conn.execute("DELETE FROM files")
    once(data_dir, claude, old)
    assert events(old) == wanted
    with sqlite3.connect(old) as conn:
        held = conn.execute(
            "SELECT (SELECT count(*) FROM tool_calls WHERE event_id <> 0)"
            " + (SELECT count(*) FROM turns WHERE start_event_id <> 0 OR end_event_id <> 0)"
            " + (SELECT count(*) FROM token_usage WHERE event_id <> 0)"
        ).fetchone()[0]
        assert conn.execute(
            "SELECT event_id FROM token_usage WHERE thread_id = ? AND turn_id = ?",
            (thread_id, turn_id),
        ).fetchone() == (unended,)
    assert held == 1


def test_forwarding_across_the_migration_gains_the_row_triggers(tmp_path):
    """A store forwarding since before migration 9 puts the events of new
    tool calls and turns in its outbox."""
    from roder_analyticsd.fleet.forwarding import enable_forwarding
    from roder_analyticsd.store.connection import open_store

    data_dir = copy_sample(tmp_path / "roder-data")
    claude = copy_tree(tmp_path / "home")
    store = tmp_path / "usage.sqlite3"
    once(data_dir, claude, store)
    old = tmp_path / "v8.sqlite3"
    as_version_8(store, old)
    with sqlite3.connect(old) as conn:  # forwarding on, as version 8 had it
        conn.execute(
            "CREATE TRIGGER activity_forward_outbox AFTER INSERT ON activity BEGIN"
            " INSERT OR IGNORE INTO forward_outbox (occurred_at_ms, event_id)"
            " VALUES (NEW.occurred_at_ms, NEW.event_id); END"
        )
        conn.execute(
            "INSERT OR IGNORE INTO forward_acked SELECT printf('%016x', event_id) FROM activity"
        )

    async def enable() -> int:
        conn = await open_store(old)
        try:
            return await enable_forwarding(conn)
        finally:
            await conn.close()

    assert anyio.run(enable) == 0  # it was on: nothing re-queued
    with sqlite3.connect(old) as conn:
        conn.execute("DELETE FROM files")
        conn.execute("DELETE FROM tool_calls")
        conn.execute("DELETE FROM turns")
    once(data_dir, claude, old)
    with sqlite3.connect(old) as conn:
        outbox = conn.execute("SELECT count(*) FROM forward_outbox").fetchone()[0]
        held = conn.execute(
            "SELECT (SELECT count(*) FROM tool_calls WHERE event_id <> 0)"
            " + (SELECT count(*) FROM turns WHERE start_event_id <> 0)"
            " + (SELECT count(*) FROM turns WHERE end_event_id <> 0)"
            " + (SELECT count(*) FROM token_usage WHERE event_id <> 0)"
        ).fetchone()[0]
    assert held > 0 and outbox == held


def stored_row(batches: list, table: str, columns: str) -> tuple:
    """The one row of `table` after writing these batches, one transaction
    each, into a new store."""
    from roder_analyticsd.store.connection import open_store
    from roder_analyticsd.store.writer import write_rows

    async def run() -> tuple:
        with tempfile.TemporaryDirectory() as tmp:
            conn = await open_store(Path(tmp) / "store.sqlite3")
            try:
                for rows in batches:
                    await write_rows(conn, rows, [])
                async with conn.execute(f"SELECT {columns} FROM {table}") as cur:
                    return tuple(await cur.fetchone())
            finally:
                await conn.close()

    return anyio.run(run)


# halves of one turn: a start, an end, or a model fact, with events from a
# small pool of ids so ties are common
_TURN_HALVES = st.one_of(
    st.builds(
        lambda at, event: ("t", "u", None, 1000 + at, None, None, None, None, None, None,
                           event, -event, None, None),
        st.integers(0, 2), st.sampled_from([-7, 3, 5]),
    ),
    st.builds(
        lambda at, status, event: ("t", "u", None, None, None, None, None, 2000 + at, status,
                                   "provider" if status == "failed" else None, None, None,
                                   event, -event),
        st.integers(0, 2), st.sampled_from(["completed", "failed"]), st.sampled_from([-7, 3, 5]),
    ),
    st.builds(
        lambda at: ("t", "u", None, None, "openai", "gpt-5", 1500 + at, None, None, None,
                    *NO_EVENTS),
        st.integers(0, 2),
    ),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(_TURN_HALVES, min_size=1, max_size=6), st.randoms())
def test_a_turns_events_merge_in_any_order_in_python_and_in_the_store(halves, rnd) -> None:
    """A turn's start event goes with its earliest start, its end event with
    the terminal status kept (ties: the greater id); the store's upsert
    (one batch per half, in another order) ends with the same row."""
    from functools import reduce

    from roder_analyticsd.pipeline.batch import Rows
    from roder_analyticsd.pipeline.project import merge_turn

    shuffled = list(halves)
    rnd.shuffle(shuffled)
    merged = reduce(merge_turn, halves)
    assert reduce(merge_turn, shuffled) == merged
    starts = [h for h in halves if h[3] is not None]
    assert (merged[3], *merged[10:12]) == max(
        ((h[3], *h[10:12]) for h in starts), key=lambda s: (-s[0], s[1]), default=(None,) * 3
    )
    ends = [h for h in halves if h[8] is not None]
    assert (*merged[7:9], *merged[12:14]) == max(
        ((*h[7:9], *h[12:14]) for h in ends), default=(None,) * 4
    )

    columns = (
        "thread_id, turn_id, runtime_profile, started_at_ms, provider, model, model_at_ms,"
        " completed_at_ms, terminal_status, error_kind, start_event_id, start_class_id,"
        " end_event_id, end_class_id"
    )
    assert stored_row([Rows(turns=[half]) for half in shuffled], "turns", columns) == merged


_TOOL_HALVES = st.one_of(
    st.builds(lambda at: ("t", "u", "c", "shell", 1000 + at, None, None, None, None),
              st.integers(0, 2)),
    st.builds(lambda at, error, event: ("t", "u", "c", None, None, 2000 + at, error, event,
                                        -event),
              st.integers(0, 1), st.integers(0, 1), st.sampled_from([-7, 3, 5])),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(_TOOL_HALVES, min_size=1, max_size=6), st.randoms())
def test_a_tool_calls_event_merges_as_its_completion_in_python_and_in_the_store(halves, rnd):
    from functools import reduce

    from roder_analyticsd.pipeline.batch import Rows
    from roder_analyticsd.pipeline.project import merge_tool_call

    shuffled = list(halves)
    rnd.shuffle(shuffled)
    merged = reduce(merge_tool_call, halves)
    assert reduce(merge_tool_call, shuffled) == merged
    ends = [h[5:9] for h in halves if h[5] is not None]
    assert merged[5:9] == max(ends, default=(None,) * 4)

    columns = (
        "thread_id, turn_id, tool_id, tool_name, started_at_ms, completed_at_ms, is_error,"
        " event_id, class_id"
    )
    got = stored_row([Rows(tool_calls=[half]) for half in shuffled], "tool_calls", columns)
    # (a call never completed is stored with is_error 0)
    assert got == (*merged[:6], merged[6] or 0, *merged[7:])


def test_an_event_whose_instant_moves_is_queued_again_and_found_by_the_pump(tmp_path):
    """The same completion id at a later instant (a line replayed with
    another timestamp): the outbox gets the new key, and the pump builds
    the event from the tool call's row (the old key is consumed as gone)."""
    from roder_analyticsd.fleet.forwarding import enable_forwarding
    from roder_analyticsd.fleet.local import events_for
    from roder_analyticsd.pipeline.attribute import tool_class
    from roder_analyticsd.pipeline.batch import Rows
    from roder_analyticsd.store.connection import open_store
    from roder_analyticsd.store.writer import write_rows

    cls = tool_class(False)
    call = ("thr", "turn", "call", "shell", 1_000, 2_000, 0, 42, cls[0])
    moved = (*call[:5], 2_500, 0, 42, cls[0])

    async def run() -> tuple[list, list, list]:
        conn = await open_store(tmp_path / "store.sqlite3")
        try:
            await enable_forwarding(conn)
            await write_rows(conn, Rows(tool_calls=[call], activity_classes=[cls]), [])
            await write_rows(conn, Rows(tool_calls=[moved]), [])
            await conn.commit()
            async with conn.execute(
                "SELECT occurred_at_ms, event_id, thread_id FROM forward_outbox ORDER BY 1"
            ) as cur:
                keys = [tuple(r) for r in await cur.fetchall()]
            found = await events_for(conn, keys, installation_id="i", instance_id="p")
            return keys, [ev.occurred_at for ev in found], [ev.event_id for ev in found]
        finally:
            await conn.close()

    keys, instants, ids = anyio.run(run)
    assert keys == [(2_000, 42, "thr"), (2_500, 42, "thr")]
    assert instants == ["1970-01-01T00:00:02.500Z"] and ids == [f"{42:016x}"]
