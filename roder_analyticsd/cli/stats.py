"""`roder-analyticsd stats …`: read-only questions over the store."""

from __future__ import annotations

from pathlib import Path

import click

from roder_analyticsd.cli.common import data_options, emit_json, run_async, settings_for

LIMIT_CAP = 1000


@click.group()
def stats() -> None:
    """Answer questions about tokens, cost, tools and sessions."""


def _filters(limit: int = 50):
    from roder_analyticsd.store.queries import Filters

    if limit < 1 or limit > LIMIT_CAP:
        raise click.UsageError(f"--limit must be between 1 and {LIMIT_CAP}")
    return Filters(limit=limit)


async def _query(settings, fn, *args):
    from roder_analyticsd.store.connection import open_store

    conn = await open_store(settings.store, readonly=True)
    try:
        return await fn(conn, *args)
    finally:
        await conn.close()


@stats.command()
@data_options
@click.option("--limit", type=int, default=50, show_default=True)
def summary(data_dir: Path | None, store: Path | None, as_json: bool, limit: int) -> None:
    """Totals: sessions, turns, tool calls, tokens, cost."""
    from roder_analyticsd.store import queries

    settings = settings_for(data_dir, store)
    result = run_async(_query)(settings, queries.summary, _filters(limit))
    if as_json:
        emit_json(result)
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value}")


@stats.command()
@data_options
@click.option("--limit", type=int, default=50, show_default=True)
def tools(data_dir: Path | None, store: Path | None, as_json: bool, limit: int) -> None:
    """Tool popularity, errors and latency percentiles."""
    from roder_analyticsd.store import queries

    settings = settings_for(data_dir, store)
    result = run_async(_query)(settings, queries.tool_stats, _filters(limit))
    emit_json(result)


@stats.command()
@data_options
@click.option("--limit", type=int, default=50, show_default=True)
@click.option(
    "--group",
    type=click.Choice(["day", "week", "month", "session", "provider", "model", "workspace"]),
    default="day",
    show_default=True,
)
def tokens(
    data_dir: Path | None, store: Path | None, as_json: bool, limit: int, group: str
) -> None:
    """Token spend grouped by time, session, provider, model or workspace."""
    from roder_analyticsd.store import queries

    settings = settings_for(data_dir, store)
    result = run_async(_query)(settings, queries.token_groups, _filters(limit), group)
    emit_json(result)
