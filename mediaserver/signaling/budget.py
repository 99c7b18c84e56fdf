"""Per-connection message budget and abuse count (loop only; the clock is injectable for tests)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

ABUSE_WINDOW_S = 10.0


class MessageBudget:
    """A token bucket: `per_s` messages a second, bursts of up to `per_s`."""

    def __init__(self, per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_s
        self._tokens = per_s
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        """Spend one message; False when the budget is exhausted (the message is refused)."""
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class AbuseCounter:
    """Counts refused messages; more than `limit` within `ABUSE_WINDOW_S` is abuse."""

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._times: deque[float] = deque()

    def strike(self) -> bool:
        """Count one refused message; True when the connection should be closed."""
        now = self._clock()
        self._times.append(now)
        while self._times[0] <= now - ABUSE_WINDOW_S:
            self._times.popleft()
        return len(self._times) > self._limit
