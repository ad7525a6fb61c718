"""A simulated Lightning node for the sandbox and tests, with fault injection.

It keeps its own durable record of payments (table sim_node_payments), written in its own
transactions and never inside payrail's, as a separate system's database would be. That is
what lets reconciliation compare payrail's ledger with "the node" honestly.
"""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.clock import Clock
from payrail.db.engine import single_statement
from payrail.db.tables import sim_node_payments
from payrail.lightning.backend import (
    Destination,
    DestinationKind,
    FailureReason,
    NodeStatus,
    PaymentResult,
    UnknownOutcome,
)
from payrail.sandbox import FaultStore

P = sim_node_payments.c


class SimulatedNode:
    """Pays anything: a gamertag by name (sandbox), an invoice, a keysend node key."""

    kinds = frozenset(DestinationKind)

    def __init__(self, engine: AsyncEngine, clock: Clock, faults: FaultStore, seed: int) -> None:
        self._engine = engine
        self._clock = clock
        self._faults = faults
        self.seed = seed
        self._rng = random.Random(seed)

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
        try:
            async with single_statement(self._engine) as conn:
                await conn.execute(
                    insert(sim_node_payments),
                    dict(
                        payment_id=payment_id,
                        destination=destination,
                        amount=amount_sats,
                        status=status.value,
                        failure_reason=reason,
                        settle_at=settle_at,
                        attempts=1,
                        created_at=now,
                        updated_at=now,
                    ),
                )
        except IntegrityError:
            return False
        return True

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
        status = NodeStatus(row.status)
        if status == NodeStatus.IN_FLIGHT and row.settle_at <= self._clock.now_ms():
            await self._settle(payment_id)
            status = NodeStatus.SUCCEEDED
        return PaymentResult(status, row.failure_reason)

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
