"""The questions `stats` answers, over the store.

Which rows a query sees (cli.md, roder-events.md):

- time: a tool call belongs to the instant of its start (its completion when
  it has no start: `tool_calls.at_ms`), a token row to its terminal event
  (`recorded_at_ms`), a turn to its start (else its completion, else its
  first inference), a session to its `created_at`/`updated_at`.
  `since_ms` is inclusive, `until_ms` exclusive.
- `provider`/`model`: the turn's (tool calls and token rows join their turn);
  a session matches on its own provider/model.
- `workspace`: `sessions.workspace_label`, or the `workspace_key` hash.
- `tool`: tool calls of that name; turns, token rows and sessions are those
  with at least one call of that tool.

Percentiles are exact nearest-rank, p = sorted[ceil(q·n) − 1] clamped to the
first element, over the calls that have a duration. Unfiltered (or over a
wide window) each is a single walk of the covering index `tool_calls_stats`
(ordered by tool, then duration) that stops at rank k, entered from the
nearer end: p99 of a million calls skips ten thousand entries, not 990
thousand. With a small window or a turn/session filter, SQLite sorts the
matching durations once and the ranks are picked while streaming them. No
list of durations is ever built in Python.

Costs are those of each token row (per turn, or per Claude Code API call:
price tiers depend on a row's own prompt size, and the price in force at its
time), summed exactly: SQLite sums the rows that share a price rule and tier
bracket, each such sum is priced once (the price is linear in the counts
there), and the sum is kept as an exact fraction until the answer's float.
Those sums come from `token_rollups` (store/token_rollups.py: the same sums
per UTC day, hour or quarter hour) for every day whose rollups are fresh, and
from the token rows themselves for the rest, in one statement; a query
that needs more than a rollup row holds (a session, a tool, a workspace)
or whose price cuts or zone split a bucket reads the token rows only.
`unpricedTurnCount` counts the rows whose model has no known price.
`costUsd` is None only when rows exist and none is priced (never a made-up
0); a group with no token rows costs 0.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from roder_analyticsd import timewindow
from roder_analyticsd.pricing import (  # genai-prices: lazy
    cost_pico,
    install_price_entries,
    installed_pairs,
    price_of,
)
from roder_analyticsd.store import token_rollups
from roder_analyticsd.store.maintenance import PRICE_ENTRIES_KEY
from roder_analyticsd.store.schema import DAY_MS
from roder_analyticsd.store.token_rollups import (
    PRICED_COLUMNS,
    PROMPT_BANDS,
    TOKEN_MODEL,
    TOKEN_PROVIDER,
    TOKEN_TURN_JOIN,
)

if TYPE_CHECKING:  # `stats` reads through store/blocking.py, without an event loop
    import aiosqlite

UNKNOWN = "(unknown)"
UTC = ZoneInfo("UTC")
PERCENTILES = (50, 95, 99)
GROUPS = ("day", "week", "month", "session", "provider", "model", "workspace", "agent")
TIME_GROUPS = ("day", "week", "month")  # listed in time order; the others by totalTokens
ORDERS = ("asc", "desc")
TOOL_SORTS = ("calls", "p95", "errors", "underused")
SESSION_SORTS = ("recent", "tokens", "cost", "calls")
ROLLUP_SCOPES = ("all", "tool", "model")
# A time window holding fewer calls than this is read through the time index
# (a seek per call); a larger one is checked inside the covering index.
NARROW_CALLS = 10_000
_START = object()
# a list bound as one JSON parameter: no SQL text to build, no variable limit
_JSON_LIST = "(SELECT value FROM json_each({}))"
STREAM_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Filters:
    since_ms: int | None = None
    until_ms: int | None = None
    thread: str | None = None
    tool: str | None = None
    provider: str | None = None
    model: str | None = None
    workspace: str | None = None
    agent: str | None = None  # roder | claude-code (None: every agent)
    limit: int = 50
    tz: tzinfo = field(default=UTC)

    def params(self) -> dict[str, Any]:
        return {
            "since": self.since_ms,
            "until": self.until_ms,
            "thread": self.thread,
            "tool": self.tool,
            "provider": self.provider,
            "model": self.model,
            "workspace": self.workspace,
            "agent": self.agent,
        }

    @property
    def windowed(self) -> bool:
        return self.since_ms is not None or self.until_ms is not None


# --- row sources: FROM + WHERE per table ------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    tables: str
    where: str


def _window(f: Filters, at: str) -> list[str]:
    out = []
    if f.since_ms is not None:
        out.append(f"{at} >= :since")
    if f.until_ms is not None:
        out.append(f"{at} < :until")
    return out


def _join(clauses: list[str]) -> str:
    return " AND ".join(clauses) or "1"


_WORKSPACE = "(s.workspace_label = :workspace OR s.workspace_key = :workspace)"


def _has_tool(alias: str, prompt: str) -> str:
    """The row's turn made at least one call of :tool: a Roder turn's calls
    are a primary-key range; a Claude Code row's turn is its prompt
    (`prompt`: the turn id of a turn row, the call's prompt_id on a token
    row), whose calls the index tool_calls_prompt finds."""
    return (
        f"CASE {alias}.agent WHEN 'claude-code'"
        f" THEN EXISTS (SELECT 1 FROM tool_calls x WHERE x.thread_id = {alias}.thread_id"
        f" AND x.prompt_id = {prompt} AND x.tool_name = :tool)"
        # (`+`: a turn's few calls through the primary key, never every call
        # of the tool through tool_calls_stats, for each turn)
        f" ELSE EXISTS (SELECT 1 FROM tool_calls x WHERE x.thread_id = {alias}.thread_id"
        f" AND x.turn_id = {alias}.turn_id AND +x.tool_name = :tool) END"
    )


# SQLite counts any use of a generated column as a use of every column, so no
# index can cover it, and on a WITHOUT ROWID table each row found through an
# index then costs a primary-key seek. Hot queries therefore spell
# `duration_ms` and `at_ms` out over real columns: the expression index
# `tool_calls_stats` (migration 2) covers DURATION and CALL_AT.
DURATION = "(c.completed_at_ms - c.started_at_ms)"  # tool_calls.duration_ms
CALL_AT = "coalesce(c.started_at_ms, c.completed_at_ms)"  # tool_calls.at_ms


def tool_source(f: Filters, *, narrow: bool = False) -> Source:
    """Tool calls `c`. Turn and session filters are semi-joins (`IN`), which
    keep the covering index usable: its entries carry the primary key.

    `narrow` (a window holding few calls) finds the calls through the time
    index; otherwise the window is checked inside the covering index. A unary
    `+` hides a column from the planner: bound parameters give it no way to
    tell a day from a decade.
    """
    at, name = ("c.at_ms", "+c.tool_name") if narrow else (CALL_AT, "c.tool_name")
    clauses = _window(f, at)
    if f.thread is not None:
        clauses.append("c.thread_id = :thread")
    if f.tool is not None:
        clauses.append(f"{name} = :tool")
    if f.provider is not None or f.model is not None:
        turn = [
            c
            for c, v in (("t.provider = :provider", f.provider), ("t.model = :model", f.model))
            if v is not None
        ]
        # A Claude Code call's turn is its prompt's (its turn_id is NO_TURN):
        # found by the calls of those prompts, so the clause names only
        # primary-key columns and the covering index stays usable.
        clauses.append(
            "((c.thread_id, c.turn_id) IN (SELECT t.thread_id, t.turn_id FROM turns t"
            f" WHERE {_join(turn)}) OR (c.turn_id = '' AND (c.thread_id, c.tool_id) IN"
            " (SELECT p.thread_id, p.tool_id FROM turns t JOIN tool_calls p"
            " ON p.thread_id = t.thread_id AND p.prompt_id = t.turn_id"
            f" WHERE t.agent = 'claude-code' AND {_join(turn)})))"
        )
    if f.workspace is not None:
        clauses.append(f"c.thread_id IN (SELECT s.thread_id FROM sessions s WHERE {_WORKSPACE})")
    if f.agent is not None:
        clauses.append("c.agent = :agent")
    return Source("tool_calls c", _join(clauses))


def _semi_joined(f: Filters) -> bool:
    return (
        f.provider is not None
        or f.model is not None
        or f.workspace is not None
        or f.agent is not None
    )


def token_source(f: Filters, *, sessions: bool = True) -> Source:
    """Token rows `u` with their turn `t` (only where the row has no provider
    or model of its own: a Claude Code call has both) and, with `sessions`,
    their session `s` (for grouping; always joined for a workspace filter)."""
    # without a window, read the table itself: through its time index every
    # row would cost a primary-key seek
    tables = f"token_usage u{'' if f.windowed else ' NOT INDEXED'} {TOKEN_TURN_JOIN}"
    if sessions or f.workspace is not None:
        tables += " LEFT JOIN sessions s ON s.thread_id = u.thread_id"
    clauses = _window(f, "u.recorded_at_ms")
    if f.thread is not None:
        clauses.append("u.thread_id = :thread")
    if f.tool is not None:
        clauses.append(_has_tool("u", "u.prompt_id"))
    if f.provider is not None:
        clauses.append(f"{TOKEN_PROVIDER} = :provider")
    if f.model is not None:
        clauses.append(f"{TOKEN_MODEL} = :model")
    if f.workspace is not None:
        clauses.append(_WORKSPACE)
    if f.agent is not None:
        clauses.append("u.agent = :agent")
    return Source(tables, _join(clauses))


TURN_AT = "coalesce(t.started_at_ms, t.completed_at_ms, t.model_at_ms)"


def turn_source(f: Filters) -> Source:
    tables = "turns t"
    clauses = _window(f, TURN_AT)
    if f.thread is not None:
        clauses.append("t.thread_id = :thread")
    if f.tool is not None:
        clauses.append(_has_tool("t", "t.turn_id"))
    if f.provider is not None:
        clauses.append("t.provider = :provider")
    if f.model is not None:
        clauses.append("t.model = :model")
    if f.workspace is not None:
        tables += " JOIN sessions s ON s.thread_id = t.thread_id"
        clauses.append(_WORKSPACE)
    if f.agent is not None:
        clauses.append("t.agent = :agent")
    return Source(tables, _join(clauses))


def session_source(f: Filters) -> Source:
    """Session rows by their own facts; their activity is found through the
    other sources (see `_thread_ids`)."""
    clauses = []
    if f.windowed:
        created = _join(_window(f, "s.created_at_ms"))
        updated = _join(_window(f, "s.updated_at_ms"))
        clauses.append(f"(({created}) OR ({updated}))")
    if f.thread is not None:
        clauses.append("s.thread_id = :thread")
    if f.tool is not None:
        clauses.append("0")  # sessions are found through their calls of that tool
    if f.provider is not None:
        clauses.append("s.provider = :provider")
    if f.model is not None:
        clauses.append("s.model = :model")
    if f.workspace is not None:
        clauses.append(_WORKSPACE)
    if f.agent is not None:
        clauses.append("s.agent = :agent")
    return Source("sessions s", _join(clauses))


def _thread_ids_sql(f: Filters) -> str:
    """Every thread with a session row or any activity that passes the filters."""
    parts = []
    for column, src in (
        ("s.thread_id", session_source(f)),
        ("t.thread_id", turn_source(f)),
        ("c.thread_id", tool_source(f)),
        ("u.thread_id", token_source(f)),
    ):
        # DISTINCT inside a subquery per branch: each walks its primary key in
        # order, and the UNION only sees a thread once per table.
        parts.append(
            f"SELECT id FROM (SELECT DISTINCT {column} AS id FROM {src.tables} WHERE {src.where})"
        )
    return " UNION ".join(parts)


# --- helpers ----------------------------------------------------------------


async def _all(conn: aiosqlite.Connection, sql: str, params: Any = ()) -> list[Any]:
    async with conn.execute(sql, params) as cur:
        return list(await cur.fetchall())


async def _one(conn: aiosqlite.Connection, sql: str, params: Any = ()) -> Any:
    async with conn.execute(sql, params) as cur:
        return await cur.fetchone()


async def load_price_entries(conn: aiosqlite.Connection) -> None:
    """Install the price entries the writer keeps in `meta` (see pricing.py)."""
    sql = "SELECT value FROM meta WHERE key = ?"
    async with conn.execute(sql, (PRICE_ENTRIES_KEY,)) as cur:
        row = await cur.fetchone()
    if row is None:
        return
    kept = _price_entries_json(row[0])
    if kept is not None:
        install_price_entries(*kept)


@functools.lru_cache(maxsize=4)
def _price_entries_json(text: str) -> tuple[str, dict[str, Any]] | None:
    try:
        kept = json.loads(text)
        return str(kept["version"]), dict(kept["entries"])
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: priced through genai-prices instead


async def _chunks(conn: aiosqlite.Connection, sql: str, params: Any) -> AsyncIterator[list[Any]]:
    """Rows a chunk at a time: memory stays flat however many rows match."""
    async with conn.execute(sql, params) as cur:
        while rows := await cur.fetchmany(STREAM_CHUNK):
            yield rows


async def _narrow(conn: aiosqlite.Connection, f: Filters) -> bool:
    """Does the time window hold so few calls that finding them by time wins?

    Counting stops at NARROW_CALLS, so the check itself stays cheap.
    """
    if not f.windowed:
        return False
    where = _join(_window(f, "at_ms"))
    sql = f"SELECT count(*) FROM (SELECT 1 FROM tool_calls WHERE {where} LIMIT :cap)"
    found = (await _one(conn, sql, {**f.params(), "cap": NARROW_CALLS}))[0]
    return found < NARROW_CALLS


def _nearest_rank(q: int, n: int) -> int:
    """1-based rank of the q-th percentile of n values: ceil(q·n/100), at least 1."""
    return max(1, -(-q * n // 100))


class Cost:
    """Token sums and an exact cost (a fraction of a micro-dollar, never
    rounded before the answer) for one output group."""

    __slots__ = ("prompt", "completion", "total", "cached", "creation", "turns", "micro",
                 "unpriced")  # fmt: skip

    def __init__(self) -> None:
        self.prompt = self.completion = self.total = self.cached = self.creation = 0
        self.turns = self.unpriced = 0
        self.micro = Fraction(0)

    def add_tokens(self, prompt, completion, total, cached, creation, rows) -> None:  # noqa: ANN001
        self.prompt += prompt
        self.completion += completion
        self.total += total
        self.cached += cached
        self.creation += creation
        self.turns += rows

    @property
    def usd(self) -> float | None:
        """The sum over priced rows; None only when every row is unpriced."""
        if self.unpriced and self.unpriced == self.turns:
            return None
        return float(self.micro / 1_000_000)

    def cost_fields(self) -> dict[str, Any]:
        return {"costUsd": self.usd, "unpricedTurnCount": self.unpriced}


_SESSION_COLUMN = re.compile(r"(?<![\w.])s\.")  # SQL that reads the session row `s`
LOCAL_DAY = "{local_day}"
# which `timewindow.SPAN_MS` spans hold token rows: an index seek per span
_TOKEN_SPANS = f"""
WITH RECURSIVE span(v) AS (
    SELECT min(recorded_at_ms) / {timewindow.SPAN_MS} FROM token_usage
    UNION ALL
    SELECT (SELECT min(recorded_at_ms) / {timewindow.SPAN_MS} FROM token_usage
            WHERE recorded_at_ms >= (v + 1) * {timewindow.SPAN_MS})
    FROM span WHERE v IS NOT NULL)
