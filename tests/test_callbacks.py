"""Callbacks: signed, retried, never lost — against a real HTTP receiver on 127.0.0.1.

Time is the ShiftableClock: a test jumps to a callback's next attempt instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import ADMIN_KEY, PROJECT, SANDBOX_KEY, balance_of, payout_body
from sqlalchemy import select

from payrail.bootstrap import SimulatedCrash, build_runtime
from payrail.config import DEFAULT_SANDBOX_WEBHOOK_SECRET, Settings
from payrail.db.tables import callback_attempts, callbacks, jobs
from payrail.domain.recipients import parse_recipient
from payrail.entrypoints import worker
from payrail.entrypoints.http.app import create_app
from payrail.services import callback_urls, recipients
from payrail.services import callbacks as cb
from payrail.webhooks import WebhookVerificationError, verify

Action = int | str  # an HTTP status to answer, or "hang"


class Receiver:
    """A studio's server; `respond(n)` answers the n-th request (1-based) of one event."""

    def __init__(self) -> None:
        self.requests: list[dict[str, object]] = []
        self.respond: Callable[[int], Action] = lambda n: 200
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                event_id = self.headers.get("payrail-event-id", "")
                with receiver._lock:
                    n = 1 + sum(1 for r in receiver.requests if r["event_id"] == event_id)
                    receiver.requests.append(
                        {"event_id": event_id, "headers": dict(self.headers), "body": body}
                    )
                action = receiver.respond(n)
                if action == "hang":
                    receiver.release.wait(30)
                    return
                try:
                    self.send_response(int(action))
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/payrail-hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def by_event(self) -> dict[str, list[dict[str, object]]]:
        grouped: dict[str, list[dict[str, object]]] = defaultdict(list)
        for r in self.requests:
            grouped[str(r["event_id"])].append(r)
        return grouped

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def rows_of(rt, table, *where):
    async with rt.engine.connect() as conn:
        return list((await conn.execute(select(table).where(*where))).mappings())


async def new_payout(client, url: str, **overrides) -> dict:
    response = await client.post("/payouts", json=payout_body(callbackUrl=url, **overrides))
    assert response.status_code in (201, 202), response.text
    return response.json()["data"]


async def drive_until_settled(rt, clock, rounds_max: int = 60) -> None:
    """Run due jobs; jump the clock to the next pending attempt; until nothing is pending."""
    for _ in range(rounds_max):
        await worker.run_until_idle(rt)
        pending = await rows_of(rt, callbacks, callbacks.c.status == "pending")
        if not pending:
            return
        due = min(r["next_attempt_at"] for r in pending)
        clock.advance(max(0, due - rt.clock.now_ms()) + 1)
    raise AssertionError("callbacks still pending after the round limit")


def signature_of(request: dict) -> str:
    headers = {k.lower(): v for k, v in request["headers"].items()}
    return headers["payrail-signature"]


# ---------------------------------------------------------------- signing


async def test_each_status_change_is_one_signed_event_that_verifies_only_with_the_project_secret(
    client, rt, receiver
):
    payout = await new_payout(client, receiver.url)
    await worker.run_until_idle(rt)
    events = receiver.by_event()
    assert len(events) == 2, "one event for 'pending' at creation, one for 'completed'"
    seen = []
    for event_id, requests in events.items():
        (request,) = requests
        body = request["body"]
        event = verify(DEFAULT_SANDBOX_WEBHOOK_SECRET, signature_of(request), body)
        assert event["id"] == event_id
        assert event["event"] == "payout.status_changed"
        assert event["data"]["id"] == payout["id"]
        seen.append((event["sequence"], event["data"]["status"]))
        with pytest.raises(WebhookVerificationError, match="No signature matches"):
            verify("whsec_some_other_secret", signature_of(request), body)
        with pytest.raises(WebhookVerificationError):
            verify(DEFAULT_SANDBOX_WEBHOOK_SECRET, signature_of(request), body + b" ")
    assert sorted(seen) == [(1, "pending"), (2, "completed")]
    delivered = await rows_of(rt, callbacks, callbacks.c.status == "delivered")
    assert len(delivered) == 2


