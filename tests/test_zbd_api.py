"""The ZBD-compatible API (/v0) against the ASGI app, on SQLite and PostgreSQL: ZBD's shapes,
units and statuses over payrail's one payout engine, balances asserted after every payment.

The official SDKs drive a real server in tests/test_zbd_sdk.py; this file covers every answer
and refusal in detail."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import bolt11
import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, balance_of
from lightning_kit import AddressServer, Behaviour, make_invoice

from payrail.config import Settings, UnsafeSettings
from payrail.entrypoints.http.app import create_app
from payrail.entrypoints.http.zbd import payments as zbd_payments
from payrail.lightning.backend import DestinationKind
from payrail.services import reconcile

FEE_BPS = 200  # the fee these tests expect payrail to charge: ceil(2%)


def cost(sats: int) -> int:
    return sats + -(-sats * FEE_BPS // 10_000)


@pytest.fixture
def address_server():
    server = AddressServer().start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings, address_server):
    return dataclasses.replace(settings, lnurl_insecure_hosts=(address_server.host,))


@pytest.fixture
async def zbd(settings, rt):
    app = create_app(settings, runtime=rt, migrate_db=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test/v0",
        headers={"apikey": SANDBOX_KEY},
    ) as c:
        yield c


def assert_zbd_error(response: httpx.Response, status: int, code: str) -> dict:
    """ZBD's error shape: success false and a message; payrail's code in data.error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and isinstance(body["message"], str) and body["message"]
    assert body["data"]["error"] == code, body
    return body


async def test_wallet_is_the_project_balance_in_msat_strings(zbd, client):
    response = await zbd.get("/wallet")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["message"] == "Successfully retrieved Wallet."
    assert body["data"] == {"balance": "100000000", "unit": "msats", "walletId": PROJECT}
    assert await balance_of(client) == 100_000


