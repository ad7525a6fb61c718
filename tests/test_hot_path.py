"""The payout hot path (services/hot_path): each database's unit writes exactly what the
general path writes, refuses exactly what it refuses, and a refused or failed unit writes
nothing. Both backends: the SQLite unit (raw statements on the one writer) and the
PostgreSQL one (migration 0011's functions)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import ADMIN_KEY
from sqlalchemy import func, select, text, update

from payrail.db.sqlite import ReaderBusy, SQLiteEngine
from payrail.db.tables import accounts, gamertag_locks, jobs, payout_events, payouts, transfers
from payrail.domain.payouts import PayoutRequest, State, Status
from payrail.ledger import accounts as acct
from payrail.ledger import ledger
from payrail.services import hot_path
from payrail.services import payouts as payout_service
from payrail.services.hot_path import Finalization, NeedsGeneralPath

ADMIN = {"apikey": ADMIN_KEY}
FUNDED = 30_000


class _Spy:
    """Counts the unit's calls, so a run that silently fell back to the general path fails."""

    def __init__(self, unit: Any) -> None:
        self.unit = unit
        self.calls: dict[str, int] = {"lookup": 0, "reserve": 0, "finalize": 0}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.unit, name)
        if name not in self.calls:
            return method

        async def counted(*args: Any) -> Any:
            self.calls[name] += 1
            return await method(*args)

        return counted


async def _faults(client, **knobs) -> None:
    """The node's faults, every knob the scenario uses set (the endpoint keeps the others)."""
    knobs = {"timeoutRate": 0.0, "failureRate": 0.0, "rollbackOnTimeout": True} | knobs
    response = await client.post("/test/failure-injection", json=knobs, headers=ADMIN)
    assert response.status_code == 200, response.text


async def _new_project(client, project: str) -> None:
    created = await client.post("/projects", json={"id": project, "name": project}, headers=ADMIN)
    assert created.status_code == 201, created.text
    funded = await client.post(f"/projects/{project}/fund", json={"amount": FUNDED}, headers=ADMIN)
    assert funded.status_code == 200, funded.text


def _request(project: str, gamertag: str, key: str | None = None) -> PayoutRequest:
    return PayoutRequest(project, gamertag, 1000, None, None, None, 300, key)


async def _scenario(client, rt, project: str) -> list[tuple[int, str | None]]:
    """Every refusal kind and every final transition, through the API and the service."""
    await _new_project(client, project)
    answers: list[tuple[int, str | None]] = []

    async def pay(gamertag: str, amount: int = 1000, key: str | None = None, **extra: Any):
        headers = dict(ADMIN, **({"Idempotency-Key": key} if key else {}))
        body = {"gamertag": gamertag, "amount": amount, "projectId": project, **extra}
        response = await client.post("/payouts", json=body, headers=headers)
        answers.append((response.status_code, response.json()["data"].get("error")))

    await pay("alice", key="k1")  # completed: both transfers posted
    await pay("alice", key="k1")  # replay
    await pay("alice", amount=999, key="k1")  # the key with another body
    await _faults(client, enabled=True, failureRate=1.0)
    for spelling in ("bob", "Bob", "BOB"):
        await pay(spelling)  # failed: voided
    await _faults(client, enabled=False)
    await pay("bOb")  # blocked by its three failures
    await _faults(client, enabled=True, timeoutRate=1.0, timeoutMs=1)
    await pay("carol")  # failed on timeout: voided
    await _faults(client, enabled=True, timeoutRate=1.0, timeoutMs=1, rollbackOnTimeout=False)
    await pay("dave")  # the legacy flaw: failed, and charged (posted)
    await _faults(client, enabled=False)
    for _ in range(10):
        await pay("erin")
    await pay("ERIN")  # the 11th in the hour
    await pay("frank", amount=100_000)  # more than the balance
    await pay("frank", projectId=f"{project}_missing")  # no such project
    # Never sent (the queue path's reserved payouts): expired, and failed by the sandbox.
    for gamertag, status in (("gina", Status.EXPIRED), ("hank", Status.ERROR)):
        payout_id = await payout_service._reserve(
            rt, _request(project, gamertag), payout_service.PATH_QUEUE
        )
        final = await payout_service.set_status(rt, payout_id, status)
        answers.append((0, final["state"]))
    return answers


