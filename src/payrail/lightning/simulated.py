"""A simulated Lightning node for the sandbox and tests, with fault injection.

It keeps its own durable record of payments (table sim_node_payments), written in its own
transactions and never inside payrail's, as a separate system's database would be. That is
what lets reconciliation compare payrail's ledger with "the node" honestly.

The node stands for another system, so its record should not cost the payments database a
commit per payout: concurrent pay calls share one INSERT and one commit (group commit, no
timer: a call arriving while a write is on its way joins the next one; grouping.py). Each
call still returns only once its own row is durable.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import secrets
import sqlite3
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.db import bulk
from payrail.db.engine import single_statement
from payrail.db.sqlite import SQLiteEngine
from payrail.db.tables import sim_node_invoices, sim_node_payments
from payrail.lightning.backend import (
    Destination,
    DestinationKind,
    FailureReason,
    Invoice,
    InvoiceState,
    InvoiceStatus,
    NodeStatus,
    PaymentResult,
    UnknownOutcome,
)
from payrail.services.faults import FaultStore
from payrail.support.clock import Clock
from payrail.support.grouping import Grouped

P = sim_node_payments.c
RECORD_GROUP_MAX = 500  # rows per shared INSERT (a bound on one statement's size)
STATUSES_READ_MAX = 500  # payments per query of statuses()
# PostgreSQL: one statement for a whole group, its rows one JSON parameter: plain text, so
# SQLAlchemy compiles it once (its dialect INSERT … ON CONFLICT has no cache key and was
# compiled again for every group).
_RECORD_PG = text(
    f"INSERT INTO sim_node_payments {bulk.json_rows('sim_node_payments')}"
    " ON CONFLICT (payment_id) DO NOTHING RETURNING payment_id"
)
# On SQLite the group is one raw unit on the writer (db/sqlite.py, run_write): a statement per
# row costs microseconds there, less than SQLAlchemy building one multi-row INSERT.
_RECORD_COLUMNS = tuple(c.name for c in sim_node_payments.c)
_RECORD_SQLITE = (
    f"INSERT INTO sim_node_payments ({', '.join(_RECORD_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_RECORD_COLUMNS))}) ON CONFLICT (payment_id) DO NOTHING"
)


# ---------------------------------------------------------------- receiving (deposits)
# Separate from the payout side above: its own table (sim_node_invoices), its own methods.

# The simulated node's signing key: its invoices are real, signed BOLT11 (regtest), so a
# wallet or a decoder reads them as any other; nobody outside the sandbox can pay them.
SIM_NODE_KEY_HEX = hashlib.sha256(b"payrail simulated node key v1").hexdigest()
SIM_INVOICE_CURRENCY = "bcrt"
I = sim_node_invoices.c  # noqa: E741


class SimulatedInvoices:
    """Invoices of the simulated node. `pay_invoice` is the sandbox's stand-in for a payer:
    it marks an invoice paid (even past its expiry, so the late-payment path can be shown)."""

    _engine: AsyncEngine
    _clock: Clock

    async def create_invoice(
        self, amount_sats: int, memo: str, expiry_s: int, webhook_url: str | None = None
    ) -> Invoice:
        import bolt11
        from bolt11.models.tags import Tag, TagChar, Tags

        preimage = secrets.token_bytes(32)
        payment_hash = hashlib.sha256(preimage).hexdigest()
        now = self._clock.now_ms()
        tags = Tags(
            [
                Tag(TagChar.payment_hash, payment_hash),
                Tag(TagChar.payment_secret, secrets.token_hex(32)),
                Tag(TagChar.expire_time, expiry_s),
                Tag(TagChar.description, memo),
            ]
        )
        encoded = bolt11.encode(
            bolt11.Bolt11(
                currency=SIM_INVOICE_CURRENCY,
                date=now // 1000,
                tags=tags,
                amount_msat=bolt11.MilliSatoshi(amount_sats * 1000),
            ),
            SIM_NODE_KEY_HEX,
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                sim_node_invoices.insert().values(
                    payment_hash=payment_hash,
                    bolt11=encoded,
                    amount=amount_sats,
                    state=InvoiceState.OPEN.value,
                    expires_at=now + expiry_s * 1000,
                    created_at=now,
                    paid_at=None,
                )
            )
        return Invoice(encoded, payment_hash)

    async def invoice_status(self, payment_hash: str) -> InvoiceStatus:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(I.state, I.amount).where(I.payment_hash == payment_hash))
            ).first()
        if row is None:
            return InvoiceStatus(InvoiceState.NOT_FOUND)
        state = InvoiceState(row.state)
        return InvoiceStatus(state, row.amount * 1000 if state == InvoiceState.PAID else None)

    async def pay_invoice(self, payment_hash: str) -> bool:
        """Sandbox/test hook: a payer pays this invoice now. False if it was paid already
        or the node never made it (nothing changes then)."""
        async with single_statement(self._engine) as conn:
            result = await conn.execute(
                update(sim_node_invoices)
                .where(I.payment_hash == payment_hash, I.state == InvoiceState.OPEN.value)
                .values(state=InvoiceState.PAID.value, paid_at=self._clock.now_ms())
            )
        return bool(result.rowcount == 1)


class SimulatedNode(SimulatedInvoices):
    """Pays anything: a gamertag by name (sandbox), an invoice, a keysend node key.

    Receives too: its invoices (deposits) are the SimulatedInvoices section below."""

    kinds = frozenset(DestinationKind)

    def __init__(self, engine: AsyncEngine, clock: Clock, faults: FaultStore, seed: int) -> None:
        self._engine = engine
        self._clock = clock
        self._faults = faults
        self.seed = seed
        self._rng = random.Random(seed)
        self._records = Grouped(
            self._record_group, lambda row: row["payment_id"], most=RECORD_GROUP_MAX
        )

    async def aclose(self) -> None:
        return None

    async def pay(
        self, payment_id: str, destination: Destination, amount_sats: int
    ) -> PaymentResult:
        cfg = await self._faults.get()
        roll = self._rng.random()
        now = self._clock.now_ms()
        status, reason, settle_at, ambiguous = NodeStatus.SUCCEEDED, None, None, False
        if cfg.enabled:
            edges = (cfg.timeoutRate, cfg.failureRate, cfg.ambiguousRate)
            if roll < edges[0]:
                status, reason = NodeStatus.FAILED, FailureReason.TIMEOUT.value
            elif roll < edges[0] + edges[1]:
                status, reason = NodeStatus.FAILED, FailureReason.NO_ROUTE.value
            elif roll < sum(edges):
                status, settle_at, ambiguous = (
                    NodeStatus.IN_FLIGHT,
                    now + cfg.ambiguousSettleMs,
                    True,
                )
        label = destination.label()[:64]  # sim_node_payments.destination's width
        if not await self._record(payment_id, label, amount_sats, status, reason, settle_at):
            # A resend: the node already has this payment id and never pays it twice.
            return await self._answer_existing(await self.status(payment_id, destination))
        delay_ms = cfg.latencyMs if cfg.enabled else 0
        if reason == FailureReason.TIMEOUT or ambiguous:
            delay_ms += cfg.timeoutMs
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if ambiguous:
            raise UnknownOutcome(f"simulated: call for {payment_id} timed out, payment in flight")
        return PaymentResult(status, reason)

    async def _answer_existing(self, existing: PaymentResult) -> PaymentResult:
        if existing.status == NodeStatus.IN_FLIGHT:
            raise UnknownOutcome("simulated: payment still in flight")
        return existing

    async def _record(
        self,
        payment_id: str,
        destination: str,
        amount_sats: int,
        status: NodeStatus,
        reason: str | None,
        settle_at: int | None,
    ) -> bool:
        """Insert the payment once; False if another call recorded it first (the resend race)."""
        now = self._clock.now_ms()
        row = dict(
            payment_id=payment_id,
            destination=destination,
            amount=amount_sats,
            status=status.value,
            failure_reason=reason,
            settle_at=settle_at,
            attempts=1,
            created_at=now,
            updated_at=now,
        )
        return await self._records.submit(row)  # type: ignore[no-any-return]

    async def _record_group(self, rows: list[dict[str, Any]]) -> list[bool]:
        """One INSERT for the group: for each row, whether it was recorded now (False: the
        node had that payment id already, a resend that must not pay again). Rows of one
        payment id never share a group (grouping.Grouped's key)."""
        inserted = await self._insert_new(rows)
        return [row["payment_id"] in inserted for row in rows]

    async def _insert_new(self, rows: list[dict[str, Any]]) -> set[str]:
        """One INSERT of the group; the ids it inserted (a recorded id is skipped)."""
        unique = list({row["payment_id"]: row for row in reversed(rows)}.values())
        if isinstance(self._engine, SQLiteEngine):
            return await self._engine.run_write(functools.partial(_insert_sqlite, unique))
        async with single_statement(self._engine) as conn:
            result = await conn.execute(_RECORD_PG, {"rows": json.dumps(unique)})
            return set(result.scalars())

    async def status(self, payment_id: str, destination: Destination) -> PaymentResult:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(P.status, P.failure_reason, P.settle_at).where(
                        P.payment_id == payment_id
                    )
                )
            ).first()
        if row is None:
            return PaymentResult(NodeStatus.NOT_FOUND)
        return PaymentResult(await self._now(payment_id, row), row.failure_reason)

    async def statuses(self, payment_ids: list[str]) -> dict[str, NodeStatus]:
        """status() of many payments, STATUSES_READ_MAX per query (reconciliation asks about
        every payout: one query each was most of its cost). An in-flight payment that is due
        settles here, as in status()."""
        found: dict[str, NodeStatus] = {}
        for start in range(0, len(payment_ids), STATUSES_READ_MAX):
            chunk = payment_ids[start : start + STATUSES_READ_MAX]
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(P.payment_id, P.status, P.settle_at).where(P.payment_id.in_(chunk))
                    )
                ).all()
            for row in rows:
                found[row.payment_id] = await self._now(row.payment_id, row)
        return {pid: found.get(pid, NodeStatus.NOT_FOUND) for pid in payment_ids}

    async def _now(self, payment_id: str, row: Any) -> NodeStatus:
        """A recorded payment's status now: an in-flight one whose time has come settles."""
        status = NodeStatus(row.status)
        if status == NodeStatus.IN_FLIGHT and row.settle_at <= self._clock.now_ms():
            await self._settle(payment_id)
            status = NodeStatus.SUCCEEDED
        return status

    async def _settle(self, payment_id: str) -> None:
        async with single_statement(self._engine) as conn:
            await conn.execute(
                update(sim_node_payments)
                .where(P.payment_id == payment_id, P.status == NodeStatus.IN_FLIGHT.value)
                .values(status=NodeStatus.SUCCEEDED.value, updated_at=self._clock.now_ms())
            )

    async def force(self, payment_id: str, status: NodeStatus) -> None:
        """Sandbox/test hook: settle or fail an in-flight payment now."""
        async with single_statement(self._engine) as conn:
            await conn.execute(
                update(sim_node_payments)
                .where(P.payment_id == payment_id, P.status == NodeStatus.IN_FLIGHT.value)
                .values(status=status.value, updated_at=self._clock.now_ms())
            )


def _insert_sqlite(rows: list[dict[str, Any]], conn: sqlite3.Connection) -> set[str]:
    """_insert_new's group as one unit on SQLite's writer: the ids it inserted."""
    inserted = set()
    for row in rows:
        values = tuple(row[c] for c in _RECORD_COLUMNS)
        if conn.execute(_RECORD_SQLITE, values).rowcount == 1:
            inserted.add(row["payment_id"])
    return inserted
