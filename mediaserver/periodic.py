"""Every: a step run on the event loop at a fixed interval, from `start` until `close`.

For the small background duties of a process (the CPU probe, the dead-owner sweep, a worker's
state report): each is a function, and this is the one place that owns their tasks. A step
that raises is logged with its traceback and the next one runs on time; a step may be a
coroutine function. Loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class Every:
    """Run `step` every `interval_s` seconds (after each sleep) while started."""

    def __init__(
        self, interval_s: float, step: Callable[[], Awaitable[None] | None], *, name: str
    ) -> None:
        self._interval_s = interval_s
        self._step = step
        self.name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def close(self) -> None:
        """Stop; a step running now is cancelled (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                result = self._step()
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a loop task: log and keep going
                logger.exception("= %s failed", self.name)
