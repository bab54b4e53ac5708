"""`roder-analyticsd`: the daemon, the one-shot backfill and the sub-commands.

Kept thin: each command parses options, calls into the package and prints.
Heavy modules are imported inside commands so `--help` starts fast.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from pathlib import Path

import click

from roder_analyticsd import __version__
from roder_analyticsd.cli.common import (
    Failure,
    LazyGroup,
    data_options,
    emit_json,
    run_async,
    settings_for,
)

_COMMANDS = {
    "stats": "roder_analyticsd.cli.stats:stats",
    "export": "roder_analyticsd.cli.data:export_cmd",
    "import": "roder_analyticsd.cli.data:import_cmd",
    "serve": "roder_analyticsd.cli.serve:serve",
    "dashboard": "roder_analyticsd.cli.dashboard:dashboard",
    "status": "roder_analyticsd.cli.service:status",
    "install-service": "roder_analyticsd.cli.service:install_service",
    "uninstall-service": "roder_analyticsd.cli.service:uninstall_service",
}


@click.group(
    cls=LazyGroup,
    lazy=_COMMANDS,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--once", is_flag=True, help="Backfill once, then exit.")
@click.option("--rebuild", is_flag=True, help="With --once: clear analytics rows and replay all.")
@click.option(
    "--best-effort", is_flag=True, help="Report and skip corrupt lines instead of failing."
)
@click.option(
    "--claude-dir",
    "claude_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="A Claude Code root to read (repeatable; default: $CLAUDE_CONFIG_DIR, else "
    "~/.config/claude and ~/.claude).",
)
@data_options
@click.version_option(__version__, prog_name="roder-analyticsd")
@click.pass_context
def main(
    ctx: click.Context, once: bool, rebuild: bool, best_effort: bool,
    claude_dirs: tuple[Path, ...], data_dir: Path | None, store: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Private, long-term usage analytics for the Roder coding agent.

    With no sub-command, runs the daemon in the foreground: catches up on
    every events.jsonl, then keeps the store current until SIGTERM/SIGINT.
    """
    # Everything we create (store, -wal, -shm, lock, exports, analytics/)
    # is private: it holds workspace paths and usage. An existing file keeps
    # the mode its user gave it.
    os.umask(0o077)
    # a path that is not UTF-8 (a thread dir `thr-\xff`) is printed escaped,
    # never a UnicodeEncodeError half-way through a report or a log line
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_for(data_dir, store)
    if claude_dirs:
        settings = dataclasses.replace(
            settings, claude_dirs=tuple(p.expanduser() for p in claude_dirs)
        )
    if rebuild and not once:
        raise click.UsageError("--rebuild goes with --once")
    if once:
        _once(settings, rebuild=rebuild, strict=not best_effort, as_json=as_json)
        return
    from roder_analyticsd.live.daemon import run_daemon

    run_daemon(settings)


@run_async
async def _once(settings, *, rebuild: bool, strict: bool, as_json: bool) -> None:
    from roder_analyticsd.live.ingest import (
        Report,
        SourceError,
        StrictModeError,
        WorkerError,
        run_once,
    )
    from roder_analyticsd.store.connection import open_store

    if not settings.enabled:
        click.echo(
            "analytics is disabled ([analytics] enabled = false): nothing recorded", err=True
        )
        if as_json:
            emit_json(Report().to_json())
        return
    from roder_analyticsd.render import FileProgress

    conn = await open_store(settings.store)
    try:
        try:
            with FileProgress(enabled=not as_json) as bar:  # stderr, on a terminal only
                report = await run_once(
                    conn, settings, rebuild=rebuild, strict=strict, progress=bar.update
                )
        except StrictModeError as exc:
            unchanged = "; the store is unchanged" if rebuild else ""
            raise Failure(f"{exc} (use --best-effort to skip bad lines{unchanged})") from None
        except WorkerError as exc:
            # a rebuild is rolled back whole: nothing of it was kept
            lost = "a worker process stopped unexpectedly; the store is unchanged"
            raise Failure(lost if rebuild else str(exc)) from None
        except SourceError as exc:
            raise click.UsageError(str(exc)) from None
    finally:
        await conn.close()
    if as_json:
        emit_json(report.to_json())
        return
    for err in report.parse_errors:
        click.echo(f"skipped {err.path}:{err.line}: {err.message}", err=True)
    if report.parse_errors_unlisted:
        click.echo(f"… and {report.parse_errors_unlisted} more corrupt lines skipped", err=True)
    for ferr in report.file_errors:
        click.echo(f"could not read {ferr.path}: {ferr.message}", err=True)
    click.echo(
        f"{report.files_scanned} files, {report.lines_ingested} lines ingested, "
        f"{report.parse_error_count} skipped, {report.rollup_rows_refreshed} rollup rows refreshed"
    )