async def _written(rt, project: str) -> dict[str, Any]:
    """What the scenario wrote for this project, without ids and times."""
    account = acct.project_account(project)
    async with rt.engine.connect() as conn:
        rows = (
            (await conn.execute(select(payouts).where(payouts.c.project_id == project)))
            .mappings()
            .all()
        )
        by_id = {row["id"]: row for row in rows}
        events = (
            await conn.execute(
                select(payout_events.c.payout_id, payout_events.c.from_status)
                .add_columns(payout_events.c.to_status, payout_events.c.cause)
                .where(payout_events.c.payout_id.in_(list(by_id)))
                .order_by(payout_events.c.id)
            )
        ).all()
        moved = (
            await conn.execute(select(transfers).where(transfers.c.debit_account_id == account))
        ).mappings()
        job_rows = (
            await conn.execute(select(jobs).where(jobs.c.id.in_([f"settle:{i}" for i in by_id])))
        ).mappings()
        locks = (
            await conn.execute(
                select(gamertag_locks.c.gamertag).where(gamertag_locks.c.project_id == project)
            )
        ).scalars()
        balance = (
            (await conn.execute(select(accounts).where(accounts.c.id == account))).mappings().one()
        )

    def who(payout_id: str) -> tuple[Any, ...]:
        row = by_id[payout_id]
        return (row["gamertag"], row["amount"], row["state"], row["failure_code"])

    return {
        "payouts": _sorted(
            (
                who(r["id"])
                + (
                    r["fee"],
                    r["charge_posted"],
                    r["failure_reason"],
                    r["state_cause"],
                    r["settled_at"] is not None,
                    r["idempotency_key"],
                    r["settle_path"],
                    r["destination_kind"],
                    r["destination"],
                    r["expires_at"] - r["created_at"],
                )
            )
            for r in rows
        ),
        "events": _sorted(who(e[0]) + tuple(e[1:]) for e in events),
        "transfers": _sorted(
            (
                who(t["id"].split(":")[0]),
                t["id"].split(":", 1)[1],
                t["kind"],
                t["amount"],
                t["credit_account_id"].rsplit(":", 1)[0],
                (t["pending_id"] or "").partition(":")[2],
                t["timeout_at"] is None,
            )
            for t in moved
        ),
        "jobs": _sorted(
            (who(j["id"].removeprefix("settle:")), j["kind"], j["state"], j["payload"] != "")
            + (j["attempts"], j["max_attempts"], j["locked_by"] is None, j["lease_until"] is None)
            for j in job_rows
        ),
        "locks": _sorted(locks),
        "account": {k: v for k, v in balance.items() if k not in ("id", "created_at")},
    }


def _sorted(items: Any) -> list[Any]:
    return sorted(items, key=repr)  # rows hold None beside values


async def _system_totals(rt) -> tuple[int, ...]:
    columns = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(*(func.sum(getattr(accounts.c, c)) for c in columns)).where(
                    accounts.c.id.like("sys:%")
                )
            )
        ).one()
    return tuple(int(v or 0) for v in row)


def test_each_database_has_its_hot_path_unit(rt):
    unit = hot_path.for_engine(rt.engine)
    expected = "SqliteHotPath" if isinstance(rt.engine, SQLiteEngine) else "PostgresHotPath"
    assert type(unit).__name__ == expected
    assert type(rt.hot_path).__name__ == expected


