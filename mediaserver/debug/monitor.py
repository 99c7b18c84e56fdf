"""LoopMonitor: event-loop lag and process CPU, measured by a small task on the loop.

Lag is how late a `sleep(interval_s)` wakes up: anything that holds the loop (a slow callback,
a blocking call) shows up here. CPU is the process's CPU time over the last second, in % of one
core (psutil), and RSS its resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import psutil  # type: ignore[import-untyped]  # types-psutil is not installed

INTERVAL_S = 0.1
WINDOW_S = 10.0
CPU_EVERY_S = 1.0


class LoopMonitor:
    def __init__(self, interval_s: float = INTERVAL_S, window_s: float = WINDOW_S) -> None:
        self._interval_s = interval_s
        self._lags: deque[float] = deque(maxlen=max(1, int(window_s / interval_s)))
        self._process = psutil.Process()
        self._task: asyncio.Task[None] | None = None
        self.started_at = time.monotonic()
        self.cpu_pct = 0.0

    @property
    def lag_ms(self) -> float:
        """The lag of the last wake-up, in ms."""
        return self._lags[-1] * 1000 if self._lags else 0.0

    @property
    def lag_max_ms(self) -> float:
        """The worst lag over the window, in ms."""
        return max(self._lags, default=0.0) * 1000

    def rss_bytes(self) -> int:
        return int(self._process.memory_info().rss)

    def start(self) -> None:
        """Start measuring on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        self._process.cpu_percent(None)  # the first call only starts the measurement
        cpu_due = time.monotonic() + CPU_EVERY_S
        while True:
            expected = time.monotonic() + self._interval_s
            await asyncio.sleep(self._interval_s)
            now = time.monotonic()
            self._lags.append(max(0.0, now - expected))
            if now >= cpu_due:
                self.cpu_pct = float(self._process.cpu_percent(None))
                cpu_due = now + CPU_EVERY_S
