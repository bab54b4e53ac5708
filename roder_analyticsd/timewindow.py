"""Time parsing and calendar bucketing.

`rfc3339_to_ms` runs once per event (millions of times), and the `*_key`
functions once per row, so both avoid `datetime` on the hot path: plain string
slicing and integer arithmetic, with caches keyed by calendar day or UTC hour.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from roder_analyticsd.bounds import clamp_time_ms

__all__ = [
    "day_key",
    "month_key",
    "parse_bound",
    "parse_timezone",
    "rfc3339_to_ms",
    "week_key",
]

_MS_PER_MINUTE = 60_000
_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_RELATIVE_UNITS = {"d": _MS_PER_DAY, "h": _MS_PER_HOUR, "m": _MS_PER_MINUTE}
_RELATIVE = re.compile(r"(\d{1,9})([dhm])", re.ASCII)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_BOUND_FORMS = "expected 7d, 24h, 90m, YYYY-MM-DD or an RFC 3339 timestamp"


# --- RFC 3339 -------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_fromisoformat = datetime.fromisoformat


# The layout agents write, `YYYY-MM-DDTHH:MM:SS.fff[f{0,6}](Z|±HH:MM)`, is
# read by lookups of its fields in small tables: the hour (cached as met),
# the minute and second, the millisecond, the offset; digits past the
# millisecond only need to be digits. Another layout (no fraction, a short
# one) is read from the same tables by `_other_to_ms`, and anything those
# tables do not hold (a leap second, lower case, ...) by `_general_to_ms`;
# every route gives the same value for a string it reads
# (tests/test_timewindow.py compares them).
_HOUR_MS: dict[str, int] = {}
_HOURS_CACHED = 8192
# The tables are filled at the first timestamp read, not at import: a
# `stats` command reads none, and building them was the largest single
# cost of its start-up (~7 ms). The first read always misses the empty
# hour cache, so `_other_to_ms` fills them and the hot path never checks.
_HOUR_OF_DAY_MS: dict[str, int] = {}
_CLOCK_MS: dict[str, int] = {}  # :60 (a leap second) is the general route's
_MILLIS: dict[str, int] = {}
_OFFSET_MS: dict[str, int] = {}  # what to add to a local time to make it UTC


def _fill_tables() -> None:
    _HOUR_OF_DAY_MS.update({f"T{h:02d}": h * _MS_PER_HOUR for h in range(24)})
    _CLOCK_MS.update(
        {
            f":{m:02d}:{sec:02d}": m * _MS_PER_MINUTE + sec * 1000
            for m in range(60)
            for sec in range(60)
        }
    )
    _MILLIS.update({f".{ms:03d}": ms for ms in range(1000)})
    _OFFSET_MS["Z"] = 0
    _OFFSET_MS.update(
        {
            f"{sign}{h:02d}:{m:02d}": (-1 if sign == "+" else 1)
            * (h * _MS_PER_HOUR + m * _MS_PER_MINUTE)
            for sign in "+-"
            for h in range(24)
            for m in range(60)
        }
    )


def rfc3339_to_ms(s: str) -> int:
    """Epoch milliseconds of an RFC 3339 timestamp, floored (never rounded).

    Raises ValueError for anything `_general_to_ms` refuses.
    """
    hour = _HOUR_MS.get(s[:13])
    clock = _CLOCK_MS.get(s[13:19])
    if s[-1:] == "Z":
        offset = 0
        frac = s[19:-1]
    else:
        offset = _OFFSET_MS.get(s[-6:])
        frac = s[19:-6]
    ms = _MILLIS.get(frac[:4])
    if (
        hour is not None
        and clock is not None
        and offset is not None
        and ms is not None
        and (len(frac) == 4 or (len(frac) <= 10 and frac[4:].isdigit() and frac[4:].isascii()))
    ):
        return hour + clock + ms + offset
    return _other_to_ms(s)


def _other_to_ms(s: str) -> int:
    """`rfc3339_to_ms` past its hour cache and millisecond table: fills the
    cache, reads a time with no fraction or a short one."""
    if not _CLOCK_MS:
        _fill_tables()
    hour = _hour_ms(s[:13])
    clock = _CLOCK_MS.get(s[13:19])
    tz_at = len(s) - 1 if s[-1:] == "Z" else len(s) - 6
    offset = _OFFSET_MS.get(s[tz_at:])
    frac = s[19:tz_at]
    if hour is None or clock is None or offset is None or tz_at < 19:
        return _general_to_ms(s)
    if not frac:
        ms = 0
    elif len(frac) < 4:
        ms = _MILLIS.get((frac + "00")[:4])
    elif len(frac) == 4 or (len(frac) <= 10 and frac[4:].isdigit() and frac[4:].isascii()):
        ms = _MILLIS.get(frac[:4])
    else:
        ms = None
    if ms is None:
        return _general_to_ms(s)
    return hour + clock + ms + offset


def _hour_ms(text: str) -> int | None:
    """Epoch ms of a strict `YYYY-MM-DDTHH`, cached; None for any other text."""
    ms = _HOUR_MS.get(text)
    if ms is not None:
        return ms
    hour = _HOUR_OF_DAY_MS.get(text[10:])
    if hour is None:
        return None
    try:
        ms = _epoch_days(text[:10]) * _MS_PER_DAY + hour
    except ValueError:
        return None
    if len(_HOUR_MS) >= _HOURS_CACHED:
        _HOUR_MS.clear()
    _HOUR_MS[text] = ms
    return ms


def _general_to_ms(s: str) -> int:
    """`rfc3339_to_ms` of any string, by the general route.

    CPython's C `fromisoformat` keeps six fraction digits and
    drops the rest (truncation, so flooring to ms stays exact) and the
    timedelta arithmetic is integer. It accepts a few ISO 8601 forms that
    are not RFC 3339; anything it refuses, or a time without an offset,
    goes to the strict parser, which raises the clear error.
    """
    n = len(s)
    zulu = s[-1:] == "Z"
    if (
        20 <= n <= (30 if zulu else 35)  # at most nine fraction digits
        and s[10] == "T"
        and s[13] == ":"  # fromisoformat also takes HH:MM.ff or HHMMSS
        and s[16] == ":"
        and s.isascii()
        and (zulu or (s[-3] == ":" and s[-2:] < "60"))
        and s[19] in ".Z+-"
        and (s[19] != "." or s[20 : n - 1 if zulu else n - 6].isdigit())
    ):
        try:
            return (_fromisoformat(s) - _EPOCH) // _ONE_MS
        except (ValueError, TypeError):
            pass
    return _rfc3339_to_ms(s)


def _rfc3339_to_ms(s: str) -> int:
    """Epoch milliseconds of an RFC 3339 timestamp, floored (never rounded).

    Accepts `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+HH:MM|-HH:MM)`, `t`/`z` in lower case
    too. A leap second (`:60`) is read as the last millisecond of its minute.
    Raises ValueError on anything else.
    """
    n = len(s)
    # 20 = shortest form ("...:SSZ"); 35 = nine fraction digits plus "+HH:MM".
    if n < 20 or n > 35 or not s.isascii() or s[10] not in "Tt" or s[13] != ":" or s[16] != ":":
        raise ValueError(f"not an RFC 3339 timestamp: {s!r}")

    last = s[-1]
    if last == "Z" or last == "z":
        offset_s = 0
        end = n - 1
    else:
        end = n - 6
        sign = s[end]
        hh_mm = s[end + 1 : n]
        if (
            sign not in "+-"
            or hh_mm[2] != ":"
            or not hh_mm[:2].isdigit()
            or not hh_mm[3:].isdigit()
        ):
            raise ValueError(f"not an RFC 3339 timestamp: {s!r}")
        off_h = int(hh_mm[:2])
        off_m = int(hh_mm[3:])
        if off_h > 23 or off_m > 59:
            raise ValueError(f"bad UTC offset in timestamp: {s!r}")
        offset_s = off_h * 3600 + off_m * 60
        if sign == "-":
            offset_s = -offset_s

    hour = s[11:13]
    minute = s[14:16]
    second = s[17:19]
    if not (hour.isdigit() and minute.isdigit() and second.isdigit()):
        raise ValueError(f"not an RFC 3339 timestamp: {s!r}")
    h = int(hour)
    m = int(minute)
    sec = int(second)
    if h > 23 or m > 59 or sec > 60:
        raise ValueError(f"bad time of day in timestamp: {s!r}")

    ms = 0
    if end > 19:
        digits = s[20:end]
        if s[19] != "." or not 0 < len(digits) <= 9 or not digits.isdigit():
            raise ValueError(f"not an RFC 3339 timestamp: {s!r}")
        ms = int((digits + "00")[:3])  # first three digits = floored milliseconds
    elif end < 19:
        raise ValueError(f"not an RFC 3339 timestamp: {s!r}")

    if sec == 60:
        # Leap second: keep the event inside its minute instead of rejecting it.
        sec = 59
        ms = 999

    seconds = _epoch_days(s[:10]) * 86_400 + h * 3600 + m * 60 + sec - offset_s
    return seconds * 1000 + ms


@functools.lru_cache(maxsize=8192)
def _epoch_days(text: str) -> int:
    """Days since 1970-01-01 of a `YYYY-MM-DD` string (validated)."""
    if not _DATE.fullmatch(text):
        raise ValueError(f"not a YYYY-MM-DD date: {text!r}")
    try:
        day = date(int(text[:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        raise ValueError(f"not a valid calendar date: {text!r}") from None
    return day.toordinal() - _EPOCH_ORDINAL


# --- CLI bounds and time zones --------------------------------------------


def parse_timezone(name: str | None) -> ZoneInfo:
    """IANA zone for `--timezone`; None or empty means UTC."""
    if name is None or not name.strip() or name.strip().upper() in ("UTC", "Z"):
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a key naming a directory of the tz database, e.g. "America".
        raise ValueError(
            f"unknown time zone {name!r}: expected an IANA name such as Europe/Berlin"
        ) from None


def parse_bound(text: str, tz: tzinfo, now_ms: int) -> int:
    """Epoch ms of a `--since`/`--until` value.

    `7d`/`24h`/`90m` count back from `now_ms`; `YYYY-MM-DD` is the first instant
    of that day in `tz`; an RFC 3339 timestamp carries its own offset. The
    result is clamped to the time window of `bounds` (no row lies outside
    it), so a bound such as `0001-01-01` selects the same rows and still has
    a calendar day in every zone.
    """
    return clamp_time_ms(_parse_bound(text, tz, now_ms))


def _parse_bound(text: str, tz: tzinfo, now_ms: int) -> int:
    value = text.strip()
    if relative := _RELATIVE.fullmatch(value):
        return now_ms - int(relative.group(1)) * _RELATIVE_UNITS[relative.group(2)]
    if _DATE.fullmatch(value):
        try:
            days = _epoch_days(value)
        except ValueError:
            raise ValueError(f"invalid time bound {text!r}: no such calendar date") from None
        return _day_start_ms(days, tz)
    try:
        return rfc3339_to_ms(value)
    except ValueError:
        raise ValueError(f"invalid time bound {text!r}: {_BOUND_FORMS}") from None


def _day_start_ms(days: int, tz: tzinfo) -> int:
    day = date.fromordinal(days + _EPOCH_ORDINAL)
    # fold=0 resolves a skipped midnight (DST starting at 00:00) to the instant
    # the clocks jumped, and a repeated one to its first occurrence: in both
    # cases the first instant whose local date is `day`.
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    return _datetime_ms(start)


def _datetime_ms(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * _MS_PER_DAY + delta.seconds * 1000 + delta.microseconds // 1000


# --- calendar keys ----------------------------------------------------------


def day_key(ms: int, tz: tzinfo) -> str:
    """`YYYY-MM-DD` of the instant `ms` in `tz`."""
    return _day_text(_local_day(ms, tz))


def week_key(ms: int, tz: tzinfo) -> str:
    """ISO week `YYYY-Www` of the instant `ms` in `tz`."""
    return _week_text(_local_day(ms, tz))


def month_key(ms: int, tz: tzinfo) -> str:
    """`YYYY-MM` of the instant `ms` in `tz`."""
    return _day_text(_local_day(ms, tz))[:7]


def _local_day(ms: int, tz: tzinfo) -> int:
    """Local calendar day (days since 1970-01-01) of `ms` in `tz`."""
    hour = ms // _MS_PER_HOUR
    offset = _hour_offset_ms(tz, hour)
    if offset is None:
        # The offset changes inside this hour (a DST switch): resolve exactly.
        return datetime.fromtimestamp(ms // 1000, tz).toordinal() - _EPOCH_ORDINAL
    return (ms + offset) // _MS_PER_DAY


@functools.lru_cache(maxsize=65536)
def _hour_offset_ms(tz: tzinfo, hour: int) -> int | None:
    """UTC offset in ms that holds for the whole UTC hour, or None if it changes.

    Cached per UTC hour rather than per day because offsets change mid-day, and
    computed as an offset rather than a date because half-hour zones (India,
    Newfoundland) reach local midnight in the middle of a UTC hour.
    """
    first = datetime.fromtimestamp(hour * 3600, tz).utcoffset()
    last = datetime.fromtimestamp(hour * 3600 + 3599, tz).utcoffset()
    if first != last or first is None:
        return None
    return (first.days * 86_400 + first.seconds) * 1000 + first.microseconds // 1000


@functools.lru_cache(maxsize=16384)
def _day_text(days: int) -> str:
    return date.fromordinal(days + _EPOCH_ORDINAL).isoformat()


@functools.lru_cache(maxsize=16384)
def _week_text(days: int) -> str:
    year, week, _ = date.fromordinal(days + _EPOCH_ORDINAL).isocalendar()
    return f"{year:04d}-W{week:02d}"


# --- local days in SQL --------------------------------------------------------

_SCAN_STEP_S = 6 * 3600  # offsets in tzdata change months apart, never twice in 6 h


def _offset_at_s(tz: tzinfo, second: int) -> int:
    offset = datetime.fromtimestamp(second, tz).utcoffset() or timedelta(0)
    return (offset.days * 86_400 + offset.seconds) * 1000 + offset.microseconds // 1000


# tzdata's names of UTC (Etc/ links included), upper case
_UTC_NAMES = frozenset(
    ("UTC", "UCT", "UNIVERSAL", "ZULU", "GMT", "GMT0", "GMT+0", "GMT-0", "GREENWICH", "Z")
)


def is_utc(tz: tzinfo) -> bool:
    """UTC by name: a zone at +0 today may not have been in other years."""
    return str(getattr(tz, "key", tz)).upper().removeprefix("ETC/") in _UTC_NAMES


def _fixed(tz: tzinfo) -> bool:
    """A zone with one offset forever: no need to scan for changes."""
    return isinstance(tz, timezone) or is_utc(tz)


def offset_changes(tz: tzinfo, lo_ms: int, hi_ms: int) -> list[tuple[int, int]]:
    """The zone's UTC offset over [lo_ms, hi_ms]: (from_ms, offset_ms) pieces,
    the first from `lo_ms` (and before it), each next from the instant the
    offset changes. As `_local_day`, an instant takes its whole second's offset."""
    second, last = lo_ms // 1000, hi_ms // 1000
    offset = _offset_at_s(tz, second)
    pieces = [(lo_ms, offset)]
    if _fixed(tz):
        return pieces
    while second < last:
        ahead = min(second + _SCAN_STEP_S, last)
        if _offset_at_s(tz, ahead) == offset:
            second = ahead
            continue
        low, high = second, ahead  # the offset is `offset` at low, another at high
        while high - low > 1:
            mid = (low + high) // 2
            if _offset_at_s(tz, mid) == offset:
                low = mid
            else:
                high = mid
        second, offset = high, _offset_at_s(tz, high)
        pieces.append((high * 1000, offset))
    return pieces


