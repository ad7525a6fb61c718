"""The PostgreSQL payout store's transaction: a connection cut under it (PgBouncer, a failover)
raises the error that cut it, never a second error from the rollback (the HA test once saw
an InterfaceError from rolling back a connection already gone, answered as a 500)."""

from __future__ import annotations

import asyncpg
import pytest

from payrail.db.payout_store.postgres import _Transaction


class _Cut:
    """A pooled connection whose server went away during the opening statement."""

    def __init__(self) -> None:
        self.released = False

    async def execute(self, sql: str) -> None:
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

    def is_in_transaction(self) -> bool:
        raise asyncpg.InterfaceError("cannot call Connection.is_in_transaction(): closed")


class _Pool:
    def __init__(self, conn: _Cut) -> None:
        self.conn = conn

    async def acquire(self) -> _Cut:
        return self.conn

    async def release(self, conn: _Cut) -> None:
        conn.released = True


class _Store:
    def __init__(self, pool: _Pool) -> None:
        self._pool, self.calls = pool, 0

    async def _connections(self) -> _Pool:
        return self._pool


async def test_a_connection_cut_at_begin_raises_its_own_error_and_is_released() -> None:
    conn = _Cut()
    store = _Store(_Pool(conn))
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        async with _Transaction(store, "BEGIN"):  # type: ignore[arg-type]
            raise AssertionError("the body never runs")
    assert conn.released


async def test_an_error_in_the_body_on_a_cut_connection_is_the_one_raised() -> None:
    class _CutLater(_Cut):
        async def execute(self, sql: str) -> None:
            return None

    conn = _CutLater()
    with pytest.raises(KeyError):
        async with _Transaction(_Store(_Pool(conn)), "BEGIN"):  # type: ignore[arg-type]
            raise KeyError("the body's own error")
    assert conn.released
