"""payrail.client against the ASGI app: one idempotency key per logical payout, kept across
retries, so a lost answer, a refused connection or a 5xx never charges twice (balances
asserted); retries are bounded with exponential backoff and jitter; definite failures are
not retried."""

from __future__ import annotations

import random
import time

import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, balance_of
from starlette.testclient import TestClient

from payrail.client import (
    ApiError,
    AsyncClient,
    Client,
    PayoutFailed,
    RetryPolicy,
    WebhookVerificationError,
    verify_webhook,
)
from payrail.config import Settings
from payrail.entrypoints.http.app import create_app
from payrail.webhooks import sign

BASE = "http://test"


class Flaky(httpx.AsyncBaseTransport):
    """Fails the first `failures` requests to a path: refused, answer lost, or a 503."""

    def __init__(self, inner: httpx.AsyncBaseTransport, path: str, mode: str, failures: int = 1):
        self.inner, self.path, self.mode, self.failures = inner, path, mode, failures
        self.keys: list[str | None] = []  # the Idempotency-Key of every attempt at `path`

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != self.path:
            return await self.inner.handle_async_request(request)
        self.keys.append(request.headers.get("idempotency-key"))
        if self.failures > 0:
            self.failures -= 1
            if self.mode == "refused":
                raise httpx.ConnectError("connection refused", request=request)
            response = await self.inner.handle_async_request(request)  # the server acts
            await response.aread()
            if self.mode == "lost":
                raise httpx.ReadError("connection reset before the answer", request=request)
            return httpx.Response(503, text="upstream unavailable")  # a proxy's 503
        return await self.inner.handle_async_request(request)


def _no_sleep_policy(attempts_max: int = 4) -> tuple[RetryPolicy, list[float]]:
    return RetryPolicy(attempts_max=attempts_max, rng=random.Random(7)), []


@pytest.fixture
def app(settings, rt):
    return create_app(settings, runtime=rt, migrate_db=False)


def _async_client(app, flaky: Flaky | None, waits: list[float], policy: RetryPolicy) -> AsyncClient:
    transport = flaky or httpx.ASGITransport(app=app)

    async def sleep(s: float) -> None:
        waits.append(s)

    return AsyncClient(
        BASE,
        SANDBOX_KEY,
        retry=policy,
        http=httpx.AsyncClient(transport=transport),
        sleep=sleep,
    )


@pytest.mark.parametrize("mode", ["lost", "refused", "proxy_503"])
async def test_payout_retried_with_the_same_key_charges_once(app, client, mode):
    start = await balance_of(client)
    flaky = Flaky(httpx.ASGITransport(app=app), "/api/v1/payouts", mode)
    policy, waits = _no_sleep_policy()
    async with _async_client(app, flaky, waits, policy) as payrail:
        payout = await payrail.create_payout("retry_me", 1000, PROJECT)
    assert payout["status"] == "completed"
    assert len(flaky.keys) == 2 and flaky.keys[0] == flaky.keys[1] is not None
    assert len(waits) == 1
    # exactly one charge of amount + fee, one payout
    assert await balance_of(client) == start - 1020
    listed = (await client.get("/payouts")).json()["data"]
    assert [p["id"] for p in listed["payouts"]] == [payout["id"]]


async def test_retries_are_bounded_with_growing_jittered_waits(app):
    flaky = Flaky(httpx.ASGITransport(app=app), "/api/v1/payouts", "refused", failures=99)
    policy = RetryPolicy(attempts_max=4, backoff_base_ms=100, backoff_max_ms=300)
    waits: list[float] = []
    async with _async_client(app, flaky, waits, policy) as payrail:
        with pytest.raises(ApiError) as refused:
            await payrail.create_payout("never", 10, PROJECT)
    # no answer at all is an ApiError too (never an httpx exception), and may be retried
    assert (refused.value.http_status, refused.value.code) == (None, "NO_ANSWER")
    assert refused.value.retryable and isinstance(refused.value.__cause__, httpx.ConnectError)
    assert len(flaky.keys) == 4 and len(set(flaky.keys)) == 1
    assert len(waits) == 3
    caps = [0.1, 0.2, 0.3]  # base × 2^(n-1), capped at backoff_max_ms
    assert all(cap / 2 <= w <= cap for w, cap in zip(waits, caps, strict=True)), waits


async def test_definite_payout_failure_is_raised_not_retried(app, client):
    start = await balance_of(client)
    await client.post("/test/failure-injection", json={"enabled": True, "timeoutRate": 1})
    flaky = Flaky(httpx.ASGITransport(app=app), "/api/v1/payouts", "lost", failures=0)
    policy, waits = _no_sleep_policy()
    async with _async_client(app, flaky, waits, policy) as payrail:
        with pytest.raises(PayoutFailed) as failed:
            await payrail.create_payout("timeout", 1000, PROJECT)
    assert (failed.value.status, failed.value.code) == (504, "GATEWAY_TIMEOUT")
    assert failed.value.payout["status"] == "error"
    assert len(flaky.keys) == 1 and waits == []
    assert await balance_of(client) == start


