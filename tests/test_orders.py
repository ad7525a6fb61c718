"""Card payments: the incident's four cases and every failure the pay-in saga must absorb.

Each test drives payrail, the official stripe library and the Stripe simulator over HTTP in
one process, and asserts the state it leaves: the order and its history, the simulator's
charges, the payment log, the ledger and reconciliation, not only status codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets

import pytest
from cardkit import ADMIN, Cards, open_cards
from conftest import PROJECT
from sqlalchemy import select
from typer.testing import CliRunner

from payrail.bootstrap import Runtime, SimulatedCrash
from payrail.config import Settings
from payrail.db.tables import jobs, order_events, orders, provider_events, sim_stripe_deliveries
from payrail.domain.orders import OrderRequest, OrderStatus, PayRequest
from payrail.entrypoints import worker
from payrail.entrypoints.cli import app as cli
from payrail.ledger import ledger
from payrail.services import order_events as events_service
from payrail.services import orders as order_service
from payrail.services.reconcile import reconcile
from payrail.support import logging as payrail_logging
from payrail.support import metrics
from payrail.support.clock import ShiftableClock

RETRY_BASE_MS = 2_000
ATTEMPTS_MAX = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        stripe_timeout_ms=1_000,
        webhook_attempts_max=ATTEMPTS_MAX,
        webhook_retry_base_ms=RETRY_BASE_MS,
    )


@pytest.fixture
async def cards(settings: Settings, rt: Runtime, clock: ShiftableClock):
    async for harness in open_cards(settings, rt, clock):
        yield harness


def counter(metric, **labels) -> float:
    return metric.labels(**labels)._value.get()


async def assert_books_clean(cards: Cards) -> None:
    async with cards.rt.engine.connect() as conn:
        totals = await ledger.totals(conn)
    assert totals.credits_posted == totals.debits_posted, "conservation"
    report = await reconcile(cards.rt)
    assert report.clean, report.discrepancies


async def assert_paid_once(cards: Cards, order: dict) -> None:
    """Exactly one charge, one payment log row and one ledger posting, for this order."""
    (charge,) = await cards.charges(order["id"])
    (logged,) = await cards.payment_log(order["id"])
    (posted,) = await cards.ledger_postings(order["id"])
    assert logged["payment_intent_id"] == charge["id"] == order["paymentIntentId"]
    assert posted["amount"] == logged["amount"] == order["amount"]


# ---------------------------------------------------------------- the incident's four cases


class ProcessWebhooksDuringCreate:
    """The race of the incident: Stripe's webhook is processed while our create call is still
    on its way back, before the order row records the intent."""

    def __init__(self, inner, rt) -> None:
        self.inner, self.rt = inner, rt

    async def create_intent(self, **kwargs):
        intent = await self.inner.create_intent(**kwargs)
        await worker.run_until_idle(self.rt)
        return intent

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_a_webhook_processed_before_the_order_update_is_retried_and_completes_the_order(
    cards: Cards,
):
    await cards.faults(webhookBeforeResponseRate=1.0)
    cards.rt.provider = ProcessWebhooksDuringCreate(cards.rt.provider, cards.rt)
    retried = counter(metrics.WEBHOOK_EVENTS_RETRIED, provider="stripe", reason="order_not_ready")
    order = await cards.order(amount=2_500)

    paid = await cards.pay(order["id"], "pay-1")

    assert paid.status_code == 200, paid.text
    assert paid.json()["data"]["status"] == "payment_submitted"
    (event,) = await cards.rows(provider_events, provider_events.c.type.like("%succeeded"))
    (job,) = await cards.rows(jobs, jobs.c.id == events_service.event_job_id(event["id"]))
    assert (job["state"], job["attempts"]) == ("queued", 1), "tried once, not ready, not dropped"
    assert "not ready: payment_processing" in job["last_error"]
    assert counter(metrics.WEBHOOK_EVENTS_RETRIED, provider="stripe", reason="order_not_ready") == (
        retried + 1
    )
    cards.clock.advance(RETRY_BASE_MS + 1)
    await worker.run_until_idle(cards.rt)

    final = await cards.get(order["id"])
    assert final["status"] == "fulfilled"
    assert final["paymentIntentId"] == paid.json()["data"]["paymentIntentId"]
    assert [h["to"] for h in final["history"]] == [
        "payment_pending",
        "payment_processing",
        "payment_submitted",
        "payment_complete",
        "fulfilled",
    ]
    await assert_paid_once(cards, final)
    assert await cards.revenue(PROJECT, "usd") == 2_500
    await assert_books_clean(cards)


async def test_the_same_webhook_twice_writes_one_payment_log_row(cards: Cards):
    await cards.faults(webhookDuplicateRate=1.0)
    order = await cards.order()
    assert (await cards.pay(order["id"], "pay-1")).status_code == 200

    await cards.settle()

    deliveries = await cards.rows(sim_stripe_deliveries)
    assert len(deliveries) == 4, "created and succeeded, each sent twice"
    assert await cards.events_stored() == 2, "each event id stored once"
    final = await cards.get(order["id"])
    assert final["status"] == "fulfilled"
    await assert_paid_once(cards, final)
    # Stripe resending the same event later changes nothing either.
    (succeeded,) = await cards.rows(
        provider_events, provider_events.c.type == "payment_intent.succeeded"
    )
    again = await cards.post_event(json.loads(succeeded["payload"]))
    assert again.status_code == 200 and again.json()["data"]["duplicate"] is True
    await cards.settle()
    await assert_paid_once(cards, final)
    assert await cards.revenue(PROJECT, "usd") == 1_500
    await assert_books_clean(cards)


@pytest.mark.parametrize("same_key", [False, True], ids=["two-keys", "one-key"])
async def test_two_concurrent_pays_make_one_charge(cards: Cards, same_key: bool):
    order = await cards.order()

    first, second = await asyncio.gather(
        cards.pay(order["id"], "key-a"), cards.pay(order["id"], "key-a" if same_key else "key-b")
    )

    codes = sorted([first.status_code, second.status_code])
    if same_key:  # a retry of one request: both answer what it did
        assert codes == [200, 200], (first.text, second.text)
        assert first.json()["data"]["paymentIntentId"] == second.json()["data"]["paymentIntentId"]
    else:
        assert codes == [200, 409], (first.text, second.text)
        loser = first if first.status_code == 409 else second
        assert loser.json()["data"]["error"] == "ORDER_NOT_PAYABLE"
    assert len(await cards.intents(order["id"])) == 1, "one call reached Stripe"
    await cards.settle()
    final = await cards.get(order["id"])
    assert final["status"] == "fulfilled" and final["payAttempts"] == 1
    await assert_paid_once(cards, final)
    await assert_books_clean(cards)


async def test_a_provider_error_fails_the_order_which_may_then_be_paid_again(cards: Cards):
    await cards.faults(cardCreateErrorRate=1.0)
    order = await cards.order()

    failed = await cards.pay(order["id"], "pay-1")

    assert failed.status_code == 502, failed.text
    body = failed.json()
    assert (body["success"], body["data"]["error"]) == (False, "PROVIDER_ERROR")
    assert body["data"]["status"] == "payment_failed"
    assert "Nothing was charged" in body["message"]
    assert await cards.intents(order["id"]) == []
    replay = await cards.pay(order["id"], "pay-1")
    assert replay.status_code == 502 and "already requested" in replay.json()["message"]
    assert await cards.ledger_postings(order["id"]) == []

    await cards.faults(enabled=False)
    again = await cards.pay(order["id"], "pay-2")
    assert again.status_code == 200, again.text
    await cards.settle()
    final = await cards.get(order["id"])
    assert (final["status"], final["payAttempts"]) == ("fulfilled", 2)
    await assert_paid_once(cards, final)
    await assert_books_clean(cards)


# ---------------------------------------------------------------- declines, timeouts, crashes


async def test_a_declined_card_fails_the_order_and_its_failure_event_changes_nothing(cards: Cards):
    order = await cards.order()

    declined = await cards.pay(order["id"], "pay-1", method="pm_card_chargeDeclined")

    assert declined.status_code == 402, declined.text
    assert declined.json()["data"]["error"] == "CARD_DECLINED"
    await cards.settle()
    final = await cards.get(order["id"])
    assert (final["status"], final["failureCode"]) == ("payment_failed", "CARD_DECLINED")
    (intent,) = await cards.intents(order["id"])
    assert final["paymentIntentId"] == intent["id"] and intent["status"] != "succeeded"
    assert await cards.payment_log(order["id"]) == []
    assert await cards.revenue(PROJECT, "usd") == 0
    await assert_books_clean(cards)


async def test_a_create_that_times_out_stays_unknown_until_the_sweeper_finds_the_charge(
    cards: Cards,
):
    await cards.faults(cardCreateTimeoutRate=1.0, cardCreateTimeoutMs=3_000, webhookDropRate=1.0)
    order = await cards.order()

    timed_out = await cards.pay(order["id"], "pay-1")

    assert timed_out.status_code == 504, timed_out.text
    assert timed_out.json()["data"]["error"] == "PROVIDER_TIMEOUT"
    assert (await cards.get(order["id"]))["status"] == "payment_processing", "unknown, not failed"
    assert len(await cards.charges(order["id"])) == 1, "Stripe did charge"
    again = await cards.pay(order["id"], "pay-2")
    assert again.status_code == 409, "no second attempt while the first is unknown"

    await cards.faults(enabled=False)
    await cards.settle()  # the sweeper asks again with the same key: the same intent

    final = await cards.get(order["id"])
    assert final["status"] == "fulfilled"
    assert "sweeper" in final["history"][2]["cause"]
    await assert_paid_once(cards, final)
    await assert_books_clean(cards)


async def test_a_crash_between_create_and_recording_the_intent_is_recovered(cards: Cards):
    rt = cards.rt
    order = await cards.order()
    rt.crashpoints = {"after_intent_created"}

    with pytest.raises(SimulatedCrash):
        await order_service.pay_order(rt, PROJECT, order["id"], PayRequest("pm_card_visa", "pay-1"))

    rt.crashpoints = set()
    assert (await cards.get(order["id"]))["paymentIntentId"] is None
    await cards.settle()
    final = await cards.get(order["id"])
    assert final["status"] == "fulfilled"
    assert len(await cards.intents(order["id"])) == 1, "asked again with the same key"
    await assert_paid_once(cards, final)
    await assert_books_clean(cards)


async def test_a_dropped_webhook_is_recovered_by_the_sweeper(cards: Cards):
    await cards.faults(webhookDropRate=1.0)
    order = await cards.order()
    assert (await cards.pay(order["id"], "pay-1")).status_code == 200
    await cards.sim.deliver_due()
    await worker.run_until_idle(cards.rt)
    assert await cards.events_stored() == 0
    assert (await cards.get(order["id"]))["status"] == "payment_submitted"

    cards.clock.advance(cards.rt.settings.order_sweep_after_ms + 1)
    await worker.run_until_idle(cards.rt)

    final = await cards.get(order["id"])
    assert final["status"] == "fulfilled"
    assert final["history"][3]["cause"] == "sweeper: Stripe says succeeded"
    await assert_paid_once(cards, final)
    await assert_books_clean(cards)


@pytest.mark.parametrize("fault", ["webhookReorderRate", "webhookDelayRate"])
async def test_reordered_or_delayed_webhooks_complete_the_order_once(cards: Cards, fault: str):
    await cards.faults(**{fault: 1.0})
    order = await cards.order()
    assert (await cards.pay(order["id"], "pay-1")).status_code == 200
    await cards.settle()
    final = await cards.get(order["id"])
    assert final["status"] == "fulfilled"
    assert "webhook" in final["history"][3]["cause"]
    await assert_paid_once(cards, final)


# ---------------------------------------------------------------- signatures and dead events


def event_for(order_id: str, intent_id: str = "pi_unknown") -> dict:
    return {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": 0,
        "data": {
            "object": {
                "id": intent_id,
                "object": "payment_intent",
                "status": "succeeded",
                "amount": 100,
                "currency": "usd",
                "metadata": {"orderId": order_id},
            }
        },
    }


@pytest.mark.parametrize(
    ("age_s", "secret"),
    [(0, "whsec_someone_else"), (301, None)],
    ids=["wrong-secret", "stale"],
)
async def test_bad_or_stale_signatures_are_refused_and_nothing_is_stored(
    cards: Cards, age_s: int, secret: str | None
):
    order = await cards.order()
    response = await cards.post_event(event_for(order["id"]), age_s=age_s, secret=secret)
    unsigned = await cards.client.post("/webhooks/stripe", json=event_for(order["id"]))

    for refused in (response, unsigned):
        assert refused.status_code == 400, refused.text
        assert refused.json()["data"]["error"] == "INVALID_SIGNATURE"
    assert await cards.events_stored() == 0
    assert await cards.count(jobs) == 0


async def test_an_event_for_an_order_never_ready_is_retried_then_dead_then_replayable(
    cards: Cards, settings: Settings
):
    accepted = await cards.post_event(event_for("ord_does_not_exist"))
    assert accepted.status_code == 200, accepted.text
    job_id = events_service.event_job_id(accepted.json()["data"]["eventId"])

    await cards.settle()

    (job,) = await cards.rows(jobs, jobs.c.id == job_id)
    assert (job["state"], job["attempts"]) == ("dead", ATTEMPTS_MAX)
    listed = await cards.client.get("/admin/jobs?state=dead&kind=stripe_event", headers=ADMIN)
    assert [j["id"] for j in listed.json()["data"]["jobs"]] == [job_id]
    refused = await cards.client.post(f"/admin/jobs/{job_id}/replay")
    assert refused.status_code == 403, "replay is for the admin"

    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli.app,
        ["jobs", "replay", job_id],
        env={**os.environ, "PAYRAIL_DATABASE_URL": settings.database_url},
    )
    payrail_logging.configure()  # the command logged to the runner's stream, now closed
    assert result.exit_code == 0, result.output
    (job,) = await cards.rows(jobs, jobs.c.id == job_id)
    assert (job["state"], job["attempts"]) == ("queued", 0)
    twice = await cards.client.post(f"/admin/jobs/{job_id}/replay", headers=ADMIN)
    assert twice.status_code == 409 and twice.json()["data"]["error"] == "JOB_NOT_DEAD"


# ---------------------------------------------------------------- the API's edges


BAD_ORDERS = [
    ({"amount": 10.5, "currency": "usd"}, "INVALID_AMOUNT"),
    ({"amount": 0, "currency": "usd"}, "INVALID_AMOUNT"),
    ({"amount": -100, "currency": "usd"}, "INVALID_AMOUNT"),
    ({"amount": "100", "currency": "usd"}, "INVALID_AMOUNT"),
    ({"amount": True, "currency": "usd"}, "INVALID_AMOUNT"),
    ({"amount": 100_000_000, "currency": "usd"}, "INVALID_AMOUNT"),
    ({"amount": 100, "currency": "usdx"}, "INVALID_CURRENCY"),
    ({"amount": 100, "currency": "xyz"}, "INVALID_CURRENCY"),
    ({"amount": 100, "currency": 840}, "INVALID_CURRENCY"),
    ({"amount": 100}, "VALIDATION_ERROR"),
    ({"amount": 100, "currency": "usd", "customerId": "a b"}, "VALIDATION_ERROR"),
    ({"amount": 100, "currency": "usd", "metadata": {"k": 1}}, "VALIDATION_ERROR"),
    (
        {"amount": 100, "currency": "usd", "metadata": {f"k{i}": "v" for i in range(21)}},
        "VALIDATION_ERROR",
    ),
    ([1, 2], "VALIDATION_ERROR"),
]


async def test_bad_order_input_gets_a_400_envelope_and_creates_nothing(cards: Cards):
    for body, code in BAD_ORDERS:
        response = await cards.client.post("/orders", json=body)
        assert response.status_code == 400, (body, response.text)
        answer = response.json()
        assert (answer["success"], answer["data"]["error"]) == (False, code), body
    assert await cards.count(orders) == 0 and await cards.count(order_events) == 0


async def test_bad_pay_input_and_other_projects_orders_change_nothing(cards: Cards):
    order = await cards.order()
    created = await cards.client.post("/projects", json={"id": "other_studio"}, headers=ADMIN)
    other_key = created.json()["data"]["apiKey"]
    attempts = [
        cards.client.post(f"/orders/{order['id']}/pay", json={"paymentMethod": "pm_card_visa"}),
        cards.pay(order["id"], "k", method="not a method"),
        cards.pay(order["id"], "x" * 201),
        cards.client.post(
            f"/orders/{order['id']}/pay",
            content=b"{nope",
            headers={"Idempotency-Key": "k", "content-type": "application/json"},
        ),
        cards.pay(order["id"], "k", apikey=other_key),
        cards.pay("ord_missing", "k"),
        cards.client.get(f"/orders/{order['id']}", headers={"apikey": other_key}),
    ]
    answers = [await a for a in attempts]
    assert [a.status_code for a in answers] == [400, 400, 400, 400, 404, 404, 404]
    assert all(a.json()["success"] is False for a in answers)
    assert answers[4].json()["data"]["error"] == "ORDER_NOT_FOUND"
    assert (await cards.get(order["id"]))["status"] == "payment_pending"
    assert await cards.intents(order["id"]) == []


async def test_a_pay_replayed_with_its_key_answers_the_same_and_another_body_is_refused(
    cards: Cards,
):
    order = await cards.order()
    first = await cards.pay(order["id"], "pay-1")
    replay = await cards.pay(order["id"], "pay-1")
    other = await cards.pay(order["id"], "pay-1", method="pm_card_mastercard")

    assert (first.status_code, replay.status_code) == (200, 200)
    assert replay.json()["data"]["paymentIntentId"] == first.json()["data"]["paymentIntentId"]
    assert other.status_code == 422 and other.json()["data"]["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert len(await cards.intents(order["id"])) == 1


async def test_orders_list_is_scoped_paginated_and_uppercase_currency_is_accepted(cards: Cards):
    made = [await cards.order(currency="EUR", customerId="cust_1", metadata={"sku": "a"})]
    made += [await cards.order() for _ in range(2)]
    assert made[0]["currency"] == "eur" and made[0]["metadata"] == {"sku": "a"}

    page1 = (await cards.client.get("/orders?limit=2")).json()["data"]
    page2 = (await cards.client.get(f"/orders?limit=2&cursor={page1['nextCursor']}")).json()
    seen = [o["id"] for o in page1["orders"] + page2["data"]["orders"]]
    assert sorted(seen) == sorted(o["id"] for o in made) and len(set(seen)) == 3
    assert page2["data"]["hasMore"] is False


# ---------------------------------------------------------------- money


async def test_revenue_is_credited_once_per_completed_order_per_currency(cards: Cards):
    usd = [await cards.order(amount=a) for a in (1_000, 2_345)]
    eur = await cards.order(amount=999, currency="eur")
    declined = await cards.order(amount=5_000)
    await cards.faults(webhookDuplicateRate=1.0, webhookReorderRate=0.5)
    for o in [*usd, eur]:
        assert (await cards.pay(o["id"], "pay")).status_code == 200
    assert (await cards.pay(declined["id"], "pay", "pm_card_chargeDeclined")).status_code == 402

    await cards.settle()

    assert await cards.revenue(PROJECT, "usd") == 3_345
    assert await cards.revenue(PROJECT, "eur") == 999
    async with cards.rt.engine.connect() as conn:
        clearing = await ledger.balance(conn, "sys:provider_clearing:usd")
    assert clearing is not None and clearing.debits_posted == 3_345
    await assert_books_clean(cards)


async def test_reconcile_names_orphaned_charges_and_orders_completed_twice(cards: Cards):
    paid, orphan = await cards.order(), await cards.order()
    await cards.pay(paid["id"], "pay-1")
    await cards.settle()
    # Stripe charged for `orphan`, but payrail never heard of it (the incident's symptom).
    await cards.rt.provider.create_intent(
        order_id=orphan["id"],
        amount=orphan["amount"],
        currency="usd",
        payment_method="pm_card_visa",
        idempotency_key="made-behind-payrails-back",
    )
    async with cards.rt.engine.begin() as conn:  # and `paid` was completed a second time
        await conn.execute(
            order_events.insert().values(
                order_id=paid["id"],
                from_status="payment_submitted",
                to_status="payment_complete",
                cause="a bug",
                at_ms=cards.clock.now_ms(),
            )
        )

    report = await reconcile(cards.rt)

    kinds = {(d.kind, tuple(d.ids)) for d in report.discrepancies}
    assert ("orphaned-charge", (orphan["id"],)) in {(k, i[:1]) for k, i in kinds}
    assert ("double-payment", (paid["id"],)) in {(k, i[:1]) for k, i in kinds}
    assert report.orders_checked == 2


async def test_order_metrics_count_transitions_and_the_orders_gauge(cards: Cards):
    before = counter(
        metrics.ORDER_TRANSITIONS, from_status="payment_submitted", to_status="payment_complete"
    )
    order = await cards.order()
    await cards.pay(order["id"], "pay-1")
    await cards.settle()

    after = counter(
        metrics.ORDER_TRANSITIONS, from_status="payment_submitted", to_status="payment_complete"
    )
    assert after == before + 1
    scrape = (await cards.client.get("http://test/metrics")).text
    assert 'payrail_orders{status="fulfilled"} 1.0' in scrape
    assert 'payrail_orders{status="payment_pending"} 0.0' in scrape


async def test_service_layer_refuses_a_second_pay_of_a_completed_order(cards: Cards):
    row = await order_service.create_order(cards.rt, OrderRequest(PROJECT, 700, "gbp", None, None))
    await order_service.pay_order(cards.rt, PROJECT, row["id"], PayRequest("pm_card_visa", "a"))
    await cards.settle()
    with pytest.raises(Exception) as refused:
        await order_service.pay_order(cards.rt, PROJECT, row["id"], PayRequest("pm_card_visa", "b"))
    assert getattr(refused.value, "code", None) == "ORDER_NOT_PAYABLE"
    async with cards.rt.engine.connect() as conn:
        status = await conn.scalar(select(orders.c.status).where(orders.c.id == row["id"]))
    assert status == OrderStatus.FULFILLED
    assert len(await cards.charges(row["id"])) == 1