async def test_the_unit_writes_and_refuses_exactly_what_the_general_path_does(client, rt):
    """The same scenario (every refusal, every final transition) once through the unit and
    once statement by statement: the same answers, rows, balances and system-account moves."""
    unit = _Spy(rt.hot_path)
    assert unit.unit is not None
    runs = {}
    for name, path in (("hot", unit), ("general", None)):
        rt.hot_path = path
        before = await _system_totals(rt)
        answers = await _scenario(client, rt, f"parity_{name}")
        moved = tuple(a - b for a, b in zip(await _system_totals(rt), before, strict=True))
        runs[name] = (answers, await _written(rt, f"parity_{name}"), moved)
    rt.hot_path = unit.unit
    hot, general = runs["hot"], runs["general"]
    assert hot[0] == [
        (201, None),
        (200, None),
        (422, "IDEMPOTENCY_KEY_REUSED"),
        (502, "PAYMENT_FAILED"),
        (502, "PAYMENT_FAILED"),
        (502, "PAYMENT_FAILED"),
        (429, "RECIPIENT_TEMPORARILY_BLOCKED"),
        (504, "GATEWAY_TIMEOUT"),
        (504, "GATEWAY_TIMEOUT"),
        *[(201, None)] * 10,
        (429, "RATE_LIMIT_EXCEEDED"),
        (402, "INSUFFICIENT_BALANCE"),
        (404, "PROJECT_NOT_FOUND"),
        (0, State.EXPIRED.value),
        (0, State.FAILED.value),
    ]
    assert hot[0] == general[0]
    assert hot[1] == general[1]
    assert hot[2] == general[2]
    # alice, dave (charged though failed) and ten erins are spent; the rest released
    assert hot[1]["account"]["debits_posted"] == 12 * 1020
    assert hot[1]["account"]["debits_pending"] == 0
    assert hot[2] == (0, FUNDED, 0, 12 * 1020)  # sys:funding paid in; fees + outbound out
    assert unit.calls["reserve"] >= 20 and unit.calls["finalize"] >= 8
    assert unit.calls["lookup"] >= 20


async def test_a_refused_reservation_writes_nothing_and_leaves_the_others_whole(client, rt):
    """Reservations queued together (one group commit on SQLite): the one the balance cannot
    cover leaves no payout, job, lock or ledger row, and every other one is whole."""
    await _new_project(client, "refusals")
    counts_before = await _counts(rt)
    amounts = [1000] * 5 + [FUNDED] + [1000] * 5  # the 6th cannot fit after five others
    outcomes = await asyncio.gather(
        *(
            payout_service._reserve(
                rt,
                PayoutRequest("refusals", f"p{i}", amount, None, None, None, 300, f"key{i}"),
                payout_service.PATH_QUEUE,
            )
            for i, amount in enumerate(amounts)
        ),
        return_exceptions=True,
    )
    refused = [i for i, o in enumerate(outcomes) if isinstance(o, Exception)]
    assert refused == [5], outcomes
    counts = await _counts(rt)
    assert {k: counts[k] - counts_before[k] for k in counts} == {
        "payouts": 10,
        "jobs": 10,
        "locks": 10,
        "transfers": 20,
    }
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(payouts.c.id).where(payouts.c.gamertag == "p5")) is None
        account = await ledger.balance(conn, acct.project_account("refusals"))
    assert account is not None and account.debits_pending == 10 * 1020


async def _counts(rt) -> dict[str, int]:
    async with rt.engine.connect() as conn:
        return {
            name: int(await conn.scalar(select(func.count()).select_from(table)))
            for name, table in (
                ("payouts", payouts),
                ("jobs", jobs),
                ("locks", gamertag_locks),
                ("transfers", transfers),
            )
        }


async def test_a_second_resolution_rolls_the_whole_unit_back(client, rt):
    """The unique pending_id refuses resolving a payout's transfers twice: the unit raises
    AlreadyResolved and its guarded UPDATE and job change are undone with it."""
    response = await client.post(
        "/payouts", json={"gamertag": "twice", "amount": 1000, "projectId": "project_test_001"}
    )
    assert response.status_code == 201, response.text
    payout_id = response.json()["data"]["id"]
    job = jobs.c.id == f"settle:{payout_id}"
    async with rt.engine.begin() as conn:  # as if a bug moved it back behind the ledger's back
        await conn.execute(
            update(payouts).where(payouts.c.id == payout_id).values(state="in_flight")
        )
        await conn.execute(update(jobs).where(job).values(state="queued"))
    with pytest.raises(ledger.AlreadyResolved):
        await rt.hot_path.finalize(_finalization(payout_id, post=False))
    async with rt.engine.connect() as conn:
        state = await conn.scalar(select(payouts.c.state).where(payouts.c.id == payout_id))
        job_state = await conn.scalar(select(jobs.c.state).where(job))
        kinds = (
            await conn.execute(
                select(transfers.c.kind).where(transfers.c.id.like(f"{payout_id}:%"))
            )
        ).scalars()
        assert (state, job_state) == ("in_flight", "queued")
        assert sorted(kinds) == ["pending", "pending", "post", "post"]


