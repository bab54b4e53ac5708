"""Ingestion: the source, the stage chain and the writer, put together.

`run_once` is `roder-analyticsd --once`; the live daemon reuses `Ingestor`
for its catch-up and for every change the watcher reports.
"""

from __future__ import annotations

import functools
import gc
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite
import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from roder_analyticsd.config import Settings
from roder_analyticsd.live.workers import WorkerDied, WorkerPool
from roder_analyticsd.pipeline.batch import Batch, Checkpoint, FileIdentity, ParseError, Rows
from roder_analyticsd.pipeline.chain import run_pipeline, run_stages, stage_files, stages
from roder_analyticsd.sources import claude_code
from roder_analyticsd.sources.files import FileError, FileRead, read_new_lines, relative
from roder_analyticsd.sources.roder import discover, read_metadata
from roder_analyticsd.store import deferred_indexes
from roder_analyticsd.store.maintenance import (
    FINAL_BEFORE_KEY,
    build_indexes_and_refresh_rollups,
    missing_price_pairs,
    prune,
    refresh_rollups,
    save_price_entries,
)
from roder_analyticsd.store.schema import ANALYTICS_TABLES
from roder_analyticsd.store.transaction import transaction
from roder_analyticsd.store.writer import path_from_store, write_rows

WRITE_BATCH_ROWS = 30_000
BULK_FLUSH_INTERVAL = 1.0  # seconds a group of batches may wait to fill, in a bulk load
BULK_COMMIT_ROWS = 120_000  # rows per transaction in a bulk load (see SharedCommits)
# A backlog at least this big is staged in worker processes, so reading and
# decoding run beside this process's writes; below it, a worker's start-up
# costs more than it saves.
WORKER_MIN_BYTES = 32 << 20
# metadata.json files per batch: what is read at once stays bounded however
# many threads there are
METADATA_CHUNK = 1000
SLICE_BYTES = 4 << 20  # input bytes per worker call: bounds what is in flight
WAL_AUTOCHECKPOINT = 1000  # pages: SQLite's default, restored after a bulk load
# During a bulk load the WAL is copied into the database only once it holds
# this many pages (~128 MB at 4 KiB): few checkpoints, each writing a page
# once however often it changed, and a WAL that stays bounded; with no
# reader in the way each checkpoint lets the WAL restart from its start.
BULK_WAL_AUTOCHECKPOINT = 32_768
BULK_CHECKPOINT_EVERY_S = 0.5  # see WalCheckpoints
MAX_WORKERS = 2  # each adds ~25 MB; two keep a backfill's memory under 150 MB


