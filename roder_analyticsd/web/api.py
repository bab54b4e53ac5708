"""`/api/*`: the `stats … --json` answers over HTTP.

Each endpoint is a `queryspec.prepare_*` function: the query parameters it
accepts are the CLI's option names (the fields of `FilterOptions` and the
function's keyword-only parameters, `_` spelled `-`), it validates them the
way the CLI does, and its rows are what the CLI prints with `--json`. Bad
usage (the CLI's exit 2) is HTTP 400 with a one-line JSON `error`; a store
that cannot be read (exit 1) is 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import sqlite3
import time
import types
import typing
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from roder_analyticsd import queryspec
from roder_analyticsd.queryspec import FilterOptions, UsageError
from roder_analyticsd.store.connection import describe_sqlite_error
from roder_analyticsd.store.schema import StoreError
from roder_analyticsd.web.store import ReadOnlyStore

# endpoint → (prepare function, positional arguments after the options)
ENDPOINTS: dict[str, tuple[Callable[..., queryspec.Prepared], tuple[Any, ...]]] = {
    "summary": (queryspec.prepare_summary, ()),
    "tools": (queryspec.prepare_tools, ()),
    "tokens": (queryspec.prepare_tokens, ()),
    "sessions": (queryspec.prepare_sessions, ()),
    "unused": (queryspec.prepare_unused, ()),
    "rollups": (queryspec.prepare_rollups, ()),
    "activity": (queryspec.prepare_activity, ()),
    **{
        f"fleet/{metric}": (queryspec.prepare_fleet, (metric,))
        for metric in queryspec.FLEET_METRICS
    },
    # the page's own questions (no `stats` twin)
    "tokens/stack": (queryspec.prepare_token_stack, ()),
    "hours": (queryspec.prepare_hours, ()),
    "session": (queryspec.prepare_session, ()),
}

CACHE_ENTRIES = 256
STATUS_KEEP_S = 2.0
EVENTS_POLL_S = 0.25  # how often /api/events looks at the change marker
EVENTS_STREAM_S = 25.0  # a stream then ends (EventSource reconnects): a stop waits no longer
EVENTS_RETRY_MS = 500


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    name: str  # the python name
    kind: type  # str, int or bool
    required: bool


def _kind(annotation: Any) -> type:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation in (int, bool):
        return annotation
    return str


@functools.cache
def _params(prepare: Callable[..., Any]) -> dict[str, Param]:
    """Query parameter name → Param, for FilterOptions and the function."""
    hints = typing.get_type_hints(FilterOptions)
    out = {
        f.name: Param(f.name, _kind(hints[f.name]), False)
        for f in dataclasses.fields(FilterOptions)
    }
    signature = inspect.signature(prepare, eval_str=True)
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            out[p.name.replace("_", "-")] = Param(
                p.name, _kind(p.annotation), p.default is inspect.Parameter.empty
            )
    return out


def _convert(name: str, param: Param, text: str) -> Any:
    if param.kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise UsageError(f"--{name}: {text!r} is not a whole number") from None
    if param.kind is bool:
        lowered = text.strip().lower()
        if lowered in ("", "1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--{name}: expected true or false (got {text!r})")
    return text


def prepare_request(endpoint: str, query: list[tuple[str, str]]) -> queryspec.Prepared:
    """Validate a request's query parameters into a Prepared query."""
    prepare, args = ENDPOINTS[endpoint]
    params = _params(prepare)
    options: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    seen: set[str] = set()
    for name, text in query:
        if name in seen:
            raise UsageError(f"--{name} given more than once")
        seen.add(name)
        param = params.get(name)
        if param is None:
            raise UsageError(f"no such option: --{name}")
        value = _convert(name, param, text)
        if param.name in FilterOptions.__slots__:
            options[param.name] = value
        else:
            extras[param.name] = value
    for name, param in params.items():
        if param.required and param.name not in extras:
            raise UsageError(f"missing option --{name}")
    return prepare(FilterOptions(**options), *args, **extras)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=NO_STORE)


NO_STORE = {"Cache-Control": "no-store"}


