"""Query benchmark: `stats tools` over a store with >= 1M tool_calls rows.

    python bench/bench_query.py [--rows 1000000] [--repeat 3] [--keep-store PATH]

1. `roder-analyticsd --once` on a tiny generated corpus creates a store with the
   package's own schema;
2. its tool_calls rows are deleted and --rows synthetic rows are bulk-inserted
   straight into tool_calls (only the non-generated columns: PRAGMA table_xinfo
   hidden=2/3 marks generated ones, which SQLite computes);
3. `stats tools --json` is timed (median of --repeat) and its numbers are checked
   against the inserted rows (exact nearest-rank percentiles).

With `--store STORE --data-dir DIR` (a store `--once` made of a corpus, e.g.
1M events) it instead times every `stats` command on that store against a
floor: a bare Python process that opens the store read-only and runs one
GROUP BY over tool_calls. Floor and command alternate (`--repeat` pairs per
command); the median ratio of wall times is printed with the CPU seconds;
the target is ≤ 3× for every command. Beside it, the ratio to a stricter
floor: a GROUP BY that the covering index `tool_calls_stats` answers. It
also prints the CLI's heaviest imports (`python -X importtime`).

Exit status: 0 ok, 1 failure or MISMATCH (or, with --store, a command over 3×).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common
import gen_corpus
import reference

DAY_MS = 86_400_000
START_MS = gen_corpus.EPOCH_START_S * 1000
TOOLS = gen_corpus.CORE_TOOLS + gen_corpus.EXTRA_TOOLS
BATCH = 50_000


class Expected:
    """Per-tool truth accumulated while rows are generated."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.durations: dict[str, list[int]] = defaultdict(list)

    def add(self, name: str, started: int | None, completed: int | None, is_error: int) -> None:
        self.calls[name] += 1
        self.errors[name] += is_error
        if started is not None and completed is not None:
            self.durations[name].append(completed - started)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for name, count in self.calls.items():
            durations = sorted(self.durations[name])
            out.append(
                {
                    "toolName": name,
                    "callCount": count,
                    "errorCount": self.errors[name],
                    "totalDurationMs": sum(durations),
                    "p50DurationMs": reference.nearest_rank(durations, 0.50),
                    "p95DurationMs": reference.nearest_rank(durations, 0.95),
                    "p99DurationMs": reference.nearest_rank(durations, 0.99),
                }
            )
        out.sort(key=lambda r: (-r["callCount"], r["toolName"]))
        return out


def synthetic_calls(count: int, seed: int, expected: Expected) -> Iterator[dict[str, Any]]:
    """Tool calls with Zipf-ish names, lognormal durations, a few missing halves."""
    rng = random.Random(seed)
    for i in range(count):
        name = TOOLS[min(int(rng.expovariate(0.25)), len(TOOLS) - 1)]
        started: int | None = START_MS + int(rng.random() * 90 * DAY_MS)
        duration = int(min(rng.lognormvariate(5.0, 1.3), 600_000.0))
        completed: int | None = started + duration  # type: ignore[operator]
        roll = rng.random()
        if roll < 0.03:
            started = None
        elif roll < 0.04:
            completed = None
        is_error = int(completed is not None and rng.random() < 0.08)
        expected.add(name, started, completed, is_error)
        yield {
            "thread_id": f"thr-q{i // 400:05d}",
            "turn_id": f"turn-{(i // 20) % 20}",
            "tool_id": f"call_q_{i}",
            "tool_name": name,
            "started_at_ms": started,
            "completed_at_ms": completed,
            "is_error": is_error,
            "duration_ms": None if started is None or completed is None else completed - started,
            "status": "running" if completed is None else ("error" if is_error else "success"),
        }


def writable_columns(conn: sqlite3.Connection) -> list[tuple[str, str, bool, bool]]:
    """(name, type, notnull, has_default) of every non-generated tool_calls column."""
    cols = []
    for _cid, name, ctype, notnull, default, _pk, hidden in conn.execute(
        "PRAGMA table_xinfo(tool_calls)"
    ):
        if hidden in (2, 3):
            continue
        cols.append((name, ctype or "", bool(notnull), default is not None))
    return cols


def filler(ctype: str) -> Any:
    return 0 if any(t in ctype.upper() for t in ("INT", "REAL", "NUM")) else ""


def bulk_insert(store: Path, rows: int, seed: int) -> tuple[Expected, float, list[str]]:
    conn = sqlite3.connect(store, isolation_level=None)
    cols = writable_columns(conn)
    known = set(next(synthetic_calls(1, 0, Expected())))
    names = [c[0] for c in cols if c[0] in known or (c[2] and not c[3])]
    fill = {c[0]: filler(c[1]) for c in cols if c[0] not in known}
    sql = f"INSERT INTO tool_calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    expected = Expected()
    began = time.perf_counter()
    conn.execute("BEGIN")
    conn.execute("DELETE FROM tool_calls")
    batch: list[tuple] = []
    for call in synthetic_calls(rows, seed, expected):
        batch.append(tuple(call[n] if n in call else fill[n] for n in names))
        if len(batch) >= BATCH:
            conn.executemany(sql, batch)
            batch = []
    conn.executemany(sql, batch)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return expected, time.perf_counter() - began, names


def create_store(base: list[str], work: Path) -> Path:
    corpus = work / "tiny"
    corpus.mkdir()
    gen_corpus.generate(corpus, 300, 1)
    store = work / "usage.sqlite3"
    run = common.run_child(
        [
            *base,
            "--once",
            "--best-effort",
            "--json",
            "--data-dir",
            str(corpus),
            "--store",
            str(store),
        ]
    )
    if run.returncode != 0:
        raise SystemExit(f"--once on the tiny corpus failed: {common.tail(run.stderr)}")
    return store


