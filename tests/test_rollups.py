"""Incremental rollups equal a full recompute: exact touched days, dirty
days that survive a crash, and retention that keeps the rollups of what it
prunes (they are the long-term record)."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

import anyio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from roder_analyticsd.config import load_settings
from roder_analyticsd.live.ingest import Ingestor, Report, run_once
from roder_analyticsd.pipeline.project import NO_EVENTS
from roder_analyticsd.sources.roder import discover
from roder_analyticsd.store.connection import open_store
from roder_analyticsd.store.maintenance import DAY_MS, all_days, prune, refresh_rollups

D1 = 1_790_899_200_000  # 2026-10-02T00:00:00Z
D2 = D1 + DAY_MS
ROLLUP_COLUMNS = """day, scope, key, turns, tool_calls, tool_errors, tool_duration_ms,
    prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
    cache_creation_prompt_tokens"""


def ts(ms: int) -> str:
    import time

    secs, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}Z"


def line(ms: int, kind: str, variant: str, thread: str = "thr-1", turn: str = "turn-1", **p):
    payload = {"thread_id": thread, "turn_id": turn, "timestamp": ts(ms), **p}
    env = {"event_id": f"evt-{kind}-{ms}-{thread}-{turn}", "seq": 1, "timestamp": ts(ms),
           "source": "Core", "kind": kind, "thread_id": thread, "turn_id": turn,
           "event": {variant: payload}}  # fmt: skip
    return json.dumps(env) + "\n"


def tool_start(ms: int, tool_id: str, name: str, **kw) -> str:
    return line(ms, "tool.call_started", "ToolCallStarted", tool_id=tool_id, tool_name=name, **kw)


def tool_end(ms: int, tool_id: str, name: str, **kw) -> str:
    kind, variant = "tool.call_completed", "ToolCallCompleted"
    return line(ms, kind, variant, tool_id=tool_id, tool_name=name, **kw)


USAGE = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}


def write(data_dir: Path, thread_dir: str, *lines: str) -> None:
    path = data_dir / "threads" / thread_dir / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write("".join(lines))


def once(data_dir: Path, store: Path) -> None:
    async def go() -> None:
        conn = await open_store(store)
        try:
            await run_once(conn, load_settings(data_dir, store), rebuild=False, strict=False)
        finally:
            await conn.close()

    anyio.run(go)


def rollups(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as conn:
        return conn.execute(
            f"SELECT {ROLLUP_COLUMNS} FROM daily_rollups ORDER BY 1, 2, 3"
        ).fetchall()


def recomputed(store: Path, tmp_path: Path) -> list[tuple]:
    """Every rollup recomputed from the raw rows, in a copy of the store."""
    copy = tmp_path / "recompute.sqlite3"
    copy.unlink(missing_ok=True)
    with sqlite3.connect(store) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)

    async def go() -> None:
        conn = await open_store(copy)
        try:
            await conn.execute("DELETE FROM daily_rollups")
            await refresh_rollups(conn, await all_days(conn))
        finally:
            await conn.close()

    anyio.run(go)
    return rollups(copy)


def test_completion_in_a_later_batch_refreshes_its_start_day(tmp_path: Path) -> None:
    data_dir, store = tmp_path / "d", tmp_path / "s.sqlite3"
    started = line(D2 - 5000, "turn.started", "TurnStarted")
    write(data_dir, "thr-1", started, tool_start(D2 - 100, "c1", "shell"))
    once(data_dir, store)
    completed = line(D2 + 400, "turn.completed", "TurnCompleted", usage=USAGE)
    write(data_dir, "thr-1", tool_end(D2 + 300, "c1", "shell", is_error=True), completed)
    once(data_dir, store)
    got = rollups(store)
    assert got == recomputed(store, tmp_path)
    # the call belongs to its start's day, with its completion's facts
    assert ("2026-10-02", "tool", "shell", 0, 1, 1, 400, 0, 0, 0, 0, 0) in got


def test_a_late_start_moves_the_call_off_its_completion_day(tmp_path: Path) -> None:
    data_dir, store = tmp_path / "d", tmp_path / "s.sqlite3"
    # the completion is read first (another file of the same thread)...
    write(data_dir, "a-first", tool_end(D2 + 300, "c1", "grep"))
    once(data_dir, store)
    assert [r[0] for r in rollups(store)] == ["2026-10-03", "2026-10-03"]
    # ...then its start, on the day before
    write(data_dir, "b-later", tool_start(D2 - 100, "c1", "grep"))
    once(data_dir, store)
    got = rollups(store)
    assert got == recomputed(store, tmp_path)
    assert {r[0] for r in got} == {"2026-10-02"}


def test_a_model_learned_later_rekeys_the_token_day(tmp_path: Path) -> None:
    data_dir, store = tmp_path / "d", tmp_path / "s.sqlite3"
    completed = line(D1 + 900, "turn.completed", "TurnCompleted", usage=USAGE)
    write(data_dir, "thr-1", line(D1 + 10, "turn.started", "TurnStarted"), completed)
    once(data_dir, store)
    model = {"provider": "openai", "model": "gpt-5"}
    inference = line(D1 + 20, "inference.started", "InferenceStarted", engine_id="e", model=model)
    write(data_dir, "thr-1-runtime", inference)
    once(data_dir, store)
    got = rollups(store)
    assert got == recomputed(store, tmp_path)
    assert [r[2] for r in got if r[1] == "model"] == ["openai/gpt-5"]


def test_days_written_before_a_crash_are_refreshed_next_run(tmp_path: Path) -> None:
    data_dir, store = tmp_path / "d", tmp_path / "s.sqlite3"
    write(
        data_dir,
        "thr-1",
        line(D1 + 10, "turn.started", "TurnStarted"),
        line(D2 + 10, "turn.started", "TurnStarted", turn="turn-2"),
        line(D2 + 900, "turn.completed", "TurnCompleted", turn="turn-2", usage=USAGE),
    )

    async def ingest_without_refresh() -> None:  # the daemon, killed before its rollup refresh
        conn = await open_store(store)
        try:
            ingestor = Ingestor(conn, load_settings(data_dir, store), strict=False)
            await ingestor.start()
            await ingestor.ingest(*discover(data_dir), Report())
        finally:
            await conn.close()

    anyio.run(ingest_without_refresh)
    assert rollups(store) == []
    once(data_dir, store)  # nothing new to read, yet the dirty days are refreshed
    got = rollups(store)
    assert got == recomputed(store, tmp_path) and {r[0] for r in got} == {
        "2026-10-02",
        "2026-10-03",
    }


def _prune(store: Path, days: int, now_ms: int) -> int:
    async def apply() -> int:
        conn = await open_store(store)
        try:
            return await prune(conn, days, now_ms=now_ms)
        finally:
            await conn.close()

    return anyio.run(apply)


def _ingest_without_refresh(data_dir: Path, store: Path) -> None:
    async def go() -> None:  # the daemon, between a write and its rollup refresh
        conn = await open_store(store)
        try:
            ingestor = Ingestor(conn, load_settings(data_dir, store), strict=False)
            await ingestor.start()
            await ingestor.ingest(*discover(data_dir), Report())
        finally:
            await conn.close()

    anyio.run(go)


def _day_lines(day_ms: int, thread: str) -> list[str]:
    lines = []
    for i in range(4):  # a turn and a call every 6 hours
        at = day_ms + i * 6 * 3_600_000
        turn = f"turn-{day_ms}-{i}"
        lines += [
            line(at, "turn.started", "TurnStarted", thread, turn),
            tool_start(at + 5, "c", "shell", thread=thread, turn=turn),
            tool_end(at + 50, "c", "shell", thread=thread, turn=turn),
            line(at + 60, "turn.completed", "TurnCompleted", thread, turn, usage=USAGE),
        ]
    return lines


def test_retention_keeps_the_rollups_of_the_days_it_prunes(tmp_path: Path) -> None:
    data_dir, store = tmp_path / "d", tmp_path / "s.sqlite3"
    write(data_dir, "thr-1", *_day_lines(D1, "thr-1"), *_day_lines(D2, "thr-1"))
    write(data_dir, "thr-old", line(D1 - 3 * DAY_MS, "turn.started", "TurnStarted", "thr-old"))
    once(data_dir, store)
    before = rollups(store)
    assert {r[0] for r in before} == {"2026-09-29", "2026-10-02", "2026-10-03"}
    # one day kept, "now" in the middle of the day after D2: whole days before D2 go
    assert _prune(store, 1, D2 + DAY_MS + 13 * 3_600_000) > 0
    with sqlite3.connect(store) as conn:
        starts = [r[0] for r in conn.execute("SELECT started_at_ms FROM turns")]
    assert starts and min(starts) >= D2  # raw rows of the old days are gone...
    assert rollups(store) == before  # ...their rollups stay, exactly
    # asked to refresh every day, the final days are left alone

    async def refresh_all() -> None:
        conn = await open_store(store)
        try:
            await refresh_rollups(conn, {r[0] for r in before})
        finally:
            await conn.close()

    anyio.run(refresh_all)
    assert rollups(store) == before
    # D2 is kept whole: a new line there is counted on top of all of it
    write(data_dir, "thr-2", *_day_lines(D2, "thr-2")[:1])
    once(data_dir, store)
    d2_turns = [r[3] for r in rollups(store) if r[:3] == ("2026-10-02", "all", "")]
    assert d2_turns == [4] and ("2026-10-03", "all", "", 5) in [r[:4] for r in rollups(store)]


def test_retention_first_counts_what_was_written_but_not_rolled_up(tmp_path: Path) -> None:
    data_dir, store = tmp_path / "d", tmp_path / "s.sqlite3"
    write(data_dir, "thr-1", *_day_lines(D1, "thr-1"))
    once(data_dir, store)
    write(data_dir, "thr-2", *_day_lines(D1, "thr-2"))
    _ingest_without_refresh(data_dir, store)  # D1 is dirty when retention comes
    _prune(store, 1, D2 + DAY_MS)
    got = [r[:5] for r in rollups(store) if r[1] == "all"]
    assert got == [("2026-10-02", "all", "", 8, 8)]
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT count(*) FROM turns").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM rollup_dirty_days").fetchone() == (0,)
    # a line of a pruned day read later (a replaced file) never shrinks its rollup
    write(data_dir, "thr-3", *_day_lines(D1, "thr-3")[:4])
    once(data_dir, store)
    assert [r[:5] for r in rollups(store) if r[1] == "all"] == got


def test_refreshing_a_few_days_at_a_time_ends_where_one_refresh_does(tmp_path: Path) -> None:
    """The daemon refreshes a day per transaction between its steps: each
    call takes the oldest dirty days and leaves the others marked."""
    from roder_analyticsd.store.maintenance import dirty_days

    data_dir, store = tmp_path / "d", tmp_path / "s.sqlite3"
    for n in range(3):
        at = D1 + n * DAY_MS + 3_600_000
        write(data_dir, f"thr-{n}", tool_start(at, "c1", "shell", thread=f"thr-{n}"),
              tool_end(at + 250, "c1", "shell", thread=f"thr-{n}"))  # fmt: skip

    async def go() -> list[set[str]]:
        conn = await open_store(store)
        try:
            ingestor = Ingestor(conn, load_settings(data_dir, store), strict=False)
            await ingestor.start()
            await ingestor.ingest(*discover(data_dir), Report())
            seen = [await dirty_days(conn)]
            while seen[-1]:
                await refresh_rollups(conn, limit=1)
                seen.append(await dirty_days(conn))
            return seen
        finally:
            await conn.close()

    seen = anyio.run(go)
    assert [len(days) for days in seen] == [3, 2, 1, 0]
    assert min(seen[0]) not in seen[1]  # oldest first
    assert rollups(store) == recomputed(store, tmp_path) != []


# instants on both sides of day edges, before 1970 too (the floor of a
# negative instant over a day is not its truncation)
_edges = st.sampled_from([D1, D2, 0, -DAY_MS, 5 * DAY_MS]).flatmap(
    lambda edge: st.integers(min_value=edge - 3, max_value=edge + 3)
)
_instants = st.none() | _edges | st.integers(min_value=-3 * DAY_MS, max_value=D2 + 3 * DAY_MS)
_names = st.sampled_from(["t1", "t2", "t3"])


@settings(max_examples=40, deadline=None)
# a turn's model for one token row, none for another on the same day: once
# grouped them as one
@example(
    turns=[("t1", "t1", None, "openai")],
    calls=[],
    usage=[("t1", "t1", D2 + 1, 0, 0), ("t1", "t2", D2, 0, 1)],
)
@given(
    turns=st.lists(st.tuples(_names, _names, _instants, st.sampled_from(["openai", None])),
                   max_size=12),
    calls=st.lists(st.tuples(_names, _names, _names, st.sampled_from(["shell", None]), _instants,
                             _instants, st.booleans()), max_size=12),
    usage=st.lists(st.tuples(_names, _names, _edges, st.integers(0, 1_000), st.integers(0, 99)),
                   max_size=12),
)  # fmt: skip
def test_one_scan_of_many_days_equals_a_walk_per_day(turns, calls, usage) -> None:
    """The rollups of many days at once (one scan) equal those computed one
    day at a time through the time indexes, row for row."""
    from roder_analyticsd.pipeline.batch import Rows
    from roder_analyticsd.store.maintenance import _refresh_days
    from roder_analyticsd.store.writer import write_rows

    rows = Rows(
        turns=[(t, u, None, at, p, "m" if p else None, at, None, None, None, *NO_EVENTS)
               for t, u, at, p in turns],
        tool_calls=[(t, u, c, name, start, end, int(err), None, None)
                    for t, u, c, name, start, end, err in calls],
        token_usage=[(t, u, at, p, c, p + c, p // 2, p // 3) for t, u, at, p, c in usage],
    )  # fmt: skip

    async def run() -> list[list[tuple]]:
        with tempfile.TemporaryDirectory() as tmp:
            conn = await open_store(Path(tmp) / "store.sqlite3")
            try:
                await write_rows(conn, rows, [])
                days = sorted(await all_days(conn))
                out = []
                for scan in (True, False):
                    await _refresh_days(conn, days, 1, scan=scan)
                    async with conn.execute(
                        f"SELECT {ROLLUP_COLUMNS} FROM daily_rollups ORDER BY 1, 2, 3"
                    ) as cur:
                        out.append(await cur.fetchall())
                return out
            finally:
                await conn.close()

    scanned, walked = anyio.run(run)
    assert scanned == walked


def test_the_one_scan_refresh_gives_the_connection_its_cache_back(tmp_path: Path) -> None:
    """The one-scan refresh bounds its sorts with a small page cache for its
    own statement only: the writer's cache is the same after it."""
    from roder_analyticsd.store.maintenance import SCAN_CACHE_SIZE, _refresh_days

    async def run() -> tuple[int, int]:
        conn = await open_store(tmp_path / "store.sqlite3")
        try:
            async with conn.execute("PRAGMA cache_size") as cur:
                (before,) = await cur.fetchone()
            await _refresh_days(conn, ["2026-10-02", "2026-10-03"], 1, scan=True)
            async with conn.execute("PRAGMA cache_size") as cur:
                (after,) = await cur.fetchone()
            return before, after
        finally:
            await conn.close()

    before, after = anyio.run(run)
    assert before == after != SCAN_CACHE_SIZE
