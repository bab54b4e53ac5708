"""Tailing append-only JSONL logs: the new complete lines of a file.

Shared by every source (one module per agent log format beside this one).
It streams each file from its checkpoint in bounded blocks and cuts the
complete lines into chunks; an unfinished last line (no newline yet) is
left for a later read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from roder_analyticsd.pipeline.batch import Batch, Checkpoint, FileIdentity, ParseError

FINGERPRINT_BYTES = 1024
READ_BLOCK = 1 << 20
CHUNK_LINES = 4096
CHUNK_BYTES = 4 << 20
MAX_LINE_BYTES = 64 << 20  # longer lines are reported and skipped, never buffered whole


@dataclass(frozen=True, slots=True)
class FileError:
    path: str
    message: str


def fingerprint(prefix: bytes) -> str:
    return hashlib.blake2b(prefix, digest_size=16).hexdigest()


def relative(path: Path, data_dir: Path) -> str:
    try:
        return path.relative_to(data_dir).as_posix()
    except ValueError:
        return path.as_posix()


def describe(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)  # fmt: skip


def _not_regular(mode: int, path: Path) -> OSError | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    return OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))


def open_regular(path: Path) -> BinaryIO:
    """Open a log for reading, never blocking: only regular files are read.

    A FIFO, device or socket named like a log (or a symlink to /dev/zero)
    is refused by stat before it is opened, and by fstat after, in case it
    was swapped in between; O_NONBLOCK keeps open() from waiting for a
    FIFO's writer. The refusal is an OSError like any unreadable file's.
    """
    if (problem := _not_regular(os.stat(path).st_mode, path)) is not None:
        raise problem
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if (problem := _not_regular(os.fstat(fd).st_mode, path)) is not None:
            raise problem
        os.set_blocking(fd, True)  # a regular file: reads are plain reads
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass(slots=True)
class FileRead:
    """What reading one file produced, beside its chunks."""

    path: str
    skipped_lines: int = 0  # lines before the checkpoint, not re-read
    error: FileError | None = None
    identity: FileIdentity | None = None
    more: bool = False  # stopped at the byte budget: complete lines remain to be read


def read_new_lines(
    path: Path,
    data_dir: Path,
    checkpoints: dict[str, Checkpoint],
    outcome: FileRead,
    *,
    chunk_lines: int = CHUNK_LINES,
    max_bytes: int | None = None,
) -> Iterator[Batch]:
    """Yield Batches of the complete lines past the file's checkpoint.

    With `max_bytes`, stop after about that many bytes of lines (at least
    one line) and set `outcome.more` if complete lines remain: a caller
    going round many files gives each its share, so a flood into one file
    cannot hold back a line appended to another.

    `checkpoints` is keyed by FileIdentity.key. A file whose identity is
    known but whose first bytes changed, or that shrank below the
    checkpoint, was replaced or truncated: it is read again from the start
    (the upserts keep that exact).
    """
    rel = outcome.path
    try:
        handle = open_regular(path)  # closed in finally, generator-scoped
    except FileNotFoundError:
        return  # thread dir vanished (or was archived) between scan and read
    except NotADirectoryError:
        return
    except OSError as exc:
        outcome.error = FileError(rel, describe(exc))
        return
    try:
        st = os.fstat(handle.fileno())
        identity = FileIdentity(st.st_dev, st.st_ino)
        outcome.identity = identity
        prefix = handle.read(FINGERPRINT_BYTES)
        known = checkpoints.get(identity.key)
        offset, line_no, prompts = 0, 0, None
        if (
            known is not None
            and known.fp_len <= len(prefix)
            and fingerprint(prefix[: known.fp_len]) == known.fp_hash
            and known.offset <= st.st_size
        ):
            offset, line_no, prompts = known.offset, known.line_no, known.prompts
        outcome.skipped_lines = line_no
        fp_len, fp_hash = len(prefix), fingerprint(prefix)
        if known is not None and offset == st.st_size and known.path == rel:
            return  # nothing new
        # A checkpoint sits just past a newline, except inside a runaway line
        # an earlier read stopped in (already reported): skip its rest.
        handle.seek(max(offset - 1, 0))
        inside_runaway = offset > 0 and handle.read(1) != b"\n"
        yield from _chunks(
            handle,
            rel,
            identity,
            offset,
            line_no,
            fp_len,
            fp_hash,
            chunk_lines,
            max_bytes,
            outcome,
            inside_runaway,
            prompts,
        )
        # a renamed (archived) file with nothing new still records its new path
        if known is not None and known.path != rel and offset == st.st_size:
            yield Batch(
                path=rel,
                checkpoints=[Checkpoint(identity, rel, offset, line_no, fp_len, fp_hash, prompts)],
                prompts=prompts,
            )
    except OSError as exc:
        outcome.error = FileError(rel, describe(exc))
    finally:
        handle.close()


def _chunks(
    handle, rel: str, identity: FileIdentity, offset: int, line_no: int,
    fp_len: int, fp_hash: str, chunk_lines: int, max_bytes: int | None, outcome: FileRead,
    skipping: bool, prompts: str | None,
) -> Iterator[Batch]:  # fmt: skip
    """Cut the file into Batches of complete lines; bytes.split does the work.
    `skipping`: inside a line longer than MAX_LINE_BYTES (dropped to its newline).
    `prompts`: the decoder's state at `offset`, for the first Batch; the
    others continue from their predecessor's (known only once it is decoded)."""
    chunk_bytes = CHUNK_BYTES if max_bytes is None else max(1, min(CHUNK_BYTES, max_bytes))
    budget = max_bytes
    carry = b""
    pending: list[bytes] = []
    pending_bytes = 0
    oversize: list[ParseError] = []
    continues = False

    def emit() -> Batch:
        nonlocal offset, line_no, pending, pending_bytes, oversize, continues
        first = line_no + 1
        offset += pending_bytes + len(pending)  # every pending line had its "\n"
        line_no += len(pending)
        # (the decoder sets the checkpoint's state: the state its lines end in)
        cp = Checkpoint(identity, rel, offset, line_no, fp_len, fp_hash)
        batch = Batch(path=rel, first_line_no=first, lines=pending, checkpoints=[cp],
                      prompts=None if continues else prompts, continues=continues)  # fmt: skip
        batch.errors = oversize
        pending, pending_bytes, oversize, continues = [], 0, [], True
        return batch

    def too_long() -> ParseError:
        return ParseError(rel, line_no + 1, f"line longer than {MAX_LINE_BYTES} bytes")

    while block := handle.read(READ_BLOCK):
        joined = bool(carry)
        parts = (carry + block if carry else block).split(b"\n")
        carry = parts.pop()  # no newline yet: unfinished, or the head of a long line
        if skipping and parts:
            offset += len(parts.pop(0)) + 1  # the rest of the runaway line
            line_no += 1
            skipping = False
        elif joined and parts and len(parts[0]) > MAX_LINE_BYTES:
            # only a line carried over from earlier blocks can be this long:
            # it ended in this block, but is as runaway as one that hasn't
            if pending:
                yield emit()
            oversize.append(too_long())
            offset += len(parts.pop(0)) + 1
            line_no += 1
        start = 0
        while start < len(parts):
            take = parts[start : start + chunk_lines - len(pending)]
            if budget is not None:
                take = _within(take, budget - pending_bytes - len(pending), not pending)
            start += len(take)
            pending.extend(take)
            pending_bytes += sum(map(len, take))
            if (
                len(pending) >= chunk_lines
                or pending_bytes >= chunk_bytes
                or (budget is not None and start < len(parts))
            ):
                emitted = pending_bytes + len(pending)
                yield emit()
                if budget is not None:
                    budget -= emitted
                    if budget <= 0:
                        outcome.more = start < len(parts) or b"\n" in handle.read(READ_BLOCK)
                        return
        if skipping:
            offset += len(carry)
            carry = b""
        elif len(carry) > MAX_LINE_BYTES:
            # a runaway line: report it, then drop bytes until its newline
            if pending:
                yield emit()
            oversize.append(too_long())
            skipping = True
            offset += len(carry)
            carry = b""
    if pending or oversize:
        yield emit()


def _within(lines: list[bytes], room: int, at_least_one: bool) -> list[bytes]:
    """The leading lines that fit in `room` bytes (newlines counted)."""
    used = 0
    for n, line in enumerate(lines):
        used += len(line) + 1
        if used > room:
            return lines[: max(n, 1 if at_least_one else 0)]
    return lines
