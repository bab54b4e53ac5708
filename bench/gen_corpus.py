"""Deterministic generator of large Roder data dirs, for benchmarks and soak tests.

    python bench/gen_corpus.py OUT_DIR --events 1000000 [--seed 7]

Writes ``OUT_DIR/threads/<thread-id>/events.jsonl`` (+ ``metadata.json``), some
``archived_threads/``, ``threads/runtime/events.jsonl`` (runtime, automation and
memory events, ending with a ``{}`` sentinel), an extra ``threads/extensions``
dir without metadata, subagent threads (``<parent>-sub``, no metadata) and an
automation thread, in the exact envelope/payload shapes of the shared sample.

Also planted on purpose (see bench/README.md): blank lines, corrupt lines,
exact duplicate lines (replays), non-UTC offsets and 3/6/9-digit fractions,
streamed ``Usage`` inference events (never to be counted), bodies with escapes,
tool completions without a start, starts without a completion, terminal usage
that is missing, all zero or lacks the cached fields, ``is_error`` omitted,
threads opened by ``ThreadLoaded`` instead of ``ThreadCreated``, threads
without ``metadata.json``, unknown variants, and a few threads whose last line
is half-written (no newline: not an event yet).

Output is a pure function of (--events, --seed). Memory stays bounded: lines are
streamed to their file as they are produced.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

VERSION = 2  # bump whenever the output for a given (--events, --seed) changes
EPOCH_START_S = 1786752000  # 2026-08-15T00:00:00Z
SPAN_DAYS = 90
NS = 1_000_000_000
MS = 1_000_000

MODELS = [
    ("anthropic", "claude-sonnet-4-5"),
    ("openai", "gpt-5"),
    ("openai", "gpt-5-mini"),
    ("gemini", "gemini-2.5-pro"),
    ("deepseek", "deepseek-chat"),
]
CORE_TOOLS = [
    "shell",
    "read_file",
    "write_file",
    "grep",
    "apply_patch",
    "list_dir",
    "web_search",
    "mcp__github__search",
]
EXTRA_TOOLS = [
    f"mcp__{server}__{verb}"
    for server in ("jira", "slack", "sentry", "db")
    for verb in ("get", "list", "search", "create", "update")
]
WORKSPACES = ["webapp", "infra", "notes", "roder", "api", "mobile", "data", "docs"]
OFFSETS_MIN = [300, -300, -420, 120, 540, 330, -180, 60]
ERROR_KINDS = ["provider", "timeout", "tool", "context_overflow"]
UNKNOWN_VARIANTS = [
    ("ThreadTitleUpdated", "thread.title_updated", "Core"),
    ("ProviderRateLimited", "provider.rate_limited", "Provider"),
    ("TuiFocusChanged", "tui.focus_changed", "Tui"),
    ("AppServerRequestHandled", "app_server.request_handled", "AppServer"),
    ("PluginHookRan", "extension.hook_ran", "Extension"),
]
CONFIG_TOML = """# synthetic Roder config (bench/gen_corpus.py)
default_model = "claude-sonnet-4-5"

[ui]
theme = "dark"

