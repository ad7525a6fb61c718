"""A real LNbits for the tests: start, stop, kill and restart it (scripts/lnbits.sh), make
wallets, fund them, read balances and payments.

LNbits runs FakeWallet, which settles payments between its own wallets internally, so a
payout from wallet A to an invoice of wallet B moves real balances inside a real LNbits.
Under CI=true a LNbits that cannot be installed or started fails the tests instead of
skipping them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "lnbits.sh"
START_TIMEOUT_S = 90  # first start creates its database and migrates it
INSTALL_TIMEOUT_S = 900
CALL_TIMEOUT_S = 15


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(message: str) -> None:
    """Fail under CI (the real LNbits tests may not skip there), skip elsewhere."""
    if in_ci():
        pytest.fail(message + " (CI=true: the LNbits tests may not skip)")
    pytest.skip(message)


@dataclass
class Wallet:
    id: str
    adminkey: str
    inkey: str


class Lnbits:
    def __init__(self, port: int, data_dir: Path, log_path: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- process

    @staticmethod
    def install() -> None:
        subprocess.run(["bash", str(SCRIPT), "install"], check=True, timeout=INSTALL_TIMEOUT_S)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            ["bash", str(SCRIPT), "run", str(self.port), str(self.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches LNbits itself
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"LNbits exited with {self._process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"LNbits did not answer within {START_TIMEOUT_S} s; see {log.name}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=30)
        self._process = None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # ---------------------------------------------------------------- wallets

    def wallet(self, name: str) -> Wallet:
        """A new account's wallet, denominated in sats (no exchange-rate lookups)."""
        made = httpx.post(f"{self.url}/api/v1/account", json={"name": name}, timeout=CALL_TIMEOUT_S)
        made.raise_for_status()
        data = made.json()
        wallet = Wallet(data["id"], data["adminkey"], data["inkey"])
        patched = httpx.patch(
            f"{self.url}/api/v1/wallet",
            json={"currency": ""},
            headers={"X-Api-Key": wallet.adminkey},
            timeout=CALL_TIMEOUT_S,
        )
        patched.raise_for_status()
        return wallet

    def fund(self, wallet: Wallet, sats: int) -> None:
        subprocess.run(
            ["bash", str(SCRIPT), "fund", str(self.data_dir), wallet.id, str(sats)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    def balance_msat(self, wallet: Wallet) -> int:
        answer = httpx.get(
            f"{self.url}/api/v1/wallet",
            headers={"X-Api-Key": wallet.adminkey},
            timeout=CALL_TIMEOUT_S,
        )
        answer.raise_for_status()
        return int(answer.json()["balance"])

    def payments(self, wallet: Wallet) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.url}/api/v1/payments",
            params={"limit": 500},
            headers={"X-Api-Key": wallet.adminkey},
            timeout=CALL_TIMEOUT_S,
        )
        answer.raise_for_status()
        return list(answer.json())

    def outgoing(self, wallet: Wallet, payment_hash: str) -> list[dict[str, Any]]:
        """The wallet's outgoing payments for one hash: one, or none, never two."""
        return [
            p
            for p in self.payments(wallet)
            if p["payment_hash"] == payment_hash and int(p["amount"]) < 0
        ]

    def invoice(self, wallet: Wallet, amount_msat: int, metadata: str | None = None) -> str:
        """An invoice of `wallet`; with metadata, its description hash is SHA-256(metadata)."""
        assert amount_msat % 1000 == 0, "LNbits invoices are in whole sats"
        body: dict[str, Any] = {"out": False, "amount": amount_msat // 1000, "memo": "payrail"}
        if metadata is not None:
            body["unhashed_description"] = metadata.encode().hex()
        answer = httpx.post(
            f"{self.url}/api/v1/payments",
            json=body,
            headers={"X-Api-Key": wallet.inkey},
            timeout=CALL_TIMEOUT_S,
        )
        answer.raise_for_status()
        return str(answer.json()["bolt11"])
