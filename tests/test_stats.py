"""`stats …` through the real CLI: JSON shapes, sample numbers, filters, time
zones, sorts, exact percentiles and costs.

The sample store is built once by a real `--once` subprocess; small
hand-written data dirs (real event-line format) pin the edge cases. Queries
run in-process through click's CliRunner.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from conftest import REPO, _env, copy_sample, run_cli

from roder_analyticsd.cli import main
from roder_analyticsd.store import queries
from roder_analyticsd.store.connection import open_store

SUMMARY_KEYS = [
    "sessionCount",
    "turnCount",
    "completedTurnCount",
    "failedTurnCount",
    "interruptedTurnCount",
    "toolCallCount",
    "toolErrorCount",
    "promptTokens",
    "completionTokens",
    "totalTokens",
    "cachedPromptTokens",
    "cacheCreationPromptTokens",
    "mostCalledTool",
    "costUsd",
    "unpricedTurnCount",
]
TOOL_KEYS = [
    "toolName",
    "callCount",
    "errorCount",
    "errorRate",
    "totalDurationMs",
    "avgDurationMs",
    "p50DurationMs",
    "p95DurationMs",
    "p99DurationMs",
]
TOKEN_KEYS = [
    "group",
    "promptTokens",
    "completionTokens",
    "totalTokens",
    "cachedPromptTokens",
    "cacheCreationPromptTokens",
    "turnCount",
    "costUsd",
    "unpricedTurnCount",
]
SESSION_KEYS = [
    "threadId",
    "workspaceLabel",
    "provider",
    "model",
    "turnCount",
    "toolCallCount",
    "toolErrorCount",
    "totalTokens",
    "totalToolDurationMs",
    "firstActivityMs",
    "lastActivityMs",
    "costUsd",
    "unpricedTurnCount",
]
ROLLUP_KEYS = [
    "day",
    "scope",
    "key",
    "turns",
    "toolCalls",
    "toolErrors",
    "toolDurationMs",
    "promptTokens",
    "completionTokens",
    "totalTokens",
    "cachedPromptTokens",
    "cacheCreationPromptTokens",
    "refreshedAtMs",
]


# --- helpers ------------------------------------------------------------------


def cli(*args: str | Path, code: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def stats_json(data_dir: Path, store: Path, *args: str) -> Any:
    out = cli("stats", *args, "--json", "--data-dir", data_dir, "--store", store)
    assert out.endswith("\n") and out.count("\n") == 1  # one JSON document, nothing else
    return json.loads(out)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def nearest_rank(values: list[int], q: int) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) / 100)) - 1]


class DataDir:
    """Writes a Roder data dir in the real on-disk format."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seq = 0
        self.lines: dict[str, list[str]] = defaultdict(list)

    def emit(self, thread: str, kind: str, variant: str, at: int, turn: str | None, **payload):
        self.seq += 1
        body = {"thread_id": thread, **({"turn_id": turn} if turn else {}), **payload}
        body["timestamp"] = iso(at)
        line = {
            "event_id": f"evt-{self.seq}", "seq": self.seq, "timestamp": iso(at), "source": "Core",
            "kind": kind, "thread_id": thread, "turn_id": turn, "event": {variant: body},
        }  # fmt: skip
        self.lines[thread].append(json.dumps(line))

    def metadata(self, thread: str, workspace: str, at: int) -> None:
        path = self.root / "threads" / thread / "metadata.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"thread_id": thread, "title": "secret title", "workspace": workspace,
                 "created_at": iso(at), "updated_at": iso(at)}
            )
        )  # fmt: skip

    def turn(
        self, thread: str, turn: str, start: int, end: int, *, provider: str | None = None,
        model: str | None = None, usage: tuple[int, int, int, int] | None = None,
    ) -> None:  # fmt: skip
        self.emit(thread, "turn.started", "TurnStarted", start, turn)
        if provider or model:
            self.emit(
                thread, "inference.started", "InferenceStarted", start, turn,
                engine_id="e", model={"provider": provider, "model": model},
            )  # fmt: skip
        extra = {}
        if usage:
            p, c, cached, creation = usage
            extra["usage"] = {
                "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "cached_prompt_tokens": cached, "cache_creation_prompt_tokens": creation,
            }  # fmt: skip
        self.emit(
            thread, "turn.completed", "TurnCompleted", end, turn, finish_reason="stop", **extra
        )

    def call(
        self, thread: str, turn: str, tool_id: str, name: str, start: int | None,
        end: int | None, *, error: bool = False,
    ) -> None:  # fmt: skip
        if start is not None:
            self.emit(
                thread, "tool.call_started", "ToolCallStarted", start, turn,
                tool_id=tool_id, tool_name=name,
            )  # fmt: skip
        if end is not None:
            self.emit(
                thread, "tool.call_completed", "ToolCallCompleted", end, turn,
                tool_id=tool_id, tool_name=name, is_error=error, output="secret output",
            )  # fmt: skip

    def build(self) -> tuple[Path, Path]:
        for thread, lines in self.lines.items():
            path = self.root / "threads" / thread / "events.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
        store = self.root.parent / f"{self.root.name}.sqlite3"
        cli("--once", "--data-dir", self.root, "--store", store, "--json")
        return self.root, store


