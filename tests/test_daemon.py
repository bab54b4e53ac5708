"""The live daemon, as a real subprocess over real files and a real store.

Every scenario ends the same way: the daemon's tables must equal those of a
clean `--once` over the same files into another store.
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, _env, dump_tables, run_cli

CANARY = "CANARYBODY5f1e2d"
CONFIG = """
[analytics.daemon]
flush_interval_ms = 40
rescan_interval_s = {rescan}
rollup_interval_s = 0.3
busy_timeout_ms = 100
retry_max_s = 0.2
"""

# --------------------------------------------------------------- a corpus


def _ts(ms: int) -> str:
    secs, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}123456Z"


class Corpus:
    """Lines in the envelope/payload shapes of the shared sample."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.seq = 0

    def line(self, ms: int, kind: str, thread: str, turn: str | None, variant: str, **p) -> bytes:
        self.seq += 1
        payload = {"thread_id": thread, **({"turn_id": turn} if turn else {}), **p}
        payload["timestamp"] = _ts(ms)
        envelope = {
            "event_id": f"evt-{self.seq}-{self.rng.getrandbits(32):08x}",
            "seq": self.seq,
            "timestamp": _ts(ms + 1),
            "source": "Core",
            "kind": kind,
            "thread_id": thread,
            "turn_id": turn,
            "event": {variant: payload},
        }
        return json.dumps(envelope, separators=(",", ":")).encode() + b"\n"

    def thread(self, thread: str, turns: int, start_ms: int, tools: int = 4) -> list[bytes]:
        rng, line = self.rng, self.line
        out = [line(start_ms, "thread.created", thread, None, "ThreadCreated")]
        ms = start_ms
        for t in range(1, turns + 1):
            turn = f"turn-{t}"
            ms += rng.randint(60_000, 4 * 3_600_000)  # turns spread over days
            out.append(
                line(ms, "turn.started", thread, turn, "TurnStarted", runtime_profile="interactive")
            )
            provider, model = rng.choice([("anthropic", "claude-sonnet-4-5"), ("openai", "gpt-5")])
            ref = {"provider": provider, "model": model}
            out.append(
                line(ms + 5, "inference.started", thread, turn, "InferenceStarted", model=ref)
            )
            for k in range(rng.randint(0, tools)):
                call = {"tool_id": f"call_{t}_{k}", "tool_name": rng.choice(["shell", "grep"])}
                begin = ms + 10 + k * 1000
                body = {"command": f"cat {CANARY}"}
                out.append(
                    line(begin, "tool.call_started", thread, turn, "ToolCallStarted",
                         display_payload=body, **call)
                )  # fmt: skip
                done = begin + rng.randint(1, 900)
                failed = rng.random() < 0.1
                out.append(
                    line(done, "tool.call_completed", thread, turn, "ToolCallCompleted",
                         is_error=failed, output=f"out {CANARY}", **call)
                )  # fmt: skip
            usage = {"prompt_tokens": rng.randint(100, 9000), "completion_tokens": 50}
            usage |= {"cached_prompt_tokens": 10, "cache_creation_prompt_tokens": 0}
            usage["total_tokens"] = usage["prompt_tokens"] + 50
            streamed = {"Usage": usage}  # per-step usage: never counted
            out.append(
                line(ms + 6, "inference.event_received", thread, turn, "InferenceEventReceived",
                     event=streamed)
            )  # fmt: skip
            end = ms + 10 + tools * 1000
            if rng.random() < 0.15:
                out.append(
                    line(end, "turn.failed", thread, turn, "TurnFailed", usage=usage,
                         error=f"boom {CANARY}", error_kind="provider")
                )  # fmt: skip
            else:
                out.append(
                    line(end, "turn.completed", thread, turn, "TurnCompleted", usage=usage,
                         finish_reason="stop")
                )  # fmt: skip
        return out


