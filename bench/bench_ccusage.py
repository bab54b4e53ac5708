"""Head to head with ccusage on generated Claude Code trees.

For each size (default ~200k and ~1M lines) a tree is generated
(`gen_claude.py`), ccusage 20.0.24 is installed from the npm registry into
a temporary directory (it is not a dependency of this package), and rounds
alternate:

- ccusage: one `ccusage claude daily --json --offline` (it reads every file);
- ours, first backfill: `--once` into a fresh store;
- ours, each later query: `stats tokens --group day --json`.

Wall time, CPU seconds and peak memory of each, medians over the rounds,
ratios against the ccusage run of the same round. Tokens per day must be
identical. Every child gets its own HOME and CLAUDE_CONFIG_DIR: the
machine's own Claude Code logs are never read.

    PYTHONPATH=. python bench/bench_ccusage.py [--sizes 200000,1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cli_command, run_child  # noqa: E402
from gen_claude import generate  # noqa: E402

CCUSAGE = "ccusage@20.0.24"


def install_ccusage(where: Path) -> Path:
    subprocess.run(
        ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(where), CCUSAGE],
        check=True,
        capture_output=True,
    )
    return where / "node_modules" / ".bin" / "ccusage"


def ccusage_days(stdout: str) -> dict[str, tuple[int, int, int, int]]:
    return {
        d["date"]: (
            d["inputTokens"],
            d["outputTokens"],
            d["cacheCreationTokens"],
            d["cacheReadTokens"],
        )  # fmt: skip
        for d in json.loads(stdout)["daily"]
    }


def our_days(stdout: str) -> dict[str, tuple[int, int, int, int]]:
    return {
        r["group"]: (
            r["promptTokens"] - r["cachedPromptTokens"] - r["cacheCreationPromptTokens"],
            r["completionTokens"],
            r["cacheCreationPromptTokens"],
            r["cachedPromptTokens"],
        )  # fmt: skip
        for r in json.loads(stdout)
    }


def fmt(runs: list) -> str:
    wall = statistics.median(r.seconds for r in runs)
    cpu = statistics.median(r.cpu_seconds for r in runs)
    mem = max((r.tree_pss_mb or r.max_rss_mb) for r in runs)
    return f"wall {wall:8.3f} s  cpu {cpu:8.3f} s  peak {mem:7.1f} MB"


def bench_size(lines: int, rounds: int, ccusage: Path, tmp: Path) -> dict:
    home = tmp / f"home-{lines}"
    root = home / ".claude"
    written = generate(root, lines)
    size_mb = sum(p.stat().st_size for p in root.rglob("*.jsonl")) / 1e6
    os.environ["HOME"] = str(home)
    os.environ["CLAUDE_CONFIG_DIR"] = str(root)
    cli = cli_command()
    data = tmp / f"roder-{lines}"
    data.mkdir(exist_ok=True)
    theirs, first, later = [], [], []
    days_theirs = days_ours = None
    for n in range(rounds):
        store = tmp / f"store-{lines}-{n}.sqlite3"
        order = ("ccusage", "ours") if n % 2 == 0 else ("ours", "ccusage")  # alternate
        for who in order:
            if who == "ccusage":
                run = run_child([str(ccusage), "claude", "daily", "--json", "--offline"])
                assert run.returncode == 0, run.stderr[-2000:]
                theirs.append(run)
                days_theirs = ccusage_days(run.stdout)
            else:
                run = run_child([*cli, "--once", "--best-effort", "--json", "--data-dir",
                                 str(data), "--store", str(store)])  # fmt: skip
                assert run.returncode == 0, run.stderr[-2000:]
                first.append(run)
                query = [*cli, "stats", "tokens", "--group", "day", "--json", "--limit", "1000",
                         "--data-dir", str(data), "--store", str(store)]  # fmt: skip
                for _ in range(3):
                    q = run_child(query)
                    assert q.returncode == 0, q.stderr[-2000:]
                    later.append(q)
                days_ours = our_days(q.stdout)
        for suffix in ("", "-wal", "-shm"):
            Path(str(store) + suffix).unlink(missing_ok=True)
    same = days_theirs == days_ours
    t_wall = statistics.median(r.seconds for r in theirs)
    t_cpu = statistics.median(r.cpu_seconds for r in theirs)
    f_wall = statistics.median(r.seconds for r in first)
    f_cpu = statistics.median(r.cpu_seconds for r in first)
    q_wall = statistics.median(r.seconds for r in later)
    q_cpu = statistics.median(r.cpu_seconds for r in later)
    print(f"\n== {written} lines, {size_mb:.0f} MB, {len(days_ours or {})} days, {rounds} rounds")
    print(f"ccusage daily        {fmt(theirs)}")
    print(f"ours first backfill  {fmt(first)}   = {f_wall / t_wall:.2f}x ccusage wall, "
          f"{f_cpu / t_cpu:.2f}x cpu")  # fmt: skip
    print(f"ours later query     {fmt(later)}   = {t_wall / q_wall:.1f}x faster wall, "
          f"{t_cpu / q_cpu:.1f}x less cpu")  # fmt: skip
    print(f"tokens per day identical: {same}")
    if not same:
        diff = {d for d in set(days_theirs or {}) | set(days_ours or {})
                if (days_theirs or {}).get(d) != (days_ours or {}).get(d)}  # fmt: skip
        print("differing days:", sorted(diff)[:10])
    return {"lines": written, "same": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="roder-bench-ccusage-") as name:
        tmp = Path(name)
        ccusage = install_ccusage(tmp / "npm")
        results = [bench_size(int(s), args.rounds, ccusage, tmp)
                   for s in args.sizes.split(",")]  # fmt: skip
        shutil.rmtree(tmp / "npm", ignore_errors=True)
    if not all(r["same"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
