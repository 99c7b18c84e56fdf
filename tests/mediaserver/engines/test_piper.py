"""Piper through `SentenceTts`: real audio, 200 ms chunks in order, finish, cancel, failure."""

from __future__ import annotations

import threading

import numpy as np

from actors.engines import EngineFailed, SpeechChunk, SpeechFinished
from mediaserver.engines.executors import EngineExecutors
from mediaserver.engines.synthesis import CHUNK_MS, SentenceTts, Speech, chunks
from tests.mediaserver.engines.conftest import Collected, to_16k, words
from tests.timing import MS

SENTENCES = ["Hello there.", "We are open from nine in the morning until six in the evening."]


def audio_of(results: list[SpeechChunk]) -> np.ndarray:
    return np.frombuffer(b"".join(c.pcm for c in results), dtype=np.int16)


def test_piper_speaks_each_sentence_as_non_silent_22050_hz_audio(piper):
    for text, (low_s, high_s) in [(SENTENCES[0], (0.4, 1.5)), (SENTENCES[1], (2.5, 6.0))]:
        speech = piper.synthesize(text)
        samples = np.frombuffer(speech.pcm, dtype=np.int16)
        assert speech.sample_rate == 22_050
        assert low_s < speech.duration_s < high_s, (text, speech.duration_s)
        assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 500  # not near-silence


def test_sentences_come_back_in_order_in_short_chunks_then_finished(piper, executors, sink):
    stream = SentenceTts(piper.synthesize, executors.syntheses, name="piper").open("c", sink)
    for sentence in SENTENCES:
        stream.send(sentence)
    stream.finalize()
    sink.wait_count(SpeechFinished, 1)

    assert isinstance(sink.results[-1], SpeechFinished)
    pieces = sink.of(SpeechChunk)
    indexes = [c.text_index for c in pieces]
    assert indexes == sorted(indexes) and set(indexes) == {0, 1}
    assert all(c.sample_rate == 22_050 for c in pieces)
    assert all(len(c.pcm) <= 22_050 * CHUNK_MS // 1000 * 2 for c in pieces)
    assert len(pieces) >= 12  # more than 2.5 s of audio in 200 ms pieces
    assert all(name.startswith("offline-tts") for name in sink.threads)


def test_piper_speech_is_understood_by_whisper(speak_steadily, whisper):
    pcm = to_16k(speak_steadily(SENTENCES[1]))
    heard = whisper.transcribe(np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0, "en")
    assert {"open", "morning", "evening"} <= words(heard), heard
    assert {"nine", "9"} & words(heard) and {"six", "6"} & words(heard), heard


def test_an_empty_sentence_keeps_its_index_and_produces_no_audio(piper, executors, sink):
    stream = SentenceTts(piper.synthesize, executors.syntheses, name="piper").open("c", sink)
    stream.send("  ")
    stream.send("Okay.")
    stream.finalize()
    sink.wait_count(SpeechFinished, 1)
    assert {c.text_index for c in sink.of(SpeechChunk)} == {1}


class GatedVoice:
    """A fake voice: 1 s of a tone per sentence, after the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.voiced: list[str] = []

    def __call__(self, text: str) -> Speech:
        self.started.release()
        self.gate.wait()
        self.voiced.append(text)
        tone = (3000 * np.sin(np.arange(22_050) / 10)).astype(np.int16)
        return Speech(pcm=tone.tobytes(), sample_rate=22_050)


def test_cancel_stops_delivery_and_drops_queued_sentences(sink):
    pools = EngineExecutors(transcriptions=1, syntheses=1)
    try:
        voice = GatedVoice()
        stream = SentenceTts(voice, pools.syntheses, name="fake").open("c", sink)
        stream.send("one.")
        stream.send("two.")
        stream.finalize()
        assert voice.started.acquire(timeout=2000 * MS)
        stream.cancel()  # barge-in while "one." is being voiced
        voice.gate.set()
        pools.close()
        assert voice.voiced == ["one."]
        assert sink.results == []
    finally:
        pools.close()


def test_a_synthesis_failure_gives_up_and_ends_the_stream(executors, sink):
    def broken(text: str) -> Speech:
        raise OSError("voice file unreadable")

    stream = SentenceTts(broken, executors.syntheses, name="piper").open("c", sink)
    stream.send("Hello.")
    stream.send("Again.")
    stream.finalize()
    (failed,) = sink.wait_count(EngineFailed, 1)
    executors.syntheses.submit(lambda: None).result()
    assert failed.gave_up and failed.error == "piper: OSError: voice file unreadable"
    assert sink.of(SpeechFinished) == [] and len(sink.results) == 1


def test_text_after_finalize_is_ignored(executors):
    collected = Collected()
    voice = GatedVoice()
    voice.gate.set()
    stream = SentenceTts(voice, executors.syntheses, name="fake").open("c", collected)
    stream.finalize()
    stream.send("late.")
    collected.wait_count(SpeechFinished, 1)
    executors.syntheses.submit(lambda: None).result()
    assert voice.voiced == [] and collected.of(SpeechChunk) == []


def test_chunks_split_on_whole_samples():
    speech = Speech(pcm=bytes(2 * 22_050), sample_rate=22_050)  # 1 s
    pieces = chunks(speech, 200)
    assert [len(p) for p in pieces] == [8820] * 5
    assert b"".join(pieces) == speech.pcm
