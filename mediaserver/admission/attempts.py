"""CallAttempts: how many calls each company started in the last minute (loop only)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0


class CallAttempts:
    """A sliding one-minute window per company; `per_min` 0 turns the limit off."""

    def __init__(self, per_min: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_min = per_min
        self._clock = clock
        self._starts: dict[str, deque[float]] = {}

    def allow(self, company_id: str) -> bool:
        """Count one attempt; False (and not counted) when the company is over its rate."""
        if self._per_min <= 0:
            return True
        now = self._clock()
        starts = self._starts.setdefault(company_id, deque())
        while starts and starts[0] <= now - WINDOW_S:
            starts.popleft()
        if len(starts) >= self._per_min:
            return False
        starts.append(now)
        return True

    def retry_after_s(self, company_id: str) -> float:
        """Seconds until the company may start a call again (0 if it may now)."""
        starts = self._starts.get(company_id)
        if self._per_min <= 0 or not starts or len(starts) < self._per_min:
            return 0.0
        return max(0.0, starts[0] + WINDOW_S - self._clock())
