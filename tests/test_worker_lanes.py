"""Worker lanes: a callback receiver that hangs holds up neither settlements nor other
projects' callbacks, and never gets more than its host's share of concurrent deliveries.

Before: the worker awaited its whole claimed batch, so a dozen callbacks to a receiver that
hangs until the timeout delayed every other job by that timeout. Receivers listen on
loopback ports 18301-18302; the hanging one never answers, the client's timeout ends each.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from conftest import ADMIN_KEY, payout_body, until

from payrail.config import Settings
from payrail.domain.flags import SETTLEMENT_QUEUE_PATH
from payrail.entrypoints import worker
from payrail.services.payouts import get_payout

ADMIN = {"apikey": ADMIN_KEY}
HANG_PORT, OK_PORT = 18301, 18302
HANGING = 12  # callbacks queued to the hanging receiver
HOST_MAX = 2


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        callback_timeout_ms=4_500,
        lease_ms=10_000,
        worker_poll_ms=20,
        callback_concurrency_max=4,
        callback_host_concurrency_max=HOST_MAX,
    )


class Receiver:
    """A loopback HTTP receiver: `hang` never answers; otherwise 200 at once."""

    def __init__(self, hang: bool) -> None:
        self.hang, self.open, self.open_max, self.requests = hang, 0, 0, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.open_max = max(self.open_max, self.open)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.hang:
                await reader.read()  # until the client gives up and closes
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def test_a_hanging_receiver_holds_up_neither_settlements_nor_other_callbacks(client, rt):
    hanging, healthy = Receiver(hang=True), Receiver(hang=False)
    servers = [
        await asyncio.start_server(hanging.handle, "127.0.0.1", HANG_PORT),
        await asyncio.start_server(healthy.handle, "127.0.0.2", OK_PORT),
    ]
    stop = asyncio.Event()
    loop_task = None
    try:
        for i in range(HANGING):
            body = payout_body(gamertag=f"slow{i}", callbackUrl=f"http://127.0.0.1:{HANG_PORT}/h")
            assert (await client.post("/payouts", json=body)).status_code == 201
        created = await client.post("/projects", json={"id": "victim_13"}, headers=ADMIN)
        victim = {"apikey": created.json()["data"]["apiKey"]}
        funded = await client.post(
            "/projects/victim_13/fund", json={"amount": 10_000}, headers=ADMIN
        )
        assert funded.status_code == 200
        flag = {"enabled": True, "rolloutPercent": 0, "allow": ["victim_13"]}
        put = await client.put(f"/admin/flags/{SETTLEMENT_QUEUE_PATH}", json=flag, headers=ADMIN)
        assert put.status_code == 200, put.text

        loop_task = asyncio.create_task(worker.run_forever(rt, stop))
        await until(lambda: _true(hanging.open >= HOST_MAX), "the hanging receiver's slots")

        # A settlement on the queue path (the worker runs it), with a callback elsewhere.
        body = payout_body(
            gamertag="victim", projectId="victim_13", callbackUrl=f"http://127.0.0.2:{OK_PORT}/ok"
        )
        answer = await client.post("/payouts", json=body, headers=victim)
        assert answer.status_code == 201, answer.text
        settled_while_hanging = hanging.open
        await until(lambda: _true(healthy.requests >= 1), "the victim's callback")
        delivered_while_hanging = hanging.open
        payout = await get_payout(rt, answer.json()["data"]["id"])
        assert payout["state"] == "completed" and payout["settle_path"] == "queue"

        assert settled_while_hanging > 0, "the settlement waited for the hanging callbacks"
        assert delivered_while_hanging > 0, "the other project's callback waited for them"
        assert hanging.open_max <= HOST_MAX, hanging.open_max  # bounded per host
    finally:
        stop.set()
        if loop_task is not None:
            await loop_task
        for server in servers:
            server.close()


async def _true(value: bool) -> bool:
    return value
