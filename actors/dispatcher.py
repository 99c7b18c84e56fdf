"""Dispatcher: a few worker threads that run many actors, with stall compensation.

The dispatcher knows nothing about messages. It moves *actors* between a run queue and its worker
threads: a mailbox that receives a message while its actor is idle submits the actor once; a
worker takes it, calls `actor._run_turn(budget)` (up to `budget` messages, see `actors.runtime`),
and puts it back at the tail of the run queue if messages are still waiting. An actor is on the run
queue or on a worker at most once at a time, so it is run by one thread at a time and sees its
messages in order. Idle workers block in `SimpleQueue.get()`; nothing polls.

Stall compensation (ForkJoinPool style): a handler that blocks (a hung engine call, `time.sleep`)
would hold a shared worker forever and starve every actor behind it. A monitor thread wakes every
`stall_compensation_s / 4` and counts the workers that have been inside one handler for longer than
`stall_compensation_s`. The pool is kept at `threads + stalled` workers (at most
`max_compensating_threads` extra), so `threads` workers are always free to run the other actors.
When a stalled handler returns, the monitor puts a retire signal on the run queue and the first
worker to take it exits, bringing the pool back to its target size.

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
from itertools import count
from queue import SimpleQueue
from typing import Protocol

from pykka import ActorDeadError

__all__ = ["Dispatcher", "TurnResult"]

logger = logging.getLogger(__name__)

DEFAULT_MESSAGES_PER_TURN = 32
DEFAULT_MAX_COMPENSATING_THREADS = 64


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
    RETIRE = enum.auto()


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
    __slots__ = ("actor", "thread")

    def __init__(self) -> None:
        self.actor: Runnable | None = None
        self.thread: threading.Thread | None = None


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
        actor.abandon()
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
    """

    def __init__(
        self,
        threads: int = 2,
        name: str = "actors",
        *,
        stall_compensation_s: float | None = 0.5,
        max_compensating_threads: int = DEFAULT_MAX_COMPENSATING_THREADS,
        messages_per_turn: int = DEFAULT_MESSAGES_PER_TURN,
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
        self._run_queue: SimpleQueue[Runnable | _Signal] = SimpleQueue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread_numbers = count()
        self._workers: list[_Worker] = []
        self._desired = threads
        self._retiring = 0
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
        self._run_queue.put(actor)

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
        run_queue = self._run_queue
        budget = self.messages_per_turn
        while True:
            item = run_queue.get()
            if isinstance(item, _Signal):
                with self._lock:
                    if item is _Signal.RETIRE:
                        self._retiring -= 1
                        if len(self._workers) <= self._desired:
                            continue  # a handler stalled again meanwhile: stay
                    # Leave the list in the same critical section, so no other worker
                    # counts this one and retires too.
                    self._workers.remove(worker)
                    self._changed.notify_all()
                    return
            worker.actor = item
            result = _run_guarded(item, budget)
            worker.actor = None
            if result is TurnResult.MORE:
                run_queue.put(item)

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
            excess = live - self._retiring - self._desired
            for _ in range(excess):
                self._retiring += 1
                self._run_queue.put(_Signal.RETIRE)

    # -- observability and shutdown ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A snapshot of the pool. Any thread; holds the dispatcher lock briefly."""
        with self._lock:
            return {
                "threads": len(self._workers),
                "target_threads": self._threads,
                "run_queue": self._run_queue.qsize(),
                "busy": sum(worker.actor is not None for worker in self._workers),
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
            for _ in self._workers:
                self._run_queue.put(_Signal.STOP)
        for thread in threads:
            assert thread is not None
            thread.join(_remaining(deadline))
        clean = not leftovers and not any(thread.is_alive() for thread in threads if thread)
        if not clean:
            logger.warning("%s: shutdown left threads behind: %s", self.name, self.stats())
        return clean


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