async def test_a_post_without_a_key_is_not_resent_after_its_answer_was_lost(app, client):
    flaky = Flaky(httpx.ASGITransport(app=app), "/api/v1/orders", "lost")
    policy, waits = _no_sleep_policy()
    async with _async_client(app, flaky, waits, policy) as payrail:
        with pytest.raises(ApiError) as lost:
            await payrail.create_order(1999, "usd")
    assert len(flaky.keys) == 1  # it may have been applied: the caller decides
    assert lost.value.code == "NO_ANSWER" and not lost.value.retryable
    orders = (await client.get("/orders")).json()["data"]
    assert orders["count"] == 1


async def test_api_errors_carry_the_code_and_are_not_retried(app, client):
    flaky = Flaky(httpx.ASGITransport(app=app), "/api/v1/payouts", "lost", failures=0)
    policy, waits = _no_sleep_policy()
    start = await balance_of(client)
    async with _async_client(app, flaky, waits, policy) as payrail:
        with pytest.raises(ApiError) as refused:
            await payrail.create_payout("rich", 100_000, PROJECT)
        assert (refused.value.status, refused.value.code) == (402, "INSUFFICIENT_BALANCE")
        with pytest.raises(ApiError) as missing:
            await payrail.get_payout("nope")
        assert missing.value.code == "PAYOUT_NOT_FOUND"
    assert len(flaky.keys) == 1 and waits == []
    assert await balance_of(client) == start


async def test_async_client_covers_payouts_projects_orders(app, client):
    policy, waits = _no_sleep_policy()
    async with _async_client(app, None, waits, policy) as payrail:
        made = await payrail.create_payout("alice", 500, PROJECT, internal_id="r-1")
        assert (await payrail.get_payout(made["id"]))["totalCost"] == 510
        assert (await payrail.get_payout_by_internal_id("r-1"))["id"] == made["id"]
        page = await payrail.list_payouts(status="completed", limit=5)
        assert [p["id"] for p in page["payouts"]] == [made["id"]]
        history = await payrail.payout_history(made["id"])
        assert history[-1]["toStatus"] == "completed"
        assert (await payrail.balance(PROJECT))["balance"] == 100_000 - 510
        order = await payrail.create_order(1999, "usd", customer_id="cust_1")
        assert (await payrail.get_order(order["id"]))["status"] == "payment_pending"
        assert (await payrail.list_orders())["count"] == 1
    async with AsyncClient(
        BASE, ADMIN_KEY, http=httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    ) as admin:
        created = await admin.create_project("studio_client", "Studio")
        assert created["apiKey"]
        key = "fund-once"
        first = await admin.fund_project("studio_client", 7000, idempotency_key=key)
        again = await admin.fund_project("studio_client", 7000, idempotency_key=key)
        assert (first["addedAmount"], again["addedAmount"]) == (7000, 0)
        assert (await admin.balance("studio_client"))["balance"] == 7000


def test_sync_client_against_the_app_charges_once_across_a_lost_answer(settings: Settings):
    app = create_app(settings, migrate_db=True)
    with TestClient(app, base_url=BASE) as http:
        inner = http._transport  # the ASGI transport of Starlette's test client
        lost = {"left": 1, "keys": []}

        class LoseFirst(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                if request.url.path == "/api/v1/payouts" and request.method == "POST":
                    lost["keys"].append(request.headers.get("idempotency-key"))
                    if lost["left"]:
                        lost["left"] -= 1
                        inner.handle_request(request).read()
                        raise httpx.ReadTimeout("timed out", request=request)
                return inner.handle_request(request)

        waits: list[float] = []
        with Client(
            BASE, SANDBOX_KEY, http=httpx.Client(transport=LoseFirst()), sleep=waits.append
        ) as payrail:
            start = payrail.balance(PROJECT)["balance"]
            payout = payrail.create_payout("sync", 1000, PROJECT)
            assert payout["status"] == "completed"
            assert payrail.balance(PROJECT)["balance"] == start - 1020
            assert payrail.list_payouts()["count"] == 1
        assert len(lost["keys"]) == 2 and lost["keys"][0] == lost["keys"][1]
        assert len(waits) == 1


def test_verify_webhook_accepts_ours_and_refuses_others():
    body = b'{"id": "evt_1", "sequence": 1, "data": {}}'
    now = int(time.time())
    header = sign(["whsec_a"], body, now)
    assert verify_webhook("whsec_a", header, body)["id"] == "evt_1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook("whsec_b", header, body)
    with pytest.raises(WebhookVerificationError):
        verify_webhook("whsec_a", header, body + b" ")