# --- the sample store ------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sample")
    data_dir = copy_sample(base / "roder-data")
    store = base / "usage.sqlite3"
    run_cli("--once", "--best-effort", "--json", "--data-dir", data_dir, "--store", store)
    return data_dir, store


def test_summary_shape_and_sample_numbers(sample, expected):
    got = stats_json(*sample, "summary")
    assert list(got) == SUMMARY_KEYS
    for key, value in expected["summary"].items():
        assert got[key] == value, key
    assert got["mostCalledTool"] == expected["tools"][0]["toolName"]
    # every sample model is priced: the total is the sum of the per-model costs
    per_model = stats_json(*sample, "tokens", "--group", "model")
    assert got["costUsd"] == pytest.approx(sum(r["costUsd"] for r in per_model), abs=1e-6)
    assert got["costUsd"] > 0


def test_a_query_process_never_starts_an_event_loop(sample):
    """`stats` reads in its own thread (store/blocking.py): the same JSON as
    through aiosqlite, and neither asyncio, aiosqlite, anyio nor
    importlib.metadata is imported for it (their imports cost more than a
    query)."""
    data_dir, store = sample
    code = (
        "import sys\n"
        "from roder_analyticsd.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('asyncio', 'aiosqlite', 'anyio', 'importlib.metadata')"
        " if m in sys.modules), file=sys.stderr)\n"
    )
    for args in (("tokens", "--group", "day"), ("summary",), ("tools",)):
        proc = subprocess.run(
            [sys.executable, "-c", code, "stats", *args, "--json", "--data-dir", data_dir,
             "--store", store],
            capture_output=True, text=True, check=True, cwd=REPO, env=_env(),
        )  # fmt: skip
        assert proc.stderr.strip() == "[]", (args, proc.stderr)

        async def through_aiosqlite(args=args):
            conn = await open_store(store, readonly=True)
            try:
                f = queries.Filters(limit=100)
                if args[0] == "tokens":
                    return await queries.token_groups(conn, f, "day")
                if args[0] == "summary":
                    return await queries.summary(conn, f)
                return await queries.tool_stats(conn, f)
            finally:
                await conn.close()

        assert json.loads(proc.stdout) == json.loads(json.dumps(anyio.run(through_aiosqlite)))


def test_tools_shape_and_sample_numbers(sample, expected):
    got = stats_json(*sample, "tools")
    assert all(list(row) == TOOL_KEYS for row in got)
    assert [r["toolName"] for r in got] == [t["toolName"] for t in expected["tools"]]
    for row, want in zip(got, expected["tools"], strict=True):
        for key, value in want.items():
            assert row[key] == value, (want["toolName"], key)
    conn = sqlite3.connect(sample[1])
    for row in got:
        durations = [
            d for (d,) in conn.execute(
                "SELECT duration_ms FROM tool_calls WHERE tool_name = ? AND duration_ms NOT NULL",
                (row["toolName"],),
            )
        ]  # fmt: skip
        assert row["avgDurationMs"] == round(sum(durations) / len(durations), 3)
        assert row["errorRate"] == round(row["errorCount"] / row["callCount"], 6)


