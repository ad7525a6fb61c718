"""Statements over many rows, on either database: whole rows inserted in one statement, and
a column matched against a list parameter.

insert_rows. PostgreSQL: the rows travel as one JSON parameter (jsonb_populate_recordset),
so the server runs one INSERT instead of one per row and the driver encodes one string
instead of every value of every row. Per 100 batch payouts (their rows, 200 pending
transfers), executemany cost ~300 statement executions and most of the reservation's Python
time. SQLite runs in process, where a row costs microseconds: executemany there.

Rows name every column (the row builders beside each table's writer do): a missing key is a
KeyError on SQLite and a NULL on PostgreSQL, and the tests run both.

InList (column IN a list). SQLAlchemy's expanding IN renders one placeholder per value at
every execution, so each list length is another statement text: compiled again, prepared
again by asyncpg, planned again by PostgreSQL. On PostgreSQL it is `= ANY(array)` instead,
one text whatever the length; elsewhere the expanding IN.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import String, Table, any_, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.sqltypes import NullType
from sqlalchemy.sql.visitors import InternalTraversal

from payrail.db.tables import insert_row


async def insert_rows(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT every row of `rows` (dicts with every column of `table`) in the caller's tx."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await conn.execute(_json_insert(table.name), {"rows": json.dumps(rows)})
    else:
        await conn.execute(_row_insert(table), rows)


def json_rows(table_name: str) -> str:
    """PostgreSQL: a SELECT of the table's rows passed as one JSON parameter, `:rows` (a list of
    dicts, one key per column), for an INSERT … SELECT with its own ORDER BY or ON CONFLICT."""
    return f"SELECT * FROM jsonb_populate_recordset(NULL::{table_name}, CAST(:rows AS jsonb))"


@functools.cache
def _json_insert(table_name: str) -> Any:
    return text(f"INSERT INTO {table_name} {json_rows(table_name)}")


@functools.cache
def _row_insert(table: Table) -> Any:
    return insert_row(table)


class InList(ColumnElement[bool]):
    """`column IN <the list parameter named key>`: pass the values as that parameter."""

    inherit_cache = True  # its type stays unset: a Boolean gets "= 1" appended on SQLite
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("key", InternalTraversal.dp_string),
    ]

    def __init__(self, column: ColumnElement[Any], key: str) -> None:
        self.column = column
        self.key = key


@compiles(InList)
def _in_expanding(element: InList, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.key, expanding=True)), **kw)  # type: ignore[no-any-return]


@compiles(InList, "postgresql")
def _in_any_array(element: InList, compiler: Any, **kw: Any) -> str:
    item = element.column.type
    if isinstance(item, NullType):  # e.g. lower(column): an untyped function result
        item = String()
    values = bindparam(element.key, type_=ARRAY(item))
    return compiler.process(element.column == any_(values), **kw)  # type: ignore[no-any-return]