[analytics]
enabled = true
workspace_labels = "full_path"
retention_days = 0
"""
BODY_CHARS = (
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ 0123456789 _-./:;,()[]{}<>=+*&^%$#@!"
    ' "quoted" back\\slash tab\t newline\n é ü 日本 🙂 \u2028 '
)


@dataclass
class Stats:
    events: int = 0
    lines: int = 0
    bytes: int = 0
    blank: int = 0
    corrupt: int = 0
    duplicates: int = 0
    partial: int = 0
    threads: int = 0
    archived: int = 0
    subagents: int = 0
    automations: int = 0
    files: int = 0


@dataclass
class Corpus:
    rng: random.Random
    root: Path
    target: int
    enc: msgspec.json.Encoder = field(default_factory=msgspec.json.Encoder)
    seq: int = 0
    stats: Stats = field(default_factory=Stats)
    runtime: Log | None = None
    bodies: list[str] = field(default_factory=list)
    sec_cache: dict[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------- timestamps


def date_time(ctx: Corpus, secs: int) -> str:
    """'YYYY-MM-DDTHH:MM:SS' for a UTC epoch second (small cache: threads are local)."""
    text = ctx.sec_cache.get(secs)
    if text is None:
        if len(ctx.sec_cache) > 4096:
            ctx.sec_cache.clear()
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        ctx.sec_cache[secs] = text
    return text


def fmt_ts(ctx: Corpus, ns: int, style: float) -> str:
    """One of the sample's shapes: 9-digit Z, 6-digit Z, or ms with an offset."""
    secs, frac = divmod(ns, NS)
    if style < 0.55:
        return f"{date_time(ctx, secs)}.{frac:09d}Z"
    if style < 0.78:
        return f"{date_time(ctx, secs)}.{frac // 1000:06d}Z"
    offset = OFFSETS_MIN[int(style * 1000) % len(OFFSETS_MIN)]
    sign = "+" if offset >= 0 else "-"
    hh, mm = divmod(abs(offset), 60)
    local = date_time(ctx, secs + offset * 60)
    return f"{local}.{frac // MS:03d}{sign}{hh:02d}:{mm:02d}"


def ts(ctx: Corpus, ns: int) -> str:
    return fmt_ts(ctx, ns, ctx.rng.random())


# ---------------------------------------------------------------- output


