"""Snapshots: what the debug socket reads about an actor without asking it anything.

Each actor instance owns an `ActorProbe` and writes a few attributes to it on its own thread
(plain attribute stores, atomic in CPython); any thread may call `snapshot()`, which adds the
runtime's mailbox statistics. Reading never sends a message, so a stuck actor can be inspected.

Addresses are `CALL_ID/supervisor|session|ingest|transcriber|responder`.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.runtime import PooledActor

TRACEBACK_LINES = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorSnapshot:
    address: str
    state: str  # "starting", "idle", "handling <Message>", "stopped", "failed", "abandoned"
    generation: int
    restarts: int
    mailbox_depth: int
    oldest_message_age_s: float
    handled: int
    dropped: int
    dropped_ms: float
    handler_running_s: float  # 0.0 when idle
    last_error: str
    last_traceback: str
    checkpoint_size: int
    thread_ident: int | None = None  # the thread running its handler now, for a stack dump


@dataclass(frozen=True, slots=True, kw_only=True)
class CallTree:
    """One call's supervisor and children, in start order."""

    call_id: str
    state: str
    supervisor: ActorSnapshot
    children: tuple[ActorSnapshot, ...]


class ActorProbe:
    """Written by one actor's thread, read by any thread."""

    def __init__(self, address: str, generation: int = 0) -> None:
        self.address = address
        self.generation = generation
        self.state = "starting"
        self.restarts = 0
        self.last_error = ""
        self.last_traceback = ""
        self.checkpoint_size = 0
        self.actor: PooledActor | None = None

    def record_error(self, error: BaseException) -> None:
        self.last_error = f"{type(error).__name__}: {error}"
        lines = traceback.format_exception(error)
        self.last_traceback = "".join(lines[-TRACEBACK_LINES:])

    def snapshot(self, now: float) -> ActorSnapshot:
        """Thread-safe: reads attributes and the runtime's stats (taken under the mailbox lock)."""
        actor = self.actor
        stats = actor.stats if actor is not None else None
        started = stats.handler_started_at if stats is not None else None
        return ActorSnapshot(
            address=self.address,
            state=self.state,
            generation=self.generation,
            restarts=self.restarts,
            mailbox_depth=stats.mailbox_depth if stats else 0,
            oldest_message_age_s=stats.oldest_age_s(now) if stats else 0.0,
            handled=stats.handled if stats else 0,
            dropped=stats.dropped if stats else 0,
            dropped_ms=stats.dropped_ms if stats else 0.0,
            handler_running_s=0.0 if started is None else max(0.0, now - started),
            last_error=self.last_error,
            last_traceback=self.last_traceback,
            checkpoint_size=self.checkpoint_size,
            thread_ident=stats.thread_ident if stats else None,
        )