def test_verify_rejects_stale_timestamps_and_malformed_headers():
    from payrail.webhooks import sign

    body = b'{"id":"e1"}'
    header = sign(["whsec_a"], body, 1_000_000)
    assert verify("whsec_a", header, body, now_s=1_000_100)["id"] == "e1"
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify("whsec_a", header, body, now_s=1_000_000 + 301)
    for bad in (None, "", "v1=abc", "t=x,v1=abc", "t=1000000"):
        with pytest.raises(WebhookVerificationError):
            verify("whsec_a", bad, body, now_s=1_000_000)


async def test_rotated_secret_signs_alongside_the_new_one_until_the_grace_period_ends(
    client, rt, clock, receiver
):
    admin = {"apikey": ADMIN_KEY}
    created = await client.post("/projects", json={"id": "studio_rot"}, headers=admin)
    assert created.status_code == 201, created.text
    old_secret = created.json()["data"]["webhookSecret"]
    key = {"apikey": created.json()["data"]["apiKey"]}
    await client.post("/projects/studio_rot/fund", json={"amount": 50_000}, headers=admin)

    async def signatures_of_next_payout(tag: str) -> list[dict]:
        before = len(receiver.requests)
        response = await client.post(
            "/payouts",
            json=payout_body(projectId="studio_rot", gamertag=tag, callbackUrl=receiver.url),
            headers=key,
        )
        assert response.status_code in (201, 202), response.text
        await worker.run_until_idle(rt)
        return receiver.requests[before:]

    now_s = lambda: rt.clock.now_ms() / 1000  # noqa: E731 — signatures use the shifted clock
    for r in await signatures_of_next_payout("p1"):
        verify(old_secret, signature_of(r), r["body"], now_s=now_s())

    forbidden = await client.post("/projects/studio_rot/webhook-secret/rotate", headers=key)
    assert forbidden.status_code == 403
    rotated = await client.post("/projects/studio_rot/webhook-secret/rotate", headers=admin)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["data"]["webhookSecret"]
    assert new_secret != old_secret and rotated.json()["data"]["previousSecretExpiresAt"]

    for r in await signatures_of_next_payout("p2"):
        assert signature_of(r).count("v1=") == 2
        verify(new_secret, signature_of(r), r["body"], now_s=now_s())
        verify(old_secret, signature_of(r), r["body"], now_s=now_s())

    clock.advance(rt.settings.webhook_secret_grace_s * 1000 + 1)
    for r in await signatures_of_next_payout("p3"):
        assert signature_of(r).count("v1=") == 1
        verify(new_secret, signature_of(r), r["body"], now_s=now_s())
        with pytest.raises(WebhookVerificationError):
            verify(old_secret, signature_of(r), r["body"], now_s=now_s())


# ---------------------------------------------------------------- retries


def test_retry_schedule_runs_from_about_a_minute_to_about_a_day_and_always_grows():
    import random

    rng = random.Random(7)
    for _ in range(200):
        delays = [cb.retry_delay_ms(n, rng) for n in range(1, cb.ATTEMPTS_MAX)]
        assert 48_000 <= delays[0] <= 60_000
        assert all(later > earlier for earlier, later in zip(delays, delays[1:], strict=False))
        assert 12 * 3_600_000 <= delays[-1] <= cb.RETRY_CAP_MS


async def test_receiver_failing_n_times_gets_exactly_n_plus_one_attempts_with_growing_gaps(
    client, rt, clock, receiver
):
    failures = 3
    receiver.respond = lambda n: 500 if n <= failures else 200
    await new_payout(client, receiver.url)
    await drive_until_settled(rt, clock)
    events = receiver.by_event()
    assert len(events) == 2
    for event_id, requests in events.items():
        assert len(requests) == failures + 1
        bodies = {r["body"] for r in requests}
        assert len(bodies) == 1, "every retry sends the same event, byte for byte"
        attempts = sorted(
            await rows_of(rt, callback_attempts, callback_attempts.c.callback_id == event_id),
            key=lambda a: a["attempt"],
        )
        assert [a["outcome"] for a in attempts] == ["failed"] * failures + ["delivered"]
        starts = [a["started_at"] for a in attempts]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert gaps[0] >= 48_000, "the first retry waits about a minute"
        assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
        (row,) = await rows_of(rt, callbacks, callbacks.c.id == event_id)
        assert (row["status"], row["attempts"], row["last_status_code"]) == (
            "delivered",
            failures + 1,
            200,
        )