class Log:
    """One events.jsonl being written; every line passes through here."""

    def __init__(self, ctx: Corpus, path: Path) -> None:
        self.ctx = ctx
        self.fh = path.open("wb", buffering=1 << 20)
        self.last_lines: list[bytes] = []
        ctx.stats.files += 1

    def raw(self, data: bytes) -> None:
        self.fh.write(data)
        self.ctx.stats.lines += 1
        self.ctx.stats.bytes += len(data)

    def noise(self, roll: float) -> None:
        """A blank or corrupt complete line, for the rare rolls below 0.0006."""
        if roll < 0.0004:
            self.raw(b"\n")
            self.ctx.stats.blank += 1
        elif roll < 0.0006:
            self.raw(corrupt_line(self.ctx, self.last_lines))
            self.ctx.stats.corrupt += 1

    def build(
        self,
        ns: int,
        source: str,
        kind: str,
        thread_id: str | None,
        turn_id: str | None,
        variant: str,
        payload: dict[str, Any],
    ) -> bytes:
        """Encode one envelope line (taking the next seq) without writing it."""
        ctx = self.ctx
        ctx.seq += 1
        envelope = {
            "event_id": f"evt-{ctx.seq}-{ctx.rng.getrandbits(32):08x}",
            "seq": ctx.seq,
            "timestamp": ts(ctx, ns + int((ctx.rng.random() - 0.5) * 800_000)),
            "source": source,
            "kind": kind,
            "thread_id": thread_id,
            "turn_id": turn_id,
            "event": {variant: payload},
        }
        return ctx.enc.encode(envelope) + b"\n"

    def emit(
        self,
        ns: int,
        source: str,
        kind: str,
        thread_id: str | None,
        turn_id: str | None,
        variant: str,
        payload: dict[str, Any],
    ) -> bytes:
        roll = self.ctx.rng.random()
        if roll < 0.0006:
            self.noise(roll)
        line = self.build(ns, source, kind, thread_id, turn_id, variant, payload)
        self.raw(line)
        self.ctx.stats.events += 1
        if len(self.last_lines) < 4 or self.ctx.seq % 20 == 0:
            self.last_lines = [*self.last_lines[-3:], line]
        return line

    def replay(self, line: bytes) -> None:
        """Write an exact copy of an earlier line (same event_id)."""
        self.raw(line)
        self.ctx.stats.events += 1
        self.ctx.stats.duplicates += 1

    def close(self, partial_line: bytes | None = None) -> None:
        if partial_line is not None:
            cut = max(20, len(partial_line) * 3 // 5)
            self.fh.write(partial_line[:cut])
            self.ctx.stats.bytes += cut
            self.ctx.stats.partial += 1
        self.fh.close()


def corrupt_line(ctx: Corpus, recent: list[bytes]) -> bytes:
    roll = ctx.rng.random()
    if roll < 0.5 or not recent:
        return b'{"event_id":"broken", "seq": \n'
    if roll < 0.8:
        line = ctx.rng.choice(recent)
        return line[: ctx.rng.randrange(10, max(11, len(line) - 2))] + b"\n"
    return ctx.rng.choice(
        [b"[]\n", b"null\n", b'{"event_id":"x","event":{}}\n', b"\x00\xff garbage\n"]
    )


def body(ctx: Corpus, label: str, long_tail: float = 0.0) -> str:
    """Private body text with a CANARY marker; occasionally a few KB."""
    rng = ctx.rng
    size = int(rng.lognormvariate(4.0, 1.0))
    if long_tail and rng.random() < long_tail:
        size = 2000 + int(rng.random() * 7000)
    pool = ctx.bodies[int(rng.random() * len(ctx.bodies))]
    start = int(rng.random() * (len(pool) - 1))
    text = pool[start : start + size]
    return f"{text} CANARY{label}{rng.getrandbits(32):08x}"


def make_bodies(rng: random.Random) -> list[str]:
    return ["".join(rng.choice(BODY_CHARS) for _ in range(12000)) for _ in range(8)]


# ---------------------------------------------------------------- threads


@dataclass
class Thread:
    ctx: Corpus
    log: Log
    thread_id: str
    clock: int
    budget: int
    provider: str
    model: str
    is_sub: bool = False
    profile: str = "interactive"
    turns: int = 0
    start_events: int = 0

    def used(self) -> int:
        return self.ctx.stats.events - self.start_events

    def tick(self, lo_ms: float, hi_ms: float) -> int:
        step = lo_ms + (hi_ms - lo_ms) * self.ctx.rng.random()
        self.clock += int(step * MS) + int(self.ctx.rng.random() * MS)
        return self.clock

    def emit(self, source: str, kind: str, turn: str | None, variant: str, p: dict) -> bytes:
        return self.log.emit(self.clock, source, kind, self.thread_id, turn, variant, p)


def tool_name(rng: random.Random) -> str:
    if rng.random() < 0.85:
        return CORE_TOOLS[min(int(rng.expovariate(0.35)), len(CORE_TOOLS) - 1)]
    return rng.choice(EXTRA_TOOLS)


def tool_duration_ms(rng: random.Random) -> float:
    return min(rng.lognormvariate(5.0, 1.3), 600_000.0)


def emit_tool_start(th: Thread, turn: str, tool_id: str, name: str, at: int | None = None) -> bytes:
    """ToolCallStarted; `at` backdates the payload time (a start logged late)."""
    ctx = th.ctx
    p = {
        "thread_id": th.thread_id,
        "turn_id": turn,
        "tool_id": tool_id,
        "tool_name": name,
        "display_payload": {
            "path": f"/home/dev/{body(ctx, 'PATH')[:40]}/main.rs",
            "command": "cat secret.env",
        },
        "timestamp": ts(ctx, th.clock if at is None else at),
    }
    return th.emit("Tool", "tool.call_started", turn, "ToolCallStarted", p)


def emit_tool_done(th: Thread, turn: str, tool_id: str, name: str) -> None:
    ctx = th.ctx
    rng = ctx.rng
    p: dict[str, Any] = {
        "thread_id": th.thread_id,
        "turn_id": turn,
        "tool_id": tool_id,
        "tool_name": name,
        "display_payload": {
            "path": f"/home/dev/{body(ctx, 'PATH')[:40]}/main.rs",
            "command": "cat secret.env",
        },
    }
    is_error = rng.random() < 0.08
    if is_error or rng.random() > 0.03:
        p["is_error"] = is_error
    p["output"] = body(ctx, "OUTPUT", long_tail=0.04)
    p["timestamp"] = ts(ctx, th.clock)
    th.emit("Tool", "tool.call_completed", turn, "ToolCallCompleted", p)


def approval(th: Thread, turn: str, tool_id: str, name: str) -> None:
    base = {
        "thread_id": th.thread_id,
        "turn_id": turn,
        "approval_id": f"ap-{tool_id}",
        "tool_id": tool_id,
        "tool_name": name,
    }
    p = {**base, "reason": "writes outside workspace", "timestamp": ts(th.ctx, th.clock)}
    th.emit("Core", "approval.requested", turn, "ApprovalRequested", p)
    th.tick(0, 2)
    p = {**base, "approved": th.ctx.rng.random() < 0.9, "timestamp": ts(th.ctx, th.clock)}
    th.emit("Core", "approval.resolved", turn, "ApprovalResolved", p)


def tool_batch(th: Thread, turn: str, round_index: int, count: int) -> list[bytes]:
    """Sequential or overlapping start/completion pairs; some halves missing, and
    ~1% of starts logged after their completion (payload times still in order)."""
    rng = th.ctx.rng
    starts: list[bytes] = []
    calls = [
        (f"call_{round_index}_{i}_{rng.getrandbits(32):08x}", tool_name(rng)) for i in range(count)
    ]
    overlap = count > 1 and rng.random() < 0.3
    pending: list[tuple[str, str, float]] = []
    for tool_id, name in calls:
        if rng.random() < 0.1:
            approval(th, turn, tool_id, name)
        roll = rng.random()
        if roll < 0.01 and not overlap:
            th.tick(0, 30)
            started_at = th.clock
            th.tick(tool_duration_ms(rng), tool_duration_ms(rng) * 1.01)
            emit_tool_done(th, turn, tool_id, name)
            starts.append(emit_tool_start(th, turn, tool_id, name, at=started_at))
            continue
        if roll >= 0.04:  # 1% < roll < 4%: a completion without a start
            th.tick(0, 30)
            starts.append(emit_tool_start(th, turn, tool_id, name))
        if overlap:
            pending.append((tool_id, name, tool_duration_ms(rng)))
            continue
        th.tick(tool_duration_ms(rng), tool_duration_ms(rng) * 1.01)
        emit_tool_done(th, turn, tool_id, name)
    for tool_id, name, dur in pending:
        th.tick(dur * 0.2, dur)
        if rng.random() < 0.98:
            emit_tool_done(th, turn, tool_id, name)
    return starts


def usage(rng: random.Random, scale: float = 1.0) -> dict[str, Any]:
    prompt = int(rng.lognormvariate(9.8, 0.9) * scale) + 1
    completion = int(rng.lognormvariate(7.0, 0.9) * scale) + 1
    cached = int(prompt * rng.random() * 0.95)
    creation = int((prompt - cached) * rng.random())
    u: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if rng.random() < 0.97:
        u["cached_prompt_tokens"] = cached
        u["cache_creation_prompt_tokens"] = creation
    if rng.random() < 0.4:
        u["cache_hit_rate"] = round(cached / prompt, 4)
    return u


def terminal_usage(rng: random.Random) -> dict[str, Any] | None:
    roll = rng.random()
    if roll < 0.05:
        return None
    if roll < 0.08:
        return {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
            "cached_prompt_tokens": 0,
            "cache_creation_prompt_tokens": 0,
        }
    return usage(rng, 2.0)


def inference_round(th: Thread, turn: str, round_index: int, last: bool) -> list[bytes]:
    ctx = th.ctx
    rng = ctx.rng
    tid = th.thread_id
    provider, model = th.provider, th.model
    if rng.random() < 0.3:
        provider, model = rng.choice(MODELS)
        default = rng.choice(MODELS)
        sel = {"provider": provider, "model": model}
        th.tick(50, 400)
        th.emit(
            "Core",
            "inference.routing_decision",
            turn,
            "InferenceRoutingDecision",
            {
                "thread_id": tid,
                "turn_id": turn,
                "round_index": round_index,
                "default_selection": {"provider": default[0], "model": default[1]},
                "selected_selection": sel,
                "decision": {
                    "routerId": "token-saver",
                    "outcome": rng.choice(["selected", "escalated", "fallback", "abstained"]),
                    "selected": sel,
                    "reason": body(ctx, "REASON"),
                    "matchedSignals": [],
                    "metadata": {"cwd": "/home/dev/proj"},
                },
                "timestamp": ts(ctx, th.clock),
            },
        )
    th.tick(1, 200)
    th.emit(
        "Core",
        "inference.started",
        turn,
        "InferenceStarted",
        {
            "thread_id": tid,
            "turn_id": turn,
            "engine_id": f"{provider}-engine",
            "model": {"provider": provider, "model": model},
            "reasoning": {"enabled": True, "level": rng.choice(["low", "medium", "high"])},
            "timestamp": ts(ctx, th.clock),
        },
    )
    for _ in range(1 + int(rng.expovariate(1.2))):
        th.tick(200, 2500)
        th.emit(
            "Provider",
            "inference.event_received",
            turn,
            "InferenceEventReceived",
            {
                "thread_id": tid,
                "turn_id": turn,
                "event": {"MessageDelta": {"text": body(ctx, "ASSIST")}},
                "timestamp": ts(ctx, th.clock),
            },
        )
    th.tick(0, 1)
    th.emit(
        "Provider",
        "inference.event_received",
        turn,
        "InferenceEventReceived",
        {
            "thread_id": tid,
            "turn_id": turn,
            "event": {"Usage": usage(rng)},
            "timestamp": ts(ctx, th.clock),
        },
    )
    if last:
        return []
    return tool_batch(th, turn, round_index, min(1 + int(rng.expovariate(0.6)), 8))


def extra_events(th: Thread, turn: str) -> None:
    """Compaction, memory and unknown variants, now and then."""
    ctx = th.ctx
    rng = ctx.rng
    roll = rng.random()
    if roll < 0.05:
        th.tick(100, 9000)
        th.emit(
            "Core",
            "context.compaction_recorded",
            turn,
            "ContextCompactionRecorded",
            {
                "thread_id": th.thread_id,
                "turn_id": turn,
                "original_item_count": 120,
                "original_estimated_tokens": 90000,
                "compacted_item_count": 12,
                "compacted_estimated_tokens": 9000,
                "file_backed": True,
                "strategy": "summary",
                "duration_ms": rng.randrange(500, 9000),
                "timestamp": ts(ctx, th.clock),
            },
        )
    elif roll < 0.08:
        th.emit(
            "Extension",
            "memory.queried",
            turn,
            "MemoryQueried",
            {
                "query": body(ctx, "MEMQ"),
                "scope": "workspace",
                "result_count": 2,
                "timestamp": ts(ctx, th.clock),
            },
        )
    elif roll < 0.11:
        variant, kind, source = rng.choice(UNKNOWN_VARIANTS)
        th.emit(
            source,
            kind,
            turn,
            variant,
            {
                "thread_id": th.thread_id,
                "turn_id": turn,
                "title": body(ctx, "TITLE"),
                "details": {"nested": [1, 2, {"deep": True}], "note": None},
                "timestamp": ts(ctx, th.clock),
            },
        )


def finish_turn(th: Thread, turn: str, last_turn: bool) -> bytes | None:
    """Emit the terminal event (or none); returns the line for a possible replay."""
    ctx = th.ctx
    rng = ctx.rng
    tid = th.thread_id
    roll = rng.random()
    th.tick(50, 3000)
    if roll < 0.02 or (last_turn and roll < 0.10):
        return None  # still running
    if roll < 0.84:
        p: dict[str, Any] = {
            "thread_id": tid,
            "turn_id": turn,
            "finish_reason": "stop",
            "timestamp": ts(ctx, th.clock),
        }
        u = terminal_usage(rng)
        if u is not None:
            p["usage"] = u
        return th.emit("Core", "turn.completed", turn, "TurnCompleted", p)
    if roll < 0.94:
        p = {"thread_id": tid, "turn_id": turn, "error": f"provider 500 at {body(ctx, 'ERR')}"}
        if rng.random() < 0.75:
            p["error_kind"] = rng.choice(ERROR_KINDS)
        u = terminal_usage(rng)
        if u is not None:
            p["usage"] = u
        p["timestamp"] = ts(ctx, th.clock)
        return th.emit("Core", "turn.failed", turn, "TurnFailed", p)
    if roll < 0.97:
        return th.emit(
            "Core",
            "turn.interrupted",
            turn,
            "TurnInterrupted",
            {"thread_id": tid, "turn_id": turn, "timestamp": ts(ctx, th.clock)},
        )
    deadline = fmt_ts(ctx, th.clock - rng.randrange(0, 5 * MS), 0.0)
    return th.emit(
        "Core",
        "turn.deadline_exceeded",
        turn,
        "TurnDeadlineExceeded",
        {
            "thread_id": tid,
            "turn_id": turn,
            "deadline": deadline,
            "partial_result": body(ctx, "PARTIAL"),
            "timestamp": ts(ctx, th.clock),
        },
    )


def run_turn(th: Thread, turn: str, last_turn: bool) -> bytes | None:
    ctx = th.ctx
    rng = ctx.rng
    tid = th.thread_id
    th.tick(5_000, 900_000)
    started = th.emit(
        "Core",
        "turn.started",
        turn,
        "TurnStarted",
        {
            "thread_id": tid,
            "turn_id": turn,
            "runtime_profile": th.profile,
            "timestamp": ts(ctx, th.clock),
        },
    )
    th.emit(
        "Core",
        "transcript.item_appended",
        turn,
        "TranscriptItemAppended",
        {
            "thread_id": tid,
            "turn_id": turn,
            "item_type": "user_message",
            "item_index": th.turns * 3,
            "item": {"UserMessage": {"text": body(ctx, "PROMPT", 0.1)}},
            "timestamp": ts(ctx, th.clock),
        },
    )
    rounds = 1 + int(rng.expovariate(0.45))
    starts: list[bytes] = []
    for r in range(rounds):
        starts += inference_round(th, turn, r, last=r == rounds - 1)
        if not th.is_sub and rng.random() < 0.012:
            run_subagent(th, turn)
        extra_events(th, turn)
    terminal = finish_turn(th, turn, last_turn)
    if rng.random() < 0.01:
        th.log.replay(rng.choice([started, terminal or started, *starts[-1:]]))
    return terminal


def open_thread(th: Thread, resumed: bool) -> None:
    ctx = th.ctx
    created = {"thread_id": th.thread_id, "timestamp": ts(ctx, th.clock)}
    if ctx.rng.random() < 0.05:
        created["timestamp"] = f"{date_time(ctx, th.clock // NS)}Z"
    if resumed:
        th.emit("Core", "thread.loaded", None, "ThreadLoaded", created)
    else:
        th.emit("Core", "thread.created", None, "ThreadCreated", created)


def run_turns(th: Thread, first_turn: int = 1) -> None:
    """Turns until the thread's event budget (or the corpus target) is spent."""
    while True:
        turn = f"turn-{first_turn + th.turns}"
        th.turns += 1
        done = th.used() >= th.budget * 0.85 or th.ctx.stats.events >= th.ctx.target
        run_turn(th, turn, last_turn=done)
        if done or th.used() >= th.budget:
            return


def run_subagent(parent: Thread, parent_turn: str) -> None:
    ctx = parent.ctx
    rng = ctx.rng
    n = ctx.stats.subagents
    child_id = f"{parent.thread_id}-sub" if n % 3 else f"{parent.thread_id}-sub{n}"
    child_dir = ctx.root / "threads" / child_id
    if child_dir.exists():
        return
    child_dir.mkdir(parents=True)
    ctx.stats.subagents += 1
    provider, model = rng.choice(MODELS)
    child = Thread(
        ctx,
        Log(ctx, child_dir / "events.jsonl"),
        child_id,
        parent.clock,
        int(rng.lognormvariate(3.6, 0.6)) + 15,
        provider,
        model,
        is_sub=True,
        start_events=ctx.stats.events,
    )
    base = {
        "thread_id": child_id,
        "turn_id": "turn-0",
        "parent_thread_id": parent.thread_id,
        "parent_turn_id": parent_turn,
    }
    child.emit(
        "Core",
        "subagent.started",
        "turn-0",
        "SubagentStarted",
        {
            **base,
            "agent_type": rng.choice(["explorer", "tester"]),
            "description": body(ctx, "DESC"),
            "model": None,
            "timestamp": ts(ctx, child.clock),
        },
    )
    open_thread(child, resumed=False)
    child.turns = 0
    run_turns(child, first_turn=0)
    child.tick(10, 200)
    if rng.random() < 0.85:
        child.emit(
            "Core",
            "subagent.completed",
            "turn-0",
            "SubagentCompleted",
            {
                **base,
                "agent_type": "explorer",
                "exit_reason": rng.choice(["completed", "completed", "max_turns", "timeout"]),
                "timestamp": ts(ctx, child.clock),
            },
        )
    else:
        child.emit(
            "Core",
            "subagent.failed",
            "turn-0",
            "SubagentFailed",
            {
                **base,
                "agent_type": "explorer",
                "error": body(ctx, "ERR"),
                "timestamp": ts(ctx, child.clock),
            },
        )
    child.log.close()
    parent.clock = max(parent.clock, child.clock)


def write_metadata(th: Thread, directory: Path, created_ns: int) -> None:
    ctx = th.ctx
    meta: dict[str, Any] = {
        "thread_id": th.thread_id,
        "title": f"Fix {body(ctx, 'TITLE')[:30]}",
        "workspace": f"/home/dev/work/{ctx.rng.choice(WORKSPACES)}",
        "provider": th.provider,
        "model": th.model,
        "created_at": fmt_ts(ctx, created_ns, 0.0),
        "updated_at": fmt_ts(ctx, th.clock, 0.0),
    }
    if ctx.rng.random() < 0.05:
        meta["provider"] = None
        meta["model"] = None
    (directory / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))


