"""The pooled actor runtime: pykka semantics on shared workers, plus guards and backpressure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest
from pykka import ActorDeadError, ActorRegistry

from actors.runtime import ActorStats, DedicatedActor, Dispatcher, PooledActor
from tests.timing import MS


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    dispatcher = Dispatcher(threads=2, name="test")
    yield dispatcher
    assert dispatcher.shutdown(timeout=5000 * MS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    seq: int
    ms: float = 20.0

    @property
    def realtime_ms(self) -> float:
        return self.ms


@dataclass(frozen=True, slots=True, kw_only=True)
class Control:
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Raise:
    error: BaseException


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    entered: threading.Event
    release: threading.Event


class Recorder(PooledActor):
    """Records what it handled; raises or blocks on request."""

    def __init__(self, dispatcher: Dispatcher, **kwargs: Any) -> None:
        super().__init__(dispatcher, **kwargs)
        self.seen: list[Any] = []
        self.threads: set[str] = set()
        self.failures: list[BaseException | None] = []
        self.failed = threading.Event()
        self.stopped = threading.Event()
        self.started_on: str | None = None
        self.drops: list[tuple[int, float]] = []

    def on_start(self) -> None:
        self.started_on = threading.current_thread().name

    def on_receive(self, message: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        match message:
            case Raise(error=error):
                raise error
            case Block(entered=entered, release=release):
                entered.set()
                release.wait(10_000 * MS)
                return "unblocked"
            case "seen":
                return list(self.seen)
            case _:
                self.seen.append(message)
                return message

    def on_dropped(self, count: int, ms: float) -> None:
        self.drops.append((count, ms))

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self.failures.append(exception_value)
        self.failed.set()

    def on_stop(self) -> None:
        self.stopped.set()

    def ping(self, value: int) -> int:
        return value + 1


class Backlogged(Recorder):
    realtime_backlog_ms = 100.0


def actor_of(ref: pykka.ActorRef[Any]) -> Any:
    actor = ref._actor_weakref()
    assert actor is not None
    return actor


def threads_named(prefix: str) -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.name.startswith(prefix)}


def test_messages_of_one_actor_stay_in_order_under_concurrent_producers(dispatcher):
    ref = Recorder.start(dispatcher)
    producers = 4
    per_producer = 500

    def produce(producer: int) -> None:
        for n in range(per_producer):
            ref.tell((producer, n))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    seen: list[tuple[int, int]] = ref.ask("seen", block=True, timeout=5000 * MS)
    assert len(seen) == producers * per_producer
    for p in range(producers):
        assert [n for producer, n in seen if producer == p] == list(range(per_producer))
    assert actor_of(ref).stats.handled == producers * per_producer + 1


def test_ask_tell_and_proxy_work_on_pooled_actors(dispatcher):
    ref = Recorder.start(dispatcher)
    ref.tell("told")
    assert ref.ask("asked", timeout=2000 * MS) == "asked"
    proxy = ref.proxy()
    assert proxy.ping(41).get(timeout=2000 * MS) == 42
    assert proxy.seen.get(timeout=2000 * MS) == ["told", "asked"]
    assert ActorRegistry.get_by_urn(ref.actor_urn) is ref
    assert ref.stop(timeout=2000 * MS) is True
    assert actor_of(ref).stopped.is_set()
    assert not ref.is_alive()
    with pytest.raises(ActorDeadError):
        ref.tell("late")
    assert ref.stop(timeout=2000 * MS) is False


def test_hooks_run_on_worker_threads_and_on_start_comes_first(dispatcher):
    ref = Recorder.start(dispatcher)
    ref.ask("flush", timeout=2000 * MS)
    actor = actor_of(ref)
    workers = threads_named("test-") - {"test-monitor"}
    assert actor.started_on in workers
    assert actor.threads <= workers


def test_exception_in_ask_goes_to_the_caller_and_the_actor_lives(dispatcher):
    ref = Recorder.start(dispatcher)
    with pytest.raises(ValueError, match="bad input"):
        ref.ask(Raise(error=ValueError("bad input")), timeout=2000 * MS)
    assert ref.ask("still here", timeout=2000 * MS) == "still here"
    assert actor_of(ref).failures == []


def test_exception_in_tell_stops_that_actor_and_calls_on_failure(dispatcher):
    failing = Recorder.start(dispatcher)
    healthy = Recorder.start(dispatcher)
    actor = actor_of(failing)

    failing.tell(Raise(error=RuntimeError("boom")))
    assert actor.failed.wait(2000 * MS)
    assert actor.actor_stopped.wait(2000 * MS)

    assert isinstance(actor.failures[0], RuntimeError)
    assert not actor.stopped.is_set()  # on_failure replaces on_stop, as in pykka
    assert ActorRegistry.get_by_urn(failing.actor_urn) is None
    with pytest.raises(ActorDeadError):
        failing.ask("after", timeout=2000 * MS)
    assert healthy.ask("fine", timeout=2000 * MS) == "fine"


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_base_exception_fails_only_the_actor_that_raised_it(dispatcher, error):
    failing = Recorder.start(dispatcher)
    healthy = Recorder.start(dispatcher)
    actor = actor_of(failing)

    failing.tell(Raise(error=error))
    assert actor.failed.wait(2000 * MS)

    assert actor.failures == [error]
    assert not failing.is_alive()
    assert healthy.is_alive()
    assert healthy.ask("fine", timeout=2000 * MS) == "fine"
    assert dispatcher.stats()["threads"] >= 2  # the worker survived


def test_base_exception_in_ask_reaches_the_caller_as_actor_dead_error(dispatcher):
    ref = Recorder.start(dispatcher)
    with pytest.raises(ActorDeadError) as raised:
        ref.ask(Raise(error=SystemExit(1)), timeout=2000 * MS)
    assert isinstance(raised.value.__cause__, SystemExit)
    assert actor_of(ref).failed.wait(2000 * MS)
    assert not ref.is_alive()


def test_failing_on_failure_hook_does_not_kill_the_worker(dispatcher):
    class BadFailure(Recorder):
        def on_failure(self, *exc_info: Any) -> None:
            raise SystemExit("from on_failure")

    failing = BadFailure.start(dispatcher)
    failing.tell(Raise(error=ValueError("first")))
    assert actor_of(failing).actor_stopped.wait(2000 * MS)
    others = [Recorder.start(dispatcher) for _ in range(4)]
    assert [ref.ask(n, timeout=2000 * MS) for n, ref in enumerate(others)] == [0, 1, 2, 3]
    assert dispatcher.stats()["threads"] >= 2


def test_on_start_failure_stops_the_actor_without_on_failure(dispatcher):
    class BadStart(Recorder):
        def on_start(self) -> None:
            raise RuntimeError("no engine")

    ref = BadStart.start(dispatcher)
    actor = actor_of(ref)
    assert actor.actor_stopped.wait(2000 * MS)
    assert actor.failures == []
    with pytest.raises(ActorDeadError):
        ref.ask("hello", timeout=2000 * MS)


def test_stop_fails_asks_queued_behind_it(dispatcher):
    release, entered = threading.Event(), threading.Event()
    ref = Recorder.start(dispatcher)
    ref.tell(Block(entered=entered, release=release))
    assert entered.wait(2000 * MS)
    stopped = ref.stop(block=False)
    pending = ref.ask("too late", block=False)
    release.set()
    assert stopped.get(timeout=2000 * MS) is True
    with pytest.raises(ActorDeadError):
        pending.get(timeout=2000 * MS)
    assert actor_of(ref).stopped.is_set()


def test_realtime_backlog_drops_oldest_frames_and_keeps_control_messages(dispatcher):
    release, entered = threading.Event(), threading.Event()
    ref = Backlogged.start(dispatcher)
    actor = actor_of(ref)
    ref.tell(Block(entered=entered, release=release))
    assert entered.wait(2000 * MS)

    # 20 frames of 20 ms with control messages in between; only 100 ms of audio may wait.
    for n in range(20):
        ref.tell(Frame(seq=n))
        if n % 5 == 0:
            ref.tell(Control(seq=n))
    asked = ref.ask(Control(seq=99), block=False)
    stats = actor.stats
    assert stats.dropped == 15
    assert stats.dropped_ms == pytest.approx(300.0)
    assert stats.realtime_backlog_ms == pytest.approx(100.0)
    assert stats.mailbox_depth == 5 + 4 + 1

    release.set()
    assert asked.get(timeout=2000 * MS) == Control(seq=99)
    seen = ref.ask("seen", timeout=2000 * MS)
    assert seen == [
        Control(seq=0),
        Control(seq=5),
        Control(seq=10),
        Frame(seq=15),
        Control(seq=15),
        Frame(seq=16),
        Frame(seq=17),
        Frame(seq=18),
        Frame(seq=19),
        Control(seq=99),
    ]
    assert actor.drops == [(15, pytest.approx(300.0))]


def test_realtime_frames_interleave_with_control_messages_in_send_order(dispatcher):
    ref = Backlogged.start(dispatcher)
    sent = [Frame(seq=0), Control(seq=1), Frame(seq=2), Control(seq=3), Frame(seq=4)]
    for message in sent:
        ref.tell(message)
    assert ref.ask("seen", timeout=2000 * MS) == sent
    assert actor_of(ref).stats.dropped == 0


def test_backlog_keeps_the_newest_frame_even_if_it_alone_exceeds_the_limit(dispatcher):
    release, entered = threading.Event(), threading.Event()
    ref = Recorder.start(dispatcher, realtime_backlog_ms=10.0)
    ref.tell(Block(entered=entered, release=release))
    assert entered.wait(2000 * MS)
    for n in range(3):
        ref.tell(Frame(seq=n))
    release.set()
    assert ref.ask("seen", timeout=2000 * MS) == [Frame(seq=2)]
    assert actor_of(ref).stats.dropped == 2


def test_asks_with_realtime_messages_are_never_dropped(dispatcher):
    release, entered = threading.Event(), threading.Event()
    ref = Backlogged.start(dispatcher)
    ref.tell(Block(entered=entered, release=release))
    assert entered.wait(2000 * MS)
    futures = [ref.ask(Frame(seq=n), block=False) for n in range(10)]
    release.set()
    assert [f.get(timeout=2000 * MS) for f in futures] == [Frame(seq=n) for n in range(10)]
    assert actor_of(ref).stats.dropped == 0


def test_stats_show_backlog_age_and_the_running_handler(dispatcher):
    release, entered = threading.Event(), threading.Event()
    ref = Recorder.start(dispatcher)
    actor = actor_of(ref)
    idle = actor.stats
    assert isinstance(idle, ActorStats)
    assert idle.handler_started_at is None
    assert idle.thread_ident is None
    assert idle.oldest_age_s(time.monotonic()) == 0.0

    before = time.monotonic()
    ref.tell(Block(entered=entered, release=release))
    assert entered.wait(2000 * MS)
    ref.tell("queued")
    busy = actor.stats
    release.set()

    assert busy.handler_started_at is not None
    assert busy.handler_started_at >= before
    assert busy.thread_ident in {
        t.ident for t in threading.enumerate() if t.name.startswith("test")
    }
    assert busy.mailbox_depth == 1
    assert busy.oldest_enqueued_at is not None
    assert busy.oldest_age_s(busy.oldest_enqueued_at + 1.5) == pytest.approx(1.5)


def test_stalled_handler_gets_a_compensating_worker_so_others_keep_flowing():
    dispatcher = Dispatcher(threads=2, name="test-stall", stall_compensation_s=0.1)
    releases = [threading.Event(), threading.Event()]
    stuck = [Recorder.start(dispatcher), Recorder.start(dispatcher)]
    for ref, release in zip(stuck, releases, strict=True):
        entered = threading.Event()
        ref.tell(Block(entered=entered, release=release))
        assert entered.wait(2000 * MS)
    # Both original workers are now blocked; only compensating workers can serve these.
    others = [Recorder.start(dispatcher) for _ in range(10)]
    replies = [ref.ask(n, block=False) for n, ref in enumerate(others)]
    try:
        assert [reply.get(timeout=3000 * MS) for reply in replies] == list(range(10))
        assert dispatcher.stats()["compensating"] >= 1
    finally:
        for release in releases:
            release.set()
    for ref in stuck:
        ref.ask("flush", timeout=2000 * MS)
    deadline = time.monotonic() + 3000 * MS
    while dispatcher.stats()["threads"] > 2 and time.monotonic() < deadline:
        time.sleep(10 * MS)  # polling a pool size the monitor shrinks on its own tick
    assert dispatcher.stats()["threads"] == 2
    assert dispatcher.stats()["compensating"] == 0
    assert dispatcher.shutdown(timeout=5000 * MS)


def test_compensation_is_capped():
    dispatcher = Dispatcher(
        threads=1, name="test-cap", stall_compensation_s=0.05, max_compensating_threads=1
    )
    try:
        releases = []
        for _ in range(3):
            release, entered = threading.Event(), threading.Event()
            ref = Recorder.start(dispatcher)
            ref.tell(Block(entered=entered, release=release))
            releases.append(release)
            if len(releases) <= 2:
                assert entered.wait(2000 * MS)
        deadline = time.monotonic() + 1000 * MS
        while dispatcher.stats()["stalled"] < 2 and time.monotonic() < deadline:
            time.sleep(10 * MS)
        stats = dispatcher.stats()
        assert stats["threads"] == 2
        assert stats["compensating"] == 1
    finally:
        for release in releases:
            release.set()
        assert dispatcher.shutdown(timeout=5000 * MS)


def test_abandon_kills_a_stuck_actor_at_once_and_discards_its_late_result(dispatcher):
    release, entered = threading.Event(), threading.Event()
    ref = Recorder.start(dispatcher)
    actor = actor_of(ref)
    in_flight = ref.ask(Block(entered=entered, release=release), block=False)
    assert entered.wait(2000 * MS)
    waiting = ref.ask("waiting", block=False)
    ref.tell(Raise(error=RuntimeError("never raised")))

    assert actor.abandon() is True

    assert not ref.is_alive()
    assert ActorRegistry.get_by_urn(ref.actor_urn) is None
    with pytest.raises(ActorDeadError):
        in_flight.get(timeout=2000 * MS)
    with pytest.raises(ActorDeadError):
        waiting.get(timeout=2000 * MS)
    with pytest.raises(ActorDeadError):
        ref.tell("late")
    assert actor.abandon() is False

    # The stuck handler now returns: its reply is discarded and nothing else runs.
    release.set()
    deadline = time.monotonic() + 2000 * MS
    while actor.stats.thread_ident is not None and time.monotonic() < deadline:
        time.sleep(5 * MS)
    assert actor.stats.thread_ident is None
    assert actor.failures == []
    assert not actor.stopped.is_set()
    assert actor.seen == []
    assert dispatcher.stats()["actors"] == 0


def test_dedicated_actor_runs_on_its_own_thread_with_the_same_api(dispatcher):
    class Worker(DedicatedActor, Recorder):
        pass

    ref = Worker.start(dispatcher)
    release, entered = threading.Event(), threading.Event()
    ref.tell(Block(entered=entered, release=release))
    assert entered.wait(2000 * MS)
    # Blocking it holds none of the shared workers.
    assert Recorder.start(dispatcher).ask("pooled", timeout=2000 * MS) == "pooled"
    release.set()
    assert ref.proxy().ping(1).get(timeout=2000 * MS) == 2
    actor = actor_of(ref)
    (thread_name,) = actor.threads
    assert thread_name.startswith("test-Worker-")
    assert actor.started_on == thread_name
    assert dispatcher.stats()["dedicated_threads"] == 1
    assert dispatcher.stats()["compensating"] == 0
    ref.stop(timeout=2000 * MS)
    assert actor.stats.handled == 3


def test_abandoned_idle_dedicated_actor_releases_its_thread(dispatcher):
    class Worker(DedicatedActor, Recorder):
        pass

    ref = Worker.start(dispatcher)
    ref.ask("flush", timeout=2000 * MS)
    (name,) = actor_of(ref).threads
    thread = next(t for t in threading.enumerate() if t.name == name)
    assert actor_of(ref).abandon()
    thread.join(2000 * MS)
    assert not thread.is_alive()


def test_shutdown_stops_actors_joins_threads_and_is_idempotent():
    baseline = threading.active_count()
    dispatcher = Dispatcher(threads=3, name="test-down")
    refs = [Recorder.start(dispatcher) for _ in range(5)]
    actors = [actor_of(ref) for ref in refs]
    assert threading.active_count() == baseline + 4  # 3 workers and the monitor

    assert dispatcher.shutdown(timeout=5000 * MS)
    assert dispatcher.shutdown(timeout=5000 * MS)

    assert all(actor.stopped.is_set() for actor in actors)
    assert not any(ref.is_alive() for ref in refs)
    assert threading.active_count() == baseline
    with pytest.raises(RuntimeError, match="shut down"):
        Recorder.start(dispatcher)


def test_shutdown_abandons_an_actor_stuck_past_the_timeout():
    dispatcher = Dispatcher(threads=1, name="test-stuck")
    release, entered = threading.Event(), threading.Event()
    ref = Recorder.start(dispatcher)
    ref.tell(Block(entered=entered, release=release))
    assert entered.wait(2000 * MS)
    try:
        assert dispatcher.shutdown(timeout=200 * MS) is False
        assert not ref.is_alive()
    finally:
        release.set()


def test_a_thousand_actors_share_two_threads():
    # No monitor: on a loaded CI box a descheduled worker could look stalled and be compensated.
    dispatcher = Dispatcher(threads=2, name="test-1k", stall_compensation_s=None)
    before = threading.active_count()
    refs = [Recorder.start(dispatcher) for _ in range(1000)]
    assert threading.active_count() == before
    for _ in range(5):
        for n, ref in enumerate(refs):
            ref.tell(n)
    replies = [ref.ask("seen", block=False) for ref in refs]
    assert [reply.get(timeout=5000 * MS) for reply in replies] == [[n] * 5 for n in range(1000)]
    assert threads_named("test-1k") == {"test-1k-0", "test-1k-1"}
    assert dispatcher.stats()["actors"] == 1000
    assert dispatcher.shutdown(timeout=10_000 * MS)


def test_a_parked_worker_is_woken_when_the_active_one_is_inside_a_long_handler():
    # No monitor: only the wake rule at submit time can bring in the second worker.
    dispatcher = Dispatcher(threads=2, name="test-help", stall_compensation_s=None, help_after_s=0)
    release, entered = threading.Event(), threading.Event()
    try:
        blocked = Recorder.start(dispatcher)
        blocked.tell(Block(entered=entered, release=release))
        assert entered.wait(2000 * MS)
        assert Recorder.start(dispatcher).ask("served", timeout=2000 * MS) == "served"
    finally:
        release.set()
        assert dispatcher.shutdown(timeout=5000 * MS)
