"""The actor runtime: pykka actors scheduled over a small shared thread pool.

Why: pykka's `ThreadingActor` gives every actor its own OS thread. At 5 actors per call and an
audio message every 20 ms hopping ingest -> transcriber, 300 calls cost 127 % of a core on 2 cores
and p99 latency reached 242 ms (saturated); each hop is a thread wake-up and a GIL hand-off. The
same load scheduled over 1-2 shared threads ran at about 22 % of a core with p99 4-6 ms.

Scheduling model:

- Every actor has a `Mailbox` (its pykka inbox). `put` appends under the mailbox lock; if the
  actor is idle, it also submits the actor to its runner (the `Dispatcher`'s run queue, or the
  actor's own thread for `dedicated` actors). An actor is submitted at most once at a time, so one
  thread at a time runs it and its messages are handled in order, one at a time.
- A worker takes the actor and runs one *turn*: `on_start` first if it has not run yet, then up to
  `messages_per_turn` (32) messages. If messages are still waiting, the actor goes back to the tail
  of the run queue, so a busy actor cannot starve the others.
- Handling is pykka's loop, message for message: an `ask` gets the reply or the exception on its
  future; an exception in a `tell` handler logs, unregisters and stops the actor and calls
  `on_failure`; `_ActorStop` runs `on_stop`; once stopped, queued asks fail with `ActorDeadError`
  (stop requests get `None`, as in pykka). `tell`, `ask`, proxies, `stop()` and `ActorRegistry`
  work unchanged; futures are pykka's `ThreadingFuture`.

Threading rule: `__init__` runs on the thread that calls `start()`. Every other hook (`on_start`,
`on_receive` and proxy calls, `on_dropped`, `on_stop`, `on_failure`) runs on the thread running
the actor's turn: a dispatcher worker (`calls-0`, ...) or the actor's dedicated thread. Hooks of
one actor never run concurrently, but consecutive turns may run on different workers, so keep no
thread-local state. `stats` and `abandon()` may be used from any thread.

BaseException guard: pykka answers a `BaseException` (`SystemExit`, `KeyboardInterrupt`,
`GeneratorExit`) from any handler with `ActorRegistry.stop_all()`, which here would hang up every
call on the server. This runtime treats it as a failure of that one actor: it is logged, the
actor stops and `on_failure` gets the exception; if the message was an `ask`, the asker gets
`ActorDeadError` (raised from the original) rather than a `SystemExit` in its own thread. No
exception from a hook ever kills a worker thread.

Real-time drop policy: a message is *real-time* when `getattr(message, "realtime_ms", None)` is a
number (audio frames expose their duration). When the real-time messages waiting in a mailbox add
up to more than `realtime_backlog_ms`, the mailbox drops the oldest ones (never the newest) until
the backlog fits, in `put`, on the producer's thread. Late audio is worth less than fresh audio,
and a bounded backlog keeps a slow transcriber from turning into seconds of delay and unbounded
memory. Control messages and asks are never dropped and keep their order, also relative to the
real-time messages that remain. Drops are counted in `stats.dropped` / `stats.dropped_ms`;
`on_dropped(count, ms)` then runs on the actor's own thread before its next message, so no actor
code ever runs on the producer's thread (often the event loop).

Stalls: see `actors.dispatcher`. A handler running over `stall_compensation_s` gets a compensating
worker started beside it. A supervisor that decides an actor is stuck calls `abandon()`: the actor
is dead at once and its handler's eventual result is discarded.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from queue import Empty
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pykka import Actor, ActorDeadError, ActorRegistry, ThreadingFuture, messages

from actors.dispatcher import Dispatcher, Runner, TurnResult

if TYPE_CHECKING:
    from pykka import Future
    from pykka._actor import ActorInbox
    from pykka._envelope import Envelope
    from pykka._types import OptExcInfo

__all__ = ["ActorStats", "DedicatedActor", "Dispatcher", "Mailbox", "PooledActor"]

logger = logging.getLogger(__name__)

# (sequence number, enqueued at (monotonic s), real-time duration in ms or 0.0, envelope)
_Entry = tuple[int, float, float, "Envelope[Any]"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorStats:
    """A consistent snapshot of one actor's mailbox and handler, taken under its mailbox lock."""

    mailbox_depth: int
    oldest_enqueued_at: float | None
    """`time.monotonic()` when the oldest waiting message was put, None if the mailbox is empty."""
    realtime_backlog_ms: float
    """Total `realtime_ms` of the real-time messages waiting."""
    handled: int
    """Messages handled so far, including those whose handler raised."""
    dropped: int
    """Real-time messages dropped by the backlog limit."""
    dropped_ms: float
    handler_started_at: float | None
    """`time.monotonic()` when the hook running now started, None if the actor is idle."""
    thread_ident: int | None
    """`threading.get_ident()` of the thread running the actor now, for a stack dump."""

    def oldest_age_s(self, now: float) -> float:
        """Seconds the oldest waiting message has waited at `now` (monotonic), 0.0 if none."""
        return 0.0 if self.oldest_enqueued_at is None else now - self.oldest_enqueued_at


