"""Worker threads of the embedded engines: bounded pools the edge owns, and per-stream lanes.

    EngineExecutors   three pools shared by every call: transcriptions (Whisper), syntheses
                      (Piper, espeak-ng), loading (model loads, warm-up, spare VAD models)
    Lane              one stream's jobs, one at a time and in order, on one of those pools

The pools bound how much CPU the embedded engines take (`offline.max_concurrent_transcriptions`,
`offline.max_concurrent_syntheses`); work beyond the bound waits in the pool's FIFO queue. A lane
submits a stream's next job only when its previous one is done, so a stream's results stay in
order and a long reply does not fill the queue ahead of other calls: each call's jobs take turns.

Threads: `Lane.submit` and `Lane.cancel` are called on an actor's thread and only queue work.
A job runs on a pool's worker thread, or, for a "light" job (no real work, such as delivering an
empty transcript) submitted to an idle lane, right on the caller's thread. A job that raises is
logged with its traceback and handed to the lane's `on_error`, on the worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.settings import OfflineSettings

logger = logging.getLogger(__name__)

Job = Callable[[], object]


class PoolClosed(RuntimeError):
    """A job was submitted after the pools were shut down (the server is stopping)."""


class EngineExecutors:
    """The bounded worker pools of the embedded engines, one set per process.

    Built by the composition root (through `EngineCatalog`), closed once at shutdown.
    """

    def __init__(self, *, transcriptions: int, syntheses: int) -> None:
        self.transcriptions: Executor = ThreadPoolExecutor(
            transcriptions, thread_name_prefix="offline-stt"
        )
        self.syntheses: Executor = ThreadPoolExecutor(syntheses, thread_name_prefix="offline-tts")
        self.loading: Executor = ThreadPoolExecutor(1, thread_name_prefix="offline-load")
        self.transcription_workers = transcriptions
        self.synthesis_workers = syntheses

    @classmethod
    def from_settings(cls, offline: OfflineSettings) -> EngineExecutors:
        return cls(
            transcriptions=offline.max_concurrent_transcriptions,
            syntheses=offline.max_concurrent_syntheses,
        )

    def close(self) -> None:
        """Drop queued jobs and wait for running ones (blocks: call it off the event loop)."""
        for pool in (self.transcriptions, self.syntheses, self.loading):
            pool.shutdown(wait=True, cancel_futures=True)


class Lane:
    """Runs one stream's jobs one after another, in submission order, on a shared pool."""

    def __init__(self, pool: Executor, *, on_error: Callable[[BaseException], None]) -> None:
        self._pool = pool
        self._on_error = on_error
        self._lock = threading.Lock()
        self._queue: deque[tuple[Job, bool]] = deque()
        self._busy = False  # a job is running or waiting in the pool
        self._future: Future[None] | None = None
        self.cancelled = False

    def submit(self, job: Job, *, light: bool = False) -> None:
        """Run `job` after this lane's earlier jobs; a no-op once cancelled.

        A light job does no real work: if the lane is idle it runs right here, on the caller's
        thread, instead of waiting behind other calls' jobs in the pool.
        """
        with self._lock:
            if self.cancelled:
                return
            if self._busy:
                self._queue.append((job, light))
                return
            self._busy = True
        if light:
            self._run(job)
        else:
            self._dispatch(job)

    def cancel(self) -> None:
        """Drop the queued jobs, and the one waiting in the pool if it has not started.

        A job already running finishes; its stream must not deliver its result.
        """
        with self._lock:
            self.cancelled = True
            self._queue.clear()
            future = self._future
        if future is not None:
            future.cancel()

    def _dispatch(self, job: Job) -> None:
        try:
            future = self._pool.submit(self._run, job)
        except RuntimeError:  # the pool is shut down: the server is stopping
            with self._lock:
                self._busy = False
            self._on_error(PoolClosed("the engine's worker pool is shut down"))
            return
        with self._lock:
            self._future = future

    def _run(self, job: Job) -> None:
        while True:
            if self.cancelled:
                return
            try:
                job()
            except Exception as exc:
                logger.exception("engine job failed")
                self._on_error(exc)
            with self._lock:
                if self.cancelled or not self._queue:
                    self._busy = False
                    self._future = None
                    return
                job, light = self._queue.popleft()
            if not light:
                self._dispatch(job)  # back of the pool's queue: other calls take their turn
                return