async def test_gamertag_payment_charges_amount_and_fee_and_reads_back(zbd, client):
    response = await zbd.post(
        "/gamertag/send-payment",
        json={"gamertag": "player1", "amount": "1000000", "description": "GG"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["message"] == "Payment done."
    data = body["data"]
    assert data["status"] == "settled" and data["amount"] == "1000000"
    assert data["receiverId"] == "player1" and data["comment"] == "GG"
    assert data["transactionId"] == data["id"] and data["settledAt"]
    assert await balance_of(client) == 100_000 - cost(1000)
    wallet = (await zbd.get("/wallet")).json()["data"]
    assert wallet["balance"] == str((100_000 - cost(1000)) * 1000)

    got = await zbd.get(f"/gamertag/transaction/{data['transactionId']}")
    assert got.status_code == 200, got.text
    tx = got.json()["data"]
    assert tx["status"] == "TRANSACTION_STATUS_COMPLETED"
    assert (tx["amount"], tx["fee"], tx["unit"]) == ("1000000", "20000", "msats")
    assert tx["confirmedAt"] == data["settledAt"] and tx["processedAt"]
    # The same payout through payrail's own API: one engine, one record.
    own = (await client.get(f"/payouts/{data['id']}")).json()["data"]
    assert (own["amount"], own["fee"], own["status"]) == (1000, 20, "completed")


@pytest.mark.parametrize(
    ("amount", "status", "code"),
    [
        ("1500", 400, "INVALID_AMOUNT"),  # not a whole number of sats
        ("999", 400, "INVALID_AMOUNT"),
        ("0", 400, "INVALID_AMOUNT"),
        ("-1000", 400, "INVALID_AMOUNT"),
        ("1e6", 400, "INVALID_AMOUNT"),
        ("1000.0", 400, "INVALID_AMOUNT"),
        (" 1000", 400, "INVALID_AMOUNT"),
        ("١٠٠٠", 400, "INVALID_AMOUNT"),  # Arabic-Indic digits: str.isdigit() says yes
        ("9" * 31, 400, "INVALID_AMOUNT"),
        (1000.5, 400, "INVALID_AMOUNT"),
        (True, 400, "INVALID_AMOUNT"),
        ([1000], 400, "INVALID_AMOUNT"),
        (None, 400, "VALIDATION_ERROR"),
        ("", 400, "VALIDATION_ERROR"),
        ("100001000", 400, "INVALID_AMOUNT"),  # 100,001 sats: over payrail's payout limit
    ],
)
async def test_bad_amounts_are_refused_in_zbds_shape_and_nothing_moves(
    zbd, client, amount, status, code
):
    response = await zbd.post("/gamertag/send-payment", json={"gamertag": "p", "amount": amount})
    body = assert_zbd_error(response, status, code)
    assert response.headers["x-should-retry"] == "false"
    if amount == "1500":
        assert "whole number of sats" in body["message"]
    if amount == "100001000":  # payrail's limit, stated in the client's unit
        assert "from 1000 to 100000000" in body["message"]
        assert body["data"]["maxAmount"] == "100000000"
    assert await balance_of(client) == 100_000
    assert (await client.get("/payouts")).json()["data"]["count"] == 0


async def test_an_integer_msat_amount_is_accepted_as_zbds_sdks_may_send_it(zbd, client):
    response = await zbd.post("/gamertag/send-payment", json={"gamertag": "p", "amount": 21000})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["amount"] == "21000"
    assert await balance_of(client) == 100_000 - cost(21)


async def test_insufficient_balance_is_zbds_400_with_its_sentence_and_nothing_moves(zbd, client):
    # 100,000 sats cost 102,000 with the fee; the wallet holds 100,000.
    response = await zbd.post(
        "/gamertag/send-payment", json={"gamertag": "whale", "amount": "100000000"}
    )
    body = assert_zbd_error(response, 400, "INSUFFICIENT_BALANCE")
    assert body["message"].startswith("You do not have enough funds for this transaction and fees.")
    assert body["data"]["totalCost"] == 102_000
    assert await balance_of(client) == 100_000


async def test_the_admin_key_has_no_wallet(zbd):
    response = await zbd.get("/wallet", headers={"apikey": ADMIN_KEY})
    assert_zbd_error(response, 403, "FORBIDDEN")
    assert_zbd_error(await zbd.get("/wallet", headers={"apikey": "nope"}), 401, "UNAUTHORIZED")


async def test_another_wallets_payment_is_not_found(zbd, client):
    paid = (
        await zbd.post("/gamertag/send-payment", json={"gamertag": "a", "amount": "1000"})
    ).json()["data"]
    created = await client.post(
        "/projects", json={"id": "other_studio"}, headers={"apikey": ADMIN_KEY}
    )
    other = {"apikey": created.json()["data"]["apiKey"]}
    for path in (f"/gamertag/transaction/{paid['id']}", f"/payments/{paid['id']}"):
        assert_zbd_error(await zbd.get(path, headers=other), 404, "PAYOUT_NOT_FOUND")
    assert (await zbd.get(f"/payments/{paid['id']}")).status_code == 200


async def test_same_idempotency_key_pays_once_and_another_body_is_refused(zbd, client):
    key = {"Idempotency-Key": "reward-7"}
    body = {"gamertag": "player7", "amount": "5000000"}
    first = await zbd.post("/gamertag/send-payment", json=body, headers=key)
    again = await zbd.post("/gamertag/send-payment", json=body, headers=key)
    assert first.status_code == again.status_code == 200, again.text
    assert first.json()["data"]["id"] == again.json()["data"]["id"]
    assert await balance_of(client) == 100_000 - cost(5000)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    reused = await zbd.post(
        "/gamertag/send-payment", json=body | {"amount": "6000000"}, headers=key
    )
    assert_zbd_error(reused, 422, "IDEMPOTENCY_KEY_REUSED")
    assert await balance_of(client) == 100_000 - cost(5000)


async def test_without_a_key_each_post_is_a_new_payment(zbd, client):
    body = {"gamertag": "player8", "amount": "1000000"}
    ids = {
        (await zbd.post("/gamertag/send-payment", json=body)).json()["data"]["id"] for _ in range(2)
    }
    assert len(ids) == 2  # ZBD's own behaviour: it dedupes on nothing
    assert await balance_of(client) == 100_000 - 2 * cost(1000)


async def test_internal_id_is_the_key_when_the_studio_turns_it_on(settings, rt, client):
    app = create_app(
        dataclasses.replace(settings, zbd_internal_id_idempotent=True),
        runtime=rt,
        migrate_db=False,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test/v0",
        headers={"apikey": SANDBOX_KEY},
    ) as zbd:
        invoice = make_invoice(2_000_000)
        body = {"invoice": invoice, "internalId": "order-9"}
        first = await zbd.post("/payments", json=body)
        again = await zbd.post("/payments", json=body)
        assert first.status_code == again.status_code == 200, again.text
        assert first.json()["data"]["id"] == again.json()["data"]["id"]
        assert first.json()["data"]["internalId"] == "order-9"
        assert await balance_of(client) == 100_000 - cost(2000)
        other = await zbd.post(
            "/payments", json={"invoice": make_invoice(3_000_000), "internalId": "order-9"}
        )
        body = assert_zbd_error(other, 422, "IDEMPOTENCY_KEY_REUSED")
        assert other.headers["x-should-retry"] == "false"
    assert await balance_of(client) == 100_000 - cost(2000)


async def test_a_refused_payment_is_rolled_back_and_answered_as_failed(zbd, client):
    injected = await client.post(
        "/test/failure-injection", json={"enabled": True, "failureRate": 1.0}
    )
    assert injected.status_code == 200, injected.text
    response = await zbd.post(
        "/gamertag/send-payment", json={"gamertag": "unlucky", "amount": "1000000"}
    )
    body = assert_zbd_error(response, 502, "PAYMENT_FAILED")
    assert body["data"]["status"] == "failed" and body["data"]["amount"] == "1000000"
    assert response.headers["x-should-retry"] == "false"  # no key: a resend is a new payout
    tx = (await zbd.get(f"/gamertag/transaction/{body['data']['id']}")).json()["data"]
    assert tx["status"] == "TRANSACTION_STATUS_FAILED"
    assert await balance_of(client) == 100_000


async def test_invoice_payment_is_paid_for_the_invoices_amount_and_fetched(zbd, client):
    invoice = make_invoice(10_000_000, description="Master Sword")
    response = await zbd.post(
        "/payments",
        json={"invoice": invoice, "description": "sword", "internalId": "i-1"},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert response.json()["message"] == "Payment done."
    assert (data["amount"], data["fee"], data["unit"]) == ("10000000", "200000", "msats")
    assert data["status"] == "completed" and data["invoice"] == invoice.lower()
    assert data["internalId"] == "i-1" and data["walletId"] == PROJECT
    assert await balance_of(client) == 100_000 - cost(10_000)
    got = await zbd.get(f"/payments/{data['id']}")
    assert got.json()["message"] == "Fetched Payment." and got.json()["data"] == data


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"invoice": "lnbc-not-an-invoice"}, "INVALID_INVOICE"),
        ({"invoice": make_invoice(None)}, "INVALID_INVOICE"),  # amountless: payrail refuses
        ({"invoice": make_invoice(None), "amount": "5000"}, "INVALID_INVOICE"),
        ({"invoice": make_invoice(10_000), "amount": "20000"}, "INVALID_INVOICE"),
        ({"invoice": make_invoice(1_500)}, "INVALID_AMOUNT"),  # 1.5 sats
        ({"invoice": make_invoice(5_000, currency="tb")}, "INVALID_INVOICE"),  # testnet
        ({}, "VALIDATION_ERROR"),
    ],
)
async def test_bad_invoices_are_refused_and_nothing_moves(zbd, client, body, code):
    assert_zbd_error(await zbd.post("/payments", json=body), 400, code)
    assert await balance_of(client) == 100_000


