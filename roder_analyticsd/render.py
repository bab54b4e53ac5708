"""Human output: aligned tables with totals, dollars and readable durations.

Free to change (cli.md: only `--json` output is a contract). rich is imported
inside the functions so `--help` and `--json` runs never load it. On a
narrow terminal the least important columns are dropped instead of wrapping
every cell; piped output is laid out for a wide page.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

UNKNOWN_COST = "—"
NARROW = 100  # below this many columns, drop the optional columns
VERY_NARROW = 72  # ... and the nice-to-have ones too
PIPE_WIDTH = 200


# --- cell formats -------------------------------------------------------------


def count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def usd(value: float | None) -> str:
    if value is None:
        return UNKNOWN_COST
    if 0 < value < 0.005:
        return "<$0.01"
    return f"${value:,.2f}"


def duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:,.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:,.1f} h"


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def instant(ms: int | None, tz: tzinfo) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


# --- tables -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    cell: Callable[[dict[str, Any]], str]
    total: str = ""
    justify: str = "right"
    keep: int = 0  # 0 always shown; 1 hidden when narrow; 2 hidden when very narrow


def _console() -> Any:
    from rich.console import Console

    width = None
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        width = PIPE_WIDTH  # a file or a pipe: do not squeeze into 80 columns
    return Console(width=width, highlight=False, soft_wrap=False)


def table(
    columns: Sequence[Column],
    rows: Sequence[dict[str, Any]],
    *,
    totals: bool = True,
    header: bool = True,
    empty: str = "nothing matched",
    note: str | None = None,
) -> None:
    from rich import box
    from rich.table import Table

    console = _console()
    if not rows:
        console.print(f"[dim]{empty}[/dim]")
        return
    width = console.width
    hidden = 0 if width >= NARROW else (1 if width >= VERY_NARROW else 2)
    shown = [c for c in columns if c.keep == 0 or c.keep > hidden]
    grid = Table(
        box=box.SIMPLE if totals else box.SIMPLE_HEAD,
        show_header=header,
        show_footer=totals,
        show_edge=False,
        pad_edge=False,
        footer_style="bold",
    )
    for col in shown:
        grid.add_column(
            col.header, footer=col.total, justify=col.justify, no_wrap=col.justify == "right"
        )  # type: ignore[arg-type]
    for row in rows:
        grid.add_row(*(col.cell(row) for col in shown))
    console.print(grid)
    if note:
        console.print(f"[dim]{note}[/dim]")


def _limit_note(rows: Sequence[Any], limit: int, totals: bool = True) -> str | None:
    if len(rows) < limit:
        return None
    return f"first {limit} rows" + ("; totals are over these rows" if totals else "") + " (--limit)"


PARTIAL = "*"


def cost(row: dict[str, Any]) -> str:
    """A row's cost; `*` marks a sum that leaves out turns with no known price."""
    value = row["costUsd"]
    partial = value is not None and row.get("unpricedTurnCount", 0) > 0
    return usd(value) + (PARTIAL if partial else "")


def _cost_total(rows: Sequence[dict[str, Any]]) -> str:
    priced = [r["costUsd"] for r in rows if r["costUsd"] is not None]
    unpriced = sum(r.get("unpricedTurnCount", 0) for r in rows)
    return cost({"costUsd": sum(priced) if priced else None, "unpricedTurnCount": unpriced})


def _cost_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    unpriced = sum(r.get("unpricedTurnCount", 0) for r in rows)
    notes = []
    if unpriced and any(r["costUsd"] is not None for r in rows):  # a row or the total has *
        notes.append(f"{PARTIAL} partial sum: {_turns(unpriced)} with no known price not counted")
    if any(r["costUsd"] is None for r in rows):
        notes.append(f"{UNKNOWN_COST} = no turn in the group has a known price (never $0)")
    return notes


def _turns(n: int) -> str:
    return f"{n:,} turn" + ("" if n == 1 else "s")


# --- commands -------------------------------------------------------------------


def tools(rows: list[dict[str, Any]], limit: int) -> None:
    calls = sum(r["callCount"] for r in rows)
    errors = sum(r["errorCount"] for r in rows)
    total_ms = sum(r["totalDurationMs"] for r in rows)
    columns = [
        Column("Tool", lambda r: r["toolName"], "Total", "left"),
        Column("Calls", lambda r: count(r["callCount"]), count(calls)),
        Column("Errors", lambda r: count(r["errorCount"]), count(errors), keep=2),
        Column(
            "Error %", lambda r: percent(r["errorRate"]), percent(errors / calls if calls else None)
        ),
        Column("Total time", lambda r: duration(r["totalDurationMs"]), duration(total_ms), keep=1),
        Column("Avg", lambda r: duration(r["avgDurationMs"]), keep=1),
        Column("p50", lambda r: duration(r["p50DurationMs"]), keep=2),
        Column("p95", lambda r: duration(r["p95DurationMs"])),
        Column("p99", lambda r: duration(r["p99DurationMs"]), keep=1),
    ]
    table(columns, rows, empty="no tool calls match", note=_limit_note(rows, limit))


