"""`roder-analyticsd status`, `install-service`, `uninstall-service`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from roder_analyticsd.cli.common import Failure, data_options, emit_json, run_async, settings_for


@click.command()
@data_options
def status(data_dir: Path | None, store: Path | None, as_json: bool) -> None:
    """Is a daemon running, store path, schema version, lag, last rollup."""
    from roder_analyticsd.live.status import gather_status

    settings = settings_for(data_dir, store)
    info = run_async(gather_status)(settings)
    if as_json:
        emit_json(info)
        return
    if info["running"]:
        pid = info["pid"]
        click.echo(f"daemon: running (pid {pid})" if pid else "daemon: running")
    else:
        click.echo("daemon: not running")
    if info["storeExists"]:
        click.echo(f"store: {info['store']} (schema version {info['schemaVersion']})")
    else:
        click.echo(f"store: {info['store']} (not created yet)")
    click.echo(f"files tracked: {info['filesTracked']}")
    lagging = info["laggingFiles"]
    click.echo(
        f"lag: {info['lagLines']} lines, {info['lagBytes']} bytes not yet ingested"
        + (f" in {len(lagging)} files" if lagging else "")
    )
    for entry in lagging[:10]:
        click.echo(f"  {entry['path']}: {entry['lagLines']} lines, {entry['lagBytes']} bytes")
    for path in info["unreadableFiles"]:
        click.echo(f"  {path}: unreadable")
    if info["lastRollupMs"] is None:
        click.echo("last rollup: never")
    else:
        ago = max(0, int(time.time() - info["lastRollupMs"] / 1000))
        click.echo(f"last rollup: {info['lastRollup']} ({ago} s ago)")


def _daemon_args(data_dir: Path | None, store: Path | None) -> list[str]:
    """Options the service must repeat: whatever located this data dir and
    store here (flags, or $RODER_* variables the service won't see)."""
    from roder_analyticsd.config import default_data_dir

    args: list[str] = []
    chosen = data_dir if data_dir is not None else default_data_dir()
    if data_dir is not None or chosen != Path.home() / ".roder":
        args += ["--data-dir", os.path.abspath(chosen.expanduser())]
    if store is not None:
        args += ["--store", os.path.abspath(store.expanduser())]
    return args


@click.command("install-service")
@click.option("--dry-run", is_flag=True, help="Print the unit instead of installing it.")
@data_options
def install_service(
    dry_run: bool, data_dir: Path | None, store: Path | None, as_json: bool
) -> None:
    """Write and enable the user service (systemd on Linux, launchd on macOS)."""
    from roder_analyticsd.live.service import ServiceError
    from roder_analyticsd.live.service import install_service as install

    settings = settings_for(data_dir, store)  # a bad config.toml stops here, not in the unit
    try:
        path, content = install(
            dry_run,
            args=_daemon_args(data_dir, store),
            data_dir=settings.data_dir,
            store=settings.store,
            forwarding=settings.forward_endpoint is not None,
        )
    except ServiceError as exc:
        raise Failure(exc.message) from None
    if as_json:
        emit_json({"path": path, "content": content, "dryRun": dry_run})
    elif dry_run:
        click.echo(f"# would write {path}", err=True)
        click.echo(content, nl=False)
    else:
        click.echo(f"installed and started {path}")


@click.command("uninstall-service")
@click.option("--dry-run", is_flag=True, help="Print what would be done instead.")
@data_options
def uninstall_service(
    dry_run: bool, data_dir: Path | None, store: Path | None, as_json: bool
) -> None:
    """Disable and remove the user service."""
    from roder_analyticsd.live.service import ServiceError
    from roder_analyticsd.live.service import uninstall_service as uninstall

    try:
        path, commands = uninstall(dry_run)
    except ServiceError as exc:
        raise Failure(exc.message) from None
    if as_json:
        emit_json({"path": path, "commands": commands, "dryRun": dry_run})
    elif dry_run:
        click.echo(f"# would remove {path}", err=True)
        for command in commands:
            click.echo(command)
    elif commands:
        click.echo(f"removed {path}")
    else:
        click.echo(f"nothing installed at {path}")
