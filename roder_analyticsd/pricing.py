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
from fractions import Fraction
from types import NotImplementedType
from typing import Any

__all__ = [
    "cost_micro",
    "cost_pico",
    "cost_usd",
    "cost_usd_aggregate",
    "install_price_entries",
    "installed_pairs",
    "price_entries",
    "price_of",
    "price_table_version",
]

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

_PICO_PER_MICRO = 1_000_000

# Integer coefficients (base, cache-read delta, cache-write delta, output,
# per-request), their common scale, then the 1-hour cache-write delta (last:
# entries stored before it existed still read): micro-USD = sum(coeff * count) / scale.
_Coeffs = tuple[int, int, int, int, int, int, int]


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


def cost_pico(
    provider: str | None,
    model: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_prompt_tokens: int,
    cache_creation_prompt_tokens: int,
    cache_creation_1h_prompt_tokens: int = 0,
    at_ms: int | None = None,
) -> int | None:
    """Cost of one request in integer pico-USD, exact (for sums: rounding each
    row to micro-dollars first would drift). The 1-hour cache writes are the
    part of `cache_creation_prompt_tokens` written with a 1-hour TTL
    (Anthropic prices them apart). None when the price is unknown."""
    pricer = _pricer_for(provider, model)
    if pricer is None:
        return None
    prompt = _count(prompt_tokens)
    scaled = pricer.scaled(
        prompt,
        _count(completion_tokens),
        _count(cached_prompt_tokens),
        _count(cache_creation_prompt_tokens),
        _count(cache_creation_1h_prompt_tokens),
        at_ms=at_ms,
        tier_prompt=prompt,
        requests=1,
    )
    if scaled is None:
        return None
    value, scale = scaled
    pico, rest = divmod(value * _PICO_PER_MICRO, scale)
    if 2 * rest > scale or (2 * rest == scale and pico & 1):
        pico += 1
    return pico


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


@functools.cache
def price_table_version() -> str:
    """Version of the bundled price table, e.g. `genai-prices 0.2.3`."""
    return f"genai-prices {_installed_version('genai_prices')}"


def _installed_version(package: str) -> str:
    """The installed distribution's version, read from the name of its
    `<package>-<version>.dist-info` dir beside the package (found, never
    imported); else from importlib.metadata, whose import (email parsing,
    zipfile) would cost a query more than its SQL."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    if spec is not None and spec.origin is not None:
        prefix, suffix = f"{package}-", ".dist-info"
        found = [
            entry.name[len(prefix) : -len(suffix)]
            for entry in Path(spec.origin).parent.parent.iterdir()
            if entry.name.startswith(prefix) and entry.name.endswith(suffix)
        ]
        if len(found) == 1:
            return found[0]
    from importlib.metadata import version

    return version(package)


# -- price entries: what one (provider, model) costs, as plain JSON ----------
#
# Loading genai-prices' table takes longer than a whole query over a big
# store, so what a store's models cost is kept, per price-table version, as
# plain JSON that needs no genai-prices to apply (`price_entries` makes it,
# in a process that may load the table; the store keeps it). An entry is
# None (unknown model: unpriced), UNCACHED (a price rule this code does not
# mirror: ask genai-prices), or a list of [constraint, tier starts,
# coefficients per tier bracket] in genai-prices' order, each constraint
# None, ["date", first ms] or ["tod", start us, end us] (UTC time of day).
UNCACHED = "uncached"
_DAY_MS = 86_400_000
_installed: dict[tuple[str, str], Any] = {}  # entries in force in this process
_compiled: dict[tuple[str | None, str | None], _CachedPrice | None] = {}


def price_entries(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Entries for (provider, model) pairs, keyed "provider\x1fmodel" (loads genai-prices)."""
    return {f"{provider}\x1f{model}": _entry(provider, model) for provider, model in pairs}


def install_price_entries(version: str, entries: dict[str, Any]) -> None:
    """Use these stored entries (if made from this install's price table)."""
    if version != price_table_version():
        return
    for key, entry in entries.items():
        provider, _, model = key.partition("\x1f")
        if _installed.get((provider, model), UNCACHED) != entry:
            _installed[(provider, model)] = entry
            _compiled.pop((provider, model), None)


def installed_pairs() -> list[tuple[str, str]]:
    """The (provider, model) pairs whose stored entries are in force."""
    return list(_installed)


def cost_micro(
    provider: str | None,
    model: str | None,
    at_ms: int | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_prompt_tokens: int,
    cache_creation_prompt_tokens: int,
) -> int | None:
    """`cost_usd` of one turn in whole micro-dollars, from the installed
    entries when they know the model (no genai-prices), else as `cost_usd`."""
    price = price_of(provider, model)
    if price is None:
        return None
    return price.micro(
        at_ms, prompt_tokens, completion_tokens, cached_prompt_tokens, cache_creation_prompt_tokens
    )


