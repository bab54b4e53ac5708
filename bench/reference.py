"""Naive, obviously-correct reference projection of a Roder data dir.

Reads every ``threads/*/events.jsonl`` and ``archived_threads/*/events.jsonl``
with the stdlib ``json`` module and applies the projection rules of
``roder-events.md`` literally, in memory. It is slow and memory-hungry on
purpose: it is the oracle the daemon is checked against, not a competitor.

    python bench/reference.py DATA_DIR            # prints {"summary":…, "tools":…}
    python bench/reference.py --selftest [DIR]    # checks the shared sample fixture
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

TERMINAL = {
    "TurnCompleted": "completed",
    "TurnFailed": "failed",
    "TurnInterrupted": "interrupted",
    "TurnDeadlineExceeded": "timeout",
}
USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_prompt_tokens",
    "cache_creation_prompt_tokens",
)
TOOL_KEYS = (
    "toolName",
    "callCount",
    "errorCount",
    "totalDurationMs",
    "p50DurationMs",
    "p95DurationMs",
    "p99DurationMs",
)
TS_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def to_ms(text: str) -> int:
    """RFC 3339 (up to 9 fractional digits, any offset) -> epoch ms, floored."""
    m = TS_RE.match(text)
    if m is None:
        raise ValueError(f"bad timestamp {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    offset = timedelta(0)
    if m.group(9):
        offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        if m.group(9) == "-":
            offset = -offset
    moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    millis = int(((m.group(7) or "") + "000")[:3])
    return int(moment.timestamp()) * 1000 + millis


def utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%d")


@dataclass
class ToolCall:
    tool_name: str | None = None
    started_ms: int | None = None
    completed_ms: int | None = None
    is_error: bool = False


@dataclass
class Projection:
    sessions: set[str] = field(default_factory=set)
    turns: dict[tuple[str, str], str] = field(default_factory=dict)
    tool_calls: dict[tuple[str, str, str], ToolCall] = field(default_factory=dict)
    token_usage: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    event_lines: int = 0
    corrupt_lines: int = 0
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def event_files(data_dir: Path) -> list[Path]:
    files: list[Path] = []
    for top in ("threads", "archived_threads"):
        files.extend(sorted((data_dir / top).glob("*/events.jsonl")))
    return files


def complete_lines(path: Path) -> list[str]:
    """Every line that has its newline; an unfinished last line is dropped."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    return lines[:-1]


