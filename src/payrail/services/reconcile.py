"""Check the invariants (docs/architecture.md), and the ledger against the node's own record.

Two ways, one set of checks (docs/operations.md, "Reconciliation at any size"):

- The full audit (`reconcile`, `payrail reconcile --full`): every payout, transfer and order,
  read in pages of PAGE_ROWS on one snapshot, so memory stays bounded whatever the history.
- The incremental run (`reconcile_incremental`, the periodic one): only what changed since the
  checkpoint (reconcile_checkpoints): the payouts updated, the transfers and orders created or
  updated after its watermark, the open payouts, and the ids of the last run's findings. The
  balances (invariant 4) come from the ledger's sums per account kept in the checkpoint plus
  the sums of the transfers since; an account whose balance disagrees is summed over its
  whole history before it is reported. Its cost is O(changes); its first run, without a
  checkpoint, is the full audit. What it cannot see: a row changed behind payrail's back
  without its time (updated_at, created_at) moving; the full audit finds those.

Everything from the database is read on one snapshot (REPEATABLE READ on PostgreSQL; one
transaction on SQLite), so payouts, transfers and balances are seen at the same moment; the
node is asked right after. A payout still pending can move between the two: a finding about
one is held back ("in motion") while it changed since the snapshot or within the settle
window (PAYRAIL_RECONCILE_SETTLE_WINDOW_MS) before it, and reported once it outlives it.
Final payouts never move, so what is wrong with one is reported at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from sqlalchemy import (
    String,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payrail.bootstrap import Runtime
from payrail.db.engine import is_sqlite
from payrail.db.tables import (
    accounts,
    order_events,
    order_payments,
    orders,
    payouts,
    reconcile_checkpoints,
    transfers,
)
from payrail.domain.orders import AWAITING_PROVIDER, CHARGED, OrderStatus
from payrail.domain.payouts import FINAL_STATES, State
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.lightning.backend import NodeStatus
from payrail.services import destinations, reconcile_deposits
from payrail.services.payouts import transfer_ids
from payrail.support.clock import wait_or_stop

log = structlog.get_logger("payrail.reconcile")
NODE_QUERIES_CONCURRENT_MAX = 16
# Final answers the periodic run remembers (~10 MB at most). An incremental run asks only
# about the payouts changed since its checkpoint, so these serve the overlap of two runs.
NODE_ANSWERS_KEPT_MAX = 100_000
PROVIDER_INTENTS_MAX = 100_000  # one reconciliation reads at most this many Stripe intents
PAGE_ROWS = 1_000  # payouts (or transfers) read and checked at a time: bounded memory
# The full audit's pages (never in an API process: a page's ~50 ms of Python blocks no one).
FULL_PAGE_ROWS = 5_000
# A row whose time is this old belongs to a committed transaction (payrail's transactions are
# far shorter: statements are capped at 30 s): the checkpoint's watermark trails its run by
# this much, and each run reads again the rows of the last WATERMARK_LAG_MS.
WATERMARK_LAG_MS = 60_000
CHECKPOINT = "periodic"
CARRIED_IDS_MAX = 10_000  # ids of findings carried to the next run (the rest: next full audit)
PROJECT_LIKE = acct.project_account("") + "%"
REVENUE_LIKE = acct.MERCHANT_REVENUE_PREFIX + ":%"
ORDER_PREFIX = acct.order_transfer_id("")
ORDER_ID_PREFIX = "ord_"
OPEN_STATES = (State.RESERVED.value, State.IN_FLIGHT.value)
P = payouts.c
T = transfers.c


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


Progress = Callable[[int, int], None]  # (payouts checked so far, payouts in all)


async def reconcile(
    rt: Runtime,
    settle_window_ms: int | None = None,
    *,
    node_answers: dict[str, NodeStatus] | None = None,
    progress: Progress | None = None,
    page_rows: int | None = None,
) -> Report:
    """The full audit: every payout, transfer and order, in pages of PAGE_ROWS payouts on one
    snapshot, so its memory is bounded whatever the history (`payrail reconcile --full`).
    It also records the checkpoint the incremental runs start from. node_answers: the node's
    answers about final payouts, kept by the caller from one run to the next: a final payout
    never moves and neither does the node's final answer about it, so each is asked about
    once. progress: called after each page."""
    window_ms = _window(rt, settle_window_ms)
    page_max = page_rows or FULL_PAGE_ROWS
    check = _Checks(rt, node_answers)
    async with _snapshot(rt.engine) as conn:
        snapshot_ms = rt.clock.now_ms()
        await _check_accounts(conn, check.found)
        order_reads = await _read_orders(conn)
        check.expected_balance = dict(await _funded(conn))
        # Deposits: their credits are money from outside too (services/reconcile_deposits.py).
        deposit_reads = await reconcile_deposits.read(conn, None)
        check.expected_balance = reconcile_deposits.with_credits(
            check.expected_balance, deposit_reads
        )
        project_accounts = await _accounts_of(conn, acct.Code.PROJECT)
        for transfer_id, count in await _double_posts(conn, None):
            check.found.append(
                Discrepancy("double-payment", f"posted {count} times", [transfer_id], count)
            )
        total = int((await conn.execute(select(func.count()).select_from(payouts))).scalar_one())
        after = ""
        while True:
            page = list(
                (
                    await conn.execute(
                        select(payouts).where(P.id > after).order_by(P.id).limit(page_max)
                    )
                ).mappings()
            )
            if not page:
                break
            await check.payouts(conn, page, balances=True)
            after = page[-1]["id"]
            if progress is not None:
                progress(check.checked, total)
            await asyncio.sleep(0)  # a page is ~ms of Python: others run between pages
        await _orphaned_charges(conn, check.found, None, page_max)
        for account_id, row in project_accounts.items():
            shown = _shown(row)
            expected = check.expected_balance.get(account_id, 0)
            if shown != expected:
                check.found.append(_balance_mismatch(account_id, shown, expected))
        orders_checked = await _check_orders(rt, order_reads, check.found)
        watermark_ms = snapshot_ms - WATERMARK_LAG_MS
        balances = await _ledger_sums(conn, None, watermark_ms)
    await reconcile_deposits.check(rt, deposit_reads, check.found)  # deposits (issue 27)
    report = await check.report(snapshot_ms, window_ms, orders_checked)
    await _save_checkpoint(rt, watermark_ms, balances, report)
    return report


async def reconcile_incremental(
    rt: Runtime,
    settle_window_ms: int | None = None,
    *,
    node_answers: dict[str, NodeStatus] | None = None,
) -> Report:
    """The periodic run: only what changed since the checkpoint (module docstring), so its
    cost is O(changes), not O(history). Without a checkpoint it is the full audit, once."""
    async with rt.engine.connect() as conn:
        checkpoint = await load_checkpoint(conn)
    if checkpoint is None:  # the first run: everything, in the small pages of a periodic run
        return await reconcile(
            rt, settle_window_ms, node_answers=node_answers, page_rows=PAGE_ROWS
        )
    window_ms = _window(rt, settle_window_ms)
    since_ms = checkpoint.watermark_ms
    check = _Checks(rt, node_answers)
    async with _snapshot(rt.engine) as conn:
        snapshot_ms = rt.clock.now_ms()
        watermark_ms = max(since_ms, snapshot_ms - WATERMARK_LAG_MS)
        await _check_accounts(conn, check.found)
        # Invariant 4, from the ledger's sums: at the checkpoint + since it = what is shown.
        balances = _add(checkpoint.balances, await _ledger_sums(conn, since_ms, watermark_ms))
        tail = await _ledger_sums(conn, watermark_ms, None)
        for account_id, shown in (await _shown_balances(conn)).items():
            expected = balances.get(account_id, 0) + tail.get(account_id, 0)
            if shown == expected:
                continue
            # A transaction that committed later than WATERMARK_LAG_MS after its rows' time
            # is missing from the checkpoint's sums: the account's own sums say which.
            exact = (await _ledger_sums(conn, None, None, account_id)).get(account_id, 0)
            if exact == shown:
                balances[account_id] = exact - tail.get(account_id, 0)
                log.warning("reconcile_checkpoint_rebased", account=account_id)
            else:
                check.found.append(_balance_mismatch(account_id, shown, exact))
        for transfer_id, count in await _double_posts(conn, since_ms, checkpoint.carried):
            check.found.append(
                Discrepancy("double-payment", f"posted {count} times", [transfer_id], count)
            )
        await _orphaned_charges(conn, check.found, since_ms, PAGE_ROWS, checkpoint.carried)
        # The payouts changed since the checkpoint, then the open ones that did not change
        # (the node is asked about each until it is final), then last run's findings.
        seen: set[str] = set()
        after: tuple[int, str] = (since_ms, "")
        while True:
            page = list(
                (
                    await conn.execute(
                        select(payouts)
                        .where(tuple_(P.updated_at, P.id) > tuple_(*after))
                        .order_by(P.updated_at, P.id)
                        .limit(PAGE_ROWS)
                    )
                ).mappings()
            )
            if not page:
                break
            await check.payouts(conn, page)
            seen.update(r["id"] for r in page)
            after = (page[-1]["updated_at"], page[-1]["id"])
            await asyncio.sleep(0)
        open_rows = (await conn.execute(select(payouts).where(P.state.in_(OPEN_STATES)))).mappings()
        again = [r for r in open_rows if r["id"] not in seen]
        seen.update(r["id"] for r in again)
        carried = [i for i in checkpoint.carried if i not in seen]
        if carried:
            again += list((await conn.execute(select(payouts).where(P.id.in_(carried)))).mappings())
        for start in range(0, len(again), PAGE_ROWS):
            await check.payouts(conn, again[start : start + PAGE_ROWS])
        order_reads = await _read_orders(conn, since_ms, checkpoint.carried)
        orders_checked = await _check_orders(rt, order_reads, check.found, revenue=False)
        deposit_reads = await reconcile_deposits.read(conn, since_ms)  # deposits (issue 27)
    await reconcile_deposits.check(rt, deposit_reads, check.found)
    report = await check.report(snapshot_ms, window_ms, orders_checked)
    await _save_checkpoint(rt, watermark_ms, balances, report)
    return report


def progress_printer(say: Callable[[str], None], every_s: float = 1.0) -> Progress:
    """A Progress that says how far the full audit is and its rate, a line per every_s."""
    started = time.monotonic()
    last = [0.0]

    def show(checked: int, total: int) -> None:
        now = time.monotonic()
        if checked < total and now - last[0] < every_s:
            return
        last[0] = now
        rate = checked / max(now - started, 1e-9)
        share = 100 * checked / total if total else 100.0
        say(f"reconcile --full: {checked:,}/{total:,} payouts ({share:.0f} %), {rate:,.0f}/s")

    return show


def _among(conn: AsyncConnection, column: Any, values: list[str]) -> Any:
    """column IN values. PostgreSQL: = ANY(one array parameter), one statement text whatever
    the length (an expanding IN is compiled again with a parameter per value, per page)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(String)))
    return column.in_(values)


