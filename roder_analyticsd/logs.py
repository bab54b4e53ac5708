"""Logging: structlog to stderr, for people on a TTY and for machines otherwise.

On a terminal each event is one readable console line; under a service
manager (stderr is a pipe or a file) it is one JSON object per line. Either
way a privacy guard runs before rendering: only keys on an allow-list reach
the output, so a body, a workspace path or anything else that was never
meant to be logged cannot leak through a careless `log.info(..., x=...)`.

Libraries that log through the standard `logging` module (uvicorn under
`serve`) go through the same guard and renderer, so the daemon and the
receiver write one format.
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
        "interval_s", "count", "backlog", "stage", "reason", "listen", "claude_code_files",
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
    stamp = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*stamp, drop_unsafe_keys, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_args: LineWriter(stream),
        cache_logger_on_first_use=False,
    )
    # the standard library's records (warnings and up): same guard, same format
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamp, _exception_class],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            drop_unsafe_keys,
            renderer,
        ],
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdlibLines)]:
        root.removeHandler(handler)
    handler = StdlibLines(LineWriter(stream))
    handler.setFormatter(formatter)
    root.addHandler(handler)


def _exception_class(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A library's traceback never reaches a line (its text may hold a body or
    a path): only the exception's class is kept, as `error`."""
    exc_info = event_dict.get("exc_info")
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        event_dict.setdefault("error", exc_info[0].__name__)
    elif isinstance(exc_info, BaseException):
        event_dict.setdefault("error", type(exc_info).__name__)
    return event_dict


class StdlibLines(logging.Handler):
    """Renders `logging` records as structlog lines; never raises."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a bad record loses that line, never the process
            return
        self._writer.msg(line)


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