def automation_event(ctx: Corpus, th: Thread, variant: str, kind: str, state: str) -> None:
    run = {
        "runId": f"run-{th.thread_id}",
        "automationId": "nightly-review",
        "occurrenceKey": f"k-{th.thread_id}",
        "state": state,
        "scheduledFor": fmt_ts(ctx, th.clock, 0.7),
        "threadId": th.thread_id,
        "turnId": "turn-1",
    }
    p: dict[str, Any] = {"run": run, "timestamp": ts(ctx, th.clock)}
    if variant == "AutomationFailed":
        p = {"run": run, "error": body(ctx, "ERR"), "timestamp": p["timestamp"]}
    runtime_log(ctx).emit(th.clock, "System", kind, th.thread_id, "turn-1", variant, p)


def runtime_log(ctx: Corpus) -> Log:
    if ctx.runtime is None:
        raise RuntimeError("runtime log is not open")
    return ctx.runtime


def thread_budget(rng: random.Random) -> int:
    return max(20, min(int(rng.lognormvariate(5.2, 0.9)), 4000))


def half_written_turn(th: Thread) -> bytes:
    """Start one more turn and return its TurnCompleted line, not yet written."""
    ctx = th.ctx
    turn = f"turn-{th.turns + 1}"
    th.tick(5_000, 60_000)
    th.emit(
        "Core",
        "turn.started",
        turn,
        "TurnStarted",
        {
            "thread_id": th.thread_id,
            "turn_id": turn,
            "runtime_profile": th.profile,
            "timestamp": ts(ctx, th.clock),
        },
    )
    th.tick(500, 5_000)
    p = {
        "thread_id": th.thread_id,
        "turn_id": turn,
        "finish_reason": "stop",
        "timestamp": ts(ctx, th.clock),
        "usage": usage(ctx.rng, 2.0),
    }
    return th.log.build(th.clock, "Core", "turn.completed", th.thread_id, turn, "TurnCompleted", p)