SELECT v FROM span
"""  # in a key: the row's calendar day in `Filters.tz`


def _cut_sum(expr: str, cuts: Iterable[int], op: str) -> str:
    """How many of the cuts `expr` is past: rows alike in it share a side of each."""
    return " + ".join(f"({expr} {op} {cut})" for cut in sorted(cuts)) or "0"


async def _costs(
    conn: aiosqlite.Connection,
    f: Filters,
    key_sql: str | tuple[str, ...],
    key_fn: Callable[..., Any] | None = None,
    extra_where: str = "",
    extra_params: dict[str, Any] | None = None,
) -> dict[Any, Cost]:
    """Fold the filtered token rows into one `Cost` per key, in SQL.

    `key_sql` is the key's SQL (or several, for a composite key); `LOCAL_DAY`
    in it stands for the row's calendar day number in `f.tz`. `key_fn` maps
    the key's values to the output key (e.g. a day number to its text).

    Prices are linear in the token counts within one price rule and tier
    bracket, so SQLite sums the rows per key, provider, model and side of
    every cut where a price changes (pricing.py `cuts`), and each such group
    is priced once from its sums, exactly. Only prices this code cannot
    mirror are applied row by row.
    """
    await load_price_entries(conn)
    keys = (key_sql,) if isinstance(key_sql, str) else key_sql
    src = token_source(f, sessions=any(_SESSION_COLUMN.search(k) for k in (*keys, extra_where)))
    where = src.where + (f" AND {extra_where}" if extra_where else "")
    params = {**f.params(), **(extra_params or {})}
    day_keys = [i for i, key in enumerate(keys) if LOCAL_DAY in key]
    width = len(keys)
    # the cuts of the store's kept prices; should a row's price have others
    # (no entry kept for it yet), the rows are summed again
    cuts = _Cuts()
    for pair in installed_pairs():
        cuts.add(price_of(*pair))
    by_rows: set[tuple[str, str]] = set()  # pairs whose rows are priced one by one
    rolled = _rollup_keys(keys, f, extra_where)
    if rolled is not None and not await _one(conn, _HAS_ROLLUPS):
        rolled = None  # a store of an older schema, read before its migration
    known = set(installed_pairs())  # pairs whose rollup width is worked out
    while True:
        grouped = keys
        spans: list[int] | None = None
        if day_keys:
            # the zone's offsets over the spans that hold token rows; a row in
            # another span (written since) has no day, and the spans are read again
            spans = [v for (v,) in await _all(conn, _TOKEN_SPANS) if v is not None]
            day = timewindow.local_day_sql("u.recorded_at_ms", f.tz, spans)
            grouped = tuple(key.replace(LOCAL_DAY, day) for key in keys)
        widths = None
        if rolled is not None and not by_rows and cuts.starts <= set(PROMPT_BANDS):
            widths = _RollupWidths(f, spans, known)
        if widths is None or not widths.usable:
            sql = _grouped_sql(grouped, src.tables, where, cuts, exclude=bool(by_rows))
            extra: dict[str, str] = {}
        else:
            day = "" if spans is None else timewindow.local_day_sql("r.first_at_ms", f.tz, spans)
            buckets = tuple(key.replace(LOCAL_DAY, day) for key in rolled or ())
            sql, extra = _rolled_sql(grouped, buckets, where, cuts, widths, f)
        rows = await _all(conn, sql, {**params, **extra, "by_rows": _pairs_json(by_rows)})
        if any(row[i] is None for row in rows for i in day_keys):
            continue
        found = {row[width : width + 2] for row in rows}
        more = cuts.copy()
        for pair in found:
            more.add(price_of(*pair))
        new = found - known
        known |= found
        if more != cuts or (widths is not None and widths.usable and widths.differ(new)):
            cuts = more
            continue
        groups, unmirrored = _fold(rows, width, key_fn)
        if not unmirrored:
            break
        by_rows |= unmirrored
    if by_rows:
        await _price_by_rows(conn, src, where, params, grouped, day_keys, key_fn, by_rows, groups)
    return groups


def _fold(
    rows: list[Any], width: int, key_fn: Callable[..., Any] | None
) -> tuple[dict[Any, Cost], set[tuple[str, str]]]:
    """Grouped token sums → one Cost per output key, and the pairs whose
    price can only be applied row by row (their groups left out)."""
    groups: dict[Any, Cost] = {}
    unmirrored: set[tuple[str, str]] = set()
    for row in rows:
        key = row[0] if width == 1 else row[:width]
        if key_fn is not None:
            key = key_fn(key)
        provider, model = row[width], row[width + 1]
        at, tier_prompt, n, *tokens = row[width + 5 :]
        price = price_of(provider, model)
        micro = None if price is None else price.summed(at, tier_prompt, n, *tokens[5:])
        if micro is NotImplemented:
            unmirrored.add((provider, model))
            continue
        acc = groups.get(key)
        if acc is None:
            acc = groups[key] = Cost()
        acc.add_tokens(*tokens[:5], n)
        if micro is None:
            acc.unpriced += n
        else:
            acc.micro += micro
    return groups, unmirrored


def _pairs_json(pairs: set[tuple[str, str]]) -> str:
    return json.dumps(sorted(pairs))


_PAIR_IN = (
    "EXISTS (SELECT 1 FROM json_each(:by_rows) j WHERE j.value ->> 0 = {p} AND j.value ->> 1 = {m})"
)


class _Cuts:
    """Where the prices in play change: tier starts, start dates, times of day."""

    def __init__(self) -> None:
        self.starts: set[int] = set()
        self.dates: set[int] = set()
        self.times: set[int] = set()

    def add(self, price: Any) -> None:
        if price is not None:
            starts, dates, times = price.cuts()
            self.starts |= starts
            self.dates |= dates
            self.times |= times

    def copy(self) -> _Cuts:
        other = _Cuts()
        other.starts, other.dates, other.times = set(self.starts), set(self.dates), set(self.times)
        return other

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Cuts) and (self.starts, self.dates, self.times) == (
            other.starts, other.dates, other.times)  # fmt: skip

    __hash__ = None  # type: ignore[assignment]


_ROW_SUMS = "sum(prompt), sum(completion), sum(total), sum(cached), sum(creation)"
_PRICED_SUMS = "sum(pp), sum(po), sum(pr), sum(pw), sum(ph)"


def _token_rows(keys: tuple[str, ...], tables: str, where: str) -> str:
    """One row per token row: its keys `k0`…, provider `p`, model `m`,
    instant `at`, stored counts and priced counts (PRICED_COLUMNS)."""
    columns = ", ".join(f"{key} AS k{i}" for i, key in enumerate(keys))
    return f"""
    SELECT {columns}, {TOKEN_PROVIDER} AS p, {TOKEN_MODEL} AS m,
           u.recorded_at_ms AS at, u.prompt_tokens AS prompt,
           u.completion_tokens AS completion, u.total_tokens AS total,
           u.cached_prompt_tokens AS cached, u.cache_creation_prompt_tokens AS creation,
           {PRICED_COLUMNS}
    FROM {tables} WHERE {where}"""


def _sides(cuts: _Cuts, at: str, tier: str) -> str:
    """`tier`, `dated`, `timed`: which side of each cut a row (or rollup
    row, `at` its earliest instant) is on."""
    return (
        f"{tier} AS tier, {_cut_sum(at, cuts.dates, '>=')} AS dated,"
        f" {_cut_sum(f'({at} % 86400000) * 1000', cuts.times, '>=')} AS timed"
    )


def _grouped_sql(
    keys: tuple[str, ...], tables: str, where: str, cuts: _Cuts, *, exclude: bool
) -> str:
    """Token sums per key, provider, model and side of every cut; with
    `exclude`, none of the (provider, model) pairs in `:by_rows`."""
    names = ", ".join(f"k{i}" for i in range(len(keys)))
    return f"""
    SELECT {names}, p, m, {_sides(cuts, "at", _cut_sum("pp", cuts.starts, ">"))},
           min(at), min(pp), count(*), {_ROW_SUMS}, {_PRICED_SUMS}
    FROM ({_token_rows(keys, tables, where)})
    WHERE {"NOT " + _PAIR_IN.format(p="p", m="m") if exclude else "1"}
    GROUP BY {names}, p, m, tier, dated, timed
    """


# rollup-row SQL for a key's token-row SQL; a key reading anything else
# (the session, the thread) cannot be answered from rollups
_ROLLED_COLUMNS = ((TOKEN_PROVIDER, "r.provider"), (TOKEN_MODEL, "r.model"), ("u.agent", "r.agent"))
_ROW_COLUMN = re.compile(r"(?<![\w.])[uts]\.")
_NOT_DIRTY = f"u.recorded_at_ms / {DAY_MS} NOT IN (SELECT day FROM rollup_dirty_days)"


_HAS_ROLLUPS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'token_rollups'"


def _rollup_keys(keys: tuple[str, ...], f: Filters, extra_where: str) -> tuple[str, ...] | None:
    """The keys over `token_rollups r`, or None when these filters or keys
    need more than a rollup row holds."""
    if extra_where or f.thread is not None or f.tool is not None or f.workspace is not None:
        return None
    rolled = []
    for key in keys:
        for column, rolled_column in _ROLLED_COLUMNS:
            key = key.replace(column, rolled_column)
        if _ROW_COLUMN.search(key):
            return None
        rolled.append(key)
    return tuple(rolled)


def _rollup_window(f: Filters, width: int) -> tuple[int | None, int | None]:
    """[lo, hi) in ms: the whole buckets of this width inside the window."""
    lo = None if f.since_ms is None else -(-f.since_ms // width) * width
    hi = None if f.until_ms is None else f.until_ms // width * width
    return lo, hi


def _pair_width(f: Filters, price: Any, spans: list[int] | None) -> int | None:
    """The widest rollup width whose buckets each lie on one side of every
    cut of this price (None: a model with no price) and within one local day
    of `f.tz` (over `spans`; None: no day key), with a whole bucket inside
    the window; None if there is none (its rows are read raw)."""
    starts, dates, times = price.cuts() if price is not None else (set(), set(), set())
    if not starts <= set(PROMPT_BANDS):
        return None
    for width in token_rollups.WIDTHS:
        if any(d % width for d in dates) or any(t % (width * 1000) for t in times):
            continue
        if spans is not None and not timewindow.offsets_aligned(f.tz, spans, width):
            continue
        lo, hi = _rollup_window(f, width)
        if lo is not None and hi is not None and lo >= hi:
            continue  # no whole bucket in the window
        return width
    return None


class _RollupWidths:
    """The rollup width of each (provider, model) pair: one DeepSeek model
    with off-peak hours at :30 needs quarter hours, the others need not."""

    def __init__(self, f: Filters, spans: list[int] | None, pairs: Iterable[tuple]) -> None:
        self.f, self.spans = f, spans
        self.default = _pair_width(f, None, spans)  # a pair not listed: no cuts of its own
        self.by_pair = {pair: _pair_width(f, price_of(*pair), spans) for pair in pairs}

    @property
    def usable(self) -> bool:
        return self.default is not None and None not in self.by_pair.values()

    def differ(self, pairs: Iterable[tuple]) -> bool:
        """Do any of these pairs (read at the default width) need another?"""
        return any(
            _pair_width(self.f, price_of(*pair), self.spans) != self.default for pair in pairs
        )

    def groups(self) -> list[tuple[int, list[tuple]]]:
        """(width, its pairs) for every width but the default's, widest first."""
        out: dict[int, list[tuple]] = {}
        for pair, width in sorted(self.by_pair.items(), key=lambda kv: str(kv[0])):
            if width != self.default and width is not None:
                out.setdefault(width, []).append(pair)
        return sorted(out.items(), reverse=True)


