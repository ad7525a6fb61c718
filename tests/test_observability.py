"""Operating payrail: /metrics (names, labels, DB gauges, multiprocess), /ready, and logs
that carry request and payout ids but never a secret."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ADMIN_KEY, SANDBOX_KEY, balance_of, payout_body
from prometheus_client.parser import text_string_to_metric_families

from payrail.entrypoints import worker
from payrail.support import logging as payrail_logging

ADMIN = {"apikey": ADMIN_KEY}


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def scrape(client) -> tuple[str, dict]:
    response = await client.get("http://test/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, parse(response.text)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def between(before: dict, after: dict):
    """How much a sample moved from one scrape to the next: delta(name, **labels)."""

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    return delta


async def set_faults(client, **knobs):
    """The global knobs (admin key): these tests pay from projects of their own too."""
    response = await client.post("/test/failure-injection", json=knobs, headers=ADMIN)
    assert response.status_code == 200, response.text


class GoneReceiver:
    """Answers every callback 410 Gone, so a delivery goes dead at once."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(410)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gone_receiver():
    r = GoneReceiver()
    yield r
    r.close()


# ---------------------------------------------------------------- metrics


async def test_payout_outcomes_latencies_and_node_calls_are_counted_by_bounded_labels(client):
    _, before = await scrape(client)
    ok = await client.post("/payouts", json=payout_body(gamertag="player_ok"))
    assert ok.status_code == 201
    await set_faults(client, enabled=True, timeoutRate=1.0, timeoutMs=5)
    timed_out = await client.post("/payouts", json=payout_body(gamertag="player_to"))
    assert timed_out.status_code == 504
    await set_faults(client, enabled=True, timeoutRate=0.0, failureRate=1.0)
    refused = await client.post("/payouts", json=payout_body(gamertag="player_nr"))
    assert refused.status_code == 502
    text, after = await scrape(client)
    delta = between(before, after)
    assert delta("payrail_payouts_created_total", path="inline") == 3
    final = "payrail_payouts_final_total"
    assert delta(final, status="completed", reason="none", path="inline") == 1
    assert delta(final, status="error", reason="timeout", path="inline") == 1
    assert delta(final, status="error", reason="no_route", path="inline") == 1
    assert delta("payrail_node_calls_total", operation="pay", outcome="success") == 1
    assert delta("payrail_node_calls_total", operation="pay", outcome="timeout") == 1
    assert delta("payrail_node_calls_total", operation="pay", outcome="failure") == 1
    assert delta("payrail_payout_settlement_duration_seconds_count", status="error") == 2
    assert delta("payrail_payout_api_duration_seconds_count", code="201") == 1
    assert delta("payrail_payout_api_duration_seconds_count", code="504") == 1
    http = "payrail_http_requests_total"
    assert delta(http, route="/api/v1/payouts", method="POST", status="502") == 1
    # No ids, gamertags or raw paths in any label value.
    ids = [r.json()["data"]["id"] for r in (ok, timed_out, refused)]
    for forbidden in [*ids, "player_ok", "player_to", "project_test_001", SANDBOX_KEY]:
        assert forbidden not in text
    for family in text_string_to_metric_families(text):
        if family.name.startswith("payrail_") and family.type == "counter":
            for sample in family.samples:
                assert sample.name.endswith(("_total", "_created")), sample.name


async def test_a_batchs_payouts_and_node_calls_are_counted_once_each(client, settings):
    """A batch counts its outcomes per label set at once (metrics.observe_many): the same
    figures as that many single payouts."""
    _, before = await scrape(client)
    await set_faults(client, enabled=True, failureRate=0.0, timeoutRate=0.0)
    items = [{"gamertag": f"bm{i}", "amount": 10} for i in range(4)]
    body = {"projectId": "project_test_001", "items": items}
    answer = await client.post("/payouts/batch", json=body, headers={"Idempotency-Key": "bm"})
    assert answer.status_code == 200, answer.text
    delta = between(before, (await scrape(client))[1])
    assert delta("payrail_payouts_created_total", path="inline") == 4
    final = "payrail_payouts_final_total"
    assert delta(final, status="completed", reason="none", path="inline") == 4
    assert delta("payrail_node_calls_total", operation="pay", outcome="success") == 4
    assert delta("payrail_node_call_duration_seconds_count", operation="pay") == 4
    assert delta("payrail_payout_settlement_duration_seconds_count", status="completed") == 4


