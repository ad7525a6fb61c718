"""A Stripe-compatible simulator for the sandbox and tests: the subset of Stripe's HTTP API
payrail uses, and signed webhooks with faults.

- `POST /v1/payment_intents` (form-encoded, confirm=true), `GET /v1/payment_intents/{id}`,
  `GET /v1/payment_intents` (created[gte], limit, starting_after), Bearer API key.
- Idempotency as Stripe documents it: the first answer for a key (success or error) is saved
  and replayed for the same parameters; other parameters get 400 `idempotency_error`.
- Events in Stripe's shape (`evt_…`, type, created, data.object, request.idempotency_key),
  signed with the `Stripe-Signature` scheme, POSTed to payrail's webhook on 127.0.0.1 only.
- Faults from the failure-injection settings (sandbox.py): create errors and timeouts;
  webhooks before create answers, delayed, duplicated, reordered, dropped.

Its state lives in its own tables (sim_stripe_*), written in its own transactions, so every
process and a restart agree, and reconciliation compares payrail's books with "Stripe" honestly.
Test card numbers are Stripe's test payment methods: `pm_card_visa` succeeds,
`pm_card_chargeDeclined` (or any id containing "Declined") is declined.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail import webhooks
from payrail.db.tables import sim_stripe_deliveries, sim_stripe_intents, sim_stripe_requests
from payrail.domain.orders import CURRENCIES
from payrail.services.faults import FailureInjection, FaultStore
from payrail.support.clock import Clock, wait_or_stop
from payrail.support.wakeup import Wakeup

log = structlog.get_logger("payrail.stripe_sim")
PI = sim_stripe_intents.c
D = sim_stripe_deliveries.c
R = sim_stripe_requests.c

API_VERSION = "2024-06-20"
DELIVERY_ATTEMPTS_MAX = 8  # Stripe retries for days; the simulator gives up sooner
DELIVERY_RETRY_MS = 1_000
DELIVERY_BATCH_MAX = 200
DELIVERY_CONCURRENCY_MAX = 16
DELIVERY_TIMEOUT_S = 10.0
# The delivery loop looks for due deliveries at most every DELIVERY_POLL_MS while it finds
# none, is woken at once by a delivery this process records, and otherwise sleeps until the
# next pending one is due, at most DELIVERY_IDLE_POLL_MAX_MS (another process's records).
DELIVERY_POLL_MS = 100
DELIVERY_IDLE_POLL_MAX_MS = 2_000
LIST_LIMIT_MAX = 100
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _stripe_error(status: int, type_: str, message: str, **more: Any) -> tuple[int, dict]:
    return status, {"error": {"type": type_, "message": message, **more}}


@dataclass(frozen=True)
class _CreateParams:
    amount: int
    currency: str
    payment_method: str
    confirm: bool
    metadata: dict[str, str]

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()


def _parse_create(form: dict[str, str]) -> _CreateParams | tuple[int, dict]:
    """Stripe's validation of the fields payrail sends; an error answer otherwise."""
    amount = form.get("amount", "")
    if not amount.isdigit() or int(amount) < 1:
        return _stripe_error(400, "invalid_request_error", "Invalid amount.", param="amount")
    currency = form.get("currency", "")
    if currency not in CURRENCIES:
        return _stripe_error(400, "invalid_request_error", "Invalid currency.", param="currency")
    method = form.get("payment_method", "")
    if not method:
        return _stripe_error(
            400, "invalid_request_error", "Missing payment_method.", param="payment_method"
        )
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in form.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    return _CreateParams(int(amount), currency, method, form.get("confirm") == "true", metadata)


def _intent_json(row: Any) -> dict[str, Any]:
    last_error = json.loads(row["last_error"]) if row["last_error"] else None
    return {
        "id": row["id"],
        "object": "payment_intent",
        "amount": row["amount"],
        "amount_received": row["amount"] if row["status"] == "succeeded" else 0,
        "currency": row["currency"],
        "status": row["status"],
        "payment_method": row["payment_method"],
        "payment_method_types": ["card"],
        "capture_method": "automatic",
        "confirmation_method": "automatic",
        "metadata": json.loads(row["metadata"]),
        "created": row["created_at"],
        "last_payment_error": last_error,
        "livemode": False,
    }


def _declines(payment_method: str) -> bool:
    return "declined" in payment_method.lower()


