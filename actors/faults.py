"""FaultPlan: crash a call's child on purpose, on the n-th message of a kind.

Tests use it to crash every child on every message kind; the debug socket may arm it on a live
call when `debug.fault_injection` is on. Arming and checking are thread-safe. A fired fault
raises in the child's handler, exactly as a bug would, so supervision handles it for real.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from actors.errors import InjectedFault

FaultKind = Literal["exception", "system_exit", "hang"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    child: str  # "session", "ingest", "transcriber", "responder"
    message: str  # message class name, e.g. "AudioReceived"
    nth: int  # 1-based: fire on the n-th such message the child sees (across restarts)
    kind: FaultKind = "exception"


class FaultPlan:
    """Armed faults of one call, and a record of those that fired."""

    def __init__(self, *faults: Fault, hang: threading.Event | None = None) -> None:
        self._lock = threading.Lock()
        self._armed: list[Fault] = list(faults)
        self._seen: Counter[tuple[str, str]] = Counter()
        self.fired: list[Fault] = []
        # A "hang" fault blocks the handler until this event is set (or for 30 s).
        self.hang = hang if hang is not None else threading.Event()

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self._armed.append(fault)

    def check(self, child: str, message: object) -> None:
        """Called by a child before it handles `message`; raises when a fault is due."""
        key = (child, type(message).__name__)
        with self._lock:
            if not any(f.child == child for f in self._armed):
                return
            self._seen[key] += 1
            due = next(
                (
                    f
                    for f in self._armed
                    if (f.child, f.message) == key and f.nth == self._seen[key]
                ),
                None,
            )
            if due is None:
                return
            self._armed.remove(due)
            self.fired.append(due)
        if due.kind == "system_exit":
            raise SystemExit(f"injected into {child} on {key[1]} #{due.nth}")
        if due.kind == "hang":
            self.hang.wait(30.0)
            return
        raise InjectedFault(f"injected into {child} on {key[1]} #{due.nth}")
