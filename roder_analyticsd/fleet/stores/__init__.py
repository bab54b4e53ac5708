"""Fleet store backends, side by side: `sqlite` (the default, one file) and
`postgres` (many receivers, one database). The receiver talks to either
through the same small interface, `FleetStore`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from roder_analyticsd.fleet.model import AnalyticsEvent

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StoreUnavailable(Exception):
    """The store cannot take a write now (the client should retry). The
    message is safe to show: never a credential."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        # transient: contention (a lock held by another writer), over as soon
        # as it is released; otherwise (disk full, database gone) it persists
        self.transient = transient


class FleetStore(Protocol):
    async def insert(self, events: Sequence[AnalyticsEvent]) -> tuple[list[str], list[str]]:
        """Store (redacted) events; (new ids, duplicate ids) in batch order.
        Raises StoreUnavailable; a failed call has written nothing."""
        ...

    async def probe(self) -> None:
        """A write as cheap as can be that still meets what a POST would
        meet; raises StoreUnavailable."""
        ...

    async def close(self) -> None: ...


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.lower().startswith(POSTGRES_SCHEMES)


async def open_fleet_store(target: str, *, busy_timeout_ms: int = 5000) -> FleetStore:
    """A PostgreSQL URL or a SQLite path."""
    if is_postgres_url(target):
        from roder_analyticsd.fleet.stores.postgres import PostgresFleetStore

        return await PostgresFleetStore.open(target)
    from roder_analyticsd.fleet.stores.sqlite import SqliteFleetStore

    return await SqliteFleetStore.open(target, busy_timeout_ms=busy_timeout_ms)
