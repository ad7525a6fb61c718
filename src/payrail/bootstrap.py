"""The runtime: everything a use case needs, built once per process and passed explicitly."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import random
import socket
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.config import Settings
from payrail.db.engine import make_engine
from payrail.lightning.backend import LightningBackend
from payrail.psp.provider import PaymentProvider
from payrail.services.faults import FaultStore
from payrail.support.clock import Clock, SystemClock
from payrail.support.wakeup import Wakeup

log = structlog.get_logger("payrail")

LOCK_TIMEOUTS_KEPT_MAX = 10_000
_LOCK_TIMEOUT_MARKERS = (
    "lock timeout",  # PostgreSQL: canceling statement due to lock timeout
    "locknotavailable",
    "database is locked",  # SQLite: busy timeout ran out
    "could not obtain lock",
)


def is_lock_timeout(exc: BaseException) -> bool:
    """A database error that is a lock wait running out (any driver, wrapped or not)."""
    seen: BaseException | None = exc
    for _ in range(4):  # SQLAlchemy wraps the driver's error; look a few levels down
        if seen is None:
            return False
        text = f"{type(seen).__name__} {seen}".lower()
        if any(marker in text for marker in _LOCK_TIMEOUT_MARKERS):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


class SimulatedCrash(BaseException):
    """Raised at an armed crash point: the process 'dies' there (tests of recovery).

    A BaseException so that no `except Exception` in the saga can swallow it, as a real
    kill -9 could not be caught.
    """


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    clock: Clock
    node: LightningBackend
    faults: FaultStore
    worker_id: str
    provider: PaymentProvider
    crashpoints: set[str] = field(default_factory=set)
    # Per-process state of services/flags.py: its short cache and the recent lock timeouts
    # one of its rollback guards counts.
    flag_cache: dict[str, Any] = field(default_factory=dict)
    lock_timeouts_ms: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=LOCK_TIMEOUTS_KEPT_MAX)
    )
    # The payout engine's storage (db/payout_store) and the process's group commit of its
    # reservations and final transitions (services/payouts.py `wire`).
    payout_store: Any = None
    reserving: Any = None
    finalizing: Any = None
    # PAYRAIL_READ_DATABASE_URL's engine (a replica), or None: reads() is this runtime.
    read_engine: AsyncEngine | None = None
    # Set by whatever may have made jobs in this process (a request that wrote, a spawned
    # task ending): the worker loop's idle wait ends at once (entrypoints/worker.py).
    work_ready: Wakeup = field(default_factory=Wakeup)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _reads: Runtime | None = field(default=None, repr=False)

    def reads(self) -> Runtime:
        """This runtime with its engine on the read replica, for reads that tolerate a
        replica's lag (seconds at worst, sub-second normally; docs/deployment.md).

        The rule: only pages a person or a report looks at go there, never anything a decision
        is taken on. Lists (payouts, recipients, callbacks, orders) and the dashboard's pages
        may read here. Everything that moves money or takes a lock, every create and its
        idempotent replay, the worker, reconcile, the balance, and a GET of one payout or
        order by id (clients poll it right after a 202 to learn the outcome: a replica could
        answer 404 or an older status) stay on the primary. Without a read replica this is
        the runtime itself."""
        if self.read_engine is None:
            return self
        if self._reads is None:
            self._reads = dataclasses.replace(self, engine=self.read_engine, read_engine=None)
        return self._reads

    def crashpoint(self, name: str) -> None:
        if name in self.crashpoints:
            raise SimulatedCrash(name)

    def note_error(self, exc: BaseException) -> None:
        """Remember a lock wait that ran out (a rollback guard watches their rate)."""
        if is_lock_timeout(exc):
            from payrail.support import metrics

            metrics.DB_LOCK_TIMEOUTS.inc()
            self.lock_timeouts_ms.append(self.clock.now_ms())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start a task that outlives the request that started it (kept referenced)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self.work_ready.set()  # a settlement that ended may have queued its callback

    async def drain(self, timeout_s: float = 10.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def aclose(self) -> None:
        await self.drain()
        await self.node.aclose()
        await self.provider.aclose()
        if self.payout_store is not None:
            await self.payout_store.aclose()
        await self.engine.dispose()
        if self.read_engine is not None:
            await self.read_engine.dispose()


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def build_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    node: LightningBackend | None = None,
    engine: AsyncEngine | None = None,
    provider: PaymentProvider | None = None,
) -> Runtime:
    clock = clock or SystemClock()
    engine = engine or make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    faults = FaultStore(engine, clock)
    if node is None:
        node = _make_node(settings, engine, clock, faults)
    if provider is None:
        provider = make_provider(settings)
    runtime = Runtime(settings, engine, clock, node, faults, new_worker_id(), provider)
    if settings.read_database_url:
        runtime.read_engine = make_engine(settings.read_database_url, settings.db_pool_size)
    from payrail.db import payout_store
    from payrail.services import payouts

    runtime.payout_store = payout_store.for_engine(engine)
    payouts.wire(runtime)
    return runtime


def make_provider(settings: Settings, transport: Any = None) -> PaymentProvider:
    """The stripe library against Stripe, or against the sandbox's simulator (same code)."""
    from payrail.psp.stripe_adapter import StripeProvider

    return StripeProvider(
        settings.stripe_api_key,
        settings.stripe_base_url,
        settings.stripe_webhook_secret,
        settings.stripe_timeout_ms,
        transport=transport,
    )


def _make_node(settings: Settings, engine: AsyncEngine, clock: Clock, faults: FaultStore):
    if settings.lightning_backend == "simulated":
        from payrail.lightning.simulated import SimulatedNode

        seed = settings.sim_seed if settings.sim_seed is not None else random.randrange(2**32)
        log.info("simulated_node", seed=seed)
        return SimulatedNode(engine, clock, faults, seed)
    if settings.lightning_backend == "lnd":
        from payrail.lightning.lnd import LndRestBackend

        return LndRestBackend(
            settings.lnd_url,
            settings.lnd_macaroon_hex,
            settings.node_timeout_ms,
            tls_cert_path=settings.lnd_tls_cert_path or None,
            preimage_secret=settings.lnd_preimage_secret.encode() or None,
        )
    if settings.lightning_backend == "lnbits":
        from payrail.lightning.lnbits import LnbitsBackend

        return LnbitsBackend(
            settings.lnbits_url, settings.lnbits_admin_key, settings.node_timeout_ms
        )
    raise ValueError(f"unknown lightning backend {settings.lightning_backend!r}")
