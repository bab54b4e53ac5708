"""Property: at-least-once input, exactly-once effect.

Replaying any subsequence of lines, in any chunking, any number of times,
then every line at least once, ends in the same tables as one clean pass.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

import anyio
from conftest import SAMPLE_DIR, dump_tables
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from roder_analyticsd.pipeline.batch import Batch, Rows
from roder_analyticsd.pipeline.chain import run_stages, stages
from roder_analyticsd.store import deferred_indexes
from roder_analyticsd.store.connection import open_store
from roder_analyticsd.store.maintenance import all_days, refresh_rollups
from roder_analyticsd.store.writer import write_rows

# a parent thread with a subagent, an automation thread and an ordinary one
THREADS = [
    "threads/thr-0003-56e76bab",
    "threads/thr-0003-56e76bab-sub",
    "threads/thr-0013-d3b8c9fc",
    "archived_threads/thr-0002-94ba8f05",
]
LINES: list[bytes] = [
    line
    for thread in THREADS
    for line in (SAMPLE_DIR / thread / "events.jsonl").read_bytes().splitlines()
]
METADATA = [
    (f"{thread}/metadata.json", (SAMPLE_DIR / thread / "metadata.json").read_bytes())
    for thread in THREADS
    if (SAMPLE_DIR / thread / "metadata.json").exists()
]
CHAIN = stages("full_path")


async def _ingest(store: Path, chunks: list[list[bytes]]) -> None:
    conn = await open_store(store)
    try:
        for chunk in chunks:
            batch = run_stages(Batch(path="x", lines=chunk, metadata_files=METADATA), CHAIN)
            await write_rows(conn, batch.rows, [])
        await refresh_rollups(conn, await all_days(conn))
    finally:
        await conn.close()


def _tables(store: Path) -> dict:
    tables = dump_tables(store)
    tables.pop("daily_rollups")  # refreshed_at differs; compared below without it
    conn = sqlite3.connect(store)
    tables["rollups"] = conn.execute(
        "SELECT day, scope, key, turns, tool_calls, tool_errors, total_tokens "
        "FROM daily_rollups ORDER BY 1, 2, 3"
    ).fetchall()
    conn.close()
    return tables


_clean: dict[str, dict] = {}


def clean_tables(tmp: Path) -> dict:
    if "t" not in _clean:
        store = tmp / "clean.sqlite3"
        anyio.run(_ingest, store, [LINES])
        _clean["t"] = _tables(store)
    return _clean["t"]


indexes = st.integers(min_value=0, max_value=len(LINES) - 1)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    replays=st.lists(st.lists(indexes, max_size=60), max_size=6),
    order=st.permutations(range(len(LINES))),
    cut=st.integers(min_value=1, max_value=500),
)
def test_replays_in_any_order_and_chunking_equal_one_clean_pass(
    tmp_path_factory, replays, order, cut
):
    tmp = tmp_path_factory.mktemp("replay")
    chunks = [[LINES[i] for i in replay] for replay in replays]
    shuffled = [LINES[i] for i in order]
    chunks += [shuffled[i : i + cut] for i in range(0, len(shuffled), cut)]
    store = tmp / "replayed.sqlite3"
    anyio.run(_ingest, store, chunks)
    assert _tables(store) == clean_tables(tmp_path_factory.mktemp("clean"))


def test_clean_pass_is_not_trivially_empty(tmp_path):
    tables = clean_tables(tmp_path)
    assert len(tables["turns"]) > 10
    assert len(tables["tool_calls"]) > 50
    assert any(row[-1] == "completed" for row in tables["turns"])
    assert tables["thread_owners"]


# --- Claude Code's API calls: sidechain copies, in any arrival order ------------

# (session, message id, request id): one message under three keys, another, none
_CALL_IDS = [("s1", "m1", "r1"), ("s1", "m1", "r2"), ("s2", "m1", "r1"), ("s2", "m2", "r1"),
             ("s1", None, "u1")]  # fmt: skip
# (a copy that ends its stream knows the call's event: one id per key; its
# class is its sidechain flag's)
calls = st.builds(
    lambda ids, at, total, sidechain, prompt, final: (
        ids[0], f"{ids[1]}:{ids[2]}" if ids[1] else f"uuid:{ids[2]}", 1_790_000_000_000 + at,
        total, 1, total + 1, 0, 0, 0, "anthropic", "claude-x", ids[1], sidechain, prompt,
        _CALL_IDS.index(ids) + 1 if final else None, -1 - sidechain,
    ),
    st.sampled_from(_CALL_IDS), st.integers(0, 2), st.integers(1, 3), st.integers(0, 1),
    st.sampled_from([None, "p1", "p2"]), st.booleans(),
)  # fmt: skip


async def _write_calls(
    store: Path, groups: list[list[tuple]], *, bulk: bool = False
) -> list[tuple]:
    """The stored calls after writing these groups, one write each. `bulk`:
    as a first backfill writes them, its deferred indexes dropped before
    and built after (the sidechain calls held back meanwhile)."""
    conn = await open_store(store)
    try:
        if bulk:
            async with deferred_indexes.deferred(conn) as dropped:
                assert dropped
                for group in groups:
                    await write_rows(conn, Rows(api_calls=group), [], "claude-code")
                    # a reader never sees a sidechain copy before the rule is applied
                    async with conn.execute(
                        "SELECT count(*) FROM token_usage WHERE is_sidechain = 1"
                    ) as cur:
                        assert (await cur.fetchone())[0] == 0
        for group in [] if bulk else groups:
            await write_rows(conn, Rows(api_calls=group), [], "claude-code")
        async with conn.execute("SELECT count(*) FROM pending_sidechain_calls") as cur:
            assert (await cur.fetchone())[0] == 0
        sql = (
            "SELECT thread_id, turn_id, recorded_at_ms, prompt_tokens, completion_tokens,"
            " total_tokens, cached_prompt_tokens, cache_creation_prompt_tokens,"
            " cache_creation_1h_prompt_tokens, provider, model, message_id, is_sidechain,"
            " prompt_id, agent, event_id, class_id"
            " FROM token_usage ORDER BY thread_id, turn_id"
        )
        async with conn.execute(sql) as cur:
            return list(await cur.fetchall())
    finally:
        await conn.close()


def copies_of(rows: list, stored: tuple) -> list:
    """The written copies of a stored call's key with its sidechain flag."""
    return [(r, g) for r, g in rows if r[:2] == stored[:2] and r[12] == stored[12]]


