"""`roder-analyticsd serve`: the analytics.v2 `POST /collect` receiver.

It writes into the same store as everything else (migrated by open_store
first), so `stats fleet --source collected` sees what it received. The
listening socket is bound here rather than by uvicorn: a busy port is a
one-line error (exit 1), and `--listen HOST:0` can report the port it got.
SIGINT/SIGTERM stop it cleanly (exit 0): uvicorn's own signal handling
would re-raise the signal after shutting down, so it is replaced.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

import click

from roder_analyticsd.cli.common import (
    Failure,
    UsageProblem,
    data_options,
    run_async,
    settings_for,
)
from roder_analyticsd.cli.httpd import announce, bind, url_of

DEFAULT_LISTEN = "127.0.0.1:8787"


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets: `[::1]:8787`) → (host, port)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageProblem(f"--listen: expected HOST:PORT, e.g. {DEFAULT_LISTEN} (got {text!r})")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise UsageProblem(f"--listen: bad IPv6 address in {text!r}")
        host = host[1:-1]
    elif ":" in host:
        raise UsageProblem(f"--listen: put an IPv6 address in brackets, e.g. [::1]:8787 ({text!r})")
    return host, int(port_text)


@click.command()
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on (port 0: any free port). Off loopback, "
    "[analytics.collect] token must be set, and is then required as a bearer token.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Receiver processes sharing the listening socket (each stateless; "
    "meant for a PostgreSQL store).",
)
@data_options
def serve(
    listen: str, workers: int, data_dir: Path | None, store: Path | str | None, as_json: bool
) -> None:
    """Run the analytics.v2 receiver (POST /collect, GET /healthz).

    Received events go into the store, deduplicated by eventId: --store (a
    SQLite path or a postgresql:// URL), else [analytics.collect] store,
    else the SQLite store of everything else (see `stats fleet --source
    collected`). Prints where it listens (on stderr; with --json,
    {"listen": URL} on stdout) once it accepts requests. Stops on
    SIGINT/SIGTERM.
    """
    from roder_analyticsd.fleet.receiver import check_listen_allowed

    url = store if isinstance(store, str) else None
    settings = settings_for(data_dir, None if url else store)
    if url is not None:
        target = url
    elif store is not None:
        target = str(settings.store)
    else:
        target = settings.collect_store or str(settings.store)
    host, port = parse_listen(listen)
    try:
        check_listen_allowed(host, settings.collect_token)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    sock = bind(host, port)  # first: a busy port touches nothing
    try:
        _prepare_store(target)
    except BaseException:
        sock.close()
        raise
    if workers == 1:
        try:
            _serve(
                sock,
                target,
                settings.collect_token,
                announced=True,
                as_json=as_json,
                retention_days=settings.retention_days,
                settings=settings,
            )
        finally:
            sock.close()
    else:
        _supervise(sock, workers, target, settings.collect_token, as_json, settings)


@run_async
async def _prepare_store(target: str) -> None:
    """Bring the store to the current schema before listening: a bad store
    is a clear one-line error here, not a lifespan crash."""
    from roder_analyticsd.fleet.stores import is_postgres_url

    if is_postgres_url(target):
        from roder_analyticsd.fleet.stores.postgres import PostgresFleetStore, StoreError

        try:
            opened = await PostgresFleetStore.open(target, pool_size=1)
        except StoreError as exc:
            raise Failure(str(exc)) from None
        await opened.close()
        return
    from roder_analyticsd.store.connection import open_store

    conn = await open_store(Path(target))
    await conn.close()


def _limits_from_env() -> dict[str, float]:
    # Tests shorten the receiver's timeouts; not a user-facing setting.
    import os

    out: dict[str, float] = {}
    for key in ("header_timeout", "body_timeout"):
        value = os.environ.get(f"RODER_ANALYTICSD_{key.upper()}")
        if value:
            out[key] = float(value)
    return out


@run_async
async def _serve(
    sock: socket.socket,
    target: str,
    token: str | None,
    *,
    announced: bool,
    as_json: bool,
    retention_days: int = 0,
    settings: Any = None,
) -> None:
    from roder_analyticsd.cli.httpd import run_server
    from roder_analyticsd.fleet.receiver import Limits, create_app, uvicorn_config
    from roder_analyticsd.logs import configure_logging

    # logs to stderr (stdout carries only the --json line), privacy-guarded
    configure_logging()
    limits = Limits(**_limits_from_env())
    app = create_app(target, token=token, limits=limits, retention_days=retention_days)
    if settings is not None:  # the dashboard at `/`, over the local store (read-only)
        from roder_analyticsd.live.status import gather_status
        from roder_analyticsd.web import mount_dashboard

        mount_dashboard(
            app,
            settings.store,
            token=settings.dashboard_token or token,
            status=lambda: gather_status(settings),
        )
    # log_config=None: uvicorn's records reach the structlog lines configured above
    config = uvicorn_config(app, limits, log_config=None)
    await run_server(
        app, sock, what="receiver", as_json=as_json, config=config, announced=announced
    )


def _supervise(
    sock: socket.socket,
    workers: int,
    target: str,
    token: str | None,
    as_json: bool,
    settings: Any,
) -> None:
    """`--workers N`: N forked receivers accept on the one socket (the kernel
    spreads connections); a worker that dies is replaced; SIGINT/SIGTERM
    stop them all. The store was prepared before the fork."""
    import os
    import signal
    import time

    import structlog

    from roder_analyticsd.logs import configure_logging

    configure_logging()  # the supervisor's own lines: JSON lines on stderr, as the workers'
    sock.listen(2048)  # connections queue while the workers start
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # a worker
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                # each worker prunes too: under the database's lock, idempotent
                _serve(sock, target, token, announced=False, as_json=False,
                       retention_days=settings.retention_days, settings=settings)  # fmt: skip
            except click.ClickException as exc:
                exc.show()
                code = exc.exit_code
            except BaseException:  # noqa: BLE001 (a worker must never return into the parent's code)
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for _ in range(workers):
        spawn()
    announce(url_of(sock), "receiver", as_json)
    quick_deaths = 0
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started = children.pop(pid, None)
            if stopping or started is None:
                continue
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < 2 else 0
            if quick_deaths >= 3:
                stop(signal.SIGTERM, None)
                raise Failure("receiver workers keep failing at start (see above)")
            structlog.get_logger().warning(
                "receiver_worker_replaced", pid=pid, exit=os.waitstatus_to_exitcode(status)
            )
            spawn()
    finally:
        sock.close()
