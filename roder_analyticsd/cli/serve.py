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
import sys
from collections.abc import Iterator
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
@data_options
def serve(listen: str, data_dir: Path | None, store: Path | None, as_json: bool) -> None:
    """Run the analytics.v2 receiver (POST /collect, GET /healthz).

    Received events go into the store (see `stats fleet --source collected`),
    deduplicated by eventId. Prints where it listens (on stderr; with --json,
    {"listen": URL} on stdout) once it accepts requests. Stops on
    SIGINT/SIGTERM.
    """
    from roder_analyticsd.fleet.receiver import check_listen_allowed

    settings = settings_for(data_dir, store)
    host, port = parse_listen(listen)
    try:
        check_listen_allowed(host, settings.collect_token)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    _serve(settings.store, host, port, settings.collect_token, as_json, settings=settings)


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":  # on Windows it would let two servers share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
    store: Path, host: str, port: int, token: str | None, as_json: bool, *, settings: Any = None
) -> None:
    import signal

    import anyio
    import structlog
    import uvicorn

    from roder_analyticsd.fleet.receiver import Limits, create_app, uvicorn_config
    from roder_analyticsd.logs import configure_logging
    from roder_analyticsd.store.connection import open_store

    sock = _bind(host, port)  # first: a busy port touches nothing
    try:
        # the receiver writes into the one store: bring it to the current schema
        # first (a bad store is a clear one-line error here, not a lifespan crash)
        conn = await open_store(store)
        await conn.close()
    except BaseException:
        sock.close()
        raise
    # logs to stderr (stdout carries only the --json line), privacy-guarded
    configure_logging()

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # signals are handled below

    limits = Limits(**_limits_from_env())
    app = create_app(str(store), token=token, limits=limits)
    if settings is not None:  # the dashboard at `/`, over the same store (read-only)
        from roder_analyticsd.live.status import gather_status
        from roder_analyticsd.web import mount_dashboard

        mount_dashboard(
            app,
            store,
            token=settings.dashboard_token or token,
            status=lambda: gather_status(settings),
        )
    # log_config=None: uvicorn's records reach the structlog lines configured above
    config = uvicorn_config(app, limits, log_config=None)
    server = Server(config)
    url = _url(sock)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await anyio.sleep(0.01)
        if as_json:
            emit_json({"listen": url})
            sys.stdout.flush()
        structlog.get_logger().info("receiver_listening", listen=url)

    async def on_signals(receiver: Any) -> None:
        async for _ in receiver:
            if server.should_exit:
                server.force_exit = True  # a second signal: stop waiting for requests
            server.should_exit = True

    failed = False
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(on_signals, signals)
                tg.start_soon(announce)
                try:
                    await server.serve(sockets=[sock])
                except SystemExit:  # uvicorn gives up on a failed startup this way
                    failed = True
                tg.cancel_scope.cancel()
    finally:
        sock.close()
    if failed:  # raised out here: inside the task group it would be an ExceptionGroup
        raise Failure("the receiver could not start (see above)")
