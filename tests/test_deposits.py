"""Deposits (money in) against the simulated node, on SQLite and PostgreSQL: the API, the one
credit path under concurrency, the watcher's bounded schedule, expiry and late payments, the
push that is only a reason to ask. Every money path asserts the project's balance and the
ledger's transfers, not only status codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import bolt11
import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of
from sqlalchemy import func, select, update

from payrail.bootstrap import Runtime
from payrail.config import Settings
from payrail.db.tables import deposits as deposits_table
from payrail.db.tables import jobs, sim_node_invoices, transfers
from payrail.domain.deposits import DepositStatus, WatchPlan, transfer_id
from payrail.entrypoints import worker
from payrail.entrypoints.http.app import create_app
from payrail.lightning.backend import InvoiceState, InvoiceStatus, UnknownOutcome
from payrail.services import deposits, projects
from payrail.support.clock import ShiftableClock

ADMIN = {"apikey": ADMIN_KEY}
CONCURRENT = 50


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, deposit_late_window_ms=600_000)


async def _open(client: httpx.AsyncClient, amount: int = 5_000, **extra: object) -> dict:
    answer = await client.post(f"/projects/{PROJECT}/deposits", json={"amount": amount, **extra})
    assert answer.status_code == 201, answer.text
    data = answer.json()["data"]
    assert data["status"] == "open"
    return data


async def _credits(rt: Runtime, payment_hash: str) -> list[tuple[str, int]]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(transfers.c.credit_account_id, transfers.c.amount).where(
                transfers.c.id == transfer_id(payment_hash)
            )
        )
        return [(r.credit_account_id, int(r.amount)) for r in rows]


async def _pay_at_node(rt: Runtime, payment_hash: str) -> None:
    assert await rt.node.pay_invoice(payment_hash)  # type: ignore[attr-defined]


async def _watch(rt: Runtime, clock: ShiftableClock, ms: int) -> int:
    clock.advance(ms)
    return await worker.run_until_idle(rt)


# ---------------------------------------------------------------- the API


async def test_create_answers_an_open_deposit_with_a_real_invoice_for_the_amount(client):
    data = await _open(client, 2_100, description="Gems", expiresInS=600)
    assert data["projectId"] == PROJECT and data["amount"] == 2_100
    decoded = bolt11.decode(data["invoice"])
    assert decoded.amount_msat == 2_100_000
    assert decoded.payment_hash == data["paymentHash"]
    assert decoded.description == "Gems"
    assert data["expiresAt"] and data["completedAt"] is None and data["late"] is False
    again = await client.get(f"/deposits/{data['id']}")
    assert again.status_code == 200 and again.json()["data"] == data


async def test_paid_deposit_credits_the_project_once_and_never_again(client, rt):
    before = await balance_of(client)
    data = await _open(client, 3_000)
    assert await balance_of(client) == before  # an open deposit credits nothing
    paid = await client.post(f"/test/deposits/{data['id']}/pay")
    assert paid.status_code == 200, paid.text
    assert paid.json()["data"]["status"] == "completed"
    assert await balance_of(client) == before + 3_000
    for _ in range(3):  # explicit checks, the watcher, a second sandbox payment: nothing more
        checked = await client.post(f"/deposits/{data['id']}/check")
        assert checked.json()["data"]["status"] == "completed"
    await worker.run_until_idle(rt)
    assert (await client.post(f"/test/deposits/{data['id']}/pay")).status_code == 200
    assert await balance_of(client) == before + 3_000
    assert await _credits(rt, data["paymentHash"]) == [(f"project:{PROJECT}", 3_000)]


async def test_idempotency_key_answers_the_same_deposit_and_refuses_another_body(client, rt):
    headers = {"Idempotency-Key": "topup-1"}
    first = await client.post(
        f"/projects/{PROJECT}/deposits", json={"amount": 700}, headers=headers
    )
    assert first.status_code == 201, first.text
    again = await client.post(
        f"/projects/{PROJECT}/deposits", json={"amount": 700}, headers=headers
    )
    assert again.status_code == 200
    assert again.json()["data"] == first.json()["data"]
    other = await client.post(
        f"/projects/{PROJECT}/deposits", json={"amount": 701}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["data"]["error"] == "IDEMPOTENCY_KEY_REUSED"
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(deposits_table)) == 1


async def test_concurrent_creates_with_one_key_make_one_deposit(client, rt):
    headers = {"Idempotency-Key": "race-1"}
    answers = await asyncio.gather(
        *(
            client.post(f"/projects/{PROJECT}/deposits", json={"amount": 900}, headers=headers)
            for _ in range(10)
        )
    )
    assert sorted(a.status_code for a in answers) == [200] * 9 + [201]
    assert len({a.json()["data"]["id"] for a in answers}) == 1
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(deposits_table)) == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "VALIDATION_ERROR"),
        ({"amount": 0}, "INVALID_AMOUNT"),
        ({"amount": 1.5}, "INVALID_AMOUNT"),
        ({"amount": True}, "INVALID_AMOUNT"),
        ({"amount": "100"}, "INVALID_AMOUNT"),
        ({"amount": 10**12}, "INVALID_AMOUNT"),
        ({"amount": 100, "expiresInS": 5}, "VALIDATION_ERROR"),
        ({"amount": 100, "expiresInS": "60"}, "VALIDATION_ERROR"),
        ({"amount": 100, "description": 7}, "VALIDATION_ERROR"),
        ({"amount": 100, "description": "x" * 145}, "DESCRIPTION_TOO_LONG"),
        ({"amount": 100, "description": "nul\x00"}, "VALIDATION_ERROR"),
        ([1, 2], "VALIDATION_ERROR"),
    ],
)
async def test_bad_input_is_a_400_and_makes_nothing(client, rt, body, code):
    answer = await client.post(f"/projects/{PROJECT}/deposits", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["data"]["error"] == code
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(deposits_table)) == 0
        assert await conn.scalar(select(func.count()).select_from(sim_node_invoices)) == 0


async def test_keys_act_only_on_their_project(client, rt):
    other = await projects.create_project(rt, "studio_other", "Other")
    mine = await _open(client)
    as_other = {"apikey": other.api_key}
    made = await client.post(f"/projects/{PROJECT}/deposits", json={"amount": 10}, headers=as_other)
    assert made.status_code == 403
    assert (await client.get(f"/deposits/{mine['id']}", headers=as_other)).status_code == 404
    listed = await client.get(f"/projects/{PROJECT}/deposits", headers=as_other)
    assert listed.status_code == 403
    before = await balance_of(client)
    paid = await client.post(f"/test/deposits/{mine['id']}/pay", headers=as_other)
    assert paid.status_code == 404 and paid.json()["data"]["error"] == "DEPOSIT_NOT_FOUND"
    checked = await client.post(f"/deposits/{mine['id']}/check", headers=as_other)
    assert checked.status_code == 404
    assert await balance_of(client) == before
    # The admin key acts on any project.
    admin_made = await client.post(
        "/projects/studio_other/deposits", json={"amount": 10}, headers=ADMIN
    )
    assert admin_made.status_code == 201
    unknown = await client.post("/projects/nope_nope/deposits", json={"amount": 10}, headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["data"]["error"] == "PROJECT_NOT_FOUND"


async def test_list_is_paginated_newest_first_and_filters_by_status(client, clock):
    made = []
    for amount in range(1, 6):
        made.append(await _open(client, amount))
        clock.advance(1)
    await client.post(f"/test/deposits/{made[1]['id']}/pay")
    page = await client.get(f"/projects/{PROJECT}/deposits", params={"limit": 2})
    data = page.json()["data"]
    assert [d["amount"] for d in data["deposits"]] == [5, 4] and data["hasMore"]
    seen = [d["id"] for d in data["deposits"]]
    while data["hasMore"]:
        page = await client.get(
            f"/projects/{PROJECT}/deposits", params={"limit": 2, "cursor": data["nextCursor"]}
        )
        data = page.json()["data"]
        seen += [d["id"] for d in data["deposits"]]
    assert seen == [d["id"] for d in reversed(made)]
    done = await client.get(f"/projects/{PROJECT}/deposits", params={"status": "completed"})
    assert [d["id"] for d in done.json()["data"]["deposits"]] == [made[1]["id"]]
    bad = await client.get(f"/projects/{PROJECT}/deposits", params={"status": "paid"})
    assert bad.status_code == 400 and bad.json()["data"]["error"] == "INVALID_STATUS"
    bad = await client.get(f"/projects/{PROJECT}/deposits", params={"cursor": "zzz"})
    assert bad.status_code == 400


async def test_sandbox_routes_are_404_in_production(settings, rt):
    prod = dataclasses.replace(settings, mode="production")
    app = create_app(prod, runtime=rt, migrate_db=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test/api/v1", headers=ADMIN
    ) as c:
        answer = await c.post("/test/deposits/dep_x/pay")
    assert answer.status_code == 404 and answer.json()["data"]["error"] == "NOT_FOUND"


# ---------------------------------------------------------------- exactly once under load


async def test_fifty_concurrent_checks_and_pushes_credit_exactly_once(client, rt):
    before = await balance_of(client)
    data = await _open(client, 4_321)
    await _pay_at_node(rt, data["paymentHash"])
    push = {"payment_hash": data["paymentHash"], "amount": 4_321_000}
    calls = []
    for i in range(CONCURRENT):
        if i % 2:
            calls.append(client.post("/webhooks/lnbits/deposits", json=push, headers={}))
        else:
            calls.append(client.post(f"/deposits/{data['id']}/check"))
    answers = await asyncio.gather(*calls)
    assert Counter(a.status_code for a in answers) == {200: CONCURRENT}, [
        a.text for a in answers if a.status_code != 200
    ]
    assert {a.json()["data"]["status"] for a in answers} == {"completed"}
    await worker.run_until_idle(rt)
    assert await balance_of(client) == before + 4_321
    assert await _credits(rt, data["paymentHash"]) == [(f"project:{PROJECT}", 4_321)]
    async with rt.engine.connect() as conn:
        inbound = await conn.scalar(
            select(func.count())
            .select_from(transfers)
            .where(transfers.c.debit_account_id == deposits.INBOUND_ACCOUNT)
        )
    assert inbound == 1


async def test_many_deposits_paid_at_once_each_credit_their_own_amount(client, rt):
    before = await balance_of(client)
    made = [await _open(client, 100 + i) for i in range(20)]
    for d in made:
        await _pay_at_node(rt, d["paymentHash"])
    answers = await asyncio.gather(
        *(client.post(f"/deposits/{d['id']}/check") for d in made for _ in range(3))
    )
    assert {a.status_code for a in answers} == {200}
    assert await balance_of(client) == before + sum(100 + i for i in range(20))


# ---------------------------------------------------------------- the push


async def test_a_push_for_an_unpaid_invoice_credits_nothing(client, rt):
    before = await balance_of(client)
    data = await _open(client, 800)
    forged = {"payment_hash": data["paymentHash"], "paid": True, "amount": 800_000}
    answer = await client.post("/webhooks/lnbits/deposits", json=forged, headers={})
    assert answer.status_code == 200
    assert answer.json()["data"] == {"paymentHash": data["paymentHash"], "status": "open"}
    assert await balance_of(client) == before
    assert await _credits(rt, data["paymentHash"]) == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "VALIDATION_ERROR"),
        ({"payment_hash": "xyz"}, 400, "VALIDATION_ERROR"),
        ({"payment_hash": "ab" * 32}, 404, "DEPOSIT_NOT_FOUND"),
        ("just a string", 400, "VALIDATION_ERROR"),
        ('{"payment_hash": "ab"}', 400, "VALIDATION_ERROR"),
        ([{"payment_hash": "ab" * 32}], 400, "VALIDATION_ERROR"),
    ],
)
async def test_a_bad_or_unknown_push_is_refused(client, body, status, code):
    answer = await client.post("/webhooks/lnbits/deposits", json=body, headers={})
    assert answer.status_code == status, answer.text
    assert answer.json()["data"]["error"] == code


# ---------------------------------------------------------------- the watcher


async def test_the_watcher_credits_a_paid_deposit_without_any_request(client, rt, clock):
    before = await balance_of(client)
    data = await _open(client, 1_500)
    await _pay_at_node(rt, data["paymentHash"])
    assert await balance_of(client) == before  # nobody asked yet
    await _watch(rt, clock, rt.settings.deposit_check_base_ms)
    assert (await client.get(f"/deposits/{data['id']}")).json()["data"]["status"] == "completed"
    assert await balance_of(client) == before + 1_500
    async with rt.engine.connect() as conn:
        state = await conn.scalar(
            select(jobs.c.state).where(jobs.c.id == deposits.watch_job_id(data["id"]))
        )
    assert state == "done"  # a completed deposit is no longer polled


async def test_the_watcher_backs_off_and_asks_only_open_deposits(client, rt, clock):
    """Count the backend's answers: an open deposit is asked at growing intervals, a
    completed one never again."""
    asked: Counter[str] = Counter()
    real = rt.node.invoice_status

    async def counting(payment_hash: str) -> InvoiceStatus:
        asked[payment_hash] += 1
        return await real(payment_hash)

    rt.node.invoice_status = counting  # type: ignore[method-assign]
    waiting = await _open(client, 10, expiresInS=3_600)
    paid = await _open(client, 20, expiresInS=3_600)
    await client.post(f"/test/deposits/{paid['id']}/pay")
    asked.clear()
    # One minute of watching, in 100 ms steps.
    for _ in range(600):
        clock.advance(100)
        await worker.run_once(rt)
    assert asked[paid["paymentHash"]] == 0
    # Base 1 s doubling to a 30 s cap, each with jitter in its upper half: within a minute,
    # at least 4 checks (1+2+4+8+16 < 60 at most) and never one per step.
    assert 4 <= asked[waiting["paymentHash"]] <= 10, asked


async def test_the_deposit_lane_runs_at_most_its_limit_per_run(settings, rt, clock, client):
    limited = dataclasses.replace(settings, deposit_checks_max=3)
    rt.settings = limited
    for i in range(7):
        await _open(client, 10 + i)
    clock.advance(limited.deposit_check_base_ms)
    dispatcher = worker.Dispatcher(rt)
    started = await dispatcher.fill()
    await dispatcher.drain()
    assert started == 3
    assert await worker.run_until_idle(rt) >= 4  # the rest on later runs


async def test_an_unanswered_check_changes_nothing_and_is_asked_again(client, rt, clock):
    before = await balance_of(client)
    data = await _open(client, 600)
    await _pay_at_node(rt, data["paymentHash"])
    real = rt.node.invoice_status

    async def silent(payment_hash: str) -> InvoiceStatus:
        raise UnknownOutcome("backend down")

    rt.node.invoice_status = silent  # type: ignore[method-assign]
    answer = await client.post(f"/deposits/{data['id']}/check")
    assert answer.status_code == 503
    assert answer.json()["data"]["error"] == "LIGHTNING_BACKEND_UNAVAILABLE"
    await _watch(rt, clock, 5_000)
    # Past expiry too: a deposit is never expired without the backend's own answer.
    await _watch(rt, clock, 3_600_000)
    row = (await client.get(f"/deposits/{data['id']}")).json()["data"]
    assert row["status"] == "open"
    assert await balance_of(client) == before
    rt.node.invoice_status = real  # type: ignore[method-assign]
    await _watch(rt, clock, rt.settings.deposit_check_cap_ms)
    row = (await client.get(f"/deposits/{data['id']}")).json()["data"]
    assert row["status"] == "completed" and row["late"] is False
    assert await balance_of(client) == before + 600


# ---------------------------------------------------------------- expiry and late payments


async def test_expiry_voids_nothing_and_a_late_payment_is_credited_and_marked_late(
    client, rt, clock
):
    before = await balance_of(client)
    data = await _open(client, 2_000, expiresInS=60)
    await _watch(rt, clock, 60_000)  # the watcher asks once more at expiry: not paid
    row = (await client.get(f"/deposits/{data['id']}")).json()["data"]
    assert row["status"] == "expired" and row["expiredAt"]
    assert await balance_of(client) == before
    # The payment arrives after expiry (a node that still accepted it): the watcher, still
    # watching in the late window, credits it.
    await _pay_at_node(rt, data["paymentHash"])
    await _watch(rt, clock, rt.settings.deposit_check_cap_ms)
    row = (await client.get(f"/deposits/{data['id']}")).json()["data"]
    assert row["status"] == "completed" and row["late"] is True
    assert await balance_of(client) == before + 2_000
    assert await _credits(rt, data["paymentHash"]) == [(f"project:{PROJECT}", 2_000)]


async def test_after_the_late_window_the_watch_ends_but_a_push_still_credits(client, rt, clock):
    before = await balance_of(client)
    data = await _open(client, 900, expiresInS=60)
    await _watch(rt, clock, 60_000)
    await _watch(rt, clock, rt.settings.deposit_late_window_ms + 60_000)
    async with rt.engine.connect() as conn:
        state = await conn.scalar(
            select(jobs.c.state).where(jobs.c.id == deposits.watch_job_id(data["id"]))
        )
    assert state == "done"
    await _pay_at_node(rt, data["paymentHash"])
    push = await client.post(
        "/webhooks/lnbits/deposits", json={"payment_hash": data["paymentHash"]}, headers={}
    )
    assert push.json()["data"]["status"] == "completed"
    assert await balance_of(client) == before + 900


async def test_a_deposit_is_not_expired_before_its_time(client, rt, clock):
    data = await _open(client, 50, expiresInS=600)
    await _watch(rt, clock, 599_000)
    assert (await client.get(f"/deposits/{data['id']}")).json()["data"]["status"] == "open"
    await _watch(rt, clock, 1_000)
    assert (await client.get(f"/deposits/{data['id']}")).json()["data"]["status"] == "expired"


# ---------------------------------------------------------------- the rules themselves


def test_watch_plan_doubles_to_its_cap_meets_expiry_and_stops_after_the_late_window():
    p = WatchPlan(check_base_ms=1_000, check_cap_ms=8_000, late_window_ms=60_000)
    open_, expired = DepositStatus.OPEN, DepositStatus.EXPIRED
    assert p.next_check_ms(open_, 1, 10**9, 0, 1000) == 1_000
    assert p.next_check_ms(open_, 1, 10**9, 0, 0) == 500
    assert p.next_check_ms(open_, 3, 10**9, 0, 1000) == 4_000
    assert p.next_check_ms(open_, 20, 10**9, 0, 1000) == 8_000  # capped
    assert p.next_check_ms(open_, 20, 3_000, 0, 1000) == 3_000  # once more at expiry
    assert p.next_check_ms(expired, 20, 3_000, 62_999, 1000) == 70_999
    assert p.next_check_ms(expired, 20, 3_000, 63_000, 1000) is None
    assert p.next_check_ms(DepositStatus.COMPLETED, 1, 10**9, 0, 0) is None


async def test_underpaid_answer_from_a_backend_is_not_credited(client, rt):
    before = await balance_of(client)
    data = await _open(client, 1_000)
    row = await deposits.get_deposit(rt, data["id"])
    after = await deposits.apply(rt, row, InvoiceStatus(InvoiceState.PAID, 999_000), cause="test")
    assert after["status"] == "open"
    assert await balance_of(client) == before


async def test_a_second_credit_for_one_hash_is_refused_by_the_ledger(client, rt):
    """The guard is the status; the transfer id is the backstop: even with the row forced
    back to open, a second credit for the hash cannot be written."""
    before = await balance_of(client)
    data = await _open(client, 1_234)
    await client.post(f"/test/deposits/{data['id']}/pay")
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(deposits_table)
            .where(deposits_table.c.id == data["id"])
            .values(status="open", transfer_id=None)
        )
    with pytest.raises(Exception, match="(?i)unique|duplicate|constraint"):
        await client.post(f"/deposits/{data['id']}/check")
    assert await balance_of(client) == before + 1_234
    assert len(await _credits(rt, data["paymentHash"])) == 1


# ---------------------------------------------------------------- reconciliation


async def test_reconcile_accounts_for_deposits_full_and_incremental(client, rt, clock):
    from payrail.services.reconcile import reconcile, reconcile_incremental

    paid = await _open(client, 1_000)
    await client.post(f"/test/deposits/{paid['id']}/pay")
    late = await _open(client, 2_000, expiresInS=60)
    await _watch(rt, clock, 60_000)
    await _pay_at_node(rt, late["paymentHash"])
    await _watch(rt, clock, rt.settings.deposit_check_cap_ms)
    await _open(client, 3_000)  # still open: the watcher's, no finding
    full = await reconcile(rt, settle_window_ms=0)
    assert full.clean, full.discrepancies
    clock.advance(60_000)
    unpaid = await _open(client, 4_000, expiresInS=60)
    await _watch(rt, clock, 60_000)
    await _watch(rt, clock, rt.settings.deposit_late_window_ms + 60_000)
    assert (await client.get(f"/deposits/{unpaid['id']}")).json()["data"]["status"] == "expired"
    incremental = await reconcile_incremental(rt, settle_window_ms=0)
    assert incremental.clean, incremental.discrepancies


async def test_reconcile_names_a_payment_never_credited_and_a_credit_never_paid(client, rt, clock):
    from payrail.services.reconcile import reconcile

    lost = await _open(client, 500, expiresInS=60)
    await _watch(rt, clock, 60_000)
    await _watch(rt, clock, rt.settings.deposit_late_window_ms + 60_000)  # watch over
    await _pay_at_node(rt, lost["paymentHash"])  # paid after everyone stopped looking
    credited = await _open(client, 600)
    await client.post(f"/test/deposits/{credited['id']}/pay")
    async with rt.engine.begin() as conn:  # the node forgets it was paid
        await conn.execute(
            update(sim_node_invoices)
            .where(sim_node_invoices.c.payment_hash == credited["paymentHash"])
            .values(state="open")
        )
    report = await reconcile(rt, settle_window_ms=0)
    kinds = {(d.kind, tuple(d.ids)) for d in report.discrepancies}
    assert ("deposit-paid-not-credited", (lost["id"],)) in kinds
    assert ("deposit-credited-not-paid", (credited["id"],)) in kinds


async def test_reconcile_names_a_completed_deposit_without_its_credit(client, rt):
    from payrail.services.reconcile import reconcile

    data = await _open(client, 700)
    async with rt.engine.begin() as conn:  # completed by hand, no ledger transfer
        await conn.execute(
            update(deposits_table)
            .where(deposits_table.c.id == data["id"])
            .values(status="completed", transfer_id=transfer_id(data["paymentHash"]))
        )
    await _pay_at_node(rt, data["paymentHash"])
    report = await reconcile(rt, settle_window_ms=0)
    assert ("state-ledger-mismatch", (data["id"],)) in {
        (d.kind, tuple(d.ids)) for d in report.discrepancies
    }


# ---------------------------------------------------------------- callbacks


async def test_callbacks_say_deposit_expired_then_completed_signed_and_in_order(client, rt, clock):
    url = "https://studio.example/payrail/deposits"  # sandbox: recorded, never sent
    data = await _open(client, 1_100, expiresInS=60, callbackUrl=url)
    assert data["callbackUrl"] == url
    await _watch(rt, clock, 60_000)
    await _pay_at_node(rt, data["paymentHash"])
    await _watch(rt, clock, rt.settings.deposit_check_cap_ms)
    log = (await client.get("/test/callbacks")).json()["data"]["callbacks"]
    events = sorted(
        (c["payload"] for c in log if c["payload"]["data"]["id"] == data["id"]),
        key=lambda p: p["sequence"],
    )
    assert [(e["event"], e["sequence"], e["data"]["status"]) for e in events] == [
        ("deposit.expired", 1, "expired"),
        ("deposit.completed", 2, "completed"),
    ]
    assert events[1]["data"]["late"] is True and events[1]["data"]["amount"] == 1_100
    mine = [c for c in log if c["payload"]["data"]["id"] == data["id"]]
    assert {(c["status"], c["simulated"]) for c in mine} == {("delivered", True)}


async def test_a_deposit_without_callback_url_sends_nothing_and_a_bad_one_is_a_400(client, rt):
    data = await _open(client, 10)
    await client.post(f"/test/deposits/{data['id']}/pay")
    log = (await client.get("/test/callbacks")).json()["data"]["callbacks"]
    assert [c for c in log if c["payload"]["data"].get("id") == data["id"]] == []
    bad = await client.post(
        f"/projects/{PROJECT}/deposits", json={"amount": 10, "callbackUrl": "ftp://x"}
    )
    assert bad.status_code == 400 and bad.json()["data"]["error"] == "INVALID_CALLBACK_URL"


# ---------------------------------------------------------------- the dashboard


async def test_the_dashboard_lists_a_projects_deposits_with_their_status(settings, rt, client):
    import re

    from conftest import SANDBOX_KEY

    paid = await _open(client, 1_234, description="Gem pack")
    await client.post(f"/test/deposits/{paid['id']}/pay")
    waiting = await _open(client, 55)
    other = await projects.create_project(rt, "studio_hidden", "Hidden")
    hidden = await client.post(
        "/projects/studio_hidden/deposits", json={"amount": 9}, headers={"apikey": other.api_key}
    )
    app = create_app(settings, runtime=rt, migrate_db=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as dash:
        form = await dash.get("/dashboard/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        await dash.post(
            "/dashboard/login", data={"key": SANDBOX_KEY, "name": "alice", "csrf": token}
        )
        page = await dash.get("/dashboard/deposits")
        assert page.status_code == 200
        assert paid["id"] in page.text and waiting["id"] in page.text
        assert "1,234" in page.text and "Gem pack" in page.text
        assert hidden.json()["data"]["id"] not in page.text  # another project's
        done = await dash.get("/dashboard/deposits", params={"status": "completed"})
        assert paid["id"] in done.text and waiting["id"] not in done.text
        bad = await dash.get("/dashboard/deposits", params={"status": "paid"})
        assert bad.status_code == 400