def run_thread(ctx: Corpus, index: int) -> None:
    rng = ctx.rng
    thread_id = f"thr-{index:04d}-{rng.getrandbits(32):08x}"
    archived = rng.random() < 0.15
    automation = index == 3 or rng.random() < 0.01
    partial = not archived and not automation and (index == 5 or rng.random() < 0.0005)
    directory = ctx.root / ("archived_threads" if archived else "threads") / thread_id
    directory.mkdir(parents=True)
    start_ns = (EPOCH_START_S + rng.randrange(SPAN_DAYS * 86400)) * NS + rng.randrange(NS)
    provider, model = rng.choice(MODELS)
    th = Thread(
        ctx,
        Log(ctx, directory / "events.jsonl"),
        thread_id,
        start_ns,
        thread_budget(rng),
        provider,
        model,
        start_events=ctx.stats.events,
    )
    th.profile = "eval" if rng.random() < 0.08 else "interactive"
    if automation:
        th.profile = "non_interactive"
        ctx.stats.automations += 1
    open_thread(th, resumed=rng.random() < 0.03)
    if automation:
        automation_event(ctx, th, "AutomationStarted", "automation.started", "running")
    run_turns(th)
    if automation:
        th.tick(100, 2000)
        if rng.random() < 0.8:
            automation_event(ctx, th, "AutomationCompleted", "automation.completed", "completed")
        else:
            automation_event(ctx, th, "AutomationFailed", "automation.failed", "failed")
    th.log.close(partial_line=half_written_turn(th) if partial else None)
    if not partial and rng.random() > 0.03:
        write_metadata(th, directory, start_ns - rng.randrange(NS))
    ctx.stats.threads += 1
    ctx.stats.archived += archived


