"""The file watcher: which thread dirs and Claude Code logs changed, as
soon as they change.

`threads/` and `archived_threads/` are watched recursively with watchfiles
(inotify, FSEvents, or polling where notifications don't work), and so is
each Claude Code root's `projects/`. The data dir and the Claude Code roots
themselves are watched non-recursively, only to notice one of those dirs
appearing or vanishing (and a slow poll notices a data dir or root that
itself appears); the tree watch is then restarted and a full rescan asked
for, since anything created before the new watch is in place went unseen.
Watching the data dir recursively instead would also report every write to
our own store, which usually lives under it.

The watcher only says *where* to look. What changed is decided by the
reader, from the file's checkpoint, so a missed, duplicated or reordered
notification costs a little work and never correctness.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import anyio
import structlog
from watchfiles import Change, awatch

from roder_analyticsd.sources import claude_code
from roder_analyticsd.sources.roder import EVENT_DIRS, EVENTS_FILE, METADATA_FILE

log = structlog.get_logger()

IGNORED_NAMES = frozenset({"thread-index.json"})
RUST_TIMEOUT_MS = 1000  # bounds how long a cancelled watch thread lingers
RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 60.0  # a watch that keeps failing (inotify limit): the rescan carries on


# what may name a file in a watcher error: watchfiles' `about ["…"]`, quoted text, paths
_PATHISH = re.compile(r"""\s*about \[.*?\]|"[^"]*"|'[^']*'|(?<!\w)(?:~|\.{1,2})?/\S*""")
_HINTS = {
    "watch limit": "raise fs.inotify.max_user_watches; the periodic rescan carries on",
    "no path was found": "a watched directory vanished; the watch restarts",
}


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(exception class, a reason safe to log): the OS error's name and text,
    or the message with anything path-like taken out, plus a hint."""
    kind = type(exc).__name__
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        reason = f"{errno.errorcode[code]}: {os.strerror(code)}"
    else:
        text = str(exc).splitlines()[0] if str(exc) else ""
        reason = " ".join(_PATHISH.sub(" … ", text).split())
    lowered = reason.lower()
    hints = [hint for key, hint in _HINTS.items() if key in lowered]
    if isinstance(code, int) and code == errno.ENOSPC:  # inotify's answer at the watch limit
        hints.append(_HINTS["watch limit"])
    reason = (reason or "no reason given") + (f" ({hints[0]})" if hints else "")
    return kind, reason[:200]


TOP_NAMES = frozenset({*EVENT_DIRS, claude_code.PROJECTS})


@dataclass(slots=True)
class Changes:
    """Thread dirs whose events.jsonl / metadata.json may have changed, and
    Claude Code logs that may have changed (or dirs under a root's projects/
    that came, went or were renamed: the logs in them may have)."""

    events: set[Path] = field(default_factory=set)
    metadata: set[Path] = field(default_factory=set)
    claude_code: set[Path] = field(default_factory=set)
    rescan: bool = False


class ClaudeTree(NamedTuple):
    """A Claude Code root whose projects/ is watched, and that dir's real
    path (the form the OS reports paths under it in)."""

    root: Path
    projects: Path


def _claude_hit(path: Path, trees: Sequence[ClaudeTree]) -> Path | None:
    """The path under its root to look at (a log, or a dir holding logs),
    or None for anything else."""
    hit = _claude_hit_under(path, trees)
    if hit is None and len(path.parts) > 1:
        real = Path(os.path.realpath(path.parent)) / path.name
        if real != path:
            hit = _claude_hit_under(real, trees)
    return hit


def _claude_hit_under(path: Path, trees: Sequence[ClaudeTree]) -> Path | None:
    for tree in trees:
        try:
            parts = path.relative_to(tree.projects).parts
        except ValueError:
            continue
        if not parts:
            return None
        name = parts[-1]
        relevant = (
            len(parts) == 1  # a project dir
            or len(parts) == 2  # a session log, or a session's dir
            or (len(parts) == 3 and name == claude_code.SUBAGENTS)
            or (len(parts) == 4 and parts[2] == claude_code.SUBAGENTS and name.endswith(".jsonl"))
        )
        return tree.root / claude_code.PROJECTS / Path(*parts) if relevant else None
    return None


def _classify(path: Path, roots: list[Path]) -> tuple[Path, bool, bool] | None:
    """(thread dir, read events?, read metadata?) for a changed path.

    A path through a symlink under a root (`threads/up -> ..`: inotify then
    names a watched dir by whichever of its paths came last) is classified
    by its dir's real path."""
    hit = _classify_under(path, roots)
    if hit is None and len(path.parts) > 1:
        real = Path(os.path.realpath(path.parent)) / path.name
        if real != path:
            hit = _classify_under(real, roots)
    return hit


def _classify_under(path: Path, roots: list[Path]) -> tuple[Path, bool, bool] | None:
    for root in roots:
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            continue
        if len(parts) == 1 and parts[0] not in IGNORED_NAMES:
            return root / parts[0], True, True  # a thread dir came, went or was renamed
        if len(parts) == 2 and parts[1] == EVENTS_FILE:
            return root / parts[0], True, False
        if len(parts) == 2 and parts[1] == METADATA_FILE:
            return root / parts[0], False, True
        return None
    return None


