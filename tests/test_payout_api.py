"""The payout API (docs/api.md) through HTTP: the seed scenario, the fixed defects, bad input."""

from __future__ import annotations

import pytest
from conftest import ADMIN_KEY, PROJECT, balance_of, payout_body

from payrail.services.reconcile import reconcile


async def set_faults(client, **knobs):
    response = await client.post("/test/failure-injection", json=knobs)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_seed_scenario_balance_drops_by_total_cost_per_201_and_not_at_all_per_504(client, rt):
    await set_faults(client, enabled=True, timeoutRate=0.3, rollbackOnTimeout=True, timeoutMs=10)
    start = await balance_of(client)
    codes = []
    for i in range(20):
        response = await client.post("/payouts", json=payout_body(gamertag=f"p{i}"))
        body = response.json()
        codes.append(response.status_code)
        assert response.status_code in (201, 504), response.text
        if response.status_code == 201:
            assert body["data"]["status"] == "completed"
        else:
            assert body["data"]["error"] == "GATEWAY_TIMEOUT"
            assert body["data"]["balanceRolledBack"] is True
            assert body["data"]["chargedAmount"] == 0
            assert body["data"]["status"] == "error"
    completed = codes.count(201)
    assert 0 < completed < 20, f"seeded run should mix outcomes, got {codes}"
    assert await balance_of(client) == start - 1020 * completed
    assert (await reconcile(rt)).clean


async def test_legacy_mode_without_rollback_keeps_the_charge_and_reconciliation_catches_it(
    client, rt
):
    await set_faults(client, enabled=True, timeoutRate=1.0, rollbackOnTimeout=False, timeoutMs=10)
    start = await balance_of(client)
    response = await client.post("/payouts", json=payout_body())
    assert response.status_code == 504
    data = response.json()["data"]
    assert data["balanceRolledBack"] is False and data["chargedAmount"] == 1020
    assert await balance_of(client) == start - 1020
    report = await reconcile(rt)
    assert [d.kind for d in report.discrepancies] == ["charged-not-paid"]
    assert report.discrepancies[0].ids == [data["id"]]


@pytest.mark.parametrize(
    ("amount", "fee"), [(1, 1), (49, 1), (50, 1), (51, 2), (1000, 20), (100_000, 2000)]
)
async def test_fee_is_ceil_two_percent_and_charged_with_the_amount(client, amount, fee):
    await client.post(f"/projects/{PROJECT}/fund", json={"amount": 5000})
    start = await balance_of(client)
    response = await client.post("/payouts", json=payout_body(amount=amount))
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert (data["fee"], data["totalCost"]) == (fee, amount + fee)
    assert await balance_of(client) == start - amount - fee


@pytest.mark.parametrize("amount", [0, -5, 1.5, "100", True, 100_001, None])
async def test_bad_amount_is_refused_with_invalid_amount_and_nothing_charged(client, amount):
    start = await balance_of(client)
    response = await client.post("/payouts", json=payout_body(amount=amount))
    assert response.status_code == 400
    expected = "VALIDATION_ERROR" if amount is None else "INVALID_AMOUNT"
    assert response.json()["data"]["error"] == expected
    assert await balance_of(client) == start


async def test_missing_fields_named_in_api_md_message(client):
    response = await client.post("/payouts", json={"amount": 5})
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["message"] == "Missing required fields: gamertag, amount, projectId"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"description": "x" * 145}, "DESCRIPTION_TOO_LONG"),
        ({"callbackUrl": "ftp://example.com/cb"}, "INVALID_CALLBACK_URL"),
        ({"callbackUrl": "not a url"}, "INVALID_CALLBACK_URL"),
        ({"gamertag": "has space"}, "VALIDATION_ERROR"),
        ({"gamertag": "x" * 65}, "VALIDATION_ERROR"),
        ({"expiresIn": 5}, "VALIDATION_ERROR"),
        ({"expiresIn": "300"}, "VALIDATION_ERROR"),
    ],
)
async def test_malformed_fields_get_their_code_and_change_nothing(client, overrides, code):
    start = await balance_of(client)
    response = await client.post("/payouts", json=payout_body(**overrides))
    assert response.status_code == 400
    assert response.json()["data"]["error"] == code
    if code == "DESCRIPTION_TOO_LONG":
        assert response.json()["data"]["maxLength"] == 144
    assert await balance_of(client) == start


