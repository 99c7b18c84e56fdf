"""Test harness for the provider engines: the server's event loop on a background thread, and a
recording sink.

The engines' streams are driven from the test's own thread, as actors drive them from theirs;
the fakes and the engines' sockets run on the loop thread. Tests wait on conditions, never sleep.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from actors.engines import EngineFailed, EngineResult
from tests.timing import MS

T = TypeVar("T")
R = TypeVar("R")


class LoopThread:
    """An asyncio event loop running on its own thread, like the server's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="engine-loop")

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self._cancel_leftovers())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, R], timeout: float = 5000 * MS) -> R:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], R], timeout: float = 2000 * MS) -> R:
        """Call `fn` on the loop thread (to read state the loop owns) and return its result."""

        async def call() -> R:
            return fn()

        return self.run(call(), timeout)

    @staticmethod
    async def _cancel_leftovers() -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Recorder:
    """A sink that records every result with the thread that delivered it."""

    def __init__(self) -> None:
        self.results: list[EngineResult] = []
        self.threads: set[str] = set()
        self._changed = threading.Condition()

    def __call__(self, result: EngineResult) -> None:
        with self._changed:
            self.results.append(result)
            self.threads.add(threading.current_thread().name)
            self._changed.notify_all()

    def of(self, kind: type[T]) -> list[T]:
        with self._changed:
            return [r for r in self.results if isinstance(r, kind)]

    def count(self) -> int:
        with self._changed:
            return len(self.results)

    def wait_for(self, predicate: Callable[[Recorder], object], timeout: float = 3000 * MS) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"condition not reached in time; results: {self.results}")

    def assert_quiet(self, for_s: float) -> None:
        """Fail if any result arrives within `for_s` seconds (an absence, so it takes the time)."""
        with self._changed:
            before = len(self.results)
            arrived = self._changed.wait_for(lambda: len(self.results) > before, for_s)
        assert not arrived, f"unexpected results: {self.results[before:]}"

    def failures(self) -> list[EngineFailed]:
        return self.of(EngineFailed)


def wait_until(predicate: Callable[[], object], timeout: float = 3000 * MS) -> None:
    """Poll `predicate` every 5 ms until it holds (for state the fakes record)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        pause.wait(0.005)
