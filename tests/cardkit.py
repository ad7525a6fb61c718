"""Card payments harness: payrail's app, the official stripe library and the Stripe simulator,
all in this process and all over HTTP (ASGI transports), driven step by step.

Time is the ShiftableClock: `settle` jumps to the next due webhook delivery, job retry or
sweep instead of sleeping.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from conftest import ADMIN_KEY, SANDBOX_KEY
from sqlalchemy import func, select

from payrail.bootstrap import Runtime, make_provider
from payrail.config import Settings
from payrail.db.tables import (
    jobs,
    order_payments,
    orders,
    provider_events,
    sim_stripe_deliveries,
    sim_stripe_intents,
    transfers,
)
from payrail.domain.orders import AWAITING_PROVIDER
from payrail.entrypoints import worker
from payrail.entrypoints.http.app import create_app
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.psp.simulator import StripeSimulator
from payrail.support.clock import ShiftableClock
from payrail.webhooks import sign

SETTLE_ROUNDS_MAX = 60


@dataclass
class Cards:
    rt: Runtime
    clock: ShiftableClock
    client: httpx.AsyncClient
    sim: StripeSimulator

    # ------------------------------------------------------------ the API

    async def order(self, amount: int = 1_500, currency: str = "usd", **more: Any) -> dict:
        response = await self.client.post(
            "/orders", json={"amount": amount, "currency": currency, **more}
        )
        assert response.status_code == 201, response.text
        return response.json()["data"]

    async def pay(
        self, order_id: str, key: str, method: str = "pm_card_visa", **headers: str
    ) -> httpx.Response:
        return await self.client.post(
            f"/orders/{order_id}/pay",
            json={"paymentMethod": method},
            headers={"Idempotency-Key": key, **headers},
        )

    async def get(self, order_id: str) -> dict:
        response = await self.client.get(f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        return response.json()["data"]

    async def faults(self, **knobs: object) -> None:
        response = await self.client.post(
            "/test/failure-injection",
            json={"enabled": True, **knobs},
            headers={"apikey": ADMIN_KEY},  # the card knobs are global: the admin key sets them
        )
        assert response.status_code == 200, response.text

    async def post_event(self, event: dict, *, age_s: int = 0, secret: str | None = None):
        """POST a Stripe event signed as the simulator would (optionally too old)."""
        body = json.dumps(event).encode()
        secret = secret or self.rt.settings.stripe_webhook_secret
        signature = sign([secret], body, int(time.time()) - age_s)
        return await self.client.post(
            "/webhooks/stripe", content=body, headers={"Stripe-Signature": signature}
        )

    # ------------------------------------------------------------ driving time

    async def settle(self, rounds_max: int = SETTLE_ROUNDS_MAX) -> None:
        """Deliver webhooks, run jobs and sweeps, jump to the next due one; until all is quiet."""
        for _ in range(rounds_max):
            await self.sim.deliver_due()
            await worker.run_until_idle(self.rt)
            due = await self._next_due()
            if due is None:
                return
            self.clock.advance(max(0, due - self.clock.now_ms()) + 1)
        raise AssertionError("still not settled after the round limit")

    async def _next_due(self) -> int | None:
        waiting = [s.value for s in AWAITING_PROVIDER]
        async with self.rt.engine.connect() as conn:
            times = [
                await conn.scalar(
                    select(func.min(sim_stripe_deliveries.c.deliver_at)).where(
                        sim_stripe_deliveries.c.state == "pending"
                    )
                ),
                await conn.scalar(select(func.min(jobs.c.run_at)).where(jobs.c.state == "queued")),
                await conn.scalar(
                    select(func.min(orders.c.check_at)).where(orders.c.status.in_(waiting))
                ),
            ]
        found = [t for t in times if t is not None]
        return min(found) if found else None

    # ------------------------------------------------------------ what happened

    async def rows(self, table: Any, *where: Any) -> list[dict]:
        async with self.rt.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(select(table).where(*where))).mappings()]

    async def count(self, table: Any, *where: Any) -> int:
        async with self.rt.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(table).where(*where)))

    async def charges(self, order_id: str) -> list[dict]:
        """The simulator's intents for an order that charged the card."""
        intents = await self.rows(sim_stripe_intents, sim_stripe_intents.c.status == "succeeded")
        return [i for i in intents if json.loads(i["metadata"]).get("orderId") == order_id]

    async def intents(self, order_id: str) -> list[dict]:
        intents = await self.rows(sim_stripe_intents)
        return [i for i in intents if json.loads(i["metadata"]).get("orderId") == order_id]

    async def payment_log(self, order_id: str) -> list[dict]:
        return await self.rows(order_payments, order_payments.c.order_id == order_id)

    async def ledger_postings(self, order_id: str) -> list[dict]:
        return await self.rows(
            transfers, transfers.c.id.like(f"{acct.order_transfer_id(order_id)}%")
        )

    async def revenue(self, project_id: str, currency: str) -> int:
        async with self.rt.engine.connect() as conn:
            b = await ledger.balance(conn, acct.merchant_revenue(project_id, currency))
        return b.credits_posted if b else 0

    async def events_stored(self) -> int:
        return await self.count(provider_events)


async def open_cards(
    settings: Settings, rt: Runtime, clock: ShiftableClock
) -> AsyncIterator[Cards]:
    app = create_app(settings, runtime=rt, migrate_db=False)
    transport = httpx.ASGITransport(app=app)
    await rt.provider.aclose()
    rt.provider = make_provider(settings, transport)  # the stripe library → the simulator
    sim: StripeSimulator = app.state.stripe_sim
    await sim.connect(transport)  # the simulator's webhooks → payrail
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test/api/v1", headers={"apikey": SANDBOX_KEY}
    ) as client:
        yield Cards(rt, clock, client, sim)
    await sim.aclose()


ADMIN = {"apikey": ADMIN_KEY}
