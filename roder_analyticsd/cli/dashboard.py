"""`roder-analyticsd dashboard`: the local web page over the store."""

from __future__ import annotations

from pathlib import Path

import click

from roder_analyticsd.cli.common import UsageProblem, data_options, run_async, settings_for

DEFAULT_LISTEN = "127.0.0.1:8788"


@click.command()
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on (port 0: any free port). Off loopback, "
    "[analytics.dashboard] token must be set, and is then required.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@data_options
def dashboard(
    listen: str, open_browser: bool, data_dir: Path | None, store: Path | None, as_json: bool
) -> None:
    """Serve the dashboard: the page and its JSON API (/api/…), read-only.

    Prints where it listens (on stderr; with --json, {"listen": URL} on
    stdout). Stops on SIGINT/SIGTERM.
    """
    from roder_analyticsd.cli.serve import parse_listen
    from roder_analyticsd.web.app import is_loopback

    settings = settings_for(data_dir, store)
    host, port = parse_listen(listen)
    if not settings.dashboard_token and not is_loopback(host):
        raise UsageProblem(
            f"refusing to listen on non-loopback address {host} without [analytics.dashboard] token"
        )
    _serve(settings, host, port, open_browser, as_json)


@run_async
async def _serve(settings, host: str, port: int, open_browser: bool, as_json: bool) -> None:
    from roder_analyticsd.cli.httpd import bind, run_server
    from roder_analyticsd.live.status import gather_status
    from roder_analyticsd.logs import configure_logging
    from roder_analyticsd.web import create_app

    sock = bind(host, port)
    configure_logging()
    app = create_app(
        settings.store, token=settings.dashboard_token, status=lambda: gather_status(settings)
    )

    def opened(url: str) -> None:
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    # an open event stream must not hold up a stop for long
    await run_server(app, sock, what="dashboard", as_json=as_json, on_started=opened, graceful_s=1)
