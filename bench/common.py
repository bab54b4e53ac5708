"""Helpers shared by the bench scripts: locating the CLI and timing child processes."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# An installed package has its bytecode (pip compiles it); with this set, a
# source checkout would be compiled again by every timed run, which no user
# pays. Unset for every child, so the first (warm-up) run writes it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@dataclass
class ChildRun:
    returncode: int
    seconds: float
    max_rss_mb: float
    tree_pss_mb: float | None
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0  # user + system of the child and the children it reaped
    peak_watch_mb: float | None = None  # largest size seen of the watched file (a WAL)


def cli_command() -> list[str]:
    """`roder-analyticsd` if it is on PATH, else `python -m roder_analyticsd`."""
    exe = shutil.which("roder-analyticsd")
    if exe:
        return [exe]
    return [sys.executable, "-m", "roder_analyticsd"]


def rss_mb(ru_maxrss: int) -> float:
    """ru_maxrss is KiB on Linux, bytes on macOS."""
    if sys.platform == "darwin":
        return ru_maxrss / (1024 * 1024)
    return ru_maxrss / 1024


# A fresh, small interpreter starts the measured command and reports:
# - maxrss: ru_maxrss from os.wait4 (the child, and the max of any descendant it
#   reaped). Measuring from the bench process itself would be wrong: a forked
#   child carries its parent's high-water RSS until exec.
# - tree_kb: the peak, sampled every 50 ms on Linux, of the summed PSS of the
#   child and all its descendants (worker processes included).
# - cpu: user + system seconds of the child and of the children it reaped.
# - watch: the peak size of one file (a store's WAL), sampled with the PSS.
MEASURE = """
import json, os, subprocess, sys, threading, time

def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []

def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0

def tree_kb(root):
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += pss_kb(pid)
        todo.extend(children(pid))
    return total

out, err, watch, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
peak = 0
peak_watch = 0

def watched():
    try:
        return os.stat(watch).st_size
    except OSError:
        return 0
sample = os.path.exists("/proc/self/smaps_rollup")
done = threading.Event()

def sampler(pid):
    global peak, peak_watch
    while not done.is_set():
        peak = max(peak, tree_kb(pid))
        if watch:
            peak_watch = max(peak_watch, watched())
        done.wait(0.05)

with open(out, "wb") as o, open(err, "wb") as e:
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=o, stderr=e)
    # the samples are taken by a thread, so that the wait below returns the
    # moment the child exits: waking every 50 ms to poll rounded each wall
    # time up to the next tick (a 100 ms query read as up to 150 ms)
    thread = threading.Thread(target=sampler, args=(proc.pid,), daemon=True)
    if sample:
        thread.start()
    pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    done.set()
    if sample:
        thread.join()
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "seconds": seconds,
                  "maxrss": usage.ru_maxrss, "tree_kb": peak if sample else None,
                  "cpu": usage.ru_utime + usage.ru_stime,
                  "watch": peak_watch if watch else None}))
"""


def run_child(argv: list[str], watch: Path | None = None) -> ChildRun:
    """Run argv to completion: its wall time, CPU time and own peak RSS (via a
    small helper), and the peak size of the file `watch` if given."""
    with tempfile.TemporaryDirectory(prefix="roder-bench-run-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        helper = subprocess.run(
            [sys.executable, "-I", "-c", MEASURE, str(out), str(err), str(watch or ""), *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        if helper.returncode != 0:
            raise RuntimeError(f"measure helper failed: {tail(helper.stderr)}")
        result = json.loads(helper.stdout)
        return ChildRun(
            returncode=result["rc"],
            seconds=result["seconds"],
            max_rss_mb=rss_mb(result["maxrss"]),
            tree_pss_mb=None if result["tree_kb"] is None else result["tree_kb"] / 1024,
            stdout=out.read_bytes().decode("utf-8", errors="replace"),
            stderr=err.read_bytes().decode("utf-8", errors="replace"),
            cpu_seconds=result["cpu"],
            peak_watch_mb=None if result["watch"] is None else result["watch"] / 1e6,
        )


def median_run(argv: list[str], repeat: int) -> tuple[float, ChildRun]:
    """Median wall time over `repeat` runs, and the last run (for its output)."""
    runs = [run_child(argv) for _ in range(repeat)]
    return statistics.median(r.seconds for r in runs), runs[-1]


def timed_row(name: str, argv: list[str], repeat: int) -> tuple[str, str, str]:
    """A table row: median wall time of argv, or FAILED with the exit code and reason."""
    seconds, last = median_run(argv, repeat)
    if last.returncode != 0:
        return (name, "FAILED", f"exit {last.returncode}: {tail(last.stderr, 1)[:80]}")
    return (name, f"{seconds * 1000:.0f} ms", f"median of {repeat}")


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def stats_argv(base: list[str], store: Path, data_dir: Path, *sub: str) -> list[str]:
    """`… stats <sub…> --json` with the common options after the sub-command."""
    return [*base, "stats", *sub, "--json", "--data-dir", str(data_dir), "--store", str(store)]


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}/s"


def print_table(rows: list[tuple[str, str, str]]) -> None:
    """Three columns: what, value, note."""
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>{vwidth}}  {note}".rstrip())
