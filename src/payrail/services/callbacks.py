"""Outbound callbacks: one delivery per payout status change, enqueued in the same transaction.

Delivery is at-least-once through the job queue. In sandbox, loopback URLs are delivered for
real and any other URL is recorded as a simulated delivery: nothing leaves the machine.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from payrail.clock import iso
from payrail.db.tables import callbacks
from payrail.jobs import queue

C = callbacks.c
CALLBACK_JOB = "deliver_callback"
DELIVERY_ATTEMPTS_MAX = 12
DELIVERY_TIMEOUT_S = 5.0
EVENT_NAME = "payout.status_changed"


class DeliveryFailed(Exception):
    """The receiver did not take the callback; the job retries with backoff."""


async def on_status_change(
    conn: AsyncConnection, row: RowMapping, payout_view: dict[str, Any], now: int
) -> None:
    if not row["callback_url"]:
        return
    event_id = str(uuid.uuid4())
    payload = {"id": event_id, "event": EVENT_NAME, "timestamp": iso(now), "data": payout_view}
    await conn.execute(
        insert(callbacks).values(
            id=event_id,
            project_id=row["project_id"],
            payout_id=row["id"],
            url=row["callback_url"],
            payload=json.dumps(payload),
            status="pending",
            attempts=0,
            created_at=now,
        )
    )
    await queue.enqueue(
        conn,
        CALLBACK_JOB,
        {"callbackId": event_id},
        now,
        job_id=f"callback:{event_id}",
        max_attempts=DELIVERY_ATTEMPTS_MAX,
    )


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def deliver(rt: Any, callback_id: str) -> None:
    """Send one callback. Raises DeliveryFailed so the queue retries it."""
    async with rt.engine.connect() as conn:
        row = (await conn.execute(select(callbacks).where(C.id == callback_id))).mappings().first()
    if row is None or row["status"] in ("delivered", "gone"):
        return
    status_code: int | None = None
    error: str | None = None
    simulated = rt.settings.sandbox and not is_loopback_url(row["url"])
    if not simulated:
        try:
            async with httpx.AsyncClient(
                timeout=DELIVERY_TIMEOUT_S, follow_redirects=False
            ) as client:
                response = await client.post(
                    row["url"],
                    content=row["payload"],
                    headers={"content-type": "application/json", "payrail-event-id": row["id"]},
                )
            status_code = response.status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
    if simulated or (status_code is not None and 200 <= status_code < 300):
        outcome = "delivered"
    elif status_code == 410:
        outcome = "gone"
    else:
        outcome = "pending"
    now = rt.clock.now_ms()
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(callbacks)
            .where(C.id == callback_id)
            .values(
                status=outcome,
                attempts=C.attempts + 1,
                last_status_code=status_code,
                last_error=error,
                sent_at=now,
            )
        )
    if outcome == "pending":
        raise DeliveryFailed(f"receiver answered {status_code or error}")


async def delivery_log(rt: Any, limit: int = 100) -> list[dict[str, Any]]:
    async with rt.engine.connect() as conn:
        rows = (
            await conn.execute(select(callbacks).order_by(C.created_at.desc()).limit(limit))
        ).mappings()
        return [
            {
                "id": r["id"],
                "url": r["url"],
                "payload": json.loads(r["payload"]),
                "sentAt": iso(r["sent_at"]),
                "status": r["status"],
                "attempts": r["attempts"],
                "lastStatusCode": r["last_status_code"],
                "simulated": rt.settings.sandbox and not is_loopback_url(r["url"]),
            }
            for r in rows
        ]