def _rolled_sql(
    keys: tuple[str, ...], rolled: tuple[str, ...], where: str, cuts: _Cuts,
    widths: _RollupWidths, f: Filters,
) -> tuple[str, dict[str, str]]:  # fmt: skip
    """`_grouped_sql`'s sums from the rollup rows of every day not marked
    dirty, and from raw rows for the rest: dirty days, and the window's
    partial buckets at either end. One statement: one snapshot of both.
    Each pair is read at its own width (`widths`); returns the SQL and the
    parameters it adds."""
    names = ", ".join(f"k{i}" for i in range(len(keys)))
    raw_tier = _cut_sum("pp", cuts.starts, ">")

    def raw(tables: str, extra: str) -> str:
        return f"""
        SELECT {names}, p, m, {_sides(cuts, "at", raw_tier)}, at, pp AS tp, 1 AS n,
               prompt, completion, total, cached, creation, pp, po, pr, pw, ph
        FROM ({_token_rows(keys, tables, f"{where} AND {extra}")})"""

    branches = [
        raw(
            f"rollup_dirty_days d JOIN token_usage u ON u.recorded_at_ms >= d.day * {DAY_MS}"
            f" AND u.recorded_at_ms < (d.day + 1) * {DAY_MS} {TOKEN_TURN_JOIN}",
            "1",
        )
    ]
    params: dict[str, str] = {}
    listed = widths.groups()
    others = [pair for _, pairs in listed for pair in pairs]
    for n, (width, pairs) in enumerate([(widths.default, others), *listed]):
        assert width is not None
        if n == 0:  # the default width: every pair but those listed
            name = "rolled_other_pairs"
            test = "NOT " + _PAIR_IN.format(p="{p}", m="{m}") if pairs else ""
        else:
            name = f"rolled_pairs_{n}"
            test = _PAIR_IN.format(p="{p}", m="{m}")
        test = test.replace(":by_rows", f":{name}")
        params[name] = _pairs_json(set(pairs))
        on_rows = f" AND {test.format(p=TOKEN_PROVIDER, m=TOKEN_MODEL)}" if test else ""
        on_rollups = f" AND {test.format(p='r.provider', m='r.model')}" if test else ""
        branches += _width_branches(raw, rolled, cuts, width, f, on_rows, on_rollups)
    sql = f"""
    SELECT {names}, p, m, tier, dated, timed, min(at), min(tp), sum(n), {_ROW_SUMS}, {_PRICED_SUMS}
    FROM ({" UNION ALL ".join(branches)})
    GROUP BY {names}, p, m, tier, dated, timed
    """
    return sql, params


