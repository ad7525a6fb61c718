"""Payout destinations through HTTP: Lightning Addresses (LUD-16 → LUD-06), invoices, the
directory's gamertags; each refusal charges nothing, each success is paid with one invoice.

The Lightning Address server is a real HTTP server on loopback (tests/lightning_kit.py),
allowed over plain http by PAYRAIL_LNURL_INSECURE_HOSTS; the node is the simulated one.
"""

from __future__ import annotations

import dataclasses
import hashlib

import bolt11
import httpx
import pytest
from conftest import ADMIN_KEY, balance_of, payout_body
from lightning_kit import AddressServer, Behaviour, make_invoice
from sqlalchemy import func, select

from payrail.bootstrap import SimulatedCrash, build_runtime
from payrail.db.tables import payouts, sim_node_payments
from payrail.domain.recipients import encode_lnurl
from payrail.entrypoints import worker
from payrail.entrypoints.http.app import create_app

PUBKEY = "02" + "ab" * 32


@pytest.fixture
def address_server():
    server = AddressServer().start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings, address_server):
    return dataclasses.replace(settings, lnurl_insecure_hosts=(address_server.host,))


async def _count(rt, table) -> int:
    async with rt.engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(table))


async def _node_destinations(rt) -> list[str]:
    async with rt.engine.connect() as conn:
        return list((await conn.execute(select(sim_node_payments.c.destination))).scalars())


def _body(**destination: object) -> dict[str, object]:
    body = payout_body(**destination)
    if "gamertag" not in destination:
        body.pop("gamertag")
    return body


async def test_lightning_address_is_paid_with_one_checked_invoice_for_the_exact_amount(
    client, rt, address_server
):
    start = await balance_of(client)
    response = await client.post(
        "/payouts", json=_body(lightningAddress=address_server.address("alice"), amount=1000)
    )
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    ((name, msat, invoice),) = address_server.issued
    assert (name, msat) == ("alice", 1_000_000)
    assert data["invoice"] == invoice and data["destinationKind"] == "lightning_address"
    assert data["gamertag"] is None and data["lightningAddress"] == address_server.address("alice")
    assert data["paymentHash"] == bolt11.decode(invoice).payment_hash
    assert await _node_destinations(rt) == [data["paymentHash"]]
    assert await balance_of(client) == start - 1020


async def test_registered_gamertag_is_paid_through_its_lightning_address_case_insensitively(
    client, rt, address_server
):
    put = await client.put(
        "/recipients/Alice", json={"lightningAddress": address_server.address("a")}
    )
    assert put.status_code == 201, put.text
    start = await balance_of(client)
    response = await client.post("/payouts", json=_body(gamertag="aLiCe", amount=500))
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert (data["gamertag"], data["destinationKind"]) == ("aLiCe", "lightning_address")
    assert len(address_server.issued) == 1
    assert await balance_of(client) == start - 510


