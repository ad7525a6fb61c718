"""A typed Python client for the payrail API, sync (`Client`) and async (`AsyncClient`), on httpx.

Safe retries are the point. Every logical payout (and funding, and card payment) gets one
idempotency key, generated once per call unless the caller gives one, and every attempt sends
that same key: a timeout, a lost connection or a 5xx is retried, and payrail answers a retry
with the payout it already made (200 "already processed"), never a second charge. Retries are
bounded (`RetryPolicy.attempts_max`) with exponential backoff and jitter.

Every failure raises `ApiError` (`code`, `http_status`, `retryable`), whatever went wrong:
payrail's refusals, a proxy's 5xx, a connection that never answered (`http_status` None).
`retryable` says whether sending the same call again later, with the same key, may succeed.

What is retried:
- a request never sent (connection refused, DNS): always;
- a timeout, a connection lost mid-request, a 500/503, a 502/504 that is not payrail's own
  answer: for reads, for PUT/DELETE, and for POSTs that carry an idempotency key;
- never: a 4xx, or payrail's definite 502 PAYMENT_FAILED / 504 GATEWAY_TIMEOUT of a payout
  (the balance was rolled back; a new attempt needs a new key) — raised as `PayoutFailed`.

    from payrail.client import Client

    with Client("http://127.0.0.1:3000", api_key="test_api_key_12345") as payrail:
        payout = payrail.create_payout("player1", 1000, "project_test_001")
        payrail.create_payout({"lightningAddress": "alice@example.com"}, 500, "project_test_001")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict, cast

import httpx

from payrail.webhooks import TOLERANCE_DEFAULT_S, WebhookVerificationError, verify

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Destination",
    "PayoutFailed",
    "RetryPolicy",
    "WebhookVerificationError",
    "verify_webhook",
]

API_PREFIX = "/api/v1"
TIMEOUT_DEFAULT_S = 30.0  # above the server's own settle wait: a payout answers within it
PAYOUT_FINAL_ERRORS = frozenset({"PAYMENT_FAILED", "GATEWAY_TIMEOUT"})
RETRY_STATUSES = frozenset({500, 502, 503, 504})
# A payout names its recipient with exactly one of these (docs/lightning.md).
DESTINATION_FIELDS = ("gamertag", "lightningAddress", "invoice")
NO_ANSWER_CODE = "NO_ANSWER"  # the request got no HTTP answer (refused, timed out, cut off)


# ---------------------------------------------------------------- types


class Payout(TypedDict):
    id: str
    internalId: str | None
    gamertag: str
    amount: int
    fee: int
    totalCost: int
    projectId: str
    idempotencyKey: str | None
    description: str | None
    callbackUrl: str | None
    status: str  # pending | completed | expired | error
    expiresIn: int
    expiresAt: str | None
    createdAt: str | None
    updatedAt: str | None
    settledAt: str | None
    failureReason: str | None


class PayoutPage(TypedDict):
    payouts: list[Payout]
    count: int
    nextCursor: str | None
    hasMore: bool


class Balance(TypedDict):
    projectId: str
    balance: int
    reserved: int
    currency: str


class Funding(TypedDict):
    projectId: str
    previousBalance: int
    addedAmount: int
    newBalance: int
    replayed: bool


class CreatedProject(TypedDict):
    project: dict[str, Any]
    apiKey: str
    webhookSecret: str


class Order(TypedDict):
    id: str
    projectId: str
    amount: int
    currency: str
    status: str
    customerId: str | None
    metadata: dict[str, Any] | None
    paymentIntentId: str | None
    history: NotRequired[list[dict[str, Any]]]


class Destination(TypedDict, total=False):
    """Exactly one of: a gamertag (the recipient directory), a Lightning Address, an invoice."""

    gamertag: str
    lightningAddress: str
    invoice: str


class BatchItem(TypedDict):
    """One payout of a batch: `amount` and exactly one destination field."""

    amount: int
    gamertag: NotRequired[str]
    lightningAddress: NotRequired[str]
    invoice: NotRequired[str]
    idempotencyKey: NotRequired[str]
    description: NotRequired[str]
    internalId: NotRequired[str]
    callbackUrl: NotRequired[str]


# ---------------------------------------------------------------- errors


class ApiError(Exception):
    """Any failed call. `code` is payrail's `data.error` (e.g. INSUFFICIENT_BALANCE), or
    UNEXPECTED_ANSWER (an answer not in payrail's envelope, e.g. a proxy's), or NO_ANSWER
    (`http_status` None: refused, timed out or cut off; the cause is `__cause__`).

    `retryable`: the same call sent again later, with the same idempotency key, may succeed
    (a 5xx, a 429, no answer). False for a refusal that another attempt cannot change, and for
    a POST without a key that may have been applied (sending it again could act twice)."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        data: dict[str, Any],
        *,
        retryable: bool = False,
    ) -> None:
        super().__init__(f"{status if status is not None else 'no answer'} {code}: {message}")
        self.http_status = status
        self.code = code
        self.message = message
        self.data = data
        self.retryable = retryable

    @property
    def status(self) -> int | None:
        """The HTTP status (the name this attribute had first; `http_status` is the same)."""
        return self.http_status


