"""Opaque list cursors: (created_at, id) of the last row of a page, newest-first lists."""

from __future__ import annotations

import base64

from sqlalchemy.engine import RowMapping

from payrail.domain import errors


def encode_cursor(row: RowMapping) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at']}:{row['id']}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (created_at, id) a cursor names; a cursor this API did not return is a 400."""
    try:
        created_at, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
        return int(created_at), row_id
    except (ValueError, UnicodeDecodeError):
        raise errors.ValidationError("cursor is not one this API returned.") from None
