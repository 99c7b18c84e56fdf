"""Dispatcher: a few worker threads that run many actors, with stall compensation.

The dispatcher knows nothing about messages. It moves *actors* between a run queue and its worker
threads: a mailbox that receives a message while its actor is idle submits the actor once; a
worker takes it, calls `actor._run_turn(budget)` (up to `budget` messages, see `actors.runtime`),
and puts it back at the tail of the run queue if messages are still waiting. An actor is on the run
queue or on a worker at most once at a time, so it is run by one thread at a time and sees its
messages in order.

Waking workers lazily (Go's scheduler does the same): under the GIL, two threads running Python
do not run in parallel, they take turns, and every hand-off costs a futex wake and a GIL
convoy. Waking a parked worker for every submitted actor made the 300-call benchmark spend ~25 %
more CPU and pushed p99 from ~2 ms to 3-37 ms compared with one worker. So a submit wakes a parked
worker only if no worker is active, or if every active worker has been inside one handler for
more than `help_after_s` (it may be blocked in C or I/O with the GIL released), or if the run
queue is longer than `help_queue_depth` per active worker. Otherwise the active worker takes the
actor after its current turn. Parked workers block on a lock of their own; nothing polls.

Stall compensation (ForkJoinPool style): a handler that blocks (a hung engine call, `time.sleep`)
would hold a shared worker forever and starve every actor behind it. A monitor thread wakes every
`stall_compensation_s / 4` and counts the workers that have been inside one handler for longer than
`stall_compensation_s`. The pool is kept at `threads + stalled` workers (at most
`max_compensating_threads` extra), so `threads` workers are always free to run the other actors.
When a stalled handler returns, the next worker to find the run queue empty exits instead of
parking, bringing the pool back to its target size. The monitor also applies the wake rule above,
in case no submit came along to do it.

Threads: workers are named `<name>-<n>`, the monitor `<name>-monitor`, and the thread of a
dedicated actor `<name>-<ActorClass>-<n>`. They are daemon threads, so a handler stuck forever
cannot keep the process alive after `shutdown()` gave up on it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections import deque
from itertools import count
from queue import SimpleQueue
from typing import Protocol

from pykka import ActorDeadError

__all__ = ["Dispatcher", "TurnResult"]

logger = logging.getLogger(__name__)

DEFAULT_MESSAGES_PER_TURN = 32
DEFAULT_MAX_COMPENSATING_THREADS = 64
DEFAULT_HELP_AFTER_S = 0.002
DEFAULT_HELP_QUEUE_DEPTH = 32


class TurnResult(enum.Enum):
    """What a worker does with an actor after one turn."""

    IDLE = enum.auto()
    """The mailbox is empty: the actor leaves the run queue until its next message."""
    MORE = enum.auto()
    """The turn's budget is spent and messages are waiting: requeue the actor at the tail."""
    DONE = enum.auto()
    """The actor is dead (stopped, failed or abandoned) and must never run again."""


class _Signal(enum.Enum):
    STOP = enum.auto()


class Runnable(Protocol):
    """The side of an actor the dispatcher drives (implemented by `PooledActor`)."""

    @property
    def actor_urn(self) -> str: ...

    @property
    def _handler_started_at(self) -> float | None: ...

    def _run_turn(self, budget: int) -> TurnResult: ...

    def stop(self) -> None: ...

    def abandon(self) -> bool: ...


class Runner(Protocol):
    """Where a mailbox submits its actor when a message arrives while the actor is idle."""

    def submit(self, actor: Runnable) -> None: ...


class _Worker:
    __slots__ = ("actor", "parked", "thread", "wake")

    def __init__(self) -> None:
        self.actor: Runnable | None = None
        self.thread: threading.Thread | None = None
        self.parked = False
        # A binary semaphore: a parked worker blocks acquiring it; its waker releases it once.
        self.wake = threading.Lock()
        self.wake.acquire()


class _DedicatedRunner:
    """One thread for one actor that may block (`PooledActor.dedicated = True`)."""

    def __init__(self, dispatcher: Dispatcher, name: str) -> None:
        self._dispatcher = dispatcher
        self._queue: SimpleQueue[Runnable | _Signal] = SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def submit(self, actor: Runnable) -> None:
        self._queue.put(actor)

    def close(self) -> None:
        self._queue.put(_Signal.STOP)

    def _run(self) -> None:
        budget = self._dispatcher.messages_per_turn
        while True:
            item = self._queue.get()
            if isinstance(item, _Signal):
                break
            result = _run_guarded(item, budget)
            if result is TurnResult.DONE:
                break
            if result is TurnResult.MORE:
                self._queue.put(item)
        self._dispatcher._dedicated_exited(self)


def _run_guarded(actor: Runnable, budget: int) -> TurnResult:
    """Run one turn; a bug in the runtime kills that actor, never the thread."""
    try:
        return actor._run_turn(budget)
    except BaseException:
        logger.exception("runtime error while running %s; abandoning it", actor)
        try:
            actor.abandon()
        except BaseException:
            logger.exception("could not abandon %s", actor)
        return TurnResult.DONE


