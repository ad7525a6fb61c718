"""Claim links (LNURL-withdraw, LUD-03) against the simulated node, on SQLite and PostgreSQL:
the reservation at creation through the payout engine, revoke and expiry voiding it, the
wallet's two requests, one payment however many wallets claim at once. Every money path
asserts the project's balance, the node's record and a clean reconciliation.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import bolt11
import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT
from lightning_kit import make_invoice
from sqlalchemy import func, select

from payrail.bootstrap import Runtime
from payrail.db.tables import jobs, payouts, sim_node_payments, withdrawals
from payrail.domain.money import fee_sats
from payrail.domain.recipients import decode_lnurl, encode_lnurl
from payrail.entrypoints import worker
from payrail.services.reconcile import reconcile
from payrail.support.clock import ShiftableClock

ADMIN = {"apikey": ADMIN_KEY}
CONCURRENT = 50
FUNDED = 100_000  # the sandbox project's first funding


# ---------------------------------------------------------------- helpers


async def _balance(client: httpx.AsyncClient) -> tuple[int, int]:
    answer = await client.get(f"/projects/{PROJECT}/balance", headers=ADMIN)
    data = answer.json()["data"]
    return data["balance"], data["reserved"]


async def _create(client: httpx.AsyncClient, amount: int = 1_000, **extra: object) -> dict:
    body = {"projectId": PROJECT, "amount": amount, **extra}
    answer = await client.post("/withdrawals", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["data"]


def _public(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """A wallet: no key, at the server's root (the LNURL routes are outside /api/v1)."""
    return httpx.AsyncClient(transport=client._transport, base_url="http://test")


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def _withdraw_request(wallet: httpx.AsyncClient, link: dict) -> dict:
    answer = await wallet.get(_path(decode_lnurl(link["lnurl"].lower())))
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _claim(wallet: httpx.AsyncClient, request: dict, invoice: str) -> dict:
    answer = await wallet.get(
        _path(request["callback"]), params={"k1": request["k1"], "pr": invoice}
    )
    return answer.json()


async def _final(client: httpx.AsyncClient, link_id: str, rounds: int = 500) -> dict:
    """The link once its payout is final (the claim's payment runs in the background)."""
    for _ in range(rounds):
        data = (await client.get(f"/withdrawals/{link_id}")).json()["data"]
        if data["status"] not in ("open", "claimed"):
            return data
        await asyncio.sleep(0.01)
    raise AssertionError(f"withdrawal {link_id} still {data['status']}")


async def _node_payments(rt: Runtime) -> list[tuple[str, str, int]]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(
                sim_node_payments.c.payment_id,
                sim_node_payments.c.destination,
                sim_node_payments.c.amount,
            )
        )
        return [tuple(r) for r in rows]


async def _clean(rt: Runtime) -> None:
    report = await reconcile(rt, settle_window_ms=0)
    assert report.clean, report.found


# ---------------------------------------------------------------- create, read, list


async def test_create_reserves_amount_and_fee_and_answers_an_lnurl_of_the_withdraw_url(client, rt):
    link = await _create(client, 2_000, gamertag="player1", description="Season reward")
    fee = fee_sats(2_000)
    assert link["status"] == "open" and link["amount"] == 2_000
    assert link["fee"] == fee and link["totalCost"] == 2_000 + fee
    assert link["lnurl"].startswith("LNURL1") and link["payoutId"] is None
    url = decode_lnurl(link["lnurl"].lower())
    assert url.startswith(f"http://127.0.0.1:3000/lnurlw/{link['id']}?k1=")
    assert link["url"].startswith(f"http://127.0.0.1:3000/claim/{link['id']}?k1=")
    assert await _balance(client) == (FUNDED - 2_000 - fee, 2_000 + fee)
    # Reserved and never sent: no settle job exists, and the worker sends nothing.
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(jobs)) == 0
        secret = parse_qs(urlsplit(url).query)["k1"][0]
        stored = await conn.scalar(select(withdrawals.c.secret_hash))
    assert len(secret) == 64 and secret not in stored  # 256 bits; only its hash is kept
    await worker.run_until_idle(rt)
    assert await _node_payments(rt) == []
    again = (await client.get(f"/withdrawals/{link['id']}")).json()["data"]
    assert again == link
    await _clean(rt)


