"""FaultPlan: crash a call's child on purpose, on the n-th message of a kind.

Tests use it to crash every child on every message kind; the debug socket may arm it on a live
call when `debug.fault_injection` is on. Arming and checking are thread-safe. A fired fault
raises in the child's handler, exactly as a bug would, so supervision handles it for real.

`inject()` carries out an operator's `InjectFault` message (the debug socket's `crash`) in the
handler that received it, the same three ways.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from actors.errors import InjectedFault

if TYPE_CHECKING:
    from actors.messages import InjectFault

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


def inject(fault: InjectFault) -> None:
    """Fail the handler running now, as `fault` asks: raise, `SystemExit`, or hang `hang_s`."""
    where = f"{fault.call_id}/{fault.actor}"
    if fault.kind == "system_exit":
        raise SystemExit(f"injected into {where} by an operator")
    if fault.kind == "hang":
        threading.Event().wait(max(0.0, fault.hang_s))
        return
    raise InjectedFault(f"injected into {where} by an operator")
