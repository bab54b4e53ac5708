"""Backfill benchmark: `roder-analyticsd --once` against a floor, plus a correctness check.

    python bench/bench_backfill.py [--events 1000000] [--seed 7] [--keep DIR]

Steps, all in one run on the same corpus (see bench/README.md):
  a) the floor: stream-read every events.jsonl, decode only the envelope
     (msgspec, `event` left raw), write one row per line to SQLite
     (WAL, executemany, ~5000 rows per transaction); run as a child process
  b) `roder-analyticsd --once --best-effort --json` into a fresh store:
     wall time, peak RSS of the child, peak PSS of it and its workers
  c) backfill rate / floor rate (events per second)
  d) `stats summary` and `stats tools` compared with bench/reference.py
  e) query times; f) `--help` start-up time

Exit status: 0 all good, 1 backfill failed or MISMATCH.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import diagnose
import gen_corpus
import msgspec
import reference

META_FILE = "bench-meta.json"
CHUNK = 1 << 20
BATCH = 5000
TARGETS = {"ratio_min": 0.35, "ratio_aim": 0.5, "rss_mb": 150.0, "help_s": 1.0}


# ---------------------------------------------------------------- the floor


class Envelope(msgspec.Struct):
    event_id: str
    kind: str
    timestamp: str
    event: msgspec.Raw
    thread_id: str | None = None


def floor_rows(path: Path, decoder: msgspec.json.Decoder) -> Any:
    """Yield (event_id, kind, thread_id, timestamp) per complete valid line."""
    rest = b""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if not line or line.isspace():
                    continue
                try:
                    env = decoder.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                yield (env.event_id, env.kind, env.thread_id, env.timestamp)
    # `rest` is an unfinished last line: never consumed


def run_floor(data_dir: Path, db_path: Path) -> dict[str, Any]:
    began = time.perf_counter()
    began_cpu = time.process_time()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE events (event_id TEXT, kind TEXT, thread_id TEXT, timestamp TEXT)")
    decoder = msgspec.json.Decoder(Envelope)
    insert = "INSERT INTO events (event_id, kind, thread_id, timestamp) VALUES (?, ?, ?, ?)"
    batch: list[tuple[str, str, str | None, str]] = []
    events = 0
    for path in reference.event_files(data_dir):
        for row in floor_rows(path, decoder):
            batch.append(row)
            if len(batch) >= BATCH:
                write_batch(conn, insert, batch)
                events += len(batch)
                batch = []
    write_batch(conn, insert, batch)
    events += len(batch)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {
        "events": events,
        "seconds": time.perf_counter() - began,
        "cpu": time.process_time() - began_cpu,
    }


def write_batch(conn: sqlite3.Connection, sql: str, rows: list[tuple]) -> None:
    if not rows:
        return
    conn.execute("BEGIN")
    conn.executemany(sql, rows)
    conn.execute("COMMIT")


# ---------------------------------------------------------------- corpus


def prepare_corpus(directory: Path, events: int, seed: int) -> dict[str, Any]:
    """Generate (or reuse) a corpus and its reference numbers, cached in META_FILE."""
    meta_path = directory / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        wanted = (events, seed, gen_corpus.VERSION)
        if (meta.get("events"), meta.get("seed"), meta.get("version")) == wanted:
            print(f"reusing corpus {directory} ({meta['generator']['events']:,} events)")
            return meta
    if directory.exists() and any(directory.iterdir()) and not meta_path.is_file():
        raise SystemExit(f"{directory} is not empty and not a bench corpus; refusing to touch it")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    print(f"generating {events:,} events into {directory} …", flush=True)
    began = time.perf_counter()
    stats = gen_corpus.generate(directory, events, seed)
    gen_seconds = time.perf_counter() - began
    print(f"computing the reference ({stats.events:,} events) …", flush=True)
    began = time.perf_counter()
    ref = reference.compute(directory)
    meta = {
        "events": events,
        "seed": seed,
        "version": gen_corpus.VERSION,
        "generator": {**stats.__dict__, "seconds": gen_seconds},
        "referenceSeconds": time.perf_counter() - began,
        "reference": {"summary": ref["summary"], "tools": ref["tools"]},
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def warm_cache(data_dir: Path) -> None:
    """Read every file once so the floor and the backfill both start warm."""
    for path in reference.event_files(data_dir):
        with path.open("rb") as fh:
            while fh.read(CHUNK):
                pass


# ---------------------------------------------------------------- checks


def check_results(base: list[str], store: Path, data_dir: Path, ref: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    got_summary = query_json(base, store, data_dir, ["summary"], problems)
    got_tools = query_json(base, store, data_dir, ["tools", "--limit", "1000"], problems)
    if got_summary is not None:
        keys = list(ref["summary"])
        problems += reference.diff_lines(
            "summary", ref["summary"], reference.pick_summary(got_summary, keys)
        )
    if got_tools is not None:
        problems += reference.diff_lines(
            "tools", reference.pick_tools(ref["tools"]), reference.pick_tools(got_tools)
        )
    return problems


def query_json(
    base: list[str], store: Path, data_dir: Path, sub: list[str], problems: list[str]
) -> Any:
    run = common.run_child(common.stats_argv(base, store, data_dir, *sub))
    if run.returncode != 0:
        problems.append(f"stats {' '.join(sub)} exited {run.returncode}: {common.tail(run.stderr)}")
        return None
    try:
        return json.loads(run.stdout)
    except ValueError as exc:
        problems.append(f"stats {' '.join(sub)}: stdout is not JSON ({exc})")
        return None


def time_queries(
    base: list[str], store: Path, data_dir: Path, repeat: int
) -> list[tuple[str, str, str]]:
    return [
        common.timed_row(
            f"stats {' '.join(sub)} --json", common.stats_argv(base, store, data_dir, *sub), repeat
        )
        for sub in (["tools"], ["tokens", "--group", "day"], ["summary"])
    ]


# ---------------------------------------------------------------- main


def run_backfill(base: list[str], data_dir: Path, store: Path) -> common.ChildRun:
    argv = [
        *base,
        "--once",
        "--best-effort",
        "--json",
        "--data-dir",
        str(data_dir),
        "--store",
        str(store),
    ]
    print("backfill:", " ".join(argv[len(base) :]), flush=True)
    return common.run_child(argv, watch=store.with_name(store.name + "-wal"))


def run_floor_child(data_dir: Path, db_path: Path) -> tuple[dict[str, Any], common.ChildRun]:
    run = common.run_child(
        [sys.executable, str(Path(__file__).resolve()), "--floor-only", str(data_dir), str(db_path)]
    )
    if run.returncode != 0:
        raise SystemExit(f"floor failed: {common.tail(run.stderr)}")
    return json.loads(run.stdout), run


def memory_rows(run: common.ChildRun) -> list[tuple[str, str, str]]:
    """Peak RSS of the main process, and peak summed PSS with its worker processes."""
    limit = TARGETS["rss_mb"]
    judged = max(run.max_rss_mb, run.tree_pss_mb or 0.0)
    verdict = f"target <= {limit:.0f} MB " + ("OK" if judged <= limit else "OVER TARGET")
    rows = [("peak RSS --once", f"{run.max_rss_mb:.0f} MB", "main process (wait4)")]
    if run.tree_pss_mb is not None:
        rows.append(
            ("peak PSS --once + workers", f"{run.tree_pss_mb:.0f} MB", "sampled every 50 ms")
        )
    rows[-1] = (rows[-1][0], rows[-1][1], f"{rows[-1][2]}; {verdict}")
    return rows


def compact_report(stdout: str) -> str:
    """The --once --json report with lists and maps replaced by their sizes."""
    try:
        data = json.loads(stdout)
    except ValueError:
        return common.tail(stdout, 3)
    if not isinstance(data, dict):
        return common.tail(stdout, 3)
    short = {k: (len(v) if isinstance(v, list | dict) else v) for k, v in data.items()}
    return json.dumps(short)


def report(rows: list[tuple[str, str, str]]) -> None:
    print()
    common.print_table(rows)
    print()


def bench(args: argparse.Namespace, work: Path, corpus: Path) -> int:
    meta = prepare_corpus(corpus, args.events, args.seed)
    gen = meta["generator"]
    base = common.cli_command()
    warm_cache(corpus)
    # floor and backfill alternate, so a slow spell of a shared machine hits
    # both; the round with the median ratio is reported
    store = work / "usage.sqlite3"
    rounds = []
    for n in range(1, args.rounds + 1):
        print(f"round {n}/{args.rounds}: floor …", flush=True)
        floor, floor_run = run_floor_child(corpus, work / "floor.sqlite3")
        (work / "floor.sqlite3").unlink(missing_ok=True)
        print(f"round {n}/{args.rounds}: backfill …", flush=True)
        for old in work.glob("usage.sqlite3*"):
            old.unlink()
        backfill = run_backfill(base, corpus, store)
        if backfill.returncode != 0:
            print(f"backfill FAILED (exit {backfill.returncode}):\n{common.tail(backfill.stderr)}")
            return 1
        store_mb = store.stat().st_size / 1e6
        print(
            f"  floor {floor['seconds']:.2f} s wall {floor['cpu']:.2f} s CPU;"
            f" backfill {backfill.seconds:.2f} s wall {backfill.cpu_seconds:.2f} s CPU,"
            f" peak PSS {backfill.tree_pss_mb or 0:.0f} MB, peak WAL"
            f" {backfill.peak_watch_mb or 0:.0f} MB, store {store_mb:.0f} MB",
            flush=True,
        )
        rounds.append((floor["seconds"] / backfill.seconds, floor, floor_run, backfill))
    cpu_ratios = sorted(r[3].cpu_seconds / r[1]["cpu"] for r in rounds)
    peak_pss = max(r[3].tree_pss_mb or 0.0 for r in rounds)
    peak_wal = max(r[3].peak_watch_mb or 0.0 for r in rounds)
    stray = sorted({line for r in rounds for line in r[3].stderr.splitlines() if line.strip()})
    ratios = sorted(r[0] for r in rounds)
    ratio, floor, floor_run, backfill = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
    events = floor["events"]
    floor_rate = events / floor["seconds"]
    backfill_rate = events / backfill.seconds
    problems = check_results(base, store, corpus, meta["reference"])
    timings = time_queries(base, store, corpus, args.repeat)
    help_s, _ = common.median_run([*base, "--help"], args.repeat)
    store_mb = sum(p.stat().st_size for p in work.glob("usage.sqlite3*")) / 1e6
    db_mb = store.stat().st_size / 1e6
    corpus_mb = gen["bytes"] / 1e6
    cpu_ratio = cpu_ratios[len(cpu_ratios) // 2]
    wal_limit = max(256.0, 1.5 * db_mb)
    rows = [
        ("corpus", f"{events:,} events", f"{corpus_mb:,.0f} MB, {gen['files']:,} files"),
        ("generator", common.fmt_rate(gen["events"] / gen["seconds"]), f"{gen['seconds']:.1f} s"),
        (
            "floor",
            common.fmt_rate(floor_rate),
            f"{floor['seconds']:.2f} s, peak RSS {floor_run.max_rss_mb:.0f} MB",
        ),
        (
            "backfill --once",
            common.fmt_rate(backfill_rate),
            f"{backfill.seconds:.2f} s wall (incl. start-up)",
        ),
        (
            "ratio backfill/floor",
            f"{ratio:.2f}x",
            f"median of {len(ratios)} rounds ({', '.join(f'{r:.2f}' for r in ratios)}); "
            f"target >= {TARGETS['ratio_min']}x, aim {TARGETS['ratio_aim']}x "
            + ("OK" if ratio >= TARGETS["ratio_min"] else "BELOW TARGET"),
        ),
        (
            "CPU backfill/floor",
            f"{cpu_ratio:.2f}x",
            f"median of {len(cpu_ratios)} ({', '.join(f'{r:.2f}' for r in cpu_ratios)});"
            f" backfill {backfill.cpu_seconds:.2f} s, floor {floor['cpu']:.2f} s;"
            f" {backfill.cpu_seconds / events * 1e6:.2f} CPU-s per 1M events; target <= 3x "
            + ("OK" if cpu_ratio <= 3 else "OVER"),
        ),
        *memory_rows(backfill),
        (
            "peak PSS, all rounds",
            f"{peak_pss:.0f} MB",
            "target <= 150 MB " + ("OK" if peak_pss <= 150 else "OVER"),
        ),
        (
            "peak WAL",
            f"{peak_wal:.0f} MB",
            f"sampled every 50 ms; target <= {wal_limit:.0f} MB (max(256, 1.5x store)) "
            + ("OK" if peak_wal <= wal_limit else "OVER"),
        ),
        ("stderr of --once", f"{len(stray)} lines", "; ".join(stray)[:200] or "none"),
        ("store size", f"{store_mb:,.0f} MB", "usage.sqlite3 + -wal/-shm"),
        *timings,
        (
            "--help",
            f"{help_s * 1000:.0f} ms",
            f"median of {args.repeat}, target < 1 s "
            + ("OK" if help_s < TARGETS["help_s"] else "SLOW"),
        ),
        ("reference", "MISMATCH" if problems else "MATCH", "stats summary + stats tools"),
    ]
    report(rows)
    print("backfill report:", compact_report(backfill.stdout))
    for line in problems:
        print(line)
    if problems:
        print("row-level diff (bench/diagnose.py):", flush=True)
        diagnose.diagnose(corpus, store)
    if args.keep_store:
        shutil.copy2(store, args.keep_store)
        print(f"store kept at {args.keep_store}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark roder-analyticsd --once.")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="corpus dir to create or reuse (kept)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timed query")
    parser.add_argument(
        "--rounds", type=int, default=3, help="floor + backfill pairs; the median ratio is reported"
    )
    parser.add_argument("--keep-store", type=Path, help="copy the backfilled store here")
    parser.add_argument(
        "--floor-only", nargs=2, type=Path, metavar=("DATA_DIR", "DB"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.floor_only:
        print(json.dumps(run_floor(*args.floor_only)))
        return 0
    with tempfile.TemporaryDirectory(prefix="roder-bench-") as tmp:
        work = Path(tmp)
        corpus = args.keep.resolve() if args.keep else work / "corpus"
        return bench(args, work, corpus)


if __name__ == "__main__":
    sys.exit(main())
