"""Test helpers for Lightning destinations: signed BOLT11 invoices and a Lightning Address
server on loopback (LUD-16/LUD-06) whose invoices come from a pluggable issuer: a local signer,
or a real LNbits wallet (tests/lnbits_kit.py).

The server can misbehave on purpose, per address name (see `Behaviour`), so the checks payrail
makes on every answer are each exercised against a real HTTP exchange.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import bolt11
from bolt11.models.tags import Tag, TagChar, Tags

PORT_RANGE = range(18100, 18200)  # this worktree's ports (see the brief of issue 11)
SIGNER_KEY = "e126f68f7eafcc8b74f54d269fe206be715000f94dac067d1c04a8ca3b2db734"


def free_port(skip: set[int] | None = None) -> int:
    """A free loopback port in PORT_RANGE."""
    for port in PORT_RANGE:
        if skip and port in skip:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def make_invoice(
    amount_msat: int | None,
    *,
    description_hash: str | None = None,
    description: str = "payrail test",
    currency: str = "bc",
    expiry_s: int = 3600,
    date: int | None = None,
    payment_hash: str | None = None,
) -> str:
    """A BOLT11 invoice signed by a fixed test key."""
    tags = Tags(
        [
            Tag(TagChar.payment_hash, payment_hash or secrets.token_hex(32)),
            Tag(TagChar.payment_secret, secrets.token_hex(32)),
            Tag(TagChar.expire_time, expiry_s),
        ]
    )
    if description_hash is not None:
        tags.tags.append(Tag(TagChar.description_hash, description_hash))
    else:
        tags.tags.append(Tag(TagChar.description, description))
    invoice = bolt11.Bolt11(
        currency=currency,
        date=date if date is not None else int(time.time()),
        tags=tags,
        amount_msat=bolt11.MilliSatoshi(amount_msat) if amount_msat is not None else None,
    )
    return bolt11.encode(invoice, SIGNER_KEY)


# issuer(amount_msat, metadata) -> BOLT11 text
Issuer = Callable[[int, str], str]


def signed_issuer(amount_msat: int, metadata: str) -> str:
    return make_invoice(amount_msat, description_hash=hashlib.sha256(metadata.encode()).hexdigest())


@dataclass
class Behaviour:
    """How the server answers for one name; the defaults are a correct LUD-06 service."""

    tag: str = "payRequest"
    min_msat: int = 1_000
    max_msat: int = 100_000_000
    amount_offset_msat: int = 0  # ask for another amount than requested
    wrong_description_hash: bool = False
    redirect: bool = False
    error: str | None = None  # answer {"status": "ERROR", "reason": error} to the callback


@dataclass
class AddressServer:
    """LUD-16 on http://127.0.0.1:<port>: /.well-known/lnurlp/<name> and its callback."""

    issuer: Issuer = signed_issuer
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    issued: list[tuple[str, int, str]] = field(default_factory=list)  # (name, msat, invoice)
    requests: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def address(self, name: str) -> str:
        return f"{name}@{self.host}"

    def metadata(self, name: str) -> str:
        return json.dumps([["text/plain", f"pay {name}"], ["text/identifier", self.address(name)]])

    def start(self) -> AddressServer:
        kit = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                kit.requests.append(self.path)
                status, body, headers = kit.answer(self.path)
                raw = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.port = self.port or free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str) -> tuple[int, object, dict[str, str]]:
        parts = urlsplit(path)
        if parts.path.startswith("/.well-known/lnurlp/"):
            name = parts.path.removeprefix("/.well-known/lnurlp/")
            b = self.behaviours.get(name, Behaviour())
            if b.redirect:
                return 302, {}, {"location": "http://169.254.169.254/latest/meta-data"}
            return (
                200,
                {
                    "tag": b.tag,
                    "callback": f"http://{self.host}/lnurlp/{name}/callback",
                    "minSendable": b.min_msat,
                    "maxSendable": b.max_msat,
                    "metadata": self.metadata(name),
                },
                {},
            )
        if parts.path.startswith("/lnurlp/") and parts.path.endswith("/callback"):
            name = parts.path.removeprefix("/lnurlp/").removesuffix("/callback")
            b = self.behaviours.get(name, Behaviour())
            if b.error:
                return 200, {"status": "ERROR", "reason": b.error}, {}
            amount = int(parse_qs(parts.query)["amount"][0]) + b.amount_offset_msat
            metadata = self.metadata(name) + (" tampered" if b.wrong_description_hash else "")
            invoice = self.issuer(amount, metadata)
            self.issued.append((name, amount, invoice))
            return 200, {"pr": invoice, "routes": []}, {}
        return 404, {"status": "ERROR", "reason": "not found"}, {}
