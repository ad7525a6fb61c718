"""The front door (issue 25), through the ASGI app on SQLite and PostgreSQL: `GET /` and
the offline API docs, `Idempotent-Replayed: true` on replayed answers, a 413 in the envelope
whatever the framing, a Lightning Address paid in the sandbox, and the Python client:
every failure an ApiError, any destination, a batch key that is never random."""

from __future__ import annotations

import random
import re

import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, balance_of, payout_body

from payrail.client import ApiError, AsyncClient, RetryPolicy, batch_key
from payrail.entrypoints.http.app import create_app
from payrail.services import callback_urls

ROOT = "http://test"


@pytest.fixture
def app(settings, rt):
    return create_app(settings, runtime=rt, migrate_db=False)


async def test_root_points_to_the_docs_and_the_dashboard(client) -> None:
    answer = await client.get(f"{ROOT}/")
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert (data["docs"], data["dashboard"], data["api"]) == ("/docs", "/dashboard", "/api/v1")
    assert (await client.get(f"{ROOT}{data['openapi']}")).status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_api_docs_load_no_file_from_anywhere_else(client, page) -> None:
    html = (await client.get(f"{ROOT}{page}", follow_redirects=True)).text
    assert "http://" not in html and "https://" not in html  # no CDN: works offline
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", html)
    assert assets, html
    for asset in assets:
        served = await client.get(f"{ROOT}{asset}")
        assert served.status_code == 200, asset
        assert len(served.content) > 1000 or asset.endswith(".png"), asset


async def test_a_replayed_payout_says_so_in_a_header(client) -> None:
    start = await balance_of(client)
    body = payout_body(gamertag="replayed")
    first = await client.post("/payouts", json=body, headers={"Idempotency-Key": "k-1"})
    again = await client.post("/payouts", json=body, headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    assert await balance_of(client) == start - 1020


async def test_a_replayed_failed_payout_and_batch_and_funding_say_so(client) -> None:
    await client.post("/test/failure-injection", json={"enabled": True, "failureRate": 1})
    body = payout_body(gamertag="refused")
    first = await client.post("/payouts", json=body, headers={"Idempotency-Key": "f-1"})
    again = await client.post("/payouts", json=body, headers={"Idempotency-Key": "f-1"})
    assert (first.status_code, again.status_code) == (502, 502)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    await client.post("/test/failure-injection", json={"enabled": False})

    batch = {"projectId": PROJECT, "items": [{"gamertag": "b1", "amount": 100}]}
    sent = [
        await client.post("/payouts/batch", json=batch, headers={"Idempotency-Key": "b-1"})
        for _ in range(2)
    ]
    assert [s.status_code for s in sent] == [200, 200]
    assert "idempotent-replayed" not in sent[0].headers
    assert sent[1].headers["idempotent-replayed"] == "true"

    admin = {"apikey": ADMIN_KEY, "Idempotency-Key": "fund-1"}
    funded = [
        await client.post(f"/projects/{PROJECT}/fund", json={"amount": 10}, headers=admin)
        for _ in range(2)
    ]
    assert "idempotent-replayed" not in funded[0].headers
    assert funded[1].headers["idempotent-replayed"] == "true"


async def test_a_chunked_body_over_the_limit_is_the_same_413_envelope(client, settings) -> None:
    async def chunks():
        for _ in range(80):
            yield b"x" * 1024

    answer = await client.post(
        "/payouts", content=chunks(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.json() == {
        "success": False,
        "message": f"The request body is larger than {settings.body_max_bytes} bytes.",
        "data": {"error": "PAYLOAD_TOO_LARGE", "maxBytes": settings.body_max_bytes},
    }


async def test_a_lightning_address_on_example_com_is_paid_in_the_sandbox(client) -> None:
    start = await balance_of(client)
    answer = await client.post(
        "/payouts", json=payout_body(gamertag=None, lightningAddress="Alice@example.com")
    )
    assert answer.status_code == 201, answer.text
    data = answer.json()["data"]
    assert (data["destinationKind"], data["lightningAddress"]) == (
        "lightning_address",
        "alice@example.com",
    )
    assert await balance_of(client) == start - 1020


async def test_an_unresolvable_address_in_the_sandbox_says_what_works(client, monkeypatch):
    async def no_dns(host: str, port: int) -> list[object]:
        raise OSError("no DNS here")

    monkeypatch.setattr(callback_urls, "resolve_host", no_dns)
    start = await balance_of(client)
    answer = await client.post(
        "/payouts", json=payout_body(gamertag=None, lightningAddress="bob@nowhere.zz")
    )
    assert answer.status_code == 502
    message = answer.json()["message"]
    assert "callbackUrl" not in message  # it is not the payout's callback that failed
    assert "nowhere.zz does not resolve" in message and "example.com" in message
    assert await balance_of(client) == start


# ---------------------------------------------------------------- the Python client


def _client(app, transport: httpx.AsyncBaseTransport | None = None) -> AsyncClient:
    async def no_sleep(_: float) -> None:
        return None

    return AsyncClient(
        ROOT,
        SANDBOX_KEY,
        retry=RetryPolicy(attempts_max=3, rng=random.Random(1)),
        http=httpx.AsyncClient(transport=transport or httpx.ASGITransport(app=app)),
        sleep=no_sleep,
    )


class Answers(httpx.AsyncBaseTransport):
    """Answers every request with one fixed status and body: what a sick server sends."""

    def __init__(self, status: int, body: object) -> None:
        self.status, self.body, self.sent = status, body, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return httpx.Response(self.status, json=self.body)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "INTERNAL_ERROR"),
        (503, "DATABASE_UNAVAILABLE"),
        (502, "RECIPIENT_UNREACHABLE"),
        (502, "PROVIDER_ERROR"),
    ],
)
async def test_every_5xx_ends_as_an_api_error_never_a_private_one(app, status, code) -> None:
    sick = Answers(status, {"success": False, "message": "sick", "data": {"error": code}})
    async with _client(app, sick) as payrail:
        with pytest.raises(ApiError) as failed:
            await payrail.create_payout("p", 10, PROJECT)
    assert type(failed.value) is ApiError
    assert (failed.value.http_status, failed.value.code) == (status, code)
    assert failed.value.retryable and sick.sent == 3  # retried, then raised as itself