def _window(rt: Runtime, settle_window_ms: int | None) -> int:
    return rt.settings.reconcile_settle_window_ms if settle_window_ms is None else settle_window_ms


class _Checks:
    """The per-payout checks, page by page; what they found, and the findings held back."""

    def __init__(self, rt: Runtime, node_answers: dict[str, NodeStatus] | None) -> None:
        self.rt = rt
        self.node_answers = node_answers
        self.found: list[Discrepancy] = []
        # Findings about a pending payout wait for _in_motion; about a final one, they stand.
        self.pending_findings: list[tuple[RowMapping, Discrepancy]] = []
        self.expected_balance: dict[str, int] = {}
        self.checked = 0

    def _report(self, row: RowMapping, finding: Discrepancy) -> None:
        if State(row["state"]) in FINAL_STATES:
            self.found.append(finding)
        else:
            self.pending_findings.append((row, finding))

    async def payouts(
        self, conn: AsyncConnection, rows: list[RowMapping], *, balances: bool = False
    ) -> None:
        """Invariant 3 for each payout, and its reservation against its amount and fee.
        balances: add each payout's charge to expected_balance (the full audit's invariant 4)."""
        if not rows:
            return
        tids = [t for r in rows for t in transfer_ids(r["id"])]
        resolutions = {
            r.pending_id: r.kind
            for r in await conn.execute(
                select(T.pending_id, T.kind).where(_among(conn, T.pending_id, tids))
            )
        }
        reserved = {
            r.id: int(r.amount)
            for r in await conn.execute(
                select(T.id, T.amount).where(_among(conn, T.id, tids), T.kind == "pending")
            )
        }
        node_status = await _node_statuses(self.rt, rows, self.node_answers)
        self.checked += len(rows)
        for row in rows:
            self._one(row, resolutions, reserved, node_status[row["id"]], balances)

    def _one(
        self,
        row: RowMapping,
        resolutions: dict[str, str],
        reserved: dict[str, int],
        node: NodeStatus,
        balances: bool,
    ) -> None:
        payout_id, total = row["id"], row["amount"] + row["fee"]
        state = State(row["state"])
        ids = transfer_ids(payout_id)
        kinds = {resolutions.get(t) for t in ids}
        report = self._report
        posted, voided, open_ = kinds == {"post"}, kinds == {"void"}, kinds == {None}
        if not (posted or voided or open_):
            report(row, Discrepancy("double-resolution", "transfers resolved apart", [payout_id]))
        held = sum(reserved.get(t, 0) for t in ids)
        if held != total:
            report(
                row,
                Discrepancy(
                    "state-ledger-mismatch",
                    f"reserved {held}, the payout's amount and fee are {total}",
                    [payout_id],
                    held - total,
                ),
            )
        if balances and (posted or open_):
            account = acct.project_account(row["project_id"])
            self.expected_balance[account] = self.expected_balance.get(account, 0) - total
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

    async def report(self, snapshot_ms: int, window_ms: int, orders_checked: int) -> Report:
        moving = await _in_motion(self.rt, self.pending_findings, snapshot_ms, window_ms)
        self.found.extend(d for row, d in self.pending_findings if row["id"] not in moving)
        held = len({row["id"] for row, _ in self.pending_findings} & moving)
        return Report(self.found, self.checked, orders_checked, held)


