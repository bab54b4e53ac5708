"""`roder-analyticsd stats …`: read-only questions over the store.

Every query command takes the same filters (`query_options`) and validates
them, with its own options, through `queryspec` (shared with the dashboard's
API) before the store is opened, so bad usage exits 2 even when there is no
store yet. `stats activity` and `stats fleet …` are added to this group by
their own modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from roder_analyticsd.cli.common import (
    Failure,
    LazyGroup,
    UsageProblem,
    data_options,
    emit_json,
    run_blocking,
    settings_for,
)
from roder_analyticsd.queryspec import (  # click-free and import-light
    AGENTS,
    GROUPS,
    LIMIT_CAP,
    LIMIT_DEFAULT,
    ORDERS,
    ROLLUP_SCOPES,
    SESSION_SORTS,
    TOOL_SORTS,
)

F = TypeVar("F", bound=Callable[..., Any])

COST_HELP = (
    "costUsd is an estimate from the genai-prices table bundled with this install "
    "(no network), each turn priced at its own time with prompt, completion, cache-read "
    "and cache-write tokens billed separately. It is the sum over the turns whose model "
    "has a known price; unpricedTurnCount counts the others, and costUsd is null only when "
    "no turn is priced (never a made-up 0). Tables mark a partial sum with *."
)


@click.group(
    cls=LazyGroup,
    lazy={
        "activity": "roder_analyticsd.cli.fleet:activity",
        "fleet": "roder_analyticsd.cli.fleet:fleet",
    },
)
def stats() -> None:
    """Answer questions about tokens, cost, tools and sessions."""


def query_options(func: F) -> F:
    """The filters every query takes (cli.md), plus --data-dir/--store/--json."""
    options = [
        click.option(
            "--since",
            metavar="WHEN",
            help="Start of the window, inclusive: 7d, 24h, 90m, YYYY-MM-DD (midnight in "
            "--timezone) or RFC 3339.",
        ),
        click.option("--until", metavar="WHEN", help="End of the window, exclusive; same forms."),
        click.option("--thread", metavar="ID", help="Only this thread."),
        click.option(
            "--tool",
            metavar="NAME",
            help="Only this tool's calls (and the turns, tokens and sessions that called it).",
        ),  # fmt: skip
        click.option("--provider", metavar="NAME", help="Only turns on this provider."),
        click.option("--model", metavar="NAME", help="Only turns on this model."),
        click.option("--workspace", metavar="LABEL", help="Only this workspace (label or key)."),
        click.option(
            "--agent",
            type=click.Choice(AGENTS),
            help="Only rows from this agent's logs (default: every agent).",
        ),
        click.option(
            "--limit",
            type=int,
            default=LIMIT_DEFAULT,
            show_default=True,
            help=f"At most this many rows (1–{LIMIT_CAP}).",
        ),
        click.option(
            "--timezone",
            "tz_name",
            metavar="TZ",
            default="UTC",
            show_default=True,
            help="IANA time zone for day/week/month boundaries and dates.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return data_options(func)


def filter_options(opts: dict[str, Any]):
    """The query filters as typed (queryspec.FilterOptions), from click's values."""
    from roder_analyticsd.queryspec import FilterOptions

    return FilterOptions(
        since=opts["since"],
        until=opts["until"],
        thread=opts["thread"],
        tool=opts["tool"],
        provider=opts["provider"],
        model=opts["model"],
        workspace=opts["workspace"],
        agent=opts.get("agent"),
        limit=opts["limit"],
        timezone=opts["tz_name"],
    )


