"""`roder-analyticsd serve`: the analytics.v2 `POST /collect` receiver."""

from __future__ import annotations

import click


@click.command()
def serve() -> None:
    """Run the analytics.v2 receiver (POST /collect, GET /healthz)."""
    raise click.ClickException("not implemented yet")
