"""Token rollups: the token rows summed per time bucket, for fast exact costs.

`stats tokens`, `summary` and the dashboard's token charts fold token rows
into sums per key, provider, model and side of every price cut
(queries.py `_costs`). Over a long history that is a scan of every row.
`token_rollups` holds the same sums per UTC bucket of a day, an hour and
a quarter hour, agent, provider, model (a row's own, else its turn's) and
prompt-size band, so such a query reads a few rows per hour of use instead.

It is a cache of `token_usage`, never a record of its own: a day's rows are
recomputed from its raw rows whenever the day is marked in
`rollup_dirty_days` (the writer marks every day a batch touches, in the
batch's transaction), retention deletes a pruned day's rows with its raw
rows, and queries read raw rows for every day still marked. So an answer
from rollups equals the answer from raw rows, at every instant.

A bucket's rows are summed as one only where they share everything the
price depends on: a query uses a width only when no local midnight of its
zone, no price's start date and no time-of-day price boundary falls inside a
bucket of it, and only when every tier start of the prices in play is one of
`PROMPT_BANDS`. Otherwise it reads raw rows, as exact and slower.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from roder_analyticsd.store.schema import DAY_MS

if TYPE_CHECKING:
    import aiosqlite

HOUR_MS = 3_600_000
QUARTER_MS = 900_000
WIDTHS = (DAY_MS, HOUR_MS, QUARTER_MS)  # widest first: a query takes the first that fits
# Prompt sizes where a price in genai-prices' table changes tier (`pp > start`):
# a rollup row's `band` is how many of these its rows' priced prompts exceed.
PROMPT_BANDS = (32_000, 100_000, 128_000, 199_999, 200_000, 256_000, 272_000, 512_000, 524_288)

# A token row's counts as priced: never negative, cache reads within the
# prompt, cache writes within the rest, 1-hour writes within the writes
# (pricing.py clamps a single row the same way).
PRICED_PROMPT = "max(u.prompt_tokens, 0)"
_READ = f"min(max(u.cached_prompt_tokens, 0), {PRICED_PROMPT})"
_WRITE = f"min(max(u.cache_creation_prompt_tokens, 0), {PRICED_PROMPT} - {_READ})"
PRICED_COLUMNS = (
    f"{PRICED_PROMPT} AS pp, max(u.completion_tokens, 0) AS po, {_READ} AS pr, {_WRITE} AS pw,"
    f" min(max(u.cache_creation_1h_prompt_tokens, 0), {_WRITE}) AS ph"
)
# a token row's provider and model: its own (a Claude Code call), else its turn's
TOKEN_PROVIDER = "coalesce(u.provider, t.provider)"
TOKEN_MODEL = "coalesce(u.model, t.model)"
TOKEN_TURN_JOIN = (
    "LEFT JOIN turns t ON (u.provider IS NULL OR u.model IS NULL)"
    " AND t.thread_id = u.thread_id AND t.turn_id = u.turn_id"
)
# (one comparison for most rows, not one per band)
_BAND = (
    "CASE "
    + " ".join(f"WHEN pp <= {start} THEN {n}" for n, start in enumerate(PROMPT_BANDS))
    + f" ELSE {len(PROMPT_BANDS)} END"
)

_COLUMNS = """token_rollups (width_ms, bucket, agent, provider, model, band, row_count,
    prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
    cache_creation_prompt_tokens, priced_prompt, priced_completion, priced_cached,
    priced_creation, priced_creation_1h, first_at_ms, least_priced_prompt)"""
# quarter hours from the raw rows that `{rows}` picks (`u`), then hours from
# the quarter hours and days from the hours (a finer bucket lies in one
# coarser one); `:days` is a JSON array of UTC day numbers
_QUARTERS = f"""
INSERT INTO {_COLUMNS}
SELECT {QUARTER_MS}, u.recorded_at_ms / {QUARTER_MS}, u.agent, {TOKEN_PROVIDER}, {TOKEN_MODEL},
       {_BAND}, count(*), sum(u.prompt_tokens), sum(u.completion_tokens), sum(u.total_tokens),
       sum(u.cached_prompt_tokens), sum(u.cache_creation_prompt_tokens),
       sum(pp), sum(po), sum(pr), sum(pw), sum(ph), min(u.recorded_at_ms), min(pp)
FROM (SELECT u.*, {PRICED_COLUMNS} FROM {{rows}}) u
{TOKEN_TURN_JOIN}
GROUP BY 2, 3, 4, 5, 6
"""
# the rollup rows of the days picked: all listed (`:days`, a JSON array of
# UTC day numbers, one scan), or one day through the index (`:lo`..`:hi` ms)
_IN_DAYS = "bucket / ({DAY_MS} / width_ms) IN (SELECT value FROM json_each(:days))".replace(
    "{DAY_MS}", str(DAY_MS)
)
_IN_DAY = "bucket >= :lo / {w} AND bucket < :hi / {w}"  # {w}: the rows' width
# a coarser width's rows from the next finer one's (`{width}` from `{finer}`)
_COARSER = f"""
INSERT INTO {_COLUMNS}
SELECT {{width}}, bucket / ({{width}} / {{finer}}), agent, provider, model, band,
       sum(row_count), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
       sum(cached_prompt_tokens), sum(cache_creation_prompt_tokens), sum(priced_prompt),
       sum(priced_completion), sum(priced_cached), sum(priced_creation),
       sum(priced_creation_1h), min(first_at_ms), min(least_priced_prompt)
FROM token_rollups WHERE width_ms = {{finer}} AND {{days}}
GROUP BY 2, 3, 4, 5, 6
"""
# a few days: each day's rows through the time index; more: one scan of the
# table (through the index, every row would cost a primary-key seek)
SCAN_FROM_DAYS = 8
_ONE_DAY = "token_usage u WHERE u.recorded_at_ms >= :lo AND u.recorded_at_ms < :hi"
_MANY_DAYS = (
    f"token_usage u NOT INDEXED WHERE u.recorded_at_ms / {DAY_MS}"
    " IN (SELECT value FROM json_each(:days))"
)


async def refresh_days(conn: aiosqlite.Connection, days: Iterable[int]) -> None:
    """Recompute these UTC days' token rollups from their raw rows (inside
    the caller's transaction)."""
    todo = sorted(set(days))
    if not todo:
        return
    if len(todo) >= SCAN_FROM_DAYS:
        steps = [({"days": json.dumps(todo)}, _MANY_DAYS, _IN_DAYS)]
    else:  # the daemon's few days at a time: index ranges, however long the history
        steps = [({"lo": d * DAY_MS, "hi": (d + 1) * DAY_MS}, _ONE_DAY, _IN_DAY) for d in todo]
    for params, rows, picked in steps:
        for width in (QUARTER_MS, HOUR_MS, DAY_MS):
            where = f"width_ms = {width} AND {picked.format(w=width)}"
            await conn.execute(f"DELETE FROM token_rollups WHERE {where}", params)
        await conn.execute(_QUARTERS.format(rows=rows), params)
        for finer, width in ((QUARTER_MS, HOUR_MS), (HOUR_MS, DAY_MS)):
            days = picked.format(w=finer)
            await conn.execute(_COARSER.format(width=width, finer=finer, days=days), params)


async def drop_before(conn: aiosqlite.Connection, cutoff_ms: int) -> None:
    """Forget the buckets before a day-aligned cutoff (their raw rows are pruned)."""
    await conn.execute("DELETE FROM token_rollups WHERE bucket < ? / width_ms", (cutoff_ms,))
