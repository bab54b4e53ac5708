"""Values no agent can have written: one such line is a parse error, never a stop.

Token counts are integers in [0, 2^36 - 1]; event times are instants in UTC
years 1970..9998. Each test here goes through the real command line (or the
real daemon) where a bad value used to end in a traceback or a crash loop.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import dump_tables, run_cli, run_json
from hypothesis import given
from hypothesis import strategies as st
from test_daemon import Daemon, caught_up, until

MAX_TOKENS = 2**36 - 1  # documented in the README and roder-events contract
MAX_TIME_MS = 253370764800000  # 9999-01-01T00:00:00Z, exclusive
EVENTS = "threads/thr-a/events.jsonl"


def event(kind: str, variant: str, turn: str, payload: dict, thread: str = "thr-a") -> str:
    payload = {"thread_id": thread, "turn_id": turn, **payload}
    return json.dumps(
        {"event_id": f"evt-{kind}-{turn}", "seq": 1, "timestamp": payload["timestamp"],
         "source": "Core", "kind": kind, "thread_id": thread, "turn_id": turn,
         "event": {variant: payload}}
    )  # fmt: skip


def completed(turn: str, stamp: str = "2026-11-01T10:00:03Z", thread: str = "thr-a", **usage):
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, **usage}
    body = {"timestamp": stamp, "usage": usage}
    return event("turn.completed", "TurnCompleted", turn, body, thread)


def started(turn: str, stamp: str = "2026-11-01T10:00:00Z", thread: str = "thr-a") -> str:
    return event("turn.started", "TurnStarted", turn, {"timestamp": stamp}, thread)


def write_thread(data_dir: Path, thread: str, lines: list[str]) -> Path:
    path = data_dir / "threads" / thread / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def once(data_dir: Path, store: Path, *extra: str):
    return run_cli(
        "--once", "--json", "--data-dir", data_dir, "--store", store, *extra, check=False
    )


def stats(store: Path, data_dir: Path, *args: str):
    return run_json("stats", *args, "--data-dir", data_dir, "--store", store)


def errors_of(proc) -> list[tuple[str, int]]:
    return [(e["path"], e["line"]) for e in json.loads(proc.stdout)["parseErrors"]]


# --- item 1 / 11: token counts ------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [2**63, 2**64 + 7, 2**62, MAX_TOKENS + 1, -1, -(2**63) - 1],
)
def test_an_impossible_token_count_is_a_parse_error_and_the_rest_lands(tmp_path, store, value):
    data = tmp_path / "data"
    write_thread(
        data, "thr-a",
        [started("turn-1"), completed("turn-1", prompt_tokens=value), started("turn-2"),
         completed("turn-2")],
    )  # fmt: skip
    write_thread(data, "thr-b", [started("t", thread="thr-b"), completed("t", thread="thr-b")])
    proc = once(data, store, "--best-effort")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert errors_of(proc) == [(EVENTS, 2)]
    assert json.loads(proc.stdout)["linesIngested"] == 5
    summary = stats(store, data, "summary")
    assert summary["turnCount"] == 3 and summary["totalTokens"] == 30
    # strict: the same line stops the run with file:line, one line, no traceback
    strict = once(data, tmp_path / "strict.sqlite3")
    assert strict.returncode == 1 and f"{EVENTS}:2:" in strict.stderr
    assert "Traceback" not in strict.stderr and strict.stderr.count("\n") == 1


def test_two_turns_near_2_pow_62_never_reach_a_sum(tmp_path, store):
    data = tmp_path / "data"
    write_thread(
        data, "thr-a",
        [completed("turn-1", prompt_tokens=2**62, total_tokens=2**62),
         completed("turn-2", prompt_tokens=2**62 + 1, total_tokens=2**62 + 1), completed("ok")],
    )  # fmt: skip
    proc = once(data, store, "--best-effort")
    assert proc.returncode == 0, proc.stderr
    assert errors_of(proc) == [(EVENTS, 1), (EVENTS, 2)]
    assert json.loads(proc.stdout)["rollupRowsRefreshed"] > 0
    again = once(data, store, "--best-effort")  # a later run is not stuck on them
    assert again.returncode == 0, again.stderr
    day = stats(store, data, "tokens", "--group", "day")
    assert [(r["group"], r["totalTokens"]) for r in day] == [("2026-11-01", 15)]


def test_a_store_full_of_counts_at_the_bound_sums_exactly(tmp_path, store):
    """2000 turns in one day and one session, every count at the bound: far past
    the 1024 rows at which 2^53-sized counts would overflow SQLite's SUM."""
    data = tmp_path / "data"
    n = 2000
    at_bound = dict.fromkeys(
        ("prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens",
         "cache_creation_prompt_tokens"), MAX_TOKENS,
    )  # fmt: skip
    write_thread(data, "thr-a", [completed(f"turn-{i}", **at_bound) for i in range(n)])
    proc = once(data, store)
    assert proc.returncode == 0, proc.stderr
    want = n * MAX_TOKENS
    summary = stats(store, data, "summary")
    assert summary["totalTokens"] == want
    (day,) = stats(store, data, "tokens", "--group", "day", "--timezone", "America/New_York")
    assert day["promptTokens"] == day["cachedPromptTokens"] == want
    (session,) = stats(store, data, "sessions", "--sort", "tokens")
    assert session["totalTokens"] == want
    rollups = stats(store, data, "rollups")
    assert {r["totalTokens"] for r in rollups} == {want}


