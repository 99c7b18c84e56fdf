"""Fake engines, outbox and caller for call-tree tests.

Fake audio encodes words: every sample of a voiced 20 ms frame is `1000 + word id`, silence is
zeros. `FakeStt` turns a run of frames with the same id into the word `w<id>`, so a test knows
exactly which words were spoken and can check that none was lost or doubled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from actors.engines import (
    CallEngines,
    EngineFailed,
    EngineResult,
    ReplyCompleted,
    ReplyRequest,
    Sink,
    SpeechChunk,
    SpeechFinished,
    TokenReceived,
    TranscriptReceived,
)
from actors.messages import AudioReceived, Outbound
from actors.timer import Timer
from tests.timing import MS

T = TypeVar("T")
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
FRAMES_PER_WORD = 5


def word_frame(word_id: int) -> bytes:
    return np.full(FRAME_SAMPLES, 1000 + word_id, dtype=np.int16).tobytes()


SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16).tobytes()


def wait_until(predicate: Callable[[], object], timeout: float = 2000 * MS) -> None:
    """Poll `predicate` every 5 ms until it holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        pause.wait(0.005)


class RecordingOutbox:
    """Records every outbound message; tests wait on conditions, never sleep."""

    def __init__(self) -> None:
        self.messages: list[Outbound] = []
        self._changed = threading.Condition()

    def put(self, message: Outbound, /) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def of(self, kind: type[T]) -> list[T]:
        with self._changed:
            return [m for m in self.messages if isinstance(m, kind)]

    def wait_for(
        self,
        predicate: Callable[[RecordingOutbox], object],
        timeout: float = 5000 * MS,
        *,
        raise_: bool = True,
    ) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout) and raise_:
                kinds = [type(m).__name__ for m in self.messages[-30:]]
                raise AssertionError(f"timed out; last messages: {kinds}")

    def wait_count(self, kind: type[T], n: int, timeout: float = 5000 * MS) -> list[T]:
        self.wait_for(lambda box: len(box.of(kind)) >= n, timeout)
        return self.of(kind)


class FakeVad:
    def process(self, window: np.ndarray, /) -> float:
        return 1.0 if float(np.abs(window).max()) > 0.01 else 0.0


@dataclass
class Script:
    """What the fake engines do; shared by all streams of a call (thread-safe enough for tests)."""

    stt_fail_after_words: int | None = None  # EngineFailed(gave_up) once, after that many words
    stt_hang_finalize: int | None = None  # ignore the n-th finalize() (1-based), once
    llm_fail: int = 0  # the next n LLM requests fail
    llm_hang: int = 0  # the next n LLM requests never answer
    tts_delay_s: float = 0.0  # send audio from the timer thread after this delay
    tts_ms_per_word: int = 100
    timer: Timer | None = None
    words_heard: int = 0
    finalizes: int = 0
    streams: dict[str, int] = field(default_factory=lambda: {"stt": 0, "llm": 0, "tts": 0})


class FakeSttStream:
    def __init__(self, script: Script, sink: Sink) -> None:
        self.script, self.sink = script, sink
        self.words: list[str] = []
        self.last_id: int | None = None
        self.cancelled = False

    def send(self, pcm: bytes, /) -> None:
        samples = np.frombuffer(pcm, dtype=np.int16)
        value = int(samples[0])
        if value == 0:
            self.last_id = None
            return
        if value - 1000 == self.last_id:
            return
        self.last_id = value - 1000
        self.words.append(f"w{self.last_id}")
        self.script.words_heard += 1
        self.sink(TranscriptReceived(text=" ".join(self.words), final=False))
        fail_after = self.script.stt_fail_after_words
        if fail_after is not None and self.script.words_heard >= fail_after:
            self.script.stt_fail_after_words = None
            self.sink(EngineFailed(error="fake provider gave up"))

    def finalize(self) -> None:
        self.script.finalizes += 1
        if self.script.stt_hang_finalize == self.script.finalizes:
            return
        text, self.words = " ".join(self.words), []
        self.sink(TranscriptReceived(text=text, final=True, finalized=True))

    def cancel(self) -> None:
        self.cancelled = True

    def close(self) -> None:
        pass


