"""The source: complete lines once each, in order, from any checkpoint."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roder_analyticsd.pipeline.batch import Checkpoint
from roder_analyticsd.sources import files as source
from roder_analyticsd.sources.files import FileRead, read_new_lines


def read_all(path: Path, checkpoints: dict[str, Checkpoint], chunk_lines: int = 4096):
    outcome = FileRead("t/events.jsonl")
    batches = list(read_new_lines(path, path.parent, checkpoints, outcome, chunk_lines=chunk_lines))
    for batch in batches:
        for cp in batch.checkpoints:
            checkpoints[cp.identity.key] = cp
    return batches, outcome


lines_strategy = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=40
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=lines_strategy, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
       chunk_lines=st.integers(min_value=1, max_value=7))  # fmt: skip
def test_appends_in_any_pieces_yield_each_complete_line_once(tmp_path, lines, cuts, chunk_lines):
    """Writers append in arbitrary pieces (a line may be half-written when we
    read); resuming from checkpoints yields every complete line exactly once,
    in order, with its line number, and never the unfinished tail."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")
    content = b"".join(line + b"\n" for line in lines) + b"partial-no-newline"
    checkpoints: dict[str, Checkpoint] = {}
    seen: list[tuple[int, bytes]] = []
    for cut in sorted({min(c, len(content)) for c in cuts}) + [len(content)]:
        with open(path, "r+b") as fh:
            fh.seek(0, 2)
            fh.write(content[fh.tell() : cut])
        batches, outcome = read_all(path, checkpoints, chunk_lines)
        assert outcome.error is None
        for batch in batches:
            assert len(batch.lines) <= chunk_lines
            seen.extend(enumerate(batch.lines, batch.first_line_no))
    assert seen == list(enumerate(lines, 1))
    (cp,) = checkpoints.values()
    assert cp.offset == len(content) - len(b"partial-no-newline")
    assert cp.line_no == len(lines)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=lines_strategy, budget=st.integers(min_value=1, max_value=200),
       chunk_lines=st.integers(min_value=1, max_value=7))  # fmt: skip
def test_a_byte_budget_reads_a_share_and_says_more_remains(tmp_path, lines, budget, chunk_lines):
    """Read with a byte budget, again and again while `more` says so: every
    complete line once, in order; each read stays within its budget (or is
    one line, if that line alone is bigger)."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines) + b"partial")
    checkpoints: dict[str, Checkpoint] = {}
    seen: list[bytes] = []
    for _ in range(len(lines) + 1):
        outcome = FileRead("t/events.jsonl")
        batches = list(read_new_lines(
            path, path.parent, checkpoints, outcome, chunk_lines=chunk_lines, max_bytes=budget
        ))  # fmt: skip
        got = [line for batch in batches for line in batch.lines]
        assert got, "a read with complete lines left makes progress"
        size = sum(len(line) + 1 for line in got)
        assert size <= budget or len(got) == 1 or size - len(got[-1]) - 1 < budget
        for batch in batches:
            for cp in batch.checkpoints:
                checkpoints[cp.identity.key] = cp
        seen.extend(got)
        if not outcome.more:
            break
    assert seen == lines


def test_a_runaway_line_is_reported_and_skipped_without_buffering_it(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "MAX_LINE_BYTES", 100)
    monkeypatch.setattr(source, "READ_BLOCK", 64)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"first\n" + b"x" * 1000 + b"\nthird\n")
    checkpoints: dict[str, Checkpoint] = {}
    batches, _ = read_all(path, checkpoints)
    lines = [(n, ln) for b in batches for n, ln in enumerate(b.lines, b.first_line_no)]
    assert lines == [(1, b"first"), (3, b"third")]
    errors = [e for b in batches for e in b.errors]
    assert [(e.line, e.message) for e in errors] == [(2, "line longer than 100 bytes")]
    (cp,) = checkpoints.values()
    assert cp.offset == path.stat().st_size and cp.line_no == 3


def test_a_renamed_file_keeps_its_checkpoint(tmp_path):
    path = tmp_path / "a" / "events.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"one\ntwo\n")
    checkpoints: dict[str, Checkpoint] = {}
    read_all(path, checkpoints)
    moved = tmp_path / "b" / "events.jsonl"
    moved.parent.mkdir()
    path.rename(moved)
    with open(moved, "ab") as fh:
        fh.write(b"three\n")
    batches, _ = read_all(moved, checkpoints)
    assert [ln for b in batches for ln in b.lines] == [b"three"]
    assert batches[0].first_line_no == 3