def worker_count() -> int:
    """Worker processes for a backlog: one per core, up to MAX_WORKERS. The
    writer (this process) mostly waits on SQLite, which shares the cores."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


class WorkerError(Exception):
    """A worker process died (killed, out of memory). What was committed
    stays, with its checkpoints; running again reads the rest."""


class StrictModeError(Exception):
    """A corrupt line (or unreadable file) in strict mode: the run stops."""

    def __init__(self, problem: ParseError | FileError) -> None:
        self.problem = problem
        if isinstance(problem, ParseError):
            text = f"{problem.path}:{problem.line}: {problem.message}"
        else:
            text = f"{problem.path}: {problem.message}"
        super().__init__(text)


# Corrupt lines listed in a report; past this many only their number is kept
# (a data dir full of garbage must not grow the process without bound)
MAX_LISTED_PARSE_ERRORS = 1000


@dataclass(slots=True)
class Report:
    files_scanned: int = 0
    lines_ingested: int = 0
    lines_skipped_by_offset: int = 0
    sessions_enriched: int = 0
    parse_errors: list[ParseError] = field(default_factory=list)  # the first ones
    parse_errors_unlisted: int = 0  # corrupt lines past MAX_LISTED_PARSE_ERRORS
    file_errors: list[FileError] = field(default_factory=list)
    unknown_kinds: Counter[str] = field(default_factory=Counter)
    rows_pruned: int = 0
    rollup_rows_refreshed: int = 0
    # files left with complete lines unread at the per-file byte budget
    # (the live daemon reads them on in its next step); not in the JSON
    unfinished: list[Path] = field(default_factory=list)

    @property
    def parse_error_count(self) -> int:
        """Every corrupt line skipped, listed or not."""
        return len(self.parse_errors) + self.parse_errors_unlisted

    def add_parse_errors(self, errors: list[ParseError]) -> None:
        room = max(0, MAX_LISTED_PARSE_ERRORS - len(self.parse_errors))
        self.parse_errors.extend(errors[:room])
        self.parse_errors_unlisted += max(0, len(errors) - room)

    def to_json(self) -> dict[str, Any]:
        return {
            "filesScanned": self.files_scanned,
            "linesIngested": self.lines_ingested,
            "linesSkippedByOffset": self.lines_skipped_by_offset,
            "sessionsEnriched": self.sessions_enriched,
            "parseErrors": [
                {"path": e.path, "line": e.line, "message": e.message} for e in self.parse_errors
            ],
            "parseErrorsNotListed": self.parse_errors_unlisted,
            "fileErrors": [{"path": e.path, "message": e.message} for e in self.file_errors],
            "unknownKinds": dict(sorted(self.unknown_kinds.items())),
            "rowsPruned": self.rows_pruned,
            "rollupRowsRefreshed": self.rollup_rows_refreshed,
        }


async def load_checkpoints(conn: aiosqlite.Connection) -> dict[str, Checkpoint]:
    sql = "SELECT dev, ino, path, offset, line_no, fp_len, fp_hash, prompts FROM files"
    async with conn.execute(sql) as cur:
        rows = await cur.fetchall()
    out: dict[str, Checkpoint] = {}
    for dev, ino, path, offset, line_no, fp_len, fp_hash, prompts in rows:
        identity = FileIdentity(dev, ino)
        out[identity.key] = Checkpoint(
            identity, path_from_store(path), offset, line_no, fp_len, fp_hash, prompts
        )
    return out


async def clear_analytics(conn: aiosqlite.Connection) -> None:
    """For --rebuild: drop every analytics row and checkpoint, keep settings."""
    async with transaction(conn):
        for table in ANALYTICS_TABLES:
            await conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        # every day's rollups are recomputed from the logs again
        await conn.execute("DELETE FROM meta WHERE key = ?", (FINAL_BEFORE_KEY,))


def _merge(rows: Rows, more: Rows) -> None:
    rows.sessions.extend(more.sessions)
    rows.turns.extend(more.turns)
    rows.tool_calls.extend(more.tool_calls)
    rows.token_usage.extend(more.token_usage)
    rows.activity.extend(more.activity)
    rows.activity_classes.extend(more.activity_classes)
    rows.thread_owners.extend(more.thread_owners)
    rows.api_calls.extend(more.api_calls)


class Ingestor:
    """Feeds files through the stage chain into the store."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        settings: Settings,
        *,
        strict: bool,
        flush_interval: float = 0.05,
        worker_min_bytes: int | None = None,
        file_budget: int | None = None,
    ) -> None:
        """`worker_min_bytes`: stage a backlog at least this big in worker
        processes (None: never). `file_budget`: read at most about this many
        bytes of each file per call, listing the files with more in
        `Report.unfinished` (None: read every file to its end)."""
        self.conn = conn
        self.worker_min_bytes = worker_min_bytes
        self.file_budget = file_budget
        self.flush_interval = flush_interval
        self.settings = settings
        self.strict = strict
        self.checkpoints: dict[str, Checkpoint] = {}
        # False in a bulk load: written checkpoints are not kept here (one per
        # file: ~0.5 KB each, ~14 MB for 25k files, beside the workers); the
        # next call that needs them loads them from the store
        self.keep_checkpoints = True
        self.checkpoints_stale = False
        # None: each group of batches commits on its own; a number (a bulk
        # load): groups share a transaction until it holds that many rows
        self.commit_rows: int | None = None
        self.on_batch_written: list[Any] = []  # callbacks(batch_rows, checkpoints)

    async def start(self) -> None:
        self.checkpoints = await load_checkpoints(self.conn)
        self.checkpoints_stale = False

    async def ingest(
        self,
        events: list[Path],
        metadata: list[Path],
        report: Report,
        progress: Callable[[int, int], None] | None = None,
        stop: Callable[[], bool] | None = None,
        *,
        agent: str = "roder",
        name: Callable[[Path], str] | None = None,
    ) -> None:
        """`progress(files_read, files_total)` is called after each events file
        (after each slice of files, when staged in workers). Once `stop()` is
        true no further file (or slice) is started; what was read is written.
        `agent` is the source the files are logs of; `name` how a file is
        named in checkpoints and reports (default: relative to the data dir)."""
        if self.checkpoints_stale:
            await self.start()
        data_dir = self.settings.data_dir
        chain = stages(self.settings.workspace_labels)
        if name is None:
            name = functools.partial(relative, data_dir=data_dir)
        # (the live daemon never stages in workers: no extra stat per file)
        staged_here = self.worker_min_bytes is None
        pending = [] if staged_here else _pending_bytes(events, self.checkpoints)
        in_workers = not staged_here and (
            sum(item.size for item in pending) >= self.worker_min_bytes
        )

        async def produce(send: ObjectSendStream[Batch]) -> None:
            async with send:
                for start in range(0, len(metadata), METADATA_CHUNK):
                    chunk = metadata[start : start + METADATA_CHUNK]
                    files, problems = read_metadata(chunk, data_dir)
                    report.file_errors.extend(problems)
                    if files:
                        report.sessions_enriched += len(files)
                        batch = Batch(path="metadata", metadata_files=files)
                        await send.send(run_stages(batch, chain) if in_workers else batch)
                if in_workers:
                    await self._stage_in_workers(pending, agent, name, report, progress, send, stop)
                    return
                for done, path in enumerate(events, 1):
                    if stop is not None and stop():
                        return
                    outcome = FileRead(name(path))
                    for batch in read_new_lines(
                        path, data_dir, self.checkpoints, outcome, max_bytes=self.file_budget
                    ):
                        batch.agent = agent
                        await send.send(batch)
                    _account(outcome, report)
                    if outcome.more:
                        report.unfinished.append(path)
                    if progress is not None:
                        progress(done, len(events))

        await run_pipeline(produce, [] if in_workers else chain, self._writer(report))
        if self.strict and report.file_errors:
            raise StrictModeError(report.file_errors[0])

    async def _stage_in_workers(
        self,
        pending: list[Pending],
        agent: str,
        name: Callable[[Path], str],
        report: Report,
        progress: Callable[[int, int], None] | None,
        send: ObjectSendStream[Batch],
        stop: Callable[[], bool] | None,
    ) -> None:
        """Source and stages run in worker processes, a slice of files per
        call; their staged batches go on to the writer here, in this process."""
        slices = _slices(pending, SLICE_BYTES)
        labels = self.settings.workspace_labels
        staged_send, staged_recv = anyio.create_memory_object_stream[
            tuple[list[Batch], list[FileRead]]
        ](1)

        async def stage(worker, out: ObjectSendStream[tuple[list[Batch], list[FileRead]]]) -> None:
            async with out:
                for paths, keys in slices:  # shared by the workers' tasks
                    if stop is not None and stop():
                        return
                    # only this slice's checkpoints cross: the cost of a call
                    # must not grow with the number of files already known
                    known = {k: self.checkpoints[k] for k in keys if k in self.checkpoints}
                    try:
                        result = await worker.call(stage_files, paths, name, known, labels, agent)
                    except WorkerDied:
                        raise WorkerError(
                            "a worker process stopped unexpectedly; what was written is "
                            "kept, run again to read the rest"
                        ) from None
                    await out.send(result)

        done = 0
        async with WorkerPool(worker_count()) as workers, anyio.create_task_group() as tg:
            async with staged_send:
                for worker in workers:
                    tg.start_soon(stage, worker, staged_send.clone())
            async with staged_recv:
                async for batches, outcomes in staged_recv:
                    for batch in batches:
                        await send.send(batch)
                    for outcome in outcomes:
                        _account(outcome, report)
                    done += len(outcomes)
                    if progress is not None:
                        progress(done, len(pending))

    def _writer(self, report: Report):
        async def consume(inbox: ObjectReceiveStream[Batch]) -> None:
            # Writes are not overlapped with the stages on purpose: both need
            # the GIL, and contending for it made the writes 2-3x slower.
            async with inbox, SharedCommits(self.conn, self.commit_rows) as commits:
                while group := await self._gather(inbox):
                    failure = None
                    if self.strict:
                        for i, batch in enumerate(group):
                            if batch.errors:
                                failure, group = batch.errors[0], group[:i]
                                break
                    await commits.begin()
                    await self._write(group, report)
                    await commits.written(sum(batch.rows.count() for batch in group))
                    if failure is not None:
                        raise StrictModeError(failure)

        return consume

    async def _gather(self, inbox: ObjectReceiveStream[Batch]) -> list[Batch]:
        """Batches until the group is full or the flush interval is up: few
        large transactions for a flood, a quick write for a lone event."""
        try:
            first = await inbox.receive()
        except anyio.EndOfStream:
            return []
        group = [first]
        rows = first.rows.count()
        deadline = anyio.current_time() + self.flush_interval
        while rows < WRITE_BATCH_ROWS:
            with anyio.move_on_after(deadline - anyio.current_time()):
                try:
                    more = await inbox.receive()
                except anyio.EndOfStream:
                    break
                group.append(more)
                rows += more.rows.count()
                continue
            break
        return group

    async def _write(self, group: list[Batch], report: Report) -> None:
        if not group:
            return
        # one transaction per agent: a batch's rows and checkpoints stay together
        agents = list(dict.fromkeys(batch.agent for batch in group))
        for agent in agents:
            rows = Rows()
            checkpoints: list[Checkpoint] = []
            for batch in group:
                if batch.agent == agent:
                    _merge(rows, batch.rows)
                    checkpoints.extend(batch.checkpoints)
            await write_rows(self.conn, rows, checkpoints, agent)
            if self.keep_checkpoints:
                for cp in checkpoints:
                    self.checkpoints[cp.identity.key] = cp
            elif checkpoints:
                self.checkpoints_stale = True
            for callback in self.on_batch_written:
                callback(rows, checkpoints)
        for batch in group:
            report.lines_ingested += batch.lines_ingested
            report.add_parse_errors(batch.errors)
            report.unknown_kinds.update(batch.unknown_kinds)


