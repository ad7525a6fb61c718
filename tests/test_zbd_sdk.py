"""ZBD's official SDKs, unchanged, against a real payrail: the migration is one base URL.

One `payrail serve` (sandbox, its own SQLite file, a port from PAYRAIL_ZBD_TEST_PORTS) serves
this module; an LNURL server on loopback stands in for a Lightning Address's domain. The
Python SDK (`zbdpay`, a dev dependency in requirements/dev.lock) runs in this process; the
Node SDK (`@zbd/node`, tests/zbd/package-lock.json, installed by `make zbd-node`) runs
tests/zbd/sdk_scenario.mjs. Every payment is checked against the balance payrail's own API
shows, in sats, and the SDK's wallet answer, in msats.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zbdpay
from conftest import PROJECT, SANDBOX_KEY
from lightning_kit import AddressServer, make_invoice

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "tests" / "zbd"
ADMIN_KEY = "zbd_sdk_test_admin_key_0123456789"
PORTS = os.environ.get("PAYRAIL_ZBD_TEST_PORTS", "12800-12899")
SERVER_START_WAIT_S = 60  # a cold start migrates a fresh database on a busy machine
NODE_RUN_LIMIT_S = 120


def cost(sats: int) -> int:
    """amount + payrail's 2% fee, rounded up (README: 1,000 → 1,020)."""
    return sats + -(-sats * 2 // 100)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _free_port() -> int:
    low, high = (int(p) for p in PORTS.split("-"))
    for port in range(low, high + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


def _wait_for(what: str, check, limit_s: float) -> None:
    """Wait for a state a background process reaches (not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached in {limit_s} s")


@pytest.fixture(scope="module")
def address_server() -> Iterator[AddressServer]:
    server = AddressServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, address_server) -> Iterator[str]:
    work = tmp_path_factory.mktemp("zbd")
    port = _free_port()
    env = os.environ | {
        "PAYRAIL_PORT": str(port),
        "PAYRAIL_DATABASE_URL": f"sqlite:///{work / 'payrail.db'}",
        "PAYRAIL_ADMIN_KEY": ADMIN_KEY,
        "PAYRAIL_SANDBOX_API_KEY": SANDBOX_KEY,
        "PAYRAIL_LNURL_INSECURE_HOSTS": address_server.host,
        "PAYRAIL_ZBD_INTERNAL_ID_IDEMPOTENT": "1",
        "PAYRAIL_RATE_LIMIT_PER_HOUR": "1000",
        "PAYRAIL_RECONCILE_INTERVAL_S": "0",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "payrail"), "serve", "--log-level", "warning"],
        env=env,
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (work / "server.log").read_text()
        try:
            return httpx.get(f"{base}/api/v1/statuses", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for("server up", up, SERVER_START_WAIT_S)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def payrail(server: str, key: str = SANDBOX_KEY) -> httpx.Client:
    """payrail's own API: the balances every SDK answer is checked against."""
    return httpx.Client(base_url=f"{server}/api/v1", headers={"apikey": key}, timeout=30)


def balance(server: str, project: str = PROJECT) -> int:
    with payrail(server, ADMIN_KEY) as api:
        response = api.get(f"/projects/{project}/balance")
    assert response.status_code == 200, response.text
    return response.json()["data"]["balance"]


def payout_count(server: str) -> int:
    with payrail(server) as api:
        count, cursor = 0, None
        while True:
            page = api.get(
                "/payouts", params={"limit": 100, **({"cursor": cursor} if cursor else {})}
            )
            data = page.json()["data"]
            count += data["count"]
            cursor = data["nextCursor"]
            if not cursor:
                return count


def sdk(server: str, key: str = SANDBOX_KEY, **options) -> zbdpay.ZbdPayments:
    """ZBD's Python SDK as a studio builds it, but for the base URL."""
    return zbdpay.ZbdPayments(apikey=key, base_url=server, **options)


class Attempts(httpx.BaseTransport):
    """Counts the SDK's attempts at one path; loses the answer of the first `lost` of them
    after the server acted (a connection reset on the way back)."""

    def __init__(self, path: str, lost: int = 0) -> None:
        self.inner = httpx.HTTPTransport()
        self.path, self.lost, self.count = path, lost, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path == self.path:
            self.count += 1
            if self.lost > 0:
                self.lost -= 1
                response.read()
                response.close()
                raise httpx.ReadError("connection reset before the answer", request=request)
        return response


def test_python_sdk_wallet_and_gamertag_payment_with_balances(server):
    start = balance(server)
    with sdk(server) as client:
        wallet = client.wallet.with_raw_response.retrieve_balance().json()
        assert wallet["data"]["balance"] == str(start * 1000) and wallet["data"]["unit"] == "msats"
        sent = client.gamertags.with_raw_response.send_payment(
            amount="1000000", gamertag="sdkplayer", description="Level up"
        ).json()
        assert sent["success"] is True and sent["message"] == "Payment done."
        assert sent["data"]["status"] == "settled" and sent["data"]["amount"] == "1000000"
        tx = client.gamertags.with_raw_response.retrieve_payment(
            sent["data"]["transactionId"]
        ).json()["data"]
        assert tx["status"] == "TRANSACTION_STATUS_COMPLETED" and tx["fee"] == "20000"
        after = client.wallet.with_raw_response.retrieve_balance().json()["data"]["balance"]
    assert balance(server) == start - cost(1000)
    assert after == str((start - cost(1000)) * 1000)


def test_python_sdk_invoice_and_lightning_address_payments(server, address_server):
    start = balance(server)
    invoice = make_invoice(4_000_000, description="sword")
    with sdk(server) as client:
        paid = client.lightning_payments.with_raw_response.send(
            invoice=invoice, description="sword", internal_id="sdk-inv-1"
        ).json()
        assert paid["data"]["status"] == "completed" and paid["data"]["amount"] == "4000000"
        got = client.lightning_payments.with_raw_response.retrieve(paid["data"]["id"]).json()
        assert got["data"]["id"] == paid["data"]["id"] and got["message"] == "Fetched Payment."
        decoded = client.utils.with_raw_response.decode_lightning_charge(invoice=invoice).json()
        assert decoded["data"]["amount"] == "4000000"
        sent = client.lightning_address.with_raw_response.send_payment(
            ln_address=address_server.address("sdkalice"), amount="3000000", comment="hi"
        ).json()
        assert sent["data"]["status"] == "completed" and sent["data"]["comment"] == "hi"
    assert balance(server) == start - cost(4000) - cost(3000)
    assert [(n, m) for n, m, _ in address_server.issued if n == "sdkalice"] == [
        ("sdkalice", 3_000_000)
    ]


def test_python_sdk_refusals_are_zbds_error_shape_and_move_nothing(server):
    start = balance(server)
    with sdk(server) as client:
        with pytest.raises(zbdpay.BadRequestError) as too_much:
            client.gamertags.send_payment(amount="100000000", gamertag="whale", description="x")
        body = too_much.value.body
        assert body["success"] is False and body["data"]["error"] == "INSUFFICIENT_BALANCE"
        assert body["message"].startswith("You do not have enough funds")
        with pytest.raises(zbdpay.BadRequestError) as fraction:
            client.gamertags.send_payment(amount="1500", gamertag="sdkplayer", description="x")
        assert fraction.value.body["data"]["error"] == "INVALID_AMOUNT"
        assert "whole number of sats" in fraction.value.body["message"]
        with pytest.raises(zbdpay.AuthenticationError):
            sdk(server, key="not-a-key").wallet.retrieve_balance()
    assert balance(server) == start


def test_python_sdk_internal_transfer_with_both_keys(server):
    with payrail(server, ADMIN_KEY) as api:
        created = api.post("/projects", json={"id": "sdk_studio_b"})
    assert created.status_code == 201, created.text
    b_key = created.json()["data"]["apiKey"]
    start = balance(server)
    with sdk(server) as client:
        with pytest.raises(zbdpay.PermissionDeniedError):  # the receiver's key is required
            client.internal_transfer.initiate(amount="5000000", receiver_wallet_id="sdk_studio_b")
        moved = client.internal_transfer.with_raw_response.initiate(
            amount="5000000",
            receiver_wallet_id="sdk_studio_b",
            extra_headers={"Receiver-Apikey": b_key},
        ).json()
    assert moved["message"] == "Internal Transfer done."
    assert moved["data"]["status"] == "TRANSFER_STATUS_COMPLETED"
    assert balance(server) == start - 5000 and balance(server, "sdk_studio_b") == 5000
    with sdk(server, key=b_key) as client_b:
        wallet = client_b.wallet.with_raw_response.retrieve_balance().json()["data"]
    assert wallet == {"balance": "5000000", "unit": "msats", "walletId": "sdk_studio_b"}


def test_python_sdk_retry_after_a_lost_answer_pays_once_with_an_idempotency_key(server):
    """The SDK resends a request whose answer was lost (a reset connection); with the key it
    carries (extra_headers) payrail answers the resend with the first payment."""
    start, payouts_before = balance(server), payout_count(server)
    transport = Attempts("/v0/gamertag/send-payment", lost=1)
    with sdk(server, http_client=httpx.Client(transport=transport)) as client:
        sent = client.gamertags.with_raw_response.send_payment(
            amount="2000000",
            gamertag="retried",
            description="once",
            extra_headers={"Idempotency-Key": "sdk-retry-1"},
        ).json()
    assert transport.count == 2  # the SDK's own retry
    assert sent["data"]["status"] == "settled"
    assert payout_count(server) == payouts_before + 1
    assert balance(server) == start - cost(2000)


def test_python_sdk_retry_after_a_lost_answer_pays_once_by_internal_id(server):
    """PAYRAIL_ZBD_INTERNAL_ID_IDEMPOTENT=1 (this server): the internalId is the key."""
    start, payouts_before = balance(server), payout_count(server)
    transport = Attempts("/v0/payments", lost=1)
    invoice = make_invoice(6_000_000)
    with sdk(server, http_client=httpx.Client(transport=transport)) as client:
        paid = client.lightning_payments.with_raw_response.send(
            invoice=invoice, internal_id="sdk-order-77"
        ).json()
    assert transport.count == 2
    assert paid["data"]["internalId"] == "sdk-order-77"
    assert payout_count(server) == payouts_before + 1
    assert balance(server) == start - cost(6000)


def test_a_failed_payment_without_a_key_is_not_retried_by_the_sdk(server):
    """The SDK retries 5xx answers by itself; x-should-retry: false (a header it obeys) stops
    it where a resend without a key would be a second payout."""
    start, payouts_before = balance(server), payout_count(server)
    with payrail(server) as api:
        api.post("/test/failure-injection", json={"enabled": True, "failureRate": 1.0})
    transport = Attempts("/v0/gamertag/send-payment")
    try:
        with (
            sdk(server, http_client=httpx.Client(transport=transport)) as client,
            pytest.raises(zbdpay.APIStatusError) as failed,
        ):
            client.gamertags.send_payment(amount="1000000", gamertag="unlucky1", description="x")
    finally:
        with payrail(server) as api:
            api.post("/test/failure-injection", json={"enabled": False, "failureRate": 0.0})
    assert failed.value.status_code == 502
    assert failed.value.body["data"]["error"] == "PAYMENT_FAILED"
    assert failed.value.body["data"]["status"] == "failed"
    assert transport.count == 1
    assert payout_count(server) == payouts_before + 1
    assert balance(server) == start  # rolled back


def _node() -> str:
    node = shutil.which("node")
    installed = (NODE_DIR / "node_modules" / "@zbd" / "node" / "package.json").exists()
    if node is None or not installed:
        message = "ZBD's Node SDK is not installed: run `make zbd-node` (needs Node 18+ and npm)"
        if _in_ci():
            pytest.fail(message + " (CI=true: the SDK test may not skip)")
        pytest.skip(message)
    return node


def test_node_sdk_scenario_against_payrail(server, address_server):
    node = _node()
    with payrail(server, ADMIN_KEY) as api:
        assert api.post("/projects", json={"id": "node_studio_b"}).status_code == 201
    start = balance(server)
    invoice = make_invoice(4_000_000, description="node invoice")
    run = subprocess.run(
        [node, str(NODE_DIR / "sdk_scenario.mjs")],
        env=os.environ
        | {
            "ZBD_BASE_URL": server,
            "ZBD_API_KEY": SANDBOX_KEY,
            "INVOICE": invoice,
            "LN_ADDRESS": address_server.address("nodebob"),
            "RECEIVER": "node_studio_b",
        },
        capture_output=True,
        text=True,
        timeout=NODE_RUN_LIMIT_S,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("walletBefore", "gamertag", "gamertagTransaction", "invoice", "payment"):
        assert out[name]["ok"], (name, out[name])
    assert out["walletBefore"]["answer"]["data"]["balance"] == str(start * 1000)
    assert out["gamertag"]["answer"]["data"]["status"] == "settled"
    tx = out["gamertagTransaction"]["answer"]["data"]
    assert (tx["status"], tx["amount"]) == ("TRANSACTION_STATUS_COMPLETED", "2000000")
    assert out["invoice"]["answer"]["data"]["status"] == "completed"
    assert out["payment"]["answer"]["data"]["internalId"] == "node-1"
    assert out["lnAddress"]["ok"] and out["lnAddress"]["answer"]["data"]["amount"] == "3000000"
    assert out["decode"]["answer"]["data"]["amount"] == "4000000"
    # Refusals: the SDK throws {status, message} from ZBD's error shape.
    assert out["insufficient"]["status"] == 400
    assert out["insufficient"]["message"].startswith("You do not have enough funds")
    assert out["fraction"]["status"] == 400 and "whole number of sats" in out["fraction"]["message"]
    assert out["transferWithoutReceiverKey"]["status"] == 403  # this SDK cannot send it
    withdrawal = out["withdrawal"]["answer"]["data"]  # a claim link: reserved at once
    assert (withdrawal["status"], withdrawal["amount"]) == ("pending", "1000000")
    assert withdrawal["invoice"]["request"].startswith("LNURL1")
    charge = out["charge"]["answer"]["data"]
    assert (charge["status"], charge["amount"]) == ("pending", "7000000")
    assert out["chargeFetched"]["answer"]["data"]["invoice"] == charge["invoice"]
    spent = cost(2000) + cost(4000) + cost(3000) + cost(1000)  # the link's reservation too
    assert balance(server) == start - spent
    assert out["walletAfter"]["answer"]["data"]["balance"] == str((start - spent) * 1000)
    assert balance(server, "node_studio_b") == 0
    with payrail(server) as api:  # the charge, paid: the wallet is credited once
        assert api.post(f"/test/deposits/{charge['id']}/pay").status_code == 200
        assert api.post(f"/test/deposits/{charge['id']}/pay").status_code in (200, 409)
    assert balance(server) == start - spent + 7000


def test_python_sdk_charge_is_a_deposit_credited_once_paid(server):
    start = balance(server)
    with sdk(server) as client:
        created = client.lightning_charges.with_raw_response.create(
            amount="5000000", description="Top-up", expires_in=300, internal_id="sdk-topup"
        ).json()
        charge = created["data"]
        assert (created["message"], charge["status"]) == ("Charge created.", "pending")
        assert balance(server) == start
        with payrail(server) as api:  # the sandbox's payer: payrail's own test route
            assert api.post(f"/test/deposits/{charge['id']}/pay").status_code == 200
        got = client.lightning_charges.with_raw_response.retrieve(charge["id"]).json()["data"]
        wallet = client.wallet.with_raw_response.retrieve_balance().json()["data"]
    assert got["status"] == "completed"
    assert balance(server) == start + 5000
    assert wallet["balance"] == str((start + 5000) * 1000)


def test_python_sdk_configured_by_its_environment_alone(server, monkeypatch):
    """The SDK reads ZBD_PAYMENTS_BASE_URL and ZBD_PAYMENTS_API_KEY: no code changes."""
    monkeypatch.setenv("ZBD_PAYMENTS_BASE_URL", server)
    monkeypatch.setenv("ZBD_PAYMENTS_API_KEY", SANDBOX_KEY)
    with zbdpay.ZbdPayments() as client:
        wallet = client.wallet.with_raw_response.retrieve_balance().json()["data"]
    assert wallet["balance"] == str(balance(server) * 1000)
