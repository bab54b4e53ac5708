"""The live daemon over Claude Code's logs: a real subprocess tailing a copy
of the sample tree (`--claude-dir`), compared with `--once` over the same
files into another store."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import dump_tables, run_cli
from test_claude_code import copy_tree
from test_daemon import BASE_MS, CONFIG, Corpus, Daemon, append, offsets, until

CANARY = "CANARYCLAUDELIVE9041"
SESSION = "1075770d-3ef6-4409-ba77-8c12fadc46a0"
ALPHA = "projects/-home-dev-alpha"
GROUPS = ("day", "session", "model")


def assistant_line(session: str, n: int, ts: str, prompt: int, output: int, cwd: str) -> bytes:
    """A complete assistant line with usage, in the sample's shape, its
    text a canary (never decoded)."""
    line = {
        "parentUuid": None, "isSidechain": False, "userType": "external", "cwd": cwd,
        "sessionId": session, "version": "2.0.14",
        "message": {
            "id": f"msg_live_{session[:8]}_{n}", "type": "message", "role": "assistant",
            "model": "claude-opus-4-5-20251101",
            "content": [{"type": "text", "text": f"{CANARY} {n}"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": prompt, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": output},
        },
        "requestId": f"req_live_{session[:8]}_{n}", "type": "assistant",
        "uuid": f"00000000-0000-4000-8000-{n:012d}", "timestamp": ts,
    }  # fmt: skip
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = copy_tree(tmp / "home")
        self.data = tmp / "roder"
        self.data.mkdir()
        self.store = tmp / "store" / "usage.sqlite3"
        self.daemons: list[Daemon] = []
        self.cleans = 0

    def make(self, rescan: float = 30, sources: str = "") -> Daemon:
        (self.data / "config.toml").write_text(CONFIG.format(rescan=rescan) + sources)
        daemon = Daemon(self.data, self.store, self.tmp / "daemon.log",
                        ("--claude-dir", str(self.root)))  # fmt: skip
        self.daemons.append(daemon)
        return daemon

    def name(self, path: Path) -> str:
        return f"claude-code:0/{path.relative_to(self.root).as_posix()}"

    def logs(self) -> list[Path]:
        return sorted(self.root.glob("projects/*/*.jsonl")) + sorted(
            self.root.glob("projects/*/*/subagents/*.jsonl")
        )

    def caught_up(self) -> bool:
        """Every log's checkpoint is at its last newline."""
        got = offsets(self.store)
        for path in self.logs():
            if got.get(self.name(path)) != path.read_bytes().rfind(b"\n") + 1:
                return False
        return True

    def once(self) -> Path:
        """A clean `--once` over the tree as it is now, into a new store."""
        self.cleans += 1
        store = self.tmp / f"clean-{self.cleans}" / "usage.sqlite3"
        run_cli("--once", "--best-effort", "--data-dir", self.data, "--store", store,
                "--claude-dir", self.root)  # fmt: skip
        return store

    def numbers(self, store: Path) -> dict[str, Any]:
        out = {}
        for group in GROUPS:
            out[group] = self.stats(store, "tokens", "--group", group, "--limit", "1000")
        out["tools"] = self.stats(store, "tools")
        return out

    def stats(self, store: Path, *args: str) -> Any:
        proc = run_cli("stats", *args, "--agent", "claude-code", "--json",
                       "--data-dir", self.data, "--store", store)  # fmt: skip
        return json.loads(proc.stdout)


@pytest.fixture
def cc(tmp_path: Path):
    env = Env(tmp_path)
    yield env
    for proc in (p for daemon in env.daemons for p in daemon.procs):
        if proc.poll() is None:  # never leave a daemon behind a failed test
            proc.kill()
            proc.wait()


def _day_total(rows: list[dict[str, Any]], day: str) -> int:
    return next(r["totalTokens"] for r in rows if r["group"] == day)


