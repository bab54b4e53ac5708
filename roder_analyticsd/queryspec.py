"""Every `stats` question as data: its options validated once, and the query
function it runs.

The CLI (`cli/stats.py`, `cli/fleet.py`) and the dashboard's JSON API
(`web/api.py`) both go through here, so a flag and a query parameter of the
same name mean the same thing, fail with the same one-line reason and get
the same rows. Nothing here knows about click or HTTP: a bad value raises
`UsageError` (the CLI exits 2 with its text, the API answers 400 with it).

The API reads the parameters it accepts from these signatures: a field of
`FilterOptions`, or a keyword-only parameter of a `prepare_*` function
(`min_calls` is the query parameter `min-calls`). A new option added here
is a new flag and a new query parameter at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

LIMIT_DEFAULT = 50
LIMIT_CAP = 1000
GROUPS = ("day", "week", "month", "session", "provider", "model", "workspace", "agent")
AGENTS = ("roder", "claude-code")  # whose logs a row came from
ORDERS = ("asc", "desc")
TOOL_SORTS = ("calls", "p95", "errors", "underused")
SESSION_SORTS = ("recent", "tokens", "cost", "calls")
ROLLUP_SCOPES = ("all", "tool", "model")
ACTIVITY_BY = (
    "module",
    "owner-module",
    "execution-kind",
    "loop-stage",
    "outcome",
    "phase",
    "error-category",
)
FLEET_METRICS = ("dau", "instances", "modules", "errors", "sessions")
FLEET_SOURCES = ("local", "collected", "all")
# the ones with a --user-sessions option
FLEET_USER_SESSIONS = ("sessions",)
STACK_BY = ("model", "provider")

Runner = Callable[[Any], Awaitable[Any]]  # (aiosqlite connection) -> rows


class UsageError(ValueError):
    """Bad usage or input: the CLI exits 2 with this text, the API answers 400."""


@dataclass(frozen=True, slots=True)
class FilterOptions:
    """The filters every query takes (cli.md), as the user typed them."""

    since: str | None = None
    until: str | None = None
    thread: str | None = None
    tool: str | None = None
    provider: str | None = None
    model: str | None = None
    workspace: str | None = None
    agent: str | None = None  # roder | claude-code; None: every agent
    limit: int = LIMIT_DEFAULT
    timezone: str = "UTC"

    def filters(self, *, now_ms: int | None = None):
        """Validate into `queries.Filters`; bad usage raises UsageError."""
        from roder_analyticsd.store.queries import Filters
        from roder_analyticsd.timewindow import parse_bound, parse_timezone

        if self.limit < 1 or self.limit > LIMIT_CAP:
            raise UsageError(f"--limit must be between 1 and {LIMIT_CAP} (got {self.limit})")
        try:
            tz = parse_timezone(self.timezone)
        except ValueError as exc:
            raise UsageError(f"--timezone: {exc}") from None
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        bounds: dict[str, int | None] = {}
        for name in ("since", "until"):
            text = getattr(self, name)
            if text is None:
                bounds[name] = None
                continue
            try:
                bounds[name] = parse_bound(text, tz, now_ms)
            except ValueError as exc:
                raise UsageError(f"--{name}: {exc}") from None
        since, until = bounds["since"], bounds["until"]
        if since is not None and until is not None and since >= until:
            raise UsageError("--since must be earlier than --until")
        if self.agent is not None:
            _choice("agent", self.agent, AGENTS)
        return Filters(
            since_ms=since,
            until_ms=until,
            thread=self.thread,
            tool=self.tool,
            provider=self.provider,
            model=self.model,
            workspace=self.workspace,
            agent=self.agent,
            limit=self.limit,
            tz=tz,
        )

    def reject(self, names: Sequence[str], what: str) -> None:
        """Filters that cannot apply to `what` are usage errors, never ignored."""
        for name in names:
            if getattr(self, name) is not None:
                raise UsageError(f"--{name} does not apply to {what}")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated question: its filters and the query that answers it."""

    filters: Any  # queries.Filters
    run: Runner