async def test_description_of_144_chars_is_accepted(client):
    response = await client.post("/payouts", json=payout_body(description="x" * 144))
    assert response.status_code == 201


async def test_unknown_project_is_404_not_implicitly_created(client):
    admin = {"apikey": ADMIN_KEY}
    response = await client.post("/payouts", json=payout_body(projectId="nope"), headers=admin)
    assert (response.status_code, response.json()["data"]["error"]) == (404, "PROJECT_NOT_FOUND")
    response = await client.post("/projects/nope/fund", json={"amount": 10}, headers=admin)
    assert (response.status_code, response.json()["data"]["error"]) == (404, "PROJECT_NOT_FOUND")
    response = await client.get("/projects/nope/balance", headers=admin)
    assert response.status_code == 404


async def test_project_key_cannot_act_on_another_project(client):
    created = await client.post(
        "/projects", json={"id": "other_project"}, headers={"apikey": ADMIN_KEY}
    )
    assert created.status_code == 201
    response = await client.post("/payouts", json=payout_body(projectId="other_project"))
    assert (response.status_code, response.json()["data"]["error"]) == (403, "FORBIDDEN")


async def test_missing_or_wrong_key_is_401(client):
    assert (await client.get("/payouts", headers={"apikey": ""})).status_code == 401
    assert (await client.get("/payouts", headers={"apikey": "wrong"})).status_code == 401


async def test_same_idempotency_key_same_body_replays_without_second_charge(client):
    start = await balance_of(client)
    first = await client.post("/payouts", json=payout_body(idempotencyKey="abc"))
    second = await client.post("/payouts", json=payout_body(idempotencyKey="abc"))
    header = await client.post("/payouts", json=payout_body(), headers={"Idempotency-Key": "abc"})
    assert first.status_code == 201
    assert second.status_code == header.status_code == 200
    assert "already processed" in second.json()["message"]
    assert second.json()["data"]["id"] == first.json()["data"]["id"] == header.json()["data"]["id"]
    assert await balance_of(client) == start - 1020


