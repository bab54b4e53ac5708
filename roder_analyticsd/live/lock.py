"""One daemon per store: an exclusive `flock` on `<store>.lock`.

The lock file holds the owner's pid for `status`. The kernel drops the lock
when the process dies (even by kill -9), so a stale file never blocks a
restart; the file itself is never deleted (deleting it would let a second
daemon lock a fresh inode while the first still holds the old one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

ATTEMPTS = 10
RETRY_S = 0.05  # `status` probes the lock for an instant: don't mistake that for a daemon


class LockHeld(Exception):
    """Another process holds the store's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        owner = f"pid {pid}" if pid else "another process"
        super().__init__(f"another roder-analyticsd ({owner}) is already running on this store")


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class StoreLock:
    """`acquire()` or raise LockHeld; `release()` on the way out."""

    def __init__(self, store: Path) -> None:
        self.path = lock_path(store)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        for attempt in range(ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 == ATTEMPTS:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise LockHeld(self.path, pid) from None
                time.sleep(RETRY_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # no pid left behind for `status`
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def holder(store: Path) -> tuple[bool, int | None]:
    """(running, pid) of the daemon holding the store's lock, if any."""
    try:
        fd = os.open(lock_path(store), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)