def test_tokens_shape_and_sample_groups(sample, expected):
    for group, rows in expected["tokens"].items():
        got = stats_json(*sample, "tokens", "--group", group, "--limit", "1000")
        assert all(list(r) == TOKEN_KEYS for r in got)
        if group in ("day", "week", "month"):  # time groups in time order
            rows = sorted(rows, key=lambda r: r["group"])
        assert [{k: r[k] for k in rows[0]} for r in got] == rows, group
        assert all(isinstance(r["costUsd"], float) for r in got)
        assert all(r["unpricedTurnCount"] == 0 for r in got)  # every sample model is priced


@pytest.mark.parametrize("group", ["day", "week", "month"])
def test_time_groups_are_listed_in_time_order(sample, group):
    data_dir, store = sample
    got = stats_json(data_dir, store, "tokens", "--group", group, "--limit", "1000")
    keys = [r["group"] for r in got]
    assert len(keys) > 1 and keys == sorted(keys)
    assert [r["totalTokens"] for r in got] != sorted(r["totalTokens"] for r in got)[::-1]
    flipped = stats_json(data_dir, store, "tokens", "--group", group, "--order", "desc",
                         "--limit", "1000")  # fmt: skip
    assert flipped == got[::-1]
    assert stats_json(data_dir, store, "tokens", "--group", group, "--order", "asc",
                      "--limit", "1000") == got  # fmt: skip
    # --limit keeps the first rows of the order
    first = stats_json(data_dir, store, "tokens", "--group", group, "--limit", "2")
    assert first == got[:2]
    # the human table lists the same order
    out = cli("stats", "tokens", "--group", group, "--limit", "1000", "--data-dir", data_dir,
              "--store", store)  # fmt: skip
    at = [out.index(key) for key in keys]
    assert at == sorted(at)
    out = cli("stats", "tokens", "--group", group, "--order", "desc", "--limit", "1000",
              "--data-dir", data_dir, "--store", store)  # fmt: skip
    at = [out.index(key) for key in keys]
    assert at == sorted(at, reverse=True)


@pytest.mark.parametrize("group", ["session", "provider", "model", "workspace"])
def test_other_groups_by_tokens_and_order_flips_them(sample, group):
    data_dir, store = sample
    got = stats_json(data_dir, store, "tokens", "--group", group, "--limit", "1000")
    assert got == sorted(got, key=lambda r: (-r["totalTokens"], r["group"]))
    up = stats_json(data_dir, store, "tokens", "--group", group, "--order", "asc",
                    "--limit", "1000")  # fmt: skip
    assert up == sorted(got, key=lambda r: (r["totalTokens"], r["group"]))
    assert stats_json(data_dir, store, "tokens", "--group", group, "--order", "desc",
                      "--limit", "1000") == got  # fmt: skip


def test_an_unknown_order_is_a_usage_error(sample):
    proc = run_cli("stats", "tokens", "--order", "up", "--data-dir", sample[0], "--store",
                   sample[1], check=False)  # fmt: skip
    assert proc.returncode == 2 and "--order" in proc.stderr and "Traceback" not in proc.stderr


def test_sessions_shape_order_and_consistency(sample):
    rows = stats_json(*sample, "sessions", "--limit", "1000")
    assert all(list(r) == SESSION_KEYS for r in rows)
    summary = stats_json(*sample, "summary")
    assert len(rows) == summary["sessionCount"]
    assert sum(r["turnCount"] for r in rows) == summary["turnCount"]
    assert sum(r["toolCallCount"] for r in rows) == summary["toolCallCount"]
    assert sum(r["toolErrorCount"] for r in rows) == summary["toolErrorCount"]
    assert sum(r["totalTokens"] for r in rows) == summary["totalTokens"]
    assert sum(r["costUsd"] for r in rows) == pytest.approx(summary["costUsd"], abs=1e-6)
    assert summary["unpricedTurnCount"] == 0 and all(r["unpricedTurnCount"] == 0 for r in rows)
    last = [r["lastActivityMs"] for r in rows]
    assert last == sorted(last, reverse=True)  # default: most recent first
    by_session = {r["group"]: r for r in stats_json(*sample, "tokens", "--group", "session")}
    for r in rows:
        if r["threadId"] in by_session:
            assert by_session[r["threadId"]]["totalTokens"] == r["totalTokens"]
            assert by_session[r["threadId"]]["costUsd"] == r["costUsd"]
        assert r["firstActivityMs"] <= r["lastActivityMs"]
    by_tokens = stats_json(*sample, "sessions", "--sort", "tokens", "--limit", "3")
    assert [r["threadId"] for r in by_tokens] == [
        r["threadId"] for r in sorted(rows, key=lambda r: (-r["totalTokens"], r["threadId"]))[:3]
    ]
    by_cost = stats_json(*sample, "sessions", "--sort", "cost", "--limit", "1000")
    assert [r["costUsd"] for r in by_cost] == sorted((r["costUsd"] for r in rows), reverse=True)