def start_runtime(ctx: Corpus) -> None:
    runtime_dir = ctx.root / "threads" / "runtime"
    runtime_dir.mkdir(parents=True)
    ctx.runtime = Log(ctx, runtime_dir / "events.jsonl")
    ns = EPOCH_START_S * NS
    ctx.runtime.emit(
        ns, "Runtime", "runtime.started", None, None, "RuntimeStarted", {"timestamp": ts(ctx, ns)}
    )
    memory_saved(ctx, ctx.runtime, ns + 5 * MS)


def memory_saved(ctx: Corpus, log: Log, ns: int) -> None:
    stamp = fmt_ts(ctx, ns, 0.0)
    log.emit(
        ns,
        "Extension",
        "memory.saved",
        None,
        None,
        "MemorySaved",
        {
            "memory": {
                "id": f"m{ctx.seq}",
                "scope": "global",
                "text": body(ctx, "MEMORY"),
                "metadata": {"path": "/home/dev/.roder"},
                "created_at": stamp,
                "updated_at": stamp,
            },
            "timestamp": ts(ctx, ns),
        },
    )


def finish_runtime(ctx: Corpus) -> None:
    log = runtime_log(ctx)
    memory_saved(ctx, log, (EPOCH_START_S + SPAN_DAYS * 86400) * NS)
    log.raw(b"{}\n")
    ctx.stats.corrupt += 1
    log.close()
    other = ctx.root / "threads" / "extensions"
    other.mkdir(parents=True)
    ext = Log(ctx, other / "events.jsonl")
    memory_saved(ctx, ext, EPOCH_START_S * NS + 7 * MS)
    ext.raw(b"{}\n")
    ctx.stats.corrupt += 1
    ext.close()
    (ctx.root / "threads" / "thread-index.json").write_text('{"threads": []}')
    (ctx.root / "config.toml").write_text(CONFIG_TOML)


def generate(root: Path, events: int, seed: int) -> Stats:
    rng = random.Random(seed)
    ctx = Corpus(rng=rng, root=root, target=events, bodies=make_bodies(rng))
    start_runtime(ctx)
    (root / "archived_threads").mkdir(parents=True, exist_ok=True)
    index = 0
    while ctx.stats.events < events:
        run_thread(ctx, index)
        index += 1
    finish_runtime(ctx)
    return ctx.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a synthetic Roder data dir.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--events", type=int, default=100_000, help="about this many events")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        if not args.force:
            parser.error(f"{args.out_dir} is not empty (use --force to replace it)")
        shutil.rmtree(args.out_dir)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    stats = generate(args.out_dir, args.events, args.seed)
    elapsed = time.perf_counter() - began
    report = {
        **stats.__dict__,
        "seconds": round(elapsed, 2),
        "eventsPerSecond": math.floor(stats.events / max(elapsed, 1e-9)),
    }
    print(json.dumps(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
