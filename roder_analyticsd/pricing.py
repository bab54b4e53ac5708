"""Cost estimates (USD) from the maintained `genai-prices` table.

Only the price table bundled with the installed genai-prices package is used: no
network fetch ever happens (we never start `UpdatePrices`, and we build our own
snapshot so one started elsewhere in the process cannot change our numbers).

genai-prices is imported lazily: it pulls in pydantic, httpx2 and a 1.6 MB data
module, which would make `roder-analyticsd --help` slow.

Token semantics. Roder's `prompt_tokens` already includes cache-read
(`cached_prompt_tokens`) and cache-write (`cache_creation_prompt_tokens`) tokens.
genai-prices uses the same convention (`input_tokens` is the total, cache tokens
are partitions of it), so the mapping is 1:1:

    input_tokens=prompt, cache_read_tokens=cached,
    cache_write_tokens=cache_creation, output_tokens=completion

Speed. `genai_prices.calc_price` costs ~150 us per call, too slow for a million
rows. For the prompt sizes that select the same price tier, cost is linear in the
four token counts, so per (price, tier) we ask genai-prices once for the
coefficients and then price each row with exact integer arithmetic.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = ["cost_usd", "cost_usd_aggregate", "price_table_version"]

# Roder provider ids that genai-prices spells differently. Anything else is
# passed through and resolved by genai-prices' own provider matching.
_PROVIDER_ALIASES = {
    "gemini": "google",
    "google-gemini": "google",
    "vertex": "google",
    "xai": "x-ai",
    "bedrock": "aws",
}

_PROBE = 1_000_000  # probe size: coefficients come out as USD per million tokens
_MICRO = 1_000_000  # results are rounded to whole micro-dollars (6 decimals)

# Integer coefficients (base, cache-read delta, cache-write delta, output,
# per-request) and their common scale: micro-USD = sum(coeff * count) / scale.
_Coeffs = tuple[int, int, int, int, int, int]


def cost_usd(
    provider: str | None,
    model: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_prompt_tokens: int,
    cache_creation_prompt_tokens: int,
    at_ms: int | None = None,
) -> float | None:
    """Estimated USD cost of one turn, rounded to 6 decimals.

    `at_ms` (epoch ms) picks the price in force at that time (price changes,
    DeepSeek's off-peak hours); None means now. Returns None when the provider or
    model is missing or unknown to the price table, never a made-up 0.
    """
    pricer = _pricer_for(provider, model)
    if pricer is None:
        return None
    prompt = _count(prompt_tokens)
    return pricer.cost(
        prompt,
        _count(completion_tokens),
        _count(cached_prompt_tokens),
        _count(cache_creation_prompt_tokens),
        at_ms=at_ms,
        tier_prompt=prompt,
        requests=1,
    )


def cost_usd_aggregate(
    provider: str | None,
    model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_prompt_tokens: int | None,
    cache_creation_prompt_tokens: int | None,
    turn_count: int | None = None,
    at_ms: int | None = None,
) -> float | None:
    """Estimated USD cost of summed usage, e.g. a `GROUP BY provider, model` row.

    Call as `cost_usd_aggregate(*row)`; NULL sums (SQLite's SUM of nothing) count
    as 0. This is an approximation: a sum has lost each turn's prompt size, so
    long-context price tiers are chosen from the mean prompt per turn when
    `turn_count` is given (base tier otherwise), and per-request fees are charged
    `turn_count` times (never without it). For exact totals, sum per-turn
    `cost_usd` values instead.
    """
    pricer = _pricer_for(provider, model)
    if pricer is None:
        return None
    prompt = _count(prompt_tokens)
    turns = _count(turn_count)
    return pricer.cost(
        prompt,
        _count(completion_tokens),
        _count(cached_prompt_tokens),
        _count(cache_creation_prompt_tokens),
        at_ms=at_ms,
        tier_prompt=prompt // turns if turns else 0,
        requests=turns,
    )


def price_table_version() -> str:
    """Version of the bundled price table, e.g. `genai-prices 0.2.3`."""
    from importlib.metadata import version

    return f"genai-prices {version('genai-prices')}"


def _count(value: int | None) -> int:
    # Defensive: NULL from SQL and negative garbage must not produce a price.
    n = int(value or 0)
    return n if n > 0 else 0


def _pricer_for(provider: str | None, model: str | None) -> _Pricer | None:
    if not provider or not model:
        return None
    return _pricer(provider, model)


@functools.lru_cache(maxsize=4096)
def _pricer(provider: str, model: str) -> _Pricer | None:
    provider_id = provider.strip().lower()
    model_ref = model.strip()
    if not provider_id or not model_ref:
        return None
    provider_id = _PROVIDER_ALIASES.get(provider_id, provider_id)
    try:
        found_provider, info = _snapshot().find_provider_model(model_ref, None, provider_id, None)
    except LookupError:
        return None
    return _Pricer(found_provider, info)


@functools.cache
def _snapshot() -> Any:
    # Our own snapshot of the bundled data, not `get_snapshot()`: that one is
    # replaced by whatever `UpdatePrices` last downloaded.
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)


class _Pricer:
    """Prices usage for one resolved (provider, model)."""

    def __init__(self, provider: Any, info: Any) -> None:
        self.provider = provider
        self.info = info
        # A plain price needs no timestamp; a list is time-conditional.
        self.static_price = None if isinstance(info.prices, list) else info.prices
        # id(ModelPrice) -> (ModelPrice, sorted distinct tier starts)
        self._tiers: dict[int, tuple[Any, tuple[int, ...]]] = {}
        # (id(ModelPrice), tier bracket) -> (ModelPrice, coefficients or None)
        self._coeffs: dict[tuple[int, int], tuple[Any, _Coeffs | None]] = {}

    def cost(
        self,
        prompt: int,
        completion: int,
        cached: int,
        creation: int,
        *,
        at_ms: int | None,
        tier_prompt: int,
        requests: int,
    ) -> float | None:
        """USD rounded half-even to 6 decimals, like `round(Decimal, 6)`."""
        # Cache tokens are subsets of the prompt; clamp bad rows instead of
        # pricing a negative number of uncached tokens.
        cached = min(cached, prompt)
        creation = min(creation, prompt - cached)
        coeffs = self._coefficients(self._price_at(at_ms), tier_prompt)
        if coeffs is None:
            return None
        base, read_delta, write_delta, output, per_request, scale = coeffs
        scaled = (
            base * prompt
            + read_delta * cached
            + write_delta * creation
            + output * completion
            + per_request * requests
        )
        micro, rest = divmod(scaled, scale)
        if 2 * rest > scale or (2 * rest == scale and micro & 1):
            micro += 1
        return micro / _MICRO

    def _price_at(self, at_ms: int | None) -> Any:
        if self.static_price is not None:
            return self.static_price
        when = datetime.now(UTC) if at_ms is None else datetime.fromtimestamp(at_ms / 1000, UTC)
        return self.info.get_prices(when)

    def _coefficients(self, price: Any, tier_prompt: int) -> _Coeffs | None:
        key = id(price)
        entry = self._tiers.get(key)
        if entry is None:
            entry = self._tiers[key] = (price, _tier_starts(price))
        starts = entry[1]
        # Same rule as genai-prices: a tier applies when input tokens > its start.
        bracket = bisect_left(starts, tier_prompt) if starts else 0
        hit = self._coeffs.get((key, bracket))
        if hit is None:
            representative = starts[bracket - 1] + 1 if bracket else 0
            hit = self._coeffs[(key, bracket)] = (price, _linear_coeffs(price, representative))
        return hit[1]


def _tier_starts(price: Any) -> tuple[int, ...]:
    from genai_prices.types import TieredPrices

    starts = {
        tier.start
        for value in vars(price).values()
        if isinstance(value, TieredPrices)
        for tier in value.tiers
    }
    return tuple(sorted(starts))


def _linear_coeffs(price: Any, input_tokens: int) -> _Coeffs | None:
    """Ask genai-prices what each kind of token costs at a fixed tier."""
    from genai_prices.types import ModelPrice, TieredPrices, Usage

    # Priced by characters, images, ... but not tokens: unknown, not free.
    if price.input_mtok is None and price.output_mtok is None:
        return None

    flat = ModelPrice(
        **{
            key: _tier_price(value, input_tokens) if isinstance(value, TieredPrices) else value
            for key, value in vars(price).items()
        }
    )

    def total(**usage: int) -> Decimal:
        return flat.calc_price(Usage(**usage))["total_price"]

    try:
        per_request = total()  # only per-request fees are charged for empty usage
        base = total(input_tokens=_PROBE) - per_request
        read = total(input_tokens=_PROBE, cache_read_tokens=_PROBE) - per_request - base
        write = total(input_tokens=_PROBE, cache_write_tokens=_PROBE) - per_request - base
        output = total(output_tokens=_PROBE) - per_request
    except ValueError:
        return None  # a price entry genai-prices itself rejects: treat as unknown
    # Token coefficients are USD per million tokens, i.e. micro-USD per token;
    # scale everything to integers so each row is exact integer arithmetic.
    micro = (base, read, write, output, per_request * _MICRO)
    scale = 10 ** max(0, *(-value.normalize().as_tuple().exponent for value in micro))
    b, r, w, o, p = (int(value * scale) for value in micro)
    return b, r, w, o, p, scale


def _tier_price(prices: Any, input_tokens: int) -> Decimal:
    # Mirrors genai_prices.types.calc_unit_price: highest tier whose start is exceeded.
    for tier in reversed(prices.tiers):
        if input_tokens > tier.start:
            return tier.price
    return prices.base
