"""The live daemon: `roder-analyticsd` with no sub-command.

It takes the store's lock, catches up on everything (as `--once` does), then
follows the watcher: each batch of changed thread dirs and Claude Code logs
goes through the same `Ingestor` (source → stages → writer) from the files'
checkpoints. A slow periodic rescan backs up the watcher (and picks up a
Claude Code root that appeared since); rollups of the days written since
are refreshed on a schedule, retention is applied daily.

Exactness rests on the writer: rows and the checkpoints of the lines they
came from commit in one transaction (and so do the days they made dirty),
so a kill -9 at any instant loses nothing and counts nothing twice. Every
failure to write (store locked, disk full) is therefore safe to retry: the
changes are queued again and the same lines are read again from the same
checkpoints once the store takes writes again.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Awaitable
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import click
import structlog

from roder_analyticsd import pricing
from roder_analyticsd.config import Settings
from roder_analyticsd.live.ingest import (
    Ingestor,
    Report,
    SourceError,
    bulk_load,
    claude_code_candidates,
    claude_code_names,
    claude_code_roots,
)
from roder_analyticsd.live.lock import LockHeld, StoreLock
from roder_analyticsd.live.options import DaemonOptions, OptionsError, parse_options
from roder_analyticsd.live.watcher import Changes, Watcher
from roder_analyticsd.live.workers import WorkerPool
from roder_analyticsd.logs import configure_logging
from roder_analyticsd.sources import claude_code
from roder_analyticsd.sources.files import relative
from roder_analyticsd.sources.roder import EVENTS_FILE, METADATA_FILE, discover
from roder_analyticsd.store import deferred_indexes
from roder_analyticsd.store.connection import (
    StorePathError,
    describe_sqlite_error,
    open_checkpointer,
    open_store,
)
from roder_analyticsd.store.maintenance import (
    build_indexes_and_refresh_rollups,
    dirty_days,
    keep_price_entries,
    prune,
    refresh_rollups,
)
from roder_analyticsd.store.schema import StoreError
from roder_analyticsd.store.transaction import transaction

log = structlog.get_logger()

MAX_REMEMBERED_ERRORS = 10_000
# After the catch-up, a step reads at most this much of each changed file;
# a file with more goes round again in the next step, after the others: a
# flood into one thread (or Claude Code log) cannot hold back a line
# appended to another.
STEP_FILE_BYTES = 64 << 10
# The rollups of the days written since are refreshed between steps, a day
# per transaction, for about this long at most before the next step; not
# while files are behind (a flood) or a change waits, unless they have been
# put off that long.
ROLLUP_DAYS_PER_STEP = 1
STEP_ROLLUP_S = 0.05
ROLLUP_MAX_DEFER_S = 300.0
CHECKPOINT_EVERY_S = 1.0
# Under writes that never pause, the checkpoints beside the loop never reach
# the WAL's end, and it can only start over once one has: past this many
# frames (~64 MB) the loop finishes the checkpoint itself between two steps.
WAL_RESTART_FRAMES = 16_384


def run_daemon(settings: Settings) -> None:
    """Run in the foreground until SIGTERM/SIGINT; exit 0 after a clean stop."""
    from roder_analyticsd.cli.common import Failure

    configure_logging()
    try:
        options, unknown = parse_options(settings.daemon)
    except OptionsError as exc:
        raise click.UsageError(str(exc)) from None
    if unknown:
        log.warning("unknown_daemon_settings", count=len(unknown), error=", ".join(unknown))
    if not settings.enabled:
        log.info("analytics_disabled")
        return
    try:
        daemon = Daemon(settings, options)
    except SourceError as exc:  # claude_code = true and no logs: as --once says it
        raise click.UsageError(str(exc)) from None
    lock = StoreLock(settings.store)
    try:
        lock.acquire()
    except LockHeld as exc:
        raise Failure(f"{exc} ({settings.store})") from None
    except OSError as exc:
        raise Failure(f"cannot lock store {settings.store}: {exc.strerror or exc}") from None
    try:
        anyio.run(daemon.run)
    except StorePathError as exc:
        log.error("daemon_failed", error=str(exc))
        raise click.UsageError(str(exc)) from None
    except StoreError as exc:
        log.error("daemon_failed", error=str(exc))
        raise Failure(str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was in place
        pass
    finally:
        lock.release()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def store_failure(exc: BaseException) -> Exception | None:
    """The store error behind `exc` (itself, or the first of a group made
    only of store errors); None for anything else, which is a bug."""
    if isinstance(exc, sqlite3.Error | StoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [store_failure(inner) for inner in exc.exceptions]
        if found and all(f is not None for f in found):
            return found[0]
    return None


class Daemon:
    """One run of the daemon; all store work happens in `_work`, one step at
    a time, on one connection. The watcher and the timers only record what
    is due and wake it."""

    def __init__(self, settings: Settings, options: DaemonOptions) -> None:
        # Resolved once, here: the watcher reports absolute, resolved paths
        # (FSEvents always does), which a relative or symlinked data dir
        # would never match; every path the daemon reads is under this one.
        settings = dataclasses.replace(settings, data_dir=settings.data_dir.resolve())
        self.settings = settings
        self.options = options
        claude_code_roots(settings)  # SourceError: required, and no logs anywhere
        # the roots Claude Code logs may be under (resolved, for the same
        # reason); those with a projects/ are read, re-evaluated every rescan
        self.claude_candidates = [p.resolve() for p in claude_code_candidates(settings)]
        self.claude_roots = claude_code.existing_roots(self.claude_candidates)
        self.pending = Changes()
        self.behind: set[Path] = set()  # thread dirs left with lines unread at the budget
        self.behind_claude: set[Path] = set()  # Claude Code logs, likewise
        self.rescan_due = False
        self.rollup_due = False
        self.retention_due = False
        self.store_trouble: str | None = None
        self.prices_made: dict[str, Any] = {}  # price entries made, not yet in the store
        self.pricing = False  # a worker is making some
        self.backoff = min(options.retry_min, options.retry_max)
        self.file_errors: dict[str, str] = {}  # relative path → message, logged once
        self.claude_failed: dict[str, Path] = {}  # a Claude Code log in file_errors → its path
        self.parse_errors_seen: set[tuple[str, int]] = set()
        self.rollups_left = False  # a budgeted refresh stopped with dirty days left
        self.rollups_put_off: float | None = None  # since when a due refresh waits for a lull
        self.wal_restart_due = False  # the WAL is long: the loop finishes a checkpoint
        self.rollups_done = (0, 0)  # days and rows refreshed so far by a spread-out refresh
        self.missing_before: set[str] = set()  # checkpoints whose file was gone last rescan
        self.watcher = Watcher(
            settings.data_dir,
            self._notify,
            step_ms=options.watch_step_ms,
            # short, so a flood into one file does not hold back the news
            # of another: the flood itself is read on by budget, not by news
            debounce_ms=options.watch_step_ms,
            claude_roots=self.claude_candidates,
        )

    # -- lifecycle ---------------------------------------------------------

    async def run(self) -> None:
        settings = self.settings
        self.wake = anyio.Event()
        self.stop_requested = anyio.Event()
        # from here on SIGTERM/SIGINT mean "stop cleanly", even during start-up
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            conn = await open_store(settings.store)
            try:
                await conn.execute(f"PRAGMA busy_timeout = {self.options.busy_timeout_ms}")
                self.conn = conn
                self.ingestor = Ingestor(
                    conn,
                    settings,
                    strict=False,
                    flush_interval=self.options.flush_interval,
                    file_budget=STEP_FILE_BYTES,
                )
                await self.ingestor.start()
                async with conn.execute("PRAGMA user_version") as cur:
                    row = await cur.fetchone()
                self.schema_version = row[0] if row else None
                async with anyio.create_task_group() as tg:
                    self.tg = tg
                    self.work_scope = anyio.CancelScope()
                    tg.start_soon(self._handle_signals, signals)
                    tg.start_soon(self.watcher.run)  # before catch-up: nothing slips between
                    tg.start_soon(self._timers)
                    with self.work_scope:
                        await self._work()
                    self.watcher.stop()
                    self.stop_requested.set()
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await conn.close()
        log.info("daemon_stopped")

    async def _handle_signals(self, signals) -> None:
        async for signum in signals:
            if self.stop_requested.is_set():
                self.work_scope.cancel()  # a second signal: stop now
                continue
            log.info("daemon_stopping", signal=signal.Signals(signum).name)
            self.stop_requested.set()
            self.watcher.stop()
            self.wake.set()
            self.tg.start_soon(self._abandon_after_grace)

    async def _abandon_after_grace(self) -> None:
        # The write in flight gets a grace period; after it the transaction
        # is rolled back (its lines are simply read again next start).
        await anyio.sleep(self.options.stop_grace)
        self.work_scope.cancel()

    @property
    def stopping(self) -> bool:
        return self.stop_requested.is_set()

    # -- the work loop -----------------------------------------------------

    def _notify(self, changes: Changes) -> None:
        self.pending.events |= changes.events
        self.pending.metadata |= changes.metadata
        self.pending.claude_code |= changes.claude_code
        self.pending.rescan |= changes.rescan
        self.wake.set()

    def _has_work(self) -> bool:
        p = self.pending
        return bool(
            p.events or p.metadata or p.claude_code or p.rescan or self.behind
            or self.behind_claude or self.rescan_due or self.rollup_due or self.retention_due
            or self.wal_restart_due
        )  # fmt: skip

    async def _work(self) -> None:
        await self._catch_up()
        if not self.stopping:
            await self._start_checkpoints()
        if self.settings.forward_endpoint and not self.stopping:
            self.tg.start_soon(self._forward)
        elif not self.settings.forward_endpoint:
            from roder_analyticsd.fleet.forwarding import disable_forwarding

            # forwarding was turned off in config.toml: stop filling its outbox
            await disable_forwarding(self.conn)
        while not self.stopping:
            if not self._has_work():
                await self.wake.wait()
                self.wake = anyio.Event()
                continue
            await self._step()
        # SIGTERM: write what is already known, then bring the rollups up to date
        await self._step()
        await self._refresh_rollups()

    async def _catch_up(self) -> None:
        began = time.monotonic()
        report = Report()
        events, metadata = discover(self.settings.data_dir)
        claude = self._claude_logs()
        self._announce(len(events), len(claude))
        # the backlog is read as `--once` reads it (worker processes for a
        # big one, stopped after); a stop request is honoured between files
        conn = self.ingestor.conn
        async with bulk_load(self.ingestor), deferred_indexes.deferred(conn) as indexes_pending:
            while not self.stopping and not await self._ingest(
                events, metadata, claude, report, stoppable=True
            ):
                pass  # the store refused the write: retried after a backoff
            if indexes_pending and not self.stopping:
                # as `--once` does (on a failure the steps below do it all)
                await self._guarded(self._build_indexes_and_rollups())
        if self.stopping:
            return
        while not self.stopping and not await self._retention():
            pass
        while not self.stopping and not await self._refresh_rollups():
            pass
        self.retention_due = self.rollup_due = False
        log.info(
            "catch_up_done",
            files=report.files_scanned,
            lines=report.lines_ingested,
            parse_errors=report.parse_error_count,
            file_errors=len(report.file_errors),
            seconds=round(time.monotonic() - began, 3),
        )

    def _announce(self, files: int, claude_files: int) -> None:
        """`daemon_started`, once the watch is up and the files are counted;
        on a terminal also one plain line saying what runs and how to stop it."""
        settings = self.settings
        log.info(
            "daemon_started",
            pid=os.getpid(),
            store=str(settings.store),
            data_dir=str(settings.data_dir),
            schema_version=self.schema_version,
            files=files,
            claude_code_files=claude_files,
        )
        if _stderr_is_tty():
            claude = f" and {claude_files} Claude Code logs" if self.claude_candidates else ""
            sys.stderr.write(
                f"roder-analyticsd: watching {files} events.jsonl under {settings.data_dir}"
                f"{claude}, writing {settings.store}; Ctrl-C stops it "
                "(`roder-analyticsd install-service` runs it in the background)\n"
            )
            sys.stderr.flush()

    async def _step(self) -> None:
        changes, self.pending = self.pending, Changes()
        behind, self.behind = self.behind, set()
        behind_claude, self.behind_claude = self.behind_claude, set()
        rescan = changes.rescan or self.rescan_due
        self.rescan_due = False
        if rescan:
            # a root that appeared (or went) since: "auto" follows it
            self.claude_roots = claude_code.existing_roots(self.claude_candidates)
            events, metadata = discover(self.settings.data_dir)
            events = [path for path in events if path.parent not in behind]
            every_claude = self._claude_logs()
            claude = [path for path in every_claude if path not in behind_claude]
        else:
            events = [d / EVENTS_FILE for d in sorted(changes.events - behind)]
            metadata = [d / METADATA_FILE for d in sorted(changes.metadata)]
            claude = [
                p for p in self._claude_logs_at(changes.claude_code) if p not in behind_claude
            ]
        # Files that just changed go first, in a transaction of their own;
        # then one more share of each file still behind (a flood): a line
        # appended to a quiet file waits for at most one share per file.
        behind_events = [d / EVENTS_FILE for d in sorted(behind)]
        rounds = ((events, metadata, claude), (behind_events, [], sorted(behind_claude)))
        for paths, meta, claude_paths in rounds:
            if not paths and not meta and not claude_paths:
                continue
            report = Report()
            if not await self._ingest(paths, meta, claude_paths, report):
                self._notify(changes)  # try again once the store takes writes
                self.behind |= behind
                self.behind_claude |= behind_claude
                self.rescan_due |= rescan
                return
            of_claude = set(claude_paths)
            for path in report.unfinished:
                if path in of_claude:
                    self.behind_claude.add(path)
                else:
                    self.behind.add(path.parent)
        if rescan:
            await self._drop_missing(events + behind_events + every_claude)
        if self.retention_due and await self._retention():
            self.retention_due = False
        if self.wal_restart_due:
            # what is left since the last checkpoint beside the loop (about a
            # second's writes): the next write then starts the WAL over
            self.wal_restart_due = False
            with suppress(sqlite3.Error):
                await self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if (
            self.rollup_due
            and self._rollups_may_run()
            and await self._refresh_rollups(budget=STEP_ROLLUP_S)
        ):
            self.rollup_due = self.rollups_left
            if not self.rollup_due:
                self.rollups_put_off = None

    def _rollups_may_run(self) -> bool:
        """A due rollup refresh runs in a lull: no file behind, no change
        waiting (there is other work then, so the loop comes back), or
        once it has been put off for ROLLUP_MAX_DEFER_S."""
        if not (self.behind or self.behind_claude or self._has_news()):
            return True
        now = time.monotonic()
        if self.rollups_put_off is None:
            self.rollups_put_off = now
        return now - self.rollups_put_off >= ROLLUP_MAX_DEFER_S

    def _claude_logs(self) -> list[Path]:
        """Every Claude Code log under the roots read."""
        return [path for root in self.claude_roots for path in claude_code.discover(root)]

    def _claude_logs_at(self, where: set[Path]) -> list[Path]:
        """The Claude Code logs the watcher pointed at: logs, or the logs in
        a dir that came, went or was renamed; each once, in path order."""
        found: set[Path] = set()
        for path in where:
            root = next((r for r in self.claude_roots if path.is_relative_to(r)), None)
            if root is not None:
                found.update(claude_code.logs_at(path, root))
        return sorted(found)

    async def _ingest(
        self,
        events: list[Path],
        metadata: list[Path],
        claude: list[Path],
        report: Report,
        *,
        stoppable: bool = False,
    ) -> bool:
        """One pass through the Ingestor (Roder's files, then the Claude Code
        logs); False (after a backoff) when the store refused it. What
        committed before a failure stays committed, with its checkpoints;
        the rest is read again by the retry.
        `stoppable`: a stop request ends the pass between files (the
        catch-up; a step is bounded by the per-file budget anyway)."""
        before = len(report.parse_errors), len(report.file_errors), report.parse_errors_unlisted
        stop = (lambda: self.stopping) if stoppable else None
        # a Claude Code log's name in checkpoints, reports and logs (never its path)
        name = claude_code_names(self.settings, list(self.claude_roots))

        async def work() -> None:
            if events or metadata:
                await self.ingestor.ingest(events, metadata, report, stop=stop)
            if claude and not (stop is not None and stop()):
                await self.ingestor.ingest(
                    claude, [], report, stop=stop, agent=claude_code.AGENT, name=name
                )

        if not await self._guarded(work()):
            return False
        data_dir = self.settings.data_dir
        attempted = {relative(path, data_dir): path for path in events + metadata}
        attempted |= {name(path): path for path in claude}
        self._log_problems(report, *before[:2], attempted, unlisted_from=before[2])
        return True

    async def _guarded(self, work: Awaitable[object]) -> bool:
        """Await store work; on a store failure (locked, disk full) log it,
        back off and return False so the caller retries. Anything else is a
        bug and propagates."""
        try:
            await work
        except Exception as exc:
            if (failure := store_failure(exc)) is None:
                raise
            await self._store_failed(failure)
            return False
        self._store_ok()
        return True

    # -- maintenance ---------------------------------------------------------

    async def _start_checkpoints(self) -> None:
        """From here on the WAL is copied into the store by a connection of
        its own, beside the work loop, every CHECKPOINT_EVERY_S: a checkpoint
        syncs the files, and on a busy disk that took a second or more inside
        the commit that crossed SQLite's autocheckpoint size, holding back
        every line behind it. Commits themselves never sync (WAL, NORMAL).
        Without that connection the writer's own autocheckpoint stays on."""
        try:
            checkpointer = await open_checkpointer(self.settings.store)
        except (sqlite3.Error, OSError):
            return
        try:
            await self.conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error:
            await checkpointer.close()
            return
        self.tg.start_soon(self._checkpoints, checkpointer)

    async def _checkpoints(self, checkpointer: Any) -> None:
        try:
            while True:
                await anyio.sleep(CHECKPOINT_EVERY_S)
                with suppress(sqlite3.Error):  # busy now: the next one does it
                    async with checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)") as cur:
                        row = await cur.fetchone()
                    if row is not None and row[1] >= WAL_RESTART_FRAMES:
                        self.wal_restart_due = True
                        self.wake.set()
        finally:
            with anyio.CancelScope(shield=True):
                await checkpointer.close()

    async def _retention(self) -> bool:
        async def work() -> None:
            if pruned := await prune(self.conn, self.settings.retention_days):
                log.info("retention_applied", rows_pruned=pruned)

        return await self._guarded(work())

    async def _build_indexes_and_rollups(self) -> None:
        days = len(await dirty_days(self.conn))
        rows = await build_indexes_and_refresh_rollups(self.conn, self.settings.store)
        self.rollups_done = (self.rollups_done[0] + days, self.rollups_done[1] + rows)

    async def _refresh_rollups(self, *, budget: float | None = None) -> bool:
        """Bring the dirty days' rollups up to date. With a `budget` (seconds)
        a day at a time, stopping once it is spent or a change is waiting
        (`rollups_left` then says so): a line appended meanwhile waits for
        one day's refresh, never for all of them."""

        async def work() -> None:
            began = time.monotonic()
            days = rows = 0
            self.rollups_left = False
            while left := await dirty_days(self.conn):
                if (
                    budget is not None
                    and days
                    and (time.monotonic() - began > budget or self._has_news())
                ):
                    self.rollups_left = True
                    break
                rows += await refresh_rollups(
                    self.conn, limit=None if budget is None else ROLLUP_DAYS_PER_STEP
                )
                days += len(left) if budget is None else min(len(left), ROLLUP_DAYS_PER_STEP)
            # one line per refresh, however many steps it was spread over
            self.rollups_done = (self.rollups_done[0] + days, self.rollups_done[1] + rows)
            if self.rollups_left:
                return
            if self.rollups_done[0]:
                log.info("rollups_refreshed", days=self.rollups_done[0], rows=self.rollups_done[1])
            if self.rollups_done[0] or self.prices_made:
                await self._keep_prices()  # new turns may name a new model
            self.rollups_done = (0, 0)

        return await self._guarded(work())

    def _has_news(self) -> bool:
        """The watcher reported a change not read yet."""
        p = self.pending
        return bool(p.events or p.metadata or p.claude_code)

    async def _keep_prices(self) -> None:
        """Price entries for new models, without stalling ingestion: the
        worker that makes them (a process start and genai-prices' table,
        seconds) runs beside the work loop, which only writes what it made."""
        made = self.prices_made

        async def compute(pairs: list[tuple[str, str]]) -> dict[str, Any]:
            missing = [p for p in pairs if f"{p[0]}\x1f{p[1]}" not in made]
            if missing and not self.pricing:
                self.pricing = True
                self.tg.start_soon(self._make_prices, missing)
            return dict(made)

        await keep_price_entries(self.conn, pricing.price_table_version(), compute)
        for key in list(made):  # kept in the store now
            del made[key]

    async def _make_prices(self, pairs: list[tuple[str, str]]) -> None:
        try:
            async with WorkerPool(1) as [worker]:
                self.prices_made.update(await worker.call(pricing.price_entries, pairs))
        except Exception as exc:  # best effort: never the end of the daemon
            # queries then load the table themselves; the class only (a message
            # could carry a model name from the logs, never needed here)
            log.warning("prices_not_kept", error=type(exc).__name__)
        finally:
            self.pricing = False
        self.rollup_due = True  # written by the work loop's next step
        self.wake.set()

    async def _drop_missing(self, paths: list[Path]) -> None:
        """Forget checkpoints of files gone from two rescans in a row (a
        deleted thread dir or Claude Code log; its rows stay). Two, because
        a dir being archived can be in neither place for an instant.
        Forgetting is always safe: should the file come back, re-reading it
        changes nothing. `paths`: every file read (Roder's and Claude Code's);
        with Claude Code not read at all, its checkpoints are kept."""
        if self.ingestor.checkpoints_stale:  # the catch-up did not keep them
            try:
                await self.ingestor.start()
            except sqlite3.Error as exc:
                await self._store_failed(exc)
                return
        present: set[str] = set()
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            present.add(f"{st.st_dev}:{st.st_ino}")
        keep_claude = not self.claude_candidates
        missing = {
            key
            for key, cp in self.ingestor.checkpoints.items()
            if key not in present
            and not (keep_claude and cp.path.startswith(claude_code.PATH_PREFIX))
        }
        gone = missing & self.missing_before
        self.missing_before = missing - gone
        if not gone:
            return
        try:
            async with transaction(self.conn):
                await self.conn.executemany(
                    "DELETE FROM files WHERE file_key = ?", [(key,) for key in sorted(gone)]
                )
        except sqlite3.Error as exc:
            await self._store_failed(exc)
            self.missing_before |= gone
            return
        for key in gone:
            self.ingestor.checkpoints.pop(key, None)
        log.info("files_dropped", files=len(gone))

    # -- problems ------------------------------------------------------------

    async def _store_failed(self, exc: Exception) -> None:
        """Log the first failure of a kind, then back off (interruptibly)."""
        if isinstance(exc, sqlite3.Error):
            message = describe_sqlite_error(exc, self.settings.store)
        else:
            message = str(exc)
        if message != self.store_trouble:
            log.error("store_write_failed", error=message, retry_in_s=self.backoff)
            self.store_trouble = message
        with anyio.move_on_after(self.backoff):
            await self.stop_requested.wait()
        self.backoff = min(self.backoff * 2, self.options.retry_max)

    def _store_ok(self) -> None:
        if self.store_trouble is not None:
            log.info("store_writable_again")
            self.store_trouble = None
        self.backoff = min(self.options.retry_min, self.options.retry_max)

    def _log_problems(
        self,
        report: Report,
        parse_from: int,
        file_from: int,
        attempted: dict[str, Path],
        unlisted_from: int = 0,
    ) -> None:
        """`attempted`: each file read, by the name reports give it. Corrupt
        lines past the report's list are logged as one count."""
        if unlisted := report.parse_errors_unlisted - unlisted_from:
            log.warning("corrupt_lines_skipped", count=unlisted)
        for err in report.parse_errors[parse_from:]:
            key = (err.path, err.line)
            if key in self.parse_errors_seen:
                continue
            if len(self.parse_errors_seen) >= MAX_REMEMBERED_ERRORS:
                self.parse_errors_seen.clear()
            self.parse_errors_seen.add(key)
            log.warning("corrupt_line_skipped", path=err.path, line=err.line, error=err.message)
        failed: dict[str, str] = {}
        for ferr in report.file_errors[file_from:]:
            failed[ferr.path] = ferr.message
            if self.file_errors.get(ferr.path) != ferr.message:
                log.warning("file_unreadable", path=ferr.path, error=ferr.message)
        for rel in attempted:
            if rel in self.file_errors and rel not in failed:
                del self.file_errors[rel]
                self.claude_failed.pop(rel, None)
                log.info("file_readable_again", path=rel)
        self.file_errors.update(failed)
        for rel in failed:
            if rel.startswith(claude_code.PATH_PREFIX) and rel in attempted:
                self.claude_failed[rel] = attempted[rel]

    # -- schedules -------------------------------------------------------------

    async def _timers(self) -> None:
        opts = self.options
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._every, opts.rescan_interval, self._due_rescan)
            tg.start_soon(self._every, opts.rollup_interval, self._due_rollup)
            tg.start_soon(self._every, opts.retention_interval, self._due_retention)
            tg.start_soon(self._every, opts.file_retry_interval, self._retry_files)

    async def _every(self, interval: float, action) -> None:
        while True:
            await anyio.sleep(interval)
            action()
            self.wake.set()

    def _due_rescan(self) -> None:
        self.rescan_due = True

    def _due_rollup(self) -> None:
        self.rollup_due = True

    def _due_retention(self) -> None:
        self.retention_due = True

    def _retry_files(self) -> None:
        # an unreadable file's dir is read again (besides every rescan)
        for rel in self.file_errors:
            if rel.startswith(claude_code.PATH_PREFIX):
                if (path := self.claude_failed.get(rel)) is not None:
                    self.pending.claude_code.add(path)
                continue
            thread_dir = (self.settings.data_dir / rel).parent
            if rel.endswith(METADATA_FILE):
                self.pending.metadata.add(thread_dir)
            else:
                self.pending.events.add(thread_dir)

    # -- forwarding (opt-in) ------------------------------------------------------

    async def _forward(self) -> None:
        from roder_analyticsd.fleet.forwarding import run_forwarding

        try:
            await run_forwarding(
                self.settings.store, self.settings, uuid.uuid4().hex, stop_event=self.stop_requested
            )
        except Exception as exc:  # noqa: BLE001 - forwarding never takes ingestion down
            log.error("forwarding_stopped", error=f"{type(exc).__name__}: {exc}")
