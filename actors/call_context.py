"""What the children of one call share: setup, generations, sibling refs and engine watches.

The CallSupervisor builds one `CallSetup` per call and one `ChildContext` per child instance.
These are plain objects, not messages: every mutable one here is thread-safe because the
supervisor, the children and the watchdog touch it from different threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pykka import ActorRef

from actors.engines import EngineKind, EngineStream
from actors.telling import tell_quietly

if TYPE_CHECKING:
    from actors.agent import AgentConfig
    from actors.call_handle import CallHandle
    from actors.clock import Clock
    from actors.engines import CallEngines
    from actors.faults import FaultPlan
    from actors.messages import Outbox
    from actors.replay_buffer import ReplayBuffer
    from actors.runtime import Dispatcher
    from actors.snapshot import ActorProbe
    from actors.timer import Timer
    from actors.tree_messages import Checkpoint, ChildName
    from actors.turn_detector import TurnSettings
    from config.settings import SupervisionSettings

logger = logging.getLogger(__name__)


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every record with the call id (and carries it as `call_id` for JSON logs)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"{extra.get('call_id', '-')} {msg}", kwargs


def call_log(name: str, call_id: str) -> CallLog:
    return CallLog(logging.getLogger(name), {"call_id": call_id})


class Generations:
    """The current generation of each child. Bumped by the supervisor before a replacement starts.

    A child instance compares its own generation with the current one before every outbound
    effect, so an abandoned or replaced instance that wakes up late has no effect at all.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[str, int] = {}

    def current(self, child: str) -> int:
        return self._current.get(child, 0)

    def bump(self, child: str) -> int:
        with self._lock:
            self._current[child] = self._current.get(child, 0) + 1
            return self._current[child]


class Peers:
    """Sibling refs, updated by the supervisor on restart; a tell to a missing sibling is dropped.

    What a dropped message would have carried is recovered by design: audio by replay, a reply
    request by `SiblingStarted`, anything else by the rest_for_one restart of later children.
    """

    def __init__(self) -> None:
        self._refs: dict[str, ActorRef[Any]] = {}

    def set(self, child: str, ref: ActorRef[Any] | None) -> None:
        if ref is None:
            self._refs.pop(child, None)
        else:
            self._refs[child] = ref

    def get(self, child: str) -> ActorRef[Any] | None:
        return self._refs.get(child)

    def tell(self, child: str, message: object) -> bool:
        ref = self._refs.get(child)
        return ref is not None and tell_quietly(ref, message)


class EngineWatch:
    """The engine streams one child instance has open, and how long each has been waiting.

    The child records requests and progress; the supervisor's watchdog reads `overdue()` on its
    tick and, for a stalled child, calls `cancel_all()` because the child itself may be stuck.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[int, tuple[EngineKind, EngineStream[Any]]] = {}
        self._waiting: dict[int, float] = {}  # stream -> last progress (or request) time

    def opened(self, stream_no: int, kind: EngineKind, stream: EngineStream[Any]) -> None:
        with self._lock:
            self._streams[stream_no] = (kind, stream)

    def is_open(self, stream_no: int) -> bool:
        return stream_no in self._streams

    def forget(self, stream_no: int) -> None:
        with self._lock:
            self._streams.pop(stream_no, None)
            self._waiting.pop(stream_no, None)

    def waiting(self, stream_no: int, now: float) -> None:
        with self._lock:
            self._waiting[stream_no] = now

    def progressed(self, stream_no: int, now: float) -> None:
        with self._lock:
            if stream_no in self._waiting:
                self._waiting[stream_no] = now

    def settled(self, stream_no: int) -> None:
        with self._lock:
            self._waiting.pop(stream_no, None)

    def overdue(
        self, now: float, timeouts: Mapping[EngineKind, float]
    ) -> tuple[EngineKind, float] | None:
        """The first stream waiting longer than its kind's timeout: (kind, seconds waited)."""
        with self._lock:
            for stream_no, since in self._waiting.items():
                kind = self._streams[stream_no][0] if stream_no in self._streams else None
                if kind is not None and now - since > timeouts[kind]:
                    return kind, now - since
        return None

    def cancel_all(self) -> None:
        """Cancel and close every open stream. Any thread; engine errors are logged."""
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
            self._waiting.clear()
        for kind, stream in streams:
            try:
                stream.cancel()
                stream.close()
            except Exception:
                logger.exception("closing a %s stream failed", kind)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSetup:
    """Per call, shared by the supervisor and every child instance."""

    call_id: str
    dispatcher: Dispatcher
    agent: AgentConfig
    engines: CallEngines
    outbox: Outbox
    supervision: SupervisionSettings
    turns: TurnSettings
    clock: Clock
    generations: Generations
    peers: Peers
    replay: ReplayBuffer
    timer: Timer
    handle: CallHandle
    faults: FaultPlan | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildContext:
    """Per child instance: what it needs besides the setup."""

    setup: CallSetup
    name: ChildName
    parent: ActorRef[Any]
    generation: int
    checkpoint: Checkpoint | None
    probe: ActorProbe
    watch: EngineWatch
