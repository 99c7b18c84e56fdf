"""CallHandle: the edge's thread-safe way into one call tree.

The edge gets it in `CallAdmitted`. Audio goes straight to the *current* AudioIngest (the
supervisor re-points the handle on restart), without a hop through the supervisor; while
AudioIngest is being restarted, audio is held (up to the backlog limit) and delivered to the
new instance first, so a restart loses no audio. Everything else goes to the CallSupervisor.
Every method returns at once and may be called from the event loop. After the call ended,
calls are silently dropped (pykka's `ActorDeadError` is swallowed here, once, for the edge).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError, ActorRef

from actors.telling import tell_quietly

if TYPE_CHECKING:
    from actors.messages import (
        AudioReceived,
        DtmfReceived,
        HangUp,
        InjectFault,
        MediaConnected,
        PlaybackProgressed,
        RestartChild,
        TextReceived,
    )
    from actors.snapshot import CallTree

    ToSupervisor = (
        TextReceived
        | DtmfReceived
        | PlaybackProgressed
        | MediaConnected
        | HangUp
        | RestartChild
        | InjectFault
    )


class CallHandle:
    def __init__(self, call_id: str, *, held_audio_ms: float = 1000.0) -> None:
        self.call_id = call_id
        self._lock = threading.Lock()
        self._supervisor: ActorRef[Any] | None = None
        self._ingest: ActorRef[Any] | None = None
        self._held: deque[AudioReceived] = deque()
        self._held_ms = 0.0
        self._held_limit_ms = held_audio_ms
        self._tree: Callable[[], CallTree] | None = None
        self._ended = threading.Event()
        self.held_dropped = 0

    # -- edge side ------------------------------------------------------------------------------

    def send_audio(self, message: AudioReceived) -> None:
        """Tell caller audio to the current AudioIngest (held during its restart)."""
        with self._lock:
            if self._ended.is_set():
                return
            if self._ingest is not None:
                try:
                    self._ingest.tell(message)
                    return
                except ActorDeadError:
                    self._ingest = None  # failing right now; the supervisor re-points us
            self._hold_locked(message)

    def tell(self, message: ToSupervisor) -> None:
        """Tell the CallSupervisor (text, DTMF, playback, media connected, hang-up, operator)."""
        supervisor = self._supervisor
        if supervisor is None or self._ended.is_set():
            return
        # After the end, a dead supervisor is expected: `CallEnded` is on its way to the outbox.
        tell_quietly(supervisor, message)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Block until the tree has stopped (never call this on the event loop)."""
        return self._ended.wait(timeout)

    def tree(self) -> CallTree | None:
        """Snapshot of the call's actors, read without messaging them; None before start."""
        tree = self._tree
        return tree() if tree is not None else None

    # -- supervisor side ----------------------------------------------------------------------

    def bind(self, supervisor: ActorRef[Any], tree: Callable[[], CallTree]) -> None:
        self._supervisor = supervisor
        self._tree = tree

    def attach_ingest(self, ingest: ActorRef[Any] | None) -> None:
        """Point audio at a new AudioIngest (None: hold audio); held audio goes to it first."""
        with self._lock:
            self._ingest = ingest
            while ingest is not None and self._held:
                message = self._held.popleft()
                self._held_ms -= message.realtime_ms
                try:
                    ingest.tell(message)
                except ActorDeadError:
                    self._held.appendleft(message)
                    self._held_ms += message.realtime_ms
                    self._ingest = None
                    break

    def salvage(self, ingest: ActorRef[Any], drain: Callable[[], list[AudioReceived]]) -> None:
        """A failed AudioIngest hands back the audio still in its mailbox, to go first next time.

        Atomic with respect to `send_audio`: once the handle stops pointing at `ingest`, nothing
        more can land in the dead mailbox, so no frame is lost between drain and detach.
        """
        with self._lock:
            if self._ingest is ingest or self._ingest is None:
                self._ingest = None
                rescued = drain()
                self._held.extendleft(reversed(rescued))
                self._held_ms += sum(message.realtime_ms for message in rescued)

    def close(self) -> None:
        with self._lock:
            self._ended.set()
            self._ingest = None
            self._held.clear()

    def _hold_locked(self, message: AudioReceived) -> None:
        self._held.append(message)
        self._held_ms += message.realtime_ms
        while self._held_ms > self._held_limit_ms and len(self._held) > 1:
            self._held_ms -= self._held.popleft().realtime_ms
            self.held_dropped += 1