async def _check_accounts(conn: AsyncConnection, found: list[Discrepancy]) -> None:
    """Invariants 1 and 2, over the accounts table (one row per account, not per payout)."""
    totals = await ledger.totals(conn)
    for account_id in totals.overdrawn_accounts:
        found.append(Discrepancy("overdraft", f"{account_id} is overdrawn", [account_id]))
    if totals.credits_posted != totals.debits_posted:
        diff = totals.credits_posted - totals.debits_posted
        found.append(Discrepancy("imbalance", f"posted credits − debits = {diff}", amount=diff))
    if totals.credits_pending != totals.debits_pending:
        diff = totals.credits_pending - totals.debits_pending
        found.append(Discrepancy("imbalance", f"pending credits − debits = {diff}", amount=diff))


async def _accounts_of(conn: AsyncConnection, code: acct.Code) -> dict[str, Any]:
    A = accounts.c
    return {r.id: r for r in await conn.execute(select(accounts).where(A.code == int(code)))}


def _shown(row: Any) -> int:
    """The balance the API shows for a project account."""
    return int(row.credits_posted - row.debits_posted - row.debits_pending)


async def _shown_balances(conn: AsyncConnection) -> dict[str, int]:
    """What each project account shows and each revenue account holds (the ledger's sums'
    subjects: _ledger_sums)."""
    shown = {k: _shown(r) for k, r in (await _accounts_of(conn, acct.Code.PROJECT)).items()}
    revenue = await _accounts_of(conn, acct.Code.MERCHANT_REVENUE)
    return shown | {k: int(r.credits_posted) for k, r in revenue.items()}


