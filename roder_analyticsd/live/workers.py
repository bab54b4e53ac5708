"""Worker processes that stage a backlog: source + stages for a slice of files.

Each worker is a plain child interpreter that reads pickled requests on its
stdin and writes pickled results on its stdout, one at a time. The pool is
ours, not asyncio's: workers are started and reaped with `subprocess`, so
their exit never races an event loop's child watcher (which printed
"Unknown child process pid N" on stderr), and they are shut down as soon as
the backlog is staged instead of when the event loop ends.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

SHUTDOWN_WAIT_S = 5.0  # a worker told to stop exits at once; after this it is killed
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where `roder_analyticsd` lives
WORKER_CODE = "from roder_analyticsd.live.workers import serve; serve()"


class WorkerDied(Exception):
    """A worker process stopped before answering (killed, out of memory)."""


class Worker:
    """One child process; `call` sends a request and waits for its answer."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])])
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", WORKER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def call_blocking(self, func: Any, args: tuple) -> Any:
        self.send(func, *args)
        return self.answer_blocking()

    def send(self, func: Any, *args: Any) -> None:
        """Hand the worker a request without waiting for its answer (a
        small one: it must fit the pipe's buffer not to block)."""
        stdin = self.process.stdin
        assert stdin is not None
        try:
            pickle.dump((func, args), stdin, protocol=pickle.HIGHEST_PROTOCOL)
            stdin.flush()
        except (OSError, ValueError) as exc:
            raise WorkerDied(str(exc)) from None

    def answer_blocking(self) -> Any:
        """The answer to the request sent last."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            ok, value = pickle.load(stdout)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            raise WorkerDied(str(exc)) from None
        if not ok:
            raise value  # the function's own exception, raised here
        return value

    async def answer(self) -> Any:
        return await anyio.to_thread.run_sync(self.answer_blocking, abandon_on_cancel=True)

    async def call(self, func: Any, *args: Any) -> Any:
        # a cancelled caller abandons the thread; closing the worker ends it
        return await anyio.to_thread.run_sync(
            self.call_blocking, func, args, abandon_on_cancel=True
        )

    def close_blocking(self) -> None:
        """Tell the worker to stop (EOF on its stdin), reap it; kill it if it
        does not go."""
        proc = self.process
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=SHUTDOWN_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


class WorkerPool:
    """`count` workers for the length of an `async with`."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.workers: list[Worker] = []

    async def __aenter__(self) -> list[Worker]:
        self.workers = [Worker() for _ in range(self.count)]
        return self.workers

    async def __aexit__(self, exc_type, exc, tb) -> None:
        with anyio.CancelScope(shield=True):
            if exc_type is not None:
                for worker in self.workers:  # a failed or cancelled run: no waiting
                    worker.kill()
            for worker in self.workers:
                await anyio.to_thread.run_sync(worker.close_blocking)
        self.workers = []


def serve() -> None:
    """A worker's loop: a request in, its answer out, until stdin closes."""
    # the parent stops us by closing our stdin; a Ctrl-C or a service
    # manager's SIGTERM to the whole group must not kill a slice midway
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests = sys.stdin.buffer
    answers = sys.stdout.buffer
    # nothing else may write to the answer pipe
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    while True:
        try:
            func, args = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = (True, func(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, raised there
            answer = (False, exc)
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()
