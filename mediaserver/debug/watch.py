"""DebugEvents: what happens in calls, fanned out to `watch`ers without ever slowing a call.

`publish(call_id, kind, data)` may be called from any thread (actor threads, the event loop). It
never blocks on I/O and never raises; with nobody watching it returns after reading one
attribute. With watchers it costs O(watchers): each watcher has a bounded buffer and a token
bucket (events a second); an event that does not fit is dropped and counted, never waited for.
The debug socket drains each buffer on its own schedule and tells a slow reader how many events
it lost. No actor code ever waits on a watcher.

Where events come from:

* `TreePoller` (`mediaserver/debug/poller.py`) diffs the registry's snapshots every
  `POLL_S` while someone watches: `call`, `state`, `restart`, `error`, `audio_dropped`.
* `tap(outbox)` wraps a call's `Outbox` (the edge does `outbox = events.tap(outbox)` when it
  admits a call): it puts every message through unchanged and publishes the facts only the
  outbox sees: `turn` (with its latencies), `speech`, `interrupted`, `error` (a failed reply)
  and `ended` (with the reason). It also keeps each call's turn count and last voice-to-voice
  latency for `calls`.
* Anything else the edge knows (transport events): call `publish` directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors.messages import (
    CallEnded,
    CallEventRecorded,
    ResponseInterrupted,
    SpeechStarted,
    SpeechStopped,
    TurnRecorded,
)

if TYPE_CHECKING:
    from actors.messages import Outbound, Outbox

logger = logging.getLogger(__name__)

Scalar = str | int | float | bool | None

DEFAULT_RATE_PER_S = 200
WATCHER_CAPACITY = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class DebugEvent:
    at: float  # wall clock (time.time()), for people reading the stream
    call_id: str | None  # None: about no one call (the node's `worker` events)
    kind: str
    data: Mapping[str, Scalar]
    worker: int | None = None  # the worker it came from, when the node relays it

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"event": self.kind, "call": self.call_id, "at": self.at}
        document["data"] = dict(self.data)
        if self.worker is not None:
            document["worker"] = self.worker
        return document


class Watcher:
    """One `watch`: a bounded buffer filled by `offer` (any thread), drained by `take` (loop)."""

    def __init__(
        self,
        call_id: str | None,
        *,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        capacity: int = WATCHER_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call_id = call_id
        self.rate_per_s = rate_per_s
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._events: deque[DebugEvent] = deque()
        self._tokens = float(rate_per_s)  # a burst of up to one second's worth
        self._refilled_at = clock()
        self._dropped = 0
        self.dropped_total = 0
        self.delivered_total = 0

    def offer(self, event: DebugEvent) -> None:
        """Buffer `event` if it is for this watcher and fits the rate and the buffer; else count."""
        if self.call_id is not None and event.call_id != self.call_id:
            return
        with self._lock:
            now = self._clock()
            tokens = self._tokens + (now - self._refilled_at) * self.rate_per_s
            self._tokens = min(float(self.rate_per_s), tokens)
            self._refilled_at = now
            if self._tokens < 1.0 or len(self._events) >= self._capacity:
                self._dropped += 1
                self.dropped_total += 1
                return
            self._tokens -= 1.0
            self._events.append(event)

    def count_dropped(self, count: int) -> None:
        """Count `count` events lost before they reached this watcher (upstream, on a worker)."""
        with self._lock:
            self._dropped += count
            self.dropped_total += count

    def take(self, limit: int) -> tuple[list[DebugEvent], int]:
        """Up to `limit` buffered events, and how many were dropped since the last call."""
        with self._lock:
            count = min(limit, len(self._events))
            events = [self._events.popleft() for _ in range(count)]
            dropped, self._dropped = self._dropped, 0
            self.delivered_total += count
        return events, dropped


@dataclass(slots=True)
class CallSummary:
    """What `calls` shows beyond the snapshots; fed by the outbox tap."""

    turns: int = 0
    last_voice_to_voice_ms: float | None = None


class DebugEvents:
    """The event fan-out; see the module docstring. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: tuple[Watcher, ...] = ()  # replaced, never mutated: read without a lock
        self._summaries: dict[str, CallSummary] = {}
        self.published = 0

    @property
    def watching(self) -> bool:
        return bool(self._watchers)

    @property
    def watchers(self) -> tuple[Watcher, ...]:
        return self._watchers

    def publish(self, call_id: str, kind: str, data: Mapping[str, Scalar] | None = None) -> None:
        """Offer an event to every watcher. Any thread; O(watchers); no-op when nobody watches."""
        watchers = self._watchers
        if not watchers:
            return
        event = DebugEvent(at=time.time(), call_id=call_id, kind=kind, data=data or {})
        self.published += 1  # approximate under races; a statistic only
        for watcher in watchers:
            watcher.offer(event)

    def subscribe(self, call_id: str | None, *, rate_per_s: float = DEFAULT_RATE_PER_S) -> Watcher:
        watcher = Watcher(call_id, rate_per_s=rate_per_s)
        with self._lock:
            self._watchers = (*self._watchers, watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers = tuple(w for w in self._watchers if w is not watcher)

    # -- the outbox tap ---------------------------------------------------------------------------

    def tap(self, outbox: Outbox) -> Outbox:
        """Wrap a call's outbox: every message goes through; some are also published."""
        return TappedOutbox(outbox, self)

    def summary(self, call_id: str) -> CallSummary | None:
        with self._lock:
            summary = self._summaries.get(call_id)
            if summary is None:
                return None
            return CallSummary(summary.turns, summary.last_voice_to_voice_ms)

    def observe(self, message: Outbound) -> None:
        """Publish what `message` tells a watcher (called by the tap on actor threads)."""
        match message:
            case TurnRecorded():
                with self._lock:
                    summary = self._summaries.setdefault(message.call_id, CallSummary())
                    summary.turns += 1
                    if message.voice_to_voice_ms is not None:
                        summary.last_voice_to_voice_ms = message.voice_to_voice_ms
                self.publish(
                    message.call_id,
                    "turn",
                    {
                        "turn_id": message.turn_id,
                        "role": message.role,
                        "chars": len(message.text),
                        "interrupted": message.interrupted,
                        "stt_ms": message.stt_ms,
                        "llm_first_token_ms": message.llm_first_token_ms,
                        "tts_first_audio_ms": message.tts_first_audio_ms,
                        "voice_to_voice_ms": message.voice_to_voice_ms,
                    },
                )
            case SpeechStarted():
                self.publish(message.call_id, "speech", {"speaking": True})
            case SpeechStopped():
                self.publish(message.call_id, "speech", {"speaking": False})
            case ResponseInterrupted():
                self.publish(
                    message.call_id,
                    "interrupted",
                    {"turn_id": message.turn_id, "spoken_chars": len(message.spoken)},
                )
            case CallEventRecorded(kind="reply_failed" | "escalated"):
                self.publish(message.call_id, "error", {"event": message.kind, **message.data})
            case CallEnded():
                with self._lock:
                    self._summaries.pop(message.call_id, None)
                self.publish(
                    message.call_id, "ended", {"reason": message.reason, "detail": message.detail}
                )
            case _:
                pass


_OBSERVED = frozenset(
    {TurnRecorded, SpeechStarted, SpeechStopped, ResponseInterrupted, CallEventRecorded, CallEnded}
)


class TappedOutbox:
    """An `Outbox` that also feeds `DebugEvents`. Never blocks, never raises (the Outbox rule)."""

    def __init__(self, inner: Outbox, events: DebugEvents) -> None:
        self._inner = inner
        self._events = events

    def put(self, message: Outbound, /) -> None:
        self._inner.put(message)
        if type(message) in _OBSERVED:  # one set lookup for the audio that makes up most traffic
            try:
                self._events.observe(message)
            except Exception:  # an actor thread: a debug feature must never fail a call
                logger.exception("debug events: observing %s failed", type(message).__name__)
