"""The payout engine through HTTP: concurrent requests grouped into shared transactions, each
answered as alone; one live payout per invoice; one payout per internal id. Balances are
asserted for every answer, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import bolt11
from conftest import ADMIN_KEY
from lightning_kit import make_invoice
from sqlalchemy import select

from payrail.db.tables import accounts, callbacks, jobs, payouts
from payrail.domain.money import fee_sats
from payrail.services.reconcile import reconcile

ADMIN = {"apikey": ADMIN_KEY}
FUNDS = 50_000


async def _project(client, project_id: str, funds: int = FUNDS) -> None:
    created = await client.post("/projects", json={"id": project_id}, headers=ADMIN)
    assert created.status_code == 201, created.text
    funded = await client.post(
        f"/projects/{project_id}/fund", json={"amount": funds}, headers=ADMIN
    )
    assert funded.status_code == 200, funded.text


async def _balance(rt, project_id: str) -> tuple[int, int, int]:
    """(debits_pending, debits_posted, credits_posted) of the project's account."""
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    accounts.c.debits_pending, accounts.c.debits_posted, accounts.c.credits_posted
                ).where(accounts.c.id == f"project:{project_id}")
            )
        ).one()
    return tuple(row)


async def test_concurrent_payouts_finish_in_shared_transactions_with_exact_balances(client, rt):
    """Completed, failed and callback payouts mixed in the same groups each end as alone."""
    await _project(client, "eg_group")
    before = rt.payout_store.calls
    await client.post(
        "/test/failure-injection", json={"enabled": True, "failureRate": 0.3}, headers=ADMIN
    )
    bodies = [
        {"gamertag": f"grp{i}", "amount": 100 + i, "projectId": "eg_group"}
        | ({"callbackUrl": "http://127.0.0.1:9/hook"} if i % 7 == 0 else {})
        for i in range(40)
    ]
    answers = await asyncio.gather(
        *(client.post("/payouts", json=b, headers=ADMIN) for b in bodies)
    )
    await client.post(
        "/test/failure-injection", json={"enabled": False, "failureRate": 0.0}, headers=ADMIN
    )
    codes = Counter(a.status_code for a in answers)
    assert set(codes) <= {201, 502} and codes[201] > 0, codes
    paid = sum(
        b["amount"] + fee_sats(b["amount"])
        for b, a in zip(bodies, answers, strict=True)
        if a.status_code == 201
    )
    assert await _balance(rt, "eg_group") == (0, paid, FUNDS)
    async with rt.engine.connect() as conn:
        for body, answer in zip(bodies, answers, strict=True):
            data = answer.json()["data"]
            payout_id = data.get("id") or data["payoutId"]
            state = await conn.scalar(select(payouts.c.state).where(payouts.c.id == payout_id))
            assert state == ("completed" if answer.status_code == 201 else "failed")
            job = await conn.scalar(select(jobs.c.state).where(jobs.c.id == f"settle:{payout_id}"))
            assert job == "done"
            events = await conn.scalars(
                select(callbacks.c.sequence).where(callbacks.c.payout_id == payout_id)
            )
            assert sorted(events) == ([1, 2] if "callbackUrl" in body else [])
    # Grouped: fewer engine transactions than one lookup, one reservation and one final
    # transition per payout (SQLite's writer groups COMMITs, PostgreSQL's store groups calls).
    assert rt.payout_store.calls - before <= 3 * 40 * 4
    assert (await reconcile(rt)).clean


async def test_concurrent_reservations_are_each_decided_as_alone(client, rt):
    """Refusals of every kind mixed with payouts in the same groups, each answered as alone:
    nothing charged twice or for a refusal, the balance and the rate limit exact."""
    funds = 15 * (1_000 + fee_sats(1_000))  # room for 15 of the 20 below
    await _project(client, "eg_mix", funds)
    await _project(client, "eg_mix2")
    requests = (
        [({"gamertag": f"mix{i}", "amount": 1_000, "projectId": "eg_mix"}, None) for i in range(20)]
        + [({"gamertag": "Hot", "amount": 10, "projectId": "eg_mix2"}, None) for _ in range(12)]
        + [
            ({"gamertag": f"twice{k}", "amount": 20, "projectId": "eg_mix2"}, f"twice-{k}")
            for k in range(5)
            for _ in range(2)
        ]
        + [({"gamertag": "nobody", "amount": 10, "projectId": "eg_none"}, None)] * 3
    )
    answers = await asyncio.gather(
        *(
            client.post(
                "/payouts", json=body, headers=ADMIN | ({"Idempotency-Key": key} if key else {})
            )
            for body, key in requests
        )
    )
    by_kind = Counter(
        (body["projectId"], body["gamertag"][:3], a.status_code)
        for (body, _), a in zip(requests, answers, strict=True)
    )
    assert by_kind[("eg_mix", "mix", 201)] == 15 and by_kind[("eg_mix", "mix", 402)] == 5
    assert by_kind[("eg_mix2", "Hot", 201)] == 10 and by_kind[("eg_mix2", "Hot", 429)] == 2
    assert by_kind[("eg_none", "nob", 404)] == 3
    for k in range(5):
        pair = [a for (b, key), a in zip(requests, answers, strict=True) if key == f"twice-{k}"]
        assert sorted(a.status_code for a in pair) in ([200, 201], [201, 201]), pair
        assert pair[0].json()["data"]["id"] == pair[1].json()["data"]["id"]
    assert await _balance(rt, "eg_mix") == (0, funds, funds)
    spent2 = 10 * (10 + fee_sats(10)) + 5 * (20 + fee_sats(20))
    assert await _balance(rt, "eg_mix2") == (0, spent2, FUNDS)
    assert (await reconcile(rt)).clean


