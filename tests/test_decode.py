"""The decoder: typed, body-free, and never crashes on bad bytes."""

from __future__ import annotations

import contextlib
import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roder_analyticsd.pipeline.batch import Batch
from roder_analyticsd.sources import roder as ev
from roder_analyticsd.sources.roder import decode, decode_line

CANARY = "CANARYDECODE1234"


def line(variant: str, kind: str, payload: dict, **envelope) -> bytes:
    doc = {
        "event_id": "evt-1",
        "seq": 1,
        "timestamp": "2026-10-20T01:40:58.940255123Z",
        "source": "Core",
        "kind": kind,
        "thread_id": "thr-1",
        "turn_id": "turn-1",
        "event": {variant: payload},
    }
    doc.update(envelope)
    return json.dumps(doc).encode()


def test_bodies_are_never_decoded():
    raw = line(
        "ToolCallCompleted",
        "tool.call_completed",
        {
            "thread_id": "thr-1",
            "turn_id": "turn-1",
            "tool_id": "t1",
            "tool_name": "shell",
            "display_payload": {"cmd": CANARY},
            "output": CANARY,
            "is_error": True,
            "timestamp": "2026-10-20T01:40:59.000999999+02:00",
        },
    )
    event = decode_line(raw)
    assert isinstance(event.payload, ev.ToolCallCompleted)
    assert event.payload.is_error is True
    assert CANARY not in repr(event) and CANARY not in repr(msgspec.structs.asdict(event.payload))
    # the payload's time is projected (not the envelope's), offset applied, floored
    assert event.at_ms == 1792453259000  # 2026-10-19T23:40:59Z


def test_unknown_variant_is_accepted_and_counted_by_kind():
    raw = line(
        "SomethingNew", "something.new", {"text": CANARY, "timestamp": "2026-10-20T00:00:00Z"}
    )
    batch = decode(Batch(path="p", lines=[raw, b"", b"   ", raw]))
    assert batch.errors == []
    assert batch.unknown_kinds == {"something.new": 2}
    assert batch.lines_ingested == 2
    assert batch.lines == []  # raw bytes are dropped after decoding


def test_corrupt_lines_are_reported_with_their_line_numbers():
    good = line(
        "TurnStarted",
        "turn.started",
        {"thread_id": "thr-1", "turn_id": "turn-1", "timestamp": "2026-10-20T00:00:00Z"},
    )
    batch = decode(
        Batch(
            path="threads/x/events.jsonl",
            first_line_no=41,
            lines=[good, b"{}", b'{"event_id": "broken"', b"\xff\xfe\x00garbage", good],
        )
    )
    assert [(e.path, e.line) for e in batch.errors] == [
        ("threads/x/events.jsonl", 42),
        ("threads/x/events.jsonl", 43),
        ("threads/x/events.jsonl", 44),
    ]
    assert batch.lines_ingested == 2


def test_bad_timestamp_is_a_parse_error_not_a_crash():
    raw = line(
        "TurnStarted",
        "turn.started",
        {"thread_id": "thr-1", "turn_id": "turn-1", "timestamp": "yesterday"},
    )
    with pytest.raises(ValueError):
        decode_line(raw)


def test_memory_events_take_the_payload_timestamp_and_no_body():
    raw = line(
        "MemorySaved",
        "memory.saved",
        {"memory": {"text": CANARY}, "timestamp": "2026-10-20T00:00:01.5Z"},
        thread_id=None,
        turn_id=None,
    )
    event = decode_line(raw)
    assert event.payload is None and event.at_ms == 1792454401500
    assert CANARY not in repr(event)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_either_decode_or_raise_value_error(data):
    with contextlib.suppress(ValueError):
        decode_line(data)


@given(
    st.dictionaries(
        st.sampled_from(["event_id", "kind", "timestamp", "event", "thread_id", "seq"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=20),
            st.dictionaries(st.text(max_size=12), st.integers(), max_size=2),
        ),
    )
)
def test_arbitrary_json_objects_never_crash_the_decoder(doc):
    batch = decode(Batch(path="p", lines=[json.dumps(doc).encode()]))
    assert batch.lines_ingested + len(batch.errors) == 1


def test_property_tests_are_immune_to_machine_speed():
    """A loaded machine must not fail a property test: the suite's profile
    sets no deadline and suppresses the "too slow" health check."""
    from hypothesis import HealthCheck, settings

    assert settings().deadline is None
    assert HealthCheck.too_slow in settings().suppress_health_check