def _choice(option: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise UsageError(f"--{option}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _at_least(option: str, value: int, low: int) -> int:
    if value < low:
        raise UsageError(f"--{option} must be at least {low} (got {value})")
    return value


def is_utc(tz: tzinfo) -> bool:
    key = str(getattr(tz, "key", tz)).upper().removeprefix("ETC/")
    return key in ("UTC", "UCT", "UNIVERSAL", "ZULU", "GMT", "GMT0", "GMT+0", "GMT-0", "Z")


# --- stats … ------------------------------------------------------------------


def prepare_summary(options: FilterOptions) -> Prepared:
    from roder_analyticsd.store import queries

    f = options.filters()
    return Prepared(f, lambda conn: queries.summary(conn, f))


def prepare_tools(options: FilterOptions, *, sort: str = "calls", min_calls: int = 0) -> Prepared:
    from roder_analyticsd.store import queries

    _choice("sort", sort, TOOL_SORTS)
    _at_least("min-calls", min_calls, 0)
    f = options.filters()
    return Prepared(f, lambda conn: queries.tool_stats(conn, f, sort, min_calls))


def prepare_tokens(
    options: FilterOptions, *, group: str = "day", order: str | None = None
) -> Prepared:
    from roder_analyticsd.store import queries

    _choice("group", group, GROUPS)
    if order is not None:
        _choice("order", order, ORDERS)
    f = options.filters()
    return Prepared(f, lambda conn: queries.token_groups(conn, f, group, order))


def prepare_sessions(options: FilterOptions, *, sort: str = "recent") -> Prepared:
    from roder_analyticsd.store import queries

    _choice("sort", sort, SESSION_SORTS)
    f = options.filters()
    return Prepared(f, lambda conn: queries.sessions(conn, f, sort))


def split_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--registered: expected a comma-separated list of tool names")
    return names


def prepare_unused(options: FilterOptions, *, registered: str) -> Prepared:
    from roder_analyticsd.store import queries

    names = split_names(registered)
    f = options.filters()
    return Prepared(f, lambda conn: queries.unused_tools(conn, f, names))


def prepare_rollups(options: FilterOptions, *, scope: str | None = None) -> Prepared:
    from roder_analyticsd.store import queries

    if scope is not None:
        _choice("scope", scope, ROLLUP_SCOPES)
    options.reject(("thread", "workspace"), "rollups (they are per day)")
    f = options.filters()
    if not is_utc(f.tz):
        raise UsageError(
            "rollups are UTC days; use `stats tokens --group day --timezone …` for local days"
        )
    return Prepared(f, lambda conn: queries.rollups(conn, f, scope))


def prepare_activity(
    options: FilterOptions, *, by: str, loop_stage: str | None = None, user_sessions: bool = False
) -> Prepared:
    from roder_analyticsd.fleet import vocabulary
    from roder_analyticsd.store import queries

    _choice("by", by, ACTIVITY_BY)
    if loop_stage is not None:
        _choice("loop-stage", loop_stage, vocabulary.LOOP_STAGES)
    # only model_request events carry a provider/model: such a filter would
    # silently drop every other stage
    options.reject(("tool", "provider", "model"), "stats activity")
    f = options.filters()
    return Prepared(f, lambda conn: queries.activity_counts(conn, by, loop_stage, user_sessions, f))


def prepare_fleet(
    options: FilterOptions, metric: str, *, source: str = "all", user_sessions: bool = False
) -> Prepared:
    from roder_analyticsd.fleet import local

    _choice("metric", metric, FLEET_METRICS)
    _choice("source", source, FLEET_SOURCES)
    if user_sessions and metric not in FLEET_USER_SESSIONS:
        raise UsageError(f"--user-sessions does not apply to fleet {metric}")
    options.reject(
        ("thread", "tool", "provider", "model", "workspace"),
        "fleet metrics (analytics.v2 events carry no thread, tool or workspace)",
    )
    f = options.filters()

    def run(conn: Any) -> Awaitable[Any]:
        return local.fleet(
            conn,
            metric,
            source=source,  # type: ignore[arg-type]
            since_ms=f.since_ms,
            until_ms=f.until_ms,
            tz=f.tz,
            user_sessions=user_sessions,
            limit=f.limit,
        )

    return Prepared(f, run)


# --- the dashboard's own questions (no `stats` twin) -----------------------------


def prepare_token_stack(
    options: FilterOptions, *, group: str = "day", by: str = "model"
) -> Prepared:
    """Token sums per time bucket and model (or provider): the stacked chart."""
    from roder_analyticsd.store import queries

    _choice("group", group, ("day", "week", "month"))
    _choice("by", by, STACK_BY)
    f = options.filters()
    return Prepared(f, lambda conn: queries.token_stack(conn, f, group, by))


def prepare_hours(options: FilterOptions) -> Prepared:
    """Turns and tool calls per weekday × hour in the chosen time zone."""
    from roder_analyticsd.store import queries

    f = options.filters()
    return Prepared(f, lambda conn: queries.weekday_hours(conn, f))


def prepare_session(options: FilterOptions) -> Prepared:
    """One session's turns and tool calls (the drill-down): --thread is required."""
    from roder_analyticsd.store import queries

    if not options.thread:
        raise UsageError("--thread: which session? (a thread id is required)")
    f = options.filters()
    return Prepared(f, lambda conn: queries.session_detail(conn, f))
