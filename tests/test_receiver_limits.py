"""The receiver holds against plain, slow, many and failing clients: a real
`serve` subprocess on 127.0.0.1 (issue 14, items 12, 13 and 15)."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, _env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")
JSON = {"content-type": "application/json"}
MIB = 1024 * 1024


def event(i: int, **props: Any) -> dict[str, Any]:
    return {
        "schemaVersion": "analytics.v2",
        "eventId": f"ev-{i}",
        "eventName": "feature_used",
        "occurredAt": "2025-03-01T12:00:00Z",
        "installationId": "inst-a",
        "instanceId": "proc-1",
        "deploymentMode": "source",
        "commitHash": "abc",
        "appVersion": "1.0.0",
        "platform": "linux",
        "properties": {"module": "session", "loopStage": "loop_start", **props},
    }


@contextmanager
def serving(
    tmp_path: Path, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    full_env = {**_env(), **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "serve", "--listen", "127.0.0.1:0", "--json",
         "--data-dir", str(tmp_path / "data"), "--store", str(tmp_path / "store.sqlite3")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=REPO,
        preexec_fn=preexec,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, f"serve did not start: {proc.communicate(timeout=10)}"
        yield proc, json.loads(line)["listen"]
    finally:
        proc.kill()
        proc.wait(10)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_plain_urllib_client_reads_the_413(tmp_path: Path) -> None:
    # urllib sends the whole body before it reads: a receiver that answers
    # from Content-Length and closes leaves it a connection reset.
    with serving(tmp_path) as (_, base):
        body = b"[" + b" " * (11 * MIB) + b"]"
        request = urllib.request.Request(f"{base}/collect", data=body, headers=JSON)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 413
        assert "larger than" in json.loads(caught.value.read())["error"]
        # and the receiver is fine afterwards
        r = httpx.post(f"{base}/collect", json=[event(1)], timeout=10)
        assert r.json()["accepted"] == ["ev-1"]


def _trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    for byte in data:
        if stop.is_set():
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(0.2)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass  # a 408 may come first, then the close
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slow_headers_and_bodies_are_cut_off(tmp_path: Path) -> None:
    env = {"RODER_ANALYTICSD_HEADER_TIMEOUT": "1", "RODER_ANALYTICSD_BODY_TIMEOUT": "1"}
    with serving(tmp_path, env) as (_, base):
        port = int(base.rsplit(":", 1)[1])
        stop = threading.Event()
        slow_headers = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        head = b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        threads = [
            threading.Thread(target=_trickle, args=(s, head * 10, stop), daemon=True)
            for s in slow_headers
        ]
        slow_body = socket.create_connection(("127.0.0.1", port))
        slow_body.sendall(head + b"Content-Length: 1000\r\n\r\n[")
        started = time.monotonic()
        for t in threads:
            t.start()
        try:
            # ordinary clients are served meanwhile
            r = httpx.post(f"{base}/collect", json=[event(1)], timeout=10)
            assert r.json()["accepted"] == ["ev-1"]
            assert all(_closed_within(s, 4) for s in slow_headers)
            assert _closed_within(slow_body, 4)
            assert time.monotonic() - started < 6
        finally:
            stop.set()
            for s in [*slow_headers, slow_body]:
                s.close()


def test_many_large_bodies_keep_memory_bounded(tmp_path: Path) -> None:
    # 16 bodies of almost 10 MiB at once: without a budget each is buffered
    # (twice, while joined) at the same time.
    body = b"[" + b" " * (10 * MIB - 16) + b"]"
    with serving(tmp_path) as (proc, base):
        baseline = peak_rss_mb(proc.pid)
        statuses: list[int] = []

        def send() -> None:
            r = httpx.post(f"{base}/collect", content=body, headers=JSON, timeout=120)
            statuses.append(r.status_code)

        threads = [threading.Thread(target=send) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert statuses == [200] * 16
        growth = peak_rss_mb(proc.pid) - baseline
        # budget: 2 × 10 MiB of bodies in flight, each briefly held twice
        assert growth < 120, f"peak RSS grew by {growth:.0f} MB"


def test_healthz_says_what_a_post_meets_on_a_full_disk(tmp_path: Path) -> None:
    # RLIMIT_FSIZE stands in for a full disk: writes past it fail (EFBIG),
    # as they would with ENOSPC; Python ignores the SIGXFSZ.
    limit = 3 * MIB

    def cap_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with serving(tmp_path, preexec=cap_file_size) as (_, base):
        assert httpx.get(f"{base}/healthz", timeout=10).json() == {"ok": True}
        batch = [event(i, note="x" * 1000) for i in range(5000)]  # ~6 MB of rows
        r = httpx.post(f"{base}/collect", json=batch, timeout=60)
        assert r.status_code == 503 and r.headers["retry-after"]
        health = httpx.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 503, health.text
        assert health.json()["ok"] is False and health.headers["retry-after"]
