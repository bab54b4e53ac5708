"""How the cost of a backfill grows with the corpus: CPU per event at several sizes.

    python bench/bench_growth.py [--sizes 250000,1000000,3000000] [--rounds 3] [--keep DIR]

Each round runs, for every size in turn (the order rotates from round to
round, so a slow spell of a shared machine does not land on one size), the
floor of bench_backfill.py and then `roder-analyticsd --once` into a fresh
store, both as child processes. Printed per size, as medians over the rounds:
CPU-s per 1M events of the backfill (the whole process tree, start-up
included) and of the floor (whole child), and their ratio.

Then the growth itself. A run's CPU is a fixed part (interpreters starting,
imports, the schema, the price table) plus a part per event; at small sizes
the fixed part weighs on the per-event figure. So the bench also prints:
- the marginal CPU-s per 1M events between consecutive sizes (the CPU the
  extra events cost: flat when the cost grows linearly);
- the same marginal CPU divided by the floor's, round by round (the
  machine's drift between rounds cancels out), median over the rounds;
- a least-squares line CPU = fixed + rate x events over every run, with the
  largest deviation of a size's median from it;
- whether each size's last store MATCHes bench/reference.py (exit 1 if not);
- the start-up alone: `--once` over an empty data dir (its interpreter,
  imports and schema; no worker starts and no price table, which a real
  backlog adds to the fixed part).

Corpora are kept under --keep (one directory per size, reused; the same
format as bench_backfill.py --keep).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import bench_backfill
import common


def fixed_cost(base: list[str], work: Path, rounds: int) -> float:
    """Median CPU-s of `--once` over an empty data dir into a fresh store."""
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    runs = []
    for _ in range(rounds):
        for old in work.glob("fixed.sqlite3*"):
            old.unlink()
        run = bench_backfill.run_backfill(base, empty, work / "fixed.sqlite3")
        if run.returncode != 0:
            raise SystemExit(f"--once on an empty data dir failed: {common.tail(run.stderr)}")
        runs.append(run.cpu_seconds)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250000,1000000,3000000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="directory of corpora to create or reuse")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="roder-bench-growth-") as tmp:
        work = Path(tmp)
        root = args.keep.resolve() if args.keep else work / "corpora"
        corpora, references = {}, {}
        for size in sizes:
            corpus = root / f"C{size}"
            references[size] = bench_backfill.prepare_corpus(corpus, size, args.seed)["reference"]
            corpora[size] = corpus
        base = common.cli_command()
        ours: dict[int, list[float]] = {s: [] for s in sizes}
        floor: dict[int, list[float]] = {s: [] for s in sizes}
        events: dict[int, int] = {}
        verdicts: dict[int, list[str]] = {}
        store = work / "usage.sqlite3"
        for n in range(args.rounds):
            order = sizes[n % len(sizes) :] + sizes[: n % len(sizes)]
            for size in order:
                corpus = corpora[size]
                bench_backfill.warm_cache(corpus)
                result, floor_run = bench_backfill.run_floor_child(corpus, work / "floor.sqlite3")
                (work / "floor.sqlite3").unlink(missing_ok=True)
                for old in work.glob("usage.sqlite3*"):
                    old.unlink()
                run = bench_backfill.run_backfill(base, corpus, store)
                if run.returncode != 0:
                    print(f"backfill FAILED (exit {run.returncode}):\n{common.tail(run.stderr)}")
                    return 1
                events[size] = result["events"]
                ours[size].append(run.cpu_seconds)
                floor[size].append(floor_run.cpu_seconds)
                if n == args.rounds - 1:  # each size's last store, against the reference
                    verdicts[size] = bench_backfill.check_results(
                        base, store, corpus, references[size]
                    )
                print(
                    f"  round {n + 1}, {size:,}: backfill {run.cpu_seconds:.2f} CPU-s,"
                    f" floor {floor_run.cpu_seconds:.2f} CPU-s",
                    flush=True,
                )
        fixed = fixed_cost(base, work, args.rounds)

    def per_million(cpu: float, size: int) -> float:
        return cpu / events[size] * 1e6

    print(f"\n{'events':>10}  {'CPU-s/1M':>9}  {'floor':>7}  {'ratio':>6}  runs (CPU-s)")
    medians = {s: statistics.median(ours[s]) for s in sizes}
    per_event = {s: per_million(medians[s], s) for s in sizes}
    for s in sizes:
        f = statistics.median(floor[s])
        runs = ", ".join(f"{c:.2f}" for c in ours[s])
        print(
            f"{events[s]:>10,}  {per_event[s]:>9.2f}  {per_million(f, s):>7.2f}"
            f"  {medians[s] / f:>5.2f}x  {runs}"
        )
    spread = max(per_event.values()) / min(per_event.values()) - 1
    print(f"CPU per event, whole run: largest / smallest - 1 = {spread:.1%}")
    marginal = [
        (a, b, (medians[b] - medians[a]) / (events[b] - events[a]) * 1e6)
        for a, b in zip(sizes, sizes[1:], strict=False)
    ]
    for a, b, rate in marginal:
        print(f"marginal CPU-s per 1M events, {a:,} -> {b:,}: {rate:.2f}")
    if len(marginal) > 1:
        rates = [r for _, _, r in marginal]
        print(f"marginal: largest / smallest - 1 = {max(rates) / min(rates) - 1:.1%}")
    # The same against the floor, round by round: a round runs every size
    # within minutes, so the machine's drift between rounds (this CPU time
    # moves by a quarter from run to run on a shared machine) cancels out.
    against_floor = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        per_round = [
            (ours[b][n] - ours[a][n]) / (floor[b][n] - floor[a][n]) for n in range(args.rounds)
        ]
        against_floor.append(statistics.median(per_round))
        rounds = ", ".join(f"{r:.2f}" for r in per_round)
        print(
            f"marginal CPU vs the floor's marginal CPU, {a:,} -> {b:,}:"
            f" {against_floor[-1]:.2f}x (rounds {rounds})"
        )
    if len(against_floor) > 1:
        spread = max(against_floor) / min(against_floor) - 1
        print(f"marginal vs floor: largest / smallest - 1 = {spread:.1%}")
    xs = [events[s] for s in sizes for _ in ours[s]]
    ys = [c for s in sizes for c in ours[s]]
    slope, intercept = statistics.linear_regression(xs, ys)
    worst = max(abs(medians[s] - (intercept + slope * events[s])) / medians[s] for s in sizes)
    print(
        f"least squares: CPU = {intercept:.2f} s + {slope * 1e6:.2f} s per 1M events;"
        f" largest deviation of a size's median {worst:.1%}"
    )
    print(
        f"start-up alone (--once over an empty data dir: no workers, no price table):"
        f" {fixed:.2f} CPU-s"
    )
    for s in sizes:
        print(f"reference, {events[s]:,} events: {'MISMATCH' if verdicts[s] else 'MATCH'}")
        for line in verdicts[s]:
            print(f"  {line}")
    return 1 if any(verdicts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