class PayoutFailed(ApiError):
    """The node did not pay and the balance was rolled back (502/504); `payout` says which."""

    @property
    def payout(self) -> dict[str, Any]:
        return self.data


def _retryable_status(status: int) -> bool:
    return status in RETRY_STATUSES or status == 429


# ---------------------------------------------------------------- retry policy


@dataclass(frozen=True)
class RetryPolicy:
    attempts_max: int = 4
    backoff_base_ms: int = 200
    backoff_max_ms: int = 5_000
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        assert 1 <= self.attempts_max <= 10, "attempts_max bounds the retries: 1..10"
        assert 0 <= self.backoff_base_ms <= self.backoff_max_ms <= 60_000

    def delay_s(self, attempt: int) -> float:
        """Wait before attempt `attempt + 1`: exponential, capped, half of it jittered."""
        cap_ms = min(self.backoff_max_ms, self.backoff_base_ms * 2 ** (attempt - 1))
        return (cap_ms / 2 + self.rng.uniform(0, cap_ms / 2)) / 1000


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    idempotency_key: str | None = None
    is_payout: bool = False

    @property
    def retry_unsent_only(self) -> bool:
        """A POST without a key may have been applied: retry only what was never sent."""
        return self.method == "POST" and self.idempotency_key is None

    def headers(self) -> dict[str, str]:
        return {"Idempotency-Key": self.idempotency_key} if self.idempotency_key else {}


