"""Check the invariants (docs/architecture.md), and the ledger against the node's own record.

Used by the tests after every step, by `payrail reconcile`, and by the load harness.

Everything from the database is read on one snapshot (REPEATABLE READ on PostgreSQL; one
transaction on SQLite), so payouts, transfers and balances are seen at the same moment; the
node is asked right after. A payout still pending can move between the two: a finding about
one is held back ("in motion") while it changed since the snapshot or within the settle
window (PAYRAIL_RECONCILE_SETTLE_WINDOW_MS) before it, and reported once it outlives it.
Final payouts never move, so what is wrong with one is reported at once.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payrail.bootstrap import Runtime
from payrail.db.engine import is_sqlite
from payrail.db.tables import accounts, order_events, order_payments, orders, payouts, transfers
from payrail.domain.orders import AWAITING_PROVIDER, CHARGED, OrderStatus
from payrail.domain.payouts import FINAL_STATES, State
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.lightning.backend import NodeStatus
from payrail.services import destinations
from payrail.services.payouts import transfer_ids
from payrail.support.clock import wait_or_stop

log = structlog.get_logger("payrail.reconcile")
NODE_QUERIES_CONCURRENT_MAX = 16
NODE_ANSWERS_KEPT_MAX = 1_000_000  # final answers the periodic run remembers (~100 MB at most)
PROVIDER_INTENTS_MAX = 100_000  # one reconciliation reads at most this many Stripe intents


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
    orders_checked: int = 0
    in_motion: int = 0  # pending payouts whose findings were held back (module docstring)

    @property
    def clean(self) -> bool:
        return not self.discrepancies

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for d in self.discrepancies:
            counts[d.kind] += 1
        return dict(counts)


@asynccontextmanager
async def _snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One read transaction: every query in it sees the same committed state."""
    async with engine.connect() as conn:
        if not is_sqlite(engine):  # SQLite: the connection's one transaction already is
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            yield conn


async def reconcile(
    rt: Runtime,
    settle_window_ms: int | None = None,
    *,
    node_answers: dict[str, NodeStatus] | None = None,
) -> Report:
    """One reconciliation. node_answers: the node's answers about final payouts, kept by the
    caller from one run to the next (the server's periodic loop): a final payout never moves
    and neither does the node's final answer about it, so each is asked about once, not at
    every run. Every invariant is still checked over every payout at every run."""
    window_ms = (
        rt.settings.reconcile_settle_window_ms if settle_window_ms is None else settle_window_ms
    )
    found: list[Discrepancy] = []
    async with _snapshot(rt.engine) as conn:
        snapshot_ms = rt.clock.now_ms()
        order_reads = await _read_orders(conn)
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
    node_status = await _node_statuses(rt, rows, node_answers)
    expected_balance: dict[str, int] = dict(funded)
    # Findings about a pending payout wait for _in_motion; about a final one, they stand.
    pending_findings: list[tuple[RowMapping, Discrepancy]] = []

    def report(row: RowMapping, finding: Discrepancy) -> None:
        if State(row["state"]) in FINAL_STATES:
            found.append(finding)
        else:
            pending_findings.append((row, finding))

    for row in rows:
        payout_id, total = row["id"], row["amount"] + row["fee"]
        state = State(row["state"])
        kinds = {resolutions.get(t) for t in transfer_ids(payout_id)}
        node = node_status[payout_id]
        account = acct.project_account(row["project_id"])
        posted, voided, open_ = kinds == {"post"}, kinds == {"void"}, kinds == {None}
        if not (posted or voided or open_):
            report(row, Discrepancy("double-resolution", "transfers resolved apart", [payout_id]))
        if posted or open_:
            expected_balance[account] = expected_balance.get(account, 0) - total
        # Invariant 3: posted iff the node paid; never paid twice; a final payout is resolved.
        if posted and node != NodeStatus.SUCCEEDED:
            report(
                row,
                Discrepancy(
                    "charged-not-paid",
                    f"payout {state.value}: ledger posted, node says {node.value}",
                    [payout_id],
                    total,
                ),
            )
        if node == NodeStatus.SUCCEEDED and not posted and not open_:
            report(
                row,
                Discrepancy(
                    "paid-not-charged",
                    f"payout {state.value}: node paid, ledger voided",
                    [payout_id],
                    row["amount"],
                ),
            )
        if state in (State.COMPLETED,) and not posted:
            report(row, Discrepancy("state-ledger-mismatch", "completed, not posted", [payout_id]))
        if state in (State.RESERVED, State.IN_FLIGHT) and not open_:
            report(row, Discrepancy("state-ledger-mismatch", "pending, resolved", [payout_id]))
        if state == State.RESERVED and node != NodeStatus.NOT_FOUND:
            report(row, Discrepancy("sent-while-reserved", "node has it", [payout_id]))
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
    orders_checked = await _check_orders(rt, order_reads, found)
    moving = await _in_motion(rt, pending_findings, snapshot_ms, window_ms)
    found.extend(d for row, d in pending_findings if row["id"] not in moving)
    held = len({row["id"] for row, _ in pending_findings} & moving)
    return Report(found, len(rows), orders_checked, held)