async def test_lightning_address_payment_fetches_one_invoice_for_the_exact_amount(
    zbd, client, address_server
):
    address = address_server.address("alice")
    response = await zbd.post(
        "/ln-address/send-payment",
        json={"lnAddress": address, "amount": "3000000", "comment": "for you"},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    ((name, msat, invoice),) = address_server.issued
    assert (name, msat) == ("alice", 3_000_000)
    assert data["invoice"] == invoice and data["lnAddress"] == address
    assert (data["status"], data["comment"], data["amount"]) == ("completed", "for you", "3000000")
    assert await balance_of(client) == 100_000 - cost(3000)


async def test_gamertag_transaction_is_only_for_gamertag_payments(zbd):
    paid = (await zbd.post("/payments", json={"invoice": make_invoice(1_000_000)})).json()
    missing = await zbd.get(f"/gamertag/transaction/{paid['data']['id']}")
    assert_zbd_error(missing, 404, "PAYOUT_NOT_FOUND")


async def test_decode_invoice_reads_what_payrail_checks_before_paying(zbd):
    invoice = make_invoice(212_325_000, description="Paying for Master Sword #5546")
    response = await zbd.post("/decode-invoice", json={"invoice": invoice})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    decoded = bolt11.decode(invoice)
    assert data["amount"] == "212325000" and data["network"] == "bitcoin"
    assert data["description"] == "Paying for Master Sword #5546"
    assert data["paymentHash"] == decoded.payment_hash
    assert data["paymentSecret"] == decoded.payment_secret and data["payee"] == decoded.payee
    assert len(data["signature"]) == 128 and data["lnRequest"] == invoice
    assert (await zbd.get("/decode-invoice", params={"invoice": invoice})).json()["data"] == data
    bad = await zbd.post("/decode-invoice", json={"invoice": "lnbc1nope"})
    assert (
        "Could not decode the provided invoice"
        in assert_zbd_error(bad, 400, "INVALID_INVOICE")["message"]
    )


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/prod-ips", "ZBD_ENDPOINT_NOT_OFFERED"),
        ("GET", "/is-supported-region/1.2.3.4", "ZBD_ENDPOINT_NOT_OFFERED"),
        ("POST", "/gamertag/charges", "ZBD_ENDPOINT_NOT_OFFERED"),
        ("POST", "/static-charges", "ZBD_ENDPOINT_NOT_OFFERED"),
    ],
)
async def test_endpoints_payrail_does_not_offer_say_so(zbd, client, method, path, code):
    response = await zbd.request(method, path, json={"amount": "1000"})
    assert_zbd_error(response, 501, code)
    assert response.headers["x-should-retry"] == "false"
    assert await balance_of(client) == 100_000


