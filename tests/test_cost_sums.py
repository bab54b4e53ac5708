"""Costs summed in SQL (one price per group of rows on the same side of
every price cut) equal the sum of each row's own exact price, whatever the
grouping, the time zone or the price rules (tiers, off-peak hours)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roder_analyticsd import pricing, timewindow
from roder_analyticsd.pipeline.batch import Rows
from roder_analyticsd.pipeline.project import NO_EVENTS
from roder_analyticsd.store import queries
from roder_analyticsd.store.connection import open_store
from roder_analyticsd.store.writer import write_rows

# tiers (Anthropic's 200k-token prompts), a time-of-day rule (DeepSeek's
# off-peak hours), a plain price, and a model with no price at all
MODELS = (
    ("anthropic", "claude-sonnet-4-5"),
    ("deepseek", "deepseek-chat"),
    ("openai", "gpt-5-mini"),
    ("openai", "no-such-model-anywhere"),
)
ZONES = ("UTC", "Asia/Kolkata", "America/St_Johns", "Australia/Lord_Howe", "Europe/Berlin")
START_MS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
SPAN_MS = 300 * 86_400_000  # crosses DST changes both ways

counts = st.integers(min_value=0, max_value=400_000)
token_rows = st.lists(
    st.tuples(
        st.sampled_from(range(len(MODELS))),
        st.integers(min_value=START_MS, max_value=START_MS + SPAN_MS),
        counts,
        counts,
        counts,
        counts,
        st.integers(min_value=0, max_value=50_000),
        st.booleans(),  # a Claude Code call (own provider/model) or a Roder turn
    ),  # fmt: skip
    min_size=1,
    max_size=40,
)


def _rows(rows: list[tuple]) -> tuple[Rows, Rows]:
    roder, claude = Rows(), Rows()
    for n, (model, at, prompt, completion, cached, creation, hour, is_call) in enumerate(rows):
        provider, name = MODELS[model]
        turn = f"turn-{n}"
        total = prompt + completion
        if is_call:
            claude.api_calls.append(
                ("thr-c", turn, at, prompt, completion, total, cached, creation,
                 min(hour, creation), provider, name, f"msg-{n}", 0, None, None, None)
            )  # fmt: skip
        else:
            roder.turns.append(
                ("thr-r", turn, None, at, provider, name, at, None, None, None, *NO_EVENTS)
            )
            roder.token_usage.append(
                ("thr-r", turn, at, prompt, completion, total, cached, creation)
            )
    return roder, claude


def _row_by_row(rows: list[tuple], key) -> dict:
    """Each row priced on its own (pico-dollars), summed per key."""
    out: dict = {}
    for model, at, prompt, completion, cached, creation, hour, is_call in rows:
        provider, name = MODELS[model]
        pico = pricing.cost_pico(
            provider, name, prompt, completion, cached, creation,
            min(hour, creation) if is_call else 0, at_ms=at,
        )  # fmt: skip
        total, unpriced = out.get(key(model, at), (Fraction(0), 0))
        if pico is None:
            unpriced += 1
        else:
            total += Fraction(pico, 10**12)
        out[key(model, at)] = (total, unpriced)
    return out


@settings(max_examples=30)
@given(rows=token_rows, zone=st.sampled_from(ZONES))
def test_sql_sums_price_as_each_row_does(rows: list[tuple], zone: str) -> None:
    tz = ZoneInfo(zone)

    async def run() -> tuple[list, list]:
        with tempfile.TemporaryDirectory() as tmp:
            conn = await open_store(Path(tmp) / "store.sqlite3")
            try:
                roder, claude = _rows(rows)
                await write_rows(conn, roder, [])
                await write_rows(conn, claude, [], "claude-code")
                f = queries.Filters(limit=1000, tz=tz)
                return (
                    await queries.token_groups(conn, f, "day"),
                    await queries.token_groups(conn, f, "model"),
                )
            finally:
                await conn.close()

    by_day, by_model = anyio.run(run)
    wants = (
        (by_day, _row_by_row(rows, lambda m, at: timewindow.day_key(at, tz))),
        (by_model, _row_by_row(rows, lambda m, at: MODELS[m][1])),
    )
    for got, want in wants:
        assert {r["group"] for r in got} == set(want)
        for r in got:
            total, unpriced = want[r["group"]]
            assert r["unpricedTurnCount"] == unpriced
            if unpriced == r["turnCount"]:
                assert r["costUsd"] is None
            else:  # each row rounded to a pico-dollar vs the exact sum
                assert r["costUsd"] == pytest.approx(float(total), abs=r["turnCount"] * 1e-12)


@settings(max_examples=200)
@given(
    zone=st.sampled_from(ZONES + ("America/Santiago", "Pacific/Chatham", "Africa/Casablanca")),
    lo=st.integers(min_value=0, max_value=4_000_000_000_000),
    span=st.integers(min_value=0, max_value=3 * 366 * 86_400_000),
    probes=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=20),
)
def test_local_day_in_sql_is_local_day(zone: str, lo: int, span: int, probes: list[float]):
    import sqlite3

    tz = ZoneInfo(zone)
    instants = [lo + int(p * span) for p in probes]
    spans = [at // timewindow.SPAN_MS for at in instants]
    sql = timewindow.local_day_sql("x", tz, spans)
    # and either side of every offset change in those spans
    for s in set(spans):
        pieces = timewindow.offset_changes(
            tz, s * timewindow.SPAN_MS, (s + 1) * timewindow.SPAN_MS - 1
        )
        instants += [at + d for at, _ in pieces[1:] for d in (-1, 0)]
    conn = sqlite3.connect(":memory:")
    for at in instants:
        (got,) = conn.execute(f"SELECT {sql} FROM (SELECT ? AS x)", (at,)).fetchone()
        assert got == timewindow._local_day(at, tz), (zone, at)
    outside = (max(spans) + 1) * timewindow.SPAN_MS
    if outside // timewindow.SPAN_MS not in spans:  # a span not given: no day
        assert conn.execute(f"SELECT {sql} FROM (SELECT ? AS x)", (outside,)).fetchone() == (None,)


def test_a_price_only_applied_row_by_row_sums_the_same(tmp_path: Path) -> None:
    """An entry kept before 1-hour cache writes were priced has no 1-hour
    coefficient: its calls with 1-hour writes are priced one by one (through
    genai-prices), and still add up as each row's own price."""
    provider, model = "anthropic", "claude-sonnet-4-5"
    key = f"{provider}\x1f{model}"
    full = pricing.price_entries([(provider, model)])
    old = {key: [[rule, starts, [c[:6] if c else c for c in coeffs]]
                 for rule, starts, coeffs in full[key]]}  # fmt: skip
    at = START_MS + 86_400_000
    rows = [
        (0, at, 300_000, 2_000, 100_000, 50_000, 20_000, True),  # over the tier start
        (0, at + 1, 10_000, 500, 2_000, 4_000, 4_000, True),
        (0, at + 2, 10_000, 500, 2_000, 4_000, 0, True),  # no 1-hour writes: grouped
        (2, at + 3, 10_000, 500, 0, 0, 0, False),
    ]

    async def run() -> list:
        conn = await open_store(tmp_path / "store.sqlite3")
        try:
            roder, claude = _rows(rows)
            await write_rows(conn, roder, [])
            await write_rows(conn, claude, [], "claude-code")
            pricing.install_price_entries(pricing.price_table_version(), old)
            return await queries.token_groups(conn, queries.Filters(limit=10), "model")
        finally:
            pricing.install_price_entries(pricing.price_table_version(), full)
            await conn.close()

    got = {r["group"]: r for r in anyio.run(run)}
    want = _row_by_row(rows, lambda m, at: MODELS[m][1])
    assert set(got) == set(want)
    for name, (total, unpriced) in want.items():
        assert got[name]["unpricedTurnCount"] == unpriced == 0
        assert got[name]["costUsd"] == pytest.approx(float(total), abs=1e-11)
    assert got[model]["turnCount"] == 3
    assert got[model]["totalTokens"] == 300_000 + 2_000 + 2 * 10_500