def _width_branches(
    raw: Callable[[str, str], str], rolled: tuple[str, ...], cuts: _Cuts, width: int,
    f: Filters, on_rows: str, on_rollups: str,
) -> list[str]:  # fmt: skip
    """The rows of the pairs that `on_rows` / `on_rollups` pick at this
    width: rollup rows of its whole buckets inside the window, on days not
    dirty, and raw rows of the window's partial buckets on those days."""
    lo, hi = _rollup_window(f, width)
    table = f"token_usage u {TOKEN_TURN_JOIN}"
    branches = []
    if lo is not None and lo != f.since_ms:
        branches.append(raw(table, f"u.recorded_at_ms < {lo} AND {_NOT_DIRTY}{on_rows}"))
    if hi is not None and hi != f.until_ms:
        branches.append(raw(table, f"u.recorded_at_ms >= {hi} AND {_NOT_DIRTY}{on_rows}"))
    clauses = [f"r.width_ms = {width}", f"r.bucket / {DAY_MS // width} NOT IN "
               "(SELECT day FROM rollup_dirty_days)"]  # fmt: skip
    if lo is not None:
        clauses.append(f"r.bucket >= {lo // width}")
    if hi is not None:
        clauses.append(f"r.bucket < {hi // width}")
    if f.provider is not None:
        clauses.append("r.provider = :provider")
    if f.model is not None:
        clauses.append("r.model = :model")
    if f.agent is not None:
        clauses.append("r.agent = :agent")
    tier = " + ".join(f"(r.band > {PROMPT_BANDS.index(c)})" for c in sorted(cuts.starts)) or "0"
    columns = ", ".join(f"{key} AS k{i}" for i, key in enumerate(rolled))
    branches.append(f"""
        SELECT {columns}, r.provider AS p, r.model AS m, {_sides(cuts, "r.first_at_ms", tier)},
               r.first_at_ms AS at, r.least_priced_prompt AS tp, r.row_count AS n,
               r.prompt_tokens AS prompt, r.completion_tokens AS completion,
               r.total_tokens AS total, r.cached_prompt_tokens AS cached,
               r.cache_creation_prompt_tokens AS creation, r.priced_prompt AS pp,
               r.priced_completion AS po, r.priced_cached AS pr, r.priced_creation AS pw,
               r.priced_creation_1h AS ph
        FROM token_rollups r WHERE {_join(clauses)}{on_rollups}""")
    return branches