def metadata(thread: str, workspace: str = "/home/dev/work/proj") -> bytes:
    doc = {"thread_id": thread, "title": f"t {CANARY}", "workspace": workspace,
           "provider": "openai", "model": "gpt-5",
           "created_at": "2026-10-01T00:00:00Z", "updated_at": "2026-10-02T00:00:00Z"}  # fmt: skip
    return json.dumps(doc).encode()


CLI = [sys.executable, "-m", "roder_analyticsd"]
BASE_MS = 1_790_812_800_000  # 2026-10-01T00:00:00Z

# --------------------------------------------------------------- the daemon


class Daemon:
    def __init__(self, data_dir: Path, store: Path, log: Path, args: tuple[str, ...] = ()) -> None:
        self.data_dir, self.store, self.log, self.args = data_dir, store, log, args
        self.proc: subprocess.Popen | None = None
        self.procs: list[subprocess.Popen] = []
        self.catch_ups_before_start = 0

    def start(self, *, wait: bool = True) -> Daemon:
        self.catch_ups_before_start = starts = self.count("catch_up_done")
        self.proc = subprocess.Popen(
            [*CLI, "--data-dir", str(self.data_dir), "--store", str(self.store), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,  # a pipe: the daemon's file size limit can't touch it
            env=_env(),
            cwd=REPO,
        )
        self.procs.append(self.proc)
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        if wait:
            until(lambda: self.count("catch_up_done") > starts, what="catch-up")
        return self

    def _drain(self, pipe) -> None:
        with open(self.log, "ab") as out:
            for line in pipe:
                out.write(line)
                out.flush()

    def events(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.startswith("{")]

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.05)  # the last log lines
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


def until(predicate, timeout: float = 10.0, what: str = "condition") -> float:
    began = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def offsets(store: Path) -> dict[str, int]:
    if not store.exists():
        return {}
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT path, offset FROM files"))
    except sqlite3.OperationalError:
        return {}  # not migrated yet
    finally:
        conn.close()


def complete_sizes(data_dir: Path) -> dict[str, int]:
    """What a caught-up daemon has consumed: up to each file's last newline."""
    out = {}
    for path in sorted(data_dir.glob("*/*/events.jsonl")):
        data = path.read_bytes()
        out[path.relative_to(data_dir).as_posix()] = data.rfind(b"\n") + 1
    return out


def caught_up(data_dir: Path, store: Path) -> bool:
    got = offsets(store)
    return all(got.get(rel) == size for rel, size in complete_sizes(data_dir).items())


