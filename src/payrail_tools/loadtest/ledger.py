"""The client-side ledger: what the answers we saw say each project's balance must be.

It is built only from responses (funding answers and payout objects), never from the server's
balance, so comparing the two is an independent check of invariant 4 (docs/architecture.md):

    balance = funded − Σ totalCost(completed) − Σ totalCost(pending)

A payout in `error` or `expired` costs nothing. A request that got no answer is an unknown,
resolved at the end by replaying its idempotency key; a pending payout is resolved by GET.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

PENDING = "pending"
FINAL_STATUSES = frozenset({"completed", "error", "expired"})
CHARGED_STATUSES = frozenset({"completed", PENDING})


@dataclass
class SeenPayout:
    payout_id: str
    project_id: str
    total_cost_sats: int
    status: str


@dataclass(frozen=True)
class Unknown:
    """A payout request with no usable answer; its body carries the idempotency key."""

    project_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Mismatch:
    project_id: str
    expected_sats: int
    server_sats: int
    server_reserved_sats: int
    client_pending_sats: int

    @property
    def line(self) -> str:
        return (
            f"{self.project_id}: client ledger {self.expected_sats} sats, server balance "
            f"{self.server_sats} sats (diff {self.server_sats - self.expected_sats:+d})"
        )


@dataclass
class ClientLedger:
    funded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    payouts: dict[str, SeenPayout] = field(default_factory=dict)
    unknowns: list[Unknown] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def fund(self, project_id: str, added_sats: int) -> None:
        assert added_sats >= 0
        self.funded[project_id] += added_sats

    def observe(self, project_id: str, payout: dict[str, Any]) -> None:
        """Take one payout object from any answer (create, replay, 504/502, GET)."""
        payout_id, status = payout["id"], payout["status"]
        total = int(payout["totalCost"])
        if payout.get("projectId", project_id) != project_id:
            self.conflicts.append(f"{payout_id}: answered for project {payout.get('projectId')}")
            return
        seen = self.payouts.get(payout_id)
        if seen is None:
            self.payouts[payout_id] = SeenPayout(payout_id, project_id, total, status)
            return
        if seen.total_cost_sats != total:
            self.conflicts.append(f"{payout_id}: totalCost {seen.total_cost_sats} then {total}")
        if seen.status == PENDING:
            seen.status = status
        elif status != PENDING and status != seen.status:
            # Statuses only move forward: a final payout never changes again.
            self.conflicts.append(f"{payout_id}: final status {seen.status} then {status}")

    def unknown(self, project_id: str, body: dict[str, Any]) -> None:
        self.unknowns.append(Unknown(project_id, dict(body)))

    def pending_ids(self) -> list[str]:
        return [p.payout_id for p in self.payouts.values() if p.status == PENDING]

    def ids_for(self, project_id: str) -> set[str]:
        return {p.payout_id for p in self.payouts.values() if p.project_id == project_id}

    def charged_sats(self, project_id: str | None = None) -> int:
        return sum(
            p.total_cost_sats
            for p in self.payouts.values()
            if p.status in CHARGED_STATUSES and (project_id is None or p.project_id == project_id)
        )

    def pending_sats(self, project_id: str) -> int:
        return sum(
            p.total_cost_sats
            for p in self.payouts.values()
            if p.status == PENDING and p.project_id == project_id
        )

    def expected_balance(self, project_id: str) -> int:
        return self.funded[project_id] - self.charged_sats(project_id)

    def expected_total(self) -> int:
        return sum(self.funded.values()) - self.charged_sats()

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for p in self.payouts.values():
            counts[p.status] += 1
        return dict(counts)

    def compare(self, server: dict[str, tuple[int, int]]) -> list[Mismatch]:
        """server: project → (balance, reserved) from GET /projects/{id}/balance."""
        found = []
        for project_id in sorted(self.funded):
            balance, reserved = server[project_id]
            expected = self.expected_balance(project_id)
            if balance != expected:
                found.append(
                    Mismatch(project_id, expected, balance, reserved, self.pending_sats(project_id))
                )
        return found