async def test_a_410_stops_delivery_at_once(client, rt, clock, receiver):
    receiver.respond = lambda n: 410
    await new_payout(client, receiver.url)
    await worker.run_until_idle(rt)
    clock.advance(3 * 86_400_000)
    await worker.run_until_idle(rt)
    assert all(len(reqs) == 1 for reqs in receiver.by_event().values())
    for row in await rows_of(rt, callbacks):
        assert (row["status"], row["last_status_code"]) == ("dead", 410)
        (job,) = await rows_of(rt, jobs, jobs.c.id == cb.job_id_for(row["id"]))
        assert job["state"] == "dead"


async def test_a_hanging_receiver_is_cut_off_at_the_timeout_and_retried(
    client, rt, clock, receiver
):
    rt.settings = dataclasses.replace(rt.settings, callback_timeout_ms=300)
    receiver.respond = lambda n: "hang" if n == 1 else 200
    await new_payout(client, receiver.url)
    started = time.monotonic()
    await worker.run_until_idle(rt)
    assert time.monotonic() - started < 3, "the attempt must be cut off, not wait for the receiver"
    for row in await rows_of(rt, callbacks):
        assert row["status"] == "pending" and row["attempts"] == 1
        assert "no answer within 300 ms" in row["last_error"]
    await drive_until_settled(rt, clock)
    assert all(len(reqs) == 2 for reqs in receiver.by_event().values())
    assert {r["status"] for r in await rows_of(rt, callbacks)} == {"delivered"}


async def test_a_crash_after_sending_leads_to_redelivery_of_the_same_event_never_to_loss(
    client, rt, clock, receiver
):
    rt.settings = dataclasses.replace(rt.settings, worker_batch_max=1)
    await new_payout(client, receiver.url)
    rt.crashpoints.add("callback_after_send")
    with pytest.raises(SimulatedCrash):
        await worker.run_once(rt)
    rt.crashpoints.clear()
    (crashed_id,) = receiver.by_event()
    (crashed,) = await rows_of(rt, callbacks, callbacks.c.id == crashed_id)
    assert crashed["status"] == "pending", "the outcome was never recorded"

    await worker.run_until_idle(rt)  # the dead worker's lease still holds the job
    assert len(receiver.by_event()[crashed_id]) == 1

    clock.advance(rt.settings.lease_ms + 1)
    await worker.run_until_idle(rt)
    resent = receiver.by_event()[crashed_id]
    assert len(resent) == 2 and resent[0]["body"] == resent[1]["body"]
    assert {r["status"] for r in await rows_of(rt, callbacks)} == {"delivered"}
    attempts = await rows_of(rt, callback_attempts, callback_attempts.c.callback_id == crashed_id)
    assert sorted((a["attempt"], a["outcome"]) for a in attempts) == [
        (1, "started"),
        (2, "delivered"),
    ]