async def test_reused_idempotency_key_with_other_body_is_422(client):
    await client.post("/payouts", json=payout_body(idempotencyKey="abc"))
    start = await balance_of(client)
    response = await client.post("/payouts", json=payout_body(idempotencyKey="abc", amount=7))
    assert (response.status_code, response.json()["data"]["error"]) == (
        422,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert await balance_of(client) == start


async def test_idempotency_keys_are_scoped_per_project(client):
    admin = {"apikey": ADMIN_KEY}
    created = await client.post("/projects", json={"id": "studio_b"}, headers=admin)
    await client.post("/projects/studio_b/fund", json={"amount": 5000}, headers=admin)
    other_key = {"apikey": created.json()["data"]["apiKey"]}
    a = await client.post("/payouts", json=payout_body(idempotencyKey="same"))
    b = await client.post(
        "/payouts", json=payout_body(idempotencyKey="same", projectId="studio_b"), headers=other_key
    )
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["data"]["id"] != b.json()["data"]["id"]
    assert await balance_of(client, "studio_b") == 5000 - 1020


async def test_replay_of_a_failed_payout_answers_the_same_failure(client):
    await set_faults(client, enabled=True, timeoutRate=1.0, timeoutMs=10)
    first = await client.post("/payouts", json=payout_body(idempotencyKey="t1"))
    await set_faults(client, enabled=False)
    again = await client.post("/payouts", json=payout_body(idempotencyKey="t1"))
    assert first.status_code == again.status_code == 504
    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    assert again.json()["data"]["error"] == "GATEWAY_TIMEOUT"


async def test_node_refusal_is_502_payment_failed_and_rolled_back(client):
    await set_faults(client, enabled=True, failureRate=1.0)
    start = await balance_of(client)
    response = await client.post("/payouts", json=payout_body())
    assert response.status_code == 502
    assert response.json()["data"]["error"] == "PAYMENT_FAILED"
    assert await balance_of(client) == start


async def test_insufficient_balance_is_402_with_amount_fee_total_and_nothing_reserved(client):
    admin = {"apikey": ADMIN_KEY}
    await client.post("/projects", json={"id": "poor"}, headers=admin)
    await client.post("/projects/poor/fund", json={"amount": 1019}, headers=admin)
    response = await client.post("/payouts", json=payout_body(projectId="poor"), headers=admin)
    assert response.status_code == 402
    data = response.json()["data"]
    assert data["error"] == "INSUFFICIENT_BALANCE"
    assert (data["requiredAmount"], data["fee"], data["totalCost"], data["currentBalance"]) == (
        1000,
        20,
        1020,
        1019,
    )
    for figure in ("1000", "20", "1020"):
        assert figure in response.json()["message"]
    balance = (await client.get("/projects/poor/balance", headers=admin)).json()["data"]
    assert (balance["balance"], balance["reserved"]) == (1019, 0)


async def test_rate_limit_allows_ten_per_gamertag_per_hour_then_429_with_retry_after(client, clock):
    for _ in range(10):
        assert (await client.post("/payouts", json=payout_body(amount=1))).status_code == 201
    start = await balance_of(client)
    refused = await client.post("/payouts", json=payout_body(amount=1))
    assert refused.status_code == 429
    data = refused.json()["data"]
    assert data["error"] == "RATE_LIMIT_EXCEEDED"
    assert 3590 <= data["retryAfter"] <= 3600
    assert await balance_of(client) == start
    other = await client.post("/payouts", json=payout_body(amount=1, gamertag="player2"))
    assert other.status_code == 201
    clock.advance(3_600_001)
    assert (await client.post("/payouts", json=payout_body(amount=1))).status_code == 201


async def test_fund_adds_sats_and_reports_previous_and_new_balance(client):
    start = await balance_of(client)
    response = await client.post(f"/projects/{PROJECT}/fund", json={"amount": 500})
    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["previousBalance"], data["addedAmount"], data["newBalance"]) == (
        start,
        500,
        start + 500,
    )
    again = await client.post(
        f"/projects/{PROJECT}/fund", json={"amount": 500}, headers={"Idempotency-Key": "f1"}
    )
    replay = await client.post(
        f"/projects/{PROJECT}/fund", json={"amount": 500}, headers={"Idempotency-Key": "f1"}
    )
    assert again.json()["data"]["addedAmount"] == 500
    assert replay.json()["data"]["addedAmount"] == 0
    assert await balance_of(client) == start + 1000


async def test_create_project_returns_key_once_and_409_for_taken_id(client):
    admin = {"apikey": ADMIN_KEY}
    created = await client.post("/projects", json={"id": "studio_x", "name": "X"}, headers=admin)
    assert created.status_code == 201
    assert created.json()["data"]["apiKey"]
    again = await client.post("/projects", json={"id": "studio_x"}, headers=admin)
    assert (again.status_code, again.json()["data"]["error"]) == (409, "PROJECT_EXISTS")
    not_admin = await client.post("/projects", json={"id": "studio_y"})
    assert not_admin.status_code == 403


async def test_completed_payout_can_never_move_back(client):
    payout = (await client.post("/payouts", json=payout_body())).json()["data"]
    balance = await balance_of(client)
    for status in ("pending", "expired", "error"):
        response = await client.patch(f"/payouts/{payout['id']}/status", json={"status": status})
        assert (response.status_code, response.json()["data"]["error"]) == (
            409,
            "INVALID_STATUS_TRANSITION",
        )
    expire = await client.post(f"/test/expire/{payout['id']}")
    assert expire.status_code == 409
    assert await balance_of(client) == balance
    bad = await client.patch(f"/payouts/{payout['id']}/status", json={"status": "paid"})
    assert bad.status_code == 400
    assert bad.json()["data"]["validStatuses"] == ["pending", "completed", "expired", "error"]