async def test_a_withdrawal_request_is_a_claim_link_paid_once_to_the_wallet_that_claims_it(
    zbd, client, rt
):
    from payrail.domain.recipients import decode_lnurl

    made = await zbd.post(
        "/withdrawal-requests",
        json={"amount": "3000000", "expiresIn": 3600, "description": "Quest", "internalId": "q1"},
    )
    assert made.status_code == 200, made.text
    data = made.json()["data"]
    assert (data["status"], data["amount"], data["unit"]) == ("pending", "3000000", "msats")
    assert data["fee"] == "60000" and data["internalId"] == "q1"
    assert data["invoice"]["request"].startswith("LNURL1")
    assert data["invoice"]["uri"] == "lightning:" + data["invoice"]["request"]
    assert await balance_of(client) == 100_000 - cost(3_000)  # reserved at once
    url = decode_lnurl(data["invoice"]["request"].lower())
    async with httpx.AsyncClient(transport=zbd._transport, base_url="http://test") as wallet:
        offer = (await wallet.get(url.split("3000", 1)[1])).json()
        assert offer["maxWithdrawable"] == 3_000_000
        callback = offer["callback"].split("3000", 1)[1]
        answer = await wallet.get(
            callback, params={"k1": offer["k1"], "pr": make_invoice(3_000_000)}
        )
        assert answer.json() == {"status": "OK"}
    for _ in range(500):
        fetched = (await zbd.get(f"/withdrawal-requests/{data['id']}")).json()["data"]
        if fetched["status"] == "completed":
            break
        await asyncio.sleep(0.01)
    assert fetched["status"] == "completed"
    assert await balance_of(client) == 100_000 - cost(3_000)
    fraction = await zbd.post("/withdrawal-requests", json={"amount": "1500"})
    assert_zbd_error(fraction, 400, "INVALID_AMOUNT")
    missing = await zbd.get("/withdrawal-requests/nope")
    assert_zbd_error(missing, 404, "WITHDRAWAL_NOT_FOUND")
    assert await balance_of(client) == 100_000 - cost(3_000)
    assert (await reconcile.reconcile(rt, settle_window_ms=0)).clean