class Watcher:
    """Calls `notify(Changes)` for every batch of relevant changes."""

    def __init__(
        self,
        data_dir: Path,
        notify: Callable[[Changes], None],
        *,
        step_ms: int,
        debounce_ms: int,
        poll_s: float = 1.0,
        claude_roots: Sequence[Path] = (),
    ) -> None:
        """`claude_roots`: the Claude Code roots that may hold logs (resolved,
        existing or not); the watch covers those whose projects/ exists."""
        self.data_dir = data_dir.resolve()  # the form of the paths the OS reports
        self.claude_roots = list(claude_roots)
        self.notify = notify
        self.step_ms = step_ms
        self.debounce_ms = max(debounce_ms, step_ms)
        self.poll_s = poll_s
        self._stops: list[anyio.Event] = []
        self._stopped = False
        self._failures = 0
        self._last_error: tuple[str, str] | None = None

    def stop(self) -> None:
        """Make the watch threads return (within a step) so `run` can end."""
        self._stopped = True
        for event in self._stops:
            event.set()

    def _roots(self) -> list[Path]:
        return [self.data_dir / sub for sub in EVENT_DIRS if (self.data_dir / sub).is_dir()]

    def _claude_trees(self) -> list[ClaudeTree]:
        return [
            ClaudeTree(root, Path(os.path.realpath(root / claude_code.PROJECTS)))
            for root in claude_code.existing_roots(self.claude_roots)
        ]

    def _tops(self) -> list[Path]:
        """The dirs watched non-recursively: where a watched tree may come or go."""
        return [p for p in (self.data_dir, *self.claude_roots) if p.is_dir()]

    def _layout(self) -> tuple[list[Path], list[Path], list[ClaudeTree]]:
        return self._tops(), self._roots(), self._claude_trees()

    def _event(self) -> anyio.Event:
        event = anyio.Event()
        if self._stopped:
            event.set()
        self._stops.append(event)
        return event

    async def run(self) -> None:
        first = True
        while not self._stopped:
            layout = self._layout()
            tops, roots, trees = layout
            if not tops:
                await anyio.sleep(self.poll_s)  # no data dir yet (Roder never ran), no root
                continue
            if not first:
                self.notify(Changes(rescan=True))  # what appeared before the watch did
            first = False
            restart = anyio.Event()
            stops = [self._event(), self._event(), self._event()]
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_top, layout, restart, stops[0])
                if roots or trees:
                    tg.start_soon(self._watch_tree, roots, trees, restart, stops[1])
                tg.start_soon(self._poll_layout, layout, restart, stops[2])
                await restart.wait()
                for event in stops:
                    event.set()
            self._stops = [e for e in self._stops if e not in stops]

    async def _poll_layout(self, layout, restart: anyio.Event, stop: anyio.Event) -> None:
        """A slow look for what no watch can report: a data dir or Claude
        Code root created (or removed) itself."""
        while not stop.is_set():
            with anyio.move_on_after(self.poll_s):
                await stop.wait()
            if not stop.is_set() and self._layout() != layout:
                break
        restart.set()

    async def _watch_top(self, layout, restart: anyio.Event, stop: anyio.Event) -> None:
        try:
            async for _ in awatch(
                *layout[0],
                watch_filter=lambda _c, p: Path(p).name in TOP_NAMES,
                recursive=False,
                step=self.step_ms,
                debounce=self.debounce_ms,
                stop_event=stop,
                rust_timeout=RUST_TIMEOUT_MS,
                ignore_permission_denied=True,
            ):
                if self._layout() != layout:
                    break
        except Exception as exc:  # noqa: BLE001 - the data dir vanished or can't be watched
            await self._failed(exc, stop)
        restart.set()

    async def _watch_tree(
        self, roots: list[Path], trees: list[ClaudeTree], restart: anyio.Event, stop: anyio.Event
    ) -> None:
        def relevant(_change: Change, path: str) -> bool:
            p = Path(path)
            return _classify(p, roots) is not None or _claude_hit(p, trees) is not None

        try:
            async for changes in awatch(
                *roots,
                *(tree.projects for tree in trees),
                watch_filter=relevant,
                step=self.step_ms,
                debounce=self.debounce_ms,
                stop_event=stop,
                rust_timeout=RUST_TIMEOUT_MS,
                ignore_permission_denied=True,
            ):
                batch = Changes()
                for _change, path in changes:
                    hit = _classify(Path(path), roots)
                    if hit is None:
                        if (claude := _claude_hit(Path(path), trees)) is not None:
                            batch.claude_code.add(claude)
                        continue
                    thread_dir, events, metadata = hit
                    if events:
                        batch.events.add(thread_dir)
                    if metadata:
                        batch.metadata.add(thread_dir)
                self.notify(batch)
                self._failures = 0
        except Exception as exc:  # noqa: BLE001 - a root vanished, or too many watches
            await self._failed(exc, stop)
        restart.set()

    async def _failed(self, exc: Exception, stop: anyio.Event) -> None:
        """Log a new kind of failure once (class and a reason, never a path),
        then wait longer each time."""
        described = describe_failure(exc)
        delay = min(RESTART_DELAY_S * 2**self._failures, MAX_RESTART_DELAY_S)
        if described != self._last_error:
            kind, reason = described
            log.warning("watch_failed", error=kind, reason=reason, retry_in_s=delay)
            self._last_error = described
        self._failures += 1
        with anyio.move_on_after(delay):
            await stop.wait()
