"""Time-ordered ids for rows that are written many times a second and kept for ever.

A payout's id keys its row, its two transfers (`<id>:amount`, `<id>:fee`), its settle job
(`settle:<id>`) and the node's record of it. With random (version 4) UUIDs each insert lands
on a random leaf of indexes far larger than the database's cache, so a deep history costs
every payout several page reads and full-page WAL images (docs/scaling.md). A version 7 UUID
(RFC 9562) starts with the Unix time in milliseconds: new rows land at the right edge of each
index, whatever the history. 74 of its bits stay random, so ids made in the same millisecond,
by any process, do not collide in practice; an id is not a secret (every read of a payout is
authorised by its project's key) and it tells no more than the row's createdAt.
"""

from __future__ import annotations

import os
import time
import uuid

_RANDOM_A_BITS = 12
_RANDOM_B_BITS = 62


def time_ordered_uuid(now_ms: int | None = None) -> str:
    """A UUIDv7 as text: 48 bits of Unix milliseconds, version 7, variant 10, 74 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    assert 0 <= ms < 1 << 48, ms
    random_bits = int.from_bytes(os.urandom(10), "big")
    random_a = random_bits >> (80 - _RANDOM_A_BITS)
    random_b = random_bits & ((1 << _RANDOM_B_BITS) - 1)
    value = (ms << 80) | (0x7 << 76) | (random_a << 64) | (0b10 << 62) | random_b
    made = uuid.UUID(int=value)
    assert made.version == 7 and made.variant == uuid.RFC_4122
    return str(made)