def check_tools(
    base: list[str], store: Path, data_dir: Path, expected: Expected
) -> tuple[list[str], common.ChildRun]:
    run = common.run_child(common.stats_argv(base, store, data_dir, "tools", "--limit", "1000"))
    if run.returncode != 0:
        return [f"stats tools exited {run.returncode}: {common.tail(run.stderr)}"], run
    got = reference.pick_tools(json.loads(run.stdout))
    return reference.diff_lines("tools", reference.pick_tools(expected.rows()), got), run


def bench(args: argparse.Namespace, work: Path) -> int:
    base = common.cli_command()
    store = create_store(base, work)
    data_dir = work / "tiny"
    print(f"inserting {args.rows:,} tool_calls rows …", flush=True)
    expected, insert_s, names = bulk_insert(store, args.rows, args.seed)
    problems, _ = check_tools(base, store, data_dir, expected)
    timings = [
        common.timed_row(
            f"stats {' '.join(sub)} --json",
            common.stats_argv(base, store, data_dir, *sub),
            args.repeat,
        )
        for sub in (["tools"], ["tools", "--sort", "p95"], ["summary"])
    ]
    size_mb = sum(p.stat().st_size for p in work.glob("usage.sqlite3*")) / 1e6
    tools_note = f"{len(expected.calls)} tools, {size_mb:,.0f} MB store"
    rows = [
        ("tool_calls rows", f"{args.rows:,}", tools_note),
        ("bulk insert", f"{insert_s:.1f} s", f"columns: {', '.join(names)}"),
        *timings,
        common.timed_row("--help", [*base, "--help"], args.repeat),
        ("stats tools numbers", "MISMATCH" if problems else "MATCH", "vs the inserted rows"),
    ]
    print()
    common.print_table(rows)
    print()
    for line in problems:
        print(line)
    if args.keep_store:
        shutil.copy2(store, args.keep_store)
        print(f"store kept at {args.keep_store}")
    return 1 if problems else 0


STATS_COMMANDS = [
    ["summary"],
    ["tokens"],
    ["tokens", "--group", "day"],
    ["tokens", "--group", "model"],
    ["sessions"],
    ["tools"],
    ["tools", "--sort", "p95"],
    ["rollups"],
    ["activity", "--by", "module"],
    ["fleet", "dau"],
    ["fleet", "sessions"],
    ["fleet", "errors"],
]
_FLOOR = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)\n"
    "rows = conn.execute('SQL').fetchall()\n"
    "print(len(rows))"
)
# the floor: one GROUP BY over the table (its generated duration_ms
# makes SQLite read every row); and a stricter one that a covering index
# answers (the names and counts only)
FLOOR = _FLOOR.replace(
    "SQL", "SELECT tool_name, count(*), sum(duration_ms) FROM tool_calls GROUP BY tool_name"
)
INDEX_FLOOR = _FLOOR.replace(
    "SQL",
    "SELECT tool_name, count(*) FROM tool_calls INDEXED BY tool_calls_stats GROUP BY tool_name",
)


def bench_store(args: argparse.Namespace) -> int:
    """Every stats command on an existing store against the bare GROUP BY floor."""
    base = common.cli_command()
    store, data_dir = args.store.resolve(), args.data_dir.resolve()
    floor_argv = [sys.executable, "-c", FLOOR, str(store)]
    index_argv = [sys.executable, "-c", INDEX_FLOOR, str(store)]
    rows: list[tuple[str, str, str]] = []
    worst = 0.0
    for sub in STATS_COMMANDS:
        argv = common.stats_argv(base, store, data_dir, *sub)
        pairs = []
        for _ in range(args.repeat):
            floor = common.run_child(floor_argv)
            run = common.run_child(argv)
            index = common.run_child(index_argv)
            if run.returncode != 0:
                break
            pairs.append((run.seconds / floor.seconds, run.seconds / index.seconds, run, floor))
        name = f"stats {' '.join(sub)}"
        if not pairs:
            reason = common.tail(run.stderr, 1)[:80]
            rows.append((name, "FAILED", f"exit {run.returncode}: {reason}"))
            worst = float("inf")
            continue
        pairs.sort(key=lambda p: p[0])
        ratio, _, run, floor = pairs[len(pairs) // 2]
        strict = sorted(p[1] for p in pairs)[len(pairs) // 2]
        worst = max(worst, ratio)
        rows.append((
            name,
            f"{ratio:.2f}x",
            f"{strict:.2f}x the index floor; {run.seconds * 1000:.0f} ms wall "
            f"{run.cpu_seconds * 1000:.0f} ms CPU; floor {floor.seconds * 1000:.0f} ms wall "
            f"{floor.cpu_seconds * 1000:.0f} ms CPU" + ("" if ratio <= 3 else "  OVER 3x"),
        ))  # fmt: skip
    print()
    common.print_table(rows)
    imports = subprocess_importtime()
    print("\nheaviest imports of `import roder_analyticsd.cli` (cumulative µs):")
    for line in imports:
        print("  " + line)
    return 0 if worst <= 3 else 1


def subprocess_importtime(top: int = 8) -> list[str]:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import roder_analyticsd.cli.stats"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    rows = []
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return [f"{us:>8}  {name}" for us, name in rows[:top]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark stats queries over 1M tool calls.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep-store", type=Path, help="copy the built store here")
    parser.add_argument("--store", type=Path, help="time every stats command on this store")
    parser.add_argument("--data-dir", type=Path, help="the store's data dir (with --store)")
    args = parser.parse_args(argv)
    if args.store:
        if not args.data_dir:
            parser.error("--store needs --data-dir")
        return bench_store(args)
    with tempfile.TemporaryDirectory(prefix="roder-qbench-") as tmp:
        return bench(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
