"""`roder-analyticsd export` / `import`: body-free normalized records."""

from __future__ import annotations

import click


@click.command("export")
def export_cmd() -> None:
    """Export the store as schema-versioned JSON lines."""
    raise click.ClickException("not implemented yet")


@click.command("import")
def import_cmd() -> None:
    """Load an export into the store (idempotent)."""
    raise click.ClickException("not implemented yet")