class Mailbox:
    """A pykka inbox that schedules its actor instead of waking a thread of its own.

    Two FIFOs, control and real-time, merged by sequence number on the way out, so that the
    oldest real-time message can be dropped in O(1) without disturbing anything else.
    """

    __slots__ = (
        "_abandoned",
        "_actor",
        "_backlog_override",
        "_closed",
        "_control",
        "_inflight",
        "_lock",
        "_realtime",
        "_realtime_ms",
        "_runner",
        "_scheduled",
        "_seq",
        "dropped",
        "dropped_ms",
        "handled",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: deque[_Entry] = deque()
        self._realtime: deque[_Entry] = deque()
        self._realtime_ms = 0.0
        self._seq = 0
        self._actor: PooledActor | None = None
        self._backlog_override: float | None = None
        self._runner: Runner | None = None
        # True while the actor is on a run queue or being run, and forever once closed.
        self._scheduled = False
        self._closed = False
        self._abandoned = False
        self._inflight: Envelope[Any] | None = None
        self.handled = 0  # written only by the thread running the actor
        self.dropped = 0
        self.dropped_ms = 0.0

    def put(self, envelope: Envelope[Any], /) -> None:
        """Queue a message and schedule the actor if it is idle. Any thread; never blocks long.

        Raises:
            ActorDeadError: for a `tell` to an actor that stopped after the caller's liveness
                check. An `ask` gets the error on its future instead.
        """
        realtime_ms = None
        if envelope.reply_to is None:
            realtime_ms = getattr(envelope.message, "realtime_ms", None)
            if not isinstance(realtime_ms, int | float) or isinstance(realtime_ms, bool):
                realtime_ms = None
        now = time.monotonic()
        submit = False
        with self._lock:
            if self._closed:
                dead = True
            else:
                dead = False
                self._seq += 1
                if realtime_ms is None:
                    self._control.append((self._seq, now, 0.0, envelope))
                else:
                    self._realtime.append((self._seq, now, float(realtime_ms), envelope))
                    self._realtime_ms += realtime_ms
                    self._enforce_backlog_locked()
                if self._runner is not None and not self._scheduled:
                    self._scheduled = submit = True
        if dead:
            _reject(envelope, "stopped before handling the message")
            if envelope.reply_to is None:
                msg = "actor stopped before handling the message"
                raise ActorDeadError(msg)
        elif submit:
            assert self._runner is not None
            assert self._actor is not None
            self._runner.submit(self._actor)

    def _enforce_backlog_locked(self) -> None:
        limit = self._backlog_override
        if limit is None and self._actor is not None:
            limit = self._actor.realtime_backlog_ms
        if limit is None:
            return
        realtime = self._realtime
        # Keep the newest frame even if it alone exceeds the limit: fresh audio always gets through.
        while self._realtime_ms > limit and len(realtime) > 1:
            _, _, ms, _ = realtime.popleft()
            self._realtime_ms -= ms
            self.dropped += 1
            self.dropped_ms += ms

    def get(self) -> Envelope[Any]:
        """Pop the next message without blocking (pykka's inbox protocol; the runtime uses `_take`).

        Raises:
            queue.Empty: if no message is waiting.
        """
        with self._lock:
            entry = self._pop_locked()
        if entry is None:
            raise Empty
        return entry[3]

    def empty(self) -> bool:
        with self._lock:
            return not self._control and not self._realtime

    def _pop_locked(self) -> _Entry | None:
        control, realtime = self._control, self._realtime
        if control and (not realtime or control[0][0] < realtime[0][0]):
            return control.popleft()
        if realtime:
            entry = realtime.popleft()
            if realtime:
                self._realtime_ms -= entry[2]
            else:
                self._realtime_ms = 0.0  # don't let float error accumulate
            return entry
        return None

    # -- used by the thread running the actor --------------------------------------------------

    def _start(self, runner: Runner) -> None:
        with self._lock:
            self._runner = runner
            self._scheduled = True
        assert self._actor is not None
        runner.submit(self._actor)

    def _take(self) -> Envelope[Any] | None:
        """Next message, or None (then the actor is idle, or closed if `_closed`)."""
        with self._lock:
            if self._closed:
                return None
            entry = self._pop_locked()
            if entry is None:
                self._scheduled = False
                self._inflight = None
                return None
            self._inflight = entry[3]
            return entry[3]

    def _end_turn(self) -> TurnResult:
        with self._lock:
            if self._closed:
                return TurnResult.DONE
            if self._control or self._realtime:
                return TurnResult.MORE
            self._scheduled = False
            return TurnResult.IDLE

    def _claim(self) -> bool:
        """Take ownership of the running message's outcome; False if the actor was abandoned."""
        with self._lock:
            if self._abandoned:
                return False
            self._inflight = None
            return True

    def _drop_counters(self) -> tuple[int, float]:
        with self._lock:
            return self.dropped, self.dropped_ms

    def _close(self, *, abandon: bool) -> tuple[list[Envelope[Any]], Envelope[Any] | None] | None:
        """Refuse further messages; return (waiting, in flight), or None if already closed."""
        with self._lock:
            if self._closed:
                return None
            self._closed = self._scheduled = True
            self._abandoned = abandon
            waiting = [*self._control, *self._realtime]
            waiting.sort(key=lambda entry: entry[0])
            self._control.clear()
            self._realtime.clear()
            self._realtime_ms = 0.0
            inflight, self._inflight = self._inflight, None
        return [entry[3] for entry in waiting], inflight

    def _stats(self, handler_started_at: float | None, thread_ident: int | None) -> ActorStats:
        with self._lock:
            heads = [queue[0][1] for queue in (self._control, self._realtime) if queue]
            return ActorStats(
                mailbox_depth=len(self._control) + len(self._realtime),
                oldest_enqueued_at=min(heads) if heads else None,
                realtime_backlog_ms=self._realtime_ms,
                handled=self.handled,
                dropped=self.dropped,
                dropped_ms=self.dropped_ms,
                handler_started_at=handler_started_at,
                thread_ident=thread_ident,
            )


def _reject(envelope: Envelope[Any], reason: str) -> None:
    """Answer an ask that will never be handled, the way pykka's teardown does."""
    if envelope.reply_to is None:
        return
    if isinstance(envelope.message, messages._ActorStop):
        envelope.reply_to.set(None)
        return
    error = ActorDeadError(f"actor {reason}")
    envelope.reply_to.set_exception(exc_info=(ActorDeadError, error, None))


class PooledActor(Actor):
    """A pykka actor run by a `Dispatcher`'s shared worker threads.

    Subclass it like `pykka.ThreadingActor`, pass the dispatcher up, and start it with the
    dispatcher as the first argument:

        class Ingest(PooledActor):
            realtime_backlog_ms = 200.0

            def __init__(self, dispatcher: Dispatcher, transcriber: ActorRef[Any]) -> None:
                super().__init__(dispatcher)
                self._transcriber = transcriber

            def on_receive(self, message: Any) -> Any:
                ...

        ref = Ingest.start(dispatcher, transcriber_ref)

    Handlers must not block for long: a blocked handler holds one of a few shared threads (the
    dispatcher compensates after `stall_compensation_s`, but that is a safety net). An actor whose
    work blocks or burns CPU for long sets `dedicated = True` (or subclasses `DedicatedActor`) and
    gets a thread of its own with the same API, stats and guards.
    """

    realtime_backlog_ms: ClassVar[float | None] = None
    """Most real-time audio (sum of `realtime_ms`) that may wait in the mailbox; None: no limit.

    Read on every real-time `put`. For a per-instance limit pass `realtime_backlog_ms=` to
    `PooledActor.__init__`.
    """

    dedicated: ClassVar[bool] = False
    """Run this actor on a thread of its own instead of the shared workers. Read at `start()`."""

    def __init__(self, dispatcher: Dispatcher, *, realtime_backlog_ms: float | None = None) -> None:
        """Bind the actor to `dispatcher`. Runs on the thread calling `start()`.

        Args:
            dispatcher: runs the actor's hooks; must not be shut down.
            realtime_backlog_ms: overrides the class's `realtime_backlog_ms` for this actor.

        Raises:
            RuntimeError: if the dispatcher is shut down.
        """
        dispatcher._check_open()
        super().__init__()
        self._dispatcher = dispatcher
        self._mailbox = cast("Mailbox", self.actor_inbox)
        self._mailbox._actor = self
        self._mailbox._backlog_override = realtime_backlog_ms
        self._started = False
        self._handler_started_at: float | None = None
        self._thread_ident: int | None = None
        self._dropped_reported = (0, 0.0)

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        return Mailbox()

    @staticmethod
    def _create_future() -> Future[Any]:
        return ThreadingFuture()

    def _start_actor_loop(self) -> None:
        try:
            runner = self._dispatcher._attach(self, dedicated=self.dedicated)
        except RuntimeError:
            # start() registered us already; leave no live-looking corpse in the registry.
            ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            closed = self._mailbox._close(abandon=False)
            for envelope in closed[0] if closed else []:
                _reject(envelope, "was never started")
            raise
        self._mailbox._start(runner)

    @property
    def stats(self) -> ActorStats:
        """A snapshot of the mailbox and the running handler. Any thread."""
        return self._mailbox._stats(self._handler_started_at, self._thread_ident)

    def on_dropped(self, count: int, ms: float) -> None:
        """Run code after the mailbox dropped real-time messages (see the module docstring).

        Runs on the actor's thread before its next message, with the drops since the last call.
        If it raises, the actor fails as if a `tell` handler had raised.
        """

    def abandon(self) -> bool:
        """Declare the actor dead now, without waiting for a handler that may never return.

        Any thread (typically a supervisor's). The actor is unregistered, `actor_stopped` is set,
        waiting asks and the running one fail with `ActorDeadError`, and later messages are
        refused. No hook runs: `on_stop`/`on_failure` would race the stuck handler. When that
        handler returns, its result or exception is discarded and the actor never runs again.

        Returns:
            False if the actor was already dead.
        """
        closed = self._mailbox._close(abandon=True)
        if closed is None:
            return False
        waiting, inflight = closed
        started = self._handler_started_at
        ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        self._dispatcher._detach(self)
        if inflight is not None:
            _reject(inflight, "was abandoned while handling the message")
        for envelope in waiting:
            _reject(envelope, "was abandoned before handling the message")
        logger.warning(
            "abandoned %s (handler running for %s)",
            self,
            "-" if started is None else f"{time.monotonic() - started:.1f} s",
        )
        return True

    # -- one turn, on the thread running the actor ---------------------------------------------

    def _run_turn(self, budget: int) -> TurnResult:
        """Run `on_start` if due, then up to `budget` messages. Worker or dedicated thread."""
        mailbox = self._mailbox
        self._thread_ident = threading.get_ident()
        try:
            if not self._started:
                if mailbox._closed:
                    return TurnResult.DONE  # abandoned before it ever ran
                self._started = True
                self._run_on_start()
            for _ in range(budget):
                if mailbox.dropped != self._dropped_reported[0]:  # racy read; exact under lock
                    self._report_drops()
                if self.actor_stopped.is_set():
                    return self._teardown()
                envelope = mailbox._take()
                if envelope is None:
                    return TurnResult.DONE if mailbox._closed else TurnResult.IDLE
                self._handle(envelope)
            if self.actor_stopped.is_set():
                return self._teardown()
            return mailbox._end_turn()
        finally:
            self._thread_ident = None

    def _run_on_start(self) -> None:
        self._handler_started_at = time.monotonic()
        try:
            self.on_start()
        except BaseException:  # noqa: BLE001 -- the BaseException guard, see module docstring
            # pykka: on_start failing logs and stops the actor, without on_failure.
            if not self._mailbox._abandoned:
                self._handle_failure(*sys.exc_info())
        finally:
            self._handler_started_at = None

    def _handle(self, envelope: Envelope[Any]) -> None:
        reply_to = envelope.reply_to
        mailbox = self._mailbox
        self._handler_started_at = time.monotonic()
        try:
            try:
                response = self._handle_receive(envelope.message)
            except Exception:
                if not mailbox._claim():
                    return
                mailbox.handled += 1
                if reply_to is not None:
                    logger.info("Exception returned from %s to caller:", self, exc_info=True)
                    reply_to.set_exception()
                else:
                    self._fail(sys.exc_info())
            except BaseException as exc:  # noqa: BLE001 -- the guard: one actor fails, not all
                if not mailbox._claim():
                    return
                mailbox.handled += 1
                logger.error("%r in %s: stopping this actor only", exc, self)
                if reply_to is not None:
                    error = ActorDeadError(f"{self.actor_ref} failed with {exc!r}")
                    error.__cause__ = exc
                    reply_to.set_exception(exc_info=(ActorDeadError, error, None))
                self._fail(sys.exc_info())
            else:
                if reply_to is not None:
                    if not mailbox._claim():
                        return
                    mailbox.handled += 1  # before the reply, so the asker sees it counted
                    reply_to.set(response)
                else:
                    mailbox.handled += 1
        finally:
            self._handler_started_at = None

    def _report_drops(self) -> None:
        dropped, dropped_ms = self._mailbox._drop_counters()
        count = dropped - self._dropped_reported[0]
        ms = dropped_ms - self._dropped_reported[1]
        self._dropped_reported = (dropped, dropped_ms)
        self._handler_started_at = time.monotonic()
        try:
            self.on_dropped(count, ms)
        except BaseException:  # noqa: BLE001 -- the BaseException guard
            if not self._mailbox._abandoned:
                self._fail(sys.exc_info())
        finally:
            self._handler_started_at = None

    def _fail(self, exc_info: OptExcInfo) -> None:
        """Log, unregister and stop the actor, then run `on_failure` (guarded)."""
        self._handle_failure(*exc_info)
        try:
            self.on_failure(*exc_info)
        except BaseException:  # noqa: BLE001 -- the BaseException guard
            self._handle_failure(*sys.exc_info())

    def _teardown(self) -> TurnResult:
        closed = self._mailbox._close(abandon=False)
        if closed is None:
            return TurnResult.DONE  # abandoned meanwhile: abandon() did the rest
        waiting, _ = closed
        self._dispatcher._detach(self)
        for envelope in waiting:
            _reject(envelope, "stopped before handling the message")
        return TurnResult.DONE


class DedicatedActor(PooledActor):
    """A `PooledActor` on a thread of its own, for handlers that block or run long on the CPU.

    Same API, stats, drop policy and guards; its thread is `<dispatcher>-<Class>-<n>` and exits
    when the actor dies. `dispatcher.shutdown()` stops it with the others.
    """

    dedicated: ClassVar[bool] = True
