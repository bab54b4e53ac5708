"""Cost estimates must agree with genai-prices' own data and never invent a 0."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest
from genai_prices import Usage, calc_price
from genai_prices.types import TieredPrices
from hypothesis import given, settings
from hypothesis import strategies as st

from roder_analyticsd import pricing

REPO = Path(__file__).resolve().parents[1]
AT = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
AT_MS = int(AT.timestamp() * 1000)
M = Decimal(1_000_000)


def _model_price(provider_id: str, model: str, when: datetime = AT):
    """The ModelPrice genai-prices itself selects for this model and time."""
    return calc_price(
        Usage(), model, provider_id=provider_id, genai_request_timestamp=when
    ).model_price


def _base(value: Decimal | TieredPrices | None) -> Decimal | None:
    return value.base if isinstance(value, TieredPrices) else value


def _genai_total(provider_id: str, model: str, p: int, o: int, c: int, w: int, when: datetime):
    usage = Usage(input_tokens=p, output_tokens=o, cache_read_tokens=c, cache_write_tokens=w)
    total = calc_price(usage, model, provider_id=provider_id, genai_request_timestamp=when)
    return float(round(total.total_price, 6))


def test_gpt5_cost_matches_the_package_price_data() -> None:
    prices = _model_price("openai", "gpt-5")
    assert prices.cache_read_mtok is not None  # the test relies on a cache-read price
    prompt, cached, creation, completion = 120_000, 80_000, 5_000, 3_000
    # OpenAI bills no separate cache-write rate: those tokens are plain input.
    write_rate = (
        prices.cache_write_mtok if prices.cache_write_mtok is not None else prices.input_mtok
    )
    expected = (
        (prompt - cached - creation) * prices.input_mtok
        + cached * prices.cache_read_mtok
        + creation * write_rate
        + completion * prices.output_mtok
    ) / M
    got = pricing.cost_usd("openai", "gpt-5", prompt, completion, cached, creation, AT_MS)
    assert got == float(round(expected, 6))
    assert got > 0


def test_claude_prices_cache_reads_and_writes_separately() -> None:
    prices = _model_price("anthropic", "claude-sonnet-4-5")
    input_rate = _base(prices.input_mtok)
    read_rate = _base(prices.cache_read_mtok)
    write_rate = _base(prices.cache_write_mtok)
    output_rate = _base(prices.output_mtok)
    assert None not in (input_rate, read_rate, write_rate, output_rate)
    assert read_rate < input_rate < write_rate  # otherwise this test proves nothing

    prompt, cached, creation, completion = 40_000, 25_000, 10_000, 2_000
    expected = (
        (prompt - cached - creation) * input_rate
        + cached * read_rate
        + creation * write_rate
        + completion * output_rate
    ) / M
    got = pricing.cost_usd(
        "anthropic", "claude-sonnet-4-5", prompt, completion, cached, creation, AT_MS
    )
    assert got == float(round(expected, 6))


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-5"),
        ("openai", "gpt-5-mini"),
        ("anthropic", "claude-sonnet-4-5"),
        ("gemini", "gemini-2.5-pro"),
        ("deepseek", "deepseek-chat"),
    ],
)
def test_cache_tokens_are_not_priced_as_plain_input(provider: str, model: str) -> None:
    plain = pricing.cost_usd(provider, model, 100_000, 1_000, 0, 0, AT_MS)
    cached = pricing.cost_usd(provider, model, 100_000, 1_000, 90_000, 0, AT_MS)
    assert plain is not None and cached is not None
    assert cached < plain


def test_cache_writes_cost_more_than_input_for_anthropic() -> None:
    plain = pricing.cost_usd("anthropic", "claude-sonnet-4-5", 100_000, 0, 0, 0, AT_MS)
    written = pricing.cost_usd("anthropic", "claude-sonnet-4-5", 100_000, 0, 0, 90_000, AT_MS)
    assert plain is not None and written is not None
    assert written > plain


def test_roder_provider_ids_map_to_genai_prices_ids() -> None:
    assert pricing.cost_usd("gemini", "gemini-2.5-pro", 1000, 1000, 0, 0, AT_MS) == _genai_total(
        "google", "gemini-2.5-pro", 1000, 1000, 0, 0, AT
    )


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "no-such-model-xyz"),
        ("no-such-provider", "gpt-5"),
        ("ollama", "llama3.1:8b"),
        (None, "gpt-5"),
        ("openai", None),
        (None, None),
        ("", "gpt-5"),
        ("openai", "  "),
    ],
)
def test_unknown_or_missing_model_is_none_not_zero(provider, model) -> None:
    assert pricing.cost_usd(provider, model, 1000, 1000, 0, 0, AT_MS) is None
    assert pricing.cost_usd_aggregate(provider, model, 1000, 1000, 0, 0, 3, AT_MS) is None


def test_zero_usage_of_a_known_model_is_a_real_zero() -> None:
    assert pricing.cost_usd("openai", "gpt-5", 0, 0, 0, 0, AT_MS) == 0.0


def test_result_is_rounded_to_six_decimals() -> None:
    cost = pricing.cost_usd("openai", "gpt-5-mini", 7, 3, 1, 0, AT_MS)
    assert cost is not None and cost > 0
    assert cost == round(cost, 6)


def test_inconsistent_cache_counts_are_clamped_not_negative() -> None:
    # Bad input (cache tokens exceeding the prompt) must still give a sane estimate.
    clamped = pricing.cost_usd("anthropic", "claude-sonnet-4-5", 1000, 0, 5000, 5000, AT_MS)
    all_cached = pricing.cost_usd("anthropic", "claude-sonnet-4-5", 1000, 0, 1000, 0, AT_MS)
    assert clamped == all_cached


def test_long_context_tier_is_applied_per_turn() -> None:
    prices = _model_price("google", "gemini-2.5-pro")
    assert isinstance(prices.input_mtok, TieredPrices)
    start = prices.input_mtok.tiers[0].start
    for prompt in (start - 1, start, start + 1, start + 1000):
        assert pricing.cost_usd(
            "gemini", "gemini-2.5-pro", prompt, 10, 0, 0, AT_MS
        ) == _genai_total("google", "gemini-2.5-pro", prompt, 10, 0, 0, AT)


def test_aggregate_row_uses_the_mean_prompt_for_tiers() -> None:
    # Ten small turns summed past the long-context threshold stay at the base tier.
    one = pricing.cost_usd("gemini", "gemini-2.5-pro", 100_000, 1_000, 20_000, 0, AT_MS)
    row = ("gemini", "gemini-2.5-pro", 1_000_000, 10_000, 200_000, 0, 10, AT_MS)
    assert one is not None
    assert pricing.cost_usd_aggregate(*row) == pytest.approx(10 * one, abs=1e-6)
    assert pricing.cost_usd_aggregate("gemini", "gemini-2.5-pro", None, None, None, None) == 0.0


def test_aggregate_matches_cost_usd_for_linear_models() -> None:
    row = ("openai", "gpt-5", 1_234_567, 89_012, 345_678, 9_876)
    assert pricing.cost_usd_aggregate(*row, 1, AT_MS) == pricing.cost_usd(*row, AT_MS)


def test_time_of_day_prices_follow_at_ms() -> None:
    # deepseek-chat has off-peak prices; each timestamp must use its own price.
    for hour in (2, 18):
        when = datetime(2026, 10, 20, hour, tzinfo=UTC)
        at_ms = int(when.timestamp() * 1000)
        got = pricing.cost_usd("deepseek", "deepseek-chat", 1_000_000, 1_000_000, 0, 0, at_ms)
        assert got == _genai_total("deepseek", "deepseek-chat", 1_000_000, 1_000_000, 0, 0, when)


MODELS = [
    ("openai", "openai", "gpt-5"),
    ("openai", "openai", "gpt-5-mini"),
    ("anthropic", "anthropic", "claude-sonnet-4-5"),
    ("gemini", "google", "gemini-2.5-pro"),
    ("deepseek", "deepseek", "deepseek-chat"),
]


@st.composite
def _usage(draw):
    prompt = draw(st.one_of(st.integers(0, 400_000), st.sampled_from([199_999, 200_000, 200_001])))
    cached = draw(st.integers(0, prompt))
    creation = draw(st.integers(0, prompt - cached))
    completion = draw(st.integers(0, 100_000))
    return prompt, completion, cached, creation


@settings(max_examples=150, deadline=None, database=None)
@given(
    model=st.sampled_from(MODELS),
    usage=_usage(),
    at_ms=st.integers(1_704_067_200_000, 1_830_297_600_000),  # 2024..2028
)
def test_matches_genai_prices_calc_price(model, usage, at_ms) -> None:
    roder_provider, genai_provider, name = model
    prompt, completion, cached, creation = usage
    when = datetime.fromtimestamp(at_ms / 1000, UTC)
    expected = _genai_total(genai_provider, name, prompt, completion, cached, creation, when)
    assert pricing.cost_usd(roder_provider, name, *usage, at_ms) == expected


def test_works_offline_and_ignores_downloaded_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    from genai_prices import data_snapshot, update_prices

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    # Pretend something else in the process installed (empty) downloaded prices.
    monkeypatch.setattr(data_snapshot, "_custom_snapshot", data_snapshot.DataSnapshot([], True))
    pricing._pricer.cache_clear()
    pricing._snapshot.cache_clear()
    try:
        assert pricing.cost_usd("openai", "gpt-5", 1000, 1000, 0, 0, AT_MS) is not None
        assert update_prices._shared_updater.thread is None  # no updater was started
    finally:
        pricing._pricer.cache_clear()
        pricing._snapshot.cache_clear()


def test_importing_pricing_does_not_import_genai_prices() -> None:
    code = "import sys, roder_analyticsd.pricing; print('genai_prices' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_price_table_version_names_the_package() -> None:
    assert pricing.price_table_version() == f"genai-prices {genai_prices.__version__}"


def test_lookups_are_cached() -> None:
    pricing._pricer.cache_clear()
    for _ in range(3):
        pricing.cost_usd("openai", "gpt-5", 10, 10, 0, 0, AT_MS)
    info = pricing._pricer.cache_info()
    assert info.misses == 1 and info.hits == 2


def _stored_entries() -> None:
    """The entries as a store keeps them: made, through JSON, installed."""
    import json

    pairs = [(p, m) for p, _g, m in MODELS] + [("openai", "no-such-model"), ("acme", "x")]
    entries = json.loads(json.dumps(pricing.price_entries(pairs)))
    assert entries["acme\x1fx"] is None
    pricing.install_price_entries(pricing.price_table_version(), entries)


@settings(max_examples=300, deadline=None, database=None)
@given(
    model=st.sampled_from(MODELS),
    usage=_usage(),
    at_ms=st.one_of(
        st.integers(1_704_067_200_000, 1_830_297_600_000),
        # around DeepSeek's off-peak edges (00:30 / 16:30 UTC) and midnight
        st.integers(0, 1500).flatmap(
            lambda day: st.sampled_from(
                [0, 1_799_999, 1_800_000, 1_800_001, 59_399_999, 59_400_000, 86_399_999]
            ).map(lambda ms, day=day: 1_704_067_200_000 + day * 86_400_000 + ms)
        ),
    ),
)
def test_stored_entries_price_exactly_as_cost_usd(model, usage, at_ms) -> None:
    """What queries use (entries kept in the store, applied without
    genai-prices) gives the very micro-dollars cost_usd gives."""
    _stored_entries()
    roder_provider, _genai, name = model
    want = pricing.cost_usd(roder_provider, name, *usage, at_ms)
    got = pricing.cost_micro(roder_provider, name, at_ms, *usage)
    assert got == (None if want is None else round(want * 1_000_000))
    assert pricing.cost_micro("acme", "x", at_ms, *usage) is None
    assert pricing.cost_micro(None, name, at_ms, *usage) is None


def test_entries_from_another_price_table_are_not_used() -> None:
    pricing.install_price_entries("genai-prices 0.0.0", {"openai\x1fgpt-5": None})
    assert pricing.cost_micro("openai", "gpt-5", AT_MS, 1000, 0, 0, 0) is not None


def test_after_once_a_cost_query_needs_no_price_table(tmp_path, data_dir) -> None:
    """--once keeps price entries for the store's models; a cost query in a
    fresh process then answers without importing genai-prices, and the same."""
    import json

    store = tmp_path / "usage.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    common = ["--data-dir", str(data_dir), "--store", str(store)]
    subprocess.run(
        [sys.executable, "-m", "roder_analyticsd", "--once", "--best-effort", *common],
        env=env, capture_output=True, check=True,
    )  # fmt: skip
    code = (
        "import sys; from roder_analyticsd.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('genai_prices' in sys.modules, file=sys.stderr)"
    )
    argv = [sys.executable, "-c", code, "stats", "summary", "--json", *common]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "False"
    with_entries = json.loads(out.stdout)
    assert with_entries["costUsd"] is not None
    # without the entries (an older store), genai-prices prices it: the same
    import sqlite3

    with sqlite3.connect(store) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'price_entries'")
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "True"
    assert json.loads(out.stdout) == with_entries