class FakeStt:
    def __init__(self, script: Script) -> None:
        self.script = script

    def open(self, call_id: str, sink: Sink) -> FakeSttStream:
        self.script.streams["stt"] += 1
        return FakeSttStream(self.script, sink)


def reply_text(request: ReplyRequest) -> str:
    return f"You said {request.messages[-1].content}. Okay."


class FakeLlmStream:
    def __init__(self, script: Script, sink: Sink) -> None:
        self.script, self.sink = script, sink

    def send(self, request: ReplyRequest, /) -> None:
        if self.script.llm_hang:
            self.script.llm_hang -= 1
            return
        if self.script.llm_fail:
            self.script.llm_fail -= 1
            self.sink(EngineFailed(error="fake 500"))
            return
        words = reply_text(request).split(" ")
        for i, word in enumerate(words):
            self.sink(TokenReceived(text=word if i == 0 else " " + word))
        self.sink(ReplyCompleted(tokens_in=len(request.messages), tokens_out=len(words)))

    def finalize(self) -> None:
        pass

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeLlm:
    def __init__(self, script: Script) -> None:
        self.script = script

    def open(self, call_id: str, sink: Sink) -> FakeLlmStream:
        self.script.streams["llm"] += 1
        return FakeLlmStream(self.script, sink)


class FakeTtsStream:
    """`tts_ms_per_word` of 24 kHz audio per word; `SpeechFinished` after finalize."""

    def __init__(self, script: Script, sink: Sink) -> None:
        self.script, self.sink = script, sink
        self.sent = 0

    def _later(self, result: EngineResult) -> None:
        if self.script.tts_delay_s and self.script.timer is not None:
            self.script.timer.call_later(self.script.tts_delay_s, lambda: self.sink(result))
        else:
            self.sink(result)

    def send(self, sentence: str, /) -> None:
        samples = 24 * self.script.tts_ms_per_word * len(sentence.split())
        pcm = np.full(samples, 7, dtype=np.int16).tobytes()
        self._later(SpeechChunk(pcm=pcm, sample_rate=24_000, text_index=self.sent))
        self.sent += 1

    def finalize(self) -> None:
        self._later(SpeechFinished())

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeTts:
    def __init__(self, script: Script) -> None:
        self.script = script

    def open(self, call_id: str, sink: Sink) -> FakeTtsStream:
        self.script.streams["tts"] += 1
        return FakeTtsStream(self.script, sink)


def fake_engines(script: Script) -> CallEngines:
    return CallEngines(stt=FakeStt(script), llm=FakeLlm(script), tts=FakeTts(script), vad=FakeVad)


class Caller:
    """Speaks words into a call as 20 ms frames on a 16 kHz timeline starting at `t0`."""

    def __init__(
        self, call_id: str, send: Callable[[AudioReceived], None], t0: float | None = None
    ) -> None:
        # Audio "captured" in the past, so latencies measured against the real clock are positive.
        self.call_id, self.send = call_id, send
        self.t = t0 if t0 is not None else time.monotonic() - 60.0
        self.next_word = 1

    def frame(self, pcm: bytes) -> None:
        self.send(
            AudioReceived(call_id=self.call_id, pcm=pcm, sample_rate=16_000, captured_at=self.t)
        )
        self.t += 0.02

    def silence(self, ms: int) -> None:
        for _ in range(ms // 20):
            self.frame(SILENCE)

    def say(self, n_words: int, *, silence_ms: int = 320) -> list[str]:
        """Speak `n_words` new words, then `silence_ms` of silence; return the words."""
        words = []
        for _ in range(n_words):
            words.append(f"w{self.next_word}")
            for _ in range(FRAMES_PER_WORD):
                self.frame(word_frame(self.next_word))
            self.next_word += 1
        self.silence(silence_ms)
        return words