def test_the_bound_keeps_any_realistic_sum_inside_64_bits():
    from roder_analyticsd import bounds

    assert bounds.MAX_TOKENS == MAX_TOKENS
    # a SUM over 2^27 rows (134 million turns), every one at the bound, still fits
    assert bounds.MAX_TOKENS * bounds.ROWS_PER_SUM_AT_BOUND <= 2**63 - 1
    assert bounds.ROWS_PER_SUM_AT_BOUND == 2**27


def _export_with_usage(tmp_path: Path, **fields) -> Path:
    ok = {"kind": "token_usage", "schemaVersion": 1, "threadId": "thr-a",
          "turnId": "turn-0", "recordedAtMs": 1_790_000_000_000, "promptTokens": 1,
          "completionTokens": 1, "totalTokens": 2}  # fmt: skip
    record = {**ok, "turnId": "turn-1", **fields}
    path = tmp_path / "usage.jsonl"
    path.write_text(json.dumps(ok) + "\n" + json.dumps(record) + "\n")
    return path


@pytest.mark.parametrize(
    "fields",
    [{"promptTokens": 2**63}, {"totalTokens": 2**64}, {"cachedPromptTokens": -1},
     {"completionTokens": MAX_TOKENS + 1}, {"recordedAtMs": MAX_TIME_MS},
     {"recordedAtMs": -1}, {"recordedAtMs": 2**63}],
)  # fmt: skip
def test_import_of_an_impossible_value_is_a_one_line_error_for_that_record(tmp_path, fields):
    path = _export_with_usage(tmp_path, **fields)
    target = tmp_path / "target.sqlite3"
    proc = run_cli("import", path, "--store", target, "--data-dir", tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}:2:" in proc.stderr and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    with sqlite3.connect(target) as conn:  # a bad file writes nothing
        assert conn.execute("SELECT count(*) FROM token_usage").fetchone() == (0,)


# --- item 2: timestamps ---------------------------------------------------------


@pytest.mark.parametrize(
    "stamp",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00Z",
     "9999-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z", "1970-01-01T00:00:00+00:01"],
)  # fmt: skip
def test_a_time_outside_the_window_is_a_parse_error(tmp_path, store, stamp):
    data = tmp_path / "data"
    write_thread(
        data, "thr-a",
        [started("turn-1", stamp), completed("turn-1", stamp),
         json.dumps({"event_id": "m", "kind": "memory.saved", "timestamp": stamp,
                     "event": {"MemorySaved": {"timestamp": stamp, "text": "private"}}}),
         started("turn-2"), completed("turn-2")],
    )  # fmt: skip
    proc = once(data, store, "--best-effort")
    assert proc.returncode == 0, proc.stderr
    assert errors_of(proc) == [(EVENTS, 1), (EVENTS, 2), (EVENTS, 3)]
    assert "Traceback" not in proc.stderr
    assert once(data, store, "--best-effort").returncode == 0  # later runs too
    for group in ("day", "week", "month"):
        rows = stats(store, data, "tokens", "--group", group, "--timezone", "America/New_York")
        assert [r["totalTokens"] for r in rows] == [15]
    assert stats(store, data, "summary")["turnCount"] == 1
    assert len(stats(store, data, "rollups")) == 2  # 'all' and one model, one day