def _balance_mismatch(account_id: str, shown: int, expected: int) -> Discrepancy:
    return Discrepancy(
        "balance-mismatch",
        f"{account_id}: shown {shown}, expected {expected}",
        [account_id],
        shown - expected,
    )


async def _funded(conn: AsyncConnection) -> dict[str, int]:
    """What the outside world paid into each account (ix_transfers_debit: a few rows),
    and what internal transfers moved between projects."""
    funded = {
        r.credit_account_id: int(r.total)
        for r in await conn.execute(
            select(T.credit_account_id, func.sum(T.amount).label("total"))
            .where(T.debit_account_id == acct.FUNDING, T.kind == "single")
            .group_by(T.credit_account_id)
        )
    }
    for account, delta in (await internal_moves(conn)).items():
        funded[account] = funded.get(account, 0) + delta
    return funded


async def internal_moves(conn: AsyncConnection) -> dict[str, int]:
    """What internal transfers (services/internal_transfers.py: single transfers from one
    project account to another) moved into (+) and out of (-) each project account."""
    T = transfers.c
    moved: dict[str, int] = defaultdict(int)
    for debit, credit, total in await conn.execute(
        select(T.debit_account_id, T.credit_account_id, func.sum(T.amount))
        .where(T.kind == "single", T.debit_account_id.like(acct.project_account("") + "%"))
        .group_by(T.debit_account_id, T.credit_account_id)
    ):
        moved[debit] -= int(total)
        moved[credit] += int(total)
    return dict(moved)


