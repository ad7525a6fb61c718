"""Admin project list and API key rotation (issue 25), on SQLite and PostgreSQL: the new key
works at once; the old one works until its stated grace ends (0: at once), never longer; a
second rotation ends the first old key; every rotation is audited; bad input changes nothing."""

from __future__ import annotations

import pytest
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, balance_of, payout_body

from payrail.services.project_keys import KEY_GRACE_DEFAULT_S

ADMIN = {"apikey": ADMIN_KEY}


async def _works(client, key: str) -> bool:
    answer = await client.get(f"/projects/{PROJECT}/balance", headers={"apikey": key})
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


async def _rotate(client, **body):
    return await client.post(f"/projects/{PROJECT}/keys", json=body or None, headers=ADMIN)


async def test_the_admin_lists_projects_and_a_project_key_may_not(client) -> None:
    await client.post("/projects", json={"id": "studio_7", "name": "Studio 7"}, headers=ADMIN)
    listed = await client.get("/projects?limit=1", headers=ADMIN)
    assert listed.status_code == 200
    page = listed.json()["data"]
    assert page["count"] == 1 and page["hasMore"] and page["projects"][0]["id"] == "studio_7"
    rest = await client.get(f"/projects?cursor={page['nextCursor']}", headers=ADMIN)
    assert [p["id"] for p in rest.json()["data"]["projects"]] == [PROJECT]
    assert "apiKey" not in str(listed.json()) and "hash" not in str(listed.json())
    refused = await client.get("/projects")  # the sandbox project's key
    assert (refused.status_code, refused.json()["data"]["error"]) == (403, "FORBIDDEN")


async def test_the_old_key_works_until_its_grace_ends_and_never_after(client, clock) -> None:
    start = await balance_of(client)
    rotated = await _rotate(client, gracePeriodSeconds=600, reason="yearly")
    assert rotated.status_code == 201, rotated.text
    new_key = rotated.json()["data"]["apiKey"]
    assert new_key.startswith("pk_") and rotated.json()["data"]["previousKeyExpiresAt"]
    assert await _works(client, new_key) and await _works(client, SANDBOX_KEY)
    # the old key still acts on its own project during the grace
    paid = await client.post("/payouts", json=payout_body(gamertag="grace"))
    assert paid.status_code == 201
    assert await balance_of(client) == start - 1020
    clock.advance(600_000 + 1)
    assert not await _works(client, SANDBOX_KEY)
    assert await _works(client, new_key)
    refused = await client.post("/payouts", json=payout_body(gamertag="late"))
    assert refused.status_code == 401 and await balance_of(client) == start - 1020


async def test_a_zero_grace_revokes_the_old_key_at_once(client) -> None:
    rotated = await _rotate(client, gracePeriodSeconds=0, reason="leaked")
    assert rotated.json()["data"]["previousKeyExpiresAt"] is None
    assert not await _works(client, SANDBOX_KEY)
    assert await _works(client, rotated.json()["data"]["apiKey"])


async def test_a_second_rotation_ends_the_first_old_key_and_both_are_audited(client) -> None:
    first = (await _rotate(client)).json()["data"]["apiKey"]
    second = (await _rotate(client, gracePeriodSeconds=60)).json()["data"]["apiKey"]
    assert not await _works(client, SANDBOX_KEY)  # at most two keys work at once
    assert await _works(client, first) and await _works(client, second)
    history = await client.get(f"/projects/{PROJECT}/keys", headers=ADMIN)
    rotations = history.json()["data"]["rotations"]
    assert [r["gracePeriodSeconds"] for r in rotations] == [60, KEY_GRACE_DEFAULT_S]
    assert all(r["actor"].startswith("admin:") for r in rotations)
    listed = (await client.get("/projects", headers=ADMIN)).json()["data"]["projects"]
    assert listed[0]["keyRotatedAt"] and listed[0]["previousKeyExpiresAt"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"gracePeriodSeconds": -1}, 400),
        ({"gracePeriodSeconds": 10**9}, 400),
        ({"gracePeriodSeconds": "1h"}, 400),
        ({"gracePeriodSeconds": True}, 400),
        ({"reason": "x" * 201}, 400),
        ({"other": 1}, 400),
    ],
)
async def test_bad_rotation_input_changes_nothing(client, body, status) -> None:
    answer = await client.post(f"/projects/{PROJECT}/keys", json=body, headers=ADMIN)
    assert (answer.status_code, answer.json()["data"]["error"]) == (status, "VALIDATION_ERROR")
    assert await _works(client, SANDBOX_KEY)
    history = await client.get(f"/projects/{PROJECT}/keys", headers=ADMIN)
    assert history.json()["data"]["rotations"] == []


async def test_only_the_admin_rotates_and_only_known_projects(client) -> None:
    refused = await client.post(f"/projects/{PROJECT}/keys")
    assert refused.status_code == 403 and await _works(client, SANDBOX_KEY)
    missing = await client.post("/projects/nope_123/keys", headers=ADMIN)
    assert (missing.status_code, missing.json()["data"]["error"]) == (404, "PROJECT_NOT_FOUND")