class SharedCommits:
    """Groups of batches written in one transaction until it holds `rows`
    rows (None: no shared transaction; each write commits on its own).

    Each commit writes every page it changed to the WAL, and a bulk load
    changes the same hot pages of its tables and indexes in every group: on
    1M Claude Code lines, a commit per ~120k rows instead of per 30k took
    the commits from 2.3 s to 1.35 s (all the writer's SQL: 14.2 s to
    13.1 s). Every write is a
    savepoint inside it, with its checkpoints, so rows and checkpoints still
    commit together or not at all; a kill loses what was not committed,
    and it is read again. Whatever ends the writes (the last batch, a
    strict-mode error, a failed write, a cancellation), what was written
    before commits."""

    def __init__(self, conn: aiosqlite.Connection, rows: int | None) -> None:
        self.conn = conn
        self.rows = rows
        self.pending = 0
        self.open = False  # a transaction of ours is open

    async def begin(self) -> None:
        """Before a group's writes: open the shared transaction (none inside
        a caller's, as a rebuild's)."""
        if self.rows is not None and not self.open and not self.conn.in_transaction:
            await self.conn.execute("BEGIN IMMEDIATE")
            self.open, self.pending = True, 0

    async def written(self, rows: int) -> None:
        self.pending += rows
        if self.open and self.pending >= (self.rows or 0):
            await self.commit()

    async def commit(self) -> None:
        if not self.open:
            return
        self.open = False
        with anyio.CancelScope(shield=True):
            if self.conn.in_transaction:  # (a failed statement may have ended it)
                await self.conn.commit()

    async def __aenter__(self) -> SharedCommits:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            await self.commit()
            return
        try:
            await self.commit()
        except sqlite3.Error:
            with anyio.CancelScope(shield=True), suppress(sqlite3.Error):
                await self.conn.rollback()  # the error that ended the writes is the one to see