def test_filters_reach_tool_calls_through_turns_and_sessions(sample):
    data_dir, store = sample
    conn = sqlite3.connect(store)
    provider, model = conn.execute(
        "SELECT provider, model FROM turns WHERE provider IS NOT NULL LIMIT 1"
    ).fetchone()
    label, key = conn.execute(
        "SELECT workspace_label, workspace_key FROM sessions WHERE workspace_label IS NOT NULL"
    ).fetchone()
    thread = conn.execute("SELECT thread_id FROM tool_calls LIMIT 1").fetchone()[0]
    cases = [
        (["--provider", provider], "JOIN turns t USING (thread_id, turn_id) WHERE t.provider = ?",
         [provider]),
        (["--model", model], "JOIN turns t USING (thread_id, turn_id) WHERE t.model = ?", [model]),
        (["--workspace", label], "JOIN sessions s USING (thread_id) WHERE s.workspace_label = ?",
         [label]),
        (["--workspace", key], "JOIN sessions s USING (thread_id) WHERE s.workspace_key = ?",
         [key]),
        (["--thread", thread], "WHERE c.thread_id = ?", [thread]),
    ]  # fmt: skip
    for args, where, params in cases:
        want: dict[str, list[int | None]] = defaultdict(list)
        for name, duration in conn.execute(
            f"SELECT c.tool_name, c.duration_ms FROM tool_calls c {where}", params
        ):
            want[name].append(duration)
        got = stats_json(data_dir, store, "tools", *args, "--limit", "1000")
        assert {r["toolName"]: r["callCount"] for r in got} == {
            n: len(d) for n, d in want.items()
        }, args
        for r in got:
            timed = [d for d in want[r["toolName"]] if d is not None]
            assert r["p50DurationMs"] == nearest_rank(timed, 50), args
            assert r["p99DurationMs"] == nearest_rank(timed, 99), args
        summary = stats_json(data_dir, store, "summary", *args)
        assert summary["toolCallCount"] == sum(len(d) for d in want.values()), args
    # a token row is filtered by its turn's model
    tokens = stats_json(data_dir, store, "tokens", "--group", "model", "--model", model)
    assert [r["group"] for r in tokens] == [model]


def test_both_percentile_strategies_agree(sample, monkeypatch):
    """Index walks (wide windows) and the sorted stream (narrow windows,
    turn/session filters) give the same exact nearest-rank numbers."""
    data_dir, store = sample
    conn = sqlite3.connect(store)
    lo, hi = conn.execute("SELECT min(at_ms), max(at_ms) FROM tool_calls").fetchone()
    mid = (lo + hi) // 2
    want: dict[str, list[int]] = defaultdict(list)
    for name, d in conn.execute(
        "SELECT tool_name, duration_ms FROM tool_calls WHERE at_ms >= ? AND duration_ms NOT NULL",
        (mid,),
    ):
        want[name].append(d)
    args = ["tools", "--since", iso(mid), "--sort", "p95"]
    results = []
    for cap in (0, 10**9):  # 0: never narrow (index walks); huge: always narrow
        monkeypatch.setattr(queries, "NARROW_CALLS", cap)
        results.append(stats_json(data_dir, store, *args))
    assert results[0] == results[1]
    for row in results[0]:
        for q in (50, 95, 99):
            assert row[f"p{q}DurationMs"] == nearest_rank(want[row["toolName"]], q)


