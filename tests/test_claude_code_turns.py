"""Claude Code turns: every call belongs to the prompt before it in its file
(claude-code.md, "Turns"), whatever the chunking, the restarts and the
replays, so `--tool` and the tool stats' `--provider/--model` reach Claude
Code's turns, token rows and tool calls."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import prompt_ties
from hypothesis import given, settings
from hypothesis import strategies as st
from test_claude_code import CLAUDE, Tree, cli, copy_tree

from roder_analyticsd.live.ingest import load_checkpoints
from roder_analyticsd.pipeline.batch import Batch
from roder_analyticsd.pipeline.chain import run_stages, stages
from roder_analyticsd.sources import claude_code
from roder_analyticsd.sources.files import FileRead, read_new_lines
from roder_analyticsd.store import queries
from roder_analyticsd.store.connection import open_store
from roder_analyticsd.store.schema import MIGRATIONS, SCHEMA_VERSION
from roder_analyticsd.store.writer import write_rows

ROOT = CLAUDE / "home" / ".claude"
LOGS = sorted(ROOT.rglob("*.jsonl"))


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


# --- the expectation, from the raw lines (not through the package's code) -------


def _usage_total(usage: dict[str, Any]) -> int:
    split = usage.get("cache_creation")
    if split is not None:
        creation = split.get("ephemeral_5m_input_tokens", 0) + split.get(
            "ephemeral_1h_input_tokens", 0
        )
    else:
        creation = usage.get("cache_creation_input_tokens", 0)
    prompt = usage.get("input_tokens", 0) + creation + usage.get("cache_read_input_tokens", 0)
    return prompt + usage.get("output_tokens", 0)


def _raw_prompts_and_calls() -> tuple[dict, dict]:
    """(session, prompt uuid) -> tool names its calls used; call key ->
    [session, prompt uuid, total, sidechain, message id], from the JSONL."""
    tools: dict[tuple[str, str], set[str]] = defaultdict(set)
    calls: dict[tuple[str, str], list] = {}
    for path in LOGS:
        current: dict[tuple[str, bool], str] = {}  # (session, sidechain) -> its last prompt
        for raw in path.read_bytes().splitlines():
            line = json.loads(raw)
            session, side = line.get("sessionId"), bool(line.get("isSidechain"))
            msg = line.get("message") or {}
            content = msg.get("content")
            prompt = current.get((session, side))
            if line.get("type") == "user":
                if isinstance(content, str) or any(
                    b.get("type") != "tool_result" for b in content or []
                ):
                    current[(session, side)] = line["uuid"]
                continue
            if line.get("type") != "assistant" or msg.get("model") == "<synthetic>":
                continue
            for block in content or []:
                if block.get("type") == "tool_use" and prompt is not None:
                    tools[(session, prompt)].add(block["name"])
            usage = msg.get("usage")
            if not usage or not _usage_total(usage):
                continue
            key = (session, f"{msg.get('id')}:{line.get('requestId') or ''}")
            old = calls.get(key)
            total = _usage_total(usage)
            if old is None:
                calls[key] = [session, prompt, total, side, msg.get("id")]
            else:
                old[1] = old[1] or prompt
                old[2] = max(old[2], total)
    # a sidechain copy of a message a non-sidechain line holds is no call
    held = {c[4] for c in calls.values() if not c[3]}
    calls = {k: c for k, c in calls.items() if not (c[3] and c[4] in held)}
    return tools, calls


def test_tool_filter_gives_exactly_the_prompts_that_used_the_tool(tree: Tree) -> None:
    tree.once()
    tools, calls = _raw_prompts_and_calls()
    names = sorted({name for used in tools.values() for name in used})
    assert len(names) >= 6 and any(len(used) > 1 for used in tools.values())

    def want(name: str) -> tuple[int, int, int]:
        prompts = {key for key, used in tools.items() if name in used}
        tied = [c for c in calls.values() if (c[0], c[1]) in prompts]
        return len(prompts), len(tied), sum(c[2] for c in tied)

    async def got(name: str) -> tuple[int, int, int]:
        conn = await open_store(tree.store, readonly=True)
        try:
            f = queries.Filters(tool=name, agent="claude-code", limit=1000)
            summary = await queries.summary(conn, f)
            days = await queries.token_groups(conn, f, "day")
            assert sum(d["totalTokens"] for d in days) == summary["totalTokens"]
            return (summary["turnCount"], sum(d["turnCount"] for d in days),
                    summary["totalTokens"])  # fmt: skip
        finally:
            await conn.close()

    for name in names:
        assert anyio.run(got, name) == want(name), name
    # and through the command line
    turns, api_calls, total = want("Grep")
    summary = tree.stats("summary", "--tool", "Grep")
    assert (summary["turnCount"], summary["totalTokens"]) == (turns, total)
    days = tree.stats("tokens", "--agent", "claude-code", "--tool", "Grep")
    assert sum(d["totalTokens"] for d in days) == total
    assert sum(d["turnCount"] for d in days) == api_calls


def test_tool_stats_by_provider_and_model_reach_claude_code_calls(tree: Tree) -> None:
    tree.once()
    every = {t["toolName"]: t["callCount"] for t in tree.stats("tools")}
    by_provider = {t["toolName"]: t["callCount"]
                   for t in tree.stats("tools", "--provider", "anthropic")}  # fmt: skip
    assert by_provider == every and sum(every.values()) == 47
    assert tree.stats("tools", "--provider", "openai") == []
    # each call is in its prompt's turn, whose model is one: the models split the calls
    models = {r["group"] for r in tree.stats("tokens", "--group", "model")}
    split: dict[str, int] = defaultdict(int)
    for model in models:
        for t in tree.stats("tools", "--model", model):
            split[t["toolName"]] += t["callCount"]
    assert dict(split) == every


# --- the tie, whatever the chunking, the restarts, the replays --------------------


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> dict[str, list]:
    tree = Tree(tmp_path_factory.mktemp("whole"))
    tree.once()
    ties = prompt_ties(tree.store)
    assert sum(1 for *_, p in ties["tool_calls"] if p is not None) == 47
    assert sum(1 for *_, p in ties["token_usage"] if p is None) == 2  # a side question's own
    return ties


async def _read_in_steps(store: Path, root: Path, chunk_lines: int, budget: int | None) -> None:
    """Every log read in passes of at most `budget` bytes a file, `chunk_lines`
    lines a batch, the store closed and opened again after every pass (a
    restart: the next pass starts from the stored checkpoints)."""
    logs = claude_code.discover(root)
    while True:
        conn = await open_store(store)
        try:
            known = await load_checkpoints(conn)
            chain = stages("full_path")
            more = False
            for path in logs:
                outcome = FileRead(claude_code.checkpoint_path(path, [root]))
                for batch in read_new_lines(path, path.parent, known, outcome,
                                            chunk_lines=chunk_lines, max_bytes=budget):  # fmt: skip
                    batch.agent = claude_code.AGENT
                    staged = run_stages(batch, chain)
                    await write_rows(conn, staged.rows, staged.checkpoints, claude_code.AGENT)
                more = more or outcome.more
        finally:
            await conn.close()
        if not more:
            return


@settings(max_examples=10)
@given(chunk_lines=st.integers(1, 8), budget=st.one_of(st.none(), st.integers(1, 40_000)))
def test_ties_are_the_same_in_any_chunking_and_across_restarts(
    tmp_path_factory, whole, chunk_lines, budget
):
    tmp = tmp_path_factory.mktemp("steps")
    root = copy_tree(tmp / "home")
    anyio.run(_read_in_steps, tmp / "s.sqlite3", root, chunk_lines, budget)
    assert prompt_ties(tmp / "s.sqlite3") == whole


def test_a_read_in_chunks_carries_the_prompt_from_chunk_to_chunk() -> None:
    """One pass, a line per batch: the calls after a prompt are tied to it
    though their batch never saw it."""

    def prompts(chunk_lines: int) -> list:
        chain = stages("full_path")
        found = []
        for path in LOGS:
            outcome = FileRead(path.name)
            for batch in read_new_lines(path, path.parent, {}, outcome, chunk_lines=chunk_lines):
                batch.agent = claude_code.AGENT
                rows = run_stages(batch, chain).rows
                found += [(r[0], r[2], r[9]) for r in rows.tool_calls]
                found += [(r[0], r[1], r[13]) for r in rows.api_calls]
        return sorted(set(found), key=repr)

    by_line = prompts(1)
    assert by_line == prompts(100_000)
    assert sum(1 for *_, p in by_line if p is not None) > 100


def test_a_restart_mid_turn_keeps_the_current_prompt(tree: Tree, whole) -> None:
    """Cut a log after a prompt and before its calls: the second run reads
    the calls from the checkpoint, which keeps the prompt."""
    path = tree.root / "projects" / "-home-dev-delta" / "b5f04170-2bf2-42a5-a765-4c300af0960a.jsonl"
    body = path.read_bytes()
    lines = body.splitlines(keepends=True)
    prompt = json.loads(lines[5])
    assert prompt["type"] == "user" and isinstance(prompt["message"]["content"], str)
    path.write_bytes(b"".join(lines[:6]))
    tree.once()
    with sqlite3.connect(tree.store) as conn:
        (stored,) = conn.execute(
            "SELECT prompts FROM files WHERE path LIKE '%b5f04170%'"
        ).fetchone()
    assert json.loads(stored) == [[prompt["sessionId"], False, prompt["uuid"]]]
    path.write_bytes(body)
    assert tree.once()["linesIngested"] == len(lines) - 6
    assert prompt_ties(tree.store) == whole
    tied = [r for r in prompt_ties(tree.store)["tool_calls"] if r[2] == prompt["uuid"]]
    assert len(tied) == 3  # its Write, Grep and Bash


def test_a_file_replaced_from_its_start_forgets_its_prompts(tree: Tree) -> None:
    path = tree.root / "projects" / "-home-dev-delta" / "b5f04170-2bf2-42a5-a765-4c300af0960a.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:6]))
    tree.once()
    # the same name, other bytes from the first one on: read again from the start
    tail = [json.loads(raw) for raw in lines[6:9]]  # calls and their results, no prompt
    path.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in tail))
    tree.once()
    with sqlite3.connect(tree.store) as conn:
        (stored,) = conn.execute(
            "SELECT prompts FROM files WHERE path LIKE '%b5f04170%'"
        ).fetchone()
        ids = [u["message"]["content"][0]["id"] for u in tail if u["type"] == "assistant"
               and u["message"]["content"][0]["type"] == "tool_use"]  # fmt: skip
        marks = ", ".join("?" * len(ids))
        prompts = conn.execute(
            f"SELECT prompt_id FROM tool_calls WHERE tool_id IN ({marks})", ids
        ).fetchall()
    assert stored is None and ids and prompts == [(None,)] * len(ids)


# --- a resumed session's replay that starts mid-turn --------------------------------


@pytest.mark.parametrize("name", ["0-resumed.jsonl", "z-resumed.jsonl"])  # read first, read last
def test_a_replay_starting_mid_turn_counts_nothing_twice_and_keeps_the_tie(
    tree: Tree, whole, name
) -> None:
    beta = tree.root / "projects" / "-home-dev-beta"
    original = (beta / "78f722d4-c364-42e6-bf7f-b3e3b5fed30b.jsonl").read_bytes().splitlines()
    # lines 3-6: the tool_use, its result, the call after it; then the new session's own
    replayed = original[2:6]
    prompt = json.loads(original[0])
    own = {
        "type": "user",
        "sessionId": "5e55-resumed",
        "uuid": "5e55-prompt",
        "timestamp": "2026-05-02T10:00:00.000Z",
        "message": {"role": "user", "content": "x"},
    }
    call = {"type": "assistant", "sessionId": "5e55-resumed", "uuid": "5e55-call",
            "requestId": "req_resumed", "timestamp": "2026-05-02T10:00:01.000Z",
            "message": {"id": "msg_resumed", "model": "claude-sonnet-4-5-20250929",
                        "stop_reason": "end_turn", "content": [{"type": "text", "text": "y"}],
                        "usage": {"input_tokens": 10, "output_tokens": 5}}}  # fmt: skip
    (beta / name).write_bytes(
        b"\n".join([*replayed, json.dumps(own).encode(), json.dumps(call).encode()]) + b"\n"
    )
    tree.once()
    ties = prompt_ties(tree.store)
    # the replayed calls: still one row each, tied to the original's prompt
    assert ties["tool_calls"] == whole["tool_calls"]
    assert [r for r in ties["token_usage"] if r[0] != "5e55-resumed"] == whole["token_usage"]
    assert [r for r in ties["token_usage"] if r[0] == "5e55-resumed"] == [
        ("5e55-resumed", "msg_resumed:req_resumed", "5e55-prompt")
    ]
    write = [r for r in ties["tool_calls"] if r[1] == "toolu_01KiY3nRZ3oF4nrY2PVy60Nj"]
    assert write == [(prompt["sessionId"], "toolu_01KiY3nRZ3oF4nrY2PVy60Nj", prompt["uuid"])]
    summary = tree.stats("summary")
    assert summary["toolCallCount"] == 47 and summary["turnCount"] == 53


# --- a store from before the tie ------------------------------------------------


def test_a_version_6_store_migrates_with_its_rows_untied(tmp_path: Path) -> None:
    store = tmp_path / "v6.sqlite3"
    conn = sqlite3.connect(store, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:6], 1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(
        "INSERT INTO tool_calls (thread_id, turn_id, tool_id, tool_name, started_at_ms, agent)"
        " VALUES ('s1', '', 'toolu_1', 'Bash', 1790000000000, 'claude-code')"
    )
    conn.execute(
        "INSERT INTO token_usage (thread_id, turn_id, recorded_at_ms, prompt_tokens,"
        " completion_tokens, total_tokens, cached_prompt_tokens, cache_creation_prompt_tokens,"
        " agent, provider, model) VALUES ('s1', 'm1:r1', 1790000000000, 10, 5, 15, 0, 0,"
        " 'claude-code', 'anthropic', 'claude-sonnet-4-5')"
    )
    conn.execute(
        "INSERT INTO files VALUES ('1:2', 1, 2, 'claude-code:0/projects/p/s1.jsonl', 10, 1, 10,"
        " 'h', 0)"
    )
    conn.close()

    async def reopen() -> dict[str, Any]:
        conn = await open_store(store)
        try:
            f = queries.Filters(tool="Bash", limit=10)
            return await queries.summary(conn, f)
        finally:
            await conn.close()

    summary = anyio.run(reopen)
    assert summary["toolCallCount"] == 1 and summary["totalTokens"] == 0  # no prompt: no turn
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 7
        assert conn.execute("SELECT prompt_id FROM tool_calls").fetchall() == [(None,)]
        assert conn.execute("SELECT prompt_id FROM token_usage").fetchall() == [(None,)]
        assert conn.execute("SELECT prompts FROM files").fetchall() == [(None,)]
        assert conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'tool_calls_prompt'"
        ).fetchall() == [(1,)]


# --- export and import ----------------------------------------------------------


def test_older_exports_import_untied_and_a_prompt_on_a_roder_row_is_refused(
    tree: Tree, tmp_path: Path
) -> None:
    tree.once()
    out = cli("export", "--format", "jsonl", "--data-dir", tree.data, "--store", tree.store)
    records = [json.loads(line) for line in out.stdout.splitlines()]
    tied = [r for r in records if r.get("promptId") is not None]
    assert tied and all(r["schemaVersion"] == 3 for r in records)
    # as version 2 wrote it: no promptId, and everything imports untied
    old = tmp_path / "v2.jsonl"
    old.write_text("".join(
        json.dumps({**{k: v for k, v in r.items() if k != "promptId"}, "schemaVersion": 2}) + "\n"
        for r in records
    ))  # fmt: skip
    copy = tmp_path / "copy.sqlite3"
    cli("import", old, "--data-dir", tree.data, "--store", copy)
    assert {r[2] for table in ("tool_calls", "token_usage") for r in prompt_ties(copy)[table]} == {
        None
    }
    for bad in ({**tied[0], "agent": "roder"}, {**tied[0], "schemaVersion": 2}):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(bad) + "\n")
        proc = cli("import", path, "--data-dir", tree.data, "--store", tmp_path / "bad.sqlite3",
                   check=False)  # fmt: skip
        assert proc.returncode == 2 and "promptId" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_roder_rows_are_never_tied(tmp_path: Path) -> None:
    from conftest import copy_sample

    data = copy_sample(tmp_path / "roder-data")
    store = tmp_path / "s.sqlite3"
    cli("--once", "--best-effort", "--data-dir", data, "--store", store,
        claude=tmp_path / "none")  # fmt: skip
    with sqlite3.connect(store) as conn:
        assert conn.execute(
            "SELECT count(*) FROM tool_calls WHERE prompt_id IS NOT NULL"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM token_usage WHERE prompt_id IS NOT NULL"
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM files WHERE prompts IS NOT NULL").fetchone() == (
            0,
        )


def test_batch_defaults_decode_from_no_prompt() -> None:
    lines = [raw for raw in LOGS[0].read_bytes().splitlines()]
    out = claude_code.decode(Batch(agent=claude_code.AGENT, path="p", lines=lines[1:3]))
    assert all(fact[-1] is None for fact in out.events if fact[0] != claude_code.PROMPT)


# --- the merge: a max over a total order ----------------------------------------

_PROMPT_IDS = st.sampled_from([None, "p1", "p2", "p3"])
_TOOL_HALVES = st.builds(
    lambda start, end, error, event, prompt: ("s", "", "t", "Bash" if start else None,
                                              1000 + start if start else None,
                                              2000 + end if end else None,
                                              error if end else None,
                                              event if end else None,
                                              -event if end else None, prompt),
    st.integers(0, 2), st.integers(0, 2), st.integers(0, 1), st.sampled_from([-7, 3, 5]),
    _PROMPT_IDS,
)  # fmt: skip


@given(st.lists(_TOOL_HALVES, min_size=1, max_size=6), st.randoms())
def test_a_tool_calls_prompt_merges_in_any_order_to_the_greatest_known(halves, rnd):
    from functools import reduce

    from roder_analyticsd.pipeline.claude_code import merge_tool

    shuffled = list(halves)
    rnd.shuffle(shuffled)
    merged = reduce(merge_tool, shuffled)
    assert merged == reduce(merge_tool, halves)
    assert merged[9] == max((h[9] for h in halves if h[9] is not None), default=None)
    # the completion's analytics.v2 event and class go with the completion kept
    ends = [h for h in halves if h[5] is not None]
    assert merged[5:9] == (max((h[5:9] for h in ends), default=(None,) * 4))
    assert merged[8] == (None if merged[7] is None else -merged[7])


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 3), _PROMPT_IDS, st.booleans()),
                min_size=1, max_size=6), st.randoms())  # fmt: skip
def test_a_calls_prompt_and_event_merge_in_any_order(copies, rnd):
    from functools import reduce

    from roder_analyticsd.pipeline.claude_code import merge_call

    rows = [("s", "m:r", 1000, total, 1, total + 1, 0, 0, 0, "anthropic", "claude-x", "m", side,
             prompt, 9 if final else None, -1 - side)
            for side, total, prompt, final in copies]  # fmt: skip
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    merged = reduce(merge_call, shuffled)
    assert merged == reduce(merge_call, rows)
    best_side = min(side for side, _, _, _ in copies)
    known = [p for side, _, p, _ in copies if side == best_side and p is not None]
    assert merged[13] == max(known, default=None)
    # the model_request: if a copy with the kept flag ended the stream; its class, the flag's
    ended = any(final for side, _, _, final in copies if side == best_side)
    assert merged[14:] == (9 if ended else None, -1 - best_side)
