"""Group commit without a timer: calls that arrive while one is on its way share the next.

Used where many concurrent requests of one process each need one write: the payout hot path
(services/payouts.py: the payout engine's reservations and final transitions) and the
simulated node's record of payments (lightning/simulated.py). A lone call goes out at once
and waits for nothing; under load each call carries a group, one round trip and one commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

GROUP_MAX = 200  # items per call, at most (a bound on one statement's size)


class Grouped:
    """Calls that arrive while one is on its way go together in the next, at most `most`.

    run(items) answers each item (a value or an exception, in order); a lone item is a group
    of one. If a group of several raises, each of its items is run alone, so that each gets
    its own answer or error. Items with the same `key` never share a group (a payout
    finalized twice in one call would be answered twice)."""

    def __init__(
        self,
        run: Callable[[list[Any]], Awaitable[list[Any]]],
        key: Callable[[Any], Any],
        most: int = GROUP_MAX,
    ) -> None:
        self._run, self._key, self._most = run, key, most
        self._waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: Any) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await asyncio.shield(done)  # a cancelled caller must not cancel the others

    async def _drain(self) -> None:
        while self._waiting:
            group, later, keys = [], [], set()
            for entry in self._waiting:
                key = self._key(entry[0])
                if len(group) < self._most and key not in keys:
                    group.append(entry)
                    keys.add(key)
                else:
                    later.append(entry)
            self._waiting = later
            try:
                answers = await self._run([item for item, _ in group])
            except Exception as exc:
                answers = [exc] if len(group) == 1 else [await self._alone(i) for i, _ in group]
            for (_, done), answer in zip(group, answers, strict=True):
                if done.done():
                    continue
                if isinstance(answer, BaseException):
                    done.set_exception(answer)
                else:
                    done.set_result(answer)

    async def _alone(self, item: Any) -> Any:
        try:
            return (await self._run([item]))[0]
        except Exception as exc:
            return exc