def test_catch_up_live_new_project_rename_and_delete(cc: Env) -> None:
    daemon = cc.make().start()  # no rescan meanwhile: the watcher reports every change
    started = next(e for e in daemon.events() if e["event"] == "daemon_started")
    assert started["claude_code_files"] == len(cc.logs()) > 0
    until(cc.caught_up, what="catch-up of the tree")
    want = cc.numbers(cc.once())
    assert want["day"] and cc.numbers(cc.store) == want

    # a complete line appended to a session log is counted; half of one waits
    log = cc.root / ALPHA / f"{SESSION}.jsonl"
    line = assistant_line(SESSION, 1, "2026-05-05T12:00:00.000Z", 100, 50, "/home/dev/alpha")
    before = offsets(cc.store)[cc.name(log)]
    append(log, line[:60])
    time.sleep(0.4)
    assert offsets(cc.store)[cc.name(log)] == before
    append(log, line[60:])
    until(cc.caught_up, what="the appended line")
    day = cc.stats(cc.store, "tokens", "--group", "day")
    assert _day_total(day, "2026-05-05") == _day_total(want["day"], "2026-05-05") + 150

    # a session in a new project dir, then its subagent's log
    project = cc.root / "projects" / "-home-dev-omega"
    project.mkdir()
    session = "5e55a0d1-0000-4000-8000-000000000001"
    (project / f"{session}.jsonl").write_bytes(
        assistant_line(session, 2, "2026-05-06T08:00:00.000Z", 7, 3, "/home/dev/omega")
    )
    until(cc.caught_up, what="a new project's session")
    subagents = project / session / "subagents"
    subagents.mkdir(parents=True)
    (subagents / "agent-0001.jsonl").write_bytes(
        assistant_line(session, 3, "2026-05-06T08:01:00.000Z", 11, 5, "/home/dev/omega")
    )
    until(cc.caught_up, what="a new subagent log")

    # a renamed log keeps its checkpoint: new path, nothing counted again
    old = cc.root / ALPHA / "21636369-8b52-4b4a-97b7-50923ceb3ffd.jsonl"
    new = old.with_name("renamed.jsonl")
    old.rename(new)
    until(lambda: cc.name(new) in offsets(cc.store), what="the rename")
    assert cc.name(old) not in offsets(cc.store)
    clean = cc.once()
    want = cc.numbers(clean)
    assert cc.numbers(cc.store) == want
    assert daemon.stop(signal.SIGTERM) == 0

    # a deleted log: its checkpoint is forgotten (two rescans), its rows stay;
    # the logs still there keep theirs, rescan after rescan
    daemon = cc.make(rescan=0.2).start()
    done = [e for e in daemon.events() if e["event"] == "catch_up_done"]
    assert len(done) == 2 and done[-1]["lines"] == 0  # nothing read again
    gone = cc.root / ALPHA / "0be5b223-8d44-4881-8a11-053172397c20.jsonl"
    gone.unlink()
    until(lambda: cc.name(gone) not in offsets(cc.store), what="the dropped checkpoint")
    time.sleep(1)  # a few more rescans
    assert cc.caught_up() and cc.numbers(cc.store) == want
    assert [e["files"] for e in daemon.events() if e["event"] == "files_dropped"] == [1]

    assert daemon.stop(signal.SIGTERM) == 0
    got, clean_rows = dump_tables(cc.store), dump_tables(clean)
    for table in clean_rows:
        assert got[table] == clean_rows[table], table
    text = daemon.log.read_text()
    assert CANARY not in text and str(cc.root) not in text and "/home/dev" not in text


