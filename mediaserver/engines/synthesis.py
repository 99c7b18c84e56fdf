"""Sentence-at-a-time speech synthesis as a TtsEngine, for the embedded voices (Piper, espeak-ng).

    Speech         PCM16 mono audio and its rate
    SentenceTts    the TtsEngine over any blocking `synthesize(text) -> Speech` function
    SpeechStream   one reply: sentences in, `SpeechChunk`s in order, then `SpeechFinished`

Each `send(sentence)` queues the synthesis of that sentence on the `syntheses` pool
(`offline.max_concurrent_syntheses` workers); a reply's sentences run one after another, each
in its turn with other calls' sentences. A sentence's audio goes out as chunks of at most
`CHUNK_MS`, so the transport can start playing, and a barge-in can cut in, at chunk boundaries.
After `finalize()` and the last chunk comes one `SpeechFinished`. `cancel()` drops the queued
sentences and stops delivery, even mid-sentence.

Threads: the stream's methods run on the Responder's dispatcher thread and return at once;
synthesis runs on a pool worker, which calls the sink. A synthesis failure becomes
`EngineFailed(gave_up=True)` and ends the stream (the reply goes on as text).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from actors.call_context import call_log
from actors.engines import EngineFailed, Sink, SpeechChunk, SpeechFinished
from mediaserver.engines.executors import Lane

if TYPE_CHECKING:
    from concurrent.futures import Executor

CHUNK_MS = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Speech:
    """Synthesized audio: PCM16 mono at `sample_rate`."""

    pcm: bytes
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


Synthesize = Callable[[str], Speech]
"""Text -> its audio; blocking, called on a pool thread."""


def chunks(speech: Speech, chunk_ms: int = CHUNK_MS) -> list[bytes]:
    """Cut `speech` into pieces of at most `chunk_ms` (whole samples)."""
    size = speech.sample_rate * chunk_ms // 1000 * 2
    return [speech.pcm[i : i + size] for i in range(0, len(speech.pcm), size)]


class SentenceTts:
    """TtsEngine: one `synthesize` call per sentence, on a bounded pool."""

    def __init__(self, synthesize: Synthesize, pool: Executor, *, name: str) -> None:
        self._synthesize = synthesize
        self._pool = pool
        self.name = name

    def open(self, call_id: str, sink: Sink) -> SpeechStream:
        return SpeechStream(self._synthesize, self._pool, call_id, sink, name=self.name)


class SpeechStream:
    """One reply's speech; see the module docstring for order and cancellation."""

    def __init__(
        self, synthesize: Synthesize, pool: Executor, call_id: str, sink: Sink, *, name: str
    ) -> None:
        self._synthesize = synthesize
        self._sink = sink
        self._name = name
        self._log = call_log(__name__, call_id)
        self._lane = Lane(pool, on_error=self._failed)
        self._sent = 0
        self._finalized = False

    def send(self, sentence: str, /) -> None:
        if self._finalized:
            self._log.warning("%s: text sent after finalize() ignored", self._name)
            return
        index, self._sent = self._sent, self._sent + 1
        if sentence.strip():
            self._lane.submit(partial(self._speak, sentence, index))

    def finalize(self) -> None:
        if not self._finalized:
            self._finalized = True
            self._lane.submit(self._finished, light=True)

    def cancel(self) -> None:
        self._lane.cancel()

    def close(self) -> None:
        self._lane.cancel()

    def _speak(self, sentence: str, index: int) -> None:
        started = time.monotonic()
        speech = self._synthesize(sentence)
        self._log.debug(
            "= %s voiced %d chars as %.2f s in %.0f ms",
            self._name,
            len(sentence),
            speech.duration_s,
            (time.monotonic() - started) * 1000,
        )
        for pcm in chunks(speech):
            if self._lane.cancelled:
                return
            self._sink(SpeechChunk(pcm=pcm, sample_rate=speech.sample_rate, text_index=index))

    def _finished(self) -> None:
        if not self._lane.cancelled:
            self._sink(SpeechFinished())

    def _failed(self, error: BaseException) -> None:
        if self._lane.cancelled:
            return
        self._lane.cancel()
        self._sink(EngineFailed(error=f"{self._name}: {type(error).__name__}: {error}"[:300]))
