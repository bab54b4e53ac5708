"""Serving an ASGI app from a command: the socket bound here (a busy port is
a one-line error, exit 1; port 0 reports the port it got), uvicorn without
its own signal handling (it would re-raise the signal after shutting down),
SIGINT/SIGTERM stop it cleanly (exit 0)."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

from roder_analyticsd.cli.common import Failure, emit_json


def bind(host: str, port: int) -> socket.socket:
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


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def announce(url: str, what: str, as_json: bool) -> None:
    """Where a server listens: {"listen": URL} on stdout with --json, and a
    `<what>_listening` log line (one log format with the daemon)."""
    import structlog

    if as_json:
        emit_json({"listen": url})
        sys.stdout.flush()
    structlog.get_logger().info(f"{what}_listening", listen=url)


async def run_server(
    app: Any,
    sock: socket.socket,
    *,
    what: str,
    as_json: bool,
    on_started: Callable[[str], None] | None = None,
    graceful_s: float | None = None,
    config: Any = None,
    announced: bool = True,
) -> None:
    """Serve `app` on `sock` until SIGINT/SIGTERM; announce the URL once it
    accepts requests (unless not `announced`). `config`: uvicorn's settings
    for `app`, when the defaults here do not fit (the receiver's guarded
    protocol); `log_config` must be None in it."""
    import signal

    import anyio
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # signals are handled below

    if config is None:
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=graceful_s,
            log_config=None,  # uvicorn's records reach the structlog lines (logs.py)
        )
    server = Server(config)
    url = url_of(sock)

    async def say_listening() -> None:
        while not server.started:
            if server.should_exit:
                return
            await anyio.sleep(0.01)
        announce(url, what, as_json)
        if on_started is not None:
            on_started(url)

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
                if announced:
                    tg.start_soon(say_listening)
                try:
                    await server.serve(sockets=[sock])
                except SystemExit:  # uvicorn gives up on a failed startup this way
                    failed = True
                tg.cancel_scope.cancel()
    finally:
        sock.close()
    if failed:  # raised out here: inside the task group it would be an ExceptionGroup
        raise Failure(f"the {what} could not start (see above)")
