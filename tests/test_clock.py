"""The API's time format (clock.iso) against datetime's own rendering of the same instant."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from payrail.support.clock import iso


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_iso_is_utc_with_milliseconds_and_a_z(ms: int) -> None:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    assert iso(ms) == dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def test_iso_examples() -> None:
    assert iso(None) is None
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(951_782_400_007) == "2000-02-29T00:00:00.007Z"