async def _price_by_rows(
    conn: aiosqlite.Connection, src: Source, where: str, params: dict[str, Any],
    keys: tuple[str, ...], day_keys: list[int], key_fn: Callable[..., Any] | None,
    pairs: set[tuple[str, str]], groups: dict[Any, Cost],
) -> None:  # fmt: skip
    """The token sums and cost of these (provider, model) pairs' rows (left
    out of the grouped sums), one row at a time. A row with no day was
    written after the grouped sums were read: left for the next query."""
    pair = _PAIR_IN.format(p=TOKEN_PROVIDER, m=TOKEN_MODEL)
    sql = (
        f"SELECT {', '.join(keys)}, {TOKEN_PROVIDER}, {TOKEN_MODEL}, u.recorded_at_ms,"
        " u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_prompt_tokens,"
        " u.cache_creation_prompt_tokens, u.cache_creation_1h_prompt_tokens"
        f" FROM {src.tables} WHERE {where} AND {pair}"
    )
    width = len(keys)
    async for rows in _chunks(conn, sql, {**params, "by_rows": _pairs_json(pairs)}):
        for row in rows:
            if any(row[i] is None for i in day_keys):
                continue
            key = row[0] if width == 1 else row[:width]
            if key_fn is not None:
                key = key_fn(key)
            provider, model, at, prompt, completion, total, cached, creation, hour = row[width:]
            acc = groups.get(key)
            if acc is None:
                acc = groups[key] = Cost()
            acc.add_tokens(prompt, completion, total, cached, creation, 1)
            pico = cost_pico(provider, model, prompt, completion, cached, creation, hour, at_ms=at)
            if pico is None:
                acc.unpriced += 1
            else:
                acc.micro += Fraction(pico, 1_000_000)


# --- stats tools --------------------------------------------------------------


async def tool_stats(
    conn: aiosqlite.Connection, f: Filters, sort: str = "calls", min_calls: int = 0
) -> list[dict[str, Any]]:
    """Per tool: calls, errors, durations and exact p50/p95/p99.

    Orders: calls = callCount desc; p95 = p95DurationMs desc (untimed last),
    then callCount desc; errors = errorCount desc, then errorRate desc;
    underused = callCount asc. Remaining ties: toolName asc. `avgDurationMs` is the mean
    over timed calls rounded to 3 decimals (microseconds); `errorRate` is
    errors / calls rounded to 6 decimals.
    """
    if sort not in TOOL_SORTS:
        raise ValueError(f"unknown sort {sort!r}")
    narrow = await _narrow(conn, f)
    src = tool_source(f, narrow=narrow)
    rows = await _all(
        conn,
        f"""SELECT c.tool_name, count(*), coalesce(sum(c.is_error), 0),
                   coalesce(sum({DURATION}), 0), count({DURATION})
            FROM {src.tables} WHERE {src.where} GROUP BY c.tool_name""",
        f.params(),
    )
    tools = [
        {
            "raw": raw,
            "toolName": UNKNOWN if raw is None else raw,
            "callCount": calls,
            "errorCount": errors,
            "errorRate": round(errors / calls, 6) if calls else 0.0,
            "totalDurationMs": total,
            "avgDurationMs": round(total / timed, 3) if timed else None,
            "timed": timed,
        }
        for raw, calls, errors, total, timed in rows
        if calls >= min_calls
    ]
    # stable sorts: name first, then the order's keys
    tools.sort(key=lambda r: r["toolName"])
    if sort == "p95":
        await _percentiles(conn, f, tools, narrow)
        tools.sort(key=lambda r: -r["callCount"])
        tools.sort(key=lambda r: (r["p95DurationMs"] is None, -(r["p95DurationMs"] or 0)))
    elif sort == "calls":
        tools.sort(key=lambda r: -r["callCount"])
    elif sort == "errors":
        tools.sort(key=lambda r: (-r["errorCount"], -r["errorRate"]))
    else:  # underused
        tools.sort(key=lambda r: r["callCount"])
    shown = tools[: f.limit]
    if sort != "p95":
        await _percentiles(conn, f, shown, narrow)
    keys = (
        "toolName", "callCount", "errorCount", "errorRate", "totalDurationMs", "avgDurationMs",
        "p50DurationMs", "p95DurationMs", "p99DurationMs",
    )  # fmt: skip
    return [{k: tool[k] for k in keys} for tool in shown]


