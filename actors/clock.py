"""Clock: where the call tree reads monotonic time, so tests can control it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock in seconds; the same timeline as `AudioReceived.captured_at`."""

    def monotonic(self) -> float: ...


class SystemClock:
    """`time.monotonic`, the clock of production."""

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()
