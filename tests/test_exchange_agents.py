"""`export` / `import` of a store holding both agents: the agent of every row
and Claude Code's per-call fields survive, so the numbers (costs included)
do; version-1 files still import; an unknown agent is a bad record."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from conftest import copy_sample, dump_tables, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from test_claude_code import CANARIES, _plant_canaries, copy_tree

from roder_analyticsd.cli import main
from roder_analyticsd.store import exchange
from roder_analyticsd.store.connection import open_store

CALL_FIELDS = ("cacheCreation1hPromptTokens", "provider", "model", "messageId", "isSidechain")
ANALYTICS = ("sessions", "turns", "tool_calls", "token_usage", "daily_rollups")


def cli(*args: str | Path, code: int = 0) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


def export(store: Path, data_dir: Path) -> str:
    return cli("export", "--format", "jsonl", "--data-dir", data_dir, "--store", store).stdout


def stats(store: Path, data_dir: Path, *args: str) -> Any:
    out = cli("stats", *args, "--json", "--data-dir", data_dir, "--store", store).stdout
    return json.loads(out)


def tables(store: Path) -> dict[str, list[tuple]]:
    dump = dump_tables(store)
    return {name: dump[name] for name in ANALYTICS}


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Path, Path]:
    """A store built by `--once` over the Roder sample and a Claude Code tree
    whose private fields hold canaries."""
    base = tmp_path_factory.mktemp("both")
    data_dir = copy_sample(base / "roder-data")
    root = copy_tree(base / "home")
    _plant_canaries(root)
    store = base / "usage.sqlite3"
    run_cli("--once", "--best-effort", "--json", "--data-dir", data_dir, "--store", store,
            "--claude-dir", root)  # fmt: skip
    return data_dir, store


def test_records_carry_agents_and_per_call_fields_never_a_body(both):
    data_dir, store = both
    text = export(store, data_dir)
    records = [json.loads(line) for line in text.splitlines()]
    conn = sqlite3.connect(store)
    for kind, table in (("session", "sessions"), ("turn", "turns"),
                        ("tool_call", "tool_calls"), ("token_usage", "token_usage")):  # fmt: skip
        want = dict(conn.execute(f"SELECT agent, count(*) FROM {table} GROUP BY agent"))
        got: dict[str, int] = {}
        for r in records:
            if r["kind"] == kind:
                got[r["agent"]] = got.get(r["agent"], 0) + 1
        assert got == want and set(got) == {"roder", "claude-code"}, kind
    for r in records:
        assert list(r)[:3] == ["kind", "schemaVersion", "agent"]
        assert r["schemaVersion"] == exchange.SCHEMA_VERSION == 3
    usage = [r for r in records if r["kind"] == "token_usage"]
    assert all(list(r)[-6:] == [*CALL_FIELDS, "promptId"] for r in usage)
    # a Claude Code call carries its prompt (its turn); a Roder row never does
    calls = [r for r in records if r["kind"] in ("tool_call", "token_usage")]
    assert all(r["promptId"] is None for r in calls if r["agent"] == "roder")
    turns = {(r["threadId"], r["turnId"]) for r in records if r["kind"] == "turn"}
    tied = [r for r in calls if r["agent"] == "claude-code" and r["promptId"] is not None]
    assert tied and all((r["threadId"], r["promptId"]) in turns for r in tied)
    roder = [r for r in usage if r["agent"] == "roder"]
    assert all([r[k] for k in CALL_FIELDS] == [0, None, None, None, False] for r in roder)
    claude = [r for r in usage if r["agent"] == "claude-code"]
    assert all(r["provider"] == "anthropic" and r["model"] and r["messageId"] for r in claude)
    # the sample has 1-hour cache writes and sidechain calls of their own
    assert sum(r["cacheCreation1hPromptTokens"] for r in claude) > 0
    assert any(r["isSidechain"] for r in claude)
    for canary in CANARIES:
        assert canary not in text, canary


def test_round_trip_with_both_agents_keeps_every_number(both, tmp_path):
    data_dir, store = both
    first = export(store, data_dir)
    path = tmp_path / "both.jsonl"
    path.write_text(first)
    copy = tmp_path / "copy.sqlite3"
    report = json.loads(cli("import", path, "--json", "--data-dir", data_dir,
                            "--store", copy).stdout)  # fmt: skip
    assert report["tokenUsage"] == first.count('"kind":"token_usage"')
    assert export(copy, data_dir) == first  # byte-identical
    assert tables(copy) == tables(store)
    for args in (
        ("tokens", "--group", "agent"),
        ("tokens", "--group", "model"),
        ("tokens", "--group", "model", "--agent", "claude-code"),
        ("tokens", "--group", "day"),
        ("tools",),
        ("tools", "--agent", "claude-code"),
        ("summary",),
    ):
        assert stats(copy, data_dir, *args) == stats(store, data_dir, *args), args
    by_agent = {r["group"]: r for r in stats(copy, data_dir, "tokens", "--group", "agent")}
    assert set(by_agent) == {"roder", "claude-code"}
    assert by_agent["claude-code"]["costUsd"] is not None  # priced per call, 1h writes apart

    # importing again, into the copy or into the store it came from, changes nothing
    before_copy, before_store = dump_tables(copy), dump_tables(store)
    cli("import", path, "--data-dir", data_dir, "--store", copy)
    cli("import", path, "--data-dir", data_dir, "--store", store)
    assert dump_tables(copy) == before_copy
    assert dump_tables(store) == before_store


def test_import_in_small_chunks_and_reversed_order_converges(both, tmp_path, monkeypatch):
    """Chunk boundaries split agents and sidechain copies from their owners:
    the rows still end the same, whatever the order of the file."""
    data_dir, store = both
    lines = export(store, data_dir).splitlines(keepends=True)
    path = tmp_path / "reversed.jsonl"
    path.write_text("".join(reversed(lines)))
    monkeypatch.setattr(exchange, "CHUNK", 7)
    copy = tmp_path / "copy.sqlite3"
    cli("import", path, "--data-dir", data_dir, "--store", copy)
    assert tables(copy) == tables(store)


def test_a_version_1_file_imports_as_roder(tmp_path):
    at = 1_790_000_000_000
    v1 = [
        {"kind": "session", "schemaVersion": 1, "threadId": "thr-a", "workspaceKey": "k1",
         "workspaceLabel": "alpha", "workspaceAtMs": at, "provider": "openai",
         "providerAtMs": at, "model": "gpt-4o", "modelAtMs": at, "createdAtMs": at,
         "updatedAtMs": at + 9000},
        {"kind": "turn", "schemaVersion": 1, "threadId": "thr-a", "turnId": "t1",
         "status": "completed", "errorKind": None, "provider": "openai", "model": "gpt-4o",
         "modelAtMs": at, "runtimeProfile": "default", "startedAtMs": at,
         "completedAtMs": at + 5000},
        {"kind": "tool_call", "schemaVersion": 1, "threadId": "thr-a", "turnId": "t1",
         "toolId": "c1", "toolName": "shell", "startedAtMs": at + 100,
         "completedAtMs": at + 350, "isError": False, "status": "success", "durationMs": 250},
        {"kind": "token_usage", "schemaVersion": 1, "threadId": "thr-a", "turnId": "t1",
         "recordedAtMs": at + 5000, "promptTokens": 1200, "completionTokens": 300,
         "totalTokens": 1500, "cachedPromptTokens": 200, "cacheCreationPromptTokens": 100},
    ]  # fmt: skip
    path = tmp_path / "v1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in v1))
    store = tmp_path / "v1.sqlite3"
    cli("import", path, "--data-dir", tmp_path, "--store", store)
    conn = sqlite3.connect(store)
    for table in ("sessions", "turns", "tool_calls", "token_usage"):
        assert conn.execute(f"SELECT agent FROM {table}").fetchall() == [("roder",)], table
    assert conn.execute(
        "SELECT cache_creation_1h_prompt_tokens, provider, model, message_id, is_sidechain"
        " FROM token_usage"
    ).fetchall() == [(0, None, None, None, 0)]
    # it exports as version 2 with the same values and the defaults for the rest
    again = [json.loads(line) for line in export(store, tmp_path).splitlines()]
    for old, new in zip(v1, again, strict=True):
        assert new["schemaVersion"] == 3 and new["agent"] == "roder"
        assert {k: new[k] for k in old if k != "schemaVersion"} == {
            k: v for k, v in old.items() if k != "schemaVersion"
        }
    assert [again[3][k] for k in CALL_FIELDS] == [0, None, None, None, False]
    (row,) = stats(store, tmp_path, "tokens", "--group", "agent")
    assert (row["group"], row["totalTokens"]) == ("roder", 1500)


def test_an_unknown_agent_or_a_bad_call_writes_nothing(both, tmp_path):
    data_dir, store = both
    lines = export(store, data_dir).splitlines(keepends=True)
    cc_usage = next(line for line in lines if '"token_usage"' in line and '"claude-code"' in line)
    roder_line = next(line for line in lines if '"agent":"roder"' in line)
    roder_usage = next(line for line in lines if '"token_usage"' in line and '"roder"' in line)
    usage = json.loads(cc_usage)
    too_much_1h = {**usage, "cacheCreation1hPromptTokens": usage["cacheCreationPromptTokens"] + 1}
    cases = {
        "agent": (roder_line.replace('"agent":"roder"', '"agent":"codex"'),
                  "unknown agent 'codex'; expected one of roder, claude-code"),
        "agent-type": (roder_line.replace('"agent":"roder"', '"agent":7'), "`$.agent`"),
        "roder-model": (roder_usage.replace('"model":null', '"model":"gpt-4o"'),
                        "a roder token_usage record has Claude Code's per-call fields"),
        "1h": (json.dumps(too_much_1h) + "\n",
               "cacheCreation1hPromptTokens is more than cacheCreationPromptTokens"),
    }  # fmt: skip
    target = tmp_path / "target.sqlite3"
    for name, (bad, reason) in cases.items():
        assert bad not in lines, name
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(lines[:5]) + bad + "".join(lines[5:]))
        result = cli("import", path, "--data-dir", data_dir, "--store", target, code=2)
        assert len(result.stderr.splitlines()) == 1, (name, result.stderr)
        assert f"{path}:6:" in result.stderr and reason in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr
    assert not any(tables(target).values())


# --- property: Claude Code's API calls import in any order, any number of times ---

MESSAGES = ("msg_A", "msg_B")
# call keys (thread, turn = call key) and the message each one holds
KEYS = (
    ("s-main", "msg_A:req_1", "msg_A"),
    ("s-main", "msg_A:req_2", "msg_A"),  # a side question replaying msg_A
    ("s-side", "msg_A:req_1", "msg_A"),  # a resumed session's replay
    ("s-main", "msg_B:req_3", "msg_B"),
    ("s-side", "msg_B:req_4", "msg_B"),
)
AT = 1_790_000_000_000

call = st.builds(
    lambda key, sidechain, completion, late, model: (key, sidechain, completion, late, model),
    st.sampled_from(KEYS),
    st.booleans(),
    st.integers(0, 400),
    st.integers(0, 2),
    st.sampled_from(("claude-sonnet-4-5-20250929", "claude-opus-4-5-20251101")),
)


def _record(key: tuple[str, str, str], sidechain: bool, completion: int, late: int,
            model: str) -> dict[str, Any]:  # fmt: skip
    """A token_usage record whose other fields follow from the ones the
    upsert ranks copies by (two copies that rank equal are the same line)."""
    thread, turn, message = key
    prompt = 1000 + 10 * completion
    return {
        "kind": "token_usage", "schemaVersion": 2, "agent": "claude-code",
        "threadId": thread, "turnId": turn, "recordedAtMs": AT + late * 86_400_000,
        "promptTokens": prompt, "completionTokens": completion,
        "totalTokens": prompt + completion, "cachedPromptTokens": prompt // 2,
        "cacheCreationPromptTokens": prompt // 4,
        "cacheCreation1hPromptTokens": prompt // 8 if model.startswith("claude-opus") else 0,
        "provider": "anthropic", "model": model, "messageId": message,
        "isSidechain": sidechain,
    }  # fmt: skip


def _import_all(store: Path, files: list[list[dict[str, Any]]], chunk: int) -> dict[str, list]:
    async def go() -> None:
        conn = await open_store(store)
        try:
            for i, records in enumerate(files):
                path = store.with_name(f"{store.stem}-{i}.jsonl")
                path.write_text("".join(json.dumps(r) + "\n" for r in records))
                await exchange.import_file(conn, path)
        finally:
            await conn.close()

    saved = exchange.CHUNK
    exchange.CHUNK = chunk
    try:
        anyio.run(go)
    finally:
        exchange.CHUNK = saved
    dump = dump_tables(store)
    return {name: dump[name] for name in ("token_usage", "daily_rollups")}


@settings(max_examples=40)
@given(
    calls=st.lists(call, min_size=1, max_size=12),
    shuffler=st.randoms(use_true_random=False),
    chunk=st.integers(1, 5),
    repeats=st.integers(1, 3),
)
def test_api_calls_import_order_insensitive_and_idempotent(calls, shuffler, chunk, repeats):
    records = [_record(*c) for c in calls]
    with tempfile.TemporaryDirectory() as tmp:
        canonical = _import_all(Path(tmp) / "canonical.sqlite3", [records], exchange.CHUNK)
        # shuffled and duplicated, across several files, in small chunks
        mixed = [r for r in records for _ in range(repeats)]
        shuffler.shuffle(mixed)
        cut = len(mixed) // 2
        got = _import_all(Path(tmp) / "mixed.sqlite3", [mixed[:cut], mixed[cut:]], chunk)
        assert got == canonical


def test_a_sidechain_copy_is_dropped_in_any_order(tmp_path):
    """What the property's canonical rows hold: a sidechain copy of a message
    a non-sidechain row holds is gone, whichever came first; a sidechain call
    of its own stays."""
    side = _record(KEYS[1], True, 50, 0, "claude-sonnet-4-5-20250929")
    owner = _record(KEYS[0], False, 10, 0, "claude-sonnet-4-5-20250929")
    lone = _record(KEYS[3], True, 20, 1, "claude-opus-4-5-20251101")
    for n, order in enumerate(([side, owner, lone], [owner, side, lone], [lone, side, owner])):
        store = tmp_path / f"rule-{n}.sqlite3"
        _import_all(store, [order], 1)
        conn = sqlite3.connect(store)
        got = conn.execute(
            "SELECT thread_id, turn_id, is_sidechain, agent, cache_creation_1h_prompt_tokens"
            " FROM token_usage ORDER BY 1, 2"
        ).fetchall()
        conn.close()
        assert got == [
            ("s-main", "msg_A:req_1", 0, "claude-code", 0),
            ("s-main", "msg_B:req_3", 1, "claude-code", lone["cacheCreation1hPromptTokens"]),
        ], order