class StripeSimulator:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        faults: FaultStore,
        seed: int,
        *,
        api_key: str,
        webhook_secret: str,
        webhook_url: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        host = httpx.URL(webhook_url).host
        assert host in {h.strip("[]") for h in LOOPBACK_HOSTS}, "the simulator posts to loopback"
        self._engine = engine
        self._clock = clock
        self._faults = faults
        self._rng = random.Random(seed)
        self._api_key = api_key
        self._webhook_secret = webhook_secret
        self._webhook_url = webhook_url
        self._webhook = httpx.AsyncClient(transport=transport, timeout=DELIVERY_TIMEOUT_S)
        self._recorded = Wakeup()  # a pending delivery was recorded: the loop looks at once

    async def aclose(self) -> None:
        await self._webhook.aclose()

    async def connect(self, transport: httpx.AsyncBaseTransport) -> None:
        """Send webhooks through this transport (tests: the payrail app in process)."""
        await self._webhook.aclose()
        self._webhook = httpx.AsyncClient(transport=transport, timeout=DELIVERY_TIMEOUT_S)

    # ------------------------------------------------------------ the API

    async def create(self, idempotency_key: str | None, form: dict[str, str]) -> tuple[int, dict]:
        parsed = _parse_create(form)
        if isinstance(parsed, tuple):
            return parsed
        if idempotency_key:
            saved = await self._saved(idempotency_key, parsed)
            if saved is not None:
                return saved
        cfg = await self._faults.get()
        if cfg.enabled and self._rng.random() < cfg.cardCreateErrorRate:
            answer = _stripe_error(500, "api_error", "Simulated: an error occurred on our side.")
            saved, _ = await self._record(idempotency_key, parsed, answer, None, [], cfg)
            return saved or answer
        now_s = self._clock.now_ms() // 1000
        intent_id = "pi_" + secrets.token_hex(12)
        declined = _declines(parsed.payment_method)
        status = "succeeded" if parsed.confirm and not declined else "requires_payment_method"
        last_error = None
        if declined:
            last_error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": "Your card was declined.",
            }
        row = {
            "id": intent_id,
            "amount": parsed.amount,
            "currency": parsed.currency,
            "status": status,
            "payment_method": parsed.payment_method,
            "metadata": json.dumps(parsed.metadata),
            "idempotency_key": idempotency_key,
            "last_error": json.dumps(last_error) if last_error else None,
            "created_at": now_s,
        }
        intent = _intent_json(row)
        if declined:
            answer = _stripe_error(
                402,
                "card_error",
                "Your card was declined.",
                code="card_declined",
                decline_code="generic_decline",
                payment_intent=intent,
            )
        else:
            answer = (200, intent)
        final_type = (
            "payment_intent.succeeded"
            if status == "succeeded"
            else ("payment_intent.payment_failed")
        )
        events = [
            self._event("payment_intent.created", intent, idempotency_key, now_s),
            self._event(final_type, intent, idempotency_key, now_s),
        ]
        saved, deliveries = await self._record(idempotency_key, parsed, answer, row, events, cfg)
        if saved is not None:  # a concurrent request with the same key won: its answer
            return saved
        for delivery in deliveries:  # the fault: payrail hears of it before the answer
            await self._deliver(delivery["id"], delivery["payload"])
        if cfg.enabled and self._rng.random() < cfg.cardCreateTimeoutRate:
            await asyncio.sleep(cfg.cardCreateTimeoutMs / 1000)
        return answer

    async def retrieve(self, intent_id: str) -> tuple[int, dict]:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(sim_stripe_intents).where(PI.id == intent_id))).first()
        if row is None:
            return _stripe_error(
                404,
                "invalid_request_error",
                f"No such payment_intent: '{intent_id}'",
                code="resource_missing",
                param="intent",
            )
        return 200, _intent_json(row._mapping)

    async def list(self, query: dict[str, str]) -> tuple[int, dict]:
        try:
            limit = min(LIST_LIMIT_MAX, max(1, int(query.get("limit", "10"))))
            since = int(query.get("created[gte]", "0"))
        except ValueError:
            return _stripe_error(400, "invalid_request_error", "Invalid list parameters.")
        rows = select(sim_stripe_intents).where(PI.created_at >= since)
        after = query.get("starting_after")
        async with self._engine.connect() as conn:
            if after:
                cursor = (
                    await conn.execute(select(PI.created_at, PI.id).where(PI.id == after))
                ).first()
                if cursor is not None:
                    rows = rows.where(
                        or_(
                            PI.created_at < cursor.created_at,
                            and_(PI.created_at == cursor.created_at, PI.id < cursor.id),
                        )
                    )
            found = list(
                (
                    await conn.execute(
                        rows.order_by(PI.created_at.desc(), PI.id.desc()).limit(limit + 1)
                    )
                ).mappings()
            )
        return 200, {
            "object": "list",
            "url": "/v1/payment_intents",
            "has_more": len(found) > limit,
            "data": [_intent_json(r) for r in found[:limit]],
        }

    # ------------------------------------------------------------ idempotency records

    async def _saved(self, key: str, params: _CreateParams) -> tuple[int, dict] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(sim_stripe_requests).where(R.idempotency_key == key))
            ).first()
        if row is None:
            return None
        if row.request_hash != params.fingerprint():
            return _stripe_error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they "
                "were first used with.",
            )
        return row.status_code, json.loads(row.body)

    async def _record(
        self,
        key: str | None,
        params: _CreateParams,
        answer: tuple[int, dict],
        intent: dict[str, Any] | None,
        events: list[dict[str, Any]],
        cfg: FailureInjection,
    ) -> tuple[tuple[int, dict] | None, list[dict[str, Any]]]:
        """The answer, the intent and its webhook deliveries in ONE transaction.

        Returns (the answer of a concurrent same-key request that committed first, or None;
        the deliveries to send before answering).
        """
        now = self._clock.now_ms()
        deliveries, sync = self._plan(events, now, cfg)
        try:
            async with self._engine.begin() as conn:
                if key:
                    await conn.execute(
                        insert(sim_stripe_requests).values(
                            idempotency_key=key,
                            request_hash=params.fingerprint(),
                            status_code=answer[0],
                            body=json.dumps(answer[1]),
                            created_at=now,
                        )
                    )
                if intent is not None:
                    await conn.execute(insert(sim_stripe_intents).values(intent))
                if deliveries:
                    await conn.execute(insert(sim_stripe_deliveries), deliveries)
        except IntegrityError:
            assert key is not None
            return await self._saved(key, params), []
        if any(row["state"] == "pending" for row in deliveries):
            self._recorded.set()
        return None, sync

    def _plan(
        self, events: list[dict[str, Any]], now: int, cfg: FailureInjection
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Decide each event's fate once: delivery rows, and those to send before answering."""
        if not cfg.enabled:
            cfg = FailureInjection()
        rng = self._rng
        if rng.random() < cfg.webhookReorderRate:
            events = list(reversed(events))
        before_response = rng.random() < cfg.webhookBeforeResponseRate
        rows: list[dict[str, Any]] = []
        sync: list[dict[str, Any]] = []
        for position, event in enumerate(events):
            payload = json.dumps(event)
            copies = 2 if rng.random() < cfg.webhookDuplicateRate else 1
            dropped = rng.random() < cfg.webhookDropRate
            delay = cfg.webhookDelayMs if rng.random() < cfg.webhookDelayRate else 0
            for _ in range(copies):
                row = {
                    "id": "whd_" + secrets.token_hex(10),
                    "event_id": event["id"],
                    "payload": payload,
                    "state": "dropped" if dropped else ("sent" if before_response else "pending"),
                    "deliver_at": now + delay + position,  # position keeps the planned order
                    "attempts": 0,
                    "created_at": now,
                }
                rows.append(row)
                if before_response and not dropped:
                    sync.append(row)
        return rows, sync

    def _event(
        self, type_: str, intent: dict[str, Any], key: str | None, now_s: int
    ) -> dict[str, Any]:
        return {
            "id": "evt_" + secrets.token_hex(12),
            "object": "event",
            "api_version": API_VERSION,
            "created": now_s,
            "type": type_,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": "req_" + secrets.token_hex(7), "idempotency_key": key},
            "data": {"object": intent},
        }

    # ------------------------------------------------------------ webhook delivery

    async def _deliver(self, delivery_id: str, payload: str) -> bool:
        """POST one signed event to payrail; True when it answered 2xx."""
        body = payload.encode()
        signature = webhooks.sign([self._webhook_secret], body, int(time.time()))
        try:
            response = await self._webhook.post(
                self._webhook_url,
                content=body,
                headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
            )
            ok = 200 <= response.status_code < 300
        except httpx.HTTPError as exc:
            log.info("sim_webhook_unreachable", delivery_id=delivery_id, error=type(exc).__name__)
            ok = False
        return ok

    async def deliver_due(self) -> int:
        """Send every delivery whose time has come; a failed one is retried later. Returns sent.

        One intent's deliveries go in their planned order (a reordered pair must arrive
        reordered); different intents' go concurrently, as Stripe's do.
        """
        now = self._clock.now_ms()
        async with self._engine.connect() as conn:
            due = list(
                (
                    await conn.execute(
                        select(D.id, D.payload, D.attempts)
                        .where(D.state == "pending", D.deliver_at <= now)
                        .order_by(D.deliver_at, D.id)
                        .limit(DELIVERY_BATCH_MAX)
                    )
                ).mappings()
            )
        by_intent: dict[str, list[Any]] = {}
        for row in due:
            intent_id = json.loads(row["payload"])["data"]["object"]["id"]
            by_intent.setdefault(intent_id, []).append(row)
        limit = asyncio.Semaphore(DELIVERY_CONCURRENCY_MAX)

        async def in_order(rows: list[Any]) -> int:
            async with limit:
                return sum([await self._deliver_row(row, now) for row in rows])

        return sum(await asyncio.gather(*(in_order(rows) for rows in by_intent.values())))

    async def _deliver_row(self, row: Any, now: int) -> bool:
        async with self._engine.begin() as conn:
            claimed = await conn.execute(
                update(sim_stripe_deliveries)
                .where(D.id == row["id"], D.state == "pending")
                .values(state="sending", attempts=D.attempts + 1)
            )
        if claimed.rowcount != 1:  # another process sends it
            return False
        ok = await self._deliver(row["id"], row["payload"])
        attempts = row["attempts"] + 1
        state = "sent" if ok else ("failed" if attempts >= DELIVERY_ATTEMPTS_MAX else "pending")
        async with self._engine.begin() as conn:
            await conn.execute(
                update(sim_stripe_deliveries)
                .where(D.id == row["id"])
                .values(state=state, deliver_at=now + DELIVERY_RETRY_MS * 2**attempts)
            )
        return ok

    async def next_due_in_ms(self) -> int | None:
        """Milliseconds until the next pending delivery is due (0 if one is), None if none."""
        now = self._clock.now_ms()
        async with self._engine.connect() as conn:
            due = await conn.scalar(select(func.min(D.deliver_at)).where(D.state == "pending"))
        return None if due is None else max(0, due - now)

    async def run(self, stop: asyncio.Event) -> None:
        """The simulator's delivery loop (sandbox server)."""
        while not stop.is_set():
            round_at = time.monotonic()
            try:
                sent = await self.deliver_due()
                due_in = None if sent else await self.next_due_in_ms()
            except Exception as exc:
                log.warning("sim_delivery_round_failed", error=type(exc).__name__)
                sent, due_in = 0, None
            if sent:
                continue
            wait_ms = DELIVERY_IDLE_POLL_MAX_MS if due_in is None else due_in
            wait_ms = min(max(wait_ms, DELIVERY_POLL_MS), DELIVERY_IDLE_POLL_MAX_MS)
            if await self._recorded.wait(stop, wait_ms / 1000):
                since_s = time.monotonic() - round_at  # at most one look per DELIVERY_POLL_MS
                await wait_or_stop(stop, max(0.0, DELIVERY_POLL_MS / 1000 - since_s))

    # ------------------------------------------------------------ HTTP

    def router(self, prefix: str) -> APIRouter:
        """Stripe's routes under `prefix` (the sandbox mounts it at /sim/stripe)."""
        api = APIRouter(prefix=prefix, include_in_schema=False)

        def authorized(request: Request) -> bool:
            return request.headers.get("authorization", "") == f"Bearer {self._api_key}"

        def answer(result: tuple[int, dict]) -> Response:
            return JSONResponse(result[1], status_code=result[0])

        unauthorized = _stripe_error(401, "invalid_request_error", "Invalid API Key provided.")

        @api.post("/v1/payment_intents")
        async def create(request: Request) -> Response:
            if not authorized(request):
                return answer(unauthorized)
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            return answer(await self.create(request.headers.get("idempotency-key"), form))

        @api.get("/v1/payment_intents/{intent_id}")
        async def retrieve(intent_id: str, request: Request) -> Response:
            if not authorized(request):
                return answer(unauthorized)
            return answer(await self.retrieve(intent_id))

        @api.get("/v1/payment_intents")
        async def list_intents(request: Request) -> Response:
            if not authorized(request):
                return answer(unauthorized)
            return answer(await self.list(dict(request.query_params)))

        return api
