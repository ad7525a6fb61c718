"""1,000 card payments at once on PostgreSQL against the Stripe simulator, with every webhook
fault on: duplicated, reordered, delayed, dropped, delivered before the create call answers,
plus create errors and timeouts. The worker runs alongside the payments, as in production.

The run ends with every order final, exactly one charge, one payment log row and one ledger
posting per fulfilled order, none per failed one, and reconciliation clean (zero orphaned
charges). Time goes unasserted (it is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections import Counter

import pytest
from cardkit import Cards, open_cards
from conftest import PROJECT

from payrail.bootstrap import Runtime
from payrail.config import Settings
from payrail.db.tables import order_payments, orders, sim_stripe_intents
from payrail.domain.orders import OrderRequest
from payrail.entrypoints import worker
from payrail.services import orders as order_service
from payrail.services.reconcile import reconcile
from payrail.support import logging as payrail_logging
from payrail.support.clock import ShiftableClock

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

ORDERS = 1_000
IN_FLIGHT_MAX = 200  # concurrent HTTP requests from the "customers"
FAULTS = {
    "webhookDuplicateRate": 0.2,
    "webhookReorderRate": 0.2,
    "webhookDelayRate": 0.2,
    "webhookDelayMs": 5_000,
    "webhookDropRate": 0.1,
    "webhookBeforeResponseRate": 0.2,
    "cardCreateErrorRate": 0.02,
    "cardCreateTimeoutRate": 0.01,
    "cardCreateTimeoutMs": 6_000,
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        stripe_timeout_ms=5_000,
        order_sweep_after_ms=30_000,
        db_pool_size=40,
        worker_batch_max=200,
    )


@pytest.fixture
async def cards(settings: Settings, rt: Runtime, clock: ShiftableClock):
    payrail_logging.configure("warning")  # 10,000 request log lines cost more than the saga
    try:
        async for harness in open_cards(settings, rt, clock):
            yield harness
    finally:
        payrail_logging.configure()


async def worker_alongside(cards: Cards, stop: asyncio.Event) -> None:
    """The worker and the simulator's deliveries, running while the payments come in."""
    while not stop.is_set():
        ran = await worker.run_once(cards.rt) + await cards.sim.deliver_due()
        if not ran:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)


async def test_a_thousand_concurrent_card_payments_with_webhook_faults_charge_each_order_once(
    cards: Cards, seed: int
):
    await cards.faults(**FAULTS)
    gate = asyncio.Semaphore(IN_FLIGHT_MAX)

    async def bounded(call):
        async with gate:
            return await call

    made = [
        await order_service.create_order(
            cards.rt, OrderRequest(PROJECT, 100 + (i * 37) % 9_900, "usd", None, None)
        )
        for i in range(ORDERS)
    ]
    started = time.perf_counter()
    stop = asyncio.Event()
    alongside = asyncio.create_task(worker_alongside(cards, stop))
    answers = await asyncio.gather(*(bounded(cards.pay(o["id"], f"pay-{o['id']}")) for o in made))
    stop.set()
    await alongside
    await cards.settle(rounds_max=200)
    elapsed_s = time.perf_counter() - started

    codes = Counter(a.status_code for a in answers)
    assert set(codes) <= {200, 502, 504}, codes
    rows = {r["id"]: r for r in await cards.rows(orders)}
    statuses = Counter(r["status"] for r in rows.values())
    intents = await cards.rows(sim_stripe_intents, sim_stripe_intents.c.status == "succeeded")
    charges = Counter(json.loads(i["metadata"])["orderId"] for i in intents)
    logged = Counter(r["order_id"] for r in await cards.rows(order_payments))
    report = await reconcile(cards.rt)
    print(
        f"\n{ORDERS} orders in {elapsed_s:.1f} s (seed {seed}): answers {dict(codes)}, "
        f"final {dict(statuses)}, charges {sum(charges.values())}, "
        f"log rows {sum(logged.values())}, discrepancies {report.kinds()}"
    )

    assert set(statuses) <= {"fulfilled", "payment_failed"}, statuses
    for order_id, row in rows.items():
        paid = row["status"] == "fulfilled"
        assert charges[order_id] == logged[order_id] == (1 if paid else 0), row
    assert statuses["fulfilled"] >= ORDERS * 0.9, "the faults, not the saga, failed the rest"
    revenue = sum(r["amount"] for r in rows.values() if r["status"] == "fulfilled")
    assert await cards.revenue(PROJECT, "usd") == revenue
    assert report.clean and report.orders_checked == ORDERS, report.discrepancies
