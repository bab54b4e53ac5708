"""Timestamp parsing, CLI bounds and calendar keys, checked against slow references."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import ROUND_FLOOR, Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from roder_analyticsd import timewindow
from roder_analyticsd.timewindow import (
    day_key,
    month_key,
    parse_bound,
    parse_timezone,
    rfc3339_to_ms,
    week_key,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOW_MS = 1_792_460_458_940  # 2026-10-20T01:40:58.940Z
FAST = settings(max_examples=300, deadline=None, database=None)

# --- slow references ----------------------------------------------------------

_REF = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d\d):(\d\d))",
    re.ASCII,
)


def reference_ms(s: str) -> int:
    """datetime + Decimal reference: exact, floored, and slow."""
    m = _REF.fullmatch(s)
    if m is None:
        raise ValueError(s)
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    if int(off_h or 0) > 23 or int(off_m or 0) > 59:
        raise ValueError(s)
    offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
    fraction = Decimal("0." + frac) if frac else Decimal(0)
    if second == "60":  # leap second: last millisecond of the minute
        second, fraction = "59", Decimal("0.999")
    moment = datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        tzinfo=timezone(-offset if sign == "-" else offset),
    )
    whole = (moment - EPOCH) // timedelta(seconds=1)
    return int(((whole + fraction) * 1000).to_integral_value(rounding=ROUND_FLOOR))


def reference_local_date(ms: int, tz: ZoneInfo) -> date:
    # tz.fromutc via astimezone: a different code path from fromtimestamp.
    return (EPOCH + timedelta(milliseconds=ms)).astimezone(tz).date()


# --- rfc3339_to_ms ------------------------------------------------------------


@st.composite
def rfc3339_strings(draw) -> str:
    local = draw(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 12, 30)))
    frac = draw(st.one_of(st.none(), st.text("0123456789", min_size=1, max_size=9)))
    offset = draw(st.one_of(st.none(), st.integers(-(23 * 60 + 59), 23 * 60 + 59)))
    text = local.strftime("%Y-%m-%d") + draw(st.sampled_from("Tt")) + local.strftime("%H:%M:%S")
    if frac is not None:
        text += "." + frac
    if offset is None:
        text += draw(st.sampled_from("Zz"))
    else:
        sign = "-" if offset < 0 or (offset == 0 and draw(st.booleans())) else "+"
        text += f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    return text


@FAST
@given(rfc3339_strings())
@example("2026-10-20T01:40:58.940255123Z")
@example("2026-11-14T10:58:01.800+05:00")
@example("2026-11-14T10:58:01-07:00")
@example("2026-12-31T23:59:59.999999999Z")  # must not roll over to the next year
@example("1969-12-31T23:59:59.9999Z")  # negative epoch floors too
@example("2016-12-31T23:59:60.5Z")  # leap second
def test_rfc3339_matches_reference(text: str) -> None:
    assert rfc3339_to_ms(text) == reference_ms(text)


@FAST
@given(
    rfc3339_strings(),
    st.integers(0, 40),
    st.sampled_from(["delete", "replace", "insert"]),
    st.sampled_from(list("0123456789:+-.TZtz x") + ["\u0661", "\uff12", "_"]),
)
@example("2000-01-01T00:00:00Z", 16, "replace", ".")  # HH:MM.SS: not RFC 3339
def test_rfc3339_mutations_either_match_reference_or_raise_value_error(
    text: str, position: int, action: str, char: str
) -> None:
    i = position % (len(text) + 1)
    if action == "delete":
        mutated = text[:i] + text[i + 1 :]
    elif action == "replace":
        mutated = text[:i] + char + text[i + 1 :]
    else:
        mutated = text[:i] + char + text[i:]
    try:
        expected = reference_ms(mutated)
    except ValueError:
        with pytest.raises(ValueError):
            rfc3339_to_ms(mutated)
    else:
        assert rfc3339_to_ms(mutated) == expected


def _general_or_error(text: str) -> int | type[ValueError]:
    try:
        return timewindow._general_to_ms(text)
    except ValueError:
        return ValueError


def _table_route_or_error(text: str) -> int | type[ValueError]:
    try:
        return rfc3339_to_ms(text)
    except ValueError:
        return ValueError


_LAYOUT_CHARS = list("0123456789:+-.TZtz x,W") + ["\u0661", "\uff12", "_", "\u00b2"]


@st.composite
def near_layout_strings(draw) -> str:
    """Strings at and around the layout the lookup tables read: every field
    width, offsets to ±23:59 and past, and a few characters changed."""
    text = draw(rfc3339_strings())
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(_LAYOUT_CHARS))
        action = draw(st.sampled_from(["delete", "replace", "insert"]))
        if action == "delete":
            text = text[:i] + text[i + 1 :]
        elif action == "replace":
            text = text[:i] + char + text[i + 1 :]
        else:
            text = text[:i] + char + text[i:]
    return text


@settings(max_examples=3000, deadline=None, database=None)
@given(st.one_of(near_layout_strings(), st.text(max_size=40)))
@example("2026-06-13T11:25:25.106Z")
@example("2026-06-13T11:25:25.106+05:30")
@example("2026-06-13T11:25:25.106-00:00")
@example("2026-06-13T11:25:25.1069999Z")
@example("2026-06-13T11:25:25.106999999+23:59")
@example("2026-06-13T11:25:25.1069999999Z")  # ten digits
@example("2026-06-13T11:25:25.106\u0661Z")
@example("2026-06-13T11:25:25.5Z")
@example("2026-06-13T11:25:25.Z")
@example("2026-06-13T11:25:25Z")
@example("2026-06-13T11:25:60.106Z")  # leap second
@example("2026-06-13T11:25:25.106+24:00")
@example("2026-06-13T24:00:00.000Z")
@example("2026-02-29T11:25:25.106Z")
@example("2024-02-29T11:25:25.106Z")
@example("0000-01-01T00:00:00.000Z")
@example("0001-01-01T00:00:00.000Z")
@example("2026-W24-6T11:25:25.106Z")  # an ISO week date the general route reads
@example("2026-06-13T11:25:25.106")
@example("2026-06-13T11:25:25.106ZZ")
@example("2026-06-13t11:25:25.106z")
def test_table_route_matches_general_route(text: str) -> None:
    # twice: the first call may fill the caches, the second reads them
    expected = _general_or_error(text)
    assert _table_route_or_error(text) == expected
    assert _table_route_or_error(text) == expected


def test_table_route_hour_cache_stays_bounded() -> None:
    start = datetime(2026, 1, 1)
    for n in range(timewindow._HOURS_CACHED + 10):
        stamp = (start + timedelta(hours=n, minutes=n)).strftime("%Y-%m-%dT%H:%M:%S.123Z")
        assert rfc3339_to_ms(stamp) == reference_ms(stamp)
    assert 0 < len(timewindow._HOUR_MS) <= timewindow._HOURS_CACHED


def test_tables_are_filled_at_the_first_read_not_at_import() -> None:
    # a fresh interpreter: here the tables were filled by earlier tests
    script = """