async def test_get_list_and_internal_id_lookup(client):
    ids = []
    for i in range(3):
        response = await client.post("/payouts", json=payout_body(internalId=f"int-{i}", amount=10))
        ids.append(response.json()["data"]["id"])
    got = await client.get(f"/payouts/{ids[0]}")
    assert got.json()["data"]["internalId"] == "int-0"
    by_internal = await client.get("/payouts/by-internal-id/int-2")
    assert by_internal.json()["data"]["id"] == ids[2]
    page1 = (await client.get("/payouts", params={"limit": 2})).json()["data"]
    page2 = (
        await client.get("/payouts", params={"limit": 2, "cursor": page1["nextCursor"]})
    ).json()["data"]
    seen = [p["id"] for p in page1["payouts"] + page2["payouts"]]
    assert sorted(seen) == sorted(ids) and len(seen) == 3
    assert page2["hasMore"] is False
    missing = await client.get("/payouts/00000000-0000-0000-0000-000000000000")
    assert (missing.status_code, missing.json()["data"]["error"]) == (404, "PAYOUT_NOT_FOUND")
    completed = (await client.get("/payouts", params={"status": "completed"})).json()["data"]
    assert completed["count"] == 3


async def test_statuses_and_health(client):
    statuses = (await client.get("/statuses")).json()["data"]
    assert statuses["statuses"] == ["pending", "completed", "expired", "error"]
    assert set(statuses["descriptions"]) == set(statuses["statuses"])
    health = await client.get("/health", headers={})
    assert health.json()["data"]["status"] == "healthy"


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "code"),
    [
        ("POST", "/payouts", b"{not json", 400, "VALIDATION_ERROR"),
        ("POST", "/payouts", b"[1,2]", 400, "VALIDATION_ERROR"),
        ("POST", "/payouts", b'"str"', 400, "VALIDATION_ERROR"),
        ("POST", "/payouts", b"\xff\xfe", 400, "VALIDATION_ERROR"),
        ("GET", "/no/such/route", b"", 404, "NOT_FOUND"),
        ("DELETE", "/payouts", b"", 405, "METHOD_NOT_ALLOWED"),
        ("POST", "/payouts", b"{" + b'"a":"' + b"x" * 70_000 + b'"}', 413, "PAYLOAD_TOO_LARGE"),
    ],
)
async def test_bad_input_gets_the_envelope_and_changes_nothing(
    client, method, path, content, status, code
):
    start = await balance_of(client)
    response = await client.request(
        method, path, content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    body = response.json()
    assert body["success"] is False and body["data"]["error"] == code
    assert await balance_of(client) == start


async def test_expire_pending_payout_releases_reservation(client, rt):
    await set_faults(
        client, enabled=True, ambiguousRate=1.0, timeoutMs=10, ambiguousSettleMs=60_000
    )
    start = await balance_of(client)
    response = await client.post("/payouts", json=payout_body())
    assert response.status_code == 202
    # In flight: the node may still pay it, so it cannot expire.
    payout_id = response.json()["data"]["id"]
    assert (await client.post(f"/test/expire/{payout_id}")).status_code == 409
    assert await balance_of(client) == start - 1020


async def test_production_mode_hides_every_sandbox_endpoint(settings, rt):
    from dataclasses import replace

    import httpx

    from payrail.entrypoints.http.app import create_app

    production = replace(settings, mode="production")
    app = create_app(production, runtime=rt, migrate_db=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test/api/v1", headers={"apikey": ADMIN_KEY}
    ) as c:
        payout = (await c.post("/payouts", json=payout_body())).json()["data"]
        calls = [
            ("GET", "/test/failure-injection"),
            ("POST", "/test/failure-injection"),
            ("DELETE", "/test/reset"),
            ("POST", f"/test/expire/{payout['id']}"),
            ("PATCH", f"/payouts/{payout['id']}/status"),
            ("GET", "/test/callbacks"),
        ]
        for method, path in calls:
            response = await c.request(method, path, json={"status": "error"})
            assert response.status_code == 404, (method, path)
        assert (await c.get(f"/payouts/{payout['id']}")).json()["data"]["status"] == "completed"
