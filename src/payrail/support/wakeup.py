"""A signal that cuts a background loop's idle wait short (issue 30: an idle server polls
slowly, and work made in its own process is picked up at once rather than at the next poll).

Whoever may have made work for a loop calls `set()` (on the event loop's thread: a request
that wrote, a task that finished); the loop sleeps in `wait()` between rounds. A `set()` that
arrives while the loop is busy is kept, so the next `wait()` returns at once: a wake-up is
never lost between a loop's last look for work and its sleep.
"""

from __future__ import annotations

import asyncio
import contextlib


class Wakeup:
    def __init__(self) -> None:
        self._pending = False
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.waiting = False  # a loop is asleep in wait() (tests, introspection)

    def set(self) -> None:
        self._pending = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._pending

    async def wait(self, stop: asyncio.Event, timeout_s: float) -> bool:
        """Sleep up to timeout_s, returning early on set() or stop. True if woken by set();
        the signal is consumed either way."""
        if not self._pending and not stop.is_set() and timeout_s > 0:
            loop = asyncio.get_running_loop()
            if self._loop is not loop:  # an Event belongs to one loop (tests run several)
                self._event, self._loop = asyncio.Event(), loop
            event = self._event
            assert event is not None
            event.clear()
            woken = asyncio.ensure_future(event.wait())
            stopped = asyncio.ensure_future(stop.wait())
            self.waiting = True
            try:
                await asyncio.wait(
                    {woken, stopped}, timeout=timeout_s, return_when="FIRST_COMPLETED"
                )
            finally:
                self.waiting = False
                for waiter in (woken, stopped):
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
        woken_up, self._pending = self._pending, False
        return woken_up