async def test_one_invoice_is_paid_by_at_most_one_live_payout(client, rt):
    """20 concurrent payouts of one invoice, from two projects: one is paid; every other is a
    409 INVOICE_ALREADY_USED that charged nothing."""
    await _project(client, "inv_a")
    await _project(client, "inv_b")
    invoice = make_invoice(700_000)
    bodies = [
        {"invoice": invoice, "amount": 700, "projectId": f"inv_{'ab'[i % 2]}"} for i in range(20)
    ]
    answers = await asyncio.gather(
        *(client.post("/payouts", json=b, headers=ADMIN) for b in bodies)
    )
    codes = Counter(a.status_code for a in answers)
    assert codes == {201: 1, 409: 19}, codes
    refused = [a.json() for a in answers if a.status_code == 409]
    assert {r["data"]["error"] for r in refused} == {"INVOICE_ALREADY_USED"}
    winner = next(b for b, a in zip(bodies, answers, strict=True) if a.status_code == 201)
    cost = 700 + fee_sats(700)
    for project in ("inv_a", "inv_b"):
        expected = (0, cost, FUNDS) if project == winner["projectId"] else (0, 0, FUNDS)
        assert await _balance(rt, project) == expected, project
    paid = next(a for a in answers if a.status_code == 201).json()["data"]
    assert paid["paymentHash"] == bolt11.decode(invoice).payment_hash
    assert (await reconcile(rt)).clean


async def test_an_invoice_is_free_again_once_its_payout_was_voided(client, rt):
    await _project(client, "inv_void")
    invoice = make_invoice(500_000)
    body = {"invoice": invoice, "amount": 500, "projectId": "inv_void"}
    await client.post(
        "/test/failure-injection", json={"enabled": True, "failureRate": 1.0}, headers=ADMIN
    )
    failed = await client.post("/payouts", json=body, headers=ADMIN)
    await client.post(
        "/test/failure-injection", json={"enabled": False, "failureRate": 0.0}, headers=ADMIN
    )
    assert failed.status_code == 502, failed.text
    assert await _balance(rt, "inv_void") == (0, 0, FUNDS)  # voided: nothing charged
    again = await client.post("/payouts", json=body, headers=ADMIN)
    assert again.status_code == 201, again.text
    assert await _balance(rt, "inv_void") == (0, 500 + fee_sats(500), FUNDS)


async def test_an_internal_id_names_one_payout_per_project(client, rt):
    await _project(client, "iid_a")
    await _project(client, "iid_b")
    first = await client.post(
        "/payouts",
        json={"gamertag": "ann", "amount": 100, "projectId": "iid_a", "internalId": "order-7"},
        headers=ADMIN,
    )
    assert first.status_code == 201, first.text
    second = await client.post(
        "/payouts",
        json={"gamertag": "bob", "amount": 200, "projectId": "iid_a", "internalId": "order-7"},
        headers=ADMIN,
    )
    assert second.status_code == 409, second.text
    assert second.json()["data"]["error"] == "INTERNAL_ID_TAKEN"
    assert second.json()["data"]["payoutId"] == first.json()["data"]["id"]
    assert await _balance(rt, "iid_a") == (0, 100 + fee_sats(100), FUNDS)  # nothing for bob
    other = await client.post(
        "/payouts",
        json={"gamertag": "bob", "amount": 200, "projectId": "iid_b", "internalId": "order-7"},
        headers=ADMIN,
    )
    assert other.status_code == 201, other.text  # another project's ids are its own
