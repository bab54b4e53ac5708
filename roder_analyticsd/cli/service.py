"""`roder-analyticsd status`, `install-service`, `uninstall-service`."""

from __future__ import annotations

import click


@click.command()
def status() -> None:
    """Is a daemon running, store path, schema version, lag, last rollup."""
    raise click.ClickException("not implemented yet")


@click.command("install-service")
def install_service() -> None:
    """Write and enable the user service (systemd on Linux, launchd on macOS)."""
    raise click.ClickException("not implemented yet")


@click.command("uninstall-service")
def uninstall_service() -> None:
    """Disable and remove the user service."""
    raise click.ClickException("not implemented yet")