class AnswerCache:
    """Answers kept while the store is unchanged.

    A query is a function of the store's contents and its parameters only;
    so an answer stays exact until anything commits (the change marker
    moves), and the cache is emptied then. The key holds the resolved time
    bounds too: a relative window (`since=7d`) resolves against the request's
    own instant, so it is never answered from an earlier one.
    """

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self.size = size
        self.marker: str | None = None
        self.entries: OrderedDict[Any, bytes] = OrderedDict()

    def get(self, marker: str, key: Any) -> bytes | None:
        if marker != self.marker:
            self.marker = marker
            self.entries.clear()
            return None
        body = self.entries.get(key)
        if body is not None:
            self.entries.move_to_end(key)
        return body

    def put(self, marker: str, key: Any, body: bytes) -> None:
        if marker != self.marker:
            return  # the store moved on while this was computed
        self.entries[key] = body
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


class StatusSnapshot:
    """`status --json`, gathered off the event loop and kept STATUS_KEEP_S.

    Gathering reads every log file's unread tail (its lag): on a data dir of
    thousands of files that takes a good part of a second, so it runs in a
    worker thread (never stalling the other answers), one gathering at a
    time however many tabs ask, and a snapshot at most STATUS_KEEP_S old is
    answered as it is. The status panel is a snapshot anyway.
    """

    def __init__(self, gather: Callable[[], Any]) -> None:
        self.gather = gather
        self.value: Any = None
        self.at = float("-inf")
        self.lock = anyio.Lock()

    async def get(self) -> Any:
        async with self.lock:
            if time.monotonic() - self.at > STATUS_KEEP_S:
                self.value = await anyio.to_thread.run_sync(self._gather_in_thread)
                self.at = time.monotonic()
            return self.value

    def _gather_in_thread(self) -> Any:
        return asyncio.run(self.gather())


def api_routes(store: ReadOnlyStore, status: Callable[[], Any]) -> list[Route]:
    """The `/api/*` routes over one read-only store. `status` gathers the
    `status --json` object."""
    cache = AnswerCache()

    def handler(endpoint: str):
        async def answer(request: Request) -> Response:
            query = request.query_params.multi_items()
            try:
                prepared = prepare_request(endpoint, query)
            except UsageError as exc:
                return error(400, str(exc))
            headers = dict(NO_STORE)
            if not store.exists():
                headers["X-Store"] = "missing"
            f = prepared.filters
            key = (endpoint, tuple(query), f.since_ms, f.until_ms)
            try:
                marker = await store.marker()  # before the query: a commit during it is a miss
                body = cache.get(marker, key)
                if body is None:
                    async with store.connection() as conn:
                        rows = await prepared.run(conn)
                    body = JSONResponse(rows).body
                    cache.put(marker, key, body)
            except StoreError as exc:
                return error(503, str(exc))
            except sqlite3.Error as exc:
                return error(503, describe_sqlite_error(exc, store.path))
            return Response(body, media_type="application/json", headers=headers)

        return answer

    snapshot = StatusSnapshot(status)

    async def status_endpoint(request: Request) -> Response:
        if request.query_params:
            return error(400, f"no such option: --{next(iter(request.query_params))}")
        try:
            return JSONResponse(await snapshot.get(), headers=NO_STORE)
        except StoreError as exc:
            return error(503, str(exc))
        except (sqlite3.Error, OSError) as exc:
            return error(503, f"status: {exc}")

    async def parameters(request: Request) -> Response:
        """Each endpoint's query parameters (what the page may offer)."""
        accepted = {name: sorted(_params(prepare)) for name, (prepare, _) in ENDPOINTS.items()}
        return JSONResponse(accepted, headers=NO_STORE)

    async def version(request: Request) -> Response:
        return JSONResponse({"version": await store.marker()}, headers=NO_STORE)

    async def events(request: Request) -> Response:
        """Server-Sent Events: `change` whenever the store's marker moves."""

        async def stream():
            last = await store.marker()
            yield f"retry: {EVENTS_RETRY_MS}\nevent: version\ndata: {last}\n\n"
            deadline = time.monotonic() + EVENTS_STREAM_S
            beat = time.monotonic()
            while time.monotonic() < deadline:
                await anyio.sleep(EVENTS_POLL_S)
                current = await store.marker()
                if current != last:
                    last = current
                    yield f"event: change\ndata: {current}\n\n"
                elif time.monotonic() - beat > 15:
                    beat = time.monotonic()
                    yield ": keep-alive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={**NO_STORE, "X-Accel-Buffering": "no"},
        )

    routes = [Route(f"/api/{name}", handler(name), methods=["GET"]) for name in ENDPOINTS]
    routes += [
        Route("/api/status", status_endpoint, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/parameters", parameters, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
    ]
    return routes
