"""Project use cases: create, fund, balance, and the sandbox's seeded state."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from payrail.bootstrap import Runtime
from payrail.config import SANDBOX_PROJECT_FUNDING_SATS, SANDBOX_PROJECT_ID
from payrail.db import tables
from payrail.domain import errors
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.services import webhook_secrets
from payrail.services.faults import FailureInjection
from payrail.support.clock import iso

# Always .fullmatch: with ^…$ and .match, Python's $ also matches before a final "\n".
PROJECT_ID_RE = re.compile(r"[A-Za-z0-9_\-]{3,64}")
PROJECT_NAME_MAX_CHARS = 200
FUND_MAX_SATS = 10**12  # 10,000 BTC: a typo guard, far above any real top-up


def hash_key(api_key: str) -> str:
    """API keys are random 192-bit tokens, so a plain SHA-256 is a safe stored form."""
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class NewProject:
    row: RowMapping
    api_key: str
    webhook_secret: str  # shown once, like the API key


def project_view(row: RowMapping) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "createdAt": iso(row["created_at"])}


async def get_project(rt: Runtime, project_id: str) -> RowMapping:
    async with rt.engine.connect() as conn:
        row = (
            (await conn.execute(select(tables.projects).where(tables.projects.c.id == project_id)))
            .mappings()
            .first()
        )
    if row is None:
        raise errors.ProjectNotFound(f"No project with id {project_id}.")
    return row


async def project_for_key(rt: Runtime, api_key: str) -> str | None:
    async with rt.engine.connect() as conn:
        return await conn.scalar(
            select(tables.projects.c.id).where(tables.projects.c.api_key_hash == hash_key(api_key))
        )


def parse_new_project(body: Any) -> tuple[str | None, str | None]:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise errors.ValidationError("Request body must be a JSON object.")
    project_id, name = body.get("id"), body.get("name")
    if project_id is not None and (
        not isinstance(project_id, str) or not PROJECT_ID_RE.fullmatch(project_id)
    ):
        raise errors.ValidationError(
            "id must be 3-64 characters of letters, digits, '_' or '-'.", field="id"
        )
    if name is not None and (not isinstance(name, str) or len(name) > PROJECT_NAME_MAX_CHARS):
        raise errors.ValidationError(
            f"name must be a string of at most {PROJECT_NAME_MAX_CHARS} characters.", field="name"
        )
    return project_id, name


async def create_project(
    rt: Runtime,
    project_id: str | None,
    name: str | None,
    api_key: str | None = None,
    webhook_secret: str | None = None,
) -> NewProject:
    project_id = project_id or f"project_{secrets.token_hex(8)}"
    api_key = api_key or f"pk_{secrets.token_urlsafe(24)}"
    now = rt.clock.now_ms()
    try:
        async with rt.engine.begin() as conn:
            await ledger.ensure_system_accounts(conn, now)
            await conn.execute(
                insert(tables.projects).values(
                    id=project_id,
                    name=name or project_id,
                    api_key_hash=hash_key(api_key),
                    account_id=acct.project_account(project_id),
                    created_at=now,
                )
            )
            await ledger.ensure_account(
                conn, acct.project_account(project_id), acct.Code.PROJECT, now
            )
            webhook_secret = await webhook_secrets.add_secret(conn, project_id, now, webhook_secret)
    except IntegrityError:
        raise errors.ProjectExists(f"A project with id {project_id} already exists.") from None
    return NewProject(await get_project(rt, project_id), api_key, webhook_secret)


async def balance(rt: Runtime, project_id: str) -> dict[str, Any]:
    async with rt.engine.connect() as conn:
        b = await ledger.balance(conn, acct.project_account(project_id))
    if b is None:
        raise errors.ProjectNotFound(f"No project with id {project_id}.")
    return {
        "projectId": project_id,
        "balance": b.available,
        "reserved": b.debits_pending,
        "currency": acct.CURRENCY_SATS,
    }


def parse_fund_amount(body: Any) -> int:
    amount = body.get("amount") if isinstance(body, dict) else None
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= FUND_MAX_SATS:
        raise errors.InvalidAmount(
            f"amount must be an integer number of sats from 1 to {FUND_MAX_SATS:,}."
        )
    return amount


async def fund(
    rt: Runtime, project_id: str, amount: int, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Add sats from the outside world. Never creates a project. A repeated key adds nothing."""
    await get_project(rt, project_id)
    account = acct.project_account(project_id)
    transfer_id = (
        f"fund:{project_id}:{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}"
        if idempotency_key
        else f"fund:{secrets.token_hex(16)}"
    )
    now = rt.clock.now_ms()
    replay = False
    try:
        async with rt.engine.begin() as conn:
            await ledger.transfer(
                conn, ledger.Transfer(transfer_id, acct.FUNDING, account, amount), now
            )
            after = await ledger.balance(conn, account)
    except IntegrityError:
        replay = True
        async with rt.engine.connect() as conn:
            first = await conn.scalar(
                select(tables.transfers.c.amount).where(tables.transfers.c.id == transfer_id)
            )
            after = await ledger.balance(conn, account)
        if first != amount:
            raise errors.IdempotencyKeyReused(
                f"This Idempotency-Key already funded this project with {first} sats; "
                f"it cannot fund {amount}. Use a new key for a new funding.",
                fundedAmount=first,
            ) from None
    assert after is not None
    return {
        "projectId": project_id,
        "previousBalance": after.available - (0 if replay else amount),
        "addedAmount": 0 if replay else amount,
        "newBalance": after.available,
        "replayed": replay,
    }


async def seed_sandbox(rt: Runtime) -> None:
    """The sandbox's starting state: project_test_001 with 100,000 sats and the sandbox key."""
    seeded = await project_for_key(rt, rt.settings.sandbox_api_key)
    if seeded is not None:
        async with rt.engine.begin() as conn:  # a database from before webhook secrets
            await webhook_secrets.ensure_secret(
                conn, seeded, rt.settings.sandbox_webhook_secret, rt.clock.now_ms()
            )
        return
    try:
        await create_project(
            rt,
            SANDBOX_PROJECT_ID,
            "Sandbox test project",
            api_key=rt.settings.sandbox_api_key,
            webhook_secret=rt.settings.sandbox_webhook_secret,
        )
    except errors.ProjectExists:
        return
    await fund(rt, SANDBOX_PROJECT_ID, SANDBOX_PROJECT_FUNDING_SATS, "sandbox-seed")


async def reset_sandbox(rt: Runtime) -> None:
    """Back to the seeded state: every table emptied, then seeded again."""
    async with rt.engine.begin() as conn:
        for table in reversed(tables.metadata.sorted_tables):
            await conn.execute(delete(table))
    rt.faults.invalidate()
    await rt.faults.put(FailureInjection())
    await seed_sandbox(rt)