async def _percentiles(
    conn: aiosqlite.Connection, f: Filters, tools: list[dict[str, Any]], narrow: bool
) -> None:
    """Fill p50/p95/p99 of these tools (each has its timed-call count `timed`).

    Unfiltered or wide windows: per tool and percentile one walk of the
    covering index that stops at rank k. Small windows and turn/session
    filters: one stream of the matching durations sorted by tool, ranks
    picked on the way (a walk would re-check the filter on every step).
    """
    for tool in tools:
        for q in PERCENTILES:
            tool[f"p{q}DurationMs"] = None
    timed = [t for t in tools if t["timed"]]
    if not timed:
        return
    src = tool_source(f, narrow=narrow)
    params = f.params()
    if not narrow and not _semi_joined(f):
        for tool in timed:
            n = tool["timed"]
            walks = []
            for q in PERCENTILES:
                k = _nearest_rank(q, n)
                # enter from the nearer end: p99 skips 1% of the calls, not 99%
                order, offset = ("DESC", n - k) if k > n - k else ("ASC", k - 1)
                walks.append(
                    f"""(SELECT {DURATION} FROM {src.tables}
                         WHERE {src.where} AND c.tool_name IS :name AND {DURATION} IS NOT NULL
                         ORDER BY {DURATION} {order} LIMIT 1 OFFSET {offset})"""
                )
            row = await _one(conn, f"SELECT {', '.join(walks)}", {**params, "name": tool["raw"]})
            for q, value in zip(PERCENTILES, row, strict=True):
                tool[f"p{q}DurationMs"] = value
        return
    by_name = {t["raw"]: t for t in timed}
    names = [name for name in by_name if name is not None]
    column = "+c.tool_name" if narrow else "c.tool_name"  # narrow: keep the time index
    only = [f"{column} IN {_JSON_LIST.format(':names')}"] if names else []
    if None in by_name:
        only.append(f"{column} IS NULL")
    sql = f"""SELECT c.tool_name, {DURATION} FROM {src.tables}
              WHERE {src.where} AND {DURATION} IS NOT NULL AND ({" OR ".join(only)})
              ORDER BY c.tool_name, {DURATION}"""
    current: Any = _START
    seen = 0
    wanted: dict[int, list[int]] = {}
    async for rows in _chunks(conn, sql, {**params, "names": json.dumps(names)}):
        for name, duration in rows:
            if name != current:
                current, seen, wanted = name, 0, {}
                for q in PERCENTILES:
                    wanted.setdefault(_nearest_rank(q, by_name[name]["timed"]), []).append(q)
            seen += 1
            if seen in wanted:
                for q in wanted[seen]:
                    by_name[name][f"p{q}DurationMs"] = duration


# --- stats tokens ---------------------------------------------------------------


def _group_key(group: str) -> tuple[str, Callable[[Any], str] | None]:
    if group in TIME_GROUPS:
        text = {
            "day": timewindow.day_text,
            "week": timewindow.week_text,
            "month": timewindow.month_text,
        }[group]
        return LOCAL_DAY, text
    column = {
        "session": "u.thread_id",
        "provider": TOKEN_PROVIDER,
        "model": TOKEN_MODEL,
        "workspace": "s.workspace_label",
        "agent": "u.agent",
    }[group]
    return f"coalesce({column}, '{UNKNOWN}')", None


async def token_groups(
    conn: aiosqlite.Connection, f: Filters, group: str = "day", order: str | None = None
) -> list[dict[str, Any]]:
    """Token sums and cost per group.

    Time groups (day/week/month) are listed in time order, group asc (their
    keys sort chronologically); the others totalTokens desc, then group asc.
    `order` sets the direction of that first key (ties stay group asc);
    `f.limit` keeps the first rows of the order.

    day/week/month are calendar buckets of each row's terminal event in
    `f.tz` (ISO weeks, `YYYY-Www`), exact across DST and 30/45-minute zones.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}")
    if order is not None and order not in ORDERS:
        raise ValueError(f"unknown order {order!r}")
    key_sql, key_fn = _group_key(group)
    groups = await _costs(conn, f, key_sql, key_fn)
    if group in TIME_GROUPS:
        ordered = sorted(groups.items(), reverse=order == "desc")
    else:
        sign = 1 if order == "asc" else -1
        ordered = sorted(groups.items(), key=lambda kv: (sign * kv[1].total, kv[0]))
    return [
        {
            "group": key,
            "promptTokens": acc.prompt,
            "completionTokens": acc.completion,
            "totalTokens": acc.total,
            "cachedPromptTokens": acc.cached,
            "cacheCreationPromptTokens": acc.creation,
            "turnCount": acc.turns,
            **acc.cost_fields(),
        }
        for key, acc in ordered[: f.limit]
    ]


# --- stats summary --------------------------------------------------------------


async def summary(conn: aiosqlite.Connection, f: Filters) -> dict[str, Any]:
    params = f.params()
    turns = turn_source(f)
    counts = await _one(
        conn,
        f"""SELECT count(*), count(*) FILTER (WHERE t.status = 'completed'),
                   count(*) FILTER (WHERE t.status = 'failed'),
                   count(*) FILTER (WHERE t.status = 'interrupted')
            FROM {turns.tables} WHERE {turns.where}""",
        params,
    )
    calls = tool_source(f, narrow=await _narrow(conn, f))
    per_tool = await _all(
        conn,
        f"""SELECT c.tool_name, count(*), coalesce(sum(c.is_error), 0)
            FROM {calls.tables} WHERE {calls.where} GROUP BY c.tool_name""",
        params,
    )
    named = [(-n, name) for name, n, _ in per_tool if name is not None]
    sessions = await _one(conn, f"SELECT count(*) FROM ({_thread_ids_sql(f)})", params)
    total = (await _costs(conn, f, "0")).get(0) or Cost()
    return {
        "sessionCount": sessions[0],
        "turnCount": counts[0],
        "completedTurnCount": counts[1],
        "failedTurnCount": counts[2],
        "interruptedTurnCount": counts[3],
        "toolCallCount": sum(n for _, n, _ in per_tool),
        "toolErrorCount": sum(e for _, _, e in per_tool),
        "promptTokens": total.prompt,
        "completionTokens": total.completion,
        "totalTokens": total.total,
        "cachedPromptTokens": total.cached,
        "cacheCreationPromptTokens": total.creation,
        "mostCalledTool": min(named)[1] if named else None,
        # no token rows at all cost a real 0; unpriced rows are counted, not guessed
        **total.cost_fields(),
    }


# --- stats sessions -------------------------------------------------------------


def _latest(latest: str, member: str, f: Filters) -> str:
    """A row's last instant, kept inside the window (else its own instant)."""
    if f.until_ms is None:
        return f"coalesce({latest}, {member})"
    return f"CASE WHEN {latest} < :until THEN {latest} ELSE {member} END"


def _in_window(column: str, f: Filters) -> str:
    if not f.windowed:
        return column
    return f"CASE WHEN {_join(_window(f, column))} THEN {column} END"