SPAN_MS = 32 * 10**9  # ~370 days: the offsets of a zone are worked out span by span


@functools.lru_cache(maxsize=64)
def _span_offsets(tz: tzinfo, span: int) -> list[tuple[int, int]]:
    """`offset_changes` over one span (a query reads them twice: cached)."""
    return offset_changes(tz, span * SPAN_MS, (span + 1) * SPAN_MS - 1)


def offsets_aligned(tz: tzinfo, spans: list[int], step_ms: int) -> bool:
    """Is every local midnight of `tz` over these spans on a multiple of
    `step_ms` (UTC)? So it is when each offset, and each instant the offset
    changes, is one: then no bucket of that width holds two local days."""
    for span in set(spans):
        pieces = _span_offsets(tz, span)
        if any(offset % step_ms for _, offset in pieces):
            return False
        if any(start % step_ms for start, _ in pieces[1:]):
            return False
    return True


def local_day_sql(column: str, tz: tzinfo, spans: list[int]) -> str:
    """SQL for the local calendar day in `tz` (days since 1970-01-01) of the
    instant in `column`, for instants in these `SPAN_MS` spans (numbers:
    instant // SPAN_MS); NULL for an instant in any other span."""
    pieces: list[tuple[int, int]] = []
    for span in sorted(set(spans)):
        pieces += _span_offsets(tz, span)
    if not pieces:
        return "NULL"
    if len(pieces) == 1:
        offset = str(pieces[0][1])
    else:
        cases = " ".join(
            f"WHEN {column} < {start} THEN {before}"
            for (_, before), (start, _) in zip(pieces, pieces[1:], strict=False)
        )
        offset = f"CASE {cases} ELSE {pieces[-1][1]} END"
    # shifted by 100000 days so the integer division floors (instants near
    # 1970-01-01 in a zone west of UTC are before the local epoch)
    day = f"(({column} + {offset} + {100_000 * _MS_PER_DAY}) / {_MS_PER_DAY} - 100000)"
    known = ", ".join(str(span) for span in sorted(set(spans)))
    return f"(CASE WHEN {column} / {SPAN_MS} IN ({known}) THEN {day} END)"


def day_text(days: int) -> str:
    """`YYYY-MM-DD` of a local day number (`day_key`'s text)."""
    return _day_text(days)


def week_text(days: int) -> str:
    """ISO week `YYYY-Www` of a local day number (`week_key`'s text)."""
    return _week_text(days)


def month_text(days: int) -> str:
    """`YYYY-MM` of a local day number (`month_key`'s text)."""
    return _day_text(days)[:7]
