"""Check DESIGN.md's invariants, and the ledger against the Lightning node's own record.

Used by the tests after every step, by `payrail reconcile`, and by the load harness.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, select

from payrail.db.tables import accounts, payouts, transfers
from payrail.domain.payouts import State
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.lightning.backend import NodeStatus
from payrail.services.payouts import transfer_ids
from payrail.services.runtime import Runtime, wait_or_stop

log = structlog.get_logger("payrail.reconcile")
NODE_QUERIES_CONCURRENT_MAX = 16


@dataclass(frozen=True)
class Discrepancy:
    kind: (
        str  # charged-not-paid | paid-not-charged | double-payment | orphaned-charge | imbalance …
    )
    detail: str
    ids: list[str] = field(default_factory=list)
    amount: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    discrepancies: list[Discrepancy]
    payouts_checked: int

    @property
    def clean(self) -> bool:
        return not self.discrepancies

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for d in self.discrepancies:
            counts[d.kind] += 1
        return dict(counts)


async def reconcile(rt: Runtime) -> Report:
    found: list[Discrepancy] = []
    async with rt.engine.connect() as conn:
        totals = await ledger.totals(conn)
        rows = list((await conn.execute(select(payouts))).mappings())
        resolutions = {
            r.pending_id: r.kind
            for r in await conn.execute(
                select(transfers.c.pending_id, transfers.c.kind).where(
                    transfers.c.pending_id.is_not(None)
                )
            )
        }
        charge_counts = {
            r.pending_id: int(r.n)
            for r in await conn.execute(
                select(transfers.c.pending_id, func.count().label("n"))
                .where(transfers.c.pending_id.is_not(None), transfers.c.kind == "post")
                .group_by(transfers.c.pending_id)
                .having(func.count() > 1)
            )
        }
        project_charges = [
            (r.id, int(r.amount))
            for r in await conn.execute(
                select(transfers.c.id, transfers.c.amount)
                .join(accounts, accounts.c.id == transfers.c.debit_account_id)
                .where(accounts.c.code == int(acct.Code.PROJECT), transfers.c.kind == "pending")
            )
        ]
        project_accounts = {
            r.id: r
            for r in await conn.execute(
                select(accounts).where(accounts.c.code == int(acct.Code.PROJECT))
            )
        }
        funded = {
            r.credit_account_id: int(r.total)
            for r in await conn.execute(
                select(transfers.c.credit_account_id, func.sum(transfers.c.amount).label("total"))
                .where(transfers.c.debit_account_id == acct.FUNDING, transfers.c.kind == "single")
                .group_by(transfers.c.credit_account_id)
            )
        }
    # Invariant 1: no account that may not go negative is overdrawn (the CHECK makes it so).
    for account_id in totals.overdrawn_accounts:
        found.append(Discrepancy("overdraft", f"{account_id} is overdrawn", [account_id]))
    # Invariant 2: conservation, posted and pending alike.
    if totals.credits_posted != totals.debits_posted:
        diff = totals.credits_posted - totals.debits_posted
        found.append(Discrepancy("imbalance", f"posted credits − debits = {diff}", amount=diff))
    if totals.credits_pending != totals.debits_pending:
        diff = totals.credits_pending - totals.debits_pending
        found.append(Discrepancy("imbalance", f"pending credits − debits = {diff}", amount=diff))

    # A charge on a studio's balance must belong to a payout (no charge without its payout) and
    # be posted at most once (the unique pending_id makes it so; checked, not trusted).
    payout_transfers = {t for r in rows for t in transfer_ids(r["id"])}
    for transfer_id, amount in project_charges:
        if transfer_id not in payout_transfers:
            found.append(
                Discrepancy("orphaned-charge", "charge with no payout", [transfer_id], amount)
            )
    for transfer_id, count in charge_counts.items():
        found.append(Discrepancy("double-payment", f"posted {count} times", [transfer_id], count))
    node_status = await _node_statuses(rt, [r["id"] for r in rows])
    expected_balance: dict[str, int] = dict(funded)
    for row in rows:
        payout_id, total = row["id"], row["amount"] + row["fee"]
        state = State(row["state"])
        kinds = {resolutions.get(t) for t in transfer_ids(payout_id)}
        node = node_status[payout_id]
        account = acct.project_account(row["project_id"])
        posted, voided, open_ = kinds == {"post"}, kinds == {"void"}, kinds == {None}
        if not (posted or voided or open_):
            found.append(Discrepancy("double-resolution", "transfers resolved apart", [payout_id]))
        if posted or open_:
            expected_balance[account] = expected_balance.get(account, 0) - total
        # Invariant 3: posted iff the node paid; never paid twice; a final payout is resolved.
        if posted and node != NodeStatus.SUCCEEDED:
            found.append(
                Discrepancy(
                    "charged-not-paid",
                    f"payout {state.value}: ledger posted, node says {node.value}",
                    [payout_id],
                    total,
                )
            )
        if node == NodeStatus.SUCCEEDED and not posted and not open_:
            found.append(
                Discrepancy(
                    "paid-not-charged",
                    f"payout {state.value}: node paid, ledger voided",
                    [payout_id],
                    row["amount"],
                )
            )
        if state in (State.COMPLETED,) and not posted:
            found.append(Discrepancy("state-ledger-mismatch", "completed, not posted", [payout_id]))
        if state in (State.RESERVED, State.IN_FLIGHT) and not open_:
            found.append(Discrepancy("state-ledger-mismatch", "pending, resolved", [payout_id]))
        if state == State.RESERVED and node != NodeStatus.NOT_FOUND:
            found.append(Discrepancy("sent-while-reserved", "node has it", [payout_id]))
    # Invariant 4: the balance the API shows equals funded − Σ charged − Σ reserved.
    for account_id, row in project_accounts.items():
        shown = row.credits_posted - row.debits_posted - row.debits_pending
        expected = expected_balance.get(account_id, 0)
        if shown != expected:
            found.append(
                Discrepancy(
                    "balance-mismatch",
                    f"{account_id}: shown {shown}, expected {expected}",
                    [account_id],
                    shown - expected,
                )
            )
    return Report(found, len(rows))


def report_dict(report: Report) -> dict[str, Any]:
    return {
        "clean": report.clean,
        "payoutsChecked": report.payouts_checked,
        "counts": report.kinds(),
        "discrepancies": [d.to_dict() for d in report.discrepancies],
    }


def export_metrics(report: Report, now_s: float) -> None:
    """Publish the result so an alert can fire on any mismatch."""
    from payrail import metrics

    counts = report.kinds()
    for kind in set(metrics.DISCREPANCY_KINDS) | set(counts):
        metrics.RECONCILIATION_DISCREPANCIES.labels(kind=kind).set(counts.get(kind, 0))
    metrics.RECONCILIATION_RUNS.labels(result="clean" if report.clean else "discrepancies").inc()
    metrics.RECONCILIATION_LAST_RUN.set(now_s)


async def run_periodically(rt: Runtime, stop: asyncio.Event, interval_s: float) -> None:
    """The server's periodic reconciliation; its result is the metric above."""
    while not stop.is_set():
        try:
            report = await reconcile(rt)
            export_metrics(report, rt.clock.now_ms() / 1000)
            if not report.clean:
                log.error("reconciliation_discrepancies", counts=report.kinds())
        except Exception as exc:
            log.warning("reconciliation_failed", error=type(exc).__name__)
        await wait_or_stop(stop, interval_s)


async def _node_statuses(rt: Runtime, payout_ids: list[str]) -> dict[str, NodeStatus]:
    limit = asyncio.Semaphore(NODE_QUERIES_CONCURRENT_MAX)

    async def one(payout_id: str) -> tuple[str, NodeStatus]:
        async with limit:
            return payout_id, (await rt.node.status(payout_id)).status

    return dict(await asyncio.gather(*(one(p) for p in payout_ids)))
