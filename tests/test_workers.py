"""A backlog staged in worker processes (as `--once` does for a big data
dir, or a big Claude Code tree) gives exactly the store one process gives;
old stores migrate."""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import anyio
import pytest
from conftest import REPO, SAMPLES, dump_tables

from roder_analyticsd.config import load_settings
from roder_analyticsd.live import ingest
from roder_analyticsd.live.ingest import (
    Ingestor,
    Report,
    SharedCommits,
    StrictModeError,
    WorkerError,
    finish,
    ingest_claude_code,
)
from roder_analyticsd.live.workers import Worker
from roder_analyticsd.pipeline.batch import Rows
from roder_analyticsd.pipeline.project import NO_EVENTS
from roder_analyticsd.sources.roder import discover
from roder_analyticsd.store.connection import open_store
from roder_analyticsd.store.maintenance import dirty_days
from roder_analyticsd.store.schema import MIGRATIONS
from roder_analyticsd.store.writer import write_rows


def ingest_once(
    data_dir: Path, store: Path, *, workers: bool, strict: bool = False,
    commit_rows: int | None = None,
) -> Report:  # fmt: skip
    async def go() -> Report:
        conn = await open_store(store)
        try:
            settings = load_settings(data_dir, store)
            # worker_min_bytes=0: even the small sample goes to the workers
            ingestor = Ingestor(
                conn, settings, strict=strict, worker_min_bytes=0 if workers else None
            )
            ingestor.commit_rows = commit_rows
            await ingestor.start()
            report = Report()
            await ingestor.ingest(*discover(data_dir), report)
            await finish(conn, settings, report)
            return report
        finally:
            await conn.close()

    return anyio.run(go)


def ingest_claude(root: Path, store: Path, *, workers: bool) -> Report:
    """Every Claude Code log under `root`, as `--once` reads them."""

    async def go() -> Report:
        conn = await open_store(store)
        try:
            settings = load_settings(store.parent / "no-roder", store)
            ingestor = Ingestor(
                conn, settings, strict=False, worker_min_bytes=0 if workers else None
            )
            await ingestor.start()
            report = Report()
            await ingest_claude_code(ingestor, [root], report)
            await finish(conn, settings, report)
            return report
        finally:
            await conn.close()

    return anyio.run(go)