async def _in_motion(
    rt: Runtime, findings: list[tuple[RowMapping, Discrepancy]], snapshot_ms: int, window_ms: int
) -> set[str]:
    """Ids of the pending payouts behind `findings` that are still moving: changed since the
    snapshot (read again now, after the node answered), or within the window before it."""
    ids = sorted({row["id"] for row, _ in findings})
    if not ids:
        return set()
    async with rt.engine.connect() as conn:
        now_rows = {
            r.id: r
            for r in await conn.execute(
                select(payouts.c.id, payouts.c.state, payouts.c.updated_at).where(
                    payouts.c.id.in_(ids)
                )
            )
        }
    moving = set()
    for row, _ in findings:
        now = now_rows.get(row["id"])
        changed = now is None or (now.state, now.updated_at) != (row["state"], row["updated_at"])
        if changed or snapshot_ms - row["updated_at"] < window_ms:
            moving.add(row["id"])
    return moving


@dataclass
class _OrderReads:
    rows: dict[str, Any]
    logged: dict[str, int] = field(default_factory=dict)
    completions: dict[str, int] = field(default_factory=dict)
    postings: list[Any] = field(default_factory=list)
    revenue: dict[str, int] = field(default_factory=dict)
    nets: list[tuple[str, int]] = field(default_factory=list)


async def _read_orders(conn: AsyncConnection) -> _OrderReads:
    """The order side of the snapshot (read in the same transaction as the payouts)."""
    T = transfers.c
    rows = {r["id"]: r for r in (await conn.execute(select(orders))).mappings()}
    if not rows:
        return _OrderReads(rows)
    logged = _counts(await conn.execute(select(order_payments.c.order_id)))
    completions = _counts(
        await conn.execute(
            select(order_events.c.order_id).where(
                order_events.c.to_status == OrderStatus.COMPLETE.value
            )
        )
    )
    postings = list(
        await conn.execute(
            select(T.id, T.amount, T.credit_account_id)
            .join(accounts, accounts.c.id == T.credit_account_id)
            .where(accounts.c.code == int(acct.Code.MERCHANT_REVENUE))
        )
    )
    revenue = {
        r.id: int(r.credits_posted)
        for r in await conn.execute(
            select(accounts.c.id, accounts.c.credits_posted).where(
                accounts.c.code == int(acct.Code.MERCHANT_REVENUE)
            )
        )
    }
    nets = [
        (str(currency), int(net))
        for currency, net in await conn.execute(
            select(
                accounts.c.currency,
                func.sum(accounts.c.credits_posted - accounts.c.debits_posted).label("net"),
            ).group_by(accounts.c.currency)
        )
    ]
    return _OrderReads(rows, logged, completions, postings, revenue, nets)


async def _check_orders(rt: Runtime, reads: _OrderReads, found: list[Discrepancy]) -> int:
    """Invariant 5: an order is charged at most once at the provider and completed at most
    once, with one payment log row and one ledger posting; no charge without its order."""
    rows, logged, completions = reads.rows, reads.logged, reads.completions
    postings, revenue = reads.postings, reads.revenue
    if not rows:
        return 0
    for currency, net in reads.nets:
        if net != 0:
            found.append(Discrepancy("imbalance", f"{currency}: credits − debits = {net}"))
    posted = _counts([(t.id.removeprefix(acct.order_transfer_id("")),) for t in postings])
    expected_revenue: dict[str, int] = defaultdict(int)
    for order_id, row in rows.items():
        charged = OrderStatus(row["status"]) in CHARGED
        if charged:
            account = acct.merchant_revenue(row["project_id"], row["currency"])
            expected_revenue[account] += row["amount"]
        twice = max(logged.get(order_id, 0), completions.get(order_id, 0), posted.get(order_id, 0))
        if twice > 1:
            found.append(Discrepancy("double-payment", "order completed twice", [order_id], twice))
        booked = logged.get(order_id, 0) >= 1 and posted.get(order_id, 0) >= 1
        if charged != booked:
            found.append(
                Discrepancy(
                    "state-ledger-mismatch",
                    f"order {row['status']}: payment log/ledger posting "
                    f"{'missing' if charged else 'present'}",
                    [order_id],
                )
            )
    for transfer in postings:
        if transfer.id.removeprefix(acct.order_transfer_id("")) not in rows:
            found.append(
                Discrepancy("orphaned-charge", "revenue posting with no order", [transfer.id])
            )
    for account_id, credited in revenue.items():
        if credited != expected_revenue.get(account_id, 0):
            shown, expected = credited, expected_revenue.get(account_id, 0)
            found.append(
                Discrepancy(
                    "balance-mismatch",
                    f"{account_id}: credited {shown}, completed orders {expected}",
                    [account_id],
                    shown - expected,
                )
            )
    await _check_provider_charges(rt, rows, found)
    return len(rows)