async def test_dead_deliveries_are_listed_and_replay_to_delivery(client, rt, clock, receiver):
    receiver.respond = lambda n: 503
    payout = await new_payout(client, receiver.url)
    await drive_until_settled(rt, clock, rounds_max=4 * cb.ATTEMPTS_MAX)
    assert all(len(reqs) == cb.ATTEMPTS_MAX for reqs in receiver.by_event().values())

    listed = await client.get("/callbacks", params={"status": "dead"})
    assert listed.status_code == 200, listed.text
    dead = listed.json()["data"]["callbacks"]
    assert len(dead) == 2 and {d["payoutId"] for d in dead} == {payout["id"]}
    assert (await client.get("/callbacks", params={"status": "pending"})).json()["data"][
        "count"
    ] == 0
    bad = await client.get("/callbacks", params={"status": "lost"})
    assert bad.status_code == 400 and bad.json()["data"]["error"] == "INVALID_STATUS"

    receiver.respond = lambda n: 200
    target = dead[0]["id"]
    replayed = await client.post(f"/callbacks/{target}/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["data"]["status"] == "pending"
    again = await client.post(f"/callbacks/{target}/replay")
    assert again.status_code == 409 and again.json()["data"]["error"] == "CALLBACK_NOT_DEAD"

    await worker.run_until_idle(rt)
    assert len(receiver.by_event()[target]) == cb.ATTEMPTS_MAX + 1
    (row,) = await rows_of(rt, callbacks, callbacks.c.id == target)
    assert row["status"] == "delivered"
    delivered = await client.get("/callbacks", params={"status": "delivered"})
    assert [d["id"] for d in delivered.json()["data"]["callbacks"]] == [target]


async def test_callbacks_are_visible_and_replayable_only_within_their_project(client, rt, receiver):
    receiver.respond = lambda n: 410
    await new_payout(client, receiver.url)
    await worker.run_until_idle(rt)
    admin = {"apikey": ADMIN_KEY}
    other = await client.post("/projects", json={"id": "studio_other"}, headers=admin)
    other_key = {"apikey": other.json()["data"]["apiKey"]}
    (row, _) = await rows_of(rt, callbacks)

    mine = await client.get("/callbacks", headers=other_key)
    assert mine.json()["data"]["count"] == 0
    peek = await client.get("/callbacks", params={"projectId": PROJECT}, headers=other_key)
    assert peek.status_code == 403
    replay = await client.post(f"/callbacks/{row['id']}/replay", headers=other_key)
    assert replay.status_code == 404 and replay.json()["data"]["error"] == "CALLBACK_NOT_FOUND"
    as_admin = await client.get("/callbacks", params={"projectId": PROJECT}, headers=admin)
    assert as_admin.json()["data"]["count"] == 2


async def test_sandbox_records_non_loopback_urls_as_simulated_in_the_test_log(client, rt):
    await new_payout(client, "https://studio.example/payrail-hook")
    await worker.run_until_idle(rt)
    response = await client.get("/test/callbacks")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["count"] == 2
    for entry in data["callbacks"]:
        assert entry["url"] == "https://studio.example/payrail-hook"
        assert entry["simulated"] is True and entry["status"] == "delivered"
        assert entry["sentAt"] and entry["payload"]["event"] == "payout.status_changed"
        assert [a["outcome"] for a in entry["attemptLog"]] == ["simulated"]


async def test_cli_lists_dead_callbacks_and_replays_one(settings, client, rt, receiver):
    receiver.respond = lambda n: 410
    await new_payout(client, receiver.url)
    await worker.run_until_idle(rt)
    env = {
        **os.environ,
        "PAYRAIL_DATABASE_URL": settings.database_url,
        "PAYRAIL_ADMIN_KEY": ADMIN_KEY,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "payrail.entrypoints.cli.app", "callbacks", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    listed = run("list", "--status", "dead", "--project", PROJECT, "--json")
    assert listed.returncode == 0, listed.stderr
    dead = json.loads(listed.stdout)
    assert len(dead) == 2 and {d["lastStatusCode"] for d in dead} == {410}
    assert run("list", "--status", "lost").returncode == 2
    replayed = run("replay", dead[0]["id"])
    assert replayed.returncode == 0, replayed.stderr
    (row,) = await rows_of(rt, callbacks, callbacks.c.id == dead[0]["id"])
    assert row["status"] == "pending"
    missing = run("replay", "no-such-callback")
    assert missing.returncode == 1 and "No callback" in missing.stderr


# ---------------------------------------------------------------- SSRF


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "192.0.0.192",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "2002:7f00:1::",
        "64:ff9b::a00:1",
    ],
)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(address):
    assert callback_urls.address_refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert callback_urls.address_refusal(ipaddress.ip_address(address)) is None


@pytest.fixture
def fake_dns(monkeypatch) -> dict[str, list[str]]:
    """Names → addresses; this machine has no network, so no real lookups of names."""
    table: dict[str, list[str]] = {}
    real = callback_urls.resolve_host

    async def resolve(host: str, port: int):
        if host in table:
            return [ipaddress.ip_address(a) for a in table[host]]
        return await real(host, port)

    monkeypatch.setattr(callback_urls, "resolve_host", resolve)
    return table


