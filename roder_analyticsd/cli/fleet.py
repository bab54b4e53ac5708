"""`stats activity` and `stats fleet …`: analytics.v2 views of the store.

`stats activity` slices local activity (`activity_v2`) by one attribute.
`stats fleet` computes the fleet metrics of analytics-v2.md over local
activity, events received by `serve`, or both (see fleet/local.py for what a
local row counts as). Both honour --since/--until (on the event's instant),
--limit and --timezone; `stats activity` also --thread and --workspace.
Filters that cannot apply are usage errors rather than silently ignored.
"""

from __future__ import annotations

from typing import Any

import click

from roder_analyticsd.cli.common import UsageProblem, emit_json
from roder_analyticsd.cli.stats import prepare, query_options, query_store
from roder_analyticsd.fleet import vocabulary
from roder_analyticsd.queryspec import ACTIVITY_BY
from roder_analyticsd.queryspec import FLEET_SOURCES as SOURCES

USER_SESSIONS_HELP = (
    "Ordinary user chat only: module=session, ownerModule=session, executionKind=user_session."
)


@click.command()
@query_options
@click.option(
    "--by",
    "by",
    type=click.Choice(ACTIVITY_BY),
    required=True,
    help="The analytics.v2 attribute to group by.",
)
@click.option(
    "--loop-stage", type=click.Choice(vocabulary.LOOP_STAGES), help="Only events of this stage."
)
@click.option("--user-sessions", is_flag=True, help=USER_SESSIONS_HELP)
def activity(by: str, loop_stage: str | None, user_sessions: bool, **opts: Any) -> None:
    """Local activity in analytics.v2 terms, counted by one attribute.

    Events and error events (error_occurred) per key, most first, then key;
    a missing value counts as (none). Owners (ownerModule, executionKind)
    are resolved as of now. --thread and --workspace keep that thread's or
    workspace's events; --since/--until apply to each event's instant.
    """
    q = prepare(opts, "activity", by=by, loop_stage=loop_stage, user_sessions=user_sessions)
    rows = query_store(opts, q.run)
    if opts["as_json"]:
        emit_json(rows)
        return
    from roder_analyticsd.render import Column, count, percent, table

    events = sum(r["events"] for r in rows)
    errors = sum(r["errorEvents"] for r in rows)
    columns = [
        Column(by.replace("-", " ").capitalize(), lambda r: str(r["key"]), "Total", "left"),
        Column("Events", lambda r: count(r["events"]), count(events)),
        Column("Errors", lambda r: count(r["errorEvents"]), count(errors)),
        Column(
            "Error %",
            lambda r: percent(r["errorEvents"] / r["events"] if r["events"] else None),
            percent(errors / events if events else None),
        ),
    ]
    table(columns, rows, empty="no activity matches", note=_limit_note(rows, q.filters.limit))


def _limit_note(rows: list[Any], limit: int) -> str | None:
    return f"first {limit} rows (--limit)" if len(rows) >= limit else None


@click.group()
def fleet() -> None:
    """Fleet metrics (analytics.v2) over local and received events.

    --source local: this installation's activity; collected: events received
    by `roder-analyticsd serve`; all (default): both. Days are calendar days
    in --timezone; day series are oldest first and --limit keeps the most
    recent days.
    """


def _fleet_command(metric: str, doc: str, *, user_sessions: bool = False):
    def command(source: str | None, **opts: Any) -> None:
        only_users = bool(opts.pop("user_sessions", False))
        if isinstance(opts["store"], str):  # a PostgreSQL URL: received events only
            if source not in (None, "collected"):
                raise UsageProblem(
                    f"--source {source}: a PostgreSQL store holds received events only"
                    " (use --source collected)"
                )
            q = prepare(opts, "fleet", metric, source="collected", user_sessions=only_users)
            f = q.filters
            rows = _query_postgres(
                opts["store"],
                metric,
                since_ms=f.since_ms,
                until_ms=f.until_ms,
                tz=f.tz,
                user_sessions=only_users,
                limit=f.limit,
            )
        else:
            q = prepare(opts, "fleet", metric, source=source or "all", user_sessions=only_users)
            rows = query_store(opts, q.run)
        if opts["as_json"]:
            emit_json(rows)
            return
        _render(metric, rows, q.filters.limit)

    command.__doc__ = doc
    command = click.option(
        "--source",
        type=click.Choice(SOURCES),
        default=None,
        help="local: this installation; collected: received by `serve`; all: both"
        " (the default; with a PostgreSQL --store, collected is the only one).",
    )(command)
    if user_sessions:
        command = click.option("--user-sessions", is_flag=True, help=USER_SESSIONS_HELP)(command)
    command = query_options(command)
    return fleet.command(metric)(command)


_fleet_command(
    "dau",
    "Daily active installations: distinct installationId per day with any event.",
)
_fleet_command(
    "instances",
    "Distinct instanceId per day (a local row's instance is its installation).",
)
_fleet_command("modules", "Events by properties.module, most first.")
_fleet_command(
    "errors",
    "Events and error events by module, loop stage and outcome; most errors first.",
)
_fleet_command(
    "sessions",
    "Distinct sessions per day (local: thread ids; received: hashed session ids).",
    user_sessions=True,
)


def _query_postgres(url: str, metric: str, **kwargs: Any) -> list[dict[str, Any]]:
    from roder_analyticsd.cli.common import Failure, run_async
    from roder_analyticsd.fleet.stores import postgres

    @run_async
    async def run() -> list[dict[str, Any]]:
        try:
            return await postgres.query(url, metric, **kwargs)
        except postgres.StoreError as exc:
            raise Failure(str(exc)) from None

    return run()


_HEADERS: dict[str, tuple[tuple[str, str], ...]] = {
    "dau": (("day", "Day"), ("installations", "Installations")),
    "instances": (("day", "Day"), ("instances", "Instances")),
    "modules": (("module", "Module"), ("events", "Events")),
    "errors": (
        ("module", "Module"),
        ("loopStage", "Loop stage"),
        ("outcome", "Outcome"),
        ("events", "Events"),
        ("errorEvents", "Errors"),
    ),
    "sessions": (("day", "Day"), ("sessions", "Sessions")),
}


def _render(metric: str, rows: list[dict[str, Any]], limit: int) -> None:
    from roder_analyticsd.render import Column, count, table

    def cell(key: str):
        def show(row: dict[str, Any]) -> str:
            value = row[key]
            if isinstance(value, int):
                return count(value)
            return "—" if value is None else str(value)

        return show

    summed = {"events", "errorEvents"}  # per-day distinct counts do not add up
    columns = [
        Column(
            header,
            cell(key),
            count(sum(r[key] for r in rows)) if key in summed else ("Total" if i == 0 else ""),
            "left" if i == 0 or key in ("loopStage", "outcome") else "right",
        )
        for i, (key, header) in enumerate(_HEADERS[metric])
    ]
    note = _limit_note(rows, limit)
    if note and metric in ("dau", "instances", "sessions"):
        note = f"most recent {limit} days (--limit)"
    table(columns, rows, totals=metric in ("modules", "errors"), empty="no events match", note=note)