async def sessions(
    conn: aiosqlite.Connection, f: Filters, sort: str = "recent"
) -> list[dict[str, Any]]:
    """Per thread, counting only rows that pass the filters.

    Orders: recent = lastActivityMs desc (default); tokens = totalTokens
    desc; cost = costUsd desc (null last); calls = toolCallCount desc.
    Ties go to threadId asc. First/last activity are the earliest/latest
    instants of the counted turns, calls, token rows and session facts.
    """
    if sort not in SESSION_SORTS:
        raise ValueError(f"unknown sort {sort!r}")
    turns, calls, tokens = turn_source(f), tool_source(f), token_source(f)
    sess = session_source(f)
    turn_last = _latest("coalesce(t.completed_at_ms, t.started_at_ms)", TURN_AT, f)
    call_last = _latest("coalesce(c.completed_at_ms, c.started_at_ms)", CALL_AT, f)
    sql = f"""
    WITH tr AS (
        SELECT t.thread_id AS id, count(*) AS n, min({TURN_AT}) AS lo, max({turn_last}) AS hi
        FROM {turns.tables} WHERE {turns.where} GROUP BY t.thread_id),
    tc AS (
        SELECT c.thread_id AS id, count(*) AS n, sum(c.is_error) AS errors,
               coalesce(sum({DURATION}), 0) AS dur, min({CALL_AT}) AS lo, max({call_last}) AS hi
        FROM {calls.tables} WHERE {calls.where} GROUP BY c.thread_id),
    tk AS (
        SELECT u.thread_id AS id, sum(u.total_tokens) AS n, min(u.recorded_at_ms) AS lo,
               max(u.recorded_at_ms) AS hi
        FROM {tokens.tables} WHERE {tokens.where} GROUP BY u.thread_id),
    ss AS (
        SELECT s.thread_id AS id, {_in_window("s.created_at_ms", f)} AS lo,
               {_in_window("s.updated_at_ms", f)} AS hi
        FROM {sess.tables} WHERE {sess.where}),
    ids AS (SELECT id FROM tr UNION SELECT id FROM tc UNION SELECT id FROM tk
            UNION SELECT id FROM ss)
    SELECT ids.id, s.workspace_label,
           coalesce(s.provider, (SELECT provider FROM turns WHERE thread_id = ids.id
                                 ORDER BY model_at_ms DESC LIMIT 1)),
           coalesce(s.model, (SELECT model FROM turns WHERE thread_id = ids.id
                              ORDER BY model_at_ms DESC LIMIT 1)),
           coalesce(tr.n, 0), coalesce(tc.n, 0), coalesce(tc.errors, 0), coalesce(tk.n, 0),
           coalesce(tc.dur, 0), tr.lo, tc.lo, tk.lo, ss.lo, tr.hi, tc.hi, tk.hi, ss.hi
    FROM ids LEFT JOIN sessions s ON s.thread_id = ids.id
    LEFT JOIN tr ON tr.id = ids.id LEFT JOIN tc ON tc.id = ids.id
    LEFT JOIN tk ON tk.id = ids.id LEFT JOIN ss ON ss.id = ids.id
    """
    out = []
    for row in await _all(conn, sql, f.params()):
        firsts = [v for v in row[9:13] if v is not None]
        lasts = [v for v in row[13:17] if v is not None]
        out.append(
            {
                "threadId": row[0],
                "workspaceLabel": row[1],
                "provider": row[2],
                "model": row[3],
                "turnCount": row[4],
                "toolCallCount": row[5],
                "toolErrorCount": row[6],
                "totalTokens": row[7],
                "totalToolDurationMs": row[8],
                "firstActivityMs": min(firsts) if firsts else None,
                "lastActivityMs": max(lasts) if lasts else None,
                "costUsd": None,
                "unpricedTurnCount": 0,
            }
        )
    out.sort(key=lambda r: r["threadId"])
    if sort == "cost":
        costs = await _costs(conn, f, "u.thread_id")
        for r in out:
            r.update(_session_cost(costs, r["threadId"]))
        out.sort(key=lambda r: (r["costUsd"] is None, -(r["costUsd"] or 0)))
        return out[: f.limit]
    if sort == "recent":
        out.sort(key=lambda r: -(r["lastActivityMs"] if r["lastActivityMs"] is not None else -1))
    elif sort == "tokens":
        out.sort(key=lambda r: -r["totalTokens"])
    else:
        out.sort(key=lambda r: -r["toolCallCount"])
    shown = out[: f.limit]
    if shown:
        costs = await _costs(
            conn,
            f,
            "u.thread_id",
            extra_where=f"u.thread_id IN {_JSON_LIST.format(':ids')}",
            extra_params={"ids": json.dumps([r["threadId"] for r in shown])},
        )
        for r in shown:
            r.update(_session_cost(costs, r["threadId"]))
    return shown


def _session_cost(costs: dict[Any, Cost], thread_id: str) -> dict[str, Any]:
    # a session with no token rows cost nothing, knowingly
    return (costs.get(thread_id) or Cost()).cost_fields()


# --- stats unused / rollups -------------------------------------------------------


async def unused_tools(
    conn: aiosqlite.Connection, f: Filters, registered: Iterable[str]
) -> list[str]:
    """The registered names with no call in the window, in the order given."""
    names = list(dict.fromkeys(n for n in registered if n))
    if not names:
        return []
    src = tool_source(f)
    called = {
        row[0]
        for row in await _all(
            conn,
            f"""SELECT DISTINCT c.tool_name FROM {src.tables}
                WHERE {src.where} AND c.tool_name IN {_JSON_LIST.format(":names")}""",
            {**f.params(), "names": json.dumps(names)},
        )
    }
    return [n for n in names if n not in called][: f.limit]


ROLLUP_COLUMNS = (
    ("day", "day"), ("scope", "scope"), ("key", "key"), ("turns", "turns"),
    ("tool_calls", "toolCalls"), ("tool_errors", "toolErrors"),
    ("tool_duration_ms", "toolDurationMs"), ("prompt_tokens", "promptTokens"),
    ("completion_tokens", "completionTokens"), ("total_tokens", "totalTokens"),
    ("cached_prompt_tokens", "cachedPromptTokens"),
    ("cache_creation_prompt_tokens", "cacheCreationPromptTokens"),
    ("refreshed_at_ms", "refreshedAtMs"),
)  # fmt: skip


async def rollups(
    conn: aiosqlite.Connection, f: Filters, scope: str | None = None
) -> list[dict[str, Any]]:
    """daily_rollups rows (UTC days), newest day first, then scope and key.

    A day is listed when it overlaps the window. `tool` keeps scope 'tool'
    rows of that tool; `provider`/`model` keep scope 'model' rows, whose key
    is `provider/model`. Rollups have no thread or workspace dimension.
    """
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": f.limit}
    if f.since_ms is not None:
        clauses.append("day >= :first_day")
        params["first_day"] = timewindow.day_key(f.since_ms, UTC)
    if f.until_ms is not None:
        clauses.append("day <= :last_day")
        params["last_day"] = timewindow.day_key(f.until_ms - 1, UTC)
    if scope is not None:
        clauses.append("scope = :scope")
        params["scope"] = scope
    if f.tool is not None:
        clauses.append("scope = 'tool' AND key = :tool")
        params["tool"] = f.tool
    if f.provider is not None:
        clauses.append(
            "scope = 'model' AND substr(key, 1, length(:provider) + 1) = :provider || '/'"
        )
        params["provider"] = f.provider
    if f.model is not None:
        clauses.append("scope = 'model' AND substr(key, -length(:model) - 1) = '/' || :model")
        params["model"] = f.model
    columns = ", ".join(c for c, _ in ROLLUP_COLUMNS)
    rows = await _all(
        conn,
        f"""SELECT {columns} FROM daily_rollups WHERE {_join(clauses)}
            ORDER BY day DESC, scope, key LIMIT :limit""",
        params,
    )
    return [dict(zip((k for _, k in ROLLUP_COLUMNS), row, strict=True)) for row in rows]


# --- other engineers' queries ----------------------------------------------------


async def turn_status_counts(conn: aiosqlite.Connection) -> dict[str, int]:
    rows = await _all(conn, "SELECT status, count(*) FROM turns GROUP BY status", [])
    return {status: n for status, n in rows}


