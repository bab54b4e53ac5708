"""Token rollups (store/token_rollups.py) are a cache of the token rows: any
query answered from them, in any state of refresh, equals the answer from
the raw rows alone, to the last digit."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
from conftest import UNDO_MIGRATION_9
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cost_sums import MODELS, START_MS, counts, token_rows
from test_cost_sums import _rows as token_batches

from roder_analyticsd import timewindow
from roder_analyticsd.store import queries, token_rollups
from roder_analyticsd.store.connection import open_store
from roder_analyticsd.store.maintenance import prune, refresh_rollups
from roder_analyticsd.store.schema import DAY_MS
from roder_analyticsd.store.writer import write_rows

ZONES = ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "Europe/Berlin")
HOUR_MS = 3_600_000
# rows packed into two days: many share a bucket, on both sides of DeepSeek's
# off-peak hours (from 16:30 UTC) and of local midnights
dense_rows = st.lists(
    st.tuples(
        st.sampled_from(range(len(MODELS))),
        st.integers(min_value=START_MS, max_value=START_MS + 2 * DAY_MS),
        counts,
        counts,
        counts,
        counts,
        st.integers(min_value=0, max_value=50_000),
        st.booleans(),
    ),  # fmt: skip
    min_size=1,
    max_size=60,
)
windows = st.tuples(
    st.none() | st.integers(min_value=START_MS, max_value=START_MS + 300 * DAY_MS),
    st.none() | st.integers(min_value=START_MS, max_value=START_MS + 300 * DAY_MS),
)


async def _write(conn: Any, rows: list[tuple]) -> None:
    """The rows as the writer gets them: Roder turns and Claude Code calls."""
    for batch in token_batches(rows):
        await write_rows(conn, batch, [], "claude-code" if batch.api_calls else "roder")


async def _answers(conn: Any, zone: str, window: tuple[int | None, int | None]) -> list:
    """Every answer built on `_costs` whose keys and filters rollups can serve."""
    tz = ZoneInfo(zone)
    since, until = window
    out = []
    for f in (
        queries.Filters(limit=1000, tz=tz),
        queries.Filters(limit=1000, tz=tz, since_ms=since, until_ms=until),
        queries.Filters(limit=1000, tz=tz, provider="anthropic", agent="claude-code"),
        queries.Filters(limit=1000, tz=tz, model="deepseek-chat", since_ms=since),
    ):
        for group in ("day", "week", "month", "model", "provider", "agent"):
            out.append(await queries.token_groups(conn, f, group))
        out.append(await queries.token_stack(conn, f, "day", "model"))
        out.append((await queries.summary(conn, f))["costUsd"])
    return out


async def _raw_answers(conn: Any, zone: str, window: tuple[int | None, int | None]) -> list:
    """The same answers with no rollup width to use: raw rows only."""
    widths = token_rollups.WIDTHS
    token_rollups.WIDTHS = ()
    try:
        return await _answers(conn, zone, window)
    finally:
        token_rollups.WIDTHS = widths


async def _rollup_rows(conn: Any) -> int:
    async with conn.execute("SELECT count(*) FROM token_rollups") as cur:
        return (await cur.fetchone())[0]


@settings(max_examples=15, deadline=None)
@given(
    rows=token_rows | dense_rows,
    later=token_rows | dense_rows,
    zone=st.sampled_from(ZONES),
    window=windows,
    partial=st.booleans(),
)
def test_rollups_answer_as_the_raw_rows_do(
    rows: list[tuple], later: list[tuple], zone: str, window: tuple, partial: bool
) -> None:
    """Rows written, rolled up, more rows written (their days dirty, some
    rolled up again one day at a time): every answer equals the raw rows'."""

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            conn = await open_store(Path(tmp) / "store.sqlite3")
            try:
                await _write(conn, rows)
                await refresh_rollups(conn)
                assert await _rollup_rows(conn) > 0
                assert await _answers(conn, zone, window) == await _raw_answers(conn, zone, window)
                # later rows: new turns, and the same keys again with other counts
                await _write(conn, later)
                assert await _answers(conn, zone, window) == await _raw_answers(conn, zone, window)
                await refresh_rollups(conn, limit=1 if partial else None)
                assert await _answers(conn, zone, window) == await _raw_answers(conn, zone, window)
            finally:
                await conn.close()

    anyio.run(run)