async def test_registered_lnurl_is_paid(client, address_server):
    lnurl = encode_lnurl(f"http://{address_server.host}/.well-known/lnurlp/bob")
    assert (await client.put("/recipients/bob", json={"lnurl": lnurl})).status_code == 201
    response = await client.post("/payouts", json=_body(gamertag="bob", amount=300))
    assert response.status_code == 201, response.text
    assert response.json()["data"]["destinationKind"] == "lnurl"


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        (Behaviour(amount_offset_msat=1_000), "RECIPIENT_INVOICE_INVALID"),
        (Behaviour(wrong_description_hash=True), "RECIPIENT_INVOICE_INVALID"),
        (Behaviour(tag="withdrawRequest"), "RECIPIENT_INVOICE_INVALID"),
        (Behaviour(min_msat=2_000_000), "RECIPIENT_INVOICE_INVALID"),
        (Behaviour(max_msat=500_000), "RECIPIENT_INVOICE_INVALID"),
        (Behaviour(redirect=True), "RECIPIENT_UNREACHABLE"),
        (Behaviour(error="wallet closed"), "RECIPIENT_UNREACHABLE"),
    ],
    ids=["wrong-amount", "description-hash", "tag", "below-min", "above-max", "redirect", "error"],
)
async def test_a_service_answering_wrongly_is_refused_with_502_and_nothing_moves(
    client, rt, address_server, behaviour, code
):
    address_server.behaviours["eve"] = behaviour
    start = await balance_of(client)
    response = await client.post(
        "/payouts", json=_body(lightningAddress=address_server.address("eve"), amount=1000)
    )
    assert response.status_code == 502, response.text
    assert response.json()["data"]["error"] == code
    assert await balance_of(client) == start
    assert await _count(rt, payouts) == 0
    assert await _node_destinations(rt) == []


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("bob@127.0.0.1", "a loopback address"),  # not listed as insecure (no port)
        ("bob@10.0.0.7", "a private address"),
        ("bob@169.254.169.254", "a cloud metadata address"),
    ],
)
async def test_ssrf_guard_refuses_lnurl_hosts_that_are_not_public(client, rt, address, reason):
    start = await balance_of(client)
    response = await client.post("/payouts", json=_body(lightningAddress=address))
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["data"]["error"] == "RECIPIENT_UNREACHABLE"
    assert "URL guard" in body["message"] and reason in body["message"]  # refused, not tried
    assert await balance_of(client) == start
    assert await _count(rt, payouts) == 0


async def test_a_listed_insecure_host_is_allowed_only_on_its_own_port(client, address_server):
    other_port = f"bob@127.0.0.1:{address_server.port + 1}"
    response = await client.post("/payouts", json=_body(lightningAddress=other_port))
    assert response.status_code == 502
    assert "URL guard" in response.json()["message"]
    assert address_server.requests == []


async def test_lnurl_over_plain_http_to_an_unlisted_host_is_refused(client):
    lnurl = encode_lnurl("http://pay.example.com/.well-known/lnurlp/bob")
    await client.put("/recipients/bob", json={"lnurl": lnurl})
    response = await client.post("/payouts", json=_body(gamertag="bob"))
    assert response.status_code == 502
    assert "https" in response.json()["message"]


async def test_invoice_for_the_exact_amount_is_paid_and_recorded(client, rt):
    invoice = make_invoice(700_000)
    start = await balance_of(client)
    response = await client.post("/payouts", json=_body(invoice=invoice, amount=700))
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert (data["destinationKind"], data["invoice"]) == ("invoice", invoice)
    assert await _node_destinations(rt) == [bolt11.decode(invoice).payment_hash]
    assert await balance_of(client) == start - 714


@pytest.mark.parametrize(
    ("invoice", "status"),
    [
        (make_invoice(701_000), 400),  # another amount
        (make_invoice(None), 400),  # no amount
        (make_invoice(700_000, currency="tb"), 400),  # testnet
        (make_invoice(700_000, date=1_600_000_000, expiry_s=60), 400),  # expired
        ("lnbc1notaninvoice", 400),
    ],
    ids=["amount", "amountless", "network", "expired", "garbage"],
)
async def test_bad_invoice_is_400_invalid_invoice_and_nothing_moves(client, rt, invoice, status):
    start = await balance_of(client)
    response = await client.post("/payouts", json=_body(invoice=invoice, amount=700))
    assert response.status_code == status, response.text
    assert response.json()["data"]["error"] == "INVALID_INVOICE"
    assert await balance_of(client) == start
    assert await _count(rt, payouts) == 0


async def test_more_than_one_destination_is_400(client):
    body = payout_body(lightningAddress="a@example.com")
    response = await client.post("/payouts", json=body)
    assert response.status_code == 400
    assert set(response.json()["data"]["fields"]) == {"gamertag", "lightningAddress"}


async def test_suspended_recipient_is_403_before_any_charge(client, rt, address_server):
    await client.put(
        "/recipients/mallory",
        json={"lightningAddress": address_server.address("m"), "suspended": True},
    )
    start = await balance_of(client)
    response = await client.post("/payouts", json=_body(gamertag="Mallory"))
    assert response.status_code == 403
    assert response.json()["data"]["error"] == "RECIPIENT_SUSPENDED"
    assert await balance_of(client) == start
    assert address_server.issued == [] and await _count(rt, payouts) == 0