async def test_db_gauges_show_open_payouts_reserved_sats_queue_and_dead_callbacks(
    client, rt, clock, gone_receiver
):
    await set_faults(client, enabled=True, ambiguousRate=1.0, timeoutMs=5, ambiguousSettleMs=60_000)
    pending = await client.post("/payouts", json=payout_body(amount=1000))
    assert pending.status_code == 202, pending.text
    await set_faults(client, enabled=False)
    called = await client.post(
        "/payouts", json=payout_body(gamertag="cb", callbackUrl=gone_receiver.url)
    )
    assert called.status_code == 201
    await worker.run_until_idle(rt)  # the callbacks answer 410: dead at once
    _, s = await scrape(client)
    assert value(s, "payrail_payouts_open", state="in_flight") == 1
    assert value(s, "payrail_payouts_open", state="reserved") == 0
    assert value(s, "payrail_payouts_reserved_sats", state="in_flight") == 1020
    assert value(s, "payrail_jobs_queued", kind="settle_payout") == 1
    assert value(s, "payrail_jobs_dead", kind="deliver_callback") == 2
    assert value(s, "payrail_callbacks", status="dead") == 2
    assert value(s, "payrail_scrape_db_ok") == 1
    # The tracker's next look is due later: once it is due, it counts as backlog with an age.
    clock.advance(120_000)
    _, s = await scrape(client)
    assert value(s, "payrail_jobs_due", kind="settle_payout") == 1
    assert value(s, "payrail_jobs_oldest_due_age_seconds", kind="settle_payout") >= 60
    await worker.run_until_idle(rt)
    _, s = await scrape(client)
    assert value(s, "payrail_payouts_open", state="in_flight") == 0
    assert value(s, "payrail_payouts_reserved_sats", state="in_flight") == 0
    assert value(s, "payrail_jobs_queued", kind="settle_payout") == 0


def test_multiprocess_mode_sums_counters_of_every_server_process(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR: two processes count, a third one's scrape sees both."""
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    bump = (
        "from payrail.support import metrics\n"
        "metrics.PAYOUTS_CREATED.labels(path='inline').inc(3)\n"
        "metrics.NODE_CALLS.labels(operation='pay', outcome='timeout').inc()\n"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", bump], env=env, check=True)
    read = (
        "from prometheus_client import generate_latest\n"
        "from payrail.support import metrics\n"
        "print(generate_latest(metrics.process_registry()).decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", read], env=env, check=True, capture_output=True, text=True
    ).stdout
    s = parse(out)
    assert value(s, "payrail_payouts_created_total", path="inline") == 6
    assert value(s, "payrail_node_calls_total", operation="pay", outcome="timeout") == 2


# ---------------------------------------------------------------- health and readiness


async def test_ready_needs_a_live_worker_and_current_migrations(client, rt, clock):
    assert (await client.get("http://test/health")).status_code == 200
    response = await client.get("http://test/ready")
    assert response.status_code == 503
    data = response.json()["data"]
    assert data["status"] == "not_ready" and data["checks"]["database"] == "reachable"
    assert data["checks"]["migrations"]["ok"] is True
    assert data["checks"]["workers"] == {"alive": 0, "ok": False}

    await worker.heartbeat(rt)
    response = await client.get("http://test/ready")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["checks"]["workers"] == {"alive": 1, "ok": True}
    _, s = await scrape(client)
    assert value(s, "payrail_workers_alive") == 1

    clock.advance(31_000)  # the worker stopped beating
    assert (await client.get("http://test/api/v1/ready")).status_code == 503


async def test_ready_reports_a_schema_behind_head(client, rt):
    from sqlalchemy import text

    await worker.heartbeat(rt)
    async with rt.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    try:
        response = await client.get("http://test/ready")
        assert response.status_code == 503
        migrations = response.json()["data"]["checks"]["migrations"]
        assert migrations["current"] == ["0002"] and migrations["ok"] is False
    finally:
        async with rt.engine.begin() as conn:
            await conn.execute(
                text("UPDATE alembic_version SET version_num = :v"),
                {"v": migrations["head"]},
            )


async def test_worker_loop_beats_and_says_goodbye(rt, client):
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_forever(rt, stop))
    for _ in range(100):
        if (await client.get("http://test/ready")).status_code == 200:
            break
        await asyncio.sleep(0.02)
    assert (await client.get("http://test/ready")).status_code == 200
    stop.set()
    await task
    assert (await client.get("http://test/ready")).status_code == 503


# ---------------------------------------------------------------- logs


