"""Failed authentication is throttled (issue 24, finding 6).

Before: 300 wrong dashboard sign-ins in 0.8 s and 300 wrong API keys in 7.6 s, and the right
key was accepted straight after. Now, after AUTH_FAILURES_MAX failures within the window from
one address (or for one key prefix), that address (or prefix) is answered 429 AUTH_THROTTLED
with Retry-After, the right key included, until the window lets the oldest failure go; each
refusal is counted in payrail_auth_throttled_total and changes nothing.
"""

from __future__ import annotations

import httpx
import pytest
import structlog.testing
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, balance_of, payout_body
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from test_dashboard import CSRF_RE

from payrail.db.tables import dashboard_sessions, payouts
from payrail.entrypoints.http.app import create_app
from payrail.services.auth_throttle import AUTH_FAILURE_WINDOW_MS, AUTH_FAILURES_MAX

BALANCE = f"/projects/{PROJECT}/balance"  # any route that needs a key


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def app(settings, rt):
    return create_app(settings, runtime=rt, migrate_db=False)


@pytest.fixture
async def from_address(app):
    """Clients of one app (one throttle), each from the client address given."""
    opened: list[httpx.AsyncClient] = []

    def open_client(address: str, base: str = "http://test/api/v1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40_000))
        c = httpx.AsyncClient(transport=transport, base_url=base)
        opened.append(c)
        return c

    yield open_client
    for c in opened:
        await c.aclose()


def _throttled(response) -> int:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["success"] is False and body["data"]["error"] == "AUTH_THROTTLED", body
    retry_after = int(response.headers["Retry-After"])
    assert retry_after == body["data"]["retryAfter"]
    assert 1 <= retry_after <= AUTH_FAILURE_WINDOW_MS // 1000
    return retry_after


async def _payouts(rt) -> int:
    async with rt.engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(payouts))


async def test_after_too_many_wrong_keys_an_address_is_refused_even_with_the_right_key(
    from_address, client, rt, clock
):
    attacker = from_address("10.0.0.1")
    before_throttled = _sample("payrail_auth_throttled_total", surface="api", by="address")
    with structlog.testing.capture_logs() as logged:
        for i in range(AUTH_FAILURES_MAX):
            wrong = await attacker.get(BALANCE, headers={"apikey": f"{i:04d}-guess-xxxxxxxx"})
            assert wrong.status_code == 401, wrong.text
    engaged = [e for e in logged if e["event"] == "auth_throttle_engaged"]
    assert [(e["by"], e["address"]) for e in engaged] == [("address", "10.0.0.1")]
    assert "guess" not in repr(engaged)  # neither the key nor its prefix is logged
    start, count = await balance_of(client), await _payouts(rt)

    _throttled(await attacker.get(BALANCE, headers={"apikey": "guess-last"}))
    right = await attacker.post("/payouts", json=payout_body(), headers={"apikey": SANDBOX_KEY})
    _throttled(right)
    _throttled(await attacker.get(BALANCE, headers={"apikey": ADMIN_KEY}))
    assert await balance_of(client) == start and await _payouts(rt) == count
    after = _sample("payrail_auth_throttled_total", surface="api", by="address")
    assert after - before_throttled == 3

    # Another address is not affected; and once the window has passed, the key works again.
    other = from_address("10.0.0.2")
    assert (await other.get(BALANCE, headers={"apikey": SANDBOX_KEY})).status_code == 200
    clock.advance(AUTH_FAILURE_WINDOW_MS)
    paid = await attacker.post("/payouts", json=payout_body(), headers={"apikey": SANDBOX_KEY})
    assert paid.status_code == 201, paid.text
    assert await balance_of(client) == start - 1020


async def test_one_key_prefix_guessed_from_many_addresses_is_throttled(from_address):
    prefix = "sandbox_"  # an operator-chosen admin key's start, guessed from a botnet
    for i in range(AUTH_FAILURES_MAX):
        c = from_address(f"10.1.0.{i + 1}")
        assert (await c.get(BALANCE, headers={"apikey": f"{prefix}{i}"})).status_code == 401
    fresh = from_address("10.1.1.1")
    _throttled(await fresh.get(BALANCE, headers={"apikey": f"{prefix}next"}))
    assert (await fresh.get(BALANCE, headers={"apikey": "other_prefix"})).status_code == 401
    assert (await fresh.get(BALANCE, headers={"apikey": SANDBOX_KEY})).status_code == 200


async def _sign_in(dash: httpx.AsyncClient, key: str) -> httpx.Response:
    token = CSRF_RE.search((await dash.get("/dashboard/login")).text).group(1)
    return await dash.post("/dashboard/login", data={"key": key, "name": "eve", "csrf": token})


async def test_dashboard_sign_in_is_throttled_and_shares_the_budget_of_the_api(from_address, rt):
    dash = from_address("10.2.0.1", base="http://test")
    api = from_address("10.2.0.1")
    before = _sample("payrail_auth_failures_total", surface="dashboard")
    for i in range(AUTH_FAILURES_MAX):
        assert (await _sign_in(dash, f"wrong-{i}")).status_code == 401
    assert _sample("payrail_auth_failures_total", surface="dashboard") - before == AUTH_FAILURES_MAX

    refused = await _sign_in(dash, ADMIN_KEY)  # the right key, after too many wrong ones
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= AUTH_FAILURE_WINDOW_MS // 1000
    assert "Too many failed authentications" in refused.text
    assert "payrail_session=" not in refused.headers.get("set-cookie", "")
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(dashboard_sessions)) == 0
    _throttled(await api.get(BALANCE, headers={"apikey": SANDBOX_KEY}))


async def test_a_valid_key_used_often_is_never_throttled(from_address):
    c = from_address("10.3.0.1")
    for _ in range(AUTH_FAILURES_MAX * 3):
        assert (await c.get(BALANCE, headers={"apikey": SANDBOX_KEY})).status_code == 200
