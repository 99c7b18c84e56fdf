"""RequestRate: how many tenant API requests each API key made in the last minute (loop only)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0
SWEEP_EVERY = 1024  # checks between sweeps that forget keys idle for a whole window


class RequestRate:
    """A sliding one-minute window per key: at most `per_min` requests in any 60 s."""

    def __init__(self, per_min: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        assert per_min >= 1, per_min
        self._per_min = per_min
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._checks = 0

    def check(self, key_id: str) -> float:
        """Count one request; return 0.0, or the seconds to wait when over (not counted)."""
        now = self._clock()
        self._checks += 1
        if self._checks % SWEEP_EVERY == 0:
            self._sweep(now)
        seen = self._seen.setdefault(key_id, deque())
        while seen and seen[0] <= now - WINDOW_S:
            seen.popleft()
        if len(seen) >= self._per_min:
            return max(0.001, seen[0] + WINDOW_S - now)
        seen.append(now)
        return 0.0

    def _sweep(self, now: float) -> None:
        for key_id in [
            k for k, seen in self._seen.items() if not seen or seen[-1] <= now - WINDOW_S
        ]:
            del self._seen[key_id]