@pytest.mark.parametrize(
    "stamp", ["1970-01-01T00:00:00Z", "1969-12-31T19:00:00-05:00", "9998-12-31T23:59:59.999999999Z",
              "9999-01-01T13:59:59+14:00"],
)  # fmt: skip
def test_the_edges_of_the_window_are_kept_and_bucket_in_any_zone(tmp_path, store, stamp):
    data = tmp_path / "data"
    write_thread(data, "thr-a", [started("turn-1", stamp), completed("turn-1", stamp)])
    proc = once(data, store)
    assert proc.returncode == 0, proc.stderr
    for zone in ("America/New_York", "Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"):
        for group in ("day", "week", "month"):
            rows = stats(store, data, "tokens", "--group", group, "--timezone", zone)
            assert [r["totalTokens"] for r in rows] == [15], (zone, group)
    assert stats(store, data, "summary")["turnCount"] == 1


@pytest.mark.parametrize(
    "bound",
    [("--since", "0001-01-01T00:00:00+01:00"), ("--until", "9999-12-31T23:59:59-23:59"),
     ("--since", "0001-01-01"), ("--until", "9999-12-31")],
)  # fmt: skip
def test_query_bounds_far_outside_the_window_never_raise(tmp_path, store, bound):
    data = tmp_path / "data"
    write_thread(data, "thr-a", [started("turn-1"), completed("turn-1")])
    assert once(data, store).returncode == 0
    for args in (["rollups"], ["summary"], ["tokens", "--group", "day"]):
        zone = [] if args == ["rollups"] else ["--timezone", "Pacific/Kiritimati"]
        proc = run_cli(
            "stats", *args, *bound, *zone, "--json", "--data-dir", data, "--store", store,
            check=False,
        )  # fmt: skip
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_the_daemon_skips_impossible_values_and_keeps_tailing(tmp_path):
    data = tmp_path / "roder"
    store = tmp_path / "store" / "usage.sqlite3"
    (data / "threads").mkdir(parents=True)
    (data / "config.toml").write_text(
        "[analytics.daemon]\nflush_interval_ms = 40\nrollup_interval_s = 0.3\n"
    )
    poison = [
        completed("p1", prompt_tokens=2**63), completed("p2", "0001-01-01T00:00:00+01:00"),
        completed("p3", prompt_tokens=2**62), completed("p4", prompt_tokens=2**62),
    ]  # fmt: skip
    write_thread(data, "thr-a", [*poison, completed("ok-1")])
    write_thread(data, "thr-b", [completed("ok-2", thread="thr-b")])
    daemon = Daemon(data, store, tmp_path / "daemon.log")
    try:
        daemon.start()
        until(lambda: caught_up(data, store), what="catch-up past poisoned lines")
        with open(data / EVENTS, "a") as fh:  # still tailing
            fh.write(completed("ok-3") + "\n")
        until(lambda: caught_up(data, store), what="tailing after poisoned lines")
        until(lambda: daemon.count("rollups_refreshed") >= 1 or _rollups(store) > 0)
        skipped = [e for e in daemon.events() if e.get("event") == "corrupt_line_skipped"]
        assert sorted(e["line"] for e in skipped) == [1, 2, 3, 4]
        assert daemon.proc.poll() is None
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
    assert stats(store, data, "summary")["totalTokens"] == 45
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def _rollups(store: Path) -> int:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT count(*) FROM daily_rollups").fetchone()[0]


# --- item 8: a failed strict rebuild changes nothing ------------------------------


def test_a_failed_strict_rebuild_leaves_the_store_as_it_was(data_dir, store):
    first = once(data_dir, store, "--best-effort")
    assert first.returncode == 0, first.stderr
    before = dump_tables(store)
    assert len(before["turns"]) == 133
    proc = once(data_dir, store, "--rebuild")  # the sample holds corrupt lines
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--best-effort" in proc.stderr and "the store is unchanged" in proc.stderr
    assert dump_tables(store) == before
    # and a rebuild that succeeds still replays everything
    done = once(data_dir, store, "--rebuild", "--best-effort")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["linesSkippedByOffset"] == 0
    assert dump_tables(store) == before


