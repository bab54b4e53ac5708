"""analytics.v2 redaction (property-based) and batch validation."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roder_analyticsd.fleet.model import AnalyticsEvent, NotABatchError, validate_batch
from roder_analyticsd.fleet.redact import (
    ERROR_KEYS,
    clean_base_url,
    is_absolute_path,
    is_path_like_key,
    redact_event,
    redact_properties,
)

# Written out independently of redact.py: what must never survive.
KNOWN_PATH_KEYS = [
    "path",
    "cwd",
    "root",
    "dir",
    "file",
    "filePath",
    "workspace",
    "projectPath",
    "directory",
    "folder",
    "filename",
    "fileName",
    "workspaceRoot",
    "file_path",
    "PATH",
    "Cwd",
    "workingDirectory",
    "rootDir",
    "workdir",
    "tmpdir",
    "sourceFiles",
    "outputFolder",
    "homeDir",
    "path2",
    # mixed case and all-lowercase compounds (issue 14, item 14)
    "fIlE",
    "FILE",
    "HoMe",
    "logfile",
    "srcfile",
    "LogFile",
    "outputfiles",
    "configFILE",
]
KEPT_KEYS = [
    "runtimeProfile",
    "profile",
    "PROFILE",
    "userprofile",
    "rootCause",
    "fileCount",
    "filesChanged",
    "toolName",
]
ABSOLUTE_PATHS = [
    "/home/alice/project",
    "/",
    "~/notes.txt",
    "~",
    "~alice/src",
    "C:\\Users\\alice",
    "c:/work",
    "\\\\server\\share\\x",
    "\\Windows",
    "file:///etc/passwd",
    "  /leading/space",
]
NOT_PATHS = ["src/main.py", "http://x/y", "a/b", "~5 minutes", "C:", "", "tool_call"]
# Also independent of redact.py: a subset of what the spec calls absolute.
_ABS = re.compile(r"\s*(/|\\|~/|[A-Za-z]:[\\/]|file:)", re.IGNORECASE)


def walk(value: Any) -> list[tuple[str | None, Any]]:
    """Every (key, value) pair and list element at any depth."""
    out: list[tuple[str | None, Any]] = []
    stack: list[tuple[str | None, Any]] = [(None, value)]
    while stack:
        key, node = stack.pop()
        out.append((key, node))
        if isinstance(node, dict):
            stack.extend(node.items())
        elif isinstance(node, list):
            stack.extend((None, v) for v in node)
    return out


def assert_clean(props: dict[str, Any]) -> None:
    known = {k.lower() for k in KNOWN_PATH_KEYS}
    for key, value in walk(props):
        if key is not None and key.lower() == "providerbaseurl":
            assert isinstance(value, str), value
            parts = urlsplit(value)
            assert parts.username is None and parts.password is None, value
            assert "@" not in parts.netloc and parts.query == "" and parts.fragment == "", value
        if key is not None:
            assert not is_path_like_key(key), key
            assert key.lower() not in known, key
            assert not is_absolute_path(key) and not _ABS.match(key), key
        if isinstance(value, str):
            assert not is_absolute_path(value) and not _ABS.match(value), value


# --- strategies -----------------------------------------------------------

keys = st.one_of(
    st.sampled_from(KNOWN_PATH_KEYS + KEPT_KEYS + sorted(ERROR_KEYS) + ["message", "stack"]),
    st.sampled_from(["projectCommitHash", "projectPath", "/abs/key", "~/k", "providerBaseUrl"]),
    st.text(max_size=12),
    # any casing of a path-like key, and compounds ending in `file`
    st.builds(
        lambda k, flips: "".join(c.swapcase() if f else c for c, f in zip(k, flips, strict=False)),
        st.sampled_from(KNOWN_PATH_KEYS),
        st.lists(st.booleans(), min_size=12, max_size=12),
    ),
    st.builds(lambda w: w + "file", st.sampled_from(["log", "src", "out", "lock", "key", "cfg"])),
)
strings = st.one_of(
    st.sampled_from(ABSOLUTE_PATHS + NOT_PATHS),
    st.sampled_from(["https://user:pw@api.example.com/v1?k=s", "http://u@h/"]),
    st.text(max_size=20),
    st.builds(
        lambda a, b: a + b, st.sampled_from(["/", "~/", "C:\\", "\\\\", " /"]), st.text(max_size=8)
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    strings,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=10,
)
urls = st.one_of(
    st.sampled_from(
        [
            "https://user:pw@api.example.com:8443/v1?key=s#frag",
            "http://[::1]:8080/x?y",
            "ftp://example.com/",
            "HTTPS://Example.COM",
            "https://:pw@h/",
            "not a url",
            "/local/path",
        ]
    ),
    st.builds(
        lambda s, u, h, p, q, f: f"{s}://{u}{h}{p}{q}{f}",
        st.sampled_from(["http", "https", "HTTP", "ws", "file"]),
        st.sampled_from(["", "u@", "u:p@", "@"]),
        st.text(min_size=0, max_size=8),
        st.text(max_size=8),
        st.sampled_from(["", "?q=1", "?"]),
        st.sampled_from(["", "#f", "#"]),
    ),
    st.text(max_size=30),
    st.integers(),
)
properties = st.dictionaries(keys, json_values, max_size=8)
session_ids = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.text(alphabet="0123456789abcdef", min_size=24, max_size=24),
    st.text(alphabet="0123456789ABCDEF", min_size=24, max_size=24),
)


@st.composite
def events(draw: st.DrawFn) -> AnalyticsEvent:
    props = draw(properties)
    props["module"] = draw(st.sampled_from(["session", "router", "/abs/module"]))
    props["loopStage"] = "tool_call"
    if draw(st.booleans()):
        props["providerBaseUrl"] = draw(urls)
    return AnalyticsEvent(
        schema_version="analytics.v2",
        event_id=draw(st.sampled_from(["e1", "/srv/e1"])),
        event_name=draw(st.sampled_from(["feature_used", "error_occurred"])),
        occurred_at="2025-03-01T12:00:00Z",
        installation_id=draw(st.sampled_from(["inst", "~/inst"])),
        instance_id="proc",
        deployment_mode="source",
        commit_hash="abc",
        app_version="1.0",
        platform=draw(st.sampled_from(["linux", "C:\\Windows"])),
        properties=props,
        session_id=draw(session_ids),
    )


def assert_clean_event(ev: AnalyticsEvent) -> None:
    assert_clean(ev.properties)
    for text in (ev.event_id, ev.installation_id, ev.instance_id, ev.platform):
        assert not is_absolute_path(text)
    if ev.session_id is not None:
        assert re.fullmatch(r"[0-9a-f]{24}", ev.session_id)
    if ev.event_name == "error_occurred":
        assert set(ev.properties) <= ERROR_KEYS
    if "providerBaseUrl" in ev.properties:
        parts = urlsplit(ev.properties["providerBaseUrl"])
        assert parts.scheme in ("http", "https") and parts.hostname
        assert parts.username is None and parts.password is None
        assert parts.query == "" and parts.fragment == ""
        assert "?" not in ev.properties["providerBaseUrl"]
        assert "#" not in ev.properties["providerBaseUrl"]


# --- properties -----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(events())
def test_redact_event_is_clean_and_idempotent(ev: AnalyticsEvent) -> None:
    once = redact_event(ev)
    assert_clean_event(once)
    assert redact_event(once) == once


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["feature_used", "error_occurred"]), properties)
def test_redact_properties_is_clean_and_idempotent(name: str, props: dict[str, Any]) -> None:
    once = redact_properties(name, props)
    assert_clean(once)
    assert redact_properties(name, once) == once
    assert "projectCommitHash" not in once
    if name == "error_occurred":
        assert set(once) <= ERROR_KEYS
        assert "message" not in once and "stack" not in once


@given(urls)
def test_clean_base_url(value: Any) -> None:
    cleaned = clean_base_url(value)
    if cleaned is None:
        return
    parts = urlsplit(cleaned)
    assert parts.scheme in ("http", "https")
    assert parts.username is None and parts.password is None
    assert parts.query == "" and parts.fragment == ""
    assert clean_base_url(cleaned) == cleaned


# --- examples -------------------------------------------------------------


@pytest.mark.parametrize("key", KNOWN_PATH_KEYS)
def test_path_like_keys(key: str) -> None:
    assert is_path_like_key(key)


@pytest.mark.parametrize("key", KEPT_KEYS + sorted(ERROR_KEYS))
def test_ordinary_keys_survive(key: str) -> None:
    assert not is_path_like_key(key)


@pytest.mark.parametrize("text", ABSOLUTE_PATHS)
def test_absolute_paths(text: str) -> None:
    assert is_absolute_path(text)


@pytest.mark.parametrize("text", NOT_PATHS)
def test_not_absolute_paths(text: str) -> None:
    assert not is_absolute_path(text)


def test_redact_properties_example() -> None:
    props = {
        "module": "session",
        "loopStage": "tool_call",
        "toolName": "shell",
        "projectCommitHash": "deadbeef",
        "nested": {"cwd": "relative/ok", "items": ["/abs", "keep", {"filePath": "x", "n": 1}]},
        "providerBaseUrl": "https://key:secret@api.example.com/v1?token=t#x",
    }
    assert redact_properties("feature_used", props) == {
        "module": "session",
        "loopStage": "tool_call",
        "toolName": "shell",
        "nested": {"items": ["keep", {"n": 1}]},
        "providerBaseUrl": "https://api.example.com/v1",
    }
    error = dict(props, message="boom at /x", stack="Traceback", code="E42", extra={"a": 1})
    assert redact_properties("error_occurred", error) == {
        "module": "session",
        "loopStage": "tool_call",
        "code": "E42",
        "providerBaseUrl": "https://api.example.com/v1",
    }
    assert "providerBaseUrl" not in redact_properties(
        "feature_used", {"providerBaseUrl": "ftp://h/"}
    )


def test_session_id() -> None:
    base = dict(
        schema_version="analytics.v2",
        event_id="e",
        event_name="feature_used",
        occurred_at="2025-03-01T00:00:00Z",
        installation_id="i",
        instance_id="p",
        deployment_mode="source",
        commit_hash="c",
        app_version="v",
        platform="linux",
        properties={"module": "session", "loopStage": "loop_start"},
    )
    ok = "0123456789abcdef01234567"
    assert redact_event(AnalyticsEvent(**base, session_id=ok)).session_id == ok
    raw = "thread-7f3a"
    expected = hashlib.sha256(raw.encode()).hexdigest()[:24]
    assert redact_event(AnalyticsEvent(**base, session_id=raw)).session_id == expected
    assert redact_event(AnalyticsEvent(**base, session_id=ok.upper())).session_id != ok.upper()
    assert redact_event(AnalyticsEvent(**base)).session_id is None


# --- validation -----------------------------------------------------------


def wire(i: int, **over: Any) -> dict[str, Any]:
    ev = {
        "schemaVersion": "analytics.v2",
        "eventId": f"ev-{i}",
        "eventName": "feature_used",
        "occurredAt": "2025-03-01T12:00:00+02:00",
        "installationId": "inst",
        "instanceId": "proc",
        "deploymentMode": "npm_binary",
        "commitHash": "abc",
        "appVersion": "1.0",
        "platform": "darwin",
        "properties": {"module": "session", "loopStage": "loop_start"},
    }
    ev.update(over)
    return ev


def test_validate_batch_per_element() -> None:
    batch = [
        wire(0),
        wire(1, eventName="app_started"),
        wire(2, eventName="session_active"),
        wire(3, occurredAt="2025-03-01 noon"),
        wire(4, occurredAt="2025-03-01T12:00:00"),  # no offset: not RFC 3339
        wire(5, deploymentMode="kubernetes"),
        "not an object",
        wire(7, properties={"module": "session"}),
        wire(8, properties={"module": "session", "loopStage": "loop_start", "outcome": "meh"}),
        {k: v for k, v in wire(9).items() if k != "installationId"},
        wire(10, sessionId="0123456789abcdef01234567", projectPath="/x", projectCommitHash="c"),
        wire(11, properties={"module": "m", "loopStage": "loop_end", "deep": [[[[1]]]]}),
    ]
    accepted, rejected = validate_batch(json.dumps(batch).encode())
    assert [ev.event_id for ev in accepted] == ["ev-0", "ev-10", "ev-11"]
    by_index = {r.index: r for r in rejected}
    assert sorted(by_index) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert "removed" in by_index[1].reason and "app_started" in by_index[1].reason
    assert "removed" in by_index[2].reason
    assert "RFC 3339" in by_index[3].reason and "RFC 3339" in by_index[4].reason
    assert by_index[1].event_id == "ev-1" and by_index[6].event_id is None
    assert "loopStage" in by_index[7].reason
    assert "installationId" in by_index[9].reason


def test_deep_properties_rejected() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"d": deep}
    body = json.dumps([wire(0, properties={"module": "m", "loopStage": "loop_end", "x": deep})])
    accepted, rejected = validate_batch(body.encode())
    assert not accepted and "deeper" in rejected[0].reason


@pytest.mark.parametrize(
    "body", [b"", b"{}", b'{"a": 1}', b"[1", b"nope", b"\xff\xfe", b"[" * 100_000, b"null"]
)
def test_not_a_batch(body: bytes) -> None:
    with pytest.raises(NotABatchError):
        validate_batch(body)


def test_empty_batch() -> None:
    assert validate_batch(b"[]") == ([], [])


def test_nested_provider_base_url_loses_userinfo() -> None:
    props = {
        "module": "router",
        "loopStage": "model_request",
        "request": {"providerBaseUrl": "https://alice:hunter2@llm.example.com/v1?key=k"},
        "routes": [{"providerBaseUrl": "ftp://bob:pw@x/"}, {"providerbaseurl": "http://c:d@h/"}],
    }
    out = redact_properties("feature_used", props)
    assert out["request"] == {"providerBaseUrl": "https://llm.example.com/v1"}
    assert out["routes"] == [{}, {"providerbaseurl": "http://h/"}]
    assert "hunter2" not in json.dumps(out) and "alice" not in json.dumps(out)


@pytest.mark.parametrize("key", ["fIlE", "logfile", "srcfile", "LOGFILE", "Src_File"])
def test_mixed_case_and_compound_file_keys_removed(key: str) -> None:
    out = redact_properties("feature_used", {"module": "m", "loopStage": "tool_call", key: "x.log"})
    assert key not in out


@given(st.text(max_size=16))
def test_any_casing_of_a_location_word_is_path_like(key: str) -> None:
    # whatever the casing, a key that spells a location word is removed
    for word in ("file", "path", "dir", "home", "cwd", "workspace"):
        cased = "".join(c.upper() if i % 2 else c for i, c in enumerate(word))
        assert is_path_like_key(cased) and is_path_like_key(f"{key}_{cased.upper()}")