def _new_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def _parse(call: _Call, response: httpx.Response) -> Any:
    """The envelope's data, or the error to raise (or to retry)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    enveloped = isinstance(body, dict) and "success" in body and isinstance(body.get("data"), dict)
    if response.status_code < 400 and enveloped:
        return body["data"]
    status = response.status_code
    if not enveloped:  # a proxy's answer, or not payrail at all
        message = f"{status} from {call.path}: {response.text[:200]}"
        raise ApiError(
            status, "UNEXPECTED_ANSWER", message, {}, retryable=_retryable_status(status)
        )
    data = body["data"]
    code = str(data.get("error", "UNKNOWN"))
    message = str(body.get("message", ""))
    if call.is_payout and code in PAYOUT_FINAL_ERRORS:
        raise PayoutFailed(status, code, message, data)  # definite: a new attempt, a new key
    raise ApiError(status, code, message, data, retryable=_retryable_status(status))


def _no_answer(call: _Call, exc: httpx.TransportError) -> ApiError:
    """A request that got no answer, as an ApiError; retryable unless it may have acted."""
    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    failed = ApiError(
        None,
        NO_ANSWER_CODE,
        f"{call.method} {call.path}: {type(exc).__name__}: {exc}",
        {},
        retryable=unsent or not call.retry_unsent_only,
    )
    failed.__cause__ = exc
    return failed


def _retry_on(call: _Call, exc: ApiError) -> bool:
    """Whether to send this call again now: only what payrail answers again safely."""
    if exc.http_status is None and isinstance(
        exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout
    ):
        return True  # never reached the server
    if call.retry_unsent_only:
        return False
    if exc.http_status is None:
        return True
    return exc.http_status in RETRY_STATUSES and not isinstance(exc, PayoutFailed)


def batch_key(project_id: str, items: list[BatchItem]) -> str:
    """The batch's idempotency key when the caller gives none: a digest of the project and the
    items as sent, so the same batch sent again (a rerun of a crashed script) is a replay.
    Two batches meant to pay the same winners the same amounts twice need keys of their own."""
    canonical = json.dumps(
        {"projectId": project_id, "items": items}, sort_keys=True, separators=(",", ":")
    )
    return "batch-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def _destination(to: str | Destination) -> dict[str, str]:
    """A gamertag as a plain string, or a mapping with exactly one destination field."""
    if isinstance(to, str):
        return {"gamertag": to}
    named = {k: v for k, v in dict(to).items() if k in DESTINATION_FIELDS and v}
    if len(named) != 1 or len(named) != len(dict(to)):
        raise ValueError(f"a payout goes to exactly one of {', '.join(DESTINATION_FIELDS)}")
    return named


def _query(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class Calls:
    """Every route as a `_Call`, once; `Client` and `AsyncClient` only send them."""

    @staticmethod
    def create_payout(
        to: str | Destination,
        amount: int,
        project_id: str,
        idempotency_key: str | None = None,
        **optional: Any,
    ) -> _Call:
        body: dict[str, Any] = _destination(to) | {"amount": amount, "projectId": project_id}
        body |= _query(
            callbackUrl=optional.get("callback_url"),
            expiresIn=optional.get("expires_in_s"),
            description=optional.get("description"),
            internalId=optional.get("internal_id"),
        )
        key = idempotency_key or _new_key("payout")
        return _Call("POST", "/payouts", json=body, idempotency_key=key, is_payout=True)

    @staticmethod
    def create_payouts_batch(
        project_id: str, items: list[BatchItem], idempotency_key: str | None = None
    ) -> _Call:
        # Items without their own key get `<batch key>#<index>` from the server: with a batch
        # key that is the same on every run, a script run again after a crash pays nobody twice.
        body = {"projectId": project_id, "items": [dict(item) for item in items]}
        key = idempotency_key or batch_key(project_id, items)
        return _Call("POST", "/payouts/batch", json=body, idempotency_key=key)

    @staticmethod
    def get_payout(payout_id: str) -> _Call:
        return _Call("GET", f"/payouts/{payout_id}")

    @staticmethod
    def get_payout_by_internal_id(internal_id: str, project_id: str | None) -> _Call:
        path = f"/payouts/by-internal-id/{internal_id}"
        return _Call("GET", path, params=_query(projectId=project_id))

    @staticmethod
    def list_payouts(**params: Any) -> _Call:
        return _Call("GET", "/payouts", params=_query(**params))

    @staticmethod
    def payout_history(payout_id: str) -> _Call:
        return _Call("GET", f"/payouts/{payout_id}/history")

    @staticmethod
    def create_project(project_id: str | None, name: str | None) -> _Call:
        return _Call("POST", "/projects", json=_query(id=project_id, name=name))

    @staticmethod
    def fund_project(project_id: str, amount: int, idempotency_key: str | None) -> _Call:
        key = idempotency_key or _new_key("fund")
        return _Call(
            "POST", f"/projects/{project_id}/fund", json={"amount": amount}, idempotency_key=key
        )

    @staticmethod
    def balance(project_id: str) -> _Call:
        return _Call("GET", f"/projects/{project_id}/balance")

    @staticmethod
    def recipient(method: str, gamertag: str, body: dict[str, Any] | None = None) -> _Call:
        return _Call(method, f"/recipients/{gamertag}", json=body)

    @staticmethod
    def list_recipients(**params: Any) -> _Call:
        return _Call("GET", "/recipients", params=_query(**params))

    @staticmethod
    def create_order(amount: int, currency: str, **optional: Any) -> _Call:
        body = {"amount": amount, "currency": currency} | _query(
            customerId=optional.get("customer_id"),
            metadata=optional.get("metadata"),
            projectId=optional.get("project_id"),
        )
        return _Call("POST", "/orders", json=body)

    @staticmethod
    def pay_order(order_id: str, payment_method: str, idempotency_key: str | None) -> _Call:
        key = idempotency_key or _new_key("pay")
        body = {"paymentMethod": payment_method}
        return _Call("POST", f"/orders/{order_id}/pay", json=body, idempotency_key=key)

    @staticmethod
    def get_order(order_id: str) -> _Call:
        return _Call("GET", f"/orders/{order_id}")

    @staticmethod
    def list_orders(**params: Any) -> _Call:
        return _Call("GET", "/orders", params=_query(**params))


def _client_headers(api_key: str) -> dict[str, str]:
    return {"apikey": api_key, "user-agent": "payrail-python-client"}


Json = dict[str, Any]

# ---------------------------------------------------------------- sync


class Client:
    """Blocking client. `http` may be any httpx.Client (e.g. with a custom transport)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = TIMEOUT_DEFAULT_S,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = http or httpx.Client(timeout=timeout_s, trust_env=False)
        self._base = base_url.rstrip("/") + API_PREFIX
        self._headers = _client_headers(api_key)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> Any:
        for attempt in range(1, self.retry.attempts_max + 1):
            try:
                try:
                    response = self._http.request(
                        call.method,
                        self._base + call.path,
                        json=call.json,
                        params=call.params,
                        headers=self._headers | call.headers(),
                    )
                except httpx.TransportError as exc:
                    raise _no_answer(call, exc) from exc
                return _parse(call, response)
            except ApiError as exc:
                if attempt == self.retry.attempts_max or not _retry_on(call, exc):
                    raise
                self._sleep(self.retry.delay_s(attempt))
        raise AssertionError("unreachable: the loop returns or raises")

    def create_payout(
        self,
        to: str | Destination,
        amount: int,
        project_id: str,
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        expires_in_s: int | None = None,
        description: str | None = None,
        internal_id: str | None = None,
    ) -> Payout:
        """201 completed or 202 pending (or the replay of an earlier call with the same key).

        `to`: a gamertag, or {"lightningAddress": "name@domain"}, or {"invoice": "lnbc…"}."""
        call = Calls.create_payout(
            to, amount, project_id, idempotency_key, callback_url=callback_url,
            expires_in_s=expires_in_s, description=description, internal_id=internal_id,
        )  # fmt: skip
        return cast(Payout, self._send(call))

    def create_payouts_batch(
        self, project_id: str, items: list[BatchItem], *, idempotency_key: str | None = None
    ) -> list[Json]:
        """POST /payouts/batch: `data.items[i]` answers `items[i]`. Without `idempotency_key`
        the key is derived from the project and items (`batch_key`), never random: the same
        batch sent again, by a retry or a rerun of the script, is answered, not paid again."""
        call = Calls.create_payouts_batch(project_id, items, idempotency_key)
        return cast(list[Json], self._send(call)["items"])

    def get_payout(self, payout_id: str) -> Payout:
        return cast(Payout, self._send(Calls.get_payout(payout_id)))

    def get_payout_by_internal_id(self, internal_id: str, project_id: str | None = None) -> Payout:
        return cast(Payout, self._send(Calls.get_payout_by_internal_id(internal_id, project_id)))

    def list_payouts(
        self,
        *,
        project_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> PayoutPage:
        call = Calls.list_payouts(projectId=project_id, status=status, limit=limit, cursor=cursor)
        return cast(PayoutPage, self._send(call))

    def payout_history(self, payout_id: str) -> list[Json]:
        return cast(list[Json], self._send(Calls.payout_history(payout_id))["events"])

    def create_project(
        self, project_id: str | None = None, name: str | None = None
    ) -> CreatedProject:
        return cast(CreatedProject, self._send(Calls.create_project(project_id, name)))

    def fund_project(
        self, project_id: str, amount: int, *, idempotency_key: str | None = None
    ) -> Funding:
        return cast(Funding, self._send(Calls.fund_project(project_id, amount, idempotency_key)))

    def balance(self, project_id: str) -> Balance:
        return cast(Balance, self._send(Calls.balance(project_id)))

    def put_recipient(self, gamertag: str, recipient: Json) -> Json:
        return cast(Json, self._send(Calls.recipient("PUT", gamertag, recipient)))

    def get_recipient(self, gamertag: str) -> Json:
        return cast(Json, self._send(Calls.recipient("GET", gamertag)))

    def delete_recipient(self, gamertag: str) -> Json:
        return cast(Json, self._send(Calls.recipient("DELETE", gamertag)))

    def list_recipients(self, *, limit: int | None = None, cursor: str | None = None) -> Json:
        return cast(Json, self._send(Calls.list_recipients(limit=limit, cursor=cursor)))

    def create_order(
        self,
        amount: int,
        currency: str,
        *,
        customer_id: str | None = None,
        metadata: dict[str, str] | None = None,
        project_id: str | None = None,
    ) -> Order:
        call = Calls.create_order(
            amount, currency, customer_id=customer_id, metadata=metadata, project_id=project_id
        )
        return cast(Order, self._send(call))

    def pay_order(
        self, order_id: str, payment_method: str, *, idempotency_key: str | None = None
    ) -> Order:
        return cast(Order, self._send(Calls.pay_order(order_id, payment_method, idempotency_key)))

    def get_order(self, order_id: str) -> Order:
        return cast(Order, self._send(Calls.get_order(order_id)))

    def list_orders(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Json:
        return cast(Json, self._send(Calls.list_orders(status=status, limit=limit, cursor=cursor)))


# ---------------------------------------------------------------- async


class AsyncClient:
    """The same methods as `Client`, awaited. `http` may be any httpx.AsyncClient."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = TIMEOUT_DEFAULT_S,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = http or httpx.AsyncClient(timeout=timeout_s, trust_env=False)
        self._base = base_url.rstrip("/") + API_PREFIX
        self._headers = _client_headers(api_key)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> Any:
        for attempt in range(1, self.retry.attempts_max + 1):
            try:
                try:
                    response = await self._http.request(
                        call.method,
                        self._base + call.path,
                        json=call.json,
                        params=call.params,
                        headers=self._headers | call.headers(),
                    )
                except httpx.TransportError as exc:
                    raise _no_answer(call, exc) from exc
                return _parse(call, response)
            except ApiError as exc:
                if attempt == self.retry.attempts_max or not _retry_on(call, exc):
                    raise
                await self._sleep(self.retry.delay_s(attempt))
        raise AssertionError("unreachable: the loop returns or raises")

    async def create_payout(
        self,
        to: str | Destination,
        amount: int,
        project_id: str,
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        expires_in_s: int | None = None,
        description: str | None = None,
        internal_id: str | None = None,
    ) -> Payout:
        call = Calls.create_payout(
            to, amount, project_id, idempotency_key, callback_url=callback_url,
            expires_in_s=expires_in_s, description=description, internal_id=internal_id,
        )  # fmt: skip
        return cast(Payout, await self._send(call))

    async def create_payouts_batch(
        self, project_id: str, items: list[BatchItem], *, idempotency_key: str | None = None
    ) -> list[Json]:
        call = Calls.create_payouts_batch(project_id, items, idempotency_key)
        return cast(list[Json], (await self._send(call))["items"])

    async def get_payout(self, payout_id: str) -> Payout:
        return cast(Payout, await self._send(Calls.get_payout(payout_id)))

    async def get_payout_by_internal_id(
        self, internal_id: str, project_id: str | None = None
    ) -> Payout:
        call = Calls.get_payout_by_internal_id(internal_id, project_id)
        return cast(Payout, await self._send(call))

    async def list_payouts(
        self,
        *,
        project_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> PayoutPage:
        call = Calls.list_payouts(projectId=project_id, status=status, limit=limit, cursor=cursor)
        return cast(PayoutPage, await self._send(call))

    async def payout_history(self, payout_id: str) -> list[Json]:
        return cast(list[Json], (await self._send(Calls.payout_history(payout_id)))["events"])

    async def create_project(
        self, project_id: str | None = None, name: str | None = None
    ) -> CreatedProject:
        return cast(CreatedProject, await self._send(Calls.create_project(project_id, name)))

    async def fund_project(
        self, project_id: str, amount: int, *, idempotency_key: str | None = None
    ) -> Funding:
        call = Calls.fund_project(project_id, amount, idempotency_key)
        return cast(Funding, await self._send(call))

    async def balance(self, project_id: str) -> Balance:
        return cast(Balance, await self._send(Calls.balance(project_id)))

    async def put_recipient(self, gamertag: str, recipient: Json) -> Json:
        return cast(Json, await self._send(Calls.recipient("PUT", gamertag, recipient)))

    async def get_recipient(self, gamertag: str) -> Json:
        return cast(Json, await self._send(Calls.recipient("GET", gamertag)))

    async def delete_recipient(self, gamertag: str) -> Json:
        return cast(Json, await self._send(Calls.recipient("DELETE", gamertag)))

    async def list_recipients(self, *, limit: int | None = None, cursor: str | None = None) -> Json:
        return cast(Json, await self._send(Calls.list_recipients(limit=limit, cursor=cursor)))

    async def create_order(
        self,
        amount: int,
        currency: str,
        *,
        customer_id: str | None = None,
        metadata: dict[str, str] | None = None,
        project_id: str | None = None,
    ) -> Order:
        call = Calls.create_order(
            amount, currency, customer_id=customer_id, metadata=metadata, project_id=project_id
        )
        return cast(Order, await self._send(call))

    async def pay_order(
        self, order_id: str, payment_method: str, *, idempotency_key: str | None = None
    ) -> Order:
        call = Calls.pay_order(order_id, payment_method, idempotency_key)
        return cast(Order, await self._send(call))

    async def get_order(self, order_id: str) -> Order:
        return cast(Order, await self._send(Calls.get_order(order_id)))

    async def list_orders(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Json:
        call = Calls.list_orders(status=status, limit=limit, cursor=cursor)
        return cast(Json, await self._send(call))


def verify_webhook(
    secret: str,
    signature_header: str | None,
    raw_body: bytes | str,
    tolerance_s: int = TOLERANCE_DEFAULT_S,
) -> dict[str, Any]:
    """A callback's event, if signed with `secret` and fresh; else WebhookVerificationError."""
    return verify(secret, signature_header, raw_body, tolerance_s)