def _account(outcome: FileRead, report: Report) -> None:
    if outcome.identity is not None:
        report.files_scanned += 1
        report.lines_skipped_by_offset += outcome.skipped_lines
    if outcome.error is not None:
        report.file_errors.append(outcome.error)


class Pending(NamedTuple):
    path: Path
    size: int  # bytes past the checkpoint
    key: str | None  # FileIdentity.key, None if it can't be stat'ed


def _pending_bytes(paths: list[Path], checkpoints: dict[str, Checkpoint]) -> list[Pending]:
    """Each file with the bytes past its checkpoint (0 if it can't be stat'ed:
    the source reports that when it reads it)."""
    out: list[Pending] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(Pending(path, 0, None))
            continue
        key = FileIdentity(st.st_dev, st.st_ino).key
        known = checkpoints.get(key)
        start = known.offset if known is not None and known.offset <= st.st_size else 0
        out.append(Pending(path, st.st_size - start, key))
    return out


def _slices(pending: list[Pending], size: int) -> Iterator[tuple[list[Path], list[str]]]:
    """Consecutive files, about `size` pending bytes per slice, with their
    identity keys (to pick out their checkpoints)."""
    paths: list[Path] = []
    keys: list[str] = []
    total = 0
    for item in pending:
        paths.append(item.path)
        if item.key is not None:
            keys.append(item.key)
        total += item.size
        if total >= size:
            yield paths, keys
            paths, keys, total = [], [], 0
    if paths:
        yield paths, keys


