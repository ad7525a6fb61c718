"""Failed-authentication throttling: after too many wrong API keys or dashboard sign-ins from
one client address, or for one key prefix, within a window, that address or prefix is refused
with 429 AUTH_THROTTLED and Retry-After until the window has let the oldest failure go, even
with the right key (a guesser must not learn which guess was right by its answer).

Per process, in memory, bounded. Measured (docs/api.md, "Failed authentication"): without it
300 wrong keys took 7.6 s and 300 wrong sign-ins 0.8 s; with it the 21st failure within a
minute is refused, so `payrail serve --workers N` allows at most N × AUTH_FAILURES_MAX guesses
per window per address. N is small (one per core), which is why a table shared through the
database (a write per failure, on the payments database) was not worth its cost. Successful
authentications are not recorded and reset nothing: an attacker who holds one valid key cannot
use it to clear its failures.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, deque
from dataclasses import dataclass

import structlog

from payrail.domain import errors
from payrail.support import metrics

log = structlog.get_logger("payrail.auth")

AUTH_FAILURES_MAX = 20  # failures per identity (an address, a key prefix) within the window
AUTH_FAILURE_WINDOW_MS = 60_000
KEY_PREFIX_CHARS = 8  # what a key is known by here; never stored in clear
IDENTITIES_MAX = 10_000  # identities tracked; the least recently failed is dropped first


@dataclass(frozen=True)
class Caller:
    """Who is trying: its address (as the server saw it) and the key it presented."""

    address: str
    key: str

    def identities(self) -> tuple[tuple[str, str], ...]:
        prefix = hashlib.sha256(self.key[:KEY_PREFIX_CHARS].encode()).hexdigest()[:16]
        return (("address", self.address), ("key_prefix", prefix))


class FailedAuthThrottle:
    """A sliding window of failure times per identity, at most AUTH_FAILURES_MAX each."""

    def __init__(
        self,
        failures_max: int = AUTH_FAILURES_MAX,
        window_ms: int = AUTH_FAILURE_WINDOW_MS,
        identities_max: int = IDENTITIES_MAX,
    ) -> None:
        self.failures_max = failures_max
        self.window_ms = window_ms
        self.identities_max = identities_max
        self._failures: OrderedDict[tuple[str, str], deque[int]] = OrderedDict()

    def check(self, caller: Caller, now_ms: int, surface: str) -> None:
        """Raise AuthThrottled if the caller's address or key prefix is over its limit."""
        for identity in caller.identities():
            times = self._recent(identity, now_ms)
            if times is not None and len(times) >= self.failures_max:
                retry_after_s = max(1, math.ceil((times[0] + self.window_ms - now_ms) / 1000))
                metrics.AUTH_THROTTLED.labels(surface=surface, by=identity[0]).inc()
                raise errors.AuthThrottled(
                    f"Too many failed authentications from this {_what(identity[0])}: "
                    f"retry after {retry_after_s} s.",
                    retryAfter=retry_after_s,
                    failuresMax=self.failures_max,
                    windowSeconds=self.window_ms // 1000,
                )

    def failed(self, caller: Caller, now_ms: int, surface: str) -> None:
        """Record one failed authentication of the caller."""
        metrics.AUTH_FAILURES.labels(surface=surface).inc()
        for identity in caller.identities():
            times = self._recent(identity, now_ms)
            if times is None:
                times = self._failures[identity] = deque(maxlen=self.failures_max)
                while len(self._failures) > self.identities_max:
                    self._failures.popitem(last=False)
            self._failures.move_to_end(identity)
            times.append(now_ms)
            if len(times) == self.failures_max:  # one line when it starts, not one per refusal
                log.warning(
                    "auth_throttle_engaged",
                    surface=surface,
                    by=identity[0],
                    address=caller.address,  # never the key, nor its prefix
                    failures=len(times),
                    window_s=self.window_ms // 1000,
                )

    def _recent(self, identity: tuple[str, str], now_ms: int) -> deque[int] | None:
        times = self._failures.get(identity)
        if times is None:
            return None
        while times and times[0] <= now_ms - self.window_ms:
            times.popleft()
        if not times:
            del self._failures[identity]
            return None
        return times


def _what(kind: str) -> str:
    return "address" if kind == "address" else "key prefix"
