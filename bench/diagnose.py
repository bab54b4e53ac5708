"""Row-level diff of a store against the reference projection, to explain a MISMATCH.

    python bench/diagnose.py DATA_DIR STORE [--examples 5]

Compares the public tables `turns` (status), `tool_calls` (tool_name,
started_at_ms, completed_at_ms, is_error) and `token_usage` (the five counters,
recorded_at_ms) key by key with bench/reference.py, and prints the number of
differing keys per table with a few examples (want = reference, got = store).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

import reference

Key = tuple[str, ...]


def store_turns(conn: sqlite3.Connection) -> dict[Key, Any]:
    return {(t, u): s for t, u, s in conn.execute("SELECT thread_id, turn_id, status FROM turns")}


def store_tools(conn: sqlite3.Connection) -> dict[Key, Any]:
    sql = (
        "SELECT thread_id, turn_id, tool_id, tool_name, started_at_ms, completed_at_ms, "
        "is_error FROM tool_calls"
    )
    return {(t, u, i): (n, s, c, bool(e)) for t, u, i, n, s, c, e in conn.execute(sql)}


def store_usage(conn: sqlite3.Connection) -> dict[Key, Any]:
    cols = ", ".join((*reference.USAGE_KEYS, "recorded_at_ms"))
    sql = f"SELECT thread_id, turn_id, {cols} FROM token_usage"
    return {(row[0], row[1]): tuple(row[2:]) for row in conn.execute(sql)}


def reference_tables(proj: reference.Projection) -> dict[str, dict[Key, Any]]:
    tools = {
        k: (c.tool_name, c.started_ms, c.completed_ms, c.is_error)
        for k, c in proj.tool_calls.items()
    }
    usage = {
        k: tuple(u[c] for c in (*reference.USAGE_KEYS, "recorded_at_ms"))
        for k, u in proj.token_usage.items()
    }
    return {"turns": dict(proj.turns), "tool_calls": tools, "token_usage": usage}


def compare(name: str, want: dict[Key, Any], got: dict[Key, Any], examples: int) -> int:
    keys = sorted(set(want) | set(got))
    bad = [k for k in keys if want.get(k) != got.get(k)]
    print(f"{name}: {len(want):,} reference rows, {len(got):,} store rows, {len(bad):,} differ")
    for key in bad[:examples]:
        print(f"  {key}: want {want.get(key)!r}  got {got.get(key)!r}")
    return len(bad)


def diagnose(data_dir: Path, store: Path, examples: int = 5) -> int:
    proj = reference.project(data_dir)
    want = reference_tables(proj)
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    got = {
        "turns": store_turns(conn),
        "tool_calls": store_tools(conn),
        "token_usage": store_usage(conn),
    }
    conn.close()
    return sum(compare(name, want[name], got[name], examples) for name in want)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Row-level diff of a store vs the reference.")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("store", type=Path)
    parser.add_argument("--examples", type=int, default=5)
    args = parser.parse_args(argv)
    return 1 if diagnose(args.data_dir, args.store, args.examples) else 0


if __name__ == "__main__":
    sys.exit(main())