def price_of(provider: str | None, model: str | None) -> _CachedPrice | None:
    """The price of one (provider, model), None if unknown; its `micro(at_ms,
    prompt, completion, cached, creation)` is `cost_micro` for a token row."""
    key = (provider, model)
    try:
        return _compiled[key]
    except KeyError:
        price = _compiled[key] = _compile(provider, model)
        return price


def _compile(provider: str | None, model: str | None) -> _CachedPrice | None:
    if not provider or not model:
        return None
    entry = _installed.get((provider, model), UNCACHED)
    if entry == UNCACHED:
        entry = _entry(provider, model)  # genai-prices, loaded on first need
    if entry is None:
        return None
    if entry == UNCACHED:
        return _CachedPrice(None, provider, model)
    return _CachedPrice(entry, provider, model)


def _entry(provider: str, model: str) -> Any:
    from genai_prices.types import StartDateConstraint, TimeOfDateConstraint

    pricer = _pricer_for(provider, model)
    if pricer is None:
        return None
    prices = pricer.info.prices
    rules = [(None, prices)] if pricer.static_price is not None else [
        (cp.constraint, cp.prices) for cp in prices
    ]  # fmt: skip
    out = []
    for constraint, price in rules:
        if constraint is None:
            rule = None
        elif type(constraint) is StartDateConstraint:
            start = datetime(*constraint.start_date.timetuple()[:3], tzinfo=UTC)
            rule = ["date", int(start.timestamp()) * 1000]
        elif type(constraint) is TimeOfDateConstraint:
            from genai_prices.types import _utc_timetz

            rule = ["tod", *(_micros_of_day(_utc_timetz(t)) for t in
                             (constraint.start_time, constraint.end_time))]  # fmt: skip
        else:
            return UNCACHED
        starts = _tier_starts(price)
        coeffs = [
            _linear_coeffs(price, starts[b - 1] + 1 if b else 0) for b in range(len(starts) + 1)
        ]
        out.append([rule, list(starts), [None if c is None else list(c) for c in coeffs]])
    return out


def _micros_of_day(t: Any) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