class Dispatcher:
    """A pool of worker threads shared by many `PooledActor`s; starts its threads at once.

    Args:
        threads: target number of worker threads (not counting compensating ones).
        name: thread name prefix: workers are `<name>-0`, `<name>-1`, ...
        stall_compensation_s: a handler running longer than this gets a compensating worker
            started beside it; `None` disables compensation (and the monitor thread).
        max_compensating_threads: cap on the extra workers alive at once.
        messages_per_turn: how many messages an actor handles before it yields its worker.
        help_after_s: wake a parked worker for new work once every active worker has been in
            its current handler this long.
        help_queue_depth: wake a parked worker when more actors than this per active worker
            wait on the run queue.
    """

    def __init__(
        self,
        threads: int = 2,
        name: str = "actors",
        *,
        stall_compensation_s: float | None = 0.5,
        max_compensating_threads: int = DEFAULT_MAX_COMPENSATING_THREADS,
        messages_per_turn: int = DEFAULT_MESSAGES_PER_TURN,
        help_after_s: float = DEFAULT_HELP_AFTER_S,
        help_queue_depth: int = DEFAULT_HELP_QUEUE_DEPTH,
    ) -> None:
        if threads < 1:
            msg = f"threads must be >= 1, got {threads}"
            raise ValueError(msg)
        if messages_per_turn < 1:
            msg = f"messages_per_turn must be >= 1, got {messages_per_turn}"
            raise ValueError(msg)
        self.name = name
        self.messages_per_turn = messages_per_turn
        self._threads = threads
        self._stall_s = stall_compensation_s
        self._max_extra = max_compensating_threads
        self._help_after_s = help_after_s
        self._help_queue_depth = help_queue_depth
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._run_queue: deque[Runnable] = deque()
        self._thread_numbers = count()
        self._workers: list[_Worker] = []
        self._parked: list[_Worker] = []  # a stack: the most recently parked is the warmest
        self._desired = threads
        self._stop_workers = False
        self._stalled = 0
        self._compensations = 0
        # Insertion order is start order; shutdown stops actors in reverse, like pykka's stop_all.
        self._actors: dict[str, tuple[Runnable, _DedicatedRunner | None]] = {}
        self._dedicated: set[_DedicatedRunner] = set()
        self._closed = False
        self._stopping = threading.Event()
        with self._lock:
            for _ in range(threads):
                self._spawn_worker_locked()
        self._monitor: threading.Thread | None = None
        if stall_compensation_s is not None:
            self._monitor = threading.Thread(
                target=self._watch_for_stalls, name=f"{name}-monitor", daemon=True
            )
            self._monitor.start()

    def __repr__(self) -> str:
        return f"<Dispatcher {self.name!r} threads={self._threads}>"

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.shutdown()

    # -- the side actors use ------------------------------------------------------------------

    def submit(self, actor: Runnable) -> None:
        """Put an actor on the run queue. Any thread; called by its mailbox, once per idle spell."""
        with self._lock:
            self._run_queue.append(actor)
            helper = self._helper_locked() if self._parked else None
        if helper is not None:
            helper.wake.release()

    def _helper_locked(self) -> _Worker | None:
        """Unpark a worker if the active ones won't get to the run queue soon (module docstring)."""
        active = len(self._workers) - len(self._parked)
        if active == 0 or len(self._run_queue) > active * self._help_queue_depth:
            return self._unpark_locked()
        now = 0.0
        for worker in self._workers:
            if worker.parked:
                continue
            actor = worker.actor
            started = actor._handler_started_at if actor is not None else None
            if started is None:
                return None  # between turns or handlers: it will look at the queue next
            if not now:
                now = time.monotonic()
            if now - started < self._help_after_s:
                return None
        return self._unpark_locked()

    def _unpark_locked(self) -> _Worker:
        worker = self._parked.pop()
        worker.parked = False
        return worker

    def _check_open(self) -> None:
        if self._closed:
            msg = f"{self!r} is shut down"
            raise RuntimeError(msg)

    def _attach(self, actor: Runnable, *, dedicated: bool) -> Runner:
        """Adopt a starting actor; return where its mailbox submits it. Runs in `start()`."""
        runner: _DedicatedRunner | None = None
        with self._lock:
            self._check_open()
            if dedicated:
                number = next(self._thread_numbers)
                runner = _DedicatedRunner(self, f"{self.name}-{type(actor).__name__}-{number}")
                self._dedicated.add(runner)
            self._actors[actor.actor_urn] = (actor, runner)
        if runner is None:
            return self
        runner.thread.start()
        return runner

    def _detach(self, actor: Runnable) -> None:
        """Forget a dead actor (after its teardown, or when abandoned). Any thread."""
        with self._lock:
            _, runner = self._actors.pop(actor.actor_urn, (None, None))
            self._changed.notify_all()
        if runner is not None:
            # Wakes the thread if the actor was abandoned while idle; otherwise a no-op.
            runner.close()

    def _dedicated_exited(self, runner: _DedicatedRunner) -> None:
        with self._lock:
            self._dedicated.discard(runner)

    # -- workers -------------------------------------------------------------------------------

    def _spawn_worker_locked(self) -> None:
        worker = _Worker()
        worker.thread = threading.Thread(
            target=self._work,
            args=(worker,),
            name=f"{self.name}-{next(self._thread_numbers)}",
            daemon=True,
        )
        self._workers.append(worker)
        worker.thread.start()

    def _work(self, worker: _Worker) -> None:
        budget = self.messages_per_turn
        while True:
            with self._lock:
                if self._run_queue:
                    actor: Runnable | None = self._run_queue.popleft()
                elif self._stop_workers or len(self._workers) > self._desired:
                    # Shut down, or a stalled handler returned: leave in this critical
                    # section, so no other worker counts this one and leaves too.
                    self._workers.remove(worker)
                    self._changed.notify_all()
                    return
                else:
                    actor = None
                    worker.parked = True
                    self._parked.append(worker)
            if actor is None:
                worker.wake.acquire()
                continue
            worker.actor = actor
            result = _run_guarded(actor, budget)
            worker.actor = None
            if result is TurnResult.MORE:
                self.submit(actor)

    def _watch_for_stalls(self) -> None:
        assert self._stall_s is not None
        tick = self._stall_s / 4
        while not self._stopping.wait(tick):
            self._rebalance(time.monotonic())

    def _rebalance(self, now: float) -> None:
        """Size the pool to `threads` + stalled workers. Runs on the monitor thread."""
        assert self._stall_s is not None
        with self._lock:
            stalled: list[Runnable] = []
            for worker in self._workers:
                actor = worker.actor
                started = actor._handler_started_at if actor is not None else None
                if actor is not None and started is not None and now - started >= self._stall_s:
                    stalled.append(actor)
            newly_stalled = len(stalled) > self._stalled
            self._stalled = len(stalled)
            self._desired = self._threads + min(len(stalled), self._max_extra)
            live = len(self._workers)
            for _ in range(self._desired - live):
                self._spawn_worker_locked()
                self._compensations += 1
            to_wake = []
            if live > self._desired and self._parked:
                to_wake.append(self._unpark_locked())  # it finds the pool too big and leaves
            if self._run_queue and self._parked:
                helper = self._helper_locked()
                if helper is not None:
                    to_wake.append(helper)
            if newly_stalled:
                logger.warning(
                    "%s: %d handler(s) running for over %.1f s (%s); pool now %d threads%s",
                    self.name,
                    len(stalled),
                    self._stall_s,
                    ", ".join(str(actor) for actor in stalled),
                    len(self._workers),
                    " (compensation capped)" if len(stalled) > self._max_extra else "",
                )
        for worker in to_wake:
            worker.wake.release()

    # -- observability and shutdown ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A snapshot of the pool. Any thread; holds the dispatcher lock briefly."""
        with self._lock:
            return {
                "threads": len(self._workers),
                "target_threads": self._threads,
                "run_queue": len(self._run_queue),
                "busy": sum(worker.actor is not None for worker in self._workers),
                "parked": len(self._parked),
                "stalled": self._stalled,
                "compensating": max(0, len(self._workers) - self._threads),
                "compensations_total": self._compensations,
                "dedicated_threads": len(self._dedicated),
                "actors": len(self._actors),
            }

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Stop this dispatcher's actors, then its threads; idempotent.

        Asks every live actor to stop (newest first; each runs `on_stop` on its thread), waits for
        the run queue to drain, then stops the workers. Actors still alive at the deadline (a
        handler stuck) are abandoned, so no `ask` or `stop()` on them hangs. Call it from outside
        the dispatcher's own threads.

        Returns:
            True if every actor stopped and every thread exited within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            own = {worker.thread for worker in self._workers}
            own |= {runner.thread for runner in self._dedicated}
            if threading.current_thread() in own:
                msg = f"{self!r}.shutdown() called from one of its own threads"
                raise RuntimeError(msg)
            if self._closed:
                return True
            self._closed = True
            actors = [actor for actor, _ in self._actors.values()]
        for actor in reversed(actors):
            with contextlib.suppress(ActorDeadError):  # it died meanwhile: fine
                actor.stop()
        with self._lock:
            self._changed.wait_for(lambda: not self._actors, _remaining(deadline))
            leftovers = [actor for actor, _ in self._actors.values()]
        for actor in leftovers:
            logger.warning("%s: abandoning %s, still running at shutdown", self.name, actor)
            actor.abandon()
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(_remaining(deadline))
        with self._lock:
            threads = [worker.thread for worker in self._workers]
            threads += [runner.thread for runner in self._dedicated]
            # Active workers leave when they find the run queue empty; wake the parked ones.
            self._stop_workers = True
            parked, self._parked = self._parked, []
            for worker in parked:
                worker.parked = False
        for worker in parked:
            worker.wake.release()
        for thread in threads:
            assert thread is not None
            thread.join(_remaining(deadline))
        clean = not leftovers and not any(thread.is_alive() for thread in threads if thread)
        if not clean:
            logger.warning("%s: shutdown left threads behind: %s", self.name, self.stats())
        return clean


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
