"""The recipient directory through HTTP: register, update, look up, list, remove, audit, scope."""

from __future__ import annotations

import pytest
from conftest import ADMIN_KEY, PROJECT

PUBKEY = "02" + "ab" * 32


async def _new_project(client, project_id: str) -> str:
    response = await client.post(
        "/projects", json={"id": project_id, "name": project_id}, headers={"apikey": ADMIN_KEY}
    )
    assert response.status_code == 201, response.text
    return response.json()["data"]["apiKey"]


async def test_put_creates_then_updates_and_gamertag_case_does_not_make_a_second_recipient(client):
    created = await client.put("/recipients/Alice", json={"lightningAddress": "Alice@Example.com"})
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert (data["gamertag"], data["kind"], data["lightningAddress"]) == (
        "Alice",
        "lightning_address",
        "alice@example.com",
    )
    updated = await client.put("/recipients/ALICE", json={"nodePubkey": PUBKEY})
    assert updated.status_code == 200, updated.text
    assert updated.json()["data"]["nodePubkey"] == PUBKEY
    assert updated.json()["data"]["lightningAddress"] is None
    found = await client.get("/recipients/alice")
    assert found.status_code == 200 and found.json()["data"]["id"] == data["id"]
    listed = (await client.get("/recipients")).json()["data"]
    assert listed["count"] == 1


async def test_every_change_is_audited_with_old_and_new(client):
    await client.put("/recipients/bob", json={"lightningAddress": "bob@example.com"})
    await client.put("/recipients/bob", json={"lightningAddress": "bob@other.example"})
    assert (await client.delete("/recipients/Bob")).status_code == 200
    events = (await client.get("/recipients/bob/history")).json()["data"]["events"]
    assert [e["action"] for e in events] == ["created", "updated", "deleted"]
    assert events[1]["old"]["destination"] == "bob@example.com"
    assert events[1]["new"]["destination"] == "bob@other.example"
    assert events[2]["new"] is None
    assert {e["actor"] for e in events} == {f"project:{PROJECT}"}
    missing = await client.get("/recipients/bob")
    assert missing.status_code == 404
    assert missing.json()["data"]["error"] == "RECIPIENT_NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"lightningAddress": "no-at-sign"}, "lightningAddress"),
        ({"lightningAddress": "UPPER CASE@x.com"}, "lightningAddress"),
        ({"lnurl": "lnurl1notbech32"}, "lnurl"),
        ({"nodePubkey": "04" + "ab" * 32}, "nodePubkey"),
        ({"nodePubkey": "02abc"}, "nodePubkey"),
        ({"lightningAddress": "a@b.com", "suspended": "yes"}, "suspended"),
    ],
)
async def test_bad_values_are_400_naming_the_field_and_store_nothing(client, body, field):
    response = await client.put("/recipients/carol", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["data"]["field"] == field
    assert (await client.get("/recipients/carol")).status_code == 404


@pytest.mark.parametrize(
    "body", [{}, {"lightningAddress": "a@b.com", "nodePubkey": PUBKEY}, [], "x", None]
)
async def test_not_exactly_one_destination_is_400(client, body):
    response = await client.put("/recipients/dave", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["data"]["error"] == "VALIDATION_ERROR"


async def test_bad_gamertag_in_path_is_400(client):
    response = await client.put("/recipients/bad%20tag", json={"nodePubkey": PUBKEY})
    assert response.status_code == 400
    assert response.json()["data"]["field"] == "gamertag"


async def test_lnurl_is_stored_lowercased_and_decodable(client):
    from payrail.domain.recipients import decode_lnurl, encode_lnurl

    lnurl = encode_lnurl("https://pay.example.com/lnurlp/erin").upper()
    response = await client.put("/recipients/erin", json={"lnurl": lnurl})
    assert response.status_code == 201, response.text
    assert decode_lnurl(response.json()["data"]["lnurl"]) == "https://pay.example.com/lnurlp/erin"


async def test_a_project_key_sees_only_its_own_directory_and_admin_names_the_project(client):
    other_key = await _new_project(client, "project_other_11")
    await client.put("/recipients/frank", json={"nodePubkey": PUBKEY})
    other = {"apikey": other_key}
    assert (await client.get("/recipients/frank", headers=other)).status_code == 404
    assert (await client.get("/recipients", headers=other)).json()["data"]["count"] == 0
    forbidden = await client.get(f"/recipients?projectId={PROJECT}", headers=other)
    assert forbidden.status_code == 403
    admin = {"apikey": ADMIN_KEY}
    assert (await client.get("/recipients/frank", headers=admin)).status_code == 400
    seen = await client.get(f"/recipients/frank?projectId={PROJECT}", headers=admin)
    assert seen.status_code == 200
    assert (await client.get("/recipients", headers=admin)).json()["data"]["count"] == 1
    nope = await client.put(
        "/recipients/frank?projectId=no_such_project", json={"nodePubkey": PUBKEY}, headers=admin
    )
    assert nope.status_code == 404


async def test_list_pages_without_skipping_or_repeating(client, clock):
    names = [f"g{i}" for i in range(5)]
    for name in names:
        await client.put(f"/recipients/{name}", json={"nodePubkey": PUBKEY})
        clock.advance(1)
    seen, cursor = [], None
    for _ in range(5):
        query = "/recipients?limit=2" + (f"&cursor={cursor}" if cursor else "")
        data = (await client.get(query)).json()["data"]
        seen += [r["gamertag"] for r in data["recipients"]]
        cursor = data["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(names) and len(seen) == len(names)
    assert (await client.get("/recipients?limit=0")).status_code == 400
    assert (await client.get("/recipients?cursor=%%%")).status_code == 400