def _finalization(
    payout_id: str, *, post: bool, current: State = State.IN_FLIGHT, target: State | None = None
) -> Finalization:
    return Finalization(
        payout_id=payout_id,
        current=current.value,
        target=(target or (State.COMPLETED if post else State.FAILED)).value,
        now=1,
        cause="test",
        values={"charge_posted": post},
        job_id=f"settle:{payout_id}",
        transfer_ids=(f"{payout_id}:amount", f"{payout_id}:fee"),
        post=post,
    )


async def test_a_payout_with_a_callback_is_finalized_by_the_general_path(client, rt):
    """The unit hands a payout with a callback URL back untouched (its event payload is built
    in Python); the general path then writes the final callback with it."""
    payout_id = await payout_service._reserve(
        rt,
        PayoutRequest(
            "project_test_001", "hooked", 1000, None, None, "https://example.com/hook", 300, None
        ),
        payout_service.PATH_QUEUE,
    )
    with pytest.raises(NeedsGeneralPath):
        await rt.hot_path.finalize(
            _finalization(payout_id, post=False, current=State.RESERVED, target=State.EXPIRED)
        )
    async with rt.engine.connect() as conn:
        assert await conn.scalar(select(payouts.c.state).where(payouts.c.id == payout_id)) == (
            "reserved"
        )
    final = await payout_service.set_status(rt, payout_id, Status.EXPIRED)
    assert final["state"] == "expired"
    async with rt.engine.connect() as conn:
        sequences = (
            await conn.execute(
                text("SELECT sequence, payload FROM callbacks WHERE payout_id = :p ORDER BY 1"),
                {"p": payout_id},
            )
        ).all()
    assert [s for s, _ in sequences] == [1, 2]
    assert json.loads(sequences[1][1])["data"]["status"] == "expired"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # SQLite's one writer
async def test_sqlite_lookup_answers_from_committed_rows_only(client, rt, monkeypatch):
    """A replay must never be built on a row of the writer's open group (it may roll back):
    the SQLite unit's lookup reads committed data, on the inline reader or, when the file is
    busy for it, on the pool's readers."""
    assert isinstance(rt.engine, SQLiteEngine)
    response = await client.post(
        "/payouts",
        json={"gamertag": "seen", "amount": 1000, "projectId": "project_test_001"},
        headers={"Idempotency-Key": "committed"},
    )
    assert response.status_code == 201, response.text
    payout_id = response.json()["data"]["id"]
    async with rt.engine.begin() as conn:  # the group stays open while this block runs
        await conn.execute(
            text("UPDATE payouts SET idempotency_key = 'open' WHERE id = :i"), {"i": payout_id}
        )
        assert await rt.hot_path.lookup("project_test_001", "open", None) == (None, None)
        committed, _ = await rt.hot_path.lookup("project_test_001", "committed", "seen")
        assert committed is not None and committed["id"] == payout_id
    inline = await rt.hot_path.lookup("project_test_001", "open", "seen")

    def busy(unit: Any) -> Any:
        raise ReaderBusy("database is locked")

    monkeypatch.setattr(rt.engine, "read_inline", busy)
    pooled = await rt.hot_path.lookup("project_test_001", "open", "seen")
    assert inline == pooled
    assert pooled[0] is not None and pooled[0]["id"] == payout_id
    assert pooled[0]["charge_posted"] is True and pooled[1] is None