def test_a_failed_rebuild_keeps_checkpoints_so_the_next_run_reads_only_new_lines(tmp_path):
    data = tmp_path / "data"
    store = tmp_path / "usage.sqlite3"
    write_thread(data, "thr-a", [started("turn-1"), completed("turn-1")])
    assert once(data, store).returncode == 0
    with open(data / EVENTS, "a") as fh:
        fh.write("{not json\n" + completed("turn-2") + "\n")
    assert once(data, store, "--rebuild").returncode == 1
    proc = once(data, store, "--best-effort")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["linesSkippedByOffset"] == 2 and errors_of(proc) == [(EVENTS, 3)]
    assert stats(store, data, "summary")["totalTokens"] == 30


# --- item 9: a runaway line is reported like any corrupt line ----------------------


def test_a_line_over_64_mib_is_a_parse_error_and_fatal_in_strict_mode(tmp_path):
    data = tmp_path / "data"
    path = write_thread(data, "thr-a", [started("turn-1")])
    with open(path, "ab") as fh:
        fh.write(b'{"pad":"' + b"x" * (64 << 20) + b'"}\n')
        fh.write((completed("turn-1") + "\n").encode())
    store = tmp_path / "usage.sqlite3"
    strict = once(data, store)
    assert strict.returncode == 1, strict.stderr
    assert f"{EVENTS}:2: line longer than" in strict.stderr
    proc = once(data, tmp_path / "other.sqlite3", "--best-effort")
    assert proc.returncode == 0, proc.stderr
    assert errors_of(proc) == [(EVENTS, 2)]
    assert json.loads(proc.stdout)["linesIngested"] == 2


# --- item 19: metadata.json is read with a bound --------------------------------------


def test_an_oversized_metadata_file_is_a_file_error_and_the_rest_goes_on(tmp_path, store):
    data = tmp_path / "data"
    write_thread(data, "thr-a", [started("turn-1"), completed("turn-1")])
    write_thread(data, "thr-b", [started("t", thread="thr-b"), completed("t", thread="thr-b")])
    doc = {"thread_id": "thr-a", "workspace": "/w/a", "title": "x" * (2 << 20)}
    (data / "threads" / "thr-a" / "metadata.json").write_text(json.dumps(doc))
    small = {"thread_id": "thr-b", "workspace": "/w/b"}
    (data / "threads" / "thr-b" / "metadata.json").write_text(json.dumps(small))
    proc = once(data, store, "--best-effort")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [e["path"] for e in report["fileErrors"]] == ["threads/thr-a/metadata.json"]
    assert "larger than" in report["fileErrors"][0]["message"]
    assert report["linesIngested"] == 4 and report["sessionsEnriched"] == 1
    workspaces = {s["threadId"]: s["workspaceLabel"] for s in stats(store, data, "sessions")}
    assert workspaces == {"thr-a": None, "thr-b": "/w/b"}


def test_the_daemon_reports_an_oversized_metadata_file_once(tmp_path):
    data = tmp_path / "roder"
    store = tmp_path / "store" / "usage.sqlite3"
    (data / "threads").mkdir(parents=True)
    (data / "config.toml").write_text(
        "[analytics.daemon]\nflush_interval_ms = 40\nrescan_interval_s = 0.2\n"
    )
    write_thread(data, "thr-a", [started("turn-1")])
    meta = data / "threads" / "thr-a" / "metadata.json"
    meta.write_text(json.dumps({"thread_id": "thr-a", "title": "x" * (2 << 20)}))
    daemon = Daemon(data, store, tmp_path / "daemon.log")
    try:
        daemon.start()
        for n in range(2, 5):  # appends and rescans read it again and again
            with open(data / EVENTS, "a") as fh:
                fh.write(completed(f"turn-{n}") + "\n")
            until(lambda: caught_up(data, store), what="tailing beside big metadata")
            meta.touch()
        until(lambda: daemon.count("file_unreadable") >= 1, what="metadata reported")
        time.sleep(1)  # five more rescans
        logged = [e for e in daemon.events() if e.get("event") == "file_unreadable"]
        assert [e["path"] for e in logged] == ["threads/thr-a/metadata.json"]
        assert daemon.proc.poll() is None
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()


# --- properties of the decoder's bounds ---------------------------------------------

TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens",
                "cache_creation_prompt_tokens")  # fmt: skip
any_int = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, MAX_TOKENS, MAX_TOKENS + 1, -1, 2**53, 2**62, 2**63, 2**64, -(2**63)]),
)


def _decode_one(raw: str):
    from roder_analyticsd.pipeline.batch import Batch
    from roder_analyticsd.sources.roder import decode

    batch = decode(Batch(path="p", lines=[raw.encode()]))
    assert batch.lines_ingested + len(batch.errors) == 1
    return batch