def test_worker_processes_give_the_same_store(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(ingest, "SLICE_BYTES", 2048)  # many slices, finishing in any order
    alone = ingest_once(data_dir, tmp_path / "alone.sqlite3", workers=False)
    staged = ingest_once(data_dir, tmp_path / "staged.sqlite3", workers=True)

    assert dump_tables(tmp_path / "staged.sqlite3") == dump_tables(tmp_path / "alone.sqlite3")
    assert staged.lines_ingested == alone.lines_ingested > 0
    assert staged.files_scanned == alone.files_scanned
    assert staged.sessions_enriched == alone.sessions_enriched
    assert staged.unknown_kinds == alone.unknown_kinds
    key = lambda e: (e.path, e.line)  # noqa: E731
    assert sorted(staged.parse_errors, key=key) == sorted(alone.parse_errors, key=key) != []

    # the checkpoints came back from the workers too: nothing is read twice
    again = ingest_once(data_dir, tmp_path / "staged.sqlite3", workers=True)
    assert again.lines_ingested == 0
    assert again.lines_skipped_by_offset >= staged.lines_ingested


def test_claude_code_logs_in_workers_give_the_same_store(tmp_path, monkeypatch):
    root = SAMPLES / "claude-code" / "home" / ".claude"
    monkeypatch.setattr(ingest, "SLICE_BYTES", 2048)  # many slices, finishing in any order
    alone = ingest_claude(root, tmp_path / "alone.sqlite3", workers=False)
    called, call = [], Worker.call

    async def recording(self, func, *args):
        called.append(func.__name__)
        return await call(self, func, *args)

    monkeypatch.setattr(Worker, "call", recording)
    staged = ingest_claude(root, tmp_path / "staged.sqlite3", workers=True)
    assert called.count("stage_files") > 5  # the slices did go to the workers

    assert dump_tables(tmp_path / "staged.sqlite3") == dump_tables(tmp_path / "alone.sqlite3")
    assert staged.to_json() == alone.to_json()
    assert staged.lines_ingested > 0 and staged.files_scanned > 10
    with sqlite3.connect(tmp_path / "staged.sqlite3") as conn:
        agents = {row[0] for row in conn.execute("SELECT agent FROM token_usage")}
        paths = {row[0] for row in conn.execute("SELECT path FROM files")}
    assert agents == {"claude-code"}  # the workers' batches kept their agent
    assert paths and all(p.startswith("claude-code:0/projects/") for p in paths)  # and names

    # the checkpoints came back from the workers too: nothing is read twice
    again = ingest_claude(root, tmp_path / "staged.sqlite3", workers=True)
    assert again.lines_ingested == 0
    assert again.lines_skipped_by_offset == staged.lines_ingested + len(staged.parse_errors)


def test_strict_mode_stops_cleanly_in_workers(tmp_path, data_dir):
    alone = ingest_once(data_dir, tmp_path / "alone.sqlite3", workers=False)
    with pytest.raises(StrictModeError) as failure:
        ingest_once(data_dir, tmp_path / "strict.sqlite3", workers=True, strict=True)
    # one of the sample's corrupt lines, as file:line: message
    assert str(failure.value) in {f"{e.path}:{e.line}: {e.message}" for e in alone.parse_errors}


@pytest.mark.parametrize("commit_rows", [0, 40, 10**9])
def test_writes_sharing_a_transaction_give_the_same_store(tmp_path, data_dir, commit_rows):
    """Groups of batches committed together (a commit per group, per few
    groups, or one for the whole load): the same store, and in strict mode
    the same rows before the bad line."""
    alone = tmp_path / "alone.sqlite3"
    ingest_once(data_dir, alone, workers=False)
    shared = tmp_path / "shared.sqlite3"
    ingest_once(data_dir, shared, workers=False, commit_rows=commit_rows)
    assert dump_tables(shared) == dump_tables(alone)

    strict, strict_shared = tmp_path / "strict.sqlite3", tmp_path / "strict-shared.sqlite3"
    with pytest.raises(StrictModeError) as failure:
        ingest_once(data_dir, strict, workers=False, strict=True)
    with pytest.raises(StrictModeError) as shared_failure:
        ingest_once(data_dir, strict_shared, workers=False, strict=True, commit_rows=commit_rows)
    assert str(shared_failure.value) == str(failure.value)
    assert dump_tables(strict_shared) == dump_tables(strict)


def test_a_shared_transaction_commits_at_its_size_and_on_any_end(tmp_path):
    """Nothing is visible to a reader until the shared transaction holds its
    rows; an error that ends the writes still commits what was written
    before it, with its checkpoints (here: none), and is the error seen."""
    store = tmp_path / "store.sqlite3"

    def visible() -> int:
        with sqlite3.connect(store) as reader:
            return reader.execute("SELECT count(*) FROM turns").fetchone()[0]

    def turn(n: int) -> Rows:
        rows = Rows()
        rows.turns.append(
            ("thr", f"turn-{n}", None, 1_000 + n, None, None, None, None, None, None, *NO_EVENTS)
        )
        return rows

    async def run() -> None:
        conn = await open_store(store)
        try:
            with pytest.raises(RuntimeError, match="ended"):
                async with SharedCommits(conn, 2) as commits:
                    for n in range(3):
                        await commits.begin()
                        await write_rows(conn, turn(n), [])
                        await commits.written(1)
                        assert visible() == (2 if n else 0)  # committed at 2 rows
                    raise RuntimeError("ended")
            assert visible() == 3 and not conn.in_transaction
        finally:
            await conn.close()

    anyio.run(run)


def test_schema_3_store_migrates_with_its_activity_and_dirty_days(tmp_path):
    store = tmp_path / "v3.sqlite3"
    conn = sqlite3.connect(store, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:3], 1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(
        "INSERT INTO activity_classes VALUES"
        " (1, 'feature_used', 'session', NULL, NULL, 'tool_call', 'success', NULL, NULL)"
    )
    old_rows = [(5, "thr-1", 1_790_899_200_123, 1, None, None), (-7, None, 1_790_985_600_000, 1,
                "openai", "gpt-5")]  # fmt: skip
    conn.executemany("INSERT INTO activity VALUES (?, ?, ?, ?, ?, ?)", old_rows)
    conn.execute(
        "INSERT INTO meta VALUES ('rollup_dirty_days', '[\"2026-10-02\", \"2026-10-03\"]')"
    )
    conn.execute("INSERT INTO forward_outbox VALUES (5)")
    conn.close()

    async def reopen() -> set[str]:
        conn = await open_store(store)
        try:
            return await dirty_days(conn)
        finally:
            await conn.close()

    assert anyio.run(reopen) == {"2026-10-02", "2026-10-03"}
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        rows = conn.execute(
            "SELECT event_id, thread_id, occurred_at_ms, class_id, provider, model FROM activity"
            " ORDER BY occurred_at_ms"
        ).fetchall()
        assert rows == old_rows
        assert conn.execute("SELECT count(*) FROM local_v2_events").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM forward_outbox").fetchone()[0] == 0
        dirty_json = "SELECT count(*) FROM meta WHERE key = 'rollup_dirty_days'"
        assert conn.execute(dirty_json).fetchone()[0] == 0


def _children() -> list[int]:
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:  # field 4: the parent pid
                out.append(int(entry.name))
    return out


def _roder_corpus(tmp_path: Path):
    import gen_corpus

    data_dir = tmp_path / "data"
    gen_corpus.generate(data_dir, 20_000, 5)
    return lambda store, workers: ingest_once(data_dir, store, workers=workers)


def _claude_corpus(tmp_path: Path):
    import gen_claude

    root = tmp_path / "home" / ".claude"
    gen_claude.generate(root, 5_000)
    return lambda store, workers: ingest_claude(root, store, workers=workers)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("corpus", [_roder_corpus, _claude_corpus], ids=["roder", "claude-code"])
def test_a_killed_worker_is_a_clear_error_and_loses_nothing(tmp_path, monkeypatch, corpus):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    ingest_into = corpus(tmp_path)
    monkeypatch.setattr(ingest, "SLICE_BYTES", 16_384)  # many calls: the kill lands mid-run
    store = tmp_path / "killed.sqlite3"
    before = set(_children())

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if workers := set(_children()) - before:
                os.kill(min(workers), signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    with pytest.raises(WorkerError, match="worker process stopped unexpectedly"):
        ingest_into(store, True)
    killer.join()

    # what committed before the kill stays; running again reads the rest, once
    ingest_into(store, True)
    ingest_into(tmp_path / "alone.sqlite3", False)
    assert dump_tables(store) == dump_tables(tmp_path / "alone.sqlite3")


def test_a_per_file_budget_reads_in_shares_to_the_same_store(tmp_path, data_dir):
    """The live daemon's per-step budget: each call reads a share of each
    file and lists the files with more; calling on with those gives exactly
    the store one full pass gives, every line once."""
    alone = ingest_once(data_dir, tmp_path / "alone.sqlite3", workers=False)
    store = tmp_path / "shares.sqlite3"

    async def go() -> tuple[int, int]:
        conn = await open_store(store)
        try:
            settings = load_settings(data_dir, store)
            ingestor = Ingestor(conn, settings, strict=False, file_budget=2048)
            await ingestor.start()
            events, metadata = discover(data_dir)
            calls = lines = 0
            while events or metadata:
                report = Report()
                await ingestor.ingest(events, metadata, report)
                calls += 1
                lines += report.lines_ingested
                events, metadata = report.unfinished, []
            await finish(conn, settings, Report())
            return calls, lines
        finally:
            await conn.close()

    calls, lines = anyio.run(go)
    assert calls > 2  # the budget did cut the files into shares
    assert lines == alone.lines_ingested
    assert dump_tables(store) == dump_tables(tmp_path / "alone.sqlite3")


def test_metadata_read_in_chunks_gives_the_same_store(tmp_path, data_dir, monkeypatch):
    """metadata.json files go to the writer a chunk at a time (what is held
    at once stays bounded); chunks of one give the store one batch gives."""
    alone = ingest_once(data_dir, tmp_path / "alone.sqlite3", workers=True)
    monkeypatch.setattr(ingest, "METADATA_CHUNK", 1)
    for workers in (True, False):
        store = tmp_path / f"chunked-{workers}.sqlite3"
        chunked = ingest_once(data_dir, store, workers=workers)
        assert chunked.sessions_enriched == alone.sessions_enriched > 1
        assert dump_tables(store) == dump_tables(tmp_path / "alone.sqlite3")


def test_a_bulk_load_does_not_keep_checkpoints_and_nothing_is_read_twice(tmp_path, data_dir):
    """In a bulk load the written checkpoints stay in the store only (one a
    file, they add up); the next call loads them and reads nothing again."""
    store = tmp_path / "bulk.sqlite3"

    async def go() -> tuple[int, int, int, Report]:
        conn = await open_store(store)
        try:
            settings = load_settings(data_dir, store)
            ingestor = Ingestor(conn, settings, strict=False)
            await ingestor.start()
            first = Report()
            async with ingest.bulk_load(ingestor):
                await ingestor.ingest(*discover(data_dir), first, progress=None)
                held = len(ingestor.checkpoints)
                collecting.append(gc.isenabled())
            collecting.append(gc.isenabled())
            again = Report()
            await ingestor.ingest(*discover(data_dir), again)
            return held, len(ingestor.checkpoints), first.lines_ingested, again
        finally:
            await conn.close()

    collecting: list[bool] = []
    held, loaded, lines, again = anyio.run(go)
    # the cyclic collector pauses for the load only
    assert collecting == [False, True]
    assert held == 0 and loaded > 0
    with sqlite3.connect(store) as conn:
        assert loaded == conn.execute("SELECT count(*) FROM files").fetchone()[0]
    assert lines > 0 and again.lines_ingested == 0
    assert again.lines_skipped_by_offset >= lines  # every line seen, none read again


def test_a_price_worker_that_dies_leaves_the_run_whole(tmp_path, data_dir, monkeypatch):
    """The price entries are made beside the rollups, best effort: a worker
    killed meanwhile costs only them (queries then price without them)."""

    class DeadPool(ingest.WorkerPool):
        async def __aenter__(self) -> list[Worker]:
            workers = await super().__aenter__()
            for worker in workers:
                worker.kill()
                worker.process.wait()
            return workers

    monkeypatch.setattr(ingest, "WorkerPool", DeadPool)
    store = tmp_path / "dead.sqlite3"
    report = ingest_once(data_dir, store, workers=False)
    assert report.rollup_rows_refreshed > 0
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT count(*) FROM rollup_dirty_days").fetchone() == (0,)
        assert conn.execute("SELECT value FROM meta WHERE key = 'price_entries'").fetchone() is None
    # with a live worker the same run keeps them
    monkeypatch.undo()
    ingest_once(data_dir, tmp_path / "live.sqlite3", workers=False)
    with sqlite3.connect(tmp_path / "live.sqlite3") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'price_entries'").fetchone()


def test_wal_checkpoints_copy_the_wal_beside_the_writer(tmp_path, monkeypatch):
    """During a bulk load a thread of its own copies the WAL into the store,
    so the writer's commits find little to copy; stopped, it is gone. A
    store that is not there is never created by it."""
    monkeypatch.setattr(ingest, "BULK_CHECKPOINT_EVERY_S", 0.01)
    store = tmp_path / "wal.sqlite3"

    async def write() -> None:
        conn = await open_store(store)
        try:
            await conn.execute("PRAGMA wal_autocheckpoint = 0")  # only the thread copies
            await conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [(f"k{i}", "v" * 500) for i in range(2000)],
            )
            before = store.stat().st_size
            checkpoints = ingest.WalCheckpoints(store)
            checkpoints.start()
            deadline = time.monotonic() + 10
            while store.stat().st_size == before and time.monotonic() < deadline:
                await anyio.sleep(0.01)
            checkpoints.stop()
            assert store.stat().st_size > before  # the rows reached the store file
            assert not checkpoints.thread.is_alive()
        finally:
            await conn.close()

    anyio.run(write)
    missing = ingest.WalCheckpoints(tmp_path / "missing.sqlite3")
    missing.start()
    missing.stop()
    assert not (tmp_path / "missing.sqlite3").exists()