async def test_malformed_bodies_get_zbds_shape(zbd):
    response = await zbd.post(
        "/gamertag/send-payment", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_zbd_error(response, 400, "VALIDATION_ERROR")
    response = await zbd.post("/gamertag/send-payment", json=["not", "an", "object"])
    assert_zbd_error(response, 400, "VALIDATION_ERROR")
    response = await zbd.post(
        "/gamertag/send-payment", content=b"amount=1000", headers={"content-type": "text/plain"}
    )
    assert_zbd_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


async def _other_project(client, project_id: str = "studio_b", fund: int = 0) -> str:
    created = await client.post("/projects", json={"id": project_id}, headers={"apikey": ADMIN_KEY})
    assert created.status_code == 201, created.text
    if fund:
        funded = await client.post(
            f"/projects/{project_id}/fund", json={"amount": fund}, headers={"apikey": ADMIN_KEY}
        )
        assert funded.status_code == 200, funded.text
    return created.json()["data"]["apiKey"]


async def test_internal_transfer_moves_sats_between_two_wallets_in_one_transaction(zbd, client, rt):
    b_key = await _other_project(client)
    response = await zbd.post(
        "/internal-transfer",
        json={"amount": "10000000", "receiverWalletId": "studio_b"},
        headers={"Receiver-Apikey": b_key},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "Internal Transfer done."
    data = body["data"]
    assert (data["senderWalletId"], data["receiverWalletId"]) == (PROJECT, "studio_b")
    assert (data["status"], data["amount"]) == ("TRANSFER_STATUS_COMPLETED", "10000000")
    assert (data["senderBalance"], data["receiverBalance"]) == ("90000000", "10000000")
    assert await balance_of(client) == 90_000
    assert await balance_of(client, "studio_b") == 10_000
    b_wallet = (await zbd.get("/wallet", headers={"apikey": b_key})).json()["data"]
    assert b_wallet["balance"] == "10000000"
    report = await reconcile.reconcile(rt, settle_window_ms=0)
    assert report.clean, report.to_dict()


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, {"amount": "1000", "receiverWalletId": "studio_b"}, 403, "FORBIDDEN"),
        (  # the sender's own key is not the receiver's
            {"Receiver-Apikey": SANDBOX_KEY},
            {"amount": "1000", "receiverWalletId": "studio_b"},
            403,
            "FORBIDDEN",
        ),
        ("b", {"amount": "1500", "receiverWalletId": "studio_b"}, 400, "INVALID_AMOUNT"),
        ("b", {"amount": "200000000", "receiverWalletId": "studio_b"}, 400, "INSUFFICIENT_BALANCE"),
        ("b", {"amount": "1000"}, 400, "VALIDATION_ERROR"),
        ("b", {"amount": "1000", "receiverWalletId": PROJECT}, 403, "FORBIDDEN"),
    ],
)
async def test_internal_transfer_refusals_move_nothing(zbd, client, headers, body, status, code):
    b_key = await _other_project(client)
    if headers == "b":
        headers = {"Receiver-Apikey": b_key}
    response = await zbd.post("/internal-transfer", json=body, headers=headers)
    assert_zbd_error(response, status, code)
    assert response.headers["x-should-retry"] == "false"
    assert await balance_of(client) == 100_000
    assert await balance_of(client, "studio_b") == 0


async def test_internal_transfer_to_the_same_wallet_is_refused(zbd, client):
    response = await zbd.post(
        "/internal-transfer",
        json={"amount": "1000", "receiverWalletId": PROJECT},
        headers={"Receiver-Apikey": SANDBOX_KEY},
    )
    assert_zbd_error(response, 400, "VALIDATION_ERROR")
    assert await balance_of(client) == 100_000


