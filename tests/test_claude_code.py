"""Claude Code as a second source: the sample tree, ccusage's own numbers,
idempotence, privacy, and Roder's numbers left alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import REPO, SAMPLES, copy_sample, dump_tables, prompt_ties
from hypothesis import given, settings
from hypothesis import strategies as st

from roder_analyticsd.config import load_settings
from roder_analyticsd.live.ingest import run_once
from roder_analyticsd.sources import claude_code
from roder_analyticsd.store import queries
from roder_analyticsd.store.connection import open_store

CLAUDE = SAMPLES / "claude-code"
CANARIES = ("CANARYPROMPT7731", "CANARYOUTPUT7732", "CANARYTOOLINPUT7733", "CANARYRESULT7734",
            "CANARYSUMMARY7735")  # fmt: skip


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def cc_expected() -> dict[str, Any]:
    return _json(CLAUDE / "expected.json")


def copy_tree(dest: Path) -> Path:
    """A writable copy of the sample $HOME; returns its Claude Code root."""
    shutil.copytree(CLAUDE / "home", dest)
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    os.chmod(dest, 0o755)
    return dest / ".claude"


def cli(*args: str | Path, home: Path | None = None, claude: Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
    """The real command line with its own HOME / CLAUDE_CONFIG_DIR."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RODER_CONFIG_DIR", None)
    env.pop("RODER_DATA_DIR", None)
    if home is not None:
        env["HOME"] = str(home)
        env.pop("CLAUDE_CONFIG_DIR", None)
    if claude is not None:
        env["CLAUDE_CONFIG_DIR"] = str(claude)
    proc = subprocess.run(
        [sys.executable, "-m", "roder_analyticsd", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=120, cwd=REPO,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


class Tree:
    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.root = copy_tree(self.home)
        self.data = tmp / "roder"
        self.store = tmp / "store.sqlite3"

    def once(self, *extra: str) -> dict[str, Any]:
        out = cli("--once", "--json", "--data-dir", self.data, "--store", self.store, *extra,
                  claude=self.root)  # fmt: skip
        return json.loads(out.stdout)

    def stats(self, *args: str) -> Any:
        out = cli("stats", *args, "--json", "--data-dir", self.data, "--store", self.store,
                  claude=self.root)  # fmt: skip
        return json.loads(out.stdout)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def _ccusage_days(name: str) -> dict[str, dict[str, int]]:
    return {
        d["date"]: {
            k: d[k]
            for k in (
                "inputTokens",
                "outputTokens",
                "cacheCreationTokens",
                "cacheReadTokens",
                "totalTokens",
            )
        }  # fmt: skip
        for d in _json(CLAUDE / name)["daily"]
    }


def _as_ccusage(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {
        r["group"]: {
            "inputTokens": r["promptTokens"]
            - r["cachedPromptTokens"]
            - r["cacheCreationPromptTokens"],
            "outputTokens": r["completionTokens"],
            "cacheCreationTokens": r["cacheCreationPromptTokens"],
            "cacheReadTokens": r["cachedPromptTokens"],
            "totalTokens": r["totalTokens"],
        }
        for r in rows
    }


def test_tokens_per_day_equal_ccusage_utc_and_tokyo(tree):
    report = tree.once()
    assert report["parseErrors"] == [] and report["linesIngested"] == 277
    utc = tree.stats("tokens", "--group", "day")
    assert _as_ccusage(utc) == _ccusage_days("ccusage-daily.json")
    tokyo = tree.stats("tokens", "--group", "day", "--timezone", "Asia/Tokyo")
    assert _as_ccusage(tokyo) == _ccusage_days("ccusage-daily-tokyo.json")


def _check_expected(tree: Tree, want: dict[str, Any], **only: str) -> None:
    extra = [f"--{k}" for k in only] + list(only.values())
    extra = [x for pair in zip(extra[: len(only)], only.values(), strict=True) for x in pair]
    for group, rows in want["tokens"].items():
        got = tree.stats("tokens", "--group", group, "--limit", "1000", *extra)
        assert len(got) == len(rows), group
        by_group = {r["group"]: r for r in got}
        for row in rows:
            mine = by_group[row["group"]]
            for key, value in row.items():
                if key == "costUsd":
                    assert mine[key] == pytest.approx(value, abs=1e-9), (group, row["group"])
                elif key == "apiCalls":
                    assert mine["turnCount"] == value, (group, row["group"])
                else:
                    assert mine[key] == value, (group, row["group"], key)
    tools = tree.stats("tools", *extra)
    assert [t["toolName"] for t in tools] == [t["toolName"] for t in want["tools"]]
    for got_tool, want_tool in zip(tools, want["tools"], strict=True):
        for key, value in want_tool.items():
            assert got_tool[key] == value, (want_tool["toolName"], key)
    summary = tree.stats("summary", *extra)
    for key, value in want["summary"].items():
        if key != "apiCalls":
            assert summary[key] == value, key


def test_sessions_models_costs_and_tools_equal_expected(tree, cc_expected):
    tree.once()
    _check_expected(tree, cc_expected)
    _check_expected(tree, cc_expected, agent="claude-code")
    assert tree.stats("tokens", "--agent", "roder") == []
    agents = tree.stats("tokens", "--group", "agent")
    assert [(r["group"], r["totalTokens"]) for r in agents] == [
        ("claude-code", cc_expected["summary"]["totalTokens"])
    ]


def test_default_roots_come_from_home(tmp_path, cc_expected):
    home = tmp_path / "home"
    copy_tree(home)
    store = tmp_path / "s.sqlite3"
    out = cli("--once", "--json", "--data-dir", tmp_path / "r", "--store", store, home=home)
    assert json.loads(out.stdout)["linesIngested"] == 277
    out = cli("stats", "summary", "--json", "--data-dir", tmp_path / "r", "--store", store,
              home=home)  # fmt: skip
    assert json.loads(out.stdout)["totalTokens"] == cc_expected["summary"]["totalTokens"]


def test_second_once_reads_nothing_and_changes_nothing(tree):
    tree.once()
    before = dump_tables(tree.store)
    again = tree.once()
    assert again["linesIngested"] == 0 and again["linesSkippedByOffset"] == 277
    assert dump_tables(tree.store) == before


def test_config_switch_and_required_roots(tree, tmp_path):
    tree.data.mkdir()
    (tree.data / "config.toml").write_text("[analytics.sources]\nclaude_code = false\n")
    assert tree.once()["linesIngested"] == 0
    (tree.data / "config.toml").write_text("[analytics.sources]\nclaude_code = true\n")
    proc = cli("--once", "--data-dir", tree.data, "--store", tree.store,
               claude=tmp_path / "nowhere", check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    (tree.data / "config.toml").write_text('[analytics.sources]\nclaude_code = "sometimes"\n')
    proc = cli("--once", "--data-dir", tree.data, "--store", tree.store, check=False)
    assert proc.returncode == 2 and "claude_code" in proc.stderr
    # --claude-dir overrides the roots
    (tree.data / "config.toml").write_text("[analytics.sources]\nclaude_code = true\n")
    proc = cli("--once", "--json", "--data-dir", tree.data, "--store", tree.store,
               "--claude-dir", tree.root, claude=tmp_path / "nowhere")  # fmt: skip
    assert json.loads(proc.stdout)["linesIngested"] == 277


def _longest_log(root: Path) -> Path:
    return max(root.rglob("*.jsonl"), key=lambda p: len(p.read_bytes().splitlines()))


def test_half_written_last_line_waits_for_its_newline(tree, cc_expected):
    path = _longest_log(tree.root)
    whole = path.read_bytes()
    last = whole.rstrip(b"\n").rfind(b"\n") + 1
    cut = last + (len(whole) - last) // 2
    path.write_bytes(whole[:cut])
    first = tree.once()
    assert first["parseErrors"] == []
    with open(path, "ab") as fh:
        fh.write(whole[cut:])
    assert tree.once()["linesIngested"] == 1
    _check_expected(tree, cc_expected)


def _plant_canaries(root: Path) -> None:
    """Put a canary in every private field, keeping ids and usage as they are."""
    prompt, output, tool_input, result, summary = CANARIES
    for path in root.rglob("*.jsonl"):
        lines = []
        for raw in path.read_bytes().splitlines():
            line = json.loads(raw)
            if line.get("type") == "summary":
                line["summary"] = summary
            msg = line.get("message")
            if isinstance(msg, dict):
                content = msg.get("content")
                if isinstance(content, str):
                    msg["content"] = prompt
                elif isinstance(content, list):
                    for block in content:
                        if block.get("type") == "text":
                            block["text"] = output if line["type"] == "assistant" else prompt
                        elif block.get("type") == "tool_use":
                            block["input"] = {"command": tool_input}
                        elif block.get("type") == "tool_result":
                            block["content"] = [{"type": "text", "text": result}]
            if "toolUseResult" in line:
                line["toolUseResult"] = {"stdout": result}
            lines.append(json.dumps(line).encode())
        path.write_bytes(b"\n".join(lines) + b"\n")


def test_no_private_text_in_store_wal_export_or_logs(tree, cc_expected):
    _plant_canaries(tree.root)
    proc = cli("--once", "--json", "--data-dir", tree.data, "--store", tree.store,
               claude=tree.root)  # fmt: skip
    human = cli("--once", "--rebuild", "--data-dir", tree.data, "--store", tree.store,
                claude=tree.root)  # fmt: skip
    export = cli("export", "--format", "jsonl", "--data-dir", tree.data, "--store", tree.store,
                 claude=tree.root)  # fmt: skip
    blobs = [p.stdout.encode() + p.stderr.encode() for p in (proc, human, export)]
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(tree.store) + suffix)
        if path.exists():
            blobs.append(path.read_bytes())
    for canary in CANARIES:
        assert not any(canary.encode() in blob for blob in blobs), canary
    _check_expected(tree, cc_expected)  # the numbers do not depend on the text


def test_roder_numbers_unchanged_beside_a_claude_code_tree(tmp_path, expected):
    data = copy_sample(tmp_path / "roder-data")
    root = copy_tree(tmp_path / "home")
    alone, beside = tmp_path / "alone.sqlite3", tmp_path / "beside.sqlite3"
    empty = tmp_path / "no-claude"
    for store, claude in ((alone, empty), (beside, root)):
        cli("--once", "--best-effort", "--json", "--data-dir", data, "--store", store,
            claude=claude)  # fmt: skip

    def stats(store: Path, *args: str) -> Any:
        out = cli("stats", *args, "--json", "--data-dir", data, "--store", store, claude=empty)
        return json.loads(out.stdout)

    runs = ((alone, ()), (alone, ("--agent", "roder")), (beside, ("--agent", "roder")))
    for store, extra in runs:
        summary = stats(store, "summary", *extra)
        for key, value in expected["summary"].items():
            assert summary[key] == value, (store.name, extra, key)
        for group, rows in expected["tokens"].items():
            if group in ("day", "week", "month"):  # listed in time order (cli.md)
                rows = sorted(rows, key=lambda r: r["group"])
            got = stats(store, "tokens", "--group", group, *extra)
            assert [{k: r[k] for k in rows[0]} for r in got] == rows, (store.name, group)
        tools = stats(store, "tools", *extra)
        assert [t["toolName"] for t in tools] == [t["toolName"] for t in expected["tools"]]
    agents = stats(beside, "tokens", "--group", "agent")
    assert {r["group"] for r in agents} == {"roder", "claude-code"}


# --- property: replaying any file any number of times, in any chunking -----------


def _numbers(store: Path) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        conn = await open_store(store)
        try:
            f = queries.Filters(limit=1000)
            return {
                group: await queries.token_groups(conn, f, group)
                for group in ("day", "session", "model")
            } | {"tools": await queries.tool_stats(conn, f)}
        finally:
            await conn.close()

    return anyio.run(read) | prompt_ties(store)  # and each call's prompt (its turn)


def _backfill(data: Path, store: Path, root: Path) -> None:
    settings = load_settings(data, store)
    settings = type(settings)(**{**{s: getattr(settings, s) for s in settings.__slots__},
                                 "claude_dirs": (root,)})  # fmt: skip

    async def go() -> None:
        conn = await open_store(store)
        try:
            await run_once(conn, settings, rebuild=False, strict=True)
        finally:
            await conn.close()

    anyio.run(go)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("baseline")
    root = copy_tree(tmp / "home")
    _backfill(tmp / "r", tmp / "s.sqlite3", root)
    return _numbers(tmp / "s.sqlite3")


_LOGS = sorted(p.relative_to(CLAUDE / "home" / ".claude")
               for p in (CLAUDE / "home" / ".claude").rglob("*.jsonl"))  # fmt: skip


@settings(max_examples=12)
@given(
    replays=st.lists(
        st.tuples(st.sampled_from(_LOGS), st.integers(1, 3), st.lists(st.integers(1, 20000),
                                                                       max_size=4),
                  st.integers(0, 12)),
        min_size=1, max_size=3,
    ),
)  # fmt: skip
def test_replays_in_any_chunking_change_nothing(tmp_path_factory, baseline, replays):
    tmp = tmp_path_factory.mktemp("replay")
    root = copy_tree(tmp / "home")
    store = tmp / "s.sqlite3"
    data = tmp / "r"
    _backfill(data, store, root)
    for number, (rel, times, cuts, skip) in enumerate(replays):
        body = (root / rel).read_bytes()
        # a replay: the file's lines again (from any line: mid-turn too),
        # appended to a new log in pieces cut anywhere (mid-line too), with a
        # backfill after every piece (each resumes at the checkpoint)
        target = root / rel.parent / f"replay-{number}.jsonl"
        whole = b"".join(body.splitlines(keepends=True)[skip:]) + body * (times - 1)
        offsets = sorted({min(c, len(whole)) for c in cuts}) + [len(whole)]
        start = 0
        for end in offsets:
            with open(target, "ab") as fh:
                fh.write(whole[start:end])
            start = end
            _backfill(data, store, root)
    assert _numbers(store) == baseline


def test_impossible_counts_and_times_are_parse_errors(tree):
    path = _longest_log(tree.root)
    lines = path.read_bytes().splitlines()
    calls = [i for i, raw in enumerate(lines) if b'"usage"' in raw]
    bad_count = json.loads(lines[calls[0]])
    bad_count["message"]["usage"]["output_tokens"] = 2**40
    bad_time = json.loads(lines[calls[1]])
    bad_time["timestamp"] = "0100-01-01T00:00:00Z"
    lines[calls[0]] = json.dumps(bad_count).encode()
    lines[calls[1]] = json.dumps(bad_time).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = tree.once("--best-effort")
    assert sorted(e["line"] for e in report["parseErrors"]) == [calls[0] + 1, calls[1] + 1]
    proc = cli("--once", "--rebuild", "--data-dir", tree.data, "--store", tree.store,
               claude=tree.root, check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["hashed", "basename_only", "full_path"])
def test_project_dirs_named_by_hash_unless_full_paths(tree, mode):
    """A project dir spells its workspace path: with labels other than full
    paths no checkpoint (nor a report) names it."""
    tree.data.mkdir()
    (tree.data / "config.toml").write_text(f'[analytics]\nworkspace_labels = "{mode}"\n')
    tree.once()
    import sqlite3

    with sqlite3.connect(tree.store) as conn:
        paths = [row[0] for row in conn.execute("SELECT path FROM files")]
    projects = sorted(p.name for p in (tree.root / "projects").iterdir())
    logs = claude_code.discover(tree.root)
    assert len(paths) == len(logs) and all(p.startswith("claude-code:0/projects/") for p in paths)
    named = {p.split("/")[2] for p in paths}
    if mode == "full_path":
        assert named == set(projects)
    else:
        assert not named & set(projects) and all(len(n) == 16 for n in named)
        assert not any("home-dev" in p for p in paths)
        # one name per project dir, the same every run
        assert len(named) == len(projects)
        tree.once()
        with sqlite3.connect(tree.store) as conn:
            assert sorted(row[0] for row in conn.execute("SELECT path FROM files")) == sorted(paths)


# --- the one-pass decode against decode_line ------------------------------------

_SAMPLE_LINES = [
    json.loads(raw)
    for rel in _LOGS
    for raw in (CLAUDE / "home" / ".claude" / rel).read_bytes().splitlines()
    if raw.strip()
]
_ODD_VALUES = st.sampled_from(
    [None, "CANARYPROMPT7731", 7, -1, 2**36, 2**40, True, [], {}, [1], [{"type": 5}],
     [{"type": "tool_use"}], [{"type": "tool_result", "tool_use_id": "t", "is_error": "x"}],
     [{"type": "tool_result", "tool_use_id": "t"}, {"type": "text", "text": "x"}],
     "2026-06-13T11:25:60.106Z", "2026-06-13t11:25:25.1z", "0100-01-01T00:00:00Z", "<synthetic>",
     "progress", "summary"]
)  # fmt: skip


def _set_at(line: dict, path: tuple[str, ...], value: Any) -> dict:
    node = line
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            return line
        node = child
    node[path[-1]] = value
    return line


_PATHS = [("type",), ("sessionId",), ("uuid",), ("timestamp",), ("isSidechain",), ("requestId",),
          ("cwd",), ("message",), ("message", "content"), ("message", "model"), ("message", "id"),
          ("message", "usage", "input_tokens"), ("message", "usage", "cache_creation"),
          ("message", "stop_reason")]  # fmt: skip


@st.composite
def claude_lines(draw) -> bytes:
    """Sample lines with a few fields replaced, as progress lines too, or cut."""
    line = json.loads(json.dumps(draw(st.sampled_from(_SAMPLE_LINES))))
    for _ in range(draw(st.integers(0, 3))):
        line = _set_at(line, draw(st.sampled_from(_PATHS)), draw(_ODD_VALUES))
    if draw(st.booleans()) and isinstance(line, dict):
        nested = {k: v for k, v in line.items() if k != "sessionId"}
        line = {"type": "progress", "sessionId": line.get("sessionId"), "timestamp": "x",
                "data": {"type": "agent_progress", "agentId": "a", "message": nested}}  # fmt: skip
    raw = json.dumps(line).encode()
    return raw[: draw(st.integers(0, len(raw)))] if draw(st.integers(0, 9)) == 0 else raw


@settings(max_examples=400, deadline=None)
@given(st.lists(claude_lines(), max_size=6))
def test_one_pass_decode_reads_every_line_as_decode_line(lines):
    from collections import Counter

    from roder_analyticsd.pipeline.batch import Batch

    out: list = []
    facts: dict = {}
    prompts: dict = {}
    errors: list = []
    unknown: Counter = Counter()
    ingested = 0
    for number, line in enumerate(lines, 1):
        try:
            kind = claude_code.decode_line(line, out, facts, prompts)
        except ValueError as exc:
            errors.append((number, str(exc)))
            continue
        if kind is not None:
            ingested += 1
            if kind not in ("user", "assistant", "progress"):
                unknown[kind] += 1
    got = claude_code.decode(Batch(agent=claude_code.AGENT, path="p", lines=lines))
    assert got.events == out
    assert got.prompts == claude_code.encode_prompts(prompts)
    assert got.metadata == [claude_code._metadata(s, f) for s, f in facts.items()]
    assert [(e.line, e.message) for e in got.errors] == errors
    assert (got.unknown_kinds, got.lines_ingested) == (unknown, ingested)
