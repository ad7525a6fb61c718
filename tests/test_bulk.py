"""db/bulk.py: many rows in one statement, and a column matched against a list parameter, the
same answers on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.db import bulk
from payrail.db.engine import make_engine
from payrail.db.tables import transfers
from payrail.ledger.ledger import Transfer, transfer_row

T = transfers.c
BY_IDS = select(T.id, T.amount, T.pending_id, T.timeout_at).where(bulk.InList(T.id, "b_ids"))


def _rows(n: int) -> list[dict]:
    return [
        transfer_row(Transfer(f"t{i:03d}", "a", "b", i + 1), "pending", None, i or None, 7)
        for i in range(n)
    ]


async def _found(engine: AsyncEngine, ids: list[str]) -> list[tuple]:
    async with engine.connect() as conn:
        return sorted(tuple(r) for r in await conn.execute(BY_IDS, {"b_ids": ids}))


async def test_insert_rows_writes_every_row_and_column_once(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await bulk.insert_rows(conn, transfers, _rows(150))
            await bulk.insert_rows(conn, transfers, [])  # nothing to write: no statement
        async with engine.connect() as conn:
            stored = [dict(r) for r in (await conn.execute(select(transfers))).mappings()]
        assert sorted(stored, key=lambda r: r["id"]) == _rows(150)
    finally:
        await engine.dispose()


async def test_in_list_matches_lists_of_any_length_with_one_statement(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await bulk.insert_rows(conn, transfers, _rows(20))
        assert await _found(engine, []) == []
        assert await _found(engine, ["t003"]) == [("t003", 4, None, 3)]
        assert [r[0] for r in await _found(engine, ["t019", "t000", "nope", "t007"])] == [
            "t000",
            "t007",
            "t019",
        ]
        assert len(await _found(engine, [f"t{i:03d}" for i in range(20)])) == 20
        if engine.dialect.name == "postgresql":
            # One statement text however long the list: prepared and planned once.
            compiled = str(BY_IDS.compile(dialect=engine.dialect))
            assert "= ANY (" in compiled and "POSTCOMPILE" not in compiled
    finally:
        await engine.dispose()