def test_kill9_mid_stream_loses_and_doubles_nothing(cc: Env) -> None:
    rng = random.Random(17)
    targets = [cc.root / ALPHA / f"{SESSION}.jsonl"]
    for i in range(3):
        project = cc.root / "projects" / f"-home-dev-p{i}"
        project.mkdir()
        targets.append(project / f"5e55a0d1-0000-4000-8000-00000000010{i}.jsonl")
    streams = {}
    for k, path in enumerate(targets):
        session = path.stem if k else SESSION
        streams[path] = b"".join(
            assistant_line(session, 1000 * (k + 1) + n,
                           f"2026-05-0{1 + n % 7}T1{n % 10}:00:00.000Z",
                           rng.randint(1, 5000), rng.randint(1, 900), f"/home/dev/p{k}")
            for n in range(250)
        )  # fmt: skip
    daemon = cc.make().start()

    def writer() -> None:
        wrng = random.Random(3)
        left = dict(streams)
        while left:
            path = wrng.choice(sorted(left))
            cut = wrng.randint(1, 6000)  # anywhere, mid-line too
            append(path, left[path][:cut])
            left[path] = left[path][cut:]
            if not left[path]:
                del left[path]
            time.sleep(wrng.random() * 0.03)

    feeder = threading.Thread(target=writer)
    feeder.start()
    kills = 0
    while feeder.is_alive() or kills < 3:
        time.sleep(rng.uniform(0.05, 0.3))
        daemon.kill9()
        kills += 1
        daemon.start(wait=rng.random() < 0.5)  # sometimes killed again mid catch-up
    feeder.join()
    until(cc.caught_up, timeout=20, what="catch up")
    until(lambda: daemon.count("catch_up_done") > daemon.catch_ups_before_start, timeout=20)
    assert daemon.stop(signal.SIGINT) == 0
    clean = cc.once()
    got, want = dump_tables(cc.store), dump_tables(clean)
    for table in want:
        assert got[table] == want[table], table
    assert cc.numbers(cc.store) == cc.numbers(clean)
    with sqlite3.connect(clean) as conn:
        calls = conn.execute("SELECT count(*) FROM token_usage").fetchone()[0]
    assert calls >= 4 * 250


def test_claude_code_false_never_reads_it_and_true_requires_it(cc: Env, tmp_path: Path) -> None:
    daemon = cc.make(sources="\n[analytics.sources]\nclaude_code = false\n").start()
    log = cc.root / ALPHA / f"{SESSION}.jsonl"
    append(log, assistant_line(SESSION, 9, "2026-05-05T12:00:00.000Z", 100, 50, "/x"))
    # a Roder thread after it: once that is read, the Claude Code line was seen too
    thread = cc.data / "threads" / "thr-a"
    thread.mkdir(parents=True)
    (thread / "events.jsonl").write_bytes(b"".join(Corpus().thread("thr-a", 2, BASE_MS)))
    until(lambda: "threads/thr-a/events.jsonl" in offsets(cc.store), what="the Roder thread")
    assert not [p for p in offsets(cc.store) if p.startswith("claude-code:")]
    assert cc.stats(cc.store, "tokens", "--group", "day") == []
    assert daemon.stop() == 0

    (cc.data / "config.toml").write_text("[analytics.sources]\nclaude_code = true\n")
    proc = run_cli("--data-dir", cc.data, "--store", cc.store, "--claude-dir",
                   tmp_path / "nowhere", check=False, timeout=20)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "claude_code = true" in lines[0], proc.stderr


def test_auto_picks_up_a_root_that_appears_later(cc: Env, monkeypatch) -> None:
    later = cc.tmp / "later-claude"
    later.mkdir()  # no projects/ yet: nothing to read
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(later))
    daemon = Daemon(cc.data, cc.store, cc.tmp / "auto.log")
    cc.daemons.append(daemon)
    (cc.data / "config.toml").write_text(CONFIG.format(rescan=1))
    daemon.start()
    shutil.copytree(cc.root / "projects", later / "projects")
    cc.root = later
    until(cc.caught_up, what="the new root's logs")
    assert cc.numbers(cc.store) == cc.numbers(cc.once())
    assert daemon.stop() == 0


