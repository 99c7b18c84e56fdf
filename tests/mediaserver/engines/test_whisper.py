"""Whisper speech to text: real speech, one final per finalize, cancel, failure, bounds."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from actors.engines import EngineFailed, EngineProgressed, TranscriptReceived
from mediaserver.engines.executors import EngineExecutors
from mediaserver.engines.whisper import MAX_BUFFERED_S, WhisperStt, whisper_language
from tests.mediaserver.engines.conftest import Collected, words
from tests.timing import MS

FRAME = 640  # 20 ms of 16 kHz PCM16
SILENCE_S = bytes(16_000 * 2)


def feed(stream, pcm: bytes) -> None:
    for i in range(0, len(pcm), FRAME):
        stream.send(pcm[i : i + FRAME])


def finals(sink: Collected) -> list[TranscriptReceived]:
    return sink.of(TranscriptReceived)


class GatedTranscribe:
    """A fake Whisper that blocks until the test opens the gate; counts and times its runs."""

    def __init__(self, hold_s: float = 0.0, gated: bool = True) -> None:
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.hold_s = hold_s
        self.started = threading.Semaphore(0)
        self.finished = threading.Semaphore(0)
        self.spans: list[tuple[float, float]] = []
        self.lengths: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, audio: np.ndarray, language: str) -> str:
        start = time.perf_counter()
        self.started.release()
        self.gate.wait()
        if self.hold_s:
            threading.Event().wait(self.hold_s)  # the fake's own work, not a test wait
        with self._lock:
            self.spans.append((start, time.perf_counter()))
            self.lengths.append(len(audio))
        self.finished.release()
        return f"{len(audio)} samples"


def max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_a_spoken_question_is_transcribed_on_a_pool_thread(whisper, executors, sink, say):
    stream = WhisperStt(whisper.transcribe, executors.transcriptions).open("call-1", sink)
    feed(stream, say("What time do you open?") + SILENCE_S[:16_000])
    stream.finalize()

    (result,) = sink.wait_count(TranscriptReceived, 1)
    assert result.final and result.finalized and not result.end_of_turn
    assert {"what", "time", "do", "you", "open"} <= words(result.text), result.text
    assert sink.of(EngineProgressed), "the job shows life when it leaves the queue"
    assert all(name.startswith("offline-stt") for name in sink.threads)


def test_every_finalize_gets_exactly_one_final_in_order(whisper, executors, sink, say):
    stream = WhisperStt(whisper.transcribe, executors.transcriptions).open("call-1", sink)
    feed(stream, SILENCE_S + say("What are your opening hours?"))
    stream.finalize()
    stream.finalize()  # nothing new: an empty final
    feed(stream, say("Do you deliver on Sundays?"))
    stream.finalize()

    results = sink.wait_count(TranscriptReceived, 3)
    assert all(r.finalized for r in results)
    assert {"opening", "hours"} <= words(results[0].text), results[0].text
    assert results[1].text == ""
    assert {"deliver", "sundays"} <= words(results[2].text), results[2].text


def test_silence_and_noise_transcribe_to_empty_text(whisper, executors, sink):
    stream = WhisperStt(whisper.transcribe, executors.transcriptions).open("call-1", sink)
    feed(stream, SILENCE_S)
    stream.finalize()
    rng = np.random.default_rng(3)
    feed(stream, (rng.normal(0, 300, 32_000)).astype(np.int16).tobytes())
    stream.finalize()

    results = sink.wait_count(TranscriptReceived, 2)
    assert [r.text for r in results] == ["", ""]


def test_an_empty_utterance_is_answered_at_once_on_the_callers_thread(executors, sink):
    fake = GatedTranscribe()
    stream = WhisperStt(fake, executors.transcriptions).open("call-1", sink)
    stream.finalize()
    assert finals(sink) == [TranscriptReceived(text="", final=True, finalized=True)]
    assert sink.threads == {threading.current_thread().name}


def test_cancel_drops_queued_work_and_suppresses_the_running_result(sink):
    pools = EngineExecutors(transcriptions=1, syntheses=1)
    try:
        fake = GatedTranscribe()
        stream = WhisperStt(fake, pools.transcriptions).open("call-1", sink)
        stream.send(bytes(FRAME))
        stream.finalize()
        assert fake.started.acquire(timeout=2000 * MS)  # running, held at the gate
        stream.send(bytes(FRAME))
        stream.finalize()  # queued behind it
        stream.cancel()
        fake.gate.set()
        assert fake.finished.acquire(timeout=2000 * MS)
        pools.close()  # waits for the pool: anything it would still run has run
        assert len(fake.spans) == 1, "the queued utterance never ran"
        assert finals(sink) == []
    finally:
        pools.close()


def test_a_failure_gives_up_once_and_ends_the_stream(executors, sink):
    def broken(audio, language):
        raise RuntimeError("model.bin is truncated")

    stream = WhisperStt(broken, executors.transcriptions).open("call-1", sink)
    stream.send(bytes(FRAME))
    stream.finalize()
    (failed,) = sink.wait_count(EngineFailed, 1)
    assert failed.gave_up
    assert failed.error == "whisper: RuntimeError: model.bin is truncated"
    stream.send(bytes(FRAME))
    stream.finalize()
    executors.transcriptions.submit(lambda: None).result()  # one worker, FIFO: all ran
    assert finals(sink) == [] and len(sink.of(EngineFailed)) == 1


def test_concurrent_transcriptions_never_exceed_the_bound():
    pools = EngineExecutors(transcriptions=2, syntheses=1)
    try:
        fake = GatedTranscribe(hold_s=0.03, gated=False)
        sinks = [Collected() for _ in range(6)]
        for i, sink in enumerate(sinks):
            stream = WhisperStt(fake, pools.transcriptions).open(f"call-{i}", sink)
            stream.send(bytes(FRAME))
            stream.finalize()
        for sink in sinks:
            sink.wait_count(TranscriptReceived, 1)
        assert len(fake.spans) == 6
        assert max_overlap(fake.spans) == 2
    finally:
        pools.close()


def test_stream_calls_return_at_once_while_every_worker_is_busy(executors):
    fake = GatedTranscribe()
    busy, waiting = Collected(), Collected()
    first = WhisperStt(fake, executors.transcriptions).open("call-1", busy)
    first.send(bytes(FRAME))
    first.finalize()
    assert fake.started.acquire(timeout=2000 * MS)

    second = WhisperStt(fake, executors.transcriptions).open("call-2", waiting)
    started = time.perf_counter()
    for _ in range(100):  # 2 s of another call's audio
        second.send(bytes(FRAME))
    second.finalize()
    elapsed = time.perf_counter() - started
    assert elapsed < 50 * MS, elapsed
    assert finals(waiting) == []

    fake.gate.set()
    (result,) = waiting.wait_count(TranscriptReceived, 1)
    assert result.text == "32000 samples"


def test_an_utterance_keeps_at_most_its_last_minute(executors, sink):
    fake = GatedTranscribe(gated=False)
    stream = WhisperStt(fake, executors.transcriptions).open("call-1", sink)
    second = bytes(32_000)
    for _ in range(int(MAX_BUFFERED_S) + 5):
        stream.send(second)
    stream.finalize()
    sink.wait_count(TranscriptReceived, 1)
    assert fake.lengths == [int(MAX_BUFFERED_S * 16_000)]


@pytest.mark.parametrize("close", ["cancel", "close"])
def test_nothing_is_delivered_after_cancel_or_close(executors, sink, close):
    fake = GatedTranscribe(gated=False)
    stream = WhisperStt(fake, executors.transcriptions).open("call-1", sink)
    stream.send(bytes(FRAME))
    getattr(stream, close)()
    stream.finalize()
    stream.send(bytes(FRAME))
    stream.finalize()
    executors.transcriptions.submit(lambda: None).result()
    assert sink.results == []


@pytest.mark.parametrize(
    ("tag", "code"), [("en", "en"), ("de-CH", "de"), ("pt_BR", "pt"), ("FR", "fr"), ("", "en")]
)
def test_an_agents_language_tag_becomes_whispers_language_code(tag, code):
    assert whisper_language(tag) == code
