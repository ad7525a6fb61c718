"""The runtime: everything a use case needs, built once per process and passed explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from payrail.clock import Clock, SystemClock
from payrail.config import Settings
from payrail.db.engine import make_engine
from payrail.lightning.backend import LightningBackend
from payrail.sandbox import FaultStore

log = structlog.get_logger("payrail")


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
    crashpoints: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def crashpoint(self, name: str) -> None:
        if name in self.crashpoints:
            raise SimulatedCrash(name)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start a task that outlives the request that started it (kept referenced)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout_s: float = 10.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def aclose(self) -> None:
        await self.drain()
        await self.node.aclose()
        await self.engine.dispose()


async def wait_or_stop(stop: asyncio.Event, timeout_s: float) -> None:
    """Sleep between rounds of a background loop, waking at once when asked to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def build_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    node: LightningBackend | None = None,
    engine: AsyncEngine | None = None,
) -> Runtime:
    clock = clock or SystemClock()
    engine = engine or make_engine(settings.database_url, pool_size=settings.db_pool_size)
    faults = FaultStore(engine, clock)
    if node is None:
        node = _make_node(settings, engine, clock, faults)
    return Runtime(settings, engine, clock, node, faults, new_worker_id())


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
    raise ValueError(f"unknown lightning backend {settings.lightning_backend!r}")
