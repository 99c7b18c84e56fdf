"""The server's life: starting, ready, draining, stopped.

`/readyz` reads it, admission reads it, and the signal handlers in `app.py` move it. It lives on
the event loop thread only.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Literal

Readiness = Literal["starting", "ready", "full", "draining", "stopped", "admission_failed"]
"""What `/readyz` answers: 200 for "ready", 503 for the rest (docs/http-api.md)."""


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Lifecycle:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.stopped = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def accepting_calls(self) -> bool:
        return self.phase is Phase.READY

    def readiness(self) -> Readiness:
        """The phase as a readiness answer ("ready" says nothing yet of room for calls)."""
        match self.phase:
            case Phase.STARTING:
                return "starting"
            case Phase.READY:
                return "ready"
            case Phase.DRAINING:
                return "draining"
            case Phase.STOPPED:
                return "stopped"

    def mark_ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def begin_drain(self) -> bool:
        """Stop accepting calls; False if a drain or stop is already under way."""
        if self.phase in (Phase.DRAINING, Phase.STOPPED):
            return False
        self.phase = Phase.DRAINING
        return True

    def mark_stopped(self) -> None:
        self.phase = Phase.STOPPED
        self.stopped.set()