def tokens(rows: list[dict[str, Any]], group: str, limit: int) -> None:
    def total(key: str) -> str:
        return count(sum(r[key] for r in rows))

    columns = [
        Column(group.capitalize(), lambda r: str(r["group"]), "Total", "left"),
        Column("Turns", lambda r: count(r["turnCount"]), total("turnCount"), keep=1),
        Column("Prompt", lambda r: count(r["promptTokens"]), total("promptTokens")),
        Column("Completion", lambda r: count(r["completionTokens"]), total("completionTokens")),
        Column(
            "Cache read", lambda r: count(r["cachedPromptTokens"]), total("cachedPromptTokens"),
            keep=2,
        ),
        Column(
            "Cache write", lambda r: count(r["cacheCreationPromptTokens"]),
            total("cacheCreationPromptTokens"), keep=1,
        ),
        Column("Total", lambda r: count(r["totalTokens"]), total("totalTokens")),
        Column("Cost", cost, _cost_total(rows)),
    ]  # fmt: skip
    notes = [n for n in (_limit_note(rows, limit),) if n] + _cost_notes(rows)
    table(columns, rows, empty="no token usage matches", note="\n".join(notes) or None)


def sessions(rows: list[dict[str, Any]], tz: tzinfo, limit: int) -> None:
    def total(key: str) -> str:
        return count(sum(r[key] for r in rows))

    columns = [
        Column("Thread", lambda r: r["threadId"], "Total", "left"),
        Column("Workspace", lambda r: r["workspaceLabel"] or "—", justify="left", keep=1),
        Column("Model", lambda r: r["model"] or "—", justify="left", keep=2),
        Column("Turns", lambda r: count(r["turnCount"]), total("turnCount")),
        Column("Tool calls", lambda r: count(r["toolCallCount"]), total("toolCallCount"), keep=1),
        Column("Errors", lambda r: count(r["toolErrorCount"]), total("toolErrorCount"), keep=2),
        Column("Tokens", lambda r: count(r["totalTokens"]), total("totalTokens")),
        Column(
            "Tool time",
            lambda r: duration(r["totalToolDurationMs"]),
            duration(sum(r["totalToolDurationMs"] for r in rows)),
            keep=2,
        ),
        Column("Last active", lambda r: instant(r["lastActivityMs"], tz), keep=1),
        Column("Cost", cost, _cost_total(rows)),
    ]
    notes = [n for n in (_limit_note(rows, limit),) if n] + _cost_notes(rows)
    table(columns, rows, empty="no sessions match", note="\n".join(notes) or None)


def summary(result: dict[str, Any]) -> None:
    turns = result["turnCount"]
    detail = (
        f"{count(result['completedTurnCount'])} completed, "
        f"{count(result['failedTurnCount'])} failed, "
        f"{count(result['interruptedTurnCount'])} interrupted"
    )
    items = [
        ("Sessions", count(result["sessionCount"]), ""),
        ("Turns", count(turns), detail),
        ("Tool calls", count(result["toolCallCount"]), f"{count(result['toolErrorCount'])} errors"),
        ("Most called tool", result["mostCalledTool"] or "—", ""),
        ("Prompt tokens", count(result["promptTokens"]), ""),
        ("  cache read", count(result["cachedPromptTokens"]), "part of the prompt"),
        ("  cache write", count(result["cacheCreationPromptTokens"]), "part of the prompt"),
        ("Completion tokens", count(result["completionTokens"]), ""),
        ("Total tokens", count(result["totalTokens"]), ""),
        ("Cost", cost(result), _summary_cost_detail(result)),
    ]
    columns = [
        Column("", lambda r: r["k"], justify="left"),
        Column("", lambda r: r["v"]),
        Column("", lambda r: r["d"], justify="left", keep=2),
    ]
    table(columns, [{"k": k, "v": v, "d": d} for k, v, d in items], totals=False, header=False)


def _summary_cost_detail(result: dict[str, Any]) -> str:
    unpriced = result["unpricedTurnCount"]
    if not unpriced:
        return "estimate"
    if result["costUsd"] is None:
        return f"no known price for any turn ({_turns(unpriced)})"
    return f"{PARTIAL} partial estimate: {_turns(unpriced)} with no known price not counted"


def unused(names: list[str]) -> None:
    import click

    if not names:
        click.echo("every registered tool was called")
    for name in names:
        click.echo(name)


def rollups(rows: list[dict[str, Any]], limit: int) -> None:
    columns = [
        Column("Day", lambda r: r["day"], "", "left"),
        Column("Scope", lambda r: r["scope"], justify="left"),
        Column("Key", lambda r: r["key"] or "—", justify="left"),
        Column("Turns", lambda r: count(r["turns"])),
        Column("Tool calls", lambda r: count(r["toolCalls"])),
        Column("Errors", lambda r: count(r["toolErrors"]), keep=1),
        Column("Tool time", lambda r: duration(r["toolDurationMs"]), keep=2),
        Column("Prompt", lambda r: count(r["promptTokens"]), keep=1),
        Column("Completion", lambda r: count(r["completionTokens"]), keep=1),
        Column("Total tokens", lambda r: count(r["totalTokens"])),
    ]
    table(
        columns, rows, totals=False, empty="no rollups match", note=_limit_note(rows, limit, False)
    )


# --- progress -------------------------------------------------------------------


class FileProgress:
    """A progress bar on stderr while `--once` reads files; a no-op unless
    stderr is a terminal. `update(done, total)` is the ingest callback."""

    def __init__(self, enabled: bool = True, label: str = "backfill") -> None:
        self._label = label
        self._progress: Any = None
        self._task: Any = None
        self._enabled = enabled and sys.stderr.isatty()

    def __enter__(self) -> FileProgress:
        if self._enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._progress = Progress(
                f"[bold]{self._label}",
                BarColumn(),
                MofNCompleteColumn(),
                "files",
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int, total: int) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(self._label, total=total)
        self._progress.update(self._task, completed=done, total=total)
