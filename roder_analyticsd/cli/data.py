"""`roder-analyticsd export` / `import`: body-free normalized records.

The record format and the streaming live in `store/exchange.py`.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from contextlib import aclosing
from pathlib import Path
from typing import Any

import click

from roder_analyticsd.cli.common import (
    Failure,
    UsageProblem,
    data_options,
    emit_json,
    run_async,
    settings_for,
)


@click.command("export")
@data_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl"]),
    default="jsonl",
    show_default=True,
    help="Record format: one JSON object per line.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write here (atomically) instead of stdout.",
)
def export_cmd(
    data_dir: Path | None, store: Path | None, as_json: bool, fmt: str, output: Path | None
) -> None:
    """Export the store as schema-versioned JSON lines.

    Records (`kind`: session, turn, tool_call, token_usage) carry their agent
    (roder, claude-code), ids, names, labels, times and token counts (a Claude
    Code call's own model and cache split too): never a body. The output is
    deterministic: export → import into an empty store → export gives the
    same bytes. With --output and --json, a count of records per kind is
    printed on stdout.
    """
    settings = settings_for(data_dir, store)
    counts = _export(settings.store, output)
    if output is None:
        return
    if as_json:
        emit_json({"output": str(output), **counts})
    else:
        total = sum(counts.values())
        click.echo(f"exported {total:,} records to {output}", err=True)


@run_async
async def _export(store: Path, output: Path | None) -> dict[str, int]:
    from roder_analyticsd.store.connection import describe_sqlite_error, open_store

    conn = await open_store(store, readonly=True)
    try:
        if output is None:
            return await _export_to_stdout(conn)
        return await _export_to_file(conn, output)
    except sqlite3.DatabaseError as exc:  # e.g. not a database: seen at the first read
        raise Failure(describe_sqlite_error(exc, store)) from None
    finally:
        await conn.close()


async def _copy(conn: Any, sink: Any) -> dict[str, int]:
    from roder_analyticsd.store.exchange import COUNT_KEYS, export_chunks

    counts = dict.fromkeys(COUNT_KEYS.values(), 0)
    async with aclosing(export_chunks(conn)) as chunks:
        async for kind, n, chunk in chunks:
            sink.write(chunk)
            counts[COUNT_KEYS[kind]] += n
    return counts


async def _export_to_stdout(conn: Any) -> dict[str, int]:
    try:
        counts = await _copy(conn, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return counts
    except BrokenPipeError:
        # `export | head`: the reader left, which is not a failure; keep the
        # interpreter's final flush from complaining about it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return {}


async def _export_to_file(conn: Any, output: Path) -> dict[str, int]:
    # written next to the target and renamed: a reader never sees half a file
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            counts = await _copy(conn, fh)
        os.replace(tmp, output)
        return counts
    except OSError as exc:
        raise Failure(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


@click.command("import")
@data_options
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def import_cmd(data_dir: Path | None, store: Path | None, as_json: bool, file: Path) -> None:
    """Load an export FILE into the store (idempotent).

    The whole file is checked first; a bad line stops the import before
    anything is written. Rows merge with what the store already holds
    exactly as re-ingesting their events would, so importing a file twice
    changes nothing, and daily rollups of the days it touches are refreshed.
    Files of schema version 1 (before agents) import as Roder's rows.
    """
    settings = settings_for(data_dir, store)
    if not file.is_file():
        raise UsageProblem(f"no such export file: {file}")
    report = _import(settings.store, file)
    if as_json:
        emit_json(report.to_json())
        return
    counts = report.to_json()
    click.echo(
        f"imported {counts['sessions']:,} sessions, {counts['turns']:,} turns, "
        f"{counts['toolCalls']:,} tool calls, {counts['tokenUsage']:,} token rows"
    )


@run_async
async def _import(store: Path, file: Path) -> Any:
    from roder_analyticsd.store.connection import open_store
    from roder_analyticsd.store.exchange import ExchangeError, import_file

    conn = await open_store(store)
    try:
        return await import_file(conn, file)
    except ExchangeError as exc:
        raise UsageProblem(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise UsageProblem(f"{file}: not UTF-8 JSON lines ({exc.reason})") from None
    finally:
        await conn.close()