@given(field=st.sampled_from(TOKEN_FIELDS), value=any_int)
def test_any_integer_count_decodes_within_the_bound_or_is_a_parse_error(field, value):
    batch = _decode_one(completed("t", **{field: value}))
    if 0 <= value <= MAX_TOKENS:
        (event,) = batch.events
        assert getattr(event.payload.usage, field) == value
    else:
        assert [(e.path, e.line) for e in batch.errors] == [("p", 1)]
        assert batch.events == []


def _reference_ms(stamp: str) -> int | None:
    """Epoch ms of a well-formed RFC 3339 stamp by plain calendar arithmetic,
    whatever its year; None when it is not a valid date and time."""
    import re
    from datetime import date

    m = re.fullmatch(
        r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|([+-])(\d\d):(\d\d))",
        stamp,
        re.ASCII | re.IGNORECASE,
    )
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    try:
        days = date(y, mo, d).toordinal() - date(1970, 1, 1).toordinal()
    except ValueError:
        return None
    if h > 23 or mi > 59 or s > 60:
        return None
    offset = 0
    if m.group(8) not in "Zz":
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        offset = (oh * 60 + om) * 60_000 * (1 if m.group(9) == "+" else -1)
    frac = int(((m.group(7) or "") + "000")[:3])
    if s == 60:  # a leap second is the last millisecond of its minute
        s, frac = 59, 999
    return days * 86_400_000 + ((h * 60 + mi) * 60 + s) * 1000 + frac - offset


rfc3339_like = st.builds(
    lambda y, mo, d, h, mi, s, frac, off: (
        f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{off}"
    ),
    st.integers(1, 9999), st.integers(1, 12), st.integers(1, 31), st.integers(0, 23),
    st.integers(0, 59), st.integers(0, 60),
    st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,9}", fullmatch=True)),
    st.one_of(st.just("Z"), st.from_regex(r"[+-]([01][0-9]|2[0-3]):[0-5][0-9]", fullmatch=True)),
)  # fmt: skip


@given(stamp=st.one_of(rfc3339_like, st.text(max_size=40)))
def test_any_timestamp_decodes_inside_the_window_or_is_a_parse_error(stamp):
    batch = _decode_one(started("t", stamp))
    want = _reference_ms(stamp)
    if batch.events:
        (event,) = batch.events
        assert 0 <= event.at_ms < MAX_TIME_MS
        assert event.at_ms == want, stamp
    else:
        assert len(batch.errors) == 1
        assert want is None or not 0 <= want < MAX_TIME_MS, stamp


@given(
    stamp=rfc3339_like,
    zone=st.sampled_from(
        ["America/New_York", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Kolkata", "UTC"]
    ),
)
def test_every_decoded_time_has_a_calendar_day_in_every_zone(stamp, zone):
    from roder_analyticsd.timewindow import day_key, month_key, parse_timezone, week_key

    batch = _decode_one(started("t", stamp))
    for event in batch.events:
        tz = parse_timezone(zone)
        assert len(day_key(event.at_ms, tz)) == 10
        assert week_key(event.at_ms, tz) and month_key(event.at_ms, tz)


@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=12),
    block=st.integers(1, 80),
    cut=st.integers(0, 4000),
)
def test_every_line_over_the_maximum_is_reported_whatever_the_read_blocks(
    tmp_path_factory, lengths, block, cut
):
    """However the blocks fall and wherever a run stops, each line longer than
    the maximum is one error at its own line number and every other line is
    read once, in order, with its number."""
    from roder_analyticsd.sources import files

    limit = 100
    path = tmp_path_factory.mktemp("long") / "events.jsonl"
    lines = [bytes([65 + i % 26]) * n for i, n in enumerate(lengths)]
    content = b"".join(line + b"\n" for line in lines)
    path.write_bytes(content[:cut])
    checkpoints: dict = {}
    seen, errors = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(files, "MAX_LINE_BYTES", limit)
        mp.setattr(files, "READ_BLOCK", block)
        for _ in range(2):  # a first run up to `cut`, then the rest
            outcome = files.FileRead("t/events.jsonl")
            for batch in files.read_new_lines(path, path.parent, checkpoints, outcome):
                seen.extend(enumerate(batch.lines, batch.first_line_no))
                errors.extend(e.line for e in batch.errors)
                for cp in batch.checkpoints:
                    checkpoints[cp.identity.key] = cp
            path.write_bytes(content)
    numbered = list(enumerate(lines, 1))
    assert seen == [(n, line) for n, line in numbered if len(line) <= limit]
    assert errors == [n for n, line in numbered if len(line) > limit]