def test_human_output_is_a_table_with_totals(sample):
    data_dir, store = sample
    out = cli("stats", "tools", "--data-dir", data_dir, "--store", store)
    lines = out.splitlines()
    assert "Calls" in lines[0] and "p95" in lines[0]
    total = next(line for line in lines if line.startswith("Total"))
    assert "894" in total  # every call of the sample, 8 tools
    out = cli("stats", "tokens", "--group", "model", "--data-dir", data_dir, "--store", store)
    assert "1,292,054" in out and "4,137,540" in out  # thousands separators, totals row
    assert "$" in out
    out = cli("stats", "summary", "--data-dir", data_dir, "--store", store)
    assert "3,909,852" in out and "$" in out


def test_unused_keeps_the_given_order(sample):
    data_dir, store = sample
    got = stats_json(data_dir, store, "unused", "--registered", "zeta,shell,alpha,grep,zeta")
    assert got == ["zeta", "alpha"]
    # nothing was called before the sample's first day
    got = stats_json(
        data_dir, store, "unused", "--registered", "shell,grep", "--until", "2000-01-01"
    )
    assert got == ["shell", "grep"]


def test_rollups_are_daily_rows_with_camel_case_keys(sample):
    data_dir, store = sample
    rows = stats_json(*sample, "rollups", "--limit", "1000")
    assert rows and all(list(r) == ROLLUP_KEYS for r in rows)
    days = [r["day"] for r in rows]
    assert days == sorted(days, reverse=True)
    all_rows = [r for r in rows if r["scope"] == "all"]
    assert sum(r["toolCalls"] for r in all_rows) == 894
    shell = stats_json(data_dir, store, "rollups", "--tool", "shell", "--limit", "1000")
    assert {r["key"] for r in shell} == {"shell"}
    assert sum(r["toolCalls"] for r in shell) == 123
    day = days[-1]
    one = stats_json(data_dir, store, "rollups", "--since", day, "--until", day + "T23:59:59Z")
    assert {r["day"] for r in one} == {day}
    model = stats_json(data_dir, store, "rollups", "--provider", "openai", "--limit", "1000")
    assert model and all(r["key"].startswith("openai/") for r in model)


# --- hand-written data dirs ---------------------------------------------------------

DAY = 86_400_000
MIDNIGHT = ms("2026-03-10T00:00:00Z")


@pytest.fixture(scope="module")
def edges(tmp_path_factory) -> tuple[Path, Path]:
    """Calls and token rows on both sides of UTC midnight 2026-03-10."""
    d = DataDir(tmp_path_factory.mktemp("edges") / "roder")
    d.metadata("thr-a", "/work/a", MIDNIGHT - DAY)
    # turn 1 ends 1 ms before midnight, turn 2 exactly at midnight
    d.turn("thr-a", "t1", MIDNIGHT - 60_000, MIDNIGHT - 1, provider="openai", model="gpt-5",
           usage=(1000, 100, 0, 0))  # fmt: skip
    d.turn("thr-a", "t2", MIDNIGHT - 1000, MIDNIGHT, provider="openai", model="gpt-5",
           usage=(2000, 200, 0, 0))  # fmt: skip
    # starts before midnight, completes after: belongs to 03-09
    d.call("thr-a", "t1", "c1", "shell", MIDNIGHT - 1, MIDNIGHT + 5)
    # exactly at midnight: 03-10
    d.call("thr-a", "t2", "c2", "grep", MIDNIGHT, MIDNIGHT + 7)
    # no start: belongs to its completion, 03-10
    d.call("thr-a", "t2", "c3", "read_file", None, MIDNIGHT + 10)
    # a thread with no metadata and a turn with no model: (unknown) groups
    d.turn("thr-b", "t1", MIDNIGHT + 3_600_000, MIDNIGHT + 3_600_500, usage=(50, 5, 0, 0))
    return d.build()