async def test_replay_with_the_same_key_fetches_no_second_invoice(client, address_server):
    body = _body(lightningAddress=address_server.address("carol"), idempotencyKey="k-11")
    first = await client.post("/payouts", json=body)
    second = await client.post("/payouts", json=body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["data"]["id"] == second.json()["data"]["id"]
    assert len(address_server.issued) == 1


async def test_crash_after_recording_the_invoice_pays_that_invoice_once(
    client, rt, clock, address_server
):
    rt.crashpoints.add("after_reserve")
    start = await balance_of(client)
    with pytest.raises(SimulatedCrash):
        await client.post("/payouts", json=_body(lightningAddress=address_server.address("dan")))
    rt.crashpoints.clear()
    async with rt.engine.connect() as conn:
        (row,) = (await conn.execute(select(payouts))).mappings()
    # tx1 recorded the invoice and the send intent together; recovery asks the node first
    assert row["state"] == "in_flight" and row["invoice"] == address_server.issued[0][2]
    clock.advance(rt.settings.lease_ms + 1)  # the dead process's lease runs out
    assert await worker.run_until_idle(rt) >= 1
    assert await _node_destinations(rt) == [row["payment_hash"]]
    assert len(address_server.issued) == 1
    assert await balance_of(client) == start - 1020


async def _production(settings, rt, clock, node=None):
    prod = dataclasses.replace(settings, mode="production")
    prod_rt = build_runtime(prod, clock=clock, node=node or rt.node, engine=rt.engine)
    app = create_app(prod, runtime=prod_rt, migrate_db=False)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test/api/v1",
        headers={"apikey": ADMIN_KEY},
    )


async def test_production_unregistered_gamertag_is_404_before_anything_is_reserved(
    settings, rt, clock, client
):
    start = await balance_of(client)
    async with await _production(settings, rt, clock) as prod:
        response = await prod.post("/payouts", json=payout_body(gamertag="nobody"))
    assert response.status_code == 404, response.text
    assert response.json()["data"]["error"] == "RECIPIENT_NOT_FOUND"
    assert await balance_of(client) == start
    assert await _count(rt, payouts) == 0


class _InvoiceOnly:
    """The simulated node as a backend that cannot keysend (like LNbits)."""

    def __init__(self, node):
        self._node = node
        self.kinds = frozenset(k for k in node.kinds if k.value == "invoice")

    def __getattr__(self, name):
        return getattr(self._node, name)


async def test_keysend_recipient_on_a_backend_without_keysend_is_422_and_nothing_moves(
    settings, rt, clock, client
):
    await client.put("/recipients/kate", json={"nodePubkey": PUBKEY})
    start = await balance_of(client)
    async with await _production(settings, rt, clock, node=_InvoiceOnly(rt.node)) as prod:
        response = await prod.post("/payouts", json=payout_body(gamertag="kate"))
    assert response.status_code == 422, response.text
    assert response.json()["data"]["error"] == "DESTINATION_UNSUPPORTED"
    assert await balance_of(client) == start


async def test_keysend_recipient_reaches_the_node_as_its_pubkey(client, rt):
    await client.put("/recipients/kate", json={"nodePubkey": PUBKEY})
    response = await client.post("/payouts", json=payout_body(gamertag="kate"))
    assert response.status_code == 201, response.text
    assert response.json()["data"]["destinationKind"] == "keysend"
    assert await _node_destinations(rt) == [PUBKEY[:64]]


async def test_sandbox_unregistered_gamertag_keeps_the_simulated_behaviour(client, rt):
    response = await client.post("/payouts", json=payout_body(gamertag="stranger"))
    assert response.status_code == 201
    assert response.json()["data"]["destinationKind"] == "gamertag"
    assert await _node_destinations(rt) == ["stranger"]


async def test_description_hash_is_checked_against_the_metadata(address_server):
    metadata = address_server.metadata("x")
    invoice = bolt11.decode(address_server.issuer(1000, metadata))
    assert invoice.description_hash == hashlib.sha256(metadata.encode()).hexdigest()