async def test_vet_refuses_a_name_with_any_private_address_unless_allow_listed(fake_dns):
    fake_dns["studio.example"] = ["93.184.216.34"]
    fake_dns["rebind.example"] = ["93.184.216.34", "10.0.0.5"]
    fake_dns["svc.internal"] = ["10.1.2.3"]
    none = callback_urls.AllowList.parse([])
    target = await callback_urls.vet("https://studio.example/hook", none)
    assert target.addresses == (ipaddress.ip_address("93.184.216.34"),) and target.port == 443
    for url in (
        "http://rebind.example/hook",
        "http://svc.internal/hook",
        "http://127.0.0.1:8080/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/",
        "http://2130706433/",  # 127.0.0.1 written as one number
    ):
        with pytest.raises(callback_urls.UnsafeCallbackUrl):
            await callback_urls.vet(url, none)
    allowed = callback_urls.AllowList.parse(["svc.internal", "192.168.0.0/16"])
    assert (await callback_urls.vet("http://svc.internal/hook", allowed)).addresses == ()
    await callback_urls.vet("http://192.168.4.4/hook", allowed)


def production(settings: Settings, **overrides) -> Settings:
    return dataclasses.replace(settings, mode="production", run_worker=False, **overrides)


async def production_client(prod: Settings, rt, clock):
    prod_rt = build_runtime(prod, clock=clock, node=rt.node, engine=rt.engine)
    app = create_app(prod, runtime=prod_rt, migrate_db=False)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test/api/v1",
        headers={"apikey": SANDBOX_KEY},
    )
    # Production pays registered recipients only: player1 is a keysend node here.
    keysend = parse_recipient({"nodePubkey": "02" + "ab" * 32})
    await recipients.upsert(prod_rt, PROJECT, "player1", keysend, "test")
    return prod_rt, client


async def test_production_refuses_private_callback_urls_at_creation_in_check_4_order(
    settings, rt, clock, fake_dns, receiver
):
    fake_dns["metadata.example"] = ["169.254.169.254"]
    fake_dns["studio.example"] = ["93.184.216.34"]
    _, client = await production_client(production(settings), rt, clock)
    async with client:
        start = await balance_of(client)
        for url in (receiver.url, "http://10.0.0.1/hook", "http://metadata.example/hook"):
            response = await client.post("/payouts", json=payout_body(callbackUrl=url))
            assert response.status_code == 400, response.text
            assert response.json()["data"]["error"] == "INVALID_CALLBACK_URL"
        # Check 4 comes after the amount (2) and before the gamertag (5).
        bad_amount = payout_body(amount=0, callbackUrl="http://10.0.0.1/")
        assert (await client.post("/payouts", json=bad_amount)).json()["data"][
            "error"
        ] == "INVALID_AMOUNT"
        bad_tag = payout_body(gamertag="no spaces!", callbackUrl="http://10.0.0.1/")
        assert (await client.post("/payouts", json=bad_tag)).json()["data"][
            "error"
        ] == "INVALID_CALLBACK_URL"
        assert await balance_of(client) == start
        public = await client.post(
            "/payouts", json=payout_body(callbackUrl="https://studio.example/hook")
        )
        assert public.status_code in (201, 202), public.text
    assert receiver.requests == []


async def test_production_rechecks_at_delivery_and_sends_only_to_the_checked_address(
    settings, rt, clock, fake_dns, receiver
):
    fake_dns["studio.example"] = ["93.184.216.34"]
    url = f"http://studio.example:{receiver.port}/payrail-hook"
    prod_rt, client = await production_client(production(settings), rt, clock)
    async with client:
        await new_payout(client, url)
    fake_dns["studio.example"] = ["127.0.0.1"]  # DNS changed after creation
    await worker.run_until_idle(prod_rt)
    assert receiver.requests == []
    for row in await rows_of(rt, callbacks):
        assert row["status"] == "pending" and "refused, not sent" in row["last_error"]

    # An operator allow-lists the network: delivered for real, to the address it checked,
    # with the name kept in the Host header.
    allowed = build_runtime(
        production(settings, callback_allow_hosts=("127.0.0.0/8",)),
        clock=clock,
        node=rt.node,
        engine=rt.engine,
    )
    clock.advance(cb.RETRY_BASE_MS + 1)
    await worker.run_until_idle(allowed)
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["host"] == f"studio.example:{receiver.port}"
        verify(
            DEFAULT_SANDBOX_WEBHOOK_SECRET,
            headers["payrail-signature"],
            request["body"],
            now_s=clock.now_ms() / 1000,
        )
    assert {r["status"] for r in await rows_of(rt, callbacks)} == {"delivered"}