def test_windows_split_exactly_at_midnight(edges):
    data_dir, store = edges
    before = stats_json(data_dir, store, "tools", "--until", "2026-03-10")
    after = stats_json(data_dir, store, "tools", "--since", "2026-03-10")
    assert [r["toolName"] for r in before] == ["shell"]
    assert sorted(r["toolName"] for r in after) == ["grep", "read_file"]
    # RFC 3339 bounds: since inclusive, until exclusive
    exact = stats_json(data_dir, store, "tools", "--since", iso(MIDNIGHT), "--until",
                       iso(MIDNIGHT + 1))  # fmt: skip
    assert [r["toolName"] for r in exact] == ["grep"]
    tok_before = stats_json(data_dir, store, "tokens", "--until", "2026-03-10")
    assert [(r["group"], r["totalTokens"]) for r in tok_before] == [("2026-03-09", 1100)]
    tok_after = stats_json(data_dir, store, "tokens", "--since", "2026-03-10")
    assert [(r["group"], r["totalTokens"]) for r in tok_after] == [("2026-03-10", 2255)]
    s = stats_json(data_dir, store, "summary", "--since", "2026-03-10")
    assert (s["toolCallCount"], s["totalTokens"]) == (2, 2255)


def test_unknown_dimensions_group_as_unknown(edges):
    data_dir, store = edges
    for group, known in (("provider", "openai"), ("model", "gpt-5"), ("workspace", "/work/a")):
        rows = stats_json(data_dir, store, "tokens", "--group", group)
        assert [r["group"] for r in rows] == [known, "(unknown)"], group
        assert rows[1]["costUsd"] is None  # no model: no price, never 0
        assert rows[1]["unpricedTurnCount"] == 1 and rows[0]["unpricedTurnCount"] == 0
    sessions = stats_json(data_dir, store, "tokens", "--group", "session")
    assert [r["group"] for r in sessions] == ["thr-a", "thr-b"]


def test_timezone_moves_day_boundaries(edges):
    data_dir, store = edges
    # UTC+05:30: 23:59:59.999Z and 00:00Z are both 03-10 in Kolkata
    kolkata = stats_json(data_dir, store, "tokens", "--timezone", "Asia/Kolkata")
    assert [(r["group"], r["totalTokens"]) for r in kolkata] == [("2026-03-10", 3355)]
    # PDT (UTC-07:00 since 2026-03-08): all of them are still 03-09 in Los Angeles
    la = stats_json(data_dir, store, "tokens", "--timezone", "America/Los_Angeles")
    assert [(r["group"], r["totalTokens"]) for r in la] == [("2026-03-09", 3355)]
    # a date bound is local midnight in --timezone
    since = stats_json(data_dir, store, "tools", "--since", "2026-03-10", "--timezone",
                       "Asia/Kolkata")  # fmt: skip
    assert sorted(r["toolName"] for r in since) == ["grep", "read_file", "shell"]


@pytest.fixture(scope="module")
def zones(tmp_path_factory) -> tuple[Path, Path]:
    """One token row per hour around the 2026 EU DST switch and a month end."""
    d = DataDir(tmp_path_factory.mktemp("zones") / "roder")
    start = ms("2026-03-28T20:00:00Z")
    for h in range(36):
        at = start + h * 3_600_000
        d.turn("thr-z", f"t{h}", at - 10, at, provider="openai", model="gpt-5",
               usage=(100 + h, 1, 0, 0))  # fmt: skip
    end = ms("2026-03-31T22:30:00Z")  # 2026-04-01 00:30 in Berlin (CEST)
    d.turn("thr-z", "month", end - 10, end, provider="openai", model="gpt-5", usage=(7, 1, 0, 0))
    return d.build()


@pytest.mark.parametrize(
    ("tz", "group"),
    [
        ("Europe/Berlin", "day"), ("Europe/Berlin", "week"), ("Europe/Berlin", "month"),
        ("Asia/Kathmandu", "day"), ("America/St_Johns", "day"), ("UTC", "week"),
    ],
)  # fmt: skip
def test_rebucketing_is_exact_in_any_zone(zones, tz, group):
    from zoneinfo import ZoneInfo

    data_dir, store = zones
    conn = sqlite3.connect(store)
    want: dict[str, int] = defaultdict(int)
    for at, total in conn.execute("SELECT recorded_at_ms, total_tokens FROM token_usage"):
        local = datetime.fromtimestamp(at / 1000, ZoneInfo(tz))
        if group == "day":
            key = local.date().isoformat()
        elif group == "month":
            key = local.strftime("%Y-%m")
        else:
            year, week, _ = local.isocalendar()
            key = f"{year:04d}-W{week:02d}"
        want[key] += total
    got = stats_json(data_dir, store, "tokens", "--group", group, "--timezone", tz)
    assert {r["group"]: r["totalTokens"] for r in got} == dict(want)
    assert [r["group"] for r in got] == sorted(want)  # time order


