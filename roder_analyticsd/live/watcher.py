"""The file watcher: which thread dirs changed, as soon as they change.

`threads/` and `archived_threads/` are watched recursively with watchfiles
(inotify, FSEvents, or polling where notifications don't work). The data
dir itself is watched non-recursively, only to notice either of them
appearing or vanishing; the tree watch is then restarted and a full rescan
asked for, since anything created before the new watch is in place went
unseen. Watching the data dir recursively instead would also report every
write to our own store, which usually lives under it.

The watcher only says *where* to look. What changed is decided by the
reader, from the file's checkpoint, so a missed, duplicated or reordered
notification costs a little work and never correctness.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import structlog
from watchfiles import Change, awatch

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


@dataclass(slots=True)
class Changes:
    """Thread dirs whose events.jsonl / metadata.json may have changed."""

    events: set[Path] = field(default_factory=set)
    metadata: set[Path] = field(default_factory=set)
    rescan: bool = False


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
    ) -> None:
        self.data_dir = data_dir.resolve()  # the form of the paths the OS reports
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

    def _event(self) -> anyio.Event:
        event = anyio.Event()
        if self._stopped:
            event.set()
        self._stops.append(event)
        return event

    async def run(self) -> None:
        first = True
        while not self._stopped:
            if not self.data_dir.is_dir():
                await anyio.sleep(self.poll_s)  # no data dir yet: Roder never ran
                continue
            roots = self._roots()
            if not first:
                self.notify(Changes(rescan=True))  # what appeared before the watch did
            first = False
            restart = anyio.Event()
            stops = [self._event(), self._event()]
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_top, roots, restart, stops[0])
                if roots:
                    tg.start_soon(self._watch_tree, roots, restart, stops[1])
                await restart.wait()
                for event in stops:
                    event.set()
            self._stops = [e for e in self._stops if e not in stops]

    async def _watch_top(self, roots: list[Path], restart: anyio.Event, stop: anyio.Event) -> None:
        try:
            async for _ in awatch(
                self.data_dir,
                watch_filter=lambda _c, p: Path(p).name in EVENT_DIRS,
                recursive=False,
                step=self.step_ms,
                debounce=self.debounce_ms,
                stop_event=stop,
                rust_timeout=RUST_TIMEOUT_MS,
                ignore_permission_denied=True,
            ):
                if self._roots() != roots:
                    break
        except Exception as exc:  # noqa: BLE001 - the data dir vanished or can't be watched
            await self._failed(exc, stop)
        restart.set()

    async def _watch_tree(self, roots: list[Path], restart: anyio.Event, stop: anyio.Event) -> None:
        def relevant(_change: Change, path: str) -> bool:
            return _classify(Path(path), roots) is not None

        try:
            async for changes in awatch(
                *roots,
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
