"""Lanes over bounded pools: order per stream, light jobs inline, cancel, errors, shutdown."""

from __future__ import annotations

import threading

from mediaserver.engines.executors import EngineExecutors, Lane, PoolClosed
from tests.timing import MS


def test_a_lanes_jobs_run_one_at_a_time_in_order_on_the_pool(executors):
    done = threading.Event()
    ran: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lane = Lane(executors.syntheses, on_error=errors.append)
    for i in range(5):

        def job(i: int = i) -> None:
            ran.append((i, threading.current_thread().name))

        lane.submit(job)
    lane.submit(done.set)
    assert done.wait(2000 * MS)
    assert [i for i, _ in ran] == [0, 1, 2, 3, 4]
    assert all(name.startswith("offline-tts") for _, name in ran)
    assert errors == []


def test_a_light_job_runs_inline_when_idle_and_waits_its_turn_when_busy(executors):
    gate, threads = threading.Event(), list[str]()
    lane = Lane(executors.transcriptions, on_error=lambda exc: None)
    lane.submit(lambda: threads.append(threading.current_thread().name), light=True)
    assert threads == [threading.current_thread().name]  # ran right here

    lane.submit(gate.wait)
    lane.submit(lambda: threads.append(threading.current_thread().name), light=True)
    assert len(threads) == 1  # waits behind the running job
    gate.set()
    executors.transcriptions.submit(lambda: None).result()  # one worker, FIFO
    assert threads[1].startswith("offline-stt")


def test_cancel_drops_queued_jobs_and_one_not_yet_started(executors):
    gate, ran = threading.Event(), []
    other = Lane(executors.syntheses, on_error=lambda exc: None)
    other.submit(gate.wait)  # occupies the only worker
    lane = Lane(executors.syntheses, on_error=lambda exc: None)
    lane.submit(lambda: ran.append("waiting in the pool"))
    lane.submit(lambda: ran.append("queued in the lane"))
    lane.cancel()
    lane.submit(lambda: ran.append("after cancel"))
    gate.set()
    executors.syntheses.submit(lambda: None).result()
    assert ran == []


def test_a_failing_job_is_reported_and_the_next_one_still_runs(executors):
    errors: list[BaseException] = []
    done = threading.Event()
    lane = Lane(executors.syntheses, on_error=errors.append)

    def broken() -> None:
        raise ValueError("bad input")

    lane.submit(broken)
    lane.submit(done.set)
    assert done.wait(2000 * MS)
    assert [str(e) for e in errors] == ["bad input"]


def test_after_shutdown_a_job_is_refused_through_on_error():
    pools = EngineExecutors(transcriptions=1, syntheses=1)
    pools.close()
    errors: list[BaseException] = []
    lane = Lane(pools.transcriptions, on_error=errors.append)
    lane.submit(lambda: None)
    assert len(errors) == 1 and isinstance(errors[0], PoolClosed)