def test_the_receiver_rejects_an_event_outside_the_time_window(tmp_path):
    """Per element, like any other bad event: the rest of the batch is stored."""
    import httpx
    from conftest import serve_on_loopback
    from test_receiver import event as v2_event

    from roder_analyticsd.fleet.receiver import create_app

    db = tmp_path / "collect.sqlite3"
    batch = [
        v2_event(0), v2_event(1, occurredAt="0001-01-01T00:00:00+01:00"),
        v2_event(2, occurredAt="9999-12-31T23:59:59-23:59"), v2_event(3),
    ]  # fmt: skip
    with serve_on_loopback(create_app(str(db), token=None)) as base:
        r = httpx.post(f"{base}/collect", json=batch, timeout=10)
        again = httpx.post(f"{base}/collect", json=[v2_event(4)], timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == ["ev-0", "ev-3"]
    assert [x["index"] for x in body["rejected"]] == [1, 2]
    assert all("1970..9998" in x["reason"] for x in body["rejected"])
    assert again.status_code == 200 and again.json()["accepted"] == ["ev-4"]
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT event_id FROM collected_events ORDER BY 1").fetchall()
    assert stored == [("ev-0",), ("ev-3",), ("ev-4",)]


def test_a_rebuild_that_fails_half_way_leaves_the_store_as_it_was(data_dir, store, monkeypatch):
    """Any error after some batches are written (a full disk, a lost worker):
    here the writer's third write fails."""
    import anyio

    from roder_analyticsd.config import load_settings
    from roder_analyticsd.live import ingest
    from roder_analyticsd.store.connection import open_store

    assert once(data_dir, store, "--best-effort").returncode == 0
    before = dump_tables(store)
    real_write, calls = ingest.write_rows, []

    async def failing_write(conn, rows, checkpoints, *args):
        calls.append(len(checkpoints))
        if len(calls) == 3:
            raise sqlite3.OperationalError("database or disk is full")
        await real_write(conn, rows, checkpoints, *args)

    monkeypatch.setattr(ingest, "write_rows", failing_write)
    monkeypatch.setattr(ingest, "WRITE_BATCH_ROWS", 50)  # many small writes

    async def rebuild() -> None:
        conn = await open_store(store)
        try:
            settings = load_settings(data_dir, store)
            await ingest.run_once(conn, settings, rebuild=True, strict=False)
        finally:
            await conn.close()

    with pytest.raises(sqlite3.OperationalError):
        anyio.run(rebuild)
    assert len(calls) == 3
    assert dump_tables(store) == before


def test_metadata_is_read_whole_up_to_the_bound_and_not_past_it(tmp_path):
    from roder_analyticsd.sources.roder import MAX_METADATA_BYTES, read_metadata

    sizes = {"empty": 0, "small": 300, "at": MAX_METADATA_BYTES, "over": MAX_METADATA_BYTES + 1}
    paths = []
    for name, size in sizes.items():
        path = tmp_path / name / "metadata.json"
        path.parent.mkdir()
        path.write_bytes(b"x" * size)
        paths.append(path)
    files, problems = read_metadata(paths, tmp_path)
    assert {rel: len(raw) for rel, raw in files} == {
        "empty/metadata.json": 0, "small/metadata.json": 300, "at/metadata.json": MAX_METADATA_BYTES
    }  # fmt: skip
    assert [p.path for p in problems] == ["over/metadata.json"]


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_many_small_metadata_files_cost_their_size_not_a_page_each(tmp_path):
    """A read asked for the whole 1 MiB bound left each few-hundred-byte
    file holding a 4 KiB page: ~45 MB for 10k threads."""
    from roder_analyticsd.sources.roder import read_metadata

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    paths = []
    for i in range(4000):
        path = tmp_path / f"thr-{i}" / "metadata.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"thread_id": f"thr-{i}", "workspace": f"/w/{i}"}))
        paths.append(path)
    before = rss()
    files, _ = read_metadata(paths, tmp_path)
    grown = rss() - before
    assert len(files) == 4000
    assert grown < 8 << 20, f"{grown >> 20} MB for 4000 files of ~40 bytes"
