"""Timer: one thread per process that runs short callbacks at a time, for every call.

Supervisors schedule backoff restarts and watchdog ticks here instead of sleeping in a
handler or starting a thread per call. Callbacks run on the timer thread and must only do
something quick and non-blocking, typically `ActorRef.tell`. A callback that raises is logged
and forgotten; the timer keeps running.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class TimerHandle:
    """A scheduled callback; `cancel()` is safe from any thread, any number of times."""

    __slots__ = ("callback", "cancelled", "period_s")

    def __init__(self, callback: Callable[[], object], period_s: float | None) -> None:
        self.callback = callback
        self.period_s = period_s
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timer:
    """A heap of deadlines served by one daemon thread, started on first use."""

    def __init__(self, name: str = "actors-timer") -> None:
        self._name = name
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._order = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> TimerHandle:
        """Run `callback` once on the timer thread after `delay_s` seconds."""
        return self._schedule(delay_s, TimerHandle(callback, None))

    def call_every(self, period_s: float, callback: Callable[[], object]) -> TimerHandle:
        """Run `callback` every `period_s` seconds until the handle is cancelled."""
        assert period_s > 0
        return self._schedule(period_s, TimerHandle(callback, period_s))

    def close(self) -> None:
        """Stop the thread; pending callbacks never run."""
        with self._wakeup:
            self._closed = True
            self._heap.clear()
            self._wakeup.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _schedule(self, delay_s: float, handle: TimerHandle) -> TimerHandle:
        with self._wakeup:
            if self._closed:
                handle.cancel()
                return handle
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._order), handle))
            self._wakeup.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wakeup.wait(timeout)
                if self._closed:
                    return
                due, _, handle = heapq.heappop(self._heap)
                if handle.period_s is not None and not handle.cancelled:
                    # Next deadline from the previous one, so a periodic tick does not drift.
                    next_due = max(due + handle.period_s, time.monotonic())
                    heapq.heappush(self._heap, (next_due, next(self._order), handle))
            if not handle.cancelled:
                try:
                    handle.callback()
                except Exception:
                    logger.exception("Timer callback %r failed", handle.callback)
            # The next wait can last long: holding the handle would keep an ended call's whole
            # tree alive through its callback's references.
            del handle


_shared: Timer | None = None
_shared_lock = threading.Lock()


def shared_timer() -> Timer:
    """The process-wide timer."""
    global _shared  # noqa: PLW0603 -- one timer thread per process, made on first use
    with _shared_lock:
        if _shared is None:
            _shared = Timer()
        return _shared
