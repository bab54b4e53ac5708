"""The dashboard over a big store: every /api/* answer time, and how soon the
page shows its numbers.

    PYTHONPATH=. python bench/bench_dashboard.py --events 1000000 [--work DIR]

Builds (or reuses, in --work) a corpus from gen_corpus.py and its store, then
starts `roder-analyticsd dashboard` on it (a real subprocess on loopback).
For each endpoint, rounds alternate between the floor and the endpoint:

- floor: `GET /api/version` (the same server, routing, guard and JSON
  response with no query): what HTTP alone costs here;
- the endpoint, with the parameters the page sends.

Printed per endpoint: median and p90 wall ms of the warm requests (after two
warm-up requests: answered from the dashboard's kept answers, valid while
the store is unchanged), the dashboard process's CPU ms per request (from
/proc/PID/stat, 10 ms ticks), the ratio of the medians to the floor; and
cold: the first request after a commit (the bench commits a row no query
reads), i.e. the query itself, median wall and CPU ms. Then the page:
Debian's chromium (Playwright) navigates to `/` and the time until the
headline numbers (`data-metric` with its `data-value`) are shown, and until
every panel is drawn, median over warm rounds. Targets: every endpoint
≤ 100 ms median, the numbers ≤ 1 s after navigation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import cli_command  # noqa: E402

# what the page asks for on a load (app.js loadAll), plus the other twins
ENDPOINTS: list[tuple[str, dict[str, str]]] = [
    ("summary", {}),
    ("tokens/stack", {"group": "day", "by": "model", "limit": "1000"}),
    ("tokens", {"group": "day", "limit": "1000"}),
    ("tokens", {"group": "model", "limit": "1000"}),
    ("tokens", {"group": "provider", "limit": "1000"}),
    ("tokens", {"group": "workspace", "limit": "1000"}),
    ("tools", {"limit": "1000"}),
    ("sessions", {"sort": "recent", "limit": "100"}),
    ("hours", {}),
    ("status", {}),
    ("activity", {"by": "execution-kind", "limit": "1000"}),
    ("activity", {"by": "loop-stage", "limit": "1000"}),
    ("activity", {"by": "outcome", "limit": "1000"}),
    ("activity", {"by": "error-category", "limit": "1000"}),
    ("fleet/modules", {"source": "collected", "limit": "1"}),
    ("fleet/dau", {"limit": "1000"}),
    ("unused", {"registered": "shell,grep,web_search"}),
    ("rollups", {}),
    ("summary", {"since": "2026-10-01", "timezone": "Europe/Berlin"}),
    ("session", {"thread": "__first__", "limit": "1000"}),
]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def build(work: Path, events: int) -> tuple[Path, Path]:
    data_dir, store = work / "data", work / "usage.sqlite3"
    if store.exists():
        return data_dir, store
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "gen_corpus.py"), str(data_dir),
         "--events", str(events), "--force"],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [*cli_command(), "--once", "--best-effort", "--json", "--data-dir", str(data_dir),
         "--store", str(store)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return data_dir, store


def timed(client: httpx.Client, url: str, pid: int) -> tuple[float, float]:
    cpu0, t0 = cpu_ms(pid), time.perf_counter()
    response = client.get(url)
    wall = (time.perf_counter() - t0) * 1000
    assert response.status_code == 200, (url, response.status_code, response.text[:200])
    return wall, cpu_ms(pid) - cpu0


def touch(store: Path, n: int) -> None:
    """Commit something no query reads: the dashboard's kept answers go."""
    conn = sqlite3.connect(store)
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('bench-tick', ?)", (str(n),))
    conn.commit()
    conn.close()


def bench_api(base: str, pid: int, rounds: int, store: Path, cold_rounds: int) -> list[dict]:
    out = []
    with httpx.Client(timeout=60) as client:
        first = client.get(f"{base}/api/sessions", params={"limit": 1}).json()
        thread = first[0]["threadId"] if first else "none"
        for path, params in ENDPOINTS:
            params = {k: (thread if v == "__first__" else v) for k, v in params.items()}
            url = f"{base}/api/{path}" + (f"?{urlencode(params)}" if params else "")
            floor_url = f"{base}/api/version"
            for _ in range(2):  # warm: caches, the price table, the pool
                timed(client, url, pid)
                timed(client, floor_url, pid)
            walls, cpus, floors = [], [], []
            for _ in range(rounds):  # alternating: floor, endpoint
                floors.append(timed(client, floor_url, pid)[0])
                wall, cpu = timed(client, url, pid)
                walls.append(wall)
                cpus.append(cpu)
            colds, cold_cpus = [], []
            for n in range(cold_rounds):  # the first answer after a commit: the query itself
                touch(store, n)
                wall, cpu = timed(client, url, pid)
                colds.append(wall)
                cold_cpus.append(cpu)
            walls.sort()
            row = {
                "endpoint": f"/api/{path}" + (f"?{urlencode(params)}" if params else ""),
                "medianMs": round(statistics.median(walls), 1),
                "p90Ms": round(walls[int(len(walls) * 0.9) - 1], 1),
                "cpuMsPerRequest": round(statistics.median(cpus), 1),
                "floorMs": round(statistics.median(floors), 2),
                "coldMedianMs": round(statistics.median(colds), 1) if colds else None,
                "coldCpuMs": round(statistics.median(cold_cpus), 1) if colds else None,
            }
            row["ratioToFloor"] = round(row["medianMs"] / max(row["floorMs"], 0.01), 1)
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def bench_page(base: str, rounds: int) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    numbers, complete = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        for i in range(rounds + 1):  # the first load warms the browser's cache
            t0 = time.perf_counter()
            page.goto(f"{base}/", wait_until="commit")
            page.wait_for_selector("[data-metric=turnCount][data-value]", timeout=30_000)
            shown = (time.perf_counter() - t0) * 1000
            page.wait_for_selector("body[data-loaded]", timeout=60_000)
            done = (time.perf_counter() - t0) * 1000
            if i:
                numbers.append(shown)
                complete.append(done)
        browser.close()
    result = {
        "page": "/",
        "numbersShownMedianMs": round(statistics.median(numbers), 1),
        "numbersShownMaxMs": round(max(numbers), 1),
        "allPanelsMedianMs": round(statistics.median(complete), 1),
    }
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, help="keep the corpus and store here (reused)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--page-rounds", type=int, default=5)
    parser.add_argument("--cold-rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir, store = build(work, args.events)
    size = store.stat().st_size
    print(json.dumps({"store": str(store), "storeMB": round(size / 2**20, 1)}), flush=True)
    proc = subprocess.Popen(
        [*cli_command(), "dashboard", "--listen", "127.0.0.1:0", "--json",
         "--data-dir", str(data_dir), "--store", str(store)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = json.loads(proc.stdout.readline())["listen"]  # type: ignore[union-attr]
        rows = bench_api(base, proc.pid, args.rounds, store, args.cold_rounds)
        page = bench_page(base, args.page_rounds)
    finally:
        proc.terminate()
        proc.wait(10)
    slow = [r["endpoint"] for r in rows if r["medianMs"] > 100]
    print(json.dumps({
        "endpoints": len(rows),
        "slowestMedianMs": max(r["medianMs"] for r in rows),
        "over100ms": slow,
        "numbersShownMedianMs": page["numbersShownMedianMs"],
        "pass": not slow and page["numbersShownMedianMs"] <= 1000,
    }))  # fmt: skip
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