def _counts(rows: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for (key,) in rows:
        counts[key] += 1
    return dict(counts)


async def _check_provider_charges(
    rt: Runtime, rows: dict[str, Any], found: list[Discrepancy]
) -> None:
    """Stripe's record against ours: each succeeded intent belongs to a completed order."""
    since_s = min(r["created_at"] for r in rows.values()) // 1000
    intents = await rt.provider.list_intents(since_s, PROVIDER_INTENTS_MAX)
    succeeded: dict[str, list[str]] = defaultdict(list)
    for intent in intents:
        if intent.status == "succeeded" and intent.order_id is not None:
            succeeded[intent.order_id].append(intent.id)
    for order_id, intent_ids in succeeded.items():
        row = rows.get(order_id)
        if len(intent_ids) > 1:
            found.append(
                Discrepancy("double-payment", "charged more than once", [order_id, *intent_ids])
            )
        if row is None or OrderStatus(row["status"]) in AWAITING_PROVIDER:
            continue  # not ours, or still being resolved (the sweeper will apply it)
        for intent_id in intent_ids:
            if OrderStatus(row["status"]) not in CHARGED or row["payment_intent_id"] != intent_id:
                found.append(
                    Discrepancy(
                        "orphaned-charge",
                        f"Stripe charged {intent_id}; the order is {row['status']}",
                        [order_id, intent_id],
                        row["amount"],
                    )
                )
    for order_id, row in rows.items():
        if OrderStatus(row["status"]) in CHARGED and row["payment_intent_id"] not in (
            succeeded.get(order_id) or []
        ):
            found.append(
                Discrepancy(
                    "completed-not-charged",
                    "order completed; Stripe has no succeeded intent for it",
                    [order_id],
                    row["amount"],
                )
            )


def report_dict(report: Report) -> dict[str, Any]:
    return {
        "clean": report.clean,
        "payoutsChecked": report.payouts_checked,
        "ordersChecked": report.orders_checked,
        "inMotion": report.in_motion,
        "counts": report.kinds(),
        "discrepancies": [d.to_dict() for d in report.discrepancies],
    }


def export_metrics(report: Report, now_s: float) -> None:
    """Publish the result so an alert can fire on any mismatch."""
    from payrail.support import metrics

    counts = report.kinds()
    for kind in set(metrics.DISCREPANCY_KINDS) | set(counts):
        metrics.RECONCILIATION_DISCREPANCIES.labels(kind=kind).set(counts.get(kind, 0))
    metrics.RECONCILIATION_RUNS.labels(result="clean" if report.clean else "discrepancies").inc()
    metrics.RECONCILIATION_LAST_RUN.set(now_s)


async def run_periodically(rt: Runtime, stop: asyncio.Event, interval_s: float) -> None:
    """The server's periodic reconciliation; its result is the metric above. The node is
    asked about a final payout once, in the first run that sees it final (`reconcile`'s
    node_answers): asking it about every payout ever made at every run grew with the
    database (measured: an idle server with 15,000 payouts spent most of a core on it)."""
    node_answers: dict[str, NodeStatus] = {}
    while not stop.is_set():
        try:
            report = await reconcile(rt, node_answers=node_answers)
            export_metrics(report, rt.clock.now_ms() / 1000)
            if not report.clean:
                log.error("reconciliation_discrepancies", counts=report.kinds())
        except Exception as exc:
            log.warning("reconciliation_failed", error=type(exc).__name__)
        await wait_or_stop(stop, interval_s)


async def _node_statuses(
    rt: Runtime, rows: list[RowMapping], known: dict[str, NodeStatus] | None = None
) -> dict[str, NodeStatus]:
    """The node's answer about each payout; those in `known` are not asked again, and the
    final answers about final payouts are added to it."""
    # SQLite has one writer and the simulated node writes when a payment settles: parallel
    # queries there would only queue for its lock.
    limit = asyncio.Semaphore(1 if is_sqlite(rt.engine) else NODE_QUERIES_CONCURRENT_MAX)

    async def one(row: RowMapping) -> tuple[str, NodeStatus]:
        async with limit:
            destination = destinations.backend_destination(row)
            return row["id"], (await rt.node.status(row["id"], destination)).status

    answers = {r["id"]: known[r["id"]] for r in rows if known and r["id"] in known}
    ask = [r for r in rows if r["id"] not in answers]
    many = getattr(rt.node, "statuses", None)  # a backend that answers many in one read
    if many is not None:
        answers |= await many([r["id"] for r in ask])
    else:
        answers |= dict(await asyncio.gather(*(one(r) for r in ask)))
    if known is not None:
        if len(known) + len(ask) > NODE_ANSWERS_KEPT_MAX:
            known.clear()  # a bound on the memory: the next run asks about everything again
        for row in ask:
            if State(row["state"]) in FINAL_STATES and answers[row["id"]] != NodeStatus.IN_FLIGHT:
                known[row["id"]] = answers[row["id"]]
    return answers
