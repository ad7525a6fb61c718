"""What text payrail accepts from outside: no NUL, no lone surrogate, JSON of bounded depth.

PostgreSQL text cannot hold a NUL and UTF-8 cannot encode a lone surrogate, so either one
reaching the database was a 500 (and SQLite stored what PostgreSQL refused). No request of
ours nests deeper than a few levels; a body nested thousands deep only exhausts the parser.
"""

from __future__ import annotations

from typing import Any

from payrail.domain import errors

JSON_DEPTH_MAX = 32  # objects and arrays inside one another in a request body or event


def text_refusal(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None when it can."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate, which is not valid Unicode text"
    return None


def check_text(value: str, what: str) -> str:
    """`value` unchanged, or a ValidationError naming `what` and the reason."""
    reason = text_refusal(value)
    if reason is not None:
        raise errors.ValidationError(f"{what} {reason}.")
    return value


def check_json(value: Any, what: str = "The request body") -> Any:
    """`value` unchanged when every key and string in it is storable text, nested at most
    JSON_DEPTH_MAX deep; a ValidationError otherwise. Iterative: no recursion to exhaust."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, what)
        elif isinstance(item, dict | list):
            if depth >= JSON_DEPTH_MAX:
                raise errors.ValidationError(
                    f"{what} is nested more than {JSON_DEPTH_MAX} levels deep."
                )
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return value