async def finish(
    conn: aiosqlite.Connection, settings: Settings, report: Report, *, indexes_pending: bool = False
) -> None:
    """After ingesting: the indexes a first backfill deferred built (when
    `indexes_pending`) while a second connection computes the daily rollups;
    retention applied; the touched days' rollups refreshed. Meanwhile a
    worker process makes the price entries of new models (a process start
    and genai-prices' table, on the other core)."""
    from roder_analyticsd import pricing

    version = pricing.price_table_version()
    kept, missing = await missing_price_pairs(conn, version)
    async with WorkerPool(1 if missing else 0) as workers:

        def make_prices() -> None:
            with suppress(WorkerDied):
                for worker in workers:
                    worker.send(pricing.price_entries, missing)

        if indexes_pending:
            # (the table once the second connection's sorts are done: beside
            # them and the index build's, the three made the run's peak memory)
            report.rollup_rows_refreshed += await build_indexes_and_refresh_rollups(
                conn, settings.store, after_read=make_prices
            )
        else:
            make_prices()
        report.rows_pruned += await prune(conn, settings.retention_days)
        # the days this run touched, and any left dirty by an interrupted run
        report.rollup_rows_refreshed += await refresh_rollups(conn)
        if workers and not conn.in_transaction:
            # while the worker works: the WAL copied into the database now
            # rather than by end_bulk, which then finds little left to copy
            with suppress(sqlite3.Error):
                await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        made: dict[str, Any] = {}
        with suppress(WorkerDied):  # best effort: without them a query loads the table
            for worker in workers:
                made = await worker.answer()
    if made:
        await save_price_entries(conn, version, {**kept, **made})