def usage_checked(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a queryspec function; its UsageError is exit 2 with one line."""
    from roder_analyticsd.queryspec import UsageError

    try:
        return func(*args, **kwargs)
    except UsageError as exc:
        raise UsageProblem(str(exc)) from None


def filters_from(opts: dict[str, Any], *, now_ms: int | None = None):
    """Validate the query options into Filters; bad usage raises exit 2."""
    return usage_checked(filter_options(opts).filters, now_ms=now_ms)


def prepare(opts: dict[str, Any], name: str, *args: Any, **kwargs: Any):
    """queryspec.prepare_<name>(the filters, …): validated, or exit 2."""
    from roder_analyticsd import queryspec

    return usage_checked(
        getattr(queryspec, f"prepare_{name}"), filter_options(opts), *args, **kwargs
    )


def query_store(opts: dict[str, Any], fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(conn, *args)` on a read-only connection to the store, in this
    thread: a one-shot query needs no event loop (store/blocking.py)."""
    settings = settings_for(opts["data_dir"], opts["store"])

    @run_blocking
    async def run() -> Any:
        import sqlite3

        from roder_analyticsd.store.blocking import connect
        from roder_analyticsd.store.connection import describe_sqlite_error, open_store

        conn = await open_store(settings.store, readonly=True, connect=connect)
        try:
            return await fn(conn, *args)
        except sqlite3.DatabaseError as exc:  # e.g. not a database: seen at the first read
            raise Failure(describe_sqlite_error(exc, settings.store)) from None
        finally:
            await conn.close()

    return run()


def _help(text: str) -> Callable[[F], F]:
    def wrap(func: F) -> F:
        func.__doc__ = text
        return func

    return wrap


@stats.command()
@query_options
def summary(**opts: Any) -> None:
    """Totals: sessions, turns, tool calls, tokens, cost.

    sessionCount counts threads with a session record or activity in the
    window. costUsd sums the turns whose model has a known price;
    unpricedTurnCount counts the others (costUsd is null only when no turn
    is priced).
    """
    q = prepare(opts, "summary")
    result = query_store(opts, q.run)
    if opts["as_json"]:
        emit_json(result)
        return
    from roder_analyticsd import render

    render.summary(result)


@stats.command()
@query_options
@click.option(
    "--sort",
    type=click.Choice(TOOL_SORTS),
    default="calls",
    show_default=True,
    help="calls: most calls first; p95: slowest p95 first; errors: most errors first; "
    "underused: fewest calls first. Ties by name.",
)
@click.option(
    "--min-calls",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Only tools called at least N times.",
)
def tools(sort: str, min_calls: int, **opts: Any) -> None:
    """Tool popularity, errors and latency percentiles.

    Percentiles are exact nearest-rank over the calls that have a duration
    (both halves seen); avgDurationMs is their mean rounded to 3 decimals;
    errorRate = errorCount / callCount rounded to 6 decimals.
    """
    q = prepare(opts, "tools", sort=sort, min_calls=min_calls)
    rows = query_store(opts, q.run)
    if opts["as_json"]:
        emit_json(rows)
        return
    from roder_analyticsd import render

    render.tools(rows, q.filters.limit)


@stats.command()
@query_options
@click.option(
    "--group",
    type=click.Choice(GROUPS),
    default="day",
    show_default=True,
    help="day/week/month in --timezone (ISO weeks), session = thread id; a missing "
    "provider/model/workspace groups as (unknown).",
)
@click.option(
    "--order",
    type=click.Choice(ORDERS),
    help="Flip or keep the direction: day/week/month default to asc (oldest first), "
    "the other groups to desc (most tokens first); ties stay by group asc.",
)
@_help(
    "Token spend and cost grouped by time, session, provider, model or workspace.\n\n"
    "day/week/month are listed in time order; the other groups by totalTokens (most "
    "first), then group. --limit keeps the first rows of that order. " + COST_HELP
)
def tokens(group: str, order: str | None, **opts: Any) -> None:
    q = prepare(opts, "tokens", group=group, order=order)
    rows = query_store(opts, q.run)
    if opts["as_json"]:
        emit_json(rows)
        return
    from roder_analyticsd import render

    render.tokens(rows, group, q.filters.limit)


@stats.command()
@query_options
@click.option(
    "--sort",
    type=click.Choice(SESSION_SORTS),
    default="recent",
    show_default=True,
    help="recent: last activity first; tokens / cost / calls: most first. Ties by thread id.",
)
@_help(
    "Per-session turns, tool calls, tokens, tool time and cost.\n\n"
    "Only rows that pass the filters are counted; a session with no token usage "
    "costs 0. " + COST_HELP
)
def sessions(sort: str, **opts: Any) -> None:
    q = prepare(opts, "sessions", sort=sort)
    rows = query_store(opts, q.run)
    if opts["as_json"]:
        emit_json(rows)
        return
    from roder_analyticsd import render

    render.sessions(rows, q.filters.tz, q.filters.limit)


def _names(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("expected a comma-separated list of tool names")
    return names


@stats.command()
@query_options
@click.option(
    "--registered",
    required=True,
    metavar="A,B,C",
    callback=_names,
    help="The tool names to check, comma-separated.",
)
def unused(registered: list[str], **opts: Any) -> None:
    """Registered tools never called in the window, in the order given."""
    q = prepare(opts, "unused", registered=",".join(registered))
    names = query_store(opts, q.run)
    if opts["as_json"]:
        emit_json(names)
        return
    from roder_analyticsd import render

    render.unused(names)


@stats.command()
@query_options
@click.option(
    "--scope",
    type=click.Choice(ROLLUP_SCOPES),
    help="Only rows of this scope: all (per day), tool (per tool), model (per provider/model).",
)
def rollups(scope: str | None, **opts: Any) -> None:
    """Daily rollup rows (UTC days), newest first.

    A day is listed when it overlaps --since/--until; --tool keeps that tool's
    rows, --provider/--model the matching model rows. Rollups have no thread
    or workspace, and their days are UTC.
    """
    q = prepare(opts, "rollups", scope=scope)
    rows = query_store(opts, q.run)
    if opts["as_json"]:
        emit_json(rows)
        return
    from roder_analyticsd import render

    render.rollups(rows, q.filters.limit)