async def test_a_refusal_is_not_retryable_and_keeps_its_data(app) -> None:
    async with _client(app) as payrail:
        with pytest.raises(ApiError) as refused:
            await payrail.create_payout("rich", 100_000, PROJECT)
    assert (refused.value.http_status, refused.value.code) == (402, "INSUFFICIENT_BALANCE")
    assert not refused.value.retryable and refused.value.data["totalCost"] == 102_000


async def test_the_client_pays_any_destination(app, client) -> None:
    start = await balance_of(client)
    async with _client(app) as payrail:
        to_address = await payrail.create_payout(
            {"lightningAddress": "carol@example.com"}, 500, PROJECT
        )
        to_gamertag = await payrail.create_payout({"gamertag": "dave"}, 500, PROJECT)
        with pytest.raises(ValueError):
            await payrail.create_payout({"gamertag": "a", "invoice": "lnbc1"}, 500, PROJECT)
    assert to_address["destinationKind"] == "lightning_address"
    assert to_gamertag["gamertag"] == "dave"
    assert await balance_of(client) == start - 2 * 510


async def test_a_batch_sent_twice_without_a_key_pays_once(app, client) -> None:
    start = await balance_of(client)
    items = [{"gamertag": f"winner{i}", "amount": 1000} for i in range(3)]
    items.append({"lightningAddress": "eve@example.com", "amount": 1000})
    async with _client(app) as payrail:
        first = await payrail.create_payouts_batch(PROJECT, items)
        again = await payrail.create_payouts_batch(PROJECT, items)  # a rerun of the script
    assert [i["httpStatus"] for i in first] == [201] * 4
    assert [i["httpStatus"] for i in again] == [200] * 4
    assert [i["data"]["id"] for i in again] == [i["data"]["id"] for i in first]
    assert await balance_of(client) == start - 4 * 1020


def test_the_batch_key_is_derived_from_the_project_and_items_only() -> None:
    items = [{"gamertag": "a", "amount": 1}, {"gamertag": "b", "amount": 2}]
    assert batch_key(PROJECT, items) == batch_key(PROJECT, [dict(i) for i in items])
    assert batch_key(PROJECT, items) != batch_key(PROJECT, items[::-1])
    assert batch_key(PROJECT, items) != batch_key("other", items)
