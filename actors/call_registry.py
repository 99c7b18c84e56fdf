"""CallRegistry: the live calls, readable from any thread (debug socket, readiness, drain).

The Switchboard writes it; anyone reads it without messaging an actor. Lookups by address
(`CALL_ID/supervisor|session|ingest|transcriber|responder`) return snapshots, never actors;
an operator action goes through `handle(call_id)`. It also counts admissions and refusals
by reason since start (`admissions()`), for the debug socket's `stats`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.call_handle import CallHandle
    from actors.snapshot import ActorSnapshot, CallTree


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEntry:
    call_id: str
    company_id: str
    agent_id: str
    transport: str
    handle: CallHandle
    admitted_at: float = field(default_factory=time.monotonic)


class CallRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, CallEntry] = {}
        self._admitted = 0
        self._refused: Counter[str] = Counter()
        self.drained = threading.Event()
        """Set once shutdown has begun and no call is left (wait on it off the event loop)."""

    def add(self, entry: CallEntry) -> None:
        with self._lock:
            self._calls[entry.call_id] = entry
            self._admitted += 1

    def record_refusal(self, reason: str) -> None:
        with self._lock:
            self._refused[reason] += 1

    def admissions(self) -> tuple[int, dict[str, int]]:
        """Calls admitted since start, and calls refused by reason."""
        with self._lock:
            return self._admitted, dict(self._refused)

    def remove(self, call_id: str) -> CallEntry | None:
        with self._lock:
            return self._calls.pop(call_id, None)

    def count(self, company_id: str | None = None) -> int:
        with self._lock:
            if company_id is None:
                return len(self._calls)
            return sum(entry.company_id == company_id for entry in self._calls.values())

    def calls(self) -> list[CallEntry]:
        with self._lock:
            return list(self._calls.values())

    def handle(self, call_id: str) -> CallHandle | None:
        with self._lock:
            entry = self._calls.get(call_id)
        return entry.handle if entry is not None else None

    def tree(self, call_id: str) -> CallTree | None:
        handle = self.handle(call_id)
        return handle.tree() if handle is not None else None

    def lookup(self, address: str) -> ActorSnapshot | None:
        """The snapshot of the actor at `CALL_ID/NAME`, or None."""
        call_id, _, _ = address.rpartition("/")
        tree = self.tree(call_id)
        if tree is None:
            return None
        return next((s for s in (tree.supervisor, *tree.children) if s.address == address), None)