def test_the_lnurl_encoding_matches_lud01s_example():
    url = (
        "https://service.com/api?q=3fc3645b439ce8e7f2553a69e5267081d96dcd340693afabe04be7b0ccd178df"
    )
    expected = (
        "LNURL1DP68GURN8GHJ7UM9WFMXJCM99E3K7MF0V9CXJ0M385EKVCENXC6R2C35XVUKXEFCV5MKVV34X5EKZ"
        "D3EV56NYD3HXQURZEPEXEJXXEPNXSCRVWFNV9NXZCN9XQ6XYEFHVGCXXCMYXYMNSERXFQ5FNS"
    )
    assert encode_lnurl(url).upper() == expected


async def test_refusals_write_nothing(client, rt):
    before = await _balance(client)
    too_much = await client.post("/withdrawals", json={"projectId": PROJECT, "amount": 99_000})
    assert too_much.status_code == 402, too_much.text
    assert too_much.json()["data"]["error"] == "INSUFFICIENT_BALANCE"
    for body in (
        {"projectId": PROJECT},
        {"projectId": PROJECT, "amount": 0},
        {"projectId": PROJECT, "amount": "5"},
        {"projectId": PROJECT, "amount": 10, "expiresInS": 1},
        {"projectId": PROJECT, "amount": 10, "gamertag": "no spaces"},
        [],
    ):
        answer = await client.post("/withdrawals", json=body)
        assert answer.status_code == 400, (body, answer.text)
    other = await client.post("/withdrawals", json={"projectId": "project_other", "amount": 10})
    assert other.status_code == 403
    assert await _balance(client) == before
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(withdrawals)) == 0
        assert await conn.scalar(select(func.count()).select_from(payouts)) == 0


