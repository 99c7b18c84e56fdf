"""The load gate's probes beside the loop's lag: the dispatcher's lag and the process's CPU.

DispatchLagProbe pings a `LagProbe` actor on the shared dispatcher and hands the waits to the
event loop (the load gate's second measurement, decision 0090); CpuProbe reads the process's CPU
time (the third, decision 0091).

    loop task, every 50 ms --tell(LagPing(sent_at))--> LagProbe (a dispatcher thread)
    loop <--call_soon_threadsafe(on_lag, wait_s)---------+

Twenty pings a second are fewer messages than one call's inbound audio (fifty a second), and each
is handled by a subtraction; when the dispatcher is idle, a ping also wakes one parked thread.
Loop only, except `_report`, which runs on a dispatcher thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from pykka import ActorDeadError, ActorRef

from actors.lag_probe import LagPing, LagProbe
from actors.runtime import Dispatcher
from mediaserver.periodic import Every

logger = logging.getLogger(__name__)

INTERVAL_S = 0.05
CPU_INTERVAL_S = 0.25


class DispatchLagProbe:
    """Measures the dispatcher's lag from the loop; `on_lag(seconds)` runs on the loop."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        on_lag: Callable[[float], None],
        *,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._dispatcher = dispatcher
        self._on_lag = on_lag
        self._interval_s = interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._actor: ActorRef[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the probe actor and the pings on the running loop (idempotent)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._actor = LagProbe.start(self._dispatcher, report=self._report)
        self._task = self._loop.create_task(self._run(), name="dispatch-lag")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        actor, self._actor = self._actor, None
        if actor is not None:
            with contextlib.suppress(ActorDeadError):
                actor.stop(block=False)

    async def _run(self) -> None:
        actor = self._actor
        assert actor is not None
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                actor.tell(LagPing(sent_at=time.monotonic()))
            except ActorDeadError:
                logger.error("= the dispatcher lag probe is gone: no dispatcher lag measured")
                return

    def _report(self, lag_s: float) -> None:
        """On a dispatcher thread: hand the wait to the loop."""
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed under a late ping
            loop.call_soon_threadsafe(self._on_lag, lag_s)


class CpuProbe:
    """Every `interval_s`, this process's CPU since the last look, in cores, to `on_cpu` (loop).

    `time.process_time` counts every thread of the process (the loop, the dispatcher, the
    engines' pools, native codecs), which is what saturates a worker; one read is a syscall.
    """

    def __init__(
        self, on_cpu: Callable[[float], None], *, interval_s: float = CPU_INTERVAL_S
    ) -> None:
        self._on_cpu = on_cpu
        self._last = (time.monotonic(), time.process_time())
        self._every = Every(interval_s, self._look, name="cpu")

    def start(self) -> None:
        self._last = (time.monotonic(), time.process_time())
        self._every.start()

    async def close(self) -> None:
        await self._every.close()

    def _look(self) -> None:
        (wall, cpu), now = self._last, (time.monotonic(), time.process_time())
        self._last = now
        if now[0] > wall:
            self._on_cpu((now[1] - cpu) / (now[0] - wall))