@pytest.fixture(scope="module")
def priced(tmp_path_factory) -> tuple[Path, Path]:
    d = DataDir(tmp_path_factory.mktemp("priced") / "roder")
    at = ms("2026-05-01T12:00:00Z")
    d.turn("thr-p", "t1", at - 1000, at, provider="openai", model="gpt-5",
           usage=(120_000, 3_000, 80_000, 5_000))  # fmt: skip
    d.turn("thr-p", "t2", at + 1000, at + 2000, provider="anthropic", model="claude-sonnet-4-5",
           usage=(50_000, 2_000, 20_000, 10_000))  # fmt: skip
    d.turn("thr-q", "t1", at, at + 10, provider="acme", model="no-such-model-xyz",
           usage=(10_000, 100, 0, 0))  # fmt: skip
    return d.build()


def _genai_usd(provider: str, model: str, p: int, c: int, cached: int, creation: int, at: int):
    from genai_prices import Usage, calc_price

    usage = Usage(
        input_tokens=p, output_tokens=c, cache_read_tokens=cached, cache_write_tokens=creation
    )
    when = datetime.fromtimestamp(at / 1000, UTC)
    price = calc_price(usage, model, provider_id=provider, genai_request_timestamp=when)
    return round(price.total_price, 6)


def test_costs_sum_what_is_priced_and_count_what_is_not(priced):
    data_dir, store = priced
    at = ms("2026-05-01T12:00:00Z")
    gpt5 = _genai_usd("openai", "gpt-5", 120_000, 3_000, 80_000, 5_000, at)
    claude = _genai_usd("anthropic", "claude-sonnet-4-5", 50_000, 2_000, 20_000, 10_000, at + 2000)
    both = float(gpt5 + claude)
    assert gpt5 > 0 and claude > 0
    rows = {r["group"]: r for r in stats_json(data_dir, store, "tokens", "--group", "model")}
    assert (rows["gpt-5"]["costUsd"], rows["gpt-5"]["unpricedTurnCount"]) == (float(gpt5), 0)
    assert rows["claude-sonnet-4-5"]["costUsd"] == float(claude)
    # nothing priced in the group: null, never 0
    assert rows["no-such-model-xyz"]["costUsd"] is None
    assert rows["no-such-model-xyz"]["unpricedTurnCount"] == 1
    # one unpriced model no longer blanks the totals: the sum over priced rows, and a count
    summary = stats_json(data_dir, store, "summary")
    assert (summary["costUsd"], summary["unpricedTurnCount"]) == (both, 1)
    day = stats_json(data_dir, store, "tokens")
    assert [(r["costUsd"], r["unpricedTurnCount"], r["turnCount"]) for r in day] == [(both, 1, 3)]
    sessions = {r["threadId"]: r for r in stats_json(data_dir, store, "sessions")}
    assert (sessions["thr-p"]["costUsd"], sessions["thr-p"]["unpricedTurnCount"]) == (both, 0)
    assert (sessions["thr-q"]["costUsd"], sessions["thr-q"]["unpricedTurnCount"]) == (None, 1)
    by_cost = stats_json(data_dir, store, "sessions", "--sort", "cost")
    assert [r["threadId"] for r in by_cost] == ["thr-p", "thr-q"]  # null last
    known = stats_json(data_dir, store, "summary", "--thread", "thr-p")
    assert (known["costUsd"], known["unpricedTurnCount"]) == (both, 0)
    only_unknown = stats_json(data_dir, store, "summary", "--thread", "thr-q")
    assert (only_unknown["costUsd"], only_unknown["unpricedTurnCount"]) == (None, 1)
    nothing = stats_json(data_dir, store, "summary", "--thread", "no-such-thread")
    assert (nothing["costUsd"], nothing["unpricedTurnCount"]) == (0.0, 0)  # knowingly 0