def _created(since_ms: int | None, until_ms: int | None) -> list[Any]:
    where = []
    if since_ms is not None:
        where.append(T.created_at > since_ms)
    if until_ms is not None:
        where.append(T.created_at <= until_ms)
    return where


async def _ledger_sums(
    conn: AsyncConnection, since_ms: int | None, until_ms: int | None, account: str | None = None
) -> dict[str, int]:
    """What the transfers created in (since_ms, until_ms] add to each project account's shown
    balance (credits posted − debits posted − debits pending) and to each revenue account's
    credits posted. One aggregate on ix_transfers_created; without bounds, all of history
    (the first checkpoint, and one account's own sums when its balance looks wrong)."""
    window = _created(since_ms, until_ms)
    credit = T.credit_account_id
    debit = T.debit_account_id
    credit_where = [
        *window,
        T.kind.in_(("single", "post")),
        credit == account if account else (credit.like(PROJECT_LIKE) | credit.like(REVENUE_LIKE)),
    ]
    debit_where = [*window, debit == account if account else debit.like(PROJECT_LIKE)]
    debit_delta = case(
        (T.kind.in_(("single", "pending")), -T.amount), (T.kind == "void", T.amount), else_=0
    )
    moves = union_all(
        select(credit.label("account"), T.amount.label("delta")).where(*credit_where),
        select(debit.label("account"), debit_delta.label("delta")).where(*debit_where),
    ).subquery()
    rows = await conn.execute(
        select(moves.c.account, func.sum(moves.c.delta)).group_by(moves.c.account)
    )
    return {str(a): int(d) for a, d in rows if d}


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return out


async def _double_posts(
    conn: AsyncConnection,
    since_ms: int | None,
    also: list[str] = (),  # type: ignore[assignment]
) -> list[tuple[str, int]]:
    """Pending transfers posted more than once (the unique pending_id makes it impossible;
    checked, not trusted). since_ms: only those with a post since then (and `also`)."""
    query = (
        select(T.pending_id, func.count().label("n"))
        .where(T.pending_id.is_not(None), T.kind == "post")
        .group_by(T.pending_id)
        .having(func.count() > 1)
    )
    if since_ms is not None:
        recent = select(T.pending_id).where(
            T.created_at > since_ms, T.kind == "post", T.pending_id.is_not(None)
        )
        targets = [r[0] for r in await conn.execute(recent)] + list(also)
        if not targets:
            return []
        found: list[tuple[str, int]] = []
        for start in range(0, len(targets), PAGE_ROWS):
            chunk = targets[start : start + PAGE_ROWS]
            found += [
                (r.pending_id, int(r.n))
                for r in await conn.execute(query.where(T.pending_id.in_(chunk)))
            ]
        return sorted(set(found))
    return [(r.pending_id, int(r.n)) for r in await conn.execute(query)]