class _CachedPrice:
    """Applies one entry: the rule in force at the turn's time (as
    genai-prices' `get_prices`), its tier bracket, exact integer arithmetic."""

    def __init__(self, entry: list | None, provider: str, model: str) -> None:
        self.fallback = (provider, model) if entry is None else None
        self.fallback_key = (provider, model)
        self.rules = [(rule, tuple(starts), coeffs) for rule, starts, coeffs in entry or []]
        self.static = len(self.rules) == 1 and self.rules[0][0] is None

    def micro(self, at_ms: int | None, prompt: int, completion: int, cached: int,
              creation: int) -> int | None:  # fmt: skip
        # NULL and negative garbage count as 0 (inline: this runs per token row)
        prompt = prompt if prompt and prompt > 0 else 0
        completion = completion if completion and completion > 0 else 0
        cached = cached if cached and cached > 0 else 0
        creation = creation if creation and creation > 0 else 0
        if self.fallback is not None:
            usd = cost_usd(*self.fallback, prompt, completion, cached, creation, at_ms=at_ms)
            return None if usd is None else round(usd * _MICRO)
        coeffs = self._coefficients_at(at_ms, prompt)
        if coeffs is None:
            return None
        if cached > prompt:
            cached = prompt
        if creation > prompt - cached:
            creation = prompt - cached
        base, read_delta, write_delta, output, per_request, scale = coeffs[:6]
        scaled = (
            base * prompt + read_delta * cached + write_delta * creation + output * completion
            + per_request
        )  # fmt: skip
        micro, rest = divmod(scaled, scale)
        if 2 * rest > scale or (2 * rest == scale and micro & 1):
            micro += 1
        return micro

    def cuts(self) -> tuple[set[int], set[int], set[int]]:
        """Where this price can change: tier starts (prompt tokens), start
        dates (epoch ms) and times of day (UTC microseconds). Rows on the same
        side of every cut share a rule and a tier bracket (see `summed`)."""
        starts: set[int] = set()
        dates: set[int] = set()
        times: set[int] = set()
        for rule, rule_starts, _ in self.rules:
            starts.update(rule_starts)
            if rule is not None and rule[0] == "date":
                dates.add(rule[1])
            elif rule is not None and rule[0] == "tod":
                times.update(rule[1:3])
        return starts, dates, times

    def summed(self, at_ms: int, tier_prompt: int, requests: int, prompt: int,
               completion: int, cached: int, creation: int,
               creation_1h: int) -> Fraction | None | NotImplementedType:  # fmt: skip
        """The exact cost in micro-dollars of `requests` rows that lie on the
        same side of every cut, from their summed counts, each row's already
        clamped (cache reads ≤ prompt, writes ≤ the rest, 1-hour writes ≤
        writes): the price is linear within a rule and tier bracket. `at_ms`
        and `tier_prompt` are any one row's. None: no price; NotImplemented:
        only row by row (a rule this code does not mirror)."""
        if self.fallback is not None:
            return NotImplemented
        coeffs = self._coefficients_at(at_ms, tier_prompt)
        if coeffs is None:
            return None
        if len(coeffs) < 7 and creation_1h:  # an entry stored before 1-hour writes were priced
            return NotImplemented
        base, read_delta, write_delta, output, per_request, scale = coeffs[:6]
        scaled = (
            base * prompt + read_delta * cached + write_delta * creation + output * completion
            + per_request * requests + (coeffs[6] * creation_1h if creation_1h else 0)
        )  # fmt: skip
        return Fraction(scaled, scale)

    def _coefficients_at(self, at_ms: int | None, tier_prompt: int) -> list | None:
        """The coefficients of the rule in force at `at_ms`, for the tier
        bracket of a `tier_prompt`-token prompt (None: not priced)."""
        if self.static:
            _, starts, by_bracket = self.rules[0]
        else:
            _, starts, by_bracket = self._rule_at(at_ms)
        return by_bracket[bisect_left(starts, tier_prompt) if starts else 0]

    def _rule_at(self, at_ms: int | None) -> tuple:
        if at_ms is None:
            at_ms = int(datetime.now(UTC).timestamp() * 1000)
        micros = at_ms % _DAY_MS * 1000
        for rule in reversed(self.rules):  # later rules take precedence
            kind = rule[0]
            if kind is None:
                return rule
            if kind[0] == "date" and at_ms >= kind[1]:
                return rule
            if kind[0] == "tod":
                start, end = kind[1], kind[2]
                if (micros >= start or micros < end) if end < start else start <= micros < end:
                    return rule
        return self.rules[0]


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
        found = self.scaled(
            prompt, completion, cached, creation, 0,
            at_ms=at_ms, tier_prompt=tier_prompt, requests=requests,
        )  # fmt: skip
        if found is None:
            return None
        scaled, scale = found
        micro, rest = divmod(scaled, scale)
        if 2 * rest > scale or (2 * rest == scale and micro & 1):
            micro += 1
        return micro / _MICRO

    def scaled(
        self,
        prompt: int,
        completion: int,
        cached: int,
        creation: int,
        creation_1h: int,
        *,
        at_ms: int | None,
        tier_prompt: int,
        requests: int,
    ) -> tuple[int, int] | None:
        """(micro-USD × scale, scale): the exact cost as a fraction."""
        # Cache tokens are subsets of the prompt (1-hour writes of the
        # writes); clamp bad rows instead of pricing negative token counts.
        cached = min(cached, prompt)
        creation = min(creation, prompt - cached)
        creation_1h = min(creation_1h, creation)
        coeffs = self._coefficients(self._price_at(at_ms), tier_prompt)
        if coeffs is None:
            return None
        base, read_delta, write_delta, output, per_request, scale, write_1h_delta = coeffs
        scaled = (
            base * prompt
            + read_delta * cached
            + write_delta * creation
            + write_1h_delta * creation_1h
            + output * completion
            + per_request * requests
        )
        return scaled, scale

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
        both = {"input_tokens": _PROBE, "cache_write_tokens": _PROBE}
        write_1h = total(**both, cache_write_1h_tokens=_PROBE) - total(**both)
    except ValueError:
        return None  # a price entry genai-prices itself rejects: treat as unknown
    # Token coefficients are USD per million tokens, i.e. micro-USD per token;
    # scale everything to integers so each row is exact integer arithmetic.
    micro = (base, read, write, output, per_request * _MICRO, write_1h)
    scale = 10 ** max(0, *(-value.normalize().as_tuple().exponent for value in micro))
    b, r, w, o, p, w1 = (int(value * scale) for value in micro)
    return b, r, w, o, p, scale, w1


def _tier_price(prices: Any, input_tokens: int) -> Decimal:
    # Mirrors genai_prices.types.calc_unit_price: highest tier whose start is exceeded.
    for tier in reversed(prices.tiers):
        if input_tokens > tier.start:
            return tier.price
    return prices.base
