"""The values an agent's log can really hold: one place for every decoder.

A line (or an import record) outside these bounds was not written by a real
agent run; it is a parse error for that line, so it never reaches a row, a
sum or a calendar. Decoders declare their fields with `TokenCount` /
`TimeMs` (msgspec checks them while decoding, at no measurable cost) or
call `check_time_ms` on an instant they computed.

Token counts: integers in [0, 2^36 - 1] (68,719,476,735 per count, per turn
or per request). That is thousands of times what a real turn uses, and low
enough that SQLite's 64-bit integer SUM can't overflow: a sum needs more
than 2^27 (134 million) rows, every one at the bound, before it passes
2^63 - 1. Sums in Python are exact at any size.

Times: UTC instants in years 1970..9998, as epoch milliseconds in
[0, 253370764800000). Every UTC offset a time zone has ever used moves
them less than a day, so their local date in any IANA zone is a date
Python and SQLite can represent (years 1969..9999).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

MAX_TOKENS = 2**36 - 1
ROWS_PER_SUM_AT_BOUND = (2**63 - 1) // MAX_TOKENS  # = 2^27

MIN_TIME_MS = 0  # 1970-01-01T00:00:00Z
MAX_TIME_MS = 253_370_764_800_000  # 9999-01-01T00:00:00Z, excluded
TIME_WINDOW = "UTC years 1970..9998"

TokenCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
TimeMs = Annotated[int, msgspec.Meta(ge=MIN_TIME_MS, lt=MAX_TIME_MS)]


def check_time_ms(ms: int) -> int:
    """`ms` if it is inside the window; else ValueError (a parse error)."""
    if MIN_TIME_MS <= ms < MAX_TIME_MS:
        return ms
    raise ValueError(f"timestamp outside {TIME_WINDOW}")


def clamp_time_ms(ms: int) -> int:
    """A query bound moved into the window: no row lies outside it, so the
    rows selected are the same, and calendar keys of the bound stay valid."""
    return min(max(ms, MIN_TIME_MS), MAX_TIME_MS)
