"""Rewards priced in dollars: quotes, the rate sources behind them, and pricing a payout.

`POST /api/v1/quotes {"projectId", "currency": "USD", "amount": "0.10"}` reads a rate from
the configured source, prices the amount in whole sats (domain/fx.py `sats_for`: Decimal,
half up, never a float) and stores the quote until `expiresAt` (PAYRAIL_QUOTE_TTL_S). A
payout or a batch item with `"quoteId"` instead of `amount` pays exactly those sats: `price`
sets them before the reservation, and the payout engine (domain/payout_engine.py,
`_quote_refusal`) refuses a quote already used (409 QUOTE_USED) or expired (409
QUOTE_EXPIRED) under the project account's lock; the reservation writes the quote's one
use (quote_uses, keyed by the quote) with the payout, so a quote pays at most once.

Rate sources, one small interface (`RateSource.rate(now_ms) -> fx.Rate`):

- `FixedSource`: the operator's PAYRAIL_FX_FIXED (the sandbox default);
- `HttpJsonSource`: GET PAYRAIL_FX_HTTP_URL, the rate at the dotted PAYRAIL_FX_HTTP_FIELD
  (numbers parsed as Decimal), its time at PAYRAIL_FX_HTTP_TIME_FIELD (Unix seconds) or the
  time it was read. A rate older than PAYRAIL_FX_MAX_AGE_S, or a source that fails with no
  fresh rate kept, refuses new quotes with 503 RATE_UNAVAILABLE: payrail never guesses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol

import httpx
import structlog
from sqlalchemy import insert, select

from payrail.bootstrap import Runtime
from payrail.config import Settings
from payrail.db.tables import projects, quotes
from payrail.domain import errors, fx
from payrail.domain.payouts import PayoutRequest
from payrail.support.clock import iso

log = structlog.get_logger("payrail.quotes")
Q = quotes.c
HTTP_TIMEOUT_S = 5.0
HTTP_BODY_MAX_BYTES = 64 * 1024
# An HTTP rate younger than this is reused without asking the source again.
HTTP_REFRESH_MS = 5_000


class RateSource(Protocol):
    name: str

    async def rate(self, now_ms: int) -> fx.Rate:
        """A fresh rate, or errors.RateUnavailable."""


class FixedSource:
    name = "fixed"

    def __init__(self, text: str) -> None:
        self._text = text

    async def rate(self, now_ms: int) -> fx.Rate:
        rate = fx.fixed_rate(self._text, now_ms)
        if rate is None:
            raise errors.RateUnavailable(
                "No BTC/USD rate is configured: the operator sets PAYRAIL_FX_FIXED or "
                "PAYRAIL_FX_SOURCE=http. payrail guesses no price."
            )
        return rate


def _at_path(document: Any, path: str) -> Any:
    """The value at a dotted path ("bitcoin.usd", "data.0.price"); KeyError if absent."""
    value = document
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(path)
    return value


class HttpJsonSource:
    name = "http"

    def __init__(
        self, url: str, field: str, time_field: str, max_age_ms: int, timeout_s: float
    ) -> None:
        self.url, self.field, self.time_field = url, field, time_field
        self.max_age_ms, self.timeout_s = max_age_ms, timeout_s
        self._last: fx.Rate | None = None
        self._lock = asyncio.Lock()

    def _fresh(self, now_ms: int) -> fx.Rate | None:
        last = self._last
        return last if last is not None and now_ms - last.at_ms <= self.max_age_ms else None

    async def rate(self, now_ms: int) -> fx.Rate:
        last = self._fresh(now_ms)
        if last is not None and now_ms - last.at_ms < HTTP_REFRESH_MS:
            return last
        async with self._lock:  # one request to the source at a time
            try:
                got = await self._fetch(now_ms)
            except (httpx.HTTPError, OSError, ValueError, KeyError, TimeoutError) as exc:
                log.warning("fx_source_failed", url=self.url, error=type(exc).__name__)
                got = None
            if got is not None and now_ms - got.at_ms <= self.max_age_ms:
                self._last = got
                return got
            kept = self._fresh(now_ms)
            if kept is not None:
                return kept
        why = "answered no usable rate" if got is None else "answered a stale rate"
        raise errors.RateUnavailable(
            f"The rate source {why} (PAYRAIL_FX_MAX_AGE_S = {self.max_age_ms // 1000} s); "
            "no quote is made without a fresh rate. Retry later.",
            retryAfter=5,
        )

    async def _fetch(self, now_ms: int) -> fx.Rate:
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            response = await client.get(self.url, headers={"accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > HTTP_BODY_MAX_BYTES:
            raise ValueError("the answer is too large")
        document = json.loads(response.content, parse_float=Decimal)
        rate = fx.parse_rate(_at_path(document, self.field))
        at_ms = now_ms
        if self.time_field:
            stamp = _at_path(document, self.time_field)
            if isinstance(stamp, bool) or not isinstance(stamp, (int, Decimal, str)):
                raise ValueError("the rate's time is not a number")
            at_ms = int(Decimal(stamp) * 1000)
        return fx.Rate(rate, "http", at_ms)


_HTTP_SOURCES: dict[tuple[Any, ...], HttpJsonSource] = {}


def source_for(settings: Settings) -> RateSource:
    """The configured source (an HTTP source is kept per process, with its last rate)."""
    if settings.fx_source != "http":
        return FixedSource(settings.fx_fixed)
    key = (
        settings.fx_http_url,
        settings.fx_http_field,
        settings.fx_http_time_field,
        settings.fx_max_age_s,
    )
    if key not in _HTTP_SOURCES:
        _HTTP_SOURCES[key] = HttpJsonSource(*key[:3], settings.fx_max_age_s * 1000, HTTP_TIMEOUT_S)
    return _HTTP_SOURCES[key]


# ---------------------------------------------------------------- quotes


def parse_new_quote(body: Any) -> tuple[str, str, Decimal]:
    if not isinstance(body, dict):
        raise errors.ValidationError("Request body must be a JSON object.")
    missing = [f for f in ("projectId", "currency", "amount") if body.get(f) in (None, "")]
    if missing:
        raise errors.ValidationError(
            "Missing required fields: projectId, currency, amount", missingFields=missing
        )
    project_id = body["projectId"]
    if not isinstance(project_id, str) or len(project_id) > 64:
        raise errors.ValidationError("projectId must be a string.", field="projectId")
    currency, amount = fx.parse_fiat(body["currency"], body["amount"])
    return project_id, currency, amount


def view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "projectId": row["project_id"],
        "sats": row["sats"],
        "rate": row["rate"],
        "currency": row["currency"],
        "amount": row["amount"],
        "source": row["source"],
        "createdAt": iso(row["created_at"]),
        "expiresAt": iso(row["expires_at"]),
    }


async def create_quote(rt: Runtime, project_id: str, currency: str, amount: Decimal) -> Any:
    async with rt.engine.connect() as conn:
        if await conn.scalar(select(projects.c.id).where(projects.c.id == project_id)) is None:
            raise errors.ProjectNotFound(f"No project with id {project_id}.")
    now = rt.clock.now_ms()
    rate = await source_for(rt.settings).rate(now)
    sats = fx.sats_for(amount, rate.usd_per_btc)
    fx.check_quote_sats(sats, amount, currency)
    row = dict(
        id=str(uuid.uuid4()),
        project_id=project_id,
        currency=currency,
        amount=fx.fiat_text(amount, currency),
        rate=fx.plain(rate.usd_per_btc),
        source=rate.source,
        sats=sats,
        created_at=now,
        expires_at=now + rt.settings.quote_ttl_s * 1000,
    )
    async with rt.engine.begin() as conn:
        await conn.execute(insert(quotes).values(**row))
    log.info("quote_created", quote_id=row["id"], project_id=project_id, sats=sats)
    return row


async def _quote_rows(rt: Runtime, ids: Sequence[str]) -> dict[str, Any]:
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(select(quotes).where(Q.id.in_(sorted(set(ids)))))).mappings()
        return {r["id"]: r for r in rows}


def _priced(req: PayoutRequest, found: Any) -> PayoutRequest:
    if found is None or found["project_id"] != req.project_id:
        raise errors.QuoteNotFound(f"No quote with id {req.quote_id} in this project.")
    return dataclasses.replace(
        req, amount_sats=int(found["sats"]), quote_expires_at_ms=int(found["expires_at"])
    )


async def price(rt: Runtime, req: PayoutRequest) -> PayoutRequest:
    """A payout priced by its quote: amount_sats = the quote's sats (its use and expiry are
    the payout engine's to decide, under the lock). Without a quote, the request as is."""
    if req.quote_id is None:
        return req
    return _priced(req, (await _quote_rows(rt, [req.quote_id])).get(req.quote_id))


async def price_many(
    rt: Runtime, items: Sequence[PayoutRequest | errors.PayrailError]
) -> list[PayoutRequest | errors.PayrailError]:
    """`price` of a batch's items in one read; an unknown quote is that item's refusal."""
    wanted = [i.quote_id for i in items if isinstance(i, PayoutRequest) and i.quote_id]
    if not wanted:
        return list(items)
    found = await _quote_rows(rt, wanted)
    priced: list[PayoutRequest | errors.PayrailError] = []
    for item in items:
        if isinstance(item, PayoutRequest) and item.quote_id is not None:
            try:
                item = _priced(item, found.get(item.quote_id))
            except errors.QuoteNotFound as refusal:
                priced.append(refusal)
                continue
        priced.append(item)
    return priced