def test_human_tables_mark_a_partial_sum(priced):
    data_dir, store = priced
    where = ("--data-dir", data_dir, "--store", store)
    total = stats_json(data_dir, store, "summary")["costUsd"]
    shown = f"${total:,.2f}*"
    out = cli("stats", "tokens", "--group", "model", *where)
    total_line = next(line for line in out.splitlines() if line.strip().startswith("Total"))
    assert shown in total_line  # the total leaves out the unpriced model, and says so
    assert "—" in out and "* partial" in out and "1 turn with no known price" in out
    out = cli("stats", "tokens", *where)  # one day: a partial row
    assert out.count(shown) == 2 and "* partial" in out
    out = cli("stats", "sessions", *where)
    assert shown in out and "* partial" in out and "—" in out
    out = cli("stats", "summary", *where)
    assert shown in out and "1 turn with no known price" in out
    # fully priced: no mark, no footnote
    out = cli("stats", "tokens", "--thread", "thr-p", *where)
    assert "*" not in out and "partial" not in out


@pytest.fixture(scope="module")
def ranked(tmp_path_factory) -> tuple[Path, Path]:
    """Tools with known durations, counts and errors for sorts and percentiles."""
    d = DataDir(tmp_path_factory.mktemp("ranked") / "roder")
    t0 = ms("2026-06-01T00:00:00Z")
    d.turn("thr-r", "t1", t0, t0 + DAY // 2, provider="openai", model="gpt-5")
    plan = {
        # name: (durations, errors, untimed calls)
        "alpha": ([5, 1, 4, 2, 3], 0, 0),
        "beta": (list(range(100, 0, -1)), 2, 1),  # 100 timed + 1 completion-only
        "gamma": ([1000, 2000], 2, 0),
        "delta": ([], 0, 3),  # never timed
        "eps": ([7] * 5, 1, 0),
    }
    n = 0
    for name, (durations, errors, untimed) in plan.items():
        for i, dur in enumerate(durations):
            n += 1
            start = t0 + n * 1000
            d.call("thr-r", "t1", f"{name}-{i}", name, start, start + dur, error=i < errors)
        for i in range(untimed):
            n += 1
            d.call("thr-r", "t1", f"{name}-u{i}", name, None, t0 + n * 1000)
    return d.build()


def test_tool_sorts_limits_and_exact_percentiles(ranked):
    data_dir, store = ranked
    rows = stats_json(data_dir, store, "tools")
    assert [r["toolName"] for r in rows] == ["beta", "alpha", "eps", "delta", "gamma"]
    beta = rows[0]
    assert (beta["callCount"], beta["errorCount"], beta["totalDurationMs"]) == (101, 2, 5050)
    assert beta["avgDurationMs"] == 50.5
    assert (beta["p50DurationMs"], beta["p95DurationMs"], beta["p99DurationMs"]) == (50, 95, 99)
    alpha = rows[1]
    assert (alpha["p50DurationMs"], alpha["p95DurationMs"], alpha["p99DurationMs"]) == (3, 5, 5)
    delta = next(r for r in rows if r["toolName"] == "delta")
    assert delta["avgDurationMs"] is None and delta["p50DurationMs"] is None
    assert delta["totalDurationMs"] == 0
    gamma = rows[-1]
    assert gamma["errorRate"] == 1.0 and gamma["p50DurationMs"] == 1000

    def order(*args: str) -> list[str]:
        return [r["toolName"] for r in stats_json(data_dir, store, "tools", *args)]

    assert order("--sort", "p95") == ["gamma", "beta", "eps", "alpha", "delta"]
    assert order("--sort", "errors") == ["gamma", "beta", "eps", "alpha", "delta"]
    assert order("--sort", "underused") == ["gamma", "delta", "alpha", "eps", "beta"]
    assert order("--min-calls", "5") == ["beta", "alpha", "eps"]
    assert order("--sort", "underused", "--limit", "2") == ["gamma", "delta"]
    assert order("--tool", "eps") == ["eps"]
