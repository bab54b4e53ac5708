"""`export` / `import`: schema-versioned body-free records, streamed, and an
idempotent round trip (export → import → export gives the same bytes)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from conftest import copy_sample, dump_tables, run_cli

from roder_analyticsd.cli import main
from roder_analyticsd.store import exchange
from roder_analyticsd.store.connection import open_store

KEYS = {
    "session": [
        "kind", "schemaVersion", "agent", "threadId", "workspaceKey", "workspaceLabel",
        "workspaceAtMs", "provider", "providerAtMs", "model", "modelAtMs", "createdAtMs",
        "updatedAtMs",
    ],
    "turn": [
        "kind", "schemaVersion", "agent", "threadId", "turnId", "status", "errorKind",
        "provider", "model", "modelAtMs", "runtimeProfile", "startedAtMs", "completedAtMs",
    ],
    "tool_call": [
        "kind", "schemaVersion", "agent", "threadId", "turnId", "toolId", "toolName", "startedAtMs",
        "completedAtMs", "isError", "status", "durationMs", "promptId",
    ],
    "token_usage": [
        "kind", "schemaVersion", "agent", "threadId", "turnId", "recordedAtMs", "promptTokens",
        "completionTokens", "totalTokens", "cachedPromptTokens", "cacheCreationPromptTokens",
        "cacheCreation1hPromptTokens", "provider", "model", "messageId", "isSidechain",
        "promptId",
    ],
}  # fmt: skip


def cli(*args: str | Path, code: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def export(store: Path, data_dir: Path) -> str:
    return cli("export", "--format", "jsonl", "--data-dir", data_dir, "--store", store)


def analytics_rows(store: Path) -> dict[str, list[tuple]]:
    tables = dump_tables(store)
    return {k: tables[k] for k in ("sessions", "turns", "tool_calls", "token_usage")}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("export")
    data_dir = copy_sample(base / "roder-data")
    store = base / "usage.sqlite3"
    run_cli("--once", "--best-effort", "--json", "--data-dir", data_dir, "--store", store)
    return data_dir, store


def test_records_are_versioned_body_free_and_complete(sample, expected):
    data_dir, store = sample
    text = export(store, data_dir)
    records = [json.loads(line) for line in text.splitlines()]
    kinds = [r["kind"] for r in records]
    # grouped by kind, in this order
    assert kinds == sorted(kinds, key=["session", "turn", "tool_call", "token_usage"].index)
    for record in records:
        assert list(record) == KEYS[record["kind"]]
        assert (record["schemaVersion"], record["agent"]) == (exchange.SCHEMA_VERSION, "roder")
    conn = sqlite3.connect(store)
    for kind, table in (("session", "sessions"), ("turn", "turns"),
                        ("tool_call", "tool_calls"), ("token_usage", "token_usage")):  # fmt: skip
        assert kinds.count(kind) == conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    assert kinds.count("tool_call") == expected["summary"]["toolCallCount"]
    calls = [r for r in records if r["kind"] == "tool_call"]
    assert sum(r["isError"] for r in calls) == expected["summary"]["toolErrorCount"]
    assert all(isinstance(r["isError"], bool) for r in calls)
    tokens = [r for r in records if r["kind"] == "token_usage"]
    assert sum(r["totalTokens"] for r in tokens) == expected["summary"]["totalTokens"]
    for canary in expected["canaries"]:
        assert canary not in text


def test_round_trip_is_byte_identical_and_import_is_idempotent(sample, tmp_path):
    data_dir, store = sample
    first = tmp_path / "first.jsonl"
    out = cli("export", "--output", first, "--json", "--data-dir", data_dir, "--store", store)
    assert json.loads(out)["toolCalls"] == 894
    assert first.read_text() == export(store, data_dir)  # --output writes what stdout gets

    copy = tmp_path / "copy.sqlite3"
    report = json.loads(cli("import", first, "--json", "--data-dir", data_dir, "--store", copy))
    assert report["toolCalls"] == 894 and report["rollupRowsRefreshed"] > 0
    assert export(copy, data_dir) == first.read_text()
    assert analytics_rows(copy) == analytics_rows(store)
    # the imported store answers like the original (rollups included)
    for args in (["summary"], ["tools"], ["tokens", "--group", "model"], ["rollups"]):
        want = cli("stats", *args, "--json", "--data-dir", data_dir, "--store", store)
        got = cli("stats", *args, "--json", "--data-dir", data_dir, "--store", copy)
        if args == ["rollups"]:
            strip = [{k: v for k, v in r.items() if k != "refreshedAtMs"} for r in json.loads(got)]
            assert strip == [
                {k: v for k, v in r.items() if k != "refreshedAtMs"} for r in json.loads(want)
            ]
        else:
            assert got == want, args

    # importing again, into the copy or into the store it came from, changes nothing
    before_copy, before_store = dump_tables(copy), dump_tables(store)
    cli("import", first, "--data-dir", data_dir, "--store", copy)
    cli("import", first, "--data-dir", data_dir, "--store", store)
    assert dump_tables(copy) == before_copy
    assert dump_tables(store) == before_store


def test_import_merges_in_any_order(sample, tmp_path):
    """Halves imported in either order converge to the full store."""
    data_dir, store = sample
    lines = export(store, data_dir).splitlines(keepends=True)
    odd, even = tmp_path / "odd.jsonl", tmp_path / "even.jsonl"
    odd.write_text("".join(lines[1::2]))
    even.write_text("".join(lines[0::2]))
    merged = tmp_path / "merged.sqlite3"
    cli("import", even, "--data-dir", data_dir, "--store", merged)
    cli("import", odd, "--data-dir", data_dir, "--store", merged)
    assert export(merged, data_dir) == "".join(lines)


def test_a_bad_file_writes_nothing(sample, tmp_path):
    data_dir, store = sample
    lines = export(store, data_dir).splitlines(keepends=True)
    target = tmp_path / "target.sqlite3"
    cases = {
        "json": "{not json\n",
        "kind": '{"kind":"memory","schemaVersion":1}\n',
        "version": lines[0].replace('"schemaVersion":3', '"schemaVersion":4'),
        "type": lines[0].replace('"threadId":"', '"threadId":7,"x":"'),
    }
    for name, bad in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(lines[:5]) + bad + "".join(lines[5:]))
        result = CliRunner().invoke(
            main, ["import", str(path), "--data-dir", str(data_dir), "--store", str(target)]
        )
        assert result.exit_code == 2, (name, result.stderr)
        assert f"{path}:6:" in result.stderr and len(result.stderr.splitlines()) == 1, name
    assert not any(analytics_rows(target).values())


def test_export_streams_in_bounded_chunks(tmp_path):
    """Records come out chunk by chunk (never a whole table in memory)."""
    n = exchange.CHUNK * 2 + 1
    source = tmp_path / "many.jsonl"
    with open(source, "w") as fh:
        for i in range(n):
            record = {
                "kind": "tool_call", "schemaVersion": 1, "threadId": "thr-1", "turnId": "t1",
                "toolId": f"c{i:06d}", "toolName": "shell", "startedAtMs": 1_790_000_000_000 + i,
                "completedAtMs": 1_790_000_000_100 + i, "isError": i % 7 == 0,
            }  # fmt: skip
            fh.write(json.dumps(record) + "\n")
    store = tmp_path / "many.sqlite3"
    cli("import", source, "--store", store, "--data-dir", tmp_path)

    async def chunks() -> list[tuple[str, int, bytes]]:
        conn = await open_store(store, readonly=True)
        try:
            return [c async for c in exchange.export_chunks(conn)]
        finally:
            await conn.close()

    got = anyio.run(chunks)
    assert [n for _, n, _ in got] == [exchange.CHUNK, exchange.CHUNK, 1]
    assert all(chunk.count(b"\n") == count for _, count, chunk in got)
    # the derived fields are written for readers
    first = json.loads(got[0][2].splitlines()[0])
    assert (first["durationMs"], first["status"], first["isError"]) == (100, "error", True)
    stats = json.loads(cli("stats", "tools", "--json", "--store", store, "--data-dir", tmp_path))
    assert stats[0]["callCount"] == n and stats[0]["p50DurationMs"] == 100