async def test_a_closed_log_stream_loses_lines_never_payouts(client, rt):
    """A CLI runner or test may close the stream the logs were configured with; a saga or job
    that logs afterwards must still finish, with the money where it belongs."""
    closed = io.StringIO()
    payrail_logging.configure("info", stream=closed)
    closed.close()
    try:
        before = await balance_of(client)
        paid = await client.post("/payouts", json=payout_body(amount=1_000))
        await set_faults(client, enabled=True, failureRate=1.0, timeoutMs=5)
        refused = await client.post("/payouts", json=payout_body(amount=1_000, gamertag="u"))
        await worker.run_until_idle(rt)
        after = await balance_of(client)
    finally:
        payrail_logging.configure("info")
    assert paid.status_code == 201, paid.text
    assert paid.json()["data"]["status"] == "completed"
    assert refused.status_code == 502, refused.text
    assert before - after == 1_020  # the paid one charged once, the refused one released


async def test_scenario_logs_are_json_with_ids_and_contain_no_secret(client, rt, gone_receiver):
    buffer = io.StringIO()
    payrail_logging.configure("info", stream=buffer)
    try:
        created = await client.post("/projects", json={"id": "studio_logs"}, headers=ADMIN)
        project_key = created.json()["data"]["apiKey"]
        first_secret = created.json()["data"]["webhookSecret"]
        key = {"apikey": project_key}
        await client.post("/projects/studio_logs/fund", json={"amount": 50_000}, headers=ADMIN)
        wrong = await client.get("/projects/studio_logs/balance", headers={"apikey": "sk_wrong_1"})
        assert wrong.status_code == 401
        body = payout_body(projectId="studio_logs", callbackUrl=gone_receiver.url)
        paid = await client.post("/payouts", json=body, headers=key | {"x-request-id": "req-42"})
        assert paid.status_code == 201
        payout_id = paid.json()["data"]["id"]
        await worker.run_until_idle(rt)
        rotated = await client.post("/projects/studio_logs/webhook-secret/rotate", headers=ADMIN)
        second_secret = rotated.json()["data"]["webhookSecret"]
        await client.put(
            "/admin/flags/settlement_queue_path", json={"enabled": False}, headers=ADMIN
        )
        await set_faults(client, enabled=True, timeoutRate=1.0, timeoutMs=5)
        await client.post("/payouts", json=payout_body(gamertag="t"), headers=key)
        logged = payrail_logging.redact(None, "", {"apikey": "k", "webhook_secret": "s"})
    finally:
        payrail_logging.configure("info")
    text = buffer.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) > 10
    for secret in (
        ADMIN_KEY,
        SANDBOX_KEY,
        project_key,
        "sk_wrong_1",
        first_secret,
        second_secret,
        "whsec_",
        "payrail-signature",
        "v1=",
        '"event":"payout.status_changed"',
    ):
        assert secret not in text, f"{secret!r} leaked into the logs"
    mine = [e for e in lines if e.get("request_id") == "req-42"]
    assert {"http_request", "payout_reserved"} <= {e["event"] for e in mine}
    assert any(e.get("payout_id") == payout_id for e in mine)
    assert any(e["event"] == "callback_attempt" and e["payout_id"] == payout_id for e in lines)
    assert all("request_id" in e for e in lines if e["event"] == "http_request")
    assert logged == {"apikey": "[redacted]", "webhook_secret": "[redacted]"}


@pytest.mark.parametrize("seed", [7, 2026])
def test_observe_many_leaves_the_samples_observe_leaves(seed: int) -> None:
    """metrics.observe_many (a batch's finals and node calls) against one observe() each."""
    import random

    from prometheus_client import CollectorRegistry, Histogram

    from payrail.support import metrics

    print(f"seed {seed}")
    rng = random.Random(seed)
    buckets = metrics.SETTLEMENT_BUCKETS_S
    values = [rng.choice(buckets) for _ in range(50)]  # on the bounds: `<=` matters
    values += [rng.uniform(0, 100_000) for _ in range(200)] + [0.0]
    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("h", "h", ["s"], buckets=buckets, registry=one)
    by_many = Histogram("h", "h", ["s"], buckets=buckets, registry=many)
    for v in values:
        by_one.labels(s="x").observe(v)
    metrics.observe_many(by_many.labels(s="x"), values[:100])
    metrics.observe_many(by_many.labels(s="x"), values[100:])
    metrics.observe_many(by_many.labels(s="x"), [])

    def samples(registry: CollectorRegistry) -> dict:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    got, want = samples(many), samples(one)
    sum_key = ("h_sum", (("s", "x"),))
    assert got.pop(sum_key) == pytest.approx(want.pop(sum_key), rel=1e-12)  # summed in order
    assert got == want  # every bucket and the count, exactly
    assert want[("h_count", (("s", "x"),))] == len(values)