def assert_same_as_once(data_dir: Path, store: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean" / "usage.sqlite3"
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", clean)
    got, want = dump_tables(store), dump_tables(clean)
    for table in want:
        assert got[table] == want[table], table
    assert sum(len(rows) for rows in want.values()) > 0
    sql = "SELECT path, offset, line_no FROM files ORDER BY path"
    with sqlite3.connect(store) as a, sqlite3.connect(clean) as b:
        live_files = [r for r in a.execute(sql) if (data_dir / r[0]).exists()]
        assert live_files == b.execute(sql).fetchall()


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


@pytest.fixture
def env(tmp_path: Path):
    data_dir = tmp_path / "roder"
    data_dir.mkdir()
    store = tmp_path / "store" / "usage.sqlite3"
    daemons: list[Daemon] = []

    def make(rescan: float = 30) -> Daemon:
        (data_dir / "config.toml").write_text(CONFIG.format(rescan=rescan))
        daemon = Daemon(data_dir, store, tmp_path / "daemon.log")
        daemons.append(daemon)
        return daemon

    yield data_dir, store, make
    for proc in (p for daemon in daemons for p in daemon.procs):
        if proc.poll() is None:  # never leave a daemon behind a failed test
            proc.kill()
            proc.wait()


# --------------------------------------------------------------- tests


REL_A = "threads/thr-a/events.jsonl"


def test_live_appends_new_threads_archive_and_sigterm(env, tmp_path: Path) -> None:
    data_dir, store, make = env
    daemon = make(rescan=0.3).start()  # an empty data dir: no threads/ yet

    # a second instance on the same store refuses to start
    second = run_cli("--data-dir", data_dir, "--store", store, check=False, timeout=20)
    assert second.returncode == 1
    assert "already running" in second.stderr and str(daemon.proc.pid) in second.stderr
    assert "Traceback" not in second.stderr

    corpus = Corpus()
    a_dir = data_dir / "threads" / "thr-a"
    a_dir.mkdir(parents=True)
    (a_dir / "metadata.json").write_bytes(metadata("thr-a"))
    events = a_dir / "events.jsonl"
    lines = corpus.thread("thr-a", turns=6, start_ms=BASE_MS)
    latencies = []
    for line in lines:
        append(events, line)
        size = events.stat().st_size
        latencies.append(until(lambda s=size: offsets(store).get(REL_A, 0) >= s, what="a line"))
    latencies.sort()
    assert latencies[-1] < 1.0, latencies  # append → queryable

    # half a line is not an event yet; its newline makes it one
    more = corpus.thread("thr-a", turns=1, start_ms=BASE_MS + 10 * 86_400_000)
    before = offsets(store)["threads/thr-a/events.jsonl"]
    append(events, more[0][:40])
    time.sleep(0.3)
    assert offsets(store)["threads/thr-a/events.jsonl"] == before
    append(events, more[0][40:] + b"".join(more[1:]))

    # a thread created while running
    b_dir = data_dir / "threads" / "thr-b"
    b_dir.mkdir()
    (b_dir / "events.jsonl").write_bytes(b"".join(corpus.thread("thr-b", 5, BASE_MS)))
    until(lambda: caught_up(data_dir, store), what="new thread")

    # archiving renames the dir: same file, new path, nothing counted twice
    (data_dir / "archived_threads").mkdir()
    a_dir.rename(data_dir / "archived_threads" / "thr-a")
    until(lambda: "archived_threads/thr-a/events.jsonl" in offsets(store), what="archive")
    append(data_dir / "archived_threads" / "thr-a" / "events.jsonl",
           b"".join(corpus.thread("thr-a", 2, BASE_MS + 20 * 86_400_000)[1:]))  # fmt: skip

    # a replaced file (new inode, same lines and more) is read again
    b_events = b_dir / "events.jsonl"
    replacement = b_dir / "events.jsonl.tmp"
    replacement.write_bytes(b_events.read_bytes() + b"".join(corpus.thread("thr-b", 1, BASE_MS)))
    os.replace(replacement, b_events)

    # a deleted thread dir: its checkpoint is dropped (two rescans), rows stay
    c_dir = data_dir / "threads" / "thr-c"
    c_dir.mkdir()
    (c_dir / "events.jsonl").write_bytes(b"".join(corpus.thread("thr-c", 2, BASE_MS)))
    until(lambda: "threads/thr-c/events.jsonl" in offsets(store), what="thread c")
    shutil.rmtree(c_dir)
    until(lambda: "threads/thr-c/events.jsonl" not in offsets(store), what="drop")
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT count(*) FROM turns WHERE thread_id = 'thr-c'").fetchone()[0]
        conn.execute("DELETE FROM turns WHERE thread_id = 'thr-c'")  # gone from the files too
        conn.execute("DELETE FROM tool_calls WHERE thread_id = 'thr-c'")
        conn.execute("DELETE FROM token_usage WHERE thread_id = 'thr-c'")
        conn.execute("DELETE FROM sessions WHERE thread_id = 'thr-c'")
        conn.execute("DELETE FROM activity WHERE thread_id = 'thr-c'")

    until(lambda: caught_up(data_dir, store), what="catch up")
    began = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 5
    assert daemon.count("daemon_stopped") == 1
    with sqlite3.connect(store) as conn:  # the rollups of the deleted thread's days
        days = [r[0] for r in conn.execute("SELECT DISTINCT day FROM daily_rollups")]
    _refresh(store, days)
    assert_same_as_once(data_dir, store, tmp_path)

    text = daemon.log.read_text()
    assert CANARY not in text and "/home/dev" not in text
    for line in text.splitlines():  # not a TTY: JSON lines
        assert isinstance(json.loads(line), dict)


def _refresh(store: Path, days: list[str]) -> None:
    import anyio

    from roder_analyticsd.store.connection import open_store
    from roder_analyticsd.store.maintenance import all_days, refresh_rollups

    async def go() -> None:
        conn = await open_store(store)
        try:
            await refresh_rollups(conn, set(days) | await all_days(conn))
        finally:
            await conn.close()

    anyio.run(go)


def test_kill9_during_bulk_load_loses_and_doubles_nothing(env, tmp_path: Path) -> None:
    data_dir, store, make = env
    corpus = Corpus(seed=11)
    threads = {f"thr-{i:02d}": corpus.thread(f"thr-{i:02d}", 65, BASE_MS + i * 3_600_000)
               for i in range(6)}  # fmt: skip
    assert sum(map(len, threads.values())) > 3000
    for name in threads:
        (data_dir / "threads" / name).mkdir(parents=True)
        (data_dir / "threads" / name / "metadata.json").write_bytes(metadata(name))
    daemon = make().start()

    def writer() -> None:
        rng = random.Random(3)
        queues = {name: list(lines) for name, lines in threads.items()}
        while queues:
            name = rng.choice(sorted(queues))
            n = rng.randint(1, 60)
            chunk, queues[name] = queues[name][:n], queues[name][n:]
            append(data_dir / "threads" / name / "events.jsonl", b"".join(chunk))
            if not queues[name]:
                del queues[name]
            time.sleep(rng.random() * 0.05)

    feeder = threading.Thread(target=writer)
    feeder.start()
    rng = random.Random(5)
    kills = 0
    while feeder.is_alive() or kills < 4:
        time.sleep(rng.uniform(0.05, 0.3))
        daemon.kill9()
        kills += 1
        daemon.start(wait=rng.random() < 0.5)  # sometimes killed again mid catch-up
    feeder.join()
    until(lambda: caught_up(data_dir, store), timeout=20, what="catch up")
    # the last instance may still be starting (its predecessor caught up):
    # the clean stop below is for a running daemon
    until(lambda: daemon.count("catch_up_done") > daemon.catch_ups_before_start, timeout=20)
    assert daemon.stop(signal.SIGINT) == 0
    assert_same_as_once(data_dir, store, tmp_path)


def _set_fsize(pid: int, limit: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def test_corrupt_unreadable_locked_and_full_disk(env, tmp_path: Path) -> None:
    data_dir, store, make = env
    corpus = Corpus(seed=3)
    t_dir = data_dir / "threads" / "thr-r"
    t_dir.mkdir(parents=True)
    events = t_dir / "events.jsonl"
    lines = corpus.thread("thr-r", 12, BASE_MS)
    events.write_bytes(lines[0])
    daemon = make().start()

    def visible() -> bool:
        return caught_up(data_dir, store)

    # a corrupt line is logged with file:line and skipped; the file goes on
    append(events, lines[1] + b'{"event_id": "x", "seq": \n' + lines[2])
    until(visible, what="after corrupt line")
    until(lambda: daemon.count("corrupt_line_skipped") == 1)
    bad = next(e for e in daemon.events() if e["event"] == "corrupt_line_skipped")
    assert (bad["path"], bad["line"]) == ("threads/thr-r/events.jsonl", 3)

    # an unreadable file is reported, the others go on, it is read once it can be
    u_dir = data_dir / "threads" / "thr-u"
    (u_dir / "events.jsonl").mkdir(parents=True)
    append(events, lines[3])
    until(lambda: daemon.count("file_unreadable") == 1, what="unreadable logged")
    until(lambda: offsets(store)["threads/thr-r/events.jsonl"] == events.stat().st_size)
    (u_dir / "events.jsonl").rmdir()
    (u_dir / "events.jsonl").write_bytes(b"".join(corpus.thread("thr-u", 3, BASE_MS)))
    until(visible, what="unreadable file, later readable")

    # another writer holding the store delays writes; nothing is lost
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    append(events, lines[4])
    until(lambda: daemon.count("store_write_failed") == 1, what="locked logged")
    assert not visible()
    holder.execute("COMMIT")
    until(visible, what="after lock")
    # ...while a long reader does not even delay them (WAL)
    holder.execute("BEGIN")
    holder.execute("SELECT count(*) FROM turns").fetchone()
    append(events, lines[5])
    until(visible, what="beside a reader")
    holder.execute("COMMIT")
    holder.close()

    # a full disk (here: a file size limit) stops writes until space returns
    full_disk = hasattr(resource, "prlimit")  # Linux
    if full_disk:
        _set_fsize(daemon.proc.pid, 1)
        try:
            append(events, b"".join(lines[6:9]))
            until(lambda: daemon.count("store_write_failed") == 2, what="disk full logged")
            time.sleep(0.3)
            assert not visible()
        finally:
            _set_fsize(daemon.proc.pid, resource.RLIM_INFINITY)
        until(visible, what="after disk full")
    append(events, b"".join(lines[9:]))
    until(visible)

    assert daemon.stop(signal.SIGTERM) == 0
    assert daemon.count("store_writable_again") == 1 + full_disk
    assert_same_as_once(data_dir, store, tmp_path)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_log_lines_keep_only_safe_keys() -> None:
    import structlog

    from roder_analyticsd.logs import configure_logging

    try:
        for tty in (False, True):
            stream = _Stream(tty)
            configure_logging(stream=stream)
            structlog.get_logger().warning(
                "corrupt_line_skipped", path="threads/x/events.jsonl", line=3,
                output=f"out {CANARY}", workspace="/home/dev/secret", title=CANARY,
            )  # fmt: skip
            text = stream.getvalue()
            assert text.count("\n") == 1 and "threads/x/events.jsonl" in text
            assert CANARY not in text and "/home/dev" not in text
            if tty:  # people get a console line, machines a JSON object
                assert not text.startswith("{")
            else:
                assert json.loads(text)["line"] == 3
    finally:
        structlog.reset_defaults()


def _wal_resets(store: Path) -> int:
    """The WAL header's checkpoint sequence number: +1 each time the WAL
    starts over, which it does only after a checkpoint copied all of it."""
    header = store.with_name(store.name + "-wal").read_bytes()[:16]
    return int.from_bytes(header[12:16], "big") if len(header) == 16 else -1


def test_the_wal_is_checkpointed_beside_the_writes(env, tmp_path: Path) -> None:
    """After the catch-up the WAL is checkpointed by a connection of its own
    (a checkpoint syncs, and must not stall a commit): a few small writes,
    far below SQLite's autocheckpoint size, still let the WAL start over."""
    data_dir, store, make = env
    corpus = Corpus(seed=5)
    lines = corpus.thread("thr-w", 40, BASE_MS)
    path = data_dir / "threads" / "thr-w" / "events.jsonl"
    path.parent.mkdir(parents=True)
    append(path, b"".join(lines[:20]))
    daemon = make().start()
    seen = []
    for start in range(20, 80, 20):
        append(path, b"".join(lines[start : start + 20]))
        until(lambda: caught_up(data_dir, store), what="the appended lines")
        seen.append(_wal_resets(store))
        time.sleep(1.5)  # a checkpoint runs meanwhile; the next write starts the WAL over
    assert seen[-1] > seen[0] >= 0, seen
    assert daemon.stop() == 0
    assert_same_as_once(data_dir, store, tmp_path)
