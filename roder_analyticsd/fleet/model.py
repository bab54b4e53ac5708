"""The analytics.v2 event and batch validation.

Validation is per element: one bad event in a batch is rejected with a
reason, the others are still accepted (see `validate_batch`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from roder_analyticsd.bounds import MAX_TIME_MS, MIN_TIME_MS, TIME_WINDOW
from roder_analyticsd.fleet import vocabulary

SCHEMA_VERSION = "analytics.v2"

EventName = Literal["feature_used", "error_occurred"]
DeploymentMode = Literal[
    "source", "docker", "curl_installer", "desktop_installer", "npm_binary", "unknown"
]
EVENT_NAMES = frozenset(vocabulary.EVENT_NAMES)
DEPLOYMENT_MODES = frozenset(vocabulary.DEPLOYMENT_MODES)
REMOVED_EVENT_NAMES = frozenset(vocabulary.REMOVED_EVENT_NAMES)
# Closed value sets of the properties table; `module`, `ownerModule` and
# `phase` are open (error_occurred may use runtime/ui contexts).
EXECUTION_KINDS = frozenset(vocabulary.EXECUTION_KINDS)
LOOP_STAGES = frozenset(vocabulary.LOOP_STAGES)
OUTCOMES = frozenset(vocabulary.OUTCOMES)
ERROR_CATEGORIES = frozenset(vocabulary.ERROR_CATEGORIES)

# Deeper properties are rejected: keeps recursive redaction within limits.
MAX_PROPERTIES_DEPTH = 32

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Rfc3339 = Annotated[datetime, msgspec.Meta(tz=True)]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AnalyticsEvent(msgspec.Struct, rename="camel", kw_only=True, frozen=True, omit_defaults=True):
    """One analytics.v2 event. Unknown top-level fields (e.g. the removed
    `projectCommitHash`, `projectPath`) are ignored on decode, so they are
    dropped. `sessionId` is omitted from the wire when None.

    Field types are checked on decode; the rest of the contract (RFC 3339
    `occurredAt`, the properties table) by `check_event`, which
    `decode_event` calls. It is not a `__post_init__` so that redaction may
    remove a property without making the event unconstructible."""

    schema_version: Literal["analytics.v2"]
    event_id: Id
    event_name: EventName
    occurred_at: str
    installation_id: Id
    instance_id: Id
    deployment_mode: DeploymentMode
    commit_hash: str
    app_version: str
    platform: str
    properties: dict[str, Any]
    session_id: str | None = None


class Rejection(NamedTuple):
    index: int
    event_id: str | None
    reason: str


class NotABatchError(ValueError):
    """The body as a whole is not a JSON array (refused with 400)."""


def parse_occurred_at(text: str) -> datetime:
    """An RFC 3339 timestamp with a time offset (as RFC 3339 requires)."""
    try:
        return msgspec.convert(text, _Rfc3339)
    except msgspec.ValidationError:
        raise ValueError(f"occurredAt {text[:64]!r} is not an RFC 3339 timestamp") from None


def occurred_at_ms(ev: AnalyticsEvent) -> int:
    return (parse_occurred_at(ev.occurred_at) - _EPOCH) // timedelta(milliseconds=1)


def utc_day(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%d")


def _check_enum(props: dict[str, Any], key: str, allowed: frozenset[str]) -> None:
    value = props.get(key)
    if value is not None and value not in allowed:
        raise ValueError(f"properties.{key} {str(value)[:64]!r} is not one of {sorted(allowed)}")


def _check_str(props: dict[str, Any], key: str, *, required: bool = False) -> None:
    value = props.get(key)
    if value is None:
        if required:
            raise ValueError(f"properties.{key} is required")
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"properties.{key} must be a non-empty string")


def _depth(value: Any) -> int:
    # Iterative: a recursive walk could itself hit the recursion limit.
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


def check_properties(props: dict[str, Any]) -> None:
    """Raise ValueError when `properties` breaks the analytics.v2 table."""
    _check_str(props, "module", required=True)
    _check_str(props, "loopStage", required=True)
    _check_enum(props, "loopStage", LOOP_STAGES)
    for key in ("ownerModule", "phase", "provider", "model"):
        _check_str(props, key)
    _check_enum(props, "executionKind", EXECUTION_KINDS)
    _check_enum(props, "outcome", OUTCOMES)
    _check_enum(props, "errorCategory", ERROR_CATEGORIES)
    if _depth(props) > MAX_PROPERTIES_DEPTH:
        raise ValueError(f"properties nest deeper than {MAX_PROPERTIES_DEPTH} levels")


def check_event(ev: AnalyticsEvent) -> None:
    """Raise ValueError when a decoded event breaks the contract beyond types."""
    at = occurred_at_ms(ev)
    if not MIN_TIME_MS <= at < MAX_TIME_MS:  # no real event: its UTC day has no name
        raise ValueError(f"occurredAt {ev.occurred_at[:64]!r} is outside {TIME_WINDOW}")
    check_properties(ev.properties)


class _Probe(msgspec.Struct, rename="camel"):
    """Just enough of an element to name it in a rejection."""

    event_id: Any = None
    event_name: Any = None


_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_EVENT = msgspec.json.Decoder(AnalyticsEvent)
_PROBE = msgspec.json.Decoder(_Probe)


def _probe(raw: msgspec.Raw) -> _Probe:
    try:
        return _PROBE.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _Probe()


def decode_event(raw: bytes | msgspec.Raw) -> AnalyticsEvent:
    """Decode one event; raises ValueError with a readable reason."""
    try:
        ev = _EVENT.decode(raw)
    except msgspec.ValidationError as exc:
        probe = _probe(raw)
        if isinstance(probe.event_name, str) and probe.event_name in REMOVED_EVENT_NAMES:
            raise ValueError(
                f"eventName {probe.event_name!r} was removed in analytics.v2"
                " (use feature_used or error_occurred)"
            ) from None
        raise ValueError(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("event nests too deeply") from None
    check_event(ev)
    return ev


def validate_batch(body: bytes) -> tuple[list[AnalyticsEvent], list[Rejection]]:
    """Accepted events and per-index rejections; NotABatchError when the
    body is not a JSON array."""
    try:
        raws = _RAW_LIST.decode(body)
    except msgspec.ValidationError:
        raise NotABatchError("body must be a JSON array of analytics.v2 events") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise NotABatchError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise NotABatchError("body nests too deeply") from None
    accepted: list[AnalyticsEvent] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(raws):
        try:
            accepted.append(decode_event(raw))
        except ValueError as exc:
            event_id = _probe(raw).event_id
            rejected.append(
                Rejection(index, event_id if isinstance(event_id, str) else None, str(exc))
            )
    return accepted, rejected


def encode_event(ev: AnalyticsEvent) -> bytes:
    return msgspec.json.encode(ev)