async def activity_counts(
    conn: aiosqlite.Connection,
    by: str,
    loop_stage: str | None = None,
    user_sessions: bool = False,
    f: Filters | None = None,
) -> list[dict[str, Any]]:
    """Local analytics.v2 events per `by` key. `f` (optional) applies its
    window (occurred_at_ms), thread, workspace and limit."""
    column = {
        "module": "module",
        "owner-module": "owner_module",
        "execution-kind": "execution_kind",
        "loop-stage": "loop_stage",
        "outcome": "outcome",
        "phase": "phase",
        "error-category": "error_category",
    }[by]
    clauses, params = [], []
    if loop_stage:
        clauses.append("loop_stage = ?")
        params.append(loop_stage)
    if user_sessions:
        clauses.append(
            "module = 'session' AND owner_module = 'session' AND execution_kind = 'user_session'"
        )
    limit = -1
    if f is not None:
        for clause, value in (
            ("occurred_at_ms >= ?", f.since_ms),
            ("occurred_at_ms < ?", f.until_ms),
            ("thread_id = ?", f.thread),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if f.workspace is not None:
            clauses.append(
                "thread_id IN (SELECT thread_id FROM sessions"
                " WHERE workspace_label = ? OR workspace_key = ?)"
            )
            params += [f.workspace, f.workspace]
        if f.agent is not None:
            # activity rows take their agent from their thread's session
            claude = "thread_id IN (SELECT thread_id FROM sessions WHERE agent = 'claude-code')"
            clauses.append(claude if f.agent == "claude-code" else f"NOT ({claude})")
        limit = f.limit
    where = " AND ".join(clauses) or "1"
    rows = await _all(
        conn,
        f"""
        SELECT coalesce({column}, '(none)') AS k, count(*),
               count(*) FILTER (WHERE event_name = 'error_occurred')
        FROM activity_v2 WHERE {where} GROUP BY k ORDER BY count(*) DESC, k ASC
        LIMIT {int(limit)}""",
        params,
    )
    return [{"key": k, "events": n, "errorEvents": e} for k, n, e in rows]


# --- the dashboard's own questions (queryspec.prepare_token_stack/hours/session) ---


def _cost_fields(acc: Cost) -> dict[str, Any]:
    return {
        "promptTokens": acc.prompt,
        "completionTokens": acc.completion,
        "totalTokens": acc.total,
        "cachedPromptTokens": acc.cached,
        "cacheCreationPromptTokens": acc.creation,
        "turnCount": acc.turns,
        **acc.cost_fields(),
    }


async def token_stack(
    conn: aiosqlite.Connection, f: Filters, group: str = "day", by: str = "model"
) -> list[dict[str, Any]]:
    """Token sums and cost per time bucket (day/week/month in `f.tz`) and
    model (or provider): the stacked chart. Rows in time order, then
    totalTokens desc, then key; the first `f.limit` buckets. Per bucket the
    rows add up to `token_groups(f, group)`'s row, per key to `by`'s."""
    if group not in ("day", "week", "month") or by not in ("model", "provider"):
        raise ValueError(f"unknown stack {group!r} by {by!r}")
    _, bucket = _group_key(group)
    assert bucket is not None
    column = TOKEN_MODEL if by == "model" else TOKEN_PROVIDER  # a Claude Code call's own
    key = (LOCAL_DAY, f"coalesce({column}, '{UNKNOWN}')")
    groups = await _costs(conn, f, key, lambda k: (bucket(k[0]), k[1]))
    buckets = sorted({b for b, _ in groups})[: f.limit]
    kept = set(buckets)
    ordered = sorted(
        ((b, key, acc) for (b, key), acc in groups.items() if b in kept),
        key=lambda r: (r[0], -r[2].total, r[1]),
    )
    return [{"group": b, "key": key, **_cost_fields(acc)} for b, key, acc in ordered]


_QUARTER_MS = 900_000  # every UTC offset in use is a whole number of quarter hours
_MS = timedelta(milliseconds=1)


@functools.lru_cache(maxsize=65536)
def _quarter_offset_ms(tz: tzinfo, quarter: int) -> int | None:
    """The zone's offset over this whole UTC quarter hour, if it is constant
    and a whole number of quarters (so the quarter is in one local hour)."""
    first = datetime.fromtimestamp(quarter * 900, tz).utcoffset()
    last = datetime.fromtimestamp(quarter * 900 + 899, tz).utcoffset()
    if first is None or first != last:
        return None
    offset = first // _MS
    return offset if offset % _QUARTER_MS == 0 else None


def _weekday_hour(local_ms: int) -> tuple[int, int]:
    """(ISO weekday 1–7, hour 0–23) of a local wall-clock instant."""
    days, rest = divmod(local_ms, 86_400_000)
    return (days + 3) % 7 + 1, rest // 3_600_000  # 1970-01-01 was a Thursday


async def weekday_hours(conn: aiosqlite.Connection, f: Filters) -> list[dict[str, Any]]:
    """Turns (by their instant) and tool calls (by theirs) per local weekday
    (ISO, Monday = 1) and hour in `f.tz`; only cells with activity, in
    weekday, hour order.

    SQL counts per UTC quarter hour; a quarter maps to one local cell when
    the zone's offset over it is constant and a whole number of quarters
    (always, in practice); any other quarter is counted row by row.
    """
    cells: dict[tuple[int, int], list[int]] = {}
    sources = ((TURN_AT, turn_source(f)), (CALL_AT, tool_source(f)))
    for index, (at, src) in enumerate(sources):
        sql = (
            f"SELECT {at} / {_QUARTER_MS} AS q, count(*) FROM {src.tables}"
            f" WHERE {src.where} AND {at} IS NOT NULL GROUP BY q"
        )
        odd: list[int] = []
        for quarter, n in await _all(conn, sql, f.params()):
            offset = _quarter_offset_ms(f.tz, quarter)
            if offset is None:
                odd.append(quarter)
                continue
            cells.setdefault(_weekday_hour(quarter * _QUARTER_MS + offset), [0, 0])[index] += n
        for quarter in odd:
            rows = await _all(
                conn,
                f"SELECT {at} FROM {src.tables} WHERE {src.where} AND {at} / {_QUARTER_MS} = :q",
                {**f.params(), "q": quarter},
            )
            for (ms,) in rows:
                offset = datetime.fromtimestamp(ms // 1000, f.tz).utcoffset() or timedelta(0)
                cells.setdefault(_weekday_hour(ms + offset // _MS), [0, 0])[index] += 1
    return [
        {"weekday": day, "hour": hour, "turns": turns, "toolCalls": calls}
        for (day, hour), (turns, calls) in sorted(cells.items())
    ]


async def session_detail(conn: aiosqlite.Connection, f: Filters) -> dict[str, Any]:
    """One session (`f.thread`) for the drill-down: its `sessions` row, and
    its turns (tokens and cost each) and tool calls in time order, the
    first `f.limit` of each, counting only rows that pass the filters."""
    if f.thread is None:
        raise ValueError("session_detail needs f.thread")
    rows = await sessions(conn, f)
    turns = turn_source(f)
    turn_rows = await _all(
        conn,
        f"""SELECT t.turn_id, t.provider, t.model, t.status, t.started_at_ms,
                   t.completed_at_ms, {TURN_AT} AS at
            FROM {turns.tables} WHERE {turns.where}
            ORDER BY at IS NULL, at, t.turn_id LIMIT :limit""",
        {**f.params(), "limit": f.limit},
    )
    costs = await _costs(conn, f, "u.turn_id")
    out_turns = []
    for turn_id, provider, model, status, started, completed, _ in turn_rows:
        acc = costs.get(turn_id)
        out_turns.append(
            {
                "turnId": turn_id,
                "provider": provider,
                "model": model,
                "status": status,
                "startedAtMs": started,
                "completedAtMs": completed,
                **_cost_fields(acc or Cost()),
                "hasTokenUsage": acc is not None,
            }
        )
    calls = tool_source(f)
    call_rows = await _all(
        conn,
        f"""SELECT c.turn_id, c.tool_name, c.started_at_ms, c.completed_at_ms,
                   {DURATION}, c.is_error, {CALL_AT} AS at
            FROM {calls.tables} WHERE {calls.where}
            ORDER BY at IS NULL, at, c.turn_id, c.tool_id LIMIT :limit""",
        {**f.params(), "limit": f.limit},
    )
    out_calls = [
        {
            "turnId": turn_id,
            "toolName": UNKNOWN if name is None else name,
            "startedAtMs": started,
            "completedAtMs": completed,
            "durationMs": duration,
            "status": "running" if completed is None else ("error" if is_error else "success"),
        }
        for turn_id, name, started, completed, duration, is_error, _ in call_rows
    ]
    return {"session": rows[0] if rows else None, "turns": out_turns, "toolCalls": out_calls}
