"""Logging: structlog to stderr, for people on a TTY and for machines otherwise.

On a terminal each event is one readable console line; under a service
manager (stderr is a pipe or a file) it is one JSON object per line. Either
way a privacy guard runs before rendering: only keys on an allow-list reach
the output, so a body, a workspace path or anything else that was never
meant to be logged cannot leak through a careless `log.info(..., x=...)`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Keys a log line may carry. Values under them are counts, durations,
# relative file paths (`threads/<id>/events.jsonl`), our own error texts
# (OS and SQLite messages, decoder messages naming a JSON path, never a
# value) and configuration the user gave us (store and data dir).
SAFE_KEYS = frozenset(
    {
        # structlog's own
        "event", "level", "timestamp", "logger",
        # the daemon
        "pid", "store", "data_dir", "schema_version", "version", "files", "lines",
        "skipped", "parse_errors", "file_errors", "rows", "rows_pruned", "days",
        "seconds", "path", "line", "error", "retry_in_s", "signal", "dropped",
        "interval_s", "count", "backlog", "stage",
        # the forwarder and the receiver
        "events", "max_queue", "policy",
    }
)  # fmt: skip
MAX_VALUE_CHARS = 300


def drop_unsafe_keys(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The privacy guard: keep allow-listed keys, cut long strings short."""
    for key in [k for k in event_dict if k not in SAFE_KEYS]:
        del event_dict[key]
    for key, value in event_dict.items():
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            event_dict[key] = value[:MAX_VALUE_CHARS] + "…"
    return event_dict


def configure_logging(
    *, json_lines: bool | None = None, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Send structlog output to `stream` (stderr): console lines on a TTY,
    JSON lines otherwise (or as `json_lines` says)."""
    stream = stream if stream is not None else sys.stderr
    if json_lines is None:
        json_lines = not _isatty(stream)
    renderer: Any
    if json_lines:
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(stream))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_unsafe_keys,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_args: LineWriter(stream),
        cache_logger_on_first_use=False,
    )


class LineWriter:
    """structlog's sink: one line per event, flushed at once. A failed
    write (disk full, stderr gone) loses that line, never the daemon."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        try:
            self._stream.write(message + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