async def _orphaned_charges(
    conn: AsyncConnection,
    found: list[Discrepancy],
    since_ms: int | None,
    page_max: int,
    also: list[str] = (),  # type: ignore[assignment]
) -> None:
    """A charge on a studio's balance must belong to a payout (no charge without its payout).
    The pending transfers on project accounts, page by page (since_ms: created since, and
    `also`, last run's findings), each looked up against the payouts by id."""
    after = ""
    reported: set[str] = set()
    while True:
        query = (
            select(T.id, T.amount)
            .where(T.kind == "pending", T.debit_account_id.like(PROJECT_LIKE), T.id > after)
            .order_by(T.id)
            .limit(page_max)
        )
        if since_ms is not None:
            query = query.where(T.created_at > since_ms)
        page = list(await conn.execute(query))
        if after == "" and also:
            page += list(
                await conn.execute(
                    select(T.id, T.amount).where(
                        T.id.in_(list(also)),
                        T.kind == "pending",
                        T.debit_account_id.like(PROJECT_LIKE),
                    )
                )
            )
        if not page:
            return
        owners = {t.id: t.id.rsplit(":", 1)[0] for t in page}
        known = set(
            (
                await conn.execute(
                    select(P.id).where(_among(conn, P.id, sorted(set(owners.values()))))
                )
            ).scalars()
        )
        for t in page:
            if t.id in reported:
                continue  # a carried id that also changed since the checkpoint
            if owners[t.id] not in known or t.id not in transfer_ids(owners[t.id]):
                reported.add(t.id)
                found.append(
                    Discrepancy("orphaned-charge", "charge with no payout", [t.id], int(t.amount))
                )
        after = max(t.id for t in page)
        if len(page) < page_max:
            return
        await asyncio.sleep(0)


# ---------------------------------------------------------------- checkpoint


@dataclass(frozen=True)
class Checkpoint:
    watermark_ms: int
    balances: dict[str, int]
    carried: list[str]  # ids of last run's findings, checked again until they are right
    verified_at: int
    rows_checked: int


async def load_checkpoint(conn: AsyncConnection) -> Checkpoint | None:
    C = reconcile_checkpoints.c
    row = (await conn.execute(select(reconcile_checkpoints).where(C.name == CHECKPOINT))).first()
    if row is None:
        return None
    return Checkpoint(
        int(row.watermark_ms),
        {k: int(v) for k, v in json.loads(row.balances).items()},
        list(json.loads(row.open_findings)),
        int(row.verified_at),
        int(row.rows_checked),
    )


def _carried(report: Report) -> list[str]:
    """The ids behind the findings (payouts, transfers, orders), looked up again by id at the
    next run, so a finding stands until it is right even though its rows no longer change."""
    ids = sorted({i for d in report.discrepancies for i in d.ids})
    return ids[:CARRIED_IDS_MAX]


async def _save_checkpoint(
    rt: Runtime, watermark_ms: int, balances: dict[str, int], report: Report
) -> None:
    C = reconcile_checkpoints.c
    values = {
        "watermark_ms": watermark_ms,
        "balances": json.dumps(balances, sort_keys=True),
        "open_findings": json.dumps(_carried(report)),
        "verified_at": rt.clock.now_ms(),
        "rows_checked": report.payouts_checked + report.orders_checked,
    }
    async with rt.engine.begin() as conn:
        changed = await conn.execute(
            update(reconcile_checkpoints).where(C.name == CHECKPOINT).values(**values)
        )
        if changed.rowcount == 0:
            await conn.execute(insert(reconcile_checkpoints).values(name=CHECKPOINT, **values))


async def drop_checkpoint(rt: Runtime) -> None:
    """The next periodic run is a full audit again (tests; an operator after a restore)."""
    async with rt.engine.begin() as conn:
        await conn.execute(
            delete(reconcile_checkpoints).where(reconcile_checkpoints.c.name == CHECKPOINT)
        )


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


