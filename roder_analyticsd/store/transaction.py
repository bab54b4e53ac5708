"""One way to write: an immediate transaction that always ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the store is read without an event loop too (store/blocking.py)
    import aiosqlite


@asynccontextmanager
async def transaction(conn: aiosqlite.Connection) -> AsyncIterator[None]:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error; inside another
    transaction, a savepoint.

    Shielded from cancellation: cancelling the caller half-way would leave a
    transaction (and the write lock) open on a connection that is used
    again. A cancelled caller sees its cancellation once the transaction
    has ended, so rows and their checkpoints still commit together or not
    at all.
    """
    import anyio

    with anyio.CancelScope(shield=True):
        nested = conn.in_transaction
        await conn.execute("SAVEPOINT nested_write" if nested else "BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if nested:
                await conn.execute("ROLLBACK TO nested_write")
                await conn.execute("RELEASE nested_write")
            else:
                await conn.rollback()
            raise
        if nested:
            await conn.execute("RELEASE nested_write")
        else:
            await conn.commit()
