"""The HA test's own arithmetic (payrail_tools/hatest/run.py): how a fault's write outage is
read off the payouts' commit times, and how answers are dated. `make ha-test` runs the rest."""

from __future__ import annotations

from payrail_tools.hatest.run import Fault, TimedCounter, write_outage


def _fault(at_ms: int, leader_after_s: float) -> Fault:
    fault = Fault("kill", at_mono=100.0, at_wall_ms=at_ms, old_leader="pg0")
    fault.leader_after_s = leader_after_s
    return fault


def test_the_outage_is_the_longest_gap_between_commits_around_the_fault():
    before = list(range(0, 10_000, 30))  # a commit every 30 ms, up to the fault at 10 s
    after = list(range(13_500, 20_000, 30))  # the new primary's first commit at 13.5 s
    far = [60_000, 90_000]  # quiet later on: outside the search window, not the outage
    last, first = write_outage(before + after + far, _fault(10_000, 2.5))
    assert (last, first) == (9_990, 13_500)


def test_no_commit_around_the_fault_is_no_outage_figure():
    assert write_outage([1, 2], _fault(500_000, 1.0)) is None


def test_answers_are_counted_and_dated():
    codes = TimedCounter()
    codes["201"] += 1
    codes["503:DATABASE_UNAVAILABLE"] += 1
    codes["201"] += 1
    assert codes == {"201": 2, "503:DATABASE_UNAVAILABLE": 1}
    assert [k for _, k in codes.times] == ["201", "503:DATABASE_UNAVAILABLE", "201"]
    assert all(a[0] <= b[0] for a, b in zip(codes.times, codes.times[1:], strict=False))
