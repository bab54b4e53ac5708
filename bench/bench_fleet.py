"""Fleet receiver benchmark: accepted events/s against PostgreSQL and SQLite.

    python bench/bench_fleet.py [--rounds 3] [--batch 200] [--events 12000]
                                [--clients 1,8,32] [--pg postgresql://postgres@127.0.0.1:5432]

Targets, all on 127.0.0.1 and served by uvicorn:
- floor: a bare Starlette endpoint that reads the same body, parses it
  (msgspec, into Python objects) and answers 200: the HTTP floor;
- sqlite: `serve` on a SQLite store (the default receiver);
- pg-1: one `serve` on a PostgreSQL store;
- pg-2: two `serve` processes on the same database, clients split between them.

Each round measures every target at each client count, in an order that
rotates from round to round (alternating), with fresh eventIds so that
every event is new (counted: `accepted` in the responses). For each
measurement: accepted events/s (wall), and CPU seconds of the receivers,
of the PostgreSQL server processes and of the load generator. Ratios are
to the floor of the same round and client count; the summary is the median
over rounds. A fresh database is created for the run and dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")

FLOOR_APP = r"""
import socket, sys, msgspec, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def collect(request):
    body = await request.body()
    msgspec.json.decode(body)
    return Response(b'{"ok":true}', media_type="application/json")

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
app = Starlette(routes=[Route("/collect", collect, methods=["POST"])])
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
"""


def cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def postgres_cpu() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_of(int(entry.name))
            except OSError:
                continue
    return total


def start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=REPO)  # fmt: skip
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line:
        raise SystemExit(f"could not start {cmd}")
    url = json.loads(line)["listen"] if line.startswith("{") else line
    return proc, url


def serve(store: str, data_dir: Path) -> tuple[subprocess.Popen, str]:
    return start([sys.executable, "-m", "roder_analyticsd", "serve", "--listen", "127.0.0.1:0",
                  "--json", "--data-dir", str(data_dir), "--store", store])  # fmt: skip


def make_body(prefix: str, n: int) -> bytes:
    events = [
        {
            "schemaVersion": "analytics.v2",
            "eventId": f"{prefix}-{i}",
            "eventName": "error_occurred" if i % 17 == 0 else "feature_used",
            "occurredAt": f"2025-03-{1 + i % 7:02d}T{i % 24:02d}:15:00.123Z",
            "installationId": f"inst-{i % 50}",
            "instanceId": f"proc-{i % 120}",
            "deploymentMode": "source",
            "sessionId": f"{i % 300:024x}",
            "commitHash": "0123abc",
            "appVersion": "1.4.2",
            "platform": "linux",
            "properties": {
                "module": ["session", "router", "tools", "memory"][i % 4],
                "ownerModule": "session",
                "executionKind": "user_session",
                "loopStage": ["loop_start", "model_request", "tool_call", "loop_end"][i % 4],
                "outcome": "success",
                "provider": "example",
                "model": "model-x",
            },
        }
        for i in range(n)
    ]
    return json.dumps(events).encode()


async def load(bases: list[str], clients: int, batches: int, batch: int) -> tuple[int, float]:
    """`batches` bodies of `batch` new events sent by `clients` concurrent
    clients (spread over `bases`); (accepted events, wall seconds)."""
    run = uuid.uuid4().hex[:10]
    bodies = [make_body(f"{run}-{b}", batch) for b in range(batches)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    accepted = 0
    headers = {"content-type": "application/json"}

    async def client(k: int) -> None:
        nonlocal accepted
        base = bases[k % len(bases)]
        async with httpx.AsyncClient(timeout=120) as http:
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                r = await http.post(f"{base}/collect", content=body, headers=headers)
                if r.status_code != 200:
                    raise SystemExit(f"{base}: HTTP {r.status_code} {r.text[:200]}")
                data = r.json()
                accepted += len(data["accepted"]) if "accepted" in data else batch

    began = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return accepted, time.perf_counter() - began


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=200, help="events per request")
    ap.add_argument("--events", type=int, default=12000, help="events per measurement")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    args = ap.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]
    batches = max(1, args.events // args.batch)
    db = f"roder_bench_{uuid.uuid4().hex[:8]}"
    admin = f"{args.pg}/postgres"
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {db}"], check=True)
    pg_url = f"{args.pg}/{db}"
    procs: list[subprocess.Popen] = []
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            floor = start([sys.executable, "-c", FLOOR_APP])
            lite = serve(str(tmp_path / "fleet.sqlite3"), tmp_path / "d1")
            pg_a = serve(pg_url, tmp_path / "d2")
            pg_b = serve(pg_url, tmp_path / "d3")
            procs += [floor[0], lite[0], pg_a[0], pg_b[0]]
            targets = {
                "floor": [floor],
                "sqlite": [lite],
                "pg-1": [pg_a],
                "pg-2": [pg_a, pg_b],
            }
            names = list(targets)
            for rnd in range(args.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for clients in client_counts:
                    for name in order:
                        servers = targets[name]
                        cpu0 = sum(cpu_of(p.pid) for p, _ in servers)
                        pg0 = postgres_cpu()
                        me0 = resource.getrusage(resource.RUSAGE_SELF)
                        accepted, wall = asyncio.run(
                            load([u for _, u in servers], clients, batches, args.batch)
                        )
                        me1 = resource.getrusage(resource.RUSAGE_SELF)
                        results.setdefault((name, clients), []).append(
                            {
                                "rate": accepted / wall,
                                "wall": wall,
                                "server_cpu": sum(cpu_of(p.pid) for p, _ in servers) - cpu0,
                                "pg_cpu": postgres_cpu() - pg0,
                                "load_cpu": (me1.ru_utime + me1.ru_stime)
                                - (me0.ru_utime + me0.ru_stime),
                                "round": rnd,
                            }
                        )
                        r = results[(name, clients)][-1]
                        print(
                            f"round {rnd + 1} {name:>6} clients={clients:>2}: "
                            f"{r['rate']:>8.0f} ev/s  wall {r['wall']:.2f}s  receiver cpu "
                            f"{r['server_cpu']:.2f}s  postgres cpu {r['pg_cpu']:.2f}s  "
                            f"load cpu {r['load_cpu']:.2f}s",
                            flush=True,
                        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])

    print(f"\nmedian over {args.rounds} rounds; batch {args.batch} events; "
          f"{batches * args.batch} events per measurement")  # fmt: skip
    print(f"{'target':>7} {'clients':>7} {'ev/s':>9} {'× floor':>8} {'× sqlite':>9}")
    for clients in client_counts:
        for name in targets:
            runs = results[(name, clients)]
            floors = {r["round"]: r["rate"] for r in results[("floor", clients)]}
            lites = {r["round"]: r["rate"] for r in results[("sqlite", clients)]}
            rate = statistics.median(r["rate"] for r in runs)
            to_floor = statistics.median(r["rate"] / floors[r["round"]] for r in runs)
            to_lite = statistics.median(r["rate"] / lites[r["round"]] for r in runs)
            print(f"{name:>7} {clients:>7} {rate:>9.0f} {to_floor:>8.2f} {to_lite:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