async def run_once(
    conn: aiosqlite.Connection,
    settings: Settings,
    *,
    rebuild: bool,
    strict: bool,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """`--once`: ingest what is new, apply retention, refresh rollups.

    A rebuild is one transaction (the writer's become savepoints in it): it
    commits whole, or a corrupt line in strict mode, an error or a kill
    leaves the previous tables as they were, and readers see those until
    the commit. Its price: the WAL holds the whole rebuild until then.
    """
    report = Report()
    claude_roots = claude_code_roots(settings)  # a missing required root: before any change
    events, metadata = discover(settings.data_dir)
    ingestor = Ingestor(conn, settings, strict=strict)
    async with bulk_load(ingestor), _all_or_nothing(conn, rebuild):
        if rebuild:
            await clear_analytics(conn)
        await ingestor.start()  # the checkpoints: none left after a clear
        async with deferred_indexes.deferred(conn) as indexes_pending:
            await ingestor.ingest(events, metadata, report, progress)
            await ingest_claude_code(ingestor, claude_roots, report)
            await finish(conn, settings, report, indexes_pending=indexes_pending)
    return report


class SourceError(Exception):
    """A source that must be read (`claude_code = true`) is not there."""


def claude_code_candidates(settings: Settings) -> list[Path]:
    """Where Claude Code logs may be: none when disabled; `--claude-dir` or
    the default roots, whether they exist or not."""
    if settings.claude_code is False:
        return []
    return list(settings.claude_dirs) or claude_code.default_roots()


def claude_code_roots(settings: Settings) -> list[Path]:
    """The Claude Code roots to read: none when disabled; `--claude-dir`
    or the default roots, those that exist (all must, when required)."""
    wanted = claude_code_candidates(settings)
    found = claude_code.existing_roots(wanted)
    if settings.claude_code is True and not found:
        raise SourceError(
            "claude_code = true but no Claude Code logs found under "
            + ", ".join(str(p) for p in wanted)
        )
    return found


async def ingest_claude_code(ingestor: Ingestor, roots: list[Path], report: Report) -> None:
    """Every Claude Code log under these roots, through the same chain."""
    if not roots:
        return
    paths = [path for root in roots for path in claude_code.discover(root)]
    await ingestor.ingest(
        paths, [], report, agent=claude_code.AGENT,
        name=claude_code_names(ingestor.settings, roots),
    )  # fmt: skip


def claude_code_names(settings: Settings, roots: list[Path]) -> Callable[[Path], str]:
    """How Claude Code logs under these roots are named (picklable, for workers)."""
    hide = settings.workspace_labels != "full_path"
    return functools.partial(claude_code.checkpoint_path, roots=roots, hide_workspace=hide)


@asynccontextmanager
async def bulk_load(ingestor: Ingestor) -> AsyncIterator[None]:
    """A backlog, read the same way by `--once` and by the daemon's first
    catch-up: staged in worker processes when big, long flush interval and
    full batches, every file to its end, the WAL checkpointed rarely."""
    saved = ingestor.flush_interval, ingestor.worker_min_bytes, ingestor.file_budget
    ingestor.flush_interval = max(BULK_FLUSH_INTERVAL, ingestor.flush_interval)
    ingestor.worker_min_bytes, ingestor.file_budget = WORKER_MIN_BYTES, None
    ingestor.keep_checkpoints = False  # each file is read once; loaded again after
    ingestor.commit_rows = BULK_COMMIT_ROWS
    await ingestor.conn.execute(f"PRAGMA wal_autocheckpoint = {BULK_WAL_AUTOCHECKPOINT}")
    # The rows are tuples of numbers and strings: no cycles for the cyclic
    # collector to find, yet the millions of them made it run ~1000 times in
    # a backfill, ~10% of this process's CPU. Reference counting frees them.
    collecting = gc.isenabled()
    gc.disable()
    checkpoints = WalCheckpoints(ingestor.settings.store)
    checkpoints.start()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
        ingestor.flush_interval, ingestor.worker_min_bytes, ingestor.file_budget = saved
        ingestor.keep_checkpoints = True
        ingestor.commit_rows = None
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(checkpoints.stop)
            await end_bulk(ingestor.conn)


class WalCheckpoints:
    """During a bulk load, the WAL copied into the store every
    BULK_CHECKPOINT_EVERY_S by a connection of its own, in a thread: a
    checkpoint's writes and syncs then run beside the writer, whose own
    checkpoint (at BULK_WAL_AUTOCHECKPOINT, which lets the WAL start over)
    finds little left to copy. Best effort: without it the writer's does all."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wal-checkpoints", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        try:  # (mode=rw: never creates a store)
            conn = sqlite3.connect(
                f"{self.store.absolute().as_uri()}?mode=rw",
                uri=True,
                isolation_level=None,
                timeout=0.1,
            )
        except sqlite3.Error:
            return
        try:
            while not self.stopping.wait(BULK_CHECKPOINT_EVERY_S):
                with suppress(sqlite3.Error):  # busy now: the next one does it
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()


@asynccontextmanager
async def _all_or_nothing(conn: aiosqlite.Connection, enabled: bool) -> AsyncIterator[None]:
    """One transaction around the body when `enabled`. Unlike `transaction`,
    the body is not shielded: a long rebuild stays interruptible, and an
    interrupted one rolls back."""
    if not enabled:
        yield
        return
    await conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            await conn.rollback()
        raise
    with anyio.CancelScope(shield=True):
        await conn.commit()


async def end_bulk(conn: aiosqlite.Connection) -> None:
    """After a bulk load (`begin_bulk`): back to SQLite's default, and the
    rest of the WAL copied into the database, the file truncated. Best effort: a
    reader in the way only means later commits checkpoint as usual, and it
    must not hide the error that ended the load."""
    try:
        await conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        pass