async def test_internal_transfer_retried_with_its_key_moves_once(zbd, client):
    b_key = await _other_project(client)
    headers = {"Receiver-Apikey": b_key, "Idempotency-Key": "budget-2026-12"}
    body = {"amount": "100000000", "receiverWalletId": "studio_b"}  # all of it
    first = await zbd.post("/internal-transfer", json=body, headers=headers)
    again = await zbd.post("/internal-transfer", json=body, headers=headers)  # funds now 0
    assert first.status_code == again.status_code == 200, again.text
    assert first.json()["data"]["id"] == again.json()["data"]["id"]
    assert await balance_of(client) == 0 and await balance_of(client, "studio_b") == 100_000
    assert again.headers["idempotent-replayed"] == "true"
    other = await zbd.post("/internal-transfer", json=body | {"amount": "1000"}, headers=headers)
    assert_zbd_error(other, 422, "IDEMPOTENCY_KEY_REUSED")
    assert await balance_of(client) == 0 and await balance_of(client, "studio_b") == 100_000


async def test_concurrent_transfers_both_ways_never_overdraw_nor_deadlock(zbd, client, rt):
    """20 transfers of 10,000 sats from A (100,000) to B and 20 of 1,000 from B (5,000) to A,
    all at once: the lock order is one, so none deadlocks; each balance check holds."""
    b_key = await _other_project(client, fund=5_000)
    a_to_b = {"apikey": SANDBOX_KEY, "Receiver-Apikey": b_key}
    b_to_a = {"apikey": b_key, "Receiver-Apikey": SANDBOX_KEY}

    async def send(headers, amount, to):
        return await zbd.post(
            "/internal-transfer",
            json={"amount": str(amount * 1000), "receiverWalletId": to},
            headers=headers,
        )

    answers = await asyncio.gather(
        *(send(a_to_b, 10_000, "studio_b") for _ in range(20)),
        *(send(b_to_a, 1_000, PROJECT) for _ in range(20)),
    )
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 400}, [r.text for r in answers if r.status_code not in (200, 400)]
    for r in answers:
        if r.status_code == 400:
            assert r.json()["data"]["error"] == "INSUFFICIENT_BALANCE"
    a_done = sum(1 for r in answers[:20] if r.status_code == 200)
    b_done = sum(1 for r in answers[20:] if r.status_code == 200)
    a, b = await balance_of(client), await balance_of(client, "studio_b")
    assert a == 100_000 - 10_000 * a_done + 1_000 * b_done >= 0
    assert b == 5_000 + 10_000 * a_done - 1_000 * b_done >= 0
    assert a + b == 105_000
    assert a_done >= 10  # A's own funds cover ten of them whatever the order
    report = await reconcile.reconcile(rt, settle_window_ms=0)
    assert report.clean, report.to_dict()


async def test_validate_resolves_a_lightning_address_without_paying(zbd, client, address_server):
    response = await zbd.get(f"/ln-address/validate/{address_server.address('carol')}")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["valid"] is True and data["metadata"]["tag"] == "payRequest"
    assert (data["metadata"]["minSendable"], data["metadata"]["maxSendable"]) == (
        1_000,
        100_000_000,
    )
    assert address_server.issued == []  # no invoice asked for
    assert await balance_of(client) == 100_000


async def test_validate_refuses_what_payrail_would_not_pay(zbd, address_server):
    address_server.behaviours["dave"] = Behaviour(tag="withdrawRequest")
    bad = await zbd.get(f"/ln-address/validate/{address_server.address('dave')}")
    assert_zbd_error(bad, 502, "RECIPIENT_INVOICE_INVALID")
    assert_zbd_error(await zbd.get("/ln-address/validate/not-an-address"), 400, "VALIDATION_ERROR")


async def test_validate_in_the_sandbox_names_a_sandbox_address(zbd):
    response = await zbd.get("/ln-address/validate/player1@example.com")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["metadata"]["sandbox"] is True


PUBKEY = "02" + "ab" * 32