def test_a_flood_into_one_log_does_not_hold_back_another(cc: Env) -> None:
    daemon = cc.make().start()
    until(cc.caught_up, what="catch-up")
    flood = cc.root / ALPHA / f"{SESSION}.jsonl"
    quiet = cc.root / ALPHA / "8e6f7227-6fe0-44cd-91a7-8db3653e4386.jsonl"
    lines = [
        assistant_line(SESSION, 10_000 + n, "2026-05-05T12:00:00.000Z", 3, 2, "/home/dev/alpha")
        for n in range(20_000)
    ]
    append(flood, b"".join(lines))  # ~200 shares of the per-step budget
    time.sleep(0.2)  # the flood is being read
    line = assistant_line(quiet.stem, 1, "2026-05-05T13:00:00.000Z", 1, 1, "/home/dev/alpha")
    append(quiet, line)
    size = quiet.stat().st_size
    took = until(lambda: offsets(cc.store).get(cc.name(quiet)) == size, what="the quiet log")
    assert offsets(cc.store)[cc.name(flood)] < flood.stat().st_size, took  # still flooding
    assert took < 3
    until(cc.caught_up, timeout=60, what="the flood")
    assert daemon.stop() == 0


def test_an_unreadable_log_is_named_by_its_checkpoint_name_and_read_once_it_can_be(
    cc: Env,
) -> None:
    daemon = cc.make().start()
    fifo = cc.root / ALPHA / "a0a0a0a0-0000-4000-8000-000000000abc.jsonl"
    os.mkfifo(fifo)  # named like a log, not a regular file: refused, reported once
    until(lambda: daemon.count("file_unreadable") == 1, what="unreadable logged")
    bad = next(e for e in daemon.events() if e["event"] == "file_unreadable")
    assert bad["path"] == cc.name(fifo) and str(cc.root) not in json.dumps(bad)
    tmp = cc.tmp / "replacement"
    tmp.write_bytes(assistant_line(fifo.stem, 1, "2026-05-05T13:00:00.000Z", 5, 5, "/x"))
    os.replace(tmp, fifo)
    until(cc.caught_up, what="the log, readable now")
    until(lambda: daemon.count("file_readable_again") == 1, what="readable again logged")
    again = next(e for e in daemon.events() if e["event"] == "file_readable_again")
    assert again["path"] == cc.name(fifo)
    assert daemon.stop() == 0


def test_retries_map_a_claude_code_name_back_to_its_file(cc: Env) -> None:
    from roder_analyticsd.config import load_settings
    from roder_analyticsd.live.daemon import Daemon as LiveDaemon
    from roder_analyticsd.live.ingest import Report
    from roder_analyticsd.live.options import DaemonOptions
    from roder_analyticsd.sources.files import FileError

    settings = load_settings(cc.data, cc.store)
    settings = dataclasses.replace(settings, claude_dirs=(cc.root,))
    live = LiveDaemon(settings, DaemonOptions())
    log = live.claude_roots[0] / ALPHA / f"{SESSION}.jsonl"
    name = cc.name(cc.root / ALPHA / f"{SESSION}.jsonl")
    live._log_problems(Report(file_errors=[FileError(name, "permission denied")]), 0, 0,
                       {name: log})  # fmt: skip
    live._retry_files()
    assert live.pending.claude_code == {log} and not live.pending.events
    live._log_problems(Report(), 0, 0, {name: log})  # read fine this time
    assert live.file_errors == {} and live.claude_failed == {}


def test_logs_at_any_dir_lists_what_discover_lists_there(cc: Env) -> None:
    from roder_analyticsd.sources import claude_code

    every = claude_code.discover(cc.root)
    assert claude_code.logs_at(cc.root / "projects", cc.root) == every
    seen: set[Path] = set()
    for path in sorted(cc.root.rglob("*")):
        listed = claude_code.logs_at(path, cc.root)
        assert set(listed) <= set(every), path
        assert (path in listed) == (path in every), path  # a log lists itself
        seen.update(listed)
    assert seen == set(every)
    assert claude_code.logs_at(cc.root / "settings.json", cc.root) == []
    assert claude_code.logs_at(cc.tmp / "elsewhere.jsonl", cc.root) == []
