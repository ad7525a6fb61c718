"""/ready: may this process take traffic? Database reachable, schema current, workers alive.

/health says the process is up (liveness); /ready says the system behind it can do its
job: a payout accepted now will be settled, because a worker somewhere is claiming jobs.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import structlog
from sqlalchemy import func, select, text

from payrail.bootstrap import Runtime
from payrail.db import migrate
from payrail.db.tables import worker_heartbeats
from payrail.services.ops_metrics import WORKER_ALIVE_MS

log = structlog.get_logger("payrail.ready")
READY_DB_TIMEOUT_S = 2.0


@functools.cache
def _head() -> str:
    return migrate.head_revision()


async def check(rt: Runtime) -> dict[str, Any]:
    now = rt.clock.now_ms()
    database = "unreachable"
    current: list[str] = []
    alive = 0

    async def read() -> None:
        nonlocal database, current, alive
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            database = "reachable"
            current = sorted(
                (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars()
            )
            W = worker_heartbeats.c
            alive = int(
                await conn.scalar(select(func.count()).where(W.beat_at >= now - WORKER_ALIVE_MS))
                or 0
            )

    try:
        await asyncio.wait_for(read(), READY_DB_TIMEOUT_S)
    except Exception as exc:  # the answer says which check failed; the log says why
        log.warning("ready_check_failed", error=type(exc).__name__)
    head = _head()
    checks = {
        "database": database,
        "migrations": {"current": current, "head": head, "ok": current == [head]},
        "workers": {"alive": alive, "ok": alive > 0},
    }
    ok = database == "reachable" and checks["migrations"]["ok"] and alive > 0
    return {"status": "ready" if ok else "not_ready", "checks": checks}