async def test_keysend_pays_a_node_key_where_the_backend_can(zbd, client, rt):
    response = await zbd.post(
        "/keysend-payment", json={"amount": "4000000", "pubkey": PUBKEY, "metadata": {"a": 1}}
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["keysendId"] == data["paymentId"] == data["transaction"]["id"]
    tx = data["transaction"]
    assert (tx["status"], tx["type"]) == ("TRANSACTION_STATUS_COMPLETED", "KEYSEND_PAYMENT")
    assert (tx["amount"], tx["fee"], tx["totalAmount"]) == ("4000000", "80000", "4080000")
    own = (await client.get(f"/payouts/{data['paymentId']}")).json()["data"]
    assert own["destinationKind"] == "keysend" and own["gamertag"] is None
    assert await balance_of(client) == 100_000 - cost(4000)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"amount": "1000", "pubkey": "04" + "ab" * 32}, "VALIDATION_ERROR"),
        ({"amount": "1000", "pubkey": PUBKEY, "tlvRecords": [{"type": 7, "value": "ff"}]},
         "VALIDATION_ERROR"),
        ({"amount": "1001", "pubkey": PUBKEY}, "INVALID_AMOUNT"),
    ],
)  # fmt: skip
async def test_bad_keysend_requests_move_nothing(zbd, client, body, code):
    assert_zbd_error(await zbd.post("/keysend-payment", json=body), 400, code)
    assert await balance_of(client) == 100_000


async def test_keysend_on_a_backend_without_it_is_a_zbd_shaped_refusal(
    zbd, client, rt, monkeypatch
):
    monkeypatch.setattr(rt.node, "kinds", frozenset({DestinationKind.INVOICE}))
    response = await zbd.post("/keysend-payment", json={"amount": "1000", "pubkey": PUBKEY})
    assert "keysend" in assert_zbd_error(response, 422, "DESTINATION_UNSUPPORTED")["message"]
    assert await balance_of(client) == 100_000


async def _zbd_client(settings, rt, **changes) -> httpx.AsyncClient:
    app = create_app(dataclasses.replace(settings, **changes), runtime=rt, migrate_db=False)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test/v0",
        headers={"apikey": SANDBOX_KEY},
    )


