"""Live daemon benchmark: append→visible latency, and bulk ingest rate vs `--once`.

    python bench/bench_live.py [--lines 300] [--interval 0.05] [--events 200000] [--seed 7]
                               [--keep DIR]

1. Latency. A daemon runs on an empty data dir. Lines of a generated corpus
   are appended one at a time (`--lines` of them, one every `--interval` s)
   to a few thread files, created as it goes. For each line: the time from
   its write() returning to its checkpoint being visible to a reader of the
   store. Rows and their checkpoint commit in one transaction, so that is
   the moment the line's rows become queryable. Prints p50/p95/p99/max; the
   target is p99 ≤ 250 ms (the tests allow 1 s).
2. Flood (`--flood-lines`, default 600k). While a writer process appends
   that many lines as fast as it can to one thread, a line is appended to
   another thread every `--interval` s; each must be visible within 250 ms,
   every time (max, not p99).
3. Catch-up (`--catch-up DIR`, a corpus dir as `bench_backfill.py --keep`
   makes). A fresh daemon's time from start to `catch_up_done` against
   `--once` on the same data dir, alternating (`--rounds`); target ≤ 1.1×.
4. Bulk. A fresh daemon on an empty data dir; a `gen_corpus.py` corpus of
   `--events` events has its thread dirs moved in while it runs (a flood of
   new threads, seen by the watcher). The time from the first move until the
   store has caught up gives the live ingest rate, printed beside
   `--once --best-effort` over the same files into a fresh store. The two
   stores' tables must be equal.

Exit status: 0 all good, 1 a daemon failed or the stores differ.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import gen_corpus

CONFIG = "[analytics.daemon]\nflush_interval_ms = 100\n"
TABLES = {
    "sessions": "SELECT * FROM sessions ORDER BY 1",
    "turns": "SELECT * FROM turns ORDER BY 1, 2",
    "tool_calls": "SELECT * FROM tool_calls ORDER BY 1, 2, 3",
    "token_usage": "SELECT * FROM token_usage ORDER BY 1, 2",
    "daily_rollups": "SELECT day, scope, key, turns, tool_calls, tool_errors, tool_duration_ms,"
    " total_tokens FROM daily_rollups ORDER BY 1, 2, 3",
}


def start_daemon(
    data_dir: Path, store: Path, log: Path, *, config: bool = True, timeout: float = 60
) -> subprocess.Popen:
    if config:
        (data_dir / "config.toml").write_text(CONFIG)
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [*common.cli_command(), "--data-dir", str(data_dir), "--store", str(store)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + timeout
    while b"catch_up_done" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"daemon did not start:\n{common.tail(log.read_text())}")
        time.sleep(0.02)
    return proc


def stop_daemon(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def reader(store: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{store}?mode=ro", uri=True, isolation_level=None)


def complete_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines(keepends=True)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank, as everywhere in this project."""
    rank = max(1, -(-int(q * 1000) * len(sorted_values) // 1000))
    return sorted_values[rank - 1]


# ---------------------------------------------------------------- 1. latency


def latency(corpus: Path, work: Path, lines: int, interval: float) -> dict[str, float]:
    sources = sorted(corpus.glob("threads/thr-*/events.jsonl"), key=lambda p: -p.stat().st_size)
    pool = [complete_lines(p) for p in sources[:4]]
    data_dir, store, log = work / "latency-data", work / "latency.sqlite3", work / "latency.log"
    data_dir.mkdir()
    proc = start_daemon(data_dir, store, log)
    conn = None
    samples: list[float] = []
    try:
        sizes: dict[str, int] = {}
        for i in range(lines):
            which = i % len(pool)
            line = pool[which][i // len(pool) % len(pool[which])]
            rel = f"threads/live-{which}/events.jsonl"
            path = data_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            written = time.perf_counter()
            sizes[rel] = sizes.get(rel, 0) + len(line)
            while True:
                if conn is None and store.exists():
                    conn = reader(store)
                row = None
                if conn is not None:
                    try:
                        row = conn.execute(
                            "SELECT offset FROM files WHERE path = ?", (rel,)
                        ).fetchone()
                    except sqlite3.OperationalError:
                        row = None
                if row and row[0] >= sizes[rel]:
                    samples.append(time.perf_counter() - written)
                    break
                if time.perf_counter() - written > 10:
                    raise SystemExit(f"line {i} not visible after 10 s")
                time.sleep(0.001)
            time.sleep(interval)
    finally:
        if conn is not None:
            conn.close()
        code = stop_daemon(proc)
    if code != 0:
        raise SystemExit(f"daemon exited {code}:\n{common.tail(log.read_text())}")
    samples.sort()
    return {
        "p50": percentile(samples, 0.50),
        "p95": percentile(samples, 0.95),
        "p99": percentile(samples, 0.99),
        "max": samples[-1],
        "n": len(samples),
    }


# ---------------------------------------------------------------- 2. flood

FLOOD_WRITER = """
import os, sys
path, lines_file, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
pool = open(lines_file, "rb").read().splitlines(keepends=True)
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
written, block = 0, 1000
while written < count:
    n = min(block, count - written)
    os.write(fd, b"".join(pool[(written + i) % len(pool)] for i in range(n)))
    written += n
os.close(fd)
"""


def flood(corpus: Path, work: Path, count: int, interval: float) -> dict[str, float]:
    """A line to thread A every `interval` s while `count` lines flood thread B
    and until the daemon has caught up with B."""
    sources = sorted(corpus.glob("threads/thr-*/events.jsonl"), key=lambda p: -p.stat().st_size)
    flood_lines = work / "flood-lines.jsonl"
    flood_lines.write_bytes(b"".join(b"".join(complete_lines(p)) for p in sources[:8]))
    probe_lines = complete_lines(sources[8])
    data_dir, store, log = work / "flood-data", work / "flood.sqlite3", work / "flood.log"
    (data_dir / "threads" / "probe").mkdir(parents=True)
    (data_dir / "threads" / "flood").mkdir(parents=True)
    probe = data_dir / "threads" / "probe" / "events.jsonl"
    proc = start_daemon(data_dir, store, log)
    conn = reader(store)
    samples: list[float] = []
    size = 0
    try:
        writer = subprocess.Popen(
            [sys.executable, "-c", FLOOD_WRITER, str(data_dir / "threads" / "flood" /
             "events.jsonl"), str(flood_lines), str(count)]
        )  # fmt: skip
        began = time.perf_counter()
        i = 0
        flood_file = data_dir / "threads" / "flood" / "events.jsonl"
        # probe while the flood is written and until the daemon has read it all
        while writer.poll() is None or not caught_up(
            conn, {"threads/flood/events.jsonl": flood_file.stat().st_size}
        ):
            line = probe_lines[i % len(probe_lines)]
            i += 1
            fd = os.open(probe, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            written = time.perf_counter()
            size += len(line)
            while True:
                try:
                    row = conn.execute(
                        "SELECT offset FROM files WHERE path = 'threads/probe/events.jsonl'"
                    ).fetchone()
                except sqlite3.OperationalError:
                    row = None
                if row and row[0] >= size:
                    samples.append(time.perf_counter() - written)
                    break
                if time.perf_counter() - written > 30:
                    raise SystemExit(f"probe line {i} not visible after 30 s")
                time.sleep(0.001)
            time.sleep(interval)
        flood_s = time.perf_counter() - began
    finally:
        conn.close()
        code = stop_daemon(proc)
    if code != 0:
        raise SystemExit(f"daemon exited {code}:\n{common.tail(log.read_text())}")
    samples.sort()
    return {
        "p50": percentile(samples, 0.50),
        "p99": percentile(samples, 0.99),
        "max": samples[-1],
        "n": len(samples),
        "flood_s": flood_s,
    }


# ---------------------------------------------------------------- 3. catch-up


def catch_up(corpus: Path, work: Path, rounds: int) -> list[tuple[float, float]]:
    """(daemon start → catch_up_done, --once) wall seconds per round, alternating."""
    out = []
    for n in range(1, rounds + 1):
        for old in work.glob("catchup*"):
            old.unlink()
        store, log = work / "catchup.sqlite3", work / "catchup.log"
        began = time.perf_counter()
        proc = start_daemon(corpus, store, log, config=False, timeout=3600)
        daemon_s = time.perf_counter() - began
        code = stop_daemon(proc)
        if code != 0:
            raise SystemExit(f"daemon exited {code}:\n{common.tail(log.read_text())}")
        stray = [line for line in log.read_text().splitlines() if not line.startswith("{")]
        if stray:
            print("daemon stderr, not structured:", stray[:3])
        for old in work.glob("catchup*"):
            old.unlink()
        run = common.run_child(
            [*common.cli_command(), "--once", "--best-effort", "--json",
             "--data-dir", str(corpus), "--store", str(work / "catchup-once.sqlite3")]
        )  # fmt: skip
        if run.returncode != 0:
            raise SystemExit(f"--once exited {run.returncode}:\n{common.tail(run.stderr)}")
        print(f"round {n}: daemon catch-up {daemon_s:.2f} s, --once {run.seconds:.2f} s",
              flush=True)  # fmt: skip
        out.append((daemon_s, run.seconds))
    return out


# ---------------------------------------------------------------- 4. bulk


def caught_up(conn: sqlite3.Connection, expected: dict[str, int]) -> bool:
    try:
        got = dict(conn.execute("SELECT path, offset FROM files"))
    except sqlite3.OperationalError:
        return False
    return all(got.get(rel) == size for rel, size in expected.items())


def bulk(corpus: Path, work: Path) -> dict[str, float]:
    data_dir, store, log = work / "bulk-data", work / "bulk.sqlite3", work / "bulk.log"
    data_dir.mkdir()
    moves = []
    expected: dict[str, int] = {}
    for sub in ("threads", "archived_threads"):
        (data_dir / sub).mkdir()
        for thread_dir in sorted((corpus / sub).iterdir()):
            moves.append((thread_dir, data_dir / sub / thread_dir.name))
            events = thread_dir / "events.jsonl"
            if events.exists():
                data = events.read_bytes()
                expected[f"{sub}/{thread_dir.name}/events.jsonl"] = data.rfind(b"\n") + 1
    proc = start_daemon(data_dir, store, log)
    conn = reader(store)
    try:
        began = time.perf_counter()
        for src, dst in moves:
            os.rename(src, dst)
        while not caught_up(conn, expected):
            if proc.poll() is not None:
                raise SystemExit(f"daemon died:\n{common.tail(log.read_text())}")
            time.sleep(0.02)
        live_s = time.perf_counter() - began
    finally:
        conn.close()
        code = stop_daemon(proc)
    if code != 0:
        raise SystemExit(f"daemon exited {code}:\n{common.tail(log.read_text())}")

    once_store = work / "once.sqlite3"
    run = common.run_child(
        [*common.cli_command(), "--once", "--best-effort", "--json",
         "--data-dir", str(data_dir), "--store", str(once_store)]
    )  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"--once exited {run.returncode}:\n{common.tail(run.stderr)}")
    lines = json.loads(run.stdout)["linesIngested"]
    same = all(
        sqlite3.connect(store).execute(sql).fetchall()
        == sqlite3.connect(once_store).execute(sql).fetchall()
        for sql in TABLES.values()
    )
    return {"lines": lines, "live_s": live_s, "once_s": run.seconds, "same": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=300, help="lines timed one by one")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between them")
    parser.add_argument("--events", type=int, default=200_000, help="bulk corpus size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="work here and keep it (else a temp dir)")
    parser.add_argument("--flood-lines", type=int, default=600_000, help="0: no flood part")
    parser.add_argument("--catch-up", type=Path, help="corpus dir for the catch-up part")
    parser.add_argument("--rounds", type=int, default=3, help="catch-up rounds")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: latency,bulk")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    work = args.keep or Path(tempfile.mkdtemp(prefix="roder-bench-live-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = work / "corpus"
        print(f"generating {args.events:,} events …", file=sys.stderr)
        gen_corpus.generate(corpus, args.events, args.seed)
        lat = None if "latency" in skip else latency(corpus, work, args.lines, args.interval)
        flooded = flood(corpus, work, args.flood_lines, args.interval) if args.flood_lines else None
        caught = catch_up(args.catch_up.resolve(), work, args.rounds) if args.catch_up else None
        result = None if "bulk" in skip else bulk(corpus, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    good = True
    if flooded is not None:
        ok = flooded["max"] <= 0.25
        good &= ok
        every = f"{args.interval * 1000:.0f} ms"
        print(f"flood: {args.flood_lines:,} lines to one thread in {flooded['flood_s']:.1f} s;"
              f" a line to another every {every}, {flooded['n']} lines:")  # fmt: skip
        common.print_table(
            [
                ("p50", f"{flooded['p50'] * 1000:.0f} ms", ""),
                ("p99", f"{flooded['p99'] * 1000:.0f} ms", ""),
                ("max", f"{flooded['max'] * 1000:.0f} ms",
                 "target ≤ 250 ms every time" + ("" if ok else "  MISSED")),
            ]
        )  # fmt: skip
    if caught is not None:
        ratios = sorted(d / o for d, o in caught)
        ratio = ratios[len(ratios) // 2]
        good &= ratio <= 1.1
        print(f"daemon's first catch-up vs --once on {args.catch_up}:")
        common.print_table(
            [
                ("catch-up / once", f"{ratio:.2f}×",
                 f"median of {len(ratios)} ({', '.join(f'{r:.2f}' for r in ratios)}); target ≤ 1.1×"
                 + ("" if ratio <= 1.1 else "  MISSED")),
            ]
        )  # fmt: skip
    if lat is None or result is None:
        return 0 if good else 1

    ms = {k: f"{v * 1000:.0f} ms" for k, v in lat.items() if k != "n"}
    live_rate = result["lines"] / result["live_s"]
    once_rate = result["lines"] / result["once_s"]
    print(f"append → visible, {lat['n']} lines, one every {args.interval * 1000:.0f} ms:")
    common.print_table(
        [
            ("p50", ms["p50"], ""),
            ("p95", ms["p95"], ""),
            ("p99", ms["p99"], "target ≤ 250 ms" + ("" if lat["p99"] <= 0.25 else "  MISSED")),
            ("max", ms["max"], ""),
        ]
    )
    print(f"bulk ingest, {result['lines']:,} lines:")
    common.print_table(
        [
            ("live daemon", common.fmt_rate(live_rate), f"{result['live_s']:.2f} s"),
            ("--once", common.fmt_rate(once_rate), f"{result['once_s']:.2f} s"),
            ("live / once", f"{live_rate / once_rate:.2f}×", ""),
            ("tables", "MATCH" if result["same"] else "MISMATCH", "live vs --once"),
        ]
    )
    return 0 if result["same"] and good else 1


if __name__ == "__main__":
    sys.exit(main())