import sys
from roder_analyticsd import timewindow as tw
assert not (tw._CLOCK_MS or tw._MILLIS or tw._OFFSET_MS or tw._HOUR_OF_DAY_MS), "filled at import"
for text in sys.argv[1:]:
    print(tw.rfc3339_to_ms(text))
assert len(tw._CLOCK_MS) == 3600 and len(tw._OFFSET_MS) == 2881
"""
    stamps = [
        "2026-10-20T01:40:58.123+05:30",  # the very first read: an offset, milliseconds
        "2026-10-20T01:40:58.123456789Z",
        "2026-10-20T01:40:58Z",
        "2026-10-20T23:59:59.999-09:30",
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, *stamps], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert [int(v) for v in done.stdout.split()] == [reference_ms(t) for t in stamps]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-10-20",
        "2026-10-20T01:40:58",  # no offset
        "2026-10-20T01:40:58.Z",  # empty fraction
        "2026-10-20T01:40:58.1234567890Z",  # ten fraction digits
        "2026-10-20T01:40:58.12345678901234Z",
        "2026-10-20T24:00:00Z",
        "2026-10-20T01:60:00Z",
        "2026-10-20T01:40:61Z",
        "2026-02-30T01:40:58Z",
        "2026-13-01T01:40:58Z",
        "2026-10-20T01:40:58+24:00",
        "2026-10-20T01:40:58+05:60",
        "2026-10-20T01:40:58+0500",
        "2026-10-20 01:40:58Z",
        "2026-10-20T01:40:58Z ",
        " 2026-10-20T01:40:58Z",
        "2026-10-20T+1:40:58Z",
        "2026-10-20T01:40:5\uff18Z",  # fullwidth digit
        "2026-10-20T01:40:58.1_2Z",
        "2026-10-20T01:40:58Z+05:00",
    ],
)
def test_rfc3339_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        rfc3339_to_ms(text)


def test_rfc3339_floors_instead_of_rounding() -> None:
    assert (
        rfc3339_to_ms("2026-10-20T01:40:58.9999999Z") == rfc3339_to_ms("2026-10-20T01:40:58Z") + 999
    )
    assert rfc3339_to_ms("2026-10-20T01:40:58.0009Z") == rfc3339_to_ms("2026-10-20T01:40:58Z")


# --- parse_timezone -----------------------------------------------------------


def test_parse_timezone() -> None:
    assert parse_timezone(None) == ZoneInfo("UTC")
    assert parse_timezone("") == ZoneInfo("UTC")
    assert parse_timezone("utc") == ZoneInfo("UTC")
    assert parse_timezone("Europe/Berlin") == ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "America", "../etc/passwd", "/etc/passwd", "America/"]
)
def test_parse_timezone_rejects_unknown(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone") as info:
        parse_timezone(name)
    assert "\n" not in str(info.value)


# --- parse_bound --------------------------------------------------------------

UTC_ZONE = ZoneInfo("UTC")


@pytest.mark.parametrize(
    ("text", "delta_ms"),
    [("7d", 7 * 86_400_000), ("24h", 24 * 3_600_000), ("90m", 90 * 60_000), ("0d", 0)],
)
def test_relative_bounds(text: str, delta_ms: int) -> None:
    assert parse_bound(text, UTC_ZONE, NOW_MS) == NOW_MS - delta_ms


@pytest.mark.parametrize(
    ("text", "zone", "utc_start"),
    [
        ("2026-10-20", "UTC", "2026-10-20T00:00:00Z"),
        ("2026-03-08", "America/New_York", "2026-03-08T05:00:00Z"),  # DST starts that day
        ("2026-03-09", "America/New_York", "2026-03-09T04:00:00Z"),
        ("2026-03-29", "Europe/Berlin", "2026-03-28T23:00:00Z"),
        ("2026-03-30", "Europe/Berlin", "2026-03-29T22:00:00Z"),
        ("2026-10-20", "Asia/Kolkata", "2026-10-19T18:30:00Z"),
        ("2026-03-08", "America/Havana", "2026-03-08T05:00:00Z"),  # local 00:00 does not exist
    ],
)
def test_date_bounds_start_the_day_in_the_zone(text: str, zone: str, utc_start: str) -> None:
    assert parse_bound(text, ZoneInfo(zone), NOW_MS) == rfc3339_to_ms(utc_start)


def test_rfc3339_bounds_keep_their_offset() -> None:
    tz = ZoneInfo("Asia/Tokyo")  # ignored: the timestamp names its own offset
    assert parse_bound("2026-10-20T01:40:58.9999Z", tz, NOW_MS) == rfc3339_to_ms(
        "2026-10-20T01:40:58.999Z"
    )
    assert parse_bound(" 2026-11-14T10:58:01+05:00 ", tz, NOW_MS) == rfc3339_to_ms(
        "2026-11-14T05:58:01Z"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7",
        "7w",
        "d7",
        "-7d",
        "7 d",
        "yesterday",
        "2026-02-30",
        "2026-13-01",
        "2026-10-20T10:00",
        "2026/10/20",
    ],
)
def test_bad_bounds_raise_one_line_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="invalid time bound") as info:
        parse_bound(text, UTC_ZONE, NOW_MS)
    assert "\n" not in str(info.value)


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",  # +05:30: midnight falls mid UTC hour
    "America/St_Johns",  # -03:30 with DST
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Havana",  # DST switch at midnight
    "America/Santiago",  # DST switch at midnight
    "Europe/Dublin",  # negative DST in tzdata
    "Europe/Amsterdam",  # odd historical offsets (+00:19:32)
]


@FAST  # (bounds before 1970 are clamped to the time window: see test_bounds)
@given(st.dates(date(1970, 1, 3), date(2100, 12, 30)), st.sampled_from(ZONES))
@example(date(2026, 3, 8), "America/Havana")
@example(date(2026, 3, 8), "America/New_York")
@example(date(2026, 11, 1), "America/New_York")
@example(date(2026, 3, 29), "Europe/Berlin")
@example(date(2026, 10, 25), "Europe/Berlin")
def test_date_bound_is_the_first_instant_of_the_local_day(day: date, zone: str) -> None:
    tz = ZoneInfo(zone)
    start = parse_bound(day.isoformat(), tz, NOW_MS)
    assert reference_local_date(start, tz) == day
    assert reference_local_date(start - 1, tz) == day - timedelta(days=1)
    assert day_key(start, tz) == day.isoformat()
    assert day_key(start - 1, tz) == (day - timedelta(days=1)).isoformat()


# --- calendar keys ------------------------------------------------------------


def _check_keys(ms: int, tz: ZoneInfo) -> None:
    local = reference_local_date(ms, tz)
    year, week, _ = local.isocalendar()
    assert day_key(ms, tz) == local.isoformat()
    assert week_key(ms, tz) == f"{year:04d}-W{week:02d}"
    assert month_key(ms, tz) == local.isoformat()[:7]


@FAST
@given(st.integers(-2_208_988_800_000, 4_102_444_800_000), st.sampled_from(ZONES))  # 1900..2100
def test_keys_match_reference_anywhere(ms: int, zone: str) -> None:
    _check_keys(ms, ZoneInfo(zone))


# UTC instants of DST switches (and the local midnights around them).
TRANSITIONS = [
    ("America/New_York", "2026-03-08T07:00:00Z"),
    ("America/New_York", "2026-11-01T06:00:00Z"),
    ("Europe/Berlin", "2026-03-29T01:00:00Z"),
    ("Europe/Berlin", "2026-10-25T01:00:00Z"),
    ("America/Havana", "2026-03-08T05:00:00Z"),
    ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
    ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),  # mid UTC hour
]


@FAST
@given(st.sampled_from(TRANSITIONS), st.integers(-3 * 86_400_000, 3 * 86_400_000))
def test_keys_around_dst_transitions(transition: tuple[str, str], delta_ms: int) -> None:
    zone, instant = transition
    _check_keys(rfc3339_to_ms(instant) + delta_ms, ZoneInfo(zone))


@pytest.mark.parametrize(
    ("instant", "zone", "expected_day"),
    [
        ("2026-03-08T04:59:59.999Z", "America/New_York", "2026-03-07"),
        ("2026-03-08T05:00:00Z", "America/New_York", "2026-03-08"),
        ("2026-11-02T04:59:59.999Z", "America/New_York", "2026-11-01"),  # EST again
        ("2026-11-02T05:00:00Z", "America/New_York", "2026-11-02"),
        ("2026-03-29T21:59:59.999Z", "Europe/Berlin", "2026-03-29"),  # CEST from 01:00Z
        ("2026-03-29T22:00:00Z", "Europe/Berlin", "2026-03-30"),
        ("2026-10-25T22:59:59.999Z", "Europe/Berlin", "2026-10-25"),  # CET again
        ("2026-10-25T23:00:00Z", "Europe/Berlin", "2026-10-26"),
        ("2026-10-19T18:29:59.999Z", "Asia/Kolkata", "2026-10-19"),
        ("2026-10-19T18:30:00Z", "Asia/Kolkata", "2026-10-20"),
    ],
)
def test_day_key_at_local_midnight(instant: str, zone: str, expected_day: str) -> None:
    assert day_key(rfc3339_to_ms(instant), ZoneInfo(zone)) == expected_day


def test_week_and_month_keys() -> None:
    tz = ZoneInfo("UTC")
    assert week_key(rfc3339_to_ms("2027-01-01T12:00:00Z"), tz) == "2026-W53"
    assert week_key(rfc3339_to_ms("2026-12-28T00:00:00Z"), tz) == "2026-W53"
    assert week_key(rfc3339_to_ms("2025-12-29T00:00:00Z"), tz) == "2026-W01"
    assert month_key(rfc3339_to_ms("2026-10-31T23:59:59.999Z"), tz) == "2026-10"
    # Local time decides: 23:30 New York on Oct 31 is already November in UTC.
    ny = ZoneInfo("America/New_York")
    assert month_key(rfc3339_to_ms("2026-11-01T03:30:00Z"), ny) == "2026-10"


def test_keys_accept_fixed_offset_tzinfo() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert day_key(rfc3339_to_ms("2026-10-20T22:30:00Z"), plus_two) == "2026-10-21"


class _MidHourJump(tzinfo):
    """UTC until 23:30Z on 2026-10-20, then +01:00: local midnight is skipped mid UTC hour."""

    SWITCH = datetime(2026, 10, 20, 23, 30)

    def utcoffset(self, dt: datetime | None) -> timedelta:
        local = dt.replace(tzinfo=None) if dt is not None else None
        after = local is not None and local >= self.SWITCH + timedelta(hours=1)
        return timedelta(hours=1) if after else timedelta(0)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def fromutc(self, dt: datetime) -> datetime:
        if dt.replace(tzinfo=None) >= self.SWITCH:
            return dt + timedelta(hours=1)
        return dt


def test_offset_change_inside_a_utc_hour_is_resolved_exactly() -> None:
    tz = _MidHourJump()
    switch = rfc3339_to_ms("2026-10-20T23:30:00Z")
    assert timewindow._hour_offset_ms(tz, switch // 3_600_000) is None
    assert day_key(switch - 1_800_000, tz) == "2026-10-20"
    assert day_key(switch - 1, tz) == "2026-10-20"
    assert day_key(switch, tz) == "2026-10-21"
    assert day_key(switch + 1_799_999, tz) == "2026-10-21"


def test_utc_by_name_skips_the_offset_scan_and_nothing_else_does() -> None:
    """UTC's names (and fixed offsets) are one offset forever; a zone at +0
    today (London, Abidjan) is scanned: it had other offsets."""
    from roder_analyticsd.timewindow import is_utc, offset_changes

    for name in ("UTC", "Etc/UTC", "Etc/GMT", "Zulu", "Etc/Greenwich"):
        assert is_utc(ZoneInfo(name)), name
    assert not is_utc(ZoneInfo("Europe/London")) and not is_utc(ZoneInfo("Africa/Abidjan"))
    assert offset_changes(ZoneInfo("UTC"), 0, 10**13) == [(0, 0)]
    fixed = timezone(timedelta(hours=5, minutes=30))
    assert offset_changes(fixed, 0, 10**13) == [(0, 19_800_000)]
    assert len(offset_changes(ZoneInfo("Europe/London"), 0, 10**12)) > 1
