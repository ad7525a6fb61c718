"""Opaque list cursors: (created_at, id) of the last row of a page, newest-first lists."""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import Table, select, tuple_
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.domain import errors
from payrail.domain.text import text_refusal

CURSOR_TIME_MAX_MS = 2**63 - 1  # created_at is a BIGINT; a larger number is no row's time


def encode_cursor(row: RowMapping) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at']}:{row['id']}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (created_at, id) a cursor names; a cursor this API did not return is a 400."""
    try:
        created_at, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
        time_ms = int(created_at)
    except (ValueError, UnicodeDecodeError):
        time_ms, row_id = -1, ""
    if not 0 <= time_ms <= CURSOR_TIME_MAX_MS or text_refusal(row_id) is not None:
        raise errors.ValidationError("cursor is not one this API returned.", field="cursor")
    return time_ms, row_id


async def newest_first(
    engine: AsyncEngine, table: Table, limit: int, cursor: str | None, *where: Any
) -> tuple[list[RowMapping], str | None]:
    """One page of `table` (it has created_at and id), newest first, and the next cursor.

    Keyset on (created_at, id): a row inserted meanwhile never makes a page skip or repeat one.
    Each list has an index that ends in (created_at, id) after its equality filters
    (migration 0013), so a page reads its rows and no others, however deep.
    """
    c = table.c
    query = select(table).where(*where).order_by(c.created_at.desc(), c.id.desc())
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        # A row comparison, not `created_at < x OR (created_at = x AND id < y)`: PostgreSQL
        # reads it as an index condition (the OR form was a filter, so a deep page read every
        # row it skipped).
        query = query.where(tuple_(c.created_at, c.id) < tuple_(created_at, row_id))
    async with engine.connect() as conn:
        rows = list((await conn.execute(query.limit(limit + 1))).mappings())
    page = rows[:limit]
    return page, (encode_cursor(page[-1]) if len(rows) > limit else None)
