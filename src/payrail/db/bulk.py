"""Many whole rows into a table in one statement, on either database.

PostgreSQL: the rows travel as one JSON parameter (jsonb_populate_recordset), so the server
runs one INSERT instead of one per row and the driver encodes one string instead of every
value of every row. Per 100 batch payouts (their rows, 200 pending transfers), executemany
cost ~300 statement executions and most of the reservation's Python time. SQLite runs in
process, where a row costs microseconds: executemany there.

Rows name every column (the row builders beside each table's writer do): a missing key is a
KeyError on SQLite and a NULL on PostgreSQL, and the tests run both.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.db.tables import insert_row


async def insert_rows(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT every row of `rows` (dicts with every column of `table`) in the caller's tx."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await conn.execute(_json_insert(table.name), {"rows": json.dumps(rows)})
    else:
        await conn.execute(_row_insert(table), rows)


@functools.cache
def _json_insert(table_name: str) -> Any:
    return text(
        f"INSERT INTO {table_name}"
        f" SELECT * FROM jsonb_populate_recordset(NULL::{table_name}, CAST(:rows AS jsonb))"
    )


@functools.cache
def _row_insert(table: Table) -> Any:
    return insert_row(table)