def parse_envelope(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    event = obj.get("event")
    if not isinstance(event, dict) or len(event) != 1:
        return None
    if not isinstance(obj.get("kind"), str) or not isinstance(obj.get("event_id"), str):
        return None
    (payload,) = event.values()
    if not isinstance(payload, dict):
        return None
    return obj


def touch_turn(proj: Projection, thread_id: str, turn_id: str) -> None:
    proj.turns.setdefault((thread_id, turn_id), "running")


def apply_terminal(proj: Projection, variant: str, p: dict[str, Any]) -> None:
    key = (p["thread_id"], p["turn_id"])
    proj.turns[key] = TERMINAL[variant]
    usage = p.get("usage")
    if variant not in ("TurnCompleted", "TurnFailed") or not usage:
        return
    row = {k: int(usage.get(k) or 0) for k in USAGE_KEYS}
    if row["prompt_tokens"] == 0 and row["completion_tokens"] == 0 and row["total_tokens"] == 0:
        return
    row["recorded_at_ms"] = to_ms(p["timestamp"])
    proj.token_usage[key] = row


def apply_tool(proj: Projection, variant: str, p: dict[str, Any]) -> None:
    key = (p["thread_id"], p["turn_id"], p["tool_id"])
    call = proj.tool_calls.setdefault(key, ToolCall())
    if p.get("tool_name") is not None:
        call.tool_name = p["tool_name"]
    if variant == "ToolCallStarted":
        call.started_ms = to_ms(p["timestamp"])
    else:
        call.completed_ms = to_ms(p["timestamp"])
        call.is_error = bool(p.get("is_error", False))


def apply_event(proj: Projection, obj: dict[str, Any]) -> None:
    ((variant, p),) = obj["event"].items()
    proj.kinds[obj["kind"]] += 1
    if variant in ("ThreadCreated", "InferenceStarted"):
        proj.sessions.add(p["thread_id"])
    if variant == "TurnStarted":
        touch_turn(proj, p["thread_id"], p["turn_id"])
    elif variant in TERMINAL:
        apply_terminal(proj, variant, p)
    elif variant in ("ToolCallStarted", "ToolCallCompleted"):
        apply_tool(proj, variant, p)


def read_metadata(proj: Projection, thread_dir: Path) -> None:
    meta = thread_dir / "metadata.json"
    if not meta.is_file():
        return
    try:
        data = json.loads(meta.read_text())
    except ValueError:
        return
    if isinstance(data, dict) and isinstance(data.get("thread_id"), str):
        proj.sessions.add(data["thread_id"])


def project(data_dir: Path) -> Projection:
    proj = Projection()
    for path in event_files(data_dir):
        read_metadata(proj, path.parent)
        for line in complete_lines(path):
            if not line.strip():
                continue
            obj = parse_envelope(line)
            if obj is None:
                proj.corrupt_lines += 1
                continue
            proj.event_lines += 1
            apply_event(proj, obj)
    return proj


def nearest_rank(sorted_values: list[int], q: float) -> int | None:
    if not sorted_values:
        return None
    index = max(math.ceil(q * len(sorted_values)) - 1, 0)
    return sorted_values[index]


def summary(proj: Projection) -> dict[str, int]:
    statuses = list(proj.turns.values())
    usage = proj.token_usage.values()
    return {
        "sessionCount": len(proj.sessions),
        "turnCount": len(statuses),
        "completedTurnCount": statuses.count("completed"),
        "failedTurnCount": statuses.count("failed"),
        "interruptedTurnCount": statuses.count("interrupted"),
        "toolCallCount": len(proj.tool_calls),
        "toolErrorCount": sum(1 for c in proj.tool_calls.values() if c.is_error),
        "promptTokens": sum(u["prompt_tokens"] for u in usage),
        "completionTokens": sum(u["completion_tokens"] for u in usage),
        "totalTokens": sum(u["total_tokens"] for u in usage),
        "cachedPromptTokens": sum(u["cached_prompt_tokens"] for u in usage),
        "cacheCreationPromptTokens": sum(u["cache_creation_prompt_tokens"] for u in usage),
    }


def tools(proj: Projection) -> list[dict[str, Any]]:
    calls: dict[str | None, list[ToolCall]] = defaultdict(list)
    for call in proj.tool_calls.values():
        calls[call.tool_name].append(call)
    rows = []
    for name, group in calls.items():
        durations = sorted(
            c.completed_ms - c.started_ms
            for c in group
            if c.started_ms is not None and c.completed_ms is not None
        )
        rows.append(
            {
                "toolName": name,
                "callCount": len(group),
                "errorCount": sum(1 for c in group if c.is_error),
                "totalDurationMs": sum(durations),
                "p50DurationMs": nearest_rank(durations, 0.50),
                "p95DurationMs": nearest_rank(durations, 0.95),
                "p99DurationMs": nearest_rank(durations, 0.99),
            }
        )
    rows.sort(key=lambda r: (-r["callCount"], r["toolName"] or ""))
    return rows


def tokens_by_day(proj: Projection) -> list[dict[str, Any]]:
    days: dict[str, dict[str, int]] = {}
    for u in proj.token_usage.values():
        day = days.setdefault(
            utc_day(u["recorded_at_ms"]), {k: 0 for k in (*USAGE_KEYS, "turnCount")}
        )
        for k in USAGE_KEYS:
            day[k] += u[k]
        day["turnCount"] += 1
    rows = [
        {
            "group": name,
            "promptTokens": d["prompt_tokens"],
            "completionTokens": d["completion_tokens"],
            "totalTokens": d["total_tokens"],
            "cachedPromptTokens": d["cached_prompt_tokens"],
            "cacheCreationPromptTokens": d["cache_creation_prompt_tokens"],
            "turnCount": d["turnCount"],
        }
        for name, d in days.items()
    ]
    rows.sort(key=lambda r: (-r["totalTokens"], r["group"]))
    return rows


def compute(data_dir: Path) -> dict[str, Any]:
    proj = project(data_dir)
    statuses: dict[str, int] = defaultdict(int)
    for status in proj.turns.values():
        statuses[status] += 1
    return {
        "summary": summary(proj),
        "tools": tools(proj),
        "tokensByDay": tokens_by_day(proj),
        "turnStatus": dict(sorted(statuses.items())),
        "eventLines": proj.event_lines,
        "corruptLines": proj.corrupt_lines,
        "kinds": dict(sorted(proj.kinds.items())),
    }


def pick_tools(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool fields the reference fixes (the rest are derived or rounded)."""
    return [{k: row.get(k) for k in TOOL_KEYS} for row in rows]


def pick_summary(obj: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    return {k: obj.get(k) for k in keys}


def diff_lines(name: str, want: Any, got: Any, limit: int = 20) -> list[str]:
    """One line per differing leaf (`tools[3].p99DurationMs: want 2935, got 2933`)."""
    out: list[str] = []
    collect_diffs(name, want, got, out)
    if len(out) > limit:
        out = [*out[:limit], f"{name}: … {len(out) - limit} more differences"]
    return out


def collect_diffs(path: str, want: Any, got: Any, out: list[str]) -> None:
    if want == got:
        return
    if isinstance(want, dict) and isinstance(got, dict):
        for key in [*want, *(k for k in got if k not in want)]:
            collect_diffs(f"{path}.{key}", want.get(key), got.get(key), out)
        return
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            out.append(f"{path}: want {len(want)} rows, got {len(got)}")
        for index, (w, g) in enumerate(zip(want, got, strict=False)):
            label = w.get("toolName", index) if isinstance(w, dict) else index
            collect_diffs(f"{path}[{label}]", w, g, out)
        return
    want_text = json.dumps(want, sort_keys=True)
    out.append(f"{path}: want {want_text}, got {json.dumps(got, sort_keys=True)}")


def selftest(sample_dir: Path) -> int:
    """Reproduce expected.json (summary, tools, tokens by day, counts) on the fixture."""
    expected = json.loads((sample_dir / "expected.json").read_text())
    got = compute(sample_dir / "roder-data")
    problems: list[str] = []
    keys = list(expected["summary"])
    problems += diff_lines("summary", expected["summary"], pick_summary(got["summary"], keys))
    problems += diff_lines("tools", pick_tools(expected["tools"]), pick_tools(got["tools"]))
    problems += diff_lines("tokens.day", expected["tokens"]["day"], got["tokensByDay"])
    problems += diff_lines("turnStatus", expected["turnStatus"], got["turnStatus"])
    problems += diff_lines("eventLines", expected["eventLines"], got["eventLines"])
    problems += diff_lines("corruptLines", expected["corruptLines"], got["corruptLines"])
    for line in problems:
        print(line)
    print("selftest:", "FAIL" if problems else "OK (summary, tools, tokens.day, turnStatus, lines)")
    return 1 if problems else 0


def find_samples() -> Path:
    here = Path(__file__).resolve()
    for base in (here.parent, *here.parents):
        candidate = base / "shared" / "samples"
        if (candidate / "expected.json").is_file():
            return candidate
    raise SystemExit("cannot find shared/samples; pass the samples dir to --selftest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", type=Path, help="Roder data dir")
    parser.add_argument(
        "--selftest",
        action="store_true",
        help="check against expected.json; DATA_DIR is then the samples dir (optional)",
    )
    args = parser.parse_args(argv)
    if args.selftest:
        return selftest(args.data_dir or find_samples())
    if args.data_dir is None:
        parser.error("DATA_DIR is required")
    result = compute(args.data_dir)
    json.dump({k: result[k] for k in ("summary", "tools")}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