@pytest.mark.parametrize(
    ("fixed", "price"), [(None, "100000"), ("16825.50", "16825.5"), ("65000", "65000")]
)
async def test_btcusd_is_the_operators_fixed_rate(settings, rt, fixed, price):
    changes = {} if fixed is None else {"fx_fixed": fixed}
    async with await _zbd_client(settings, rt, **changes) as zbd:
        response = await zbd.get("/btcusd")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "Successfully retrieved BTC USD price ticker information."
    assert body["data"]["btcUsdPrice"] == price and body["data"]["source"] == "fixed"
    assert body["data"]["btcUsdTimestamp"] == str(rt.clock.now_ms() // 1000)


async def test_btcusd_without_a_rate_guesses_none(settings, rt):
    async with await _zbd_client(settings, rt, fx_fixed="") as zbd:
        assert_zbd_error(await zbd.get("/btcusd"), 503, "SERVICE_UNAVAILABLE")


@pytest.mark.parametrize("text", ["abc", "-5", "0", "NaN", "Infinity", "1" * 40])
def test_a_bad_fixed_rate_stops_the_server(text):
    with pytest.raises(UnsafeSettings, match="PAYRAIL_FX_FIXED"):
        Settings.from_env({"PAYRAIL_FX_FIXED": text})


async def test_a_charge_is_a_deposit_that_credits_the_wallet_once_paid(zbd, client):
    response = await zbd.post(
        "/charges",
        json={"amount": "5000000", "description": "Top-up", "expiresIn": 600, "internalId": "t1"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "Charge created."
    charge = body["data"]
    assert (charge["status"], charge["amount"], charge["unit"]) == ("pending", "5000000", "msats")
    assert charge["invoice"]["uri"] == "lightning:" + charge["invoice"]["request"]
    assert bolt11.decode(charge["invoice"]["request"]).amount_msat == 5_000_000
    assert charge["internalId"] == "t1"
    assert await balance_of(client) == 100_000  # nothing until it is paid
    paid = await client.post(f"/test/deposits/{charge['id']}/pay")
    assert paid.status_code == 200, paid.text
    got = await zbd.get(f"/charges/{charge['id']}")
    assert got.json()["message"] == "Fetched Charge."
    assert got.json()["data"]["status"] == "completed" and got.json()["data"]["confirmedAt"]
    assert await balance_of(client) == 105_000
    wallet = (await zbd.get("/wallet")).json()["data"]
    assert wallet["balance"] == "105000000"


async def test_charge_refusals_and_replays(zbd, client):
    assert_zbd_error(await zbd.post("/charges", json={"amount": "1500"}), 400, "INVALID_AMOUNT")
    assert_zbd_error(await zbd.post("/charges", json={}), 400, "VALIDATION_ERROR")
    key = {"Idempotency-Key": "topup-1"}
    first = await zbd.post("/charges", json={"amount": "2000000"}, headers=key)
    again = await zbd.post("/charges", json={"amount": "2000000"}, headers=key)
    assert first.json()["data"]["id"] == again.json()["data"]["id"]
    assert first.json()["data"]["invoice"] == again.json()["data"]["invoice"]
    other_key = (
        await client.post("/projects", json={"id": "studio_c"}, headers={"apikey": ADMIN_KEY})
    ).json()["data"]["apiKey"]
    hidden = await zbd.get(f"/charges/{first.json()['data']['id']}", headers={"apikey": other_key})
    assert_zbd_error(hidden, 404, "DEPOSIT_NOT_FOUND")
    assert await balance_of(client) == 100_000


ODD_VALUES = [
    None, "", "abc", 0, -1, 1.5, True, [], {}, "1000", "1500", "9" * 40, 10**30, "\u0000",
    "x" * 5000, "١٠٠٠", {"nested": [1, 2]}, "02" + "ab" * 32, "lnbc1", "a@b", "player1",
]  # fmt: skip
ROUTE_FIELDS = {
    "/gamertag/send-payment": ["amount", "gamertag", "description", "internalId"],
    "/ln-address/send-payment": ["amount", "lnAddress", "comment", "internalId", "callbackUrl"],
    "/payments": ["amount", "invoice", "description", "internalId", "callbackUrl"],
    "/keysend-payment": ["amount", "pubkey", "metadata", "tlvRecords", "callbackUrl"],
    "/charges": ["amount", "description", "expiresIn", "internalId"],
    "/internal-transfer": ["amount", "receiverWalletId"],
    "/decode-invoice": ["invoice"],
}


async def test_odd_bodies_never_get_a_500_and_a_refusal_moves_nothing(zbd, client, seed):
    """Seeded (the `seed` fixture prints it): bodies whose every field is drawn from odd
    values, sent to every /v0 POST route; each answer is ZBD's shape, never an undocumented
    5xx, and an answer that is not a success leaves the balance as it was."""
    rng = random.Random(seed)
    for path, fields in ROUTE_FIELDS.items():
        for _ in range(12):
            body = {f: rng.choice(ODD_VALUES) for f in fields if rng.random() < 0.8}
            before = await balance_of(client)
            response = await zbd.post(path, json=body)
            assert response.status_code < 500 or response.status_code in (502, 503, 504), (
                path,
                body,
                response.text,
            )
            answer = response.json()
            assert isinstance(answer["success"], bool) and isinstance(answer["message"], str)
            if not answer["success"]:
                assert answer["data"]["error"], (path, body, answer)
                assert await balance_of(client) == before, (path, body, answer)


@pytest.mark.parametrize(("key", "advice"), [(None, "false"), ("k-500", "true")])
async def test_an_unexpected_error_is_the_apps_500_with_retry_advice(
    zbd, client, monkeypatch, key, advice
):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(zbd_payments.payouts, "create_payout", broken)
    headers = {"Idempotency-Key": key} if key else {}
    response = await zbd.post(
        "/gamertag/send-payment", json={"gamertag": "p", "amount": "1000"}, headers=headers
    )
    body = assert_zbd_error(response, 500, "INTERNAL_ERROR")
    assert "a bug" not in body["message"]  # never the exception's text
    # A resend is safe only with the key: then ZBD's Python SDK may retry by itself.
    assert response.headers["x-should-retry"] == advice
    assert await balance_of(client) == 100_000
