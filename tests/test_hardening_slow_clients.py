"""Slow and vanishing clients, against a real `payrail serve` (issue 24, finding 7).

Before: a connection whose request headers never finished was never timed out (1,500 such
connections stayed open 60 s: a slow-loris door), and a client that hung up mid-request was
logged as `unhandled_error`, like a bug of ours. Now the headers must be complete within
PAYRAIL_HTTP_HEADER_TIMEOUT_MS (408, then the connection is closed), and a hang-up is logged
as `client_disconnected`.

No timed assertion: each wait below is an upper bound on how long to wait for what must
happen, generous so that a loaded machine passes; the old code fails by never doing it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import PROJECT
from live_sandbox import Sandbox, sandbox_server

PORT = 12_431  # issue 24's range
HEADER_TIMEOUT_MS = 300
WAIT_MAX_S = 30.0  # for what must happen; the old code never closed these at all
KEY = {"apikey": "test_api_key_12345"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    workdir = tmp_path_factory.mktemp("slow_clients")
    env = {"PAYRAIL_HTTP_HEADER_TIMEOUT_MS": str(HEADER_TIMEOUT_MS), "PAYRAIL_LOG_LEVEL": "info"}
    with sandbox_server(workdir, PORT, **env) as sandbox:
        yield sandbox


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT_MAX_S)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            received += chunk
    return received


def _assert_408(received: bytes) -> None:
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), received
    assert json.loads(body)["data"]["error"] == "REQUEST_TIMEOUT"


def test_a_connection_that_sends_nothing_is_closed(server):
    with socket.create_connection(("127.0.0.1", PORT)) as idle:
        _assert_408(_read_until_closed(idle))


def test_headers_sent_a_byte_at_a_time_are_cut_off(server):
    with socket.create_connection(("127.0.0.1", PORT)) as slow:
        slow.sendall(b"GET /api/v1/statuses HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        stop = threading.Event()

        def trickle() -> None:  # one more header byte every 50 ms, never the blank line
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    slow.send(b"x")
                    time.sleep(0.05)

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            _assert_408(_read_until_closed(slow))
        finally:
            stop.set()
            sender.join(5)


def test_prompt_clients_are_unaffected_keep_alive_included(server):
    with httpx.Client(base_url=server.api, headers=KEY) as client:  # one kept-alive connection
        for _ in range(3):
            assert client.get(f"/projects/{PROJECT}/balance").status_code == 200
            time.sleep(HEADER_TIMEOUT_MS / 1000 * 2)  # idle longer than the header deadline
        assert client.get("/statuses").status_code == 200


def test_a_client_that_hangs_up_mid_body_is_logged_as_gone_not_as_an_error(server):
    with httpx.Client(base_url=server.api, headers=KEY) as client:
        before = client.get(f"/projects/{PROJECT}/balance").json()["data"]["balance"]
    request = (
        b"POST /api/v1/payouts HTTP/1.1\r\nHost: 127.0.0.1\r\napikey: test_api_key_12345\r\n"
        b"content-type: application/json\r\ncontent-length: 500\r\n\r\n"
        b'{"gamertag": "gone", "amount": 1000, '
    )
    with socket.create_connection(("127.0.0.1", PORT)) as gone:
        gone.sendall(request)  # then hang up with most of the body unsent
    logs = _wait_for_log(server, "client_disconnected")
    assert "unhandled_error" not in logs
    with httpx.Client(base_url=server.api, headers=KEY) as client:
        assert client.get(f"/projects/{PROJECT}/balance").json()["data"]["balance"] == before


def _wait_for_log(server: Sandbox, event: str) -> str:
    deadline = time.monotonic() + WAIT_MAX_S
    while True:
        logs = server.stdout.read_text() + server.stderr.read_text()
        if event in logs or time.monotonic() > deadline:
            assert event in logs, logs[-3000:]
            return logs
        time.sleep(0.1)