async def _read_orders(
    conn: AsyncConnection,
    since_ms: int | None = None,
    also: list[str] = (),  # type: ignore[assignment]
) -> _OrderReads:
    """The order side of the snapshot (read in the same transaction as the payouts).
    since_ms: only the orders changed since (ix_orders_updated) and `also`, each order's
    rows looked up by its id; None: every order."""
    OC = orders.c
    if since_ms is None:
        rows = {r["id"]: r for r in (await conn.execute(select(orders))).mappings()}
    else:
        changed = select(orders).where(OC.updated_at > since_ms)
        rows = {r["id"]: r for r in (await conn.execute(changed)).mappings()}
        again = [i for i in also if i not in rows and i.startswith(ORDER_ID_PREFIX)]
        if again:
            found = await conn.execute(select(orders).where(OC.id.in_(again)))
            rows |= {r["id"]: r for r in found.mappings()}
    if not rows:
        return _OrderReads(rows)
    ids = sorted(rows) if since_ms is not None else None

    def only(column: Any) -> list[Any]:
        return [] if ids is None else [column.in_(ids)]

    logged = _counts(
        await conn.execute(
            select(order_payments.c.order_id).where(*only(order_payments.c.order_id))
        )
    )
    completions = _counts(
        await conn.execute(
            select(order_events.c.order_id).where(
                order_events.c.to_status == OrderStatus.COMPLETE.value,
                *only(order_events.c.order_id),
            )
        )
    )
    postings = list(
        await conn.execute(
            select(T.id, T.amount, T.credit_account_id)
            .join(accounts, accounts.c.id == T.credit_account_id)
            .where(
                accounts.c.code == int(acct.Code.MERCHANT_REVENUE),
                *([] if ids is None else [T.id.in_([acct.order_transfer_id(i) for i in ids])]),
            )
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


async def _check_orders(
    rt: Runtime, reads: _OrderReads, found: list[Discrepancy], *, revenue: bool = True
) -> int:
    """Invariant 5: an order is charged at most once at the provider and completed at most
    once, with one payment log row and one ledger posting; no charge without its order.
    revenue: compare each revenue account with every order's (the full audit; an incremental
    run compares it with the ledger's sums instead)."""
    rows, logged, completions = reads.rows, reads.logged, reads.completions
    postings = reads.postings
    if not rows:
        return 0
    for currency, net in reads.nets:
        if net != 0:
            found.append(Discrepancy("imbalance", f"{currency}: credits − debits = {net}"))
    posted = _counts([(t.id.removeprefix(ORDER_PREFIX),) for t in postings])
    amounts = {t.id.removeprefix(ORDER_PREFIX): int(t.amount) for t in postings}
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
        elif charged and amounts.get(order_id) != row["amount"]:
            found.append(
                Discrepancy(
                    "state-ledger-mismatch",
                    f"order of {row['amount']}: posted {amounts.get(order_id)}",
                    [order_id],
                )
            )
    for transfer in postings:
        if transfer.id.removeprefix(ORDER_PREFIX) not in rows:
            found.append(
                Discrepancy("orphaned-charge", "revenue posting with no order", [transfer.id])
            )
    for account_id, credited in reads.revenue.items() if revenue else ():
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
    """One process's periodic reconciliation without a lease (services/sweeps.py runs it once
    per deployment instead); its result is the metric above."""
    node_answers: dict[str, NodeStatus] = {}
    while not stop.is_set():
        await run_once(rt, node_answers)
        await wait_or_stop(stop, interval_s)


async def run_once(rt: Runtime, node_answers: dict[str, NodeStatus]) -> Report | None:
    """One incremental run, its metrics and its log line; None if it could not run."""
    try:
        report = await reconcile_incremental(rt, node_answers=node_answers)
    except Exception as exc:
        log.warning("reconciliation_failed", error=type(exc).__name__)
        return None
    export_metrics(report, rt.clock.now_ms() / 1000)
    if not report.clean:
        log.error("reconciliation_discrepancies", counts=report.kinds())
    return report


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