def _call(session: str, request: str, sidechain: int) -> tuple:
    return (session, f"m1:{request}", 1_790_000_000_000, 1, 1, 2, 0, 0, 0, "anthropic",
            "claude-x", "m1", sidechain, None, None, -1 - sidechain)  # fmt: skip


@settings(max_examples=100)
@given(rows=st.lists(st.tuples(calls, st.integers(0, 2)), min_size=1, max_size=8))
# a stored copy, then its key's own non-sidechain call with another owner beside it
@example(rows=[(_call("s1", "r1", 1), 0), (_call("s1", "r1", 0), 1), (_call("s1", "r2", 0), 1)])
def test_calls_and_sidechain_copies_in_any_order_and_grouping(tmp_path_factory, rows):
    """A sidechain copy of a message that a non-sidechain call holds under
    another key is never kept, whichever comes first, in one write or in
    several; otherwise each key keeps its best copy."""
    tmp = tmp_path_factory.mktemp("calls")
    ordered = sorted((row for row, _ in rows), key=lambda r: (r[:13], r[13] or ""))
    whole = anyio.run(_write_calls, tmp / "one.sqlite3", [ordered])
    groups = [[row for row, group in rows if group == n] for n in range(3)]
    assert anyio.run(_write_calls, tmp / "split.sqlite3", groups) == whole
    bulk = functools.partial(_write_calls, bulk=True)
    assert anyio.run(bulk, tmp / "bulk.sqlite3", groups) == whole
    held = {r[11] for r in whole if r[11] is not None and not r[12]}
    assert not [r for r in whole if r[12] and r[11] in held]
    # each kept row's prompt: of its key's copies with its sidechain flag, a
    # known prompt before none, the greatest of them
    for stored in whole:
        copies = [r[13] for r, _ in copies_of(rows, stored)]
        assert stored[13] == max((p for p in copies if p is not None), default=None)
        # its model_request: known if a copy of its key with its sidechain
        # flag ended the stream; its class, that flag's
        events = {r[14] for r, _ in copies_of(rows, stored)} - {None}
        assert stored[15] == (events.pop() if events else None)
        assert stored[16] == -1 - stored[12]


def test_the_sidechain_lookup_probes_the_sidechain_rows_alone(tmp_path):
    """The lookup every non-sidechain call makes (its message id's stored
    sidechain copies) reads the small index of sidechain rows, not the
    message-id index of every call."""
    from roder_analyticsd.store.writer import _SIDECHAIN_ROWS

    async def plan() -> str:
        conn = await open_store(tmp_path / "store.sqlite3")
        try:
            async with conn.execute(f"EXPLAIN QUERY PLAN {_SIDECHAIN_ROWS}", ("[]",)) as cur:
                return " ".join(str(row[-1]) for row in await cur.fetchall())
        finally:
            await conn.close()

    assert "token_usage_sidechain" in anyio.run(plan)
