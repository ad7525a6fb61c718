"""The callback receiver the harness runs on 127.0.0.1 for `callback_test` and `gaming_rewards`.

A gevent WSGI server in the harness's own process (it is already under gevent). It can refuse
a share of first deliveries with 503, so the run also proves that delivery is retried.
Signatures are checked after the run (`verify`), with the secret the server gave us.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gevent.pywsgi import WSGIServer

BODY_MAX_BYTES = 1 << 20
SIGNATURE_HEADER = "Payrail-Signature"


@dataclass(frozen=True)
class Delivery:
    received_s: float
    path: str
    event_id: str | None
    payout_id: str | None
    status: str | None
    signature: str | None
    body: bytes


class _QuietLog:
    def write(self, *_: Any) -> None:
        return None


class CallbackReceiver:
    def __init__(self, refuse_first_every: int = 0) -> None:
        self.refuse_first_every = refuse_first_every
        self.deliveries: list[Delivery] = []
        self.attempts: Counter[str] = Counter()
        self.refused = 0
        self.malformed = 0
        self._server: WSGIServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> str:
        self._server = WSGIServer(("127.0.0.1", 0), self._app, log=_QuietLog(), error_log=None)
        self._server.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=2)
            self._server = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            start_response("405 Method Not Allowed", [("content-type", "text/plain")])
            return [b"POST only"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(min(length, BODY_MAX_BYTES))
        try:
            payload = json.loads(body)
            data = payload.get("data") or {}
            event_id = payload.get("id") or environ.get("HTTP_PAYRAIL_EVENT_ID")
            payout_id, status = data.get("id"), data.get("status")
        except (ValueError, AttributeError):
            self.malformed += 1
            start_response("400 Bad Request", [("content-type", "text/plain")])
            return [b"not a payrail callback"]
        key = event_id or body.hex()
        self.attempts[key] += 1
        if (
            self.refuse_first_every
            and self.attempts[key] == 1
            and zlib.crc32(key.encode()) % self.refuse_first_every == 0
        ):
            self.refused += 1
            start_response("503 Service Unavailable", [("content-type", "text/plain")])
            return [b"try again"]
        self.deliveries.append(
            Delivery(
                time.monotonic(),
                environ.get("PATH_INFO", ""),
                event_id,
                payout_id,
                status,
                environ.get("HTTP_PAYRAIL_SIGNATURE"),
                body,
            )
        )
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"received": true}']

    def statuses_by_payout(self) -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for d in self.deliveries:
            if d.payout_id and d.status:
                seen.setdefault(d.payout_id, set()).add(d.status)
        return seen

    def duplicate_events(self) -> int:
        counts = Counter(d.event_id for d in self.deliveries if d.event_id)
        return sum(n - 1 for n in counts.values() if n > 1)


def load_verifier() -> Callable[[str, str, bytes], Any] | None:
    """payrail.webhooks.verify(secret, header, body), if that module exists in this build."""
    try:
        from payrail import webhooks  # type: ignore[attr-defined]
    except ImportError:
        return None
    verify = getattr(webhooks, "verify", None)
    return verify if callable(verify) else None


def signature_valid(verify: Callable[[str, str, bytes], Any], secret: str, d: Delivery) -> bool:
    """A verifier may return a bool or raise on a bad signature; both are understood."""
    assert d.signature is not None
    try:
        result = verify(secret, d.signature, d.body)
    except Exception:
        return False
    return result is not False