async def test_the_same_key_answers_the_same_link_and_reserves_once(client, rt):
    headers = {"Idempotency-Key": "reward-42"}
    body = {"projectId": PROJECT, "amount": 1_500, "gamertag": "player7"}
    first = await client.post("/withdrawals", json=body, headers=headers)
    second = await client.post("/withdrawals", json=body, headers=headers)
    assert first.status_code == 201 and second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json()["data"] == first.json()["data"]
    other = await client.post("/withdrawals", json=body | {"amount": 1_600}, headers=headers)
    assert other.status_code == 422 and other.json()["data"]["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert await _balance(client) == (FUNDED - 1_500 - fee_sats(1_500), 1_500 + fee_sats(1_500))
    await _clean(rt)


async def test_the_payout_rate_limit_counts_links_for_a_gamertag(client, rt, settings):
    limit = settings.rate_limit_per_hour
    for _ in range(limit):
        await _create(client, 10, gamertag="grinder")
    refused = await client.post(
        "/withdrawals", json={"projectId": PROJECT, "amount": 10, "gamertag": "GRINDER"}
    )
    assert refused.status_code == 429 and refused.json()["data"]["error"] == "RATE_LIMIT_EXCEEDED"
    assert (await _balance(client))[1] == limit * (10 + fee_sats(10))


async def test_list_is_paginated_newest_first_and_scoped_to_the_project(client, rt, clock):
    made = []
    for amount in (100, 200, 300):
        made.append((await _create(client, amount))["id"])
        clock.advance(1)
    page = (await client.get("/withdrawals", params={"limit": 2})).json()["data"]
    assert [w["id"] for w in page["withdrawals"]] == made[::-1][:2] and page["hasMore"]
    rest = await client.get("/withdrawals", params={"limit": 2, "cursor": page["nextCursor"]})
    assert [w["id"] for w in rest.json()["data"]["withdrawals"]] == [made[0]]
    everyone = await client.get("/withdrawals", headers=ADMIN)
    assert everyone.json()["data"]["count"] == 3
    missing = await client.get("/withdrawals/no-such-link")
    assert missing.status_code == 404
    assert missing.json()["data"]["error"] == "WITHDRAWAL_NOT_FOUND"


# ---------------------------------------------------------------- revoke and expiry


async def test_revoke_voids_the_reservation_and_the_link_answers_error(client, rt):
    link = await _create(client, 3_000)
    answer = await client.delete(f"/withdrawals/{link['id']}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["status"] == "revoked"
    assert await _balance(client) == (FUNDED, 0)
    again = await client.delete(f"/withdrawals/{link['id']}")
    assert again.status_code == 200 and again.json()["data"]["status"] == "revoked"
    async with _public(client) as wallet:
        refused = await wallet.get(_path(decode_lnurl(link["lnurl"].lower())))
        assert refused.json() == {"status": "ERROR", "reason": "This link was revoked."}
    assert await _node_payments(rt) == []
    await _clean(rt)


async def test_a_crash_after_the_revoke_is_voided_by_the_worker_sweep(client, rt):
    link = await _create(client, 1_000)

    def crash(name: str) -> None:
        if name == "after_withdrawal_revoke":
            raise RuntimeError("crash")

    rt.crashpoint = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await client.delete(f"/withdrawals/{link['id']}")
    assert (await _balance(client))[1] == 1_000 + fee_sats(1_000)  # held until the sweep
    await worker.run_until_idle(rt)
    assert await _balance(client) == (FUNDED, 0)
    data = (await client.get(f"/withdrawals/{link['id']}")).json()["data"]
    assert data["status"] == "revoked"
    await _clean(rt)


async def test_expiry_voids_the_reservation_through_the_worker(client, rt, clock: ShiftableClock):
    link = await _create(client, 1_000, expiresInS=600)
    clock.advance(599_000)
    await worker.run_until_idle(rt)
    assert (await client.get(f"/withdrawals/{link['id']}")).json()["data"]["status"] == "open"
    clock.advance(2_000)
    data = (await client.get(f"/withdrawals/{link['id']}")).json()["data"]
    assert data["status"] == "expired"  # past expiresAt: nothing can claim it any more
    await worker.run_until_idle(rt)
    assert await _balance(client) == (FUNDED, 0)
    async with _public(client) as wallet:
        url = decode_lnurl(link["lnurl"].lower())
        assert (await wallet.get(_path(url))).json()["reason"] == "This link has expired."
    revoke = await client.delete(f"/withdrawals/{link['id']}")
    assert revoke.status_code == 409
    await _clean(rt)


# ---------------------------------------------------------------- the wallet's side (LUD-03)


async def test_a_wallet_claims_the_link_once_and_is_paid_the_amount(client, rt):
    link = await _create(client, 2_500, description="Quest reward")
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        assert request["tag"] == "withdrawRequest"
        assert request["minWithdrawable"] == request["maxWithdrawable"] == 2_500_000
        assert request["defaultDescription"] == "Quest reward"
        assert request["callback"] == f"http://127.0.0.1:3000/lnurlw/{link['id']}/callback"
        invoice = make_invoice(2_500_000)
        assert await _claim(wallet, request, invoice) == {"status": "OK"}
        final = await _final(client, link["id"])
        second = await _claim(wallet, request, make_invoice(2_500_000))
        assert second == {"status": "ERROR", "reason": "This link was already claimed."}
    assert final["status"] == "completed" and final["payoutId"]
    assert final["paymentHash"] == bolt11.decode(invoice).payment_hash
    fee = fee_sats(2_500)
    assert await _balance(client) == (FUNDED - 2_500 - fee, 0)
    assert await _node_payments(rt) == [(final["payoutId"], final["paymentHash"], 2_500)]
    payout = (await client.get(f"/payouts/{final['payoutId']}")).json()["data"]
    assert payout["status"] == "completed" and payout["invoice"] == invoice
    history = (await client.get(f"/payouts/{final['payoutId']}/history")).json()["data"]
    assert [e["toStatus"] for e in history["events"]][-1] == "completed"
    assert (await client.delete(f"/withdrawals/{link['id']}")).status_code == 409
    await _clean(rt)


async def test_fifty_wallets_claiming_at_once_get_one_payment(client, rt):
    link = await _create(client, 4_000)
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        invoices = [make_invoice(4_000_000) for _ in range(CONCURRENT)]
        answers = await asyncio.gather(*(_claim(wallet, request, pr) for pr in invoices))
    assert sum(a == {"status": "OK"} for a in answers) == 1, answers
    assert all(a["status"] == "ERROR" for a in answers if a != {"status": "OK"})
    final = await _final(client, link["id"])
    assert final["status"] == "completed"
    winner = invoices[[a == {"status": "OK"} for a in answers].index(True)]
    assert final["paymentHash"] == bolt11.decode(winner).payment_hash
    assert await _node_payments(rt) == [(final["payoutId"], final["paymentHash"], 4_000)]
    assert await _balance(client) == (FUNDED - 4_000 - fee_sats(4_000), 0)
    await _clean(rt)


async def test_a_wrong_invoice_or_secret_moves_nothing_and_the_link_stays_open(client, rt):
    link = await _create(client, 1_000)
    other = await _create(client, 1_000)
    held = await _balance(client)
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        for invoice, reason in (
            (make_invoice(999_000), "Invoice refused: the invoice asks for 999000 msat"),
            (make_invoice(None), "Invoice refused: the invoice has no amount"),
            (make_invoice(1_000_000, currency="tb"), "Invoice refused: the invoice is for"),
            (make_invoice(1_000_000, expiry_s=10), "Invoice refused: the invoice has expired"),
            ("lnbc1notaninvoice", "The invoice is not valid"),
        ):
            answer = await _claim(wallet, request, invoice)
            assert answer["status"] == "ERROR" and answer["reason"].startswith(reason), answer
        unknown = {"status": "ERROR", "reason": "Unknown link, or a wrong k1."}
        wrong_k1 = await wallet.get(
            _path(request["callback"]), params={"k1": "0" * 64, "pr": make_invoice(1_000_000)}
        )
        assert wrong_k1.json() == unknown
        # Another link's secret, and a link that does not exist: the same answer.
        other_k1 = parse_qs(urlsplit(decode_lnurl(other["lnurl"].lower())).query)["k1"][0]
        crossed = await wallet.get(f"/lnurlw/{link['id']}", params={"k1": other_k1})
        assert crossed.json() == unknown
        nobody = await wallet.get(
            "/lnurlw/00000000-0000-0000-0000-000000000000", params={"k1": "x"}
        )
        assert nobody.json() == unknown
    assert await _balance(client) == held
    assert (await client.get(f"/withdrawals/{link['id']}")).json()["data"]["status"] == "open"
    assert await _node_payments(rt) == []
    await _clean(rt)


async def test_an_invoice_another_payout_holds_is_refused(client, rt):
    invoice = make_invoice(1_000_000)
    paid = await client.post(
        "/payouts", json={"projectId": PROJECT, "amount": 1_000, "invoice": invoice}
    )
    assert paid.status_code == 201, paid.text
    link = await _create(client, 1_000)
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        answer = await _claim(wallet, request, invoice)
    assert answer["status"] == "ERROR" and "already being paid" in answer["reason"]
    assert (await client.get(f"/withdrawals/{link['id']}")).json()["data"]["status"] == "open"
    assert len(await _node_payments(rt)) == 1
    await _clean(rt)


async def test_a_failed_payment_voids_the_reservation_and_the_link_says_error(client, rt):
    link = await _create(client, 1_000)
    knobs = {"enabled": True, "failureRate": 1.0}
    assert (await client.post("/test/failure-injection", json=knobs)).status_code == 200
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        assert await _claim(wallet, request, make_invoice(1_000_000)) == {"status": "OK"}
    final = await _final(client, link["id"])
    assert final["status"] == "error"
    assert await _balance(client) == (FUNDED, 0)
    await _clean(rt)


async def test_an_unknown_outcome_holds_the_reservation_until_the_node_answers(
    client, rt, clock: ShiftableClock
):
    link = await _create(client, 1_000)
    knobs = {"enabled": True, "ambiguousRate": 1.0, "timeoutMs": 0, "ambiguousSettleMs": 60_000}
    assert (await client.post("/test/failure-injection", json=knobs)).status_code == 200
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        assert await _claim(wallet, request, make_invoice(1_000_000)) == {"status": "OK"}
    for _ in range(500):  # until the send has answered "unknown" and the job was rescheduled
        async with rt.engine.connect() as conn:
            if await conn.scalar(select(jobs.c.last_error)) is not None:
                break
        await asyncio.sleep(0.01)
    assert (await client.get(f"/withdrawals/{link['id']}")).json()["data"]["status"] == "claimed"
    total = 1_000 + fee_sats(1_000)
    assert await _balance(client) == (FUNDED - total, total)  # held: it may be paid
    clock.advance(120_000)  # the node settles it; the job asks again
    await worker.run_until_idle(rt)
    final = await _final(client, link["id"])
    assert final["status"] == "completed"
    assert await _balance(client) == (FUNDED - total, 0)
    await _clean(rt)


async def test_public_routes_are_rate_limited_per_link(client, rt):
    link = await _create(client, 1_000)
    async with _public(client) as wallet:
        url = _path(decode_lnurl(link["lnurl"].lower()))
        answers = [await wallet.get(url) for _ in range(61)]
    assert [a.status_code for a in answers[:60]] == [200] * 60
    assert answers[60].status_code == 429 and answers[60].json()["status"] == "ERROR"


async def test_the_sandbox_wallet_invoice_claims_a_link(client, rt):
    link = await _create(client, 700)
    made = await client.post("/test/wallet-invoices", json={"amount": 700})
    assert made.status_code == 200, made.text
    invoice = made.json()["data"]["invoice"]
    assert bolt11.decode(invoice).amount_msat == 700_000
    bad = await client.post("/test/wallet-invoices", json={"amount": "700"})
    assert bad.status_code == 400
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        assert await _claim(wallet, request, invoice) == {"status": "OK"}
    assert (await _final(client, link["id"]))["status"] == "completed"
    assert await _balance(client) == (FUNDED - 700 - fee_sats(700), 0)
    await _clean(rt)


async def test_public_routes_answer_garbage_without_a_500_and_move_nothing(client, rt):
    link = await _create(client, 1_000)
    held = await _balance(client)
    k1 = parse_qs(urlsplit(decode_lnurl(link["lnurl"].lower())).query)["k1"][0]
    weird = ["", "x" * 5000, "%00", "é", "lnbc", "0" * 64, k1.upper()]
    async with _public(client) as wallet:
        for value in weird:
            for path in (
                f"/lnurlw/{value or 'x'}",
                f"/lnurlw/{link['id']}",
                f"/claim/{value or 'x'}",
            ):
                answer = await wallet.get(path, params={"k1": value})
                assert answer.status_code < 500, (path, value, answer.text)
            for params in ({"k1": k1, "pr": value}, {"k1": value, "pr": value}, {"pr": value}):
                answer = await wallet.get(f"/lnurlw/{link['id']}/callback", params=params)
                assert answer.status_code < 500, answer.text
                if answer.status_code == 200:
                    assert answer.json()["status"] == "ERROR", answer.text
        answer = await wallet.get(f"/lnurlw/{link['id']}/callback", params=[("k1", k1), ("k1", k1)])
        assert answer.json()["status"] == "ERROR"  # no pr
    assert await _balance(client) == held
    assert (await client.get(f"/withdrawals/{link['id']}")).json()["data"]["status"] == "open"


# ---------------------------------------------------------------- crashes


async def test_a_crash_between_the_reservation_and_the_link_is_completed_by_the_retry(client, rt):
    from payrail.bootstrap import SimulatedCrash

    body = {"projectId": PROJECT, "amount": 1_000}
    headers = {"Idempotency-Key": "crash-before-link"}
    rt.crashpoints.add("after_withdrawal_reserve")
    with pytest.raises(SimulatedCrash):
        await client.post("/withdrawals", json=body, headers=headers)
    rt.crashpoints.clear()
    total = 1_000 + fee_sats(1_000)
    assert await _balance(client) == (FUNDED - total, total)  # reserved, no link yet
    again = await client.post("/withdrawals", json=body, headers=headers)
    assert again.status_code == 200, again.text
    link = again.json()["data"]
    assert link["status"] == "open"
    assert await _balance(client) == (FUNDED - total, total)  # still reserved once
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        assert await _claim(wallet, request, make_invoice(1_000_000)) == {"status": "OK"}
    assert (await _final(client, link["id"]))["status"] == "completed"
    assert await _balance(client) == (FUNDED - total, 0)
    await _clean(rt)


async def test_a_crash_right_after_the_claim_is_paid_once_by_the_worker(
    client, rt, clock: ShiftableClock
):
    from payrail.bootstrap import SimulatedCrash

    link = await _create(client, 1_000)
    async with _public(client) as wallet:
        request = await _withdraw_request(wallet, link)
        rt.crashpoints.add("after_withdrawal_claim")  # committed; the send never started
        with pytest.raises(SimulatedCrash):
            await _claim(wallet, request, make_invoice(1_000_000))
        rt.crashpoints.clear()
        data = (await client.get(f"/withdrawals/{link['id']}")).json()["data"]
        assert data["status"] == "claimed" and await _node_payments(rt) == []
        again = await _claim(wallet, request, make_invoice(1_000_000))
        assert again == {"status": "ERROR", "reason": "This link was already claimed."}
    clock.advance(rt.settings.lease_ms + 1)  # the dead process's lease runs out
    await worker.run_until_idle(rt)
    final = await _final(client, link["id"])
    assert final["status"] == "completed"
    assert await _node_payments(rt) == [(final["payoutId"], final["paymentHash"], 1_000)]
    assert await _balance(client) == (FUNDED - 1_000 - fee_sats(1_000), 0)
    await _clean(rt)


# ---------------------------------------------------------------- production, links off


async def test_production_without_a_claim_link_key_refuses_links_and_reserves_nothing(
    settings, rt, clock, client
):
    import dataclasses

    from payrail.bootstrap import build_runtime
    from payrail.entrypoints.http.app import create_app

    link = await _create(client, 1_000)  # made in the sandbox, before the switch
    prod = dataclasses.replace(settings, mode="production", stripe_backend="disabled")
    assert not prod.claim_links
    prod_rt = build_runtime(prod, clock=clock, node=rt.node, engine=rt.engine)
    app = create_app(prod, runtime=prod_rt, migrate_db=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test/api/v1", headers={"apikey": ADMIN_KEY}
    ) as api:
        made = await api.post("/withdrawals", json={"projectId": PROJECT, "amount": 1_000})
        assert made.status_code == 503 and made.json()["data"]["error"] == "CLAIM_LINKS_DISABLED"
        got = await api.get(f"/withdrawals/{link['id']}")
        assert got.status_code == 503
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as wallet:
        url = urlsplit(decode_lnurl(link["lnurl"].lower()))
        answer = await wallet.get(f"{url.path}?{url.query}")
        assert answer.json() == {"status": "ERROR", "reason": "Claim links are off on this server."}
    total = 1_000 + fee_sats(1_000)
    assert await _balance(client) == (FUNDED - total, total)  # only the sandbox link's