def test_each_model_is_read_at_its_own_width(tmp_path: Path) -> None:
    """DeepSeek's off-peak price starts at 16:30 UTC: its rows are summed per
    quarter hour, and priced on their own side, while a model with no such
    cut is read per day; each answer equals the raw rows'."""
    day = START_MS + 10 * DAY_MS
    at = [day + h * 3_600_000 + m * 60_000 for h, m in ((16, 10), (16, 40), (17, 0), (3, 0))]
    rows = [(1, t, 10_000, 1_000, 0, 0, 0, False) for t in at]  # deepseek-chat
    rows += [(0, t + 1, 10_000, 1_000, 0, 0, 0, True) for t in at]  # claude-sonnet-4-5

    async def run() -> tuple[list, list, dict]:
        conn = await open_store(tmp_path / "store.sqlite3")
        try:
            await _write(conn, rows)
            await refresh_rollups(conn)
            f = queries.Filters(limit=10, tz=ZoneInfo("UTC"))
            widths = queries._RollupWidths(f, [day // timewindow.SPAN_MS], [MODELS[0], MODELS[1]])
            by_pair = dict(widths.by_pair)
            return (
                await _answers(conn, "UTC", (None, None)),
                await _raw_answers(conn, "UTC", (None, None)),
                by_pair,
            )
        finally:
            await conn.close()

    rolled, raw, by_pair = anyio.run(run)
    assert by_pair == {MODELS[0]: DAY_MS, MODELS[1]: token_rollups.QUARTER_MS}
    assert rolled == raw


def test_answers_come_from_the_rollups_once_refreshed(tmp_path: Path) -> None:
    """Once a day is refreshed its token rows are not read: rows changed
    behind the writer's back (never done for real) show the rollup's sums."""
    at = START_MS + 5 * DAY_MS + 7 * HOUR_MS
    rows = [(0, at + n * 60_000, 1_000, 100, 0, 0, 0, True) for n in range(5)]

    async def run() -> tuple[int, int, int]:
        conn = await open_store(tmp_path / "store.sqlite3")
        try:
            await _write(conn, rows)
            await refresh_rollups(conn)
            f = queries.Filters(limit=10)
            before = (await queries.token_groups(conn, f, "model"))[0]["totalTokens"]
            await conn.execute("UPDATE token_usage SET total_tokens = 0")
            await conn.commit()
            cached = (await queries.token_groups(conn, f, "model"))[0]["totalTokens"]
            raw = (await _raw_answers(conn, "UTC", (None, None)))[3][0]["totalTokens"]
            return before, cached, raw
        finally:
            await conn.close()

    before, cached, raw = anyio.run(run)
    assert before == cached == 5 * 1_100 and raw == 0


def test_a_window_inside_one_bucket_reads_raw_rows(tmp_path: Path) -> None:
    """A window with no whole bucket in it still counts its rows, once."""
    at = START_MS + 2 * DAY_MS + 3 * HOUR_MS
    rows = [(0, at + n * 60_000, 1_000, 100, 0, 0, 0, True) for n in range(10)]

    async def run() -> list:
        conn = await open_store(tmp_path / "store.sqlite3")
        try:
            await _write(conn, rows)
            await refresh_rollups(conn)
            out = []
            for since, until in ((at + 60_000, at + 5 * 60_000), (at - 1, at + 3 * HOUR_MS)):
                f = queries.Filters(limit=10, since_ms=since, until_ms=until)
                out.append((await queries.token_groups(conn, f, "day"))[0]["turnCount"])
            return out
        finally:
            await conn.close()

    assert anyio.run(run) == [4, 10]


def test_retention_prunes_rollups_with_their_rows(tmp_path: Path) -> None:
    """A pruned day leaves no rollup behind: stats tokens shows what the
    raw rows show (the long-term record is daily_rollups)."""
    now = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)
    old, recent = now - 40 * DAY_MS, now - 2 * DAY_MS
    rows = [(0, old, 1_000, 100, 0, 0, 0, True), (0, recent, 2_000, 200, 0, 0, 0, True)]

    async def run() -> tuple[list, list, int]:
        conn = await open_store(tmp_path / "store.sqlite3")
        try:
            await _write(conn, rows)
            await refresh_rollups(conn)
            await prune(conn, 30, now_ms=now)
            kept = await _rollup_rows(conn)
            return (
                await _answers(conn, "UTC", (None, None)),
                await _raw_answers(conn, "UTC", (None, None)),
                kept,
            )
        finally:
            await conn.close()

    rolled, raw, kept = anyio.run(run)
    assert rolled == raw and kept == 3
    assert [r["totalTokens"] for r in rolled[0]] == [2_200]


def test_migration_marks_every_token_day_for_its_first_refresh(tmp_path: Path) -> None:
    """A store from before token rollups: every day with token rows is
    marked, so it is read raw until the first refresh fills the rollups."""
    path = tmp_path / "store.sqlite3"
    days = [START_MS + d * DAY_MS for d in (0, 3, 9)]
    rows = [(0, at, 1_000, 100, 0, 0, 0, True) for at in days]

    async def build() -> None:
        conn = await open_store(path)
        try:
            await _write(conn, rows)
            await refresh_rollups(conn)
            await conn.execute("DROP TABLE token_rollups")
            # and what migrations 7 to 10 added, so the store is a version-5 one
            for statement in (*UNDO_MIGRATION_9,
                              "DROP INDEX tool_calls_prompt", "DROP INDEX token_usage_sidechain",
                              "ALTER TABLE tool_calls DROP COLUMN prompt_id",
                              "ALTER TABLE token_usage DROP COLUMN prompt_id",
                              "ALTER TABLE files DROP COLUMN prompts"):  # fmt: skip
                await conn.execute(statement)
            await conn.execute("PRAGMA user_version = 5")
            await conn.commit()
        finally:
            await conn.close()

    async def reopen() -> tuple[set[int], int, int]:
        conn = await open_store(path)
        try:
            async with conn.execute("SELECT day FROM rollup_dirty_days") as cur:
                dirty = {r[0] for r in await cur.fetchall()}
            await refresh_rollups(conn)
            answer = await queries.token_groups(conn, queries.Filters(limit=10), "agent")
            return dirty, await _rollup_rows(conn), answer[0]["totalTokens"]
        finally:
            await conn.close()

    anyio.run(build)
    dirty, rolled, total = anyio.run(reopen)
    assert dirty == {at // DAY_MS for at in days}
    assert rolled == len(days) * 3 and total == 3 * 1_100
