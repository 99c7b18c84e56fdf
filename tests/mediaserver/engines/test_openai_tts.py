"""OpenAITts through the real openai SDK against the loopback fake OpenAI `/audio/speech`."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import pytest
from pydantic import SecretStr

from actors.engines import EngineFailed, SpeechChunk, SpeechFinished
from config.settings import OpenAISettings
from mediaserver.engines.openai_tts import OpenAITts
from tests.mediaserver.engines.fake_deepgram import speech_pcm
from tests.mediaserver.engines.fake_openai import FakeOpenAI, SpeechScript
from tests.mediaserver.engines.harness import LoopThread, Recorder, wait_until
from tests.timing import MS

KEY = "sk-secret-key-5678-do-not-log"


@pytest.fixture
def loop_thread():
    with LoopThread() as loop_thread:
        yield loop_thread


@pytest.fixture
def rig(loop_thread):
    opened = []

    def make(speech=None, *, server_key=KEY, engine_kwargs=None, **fields):
        fake = FakeOpenAI(api_key=server_key, speech=speech)
        loop_thread.run(fake.__aenter__())
        values = {
            "api_key": SecretStr(KEY),
            "base_url": fake.base_url,
            "timeout_s": 5.0,
            "max_retries": 0,
        }
        values.update(fields)
        kwargs = {"retry_backoff_ms": 10, **(engine_kwargs or {})}
        engine = OpenAITts(OpenAISettings(**values), loop_thread.loop, **kwargs)
        opened.append((fake, engine))
        return fake, engine

    yield make
    for fake, engine in opened:
        loop_thread.run(engine.aclose())
        loop_thread.run(fake.__aexit__(None, None, None))


def audio_by_index(sink: Recorder) -> dict[int, bytes]:
    audio: dict[int, bytes] = defaultdict(bytes)
    for chunk in sink.of(SpeechChunk):
        audio[chunk.text_index] += chunk.pcm
    return dict(audio)


def finished(sink: Recorder) -> bool:
    return bool(sink.of(SpeechFinished))


def test_sentences_are_voiced_one_request_each_in_order_then_speech_finished(rig):
    fake, engine = rig()
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("Hello there.")
    stream.send("How can I help?")
    stream.finalize()

    sink.wait_for(finished)
    assert isinstance(sink.results[-1], SpeechFinished)
    assert audio_by_index(sink) == {0: speech_pcm("Hello there."), 1: speech_pcm("How can I help?")}
    chunks = sink.of(SpeechChunk)
    assert [c.text_index for c in chunks] == sorted(c.text_index for c in chunks)
    assert {c.sample_rate for c in chunks} == {24_000}
    assert [len(c.pcm) for c in chunks if c.text_index == 0] == [4_800, 960]  # 100 ms pieces
    assert sink.threads == {"engine-loop"}
    first, second = fake.of("/v1/audio/speech")
    assert first.body == {
        "model": "gpt-4o-mini-tts",
        "voice": "alloy",
        "input": "Hello there.",
        "response_format": "pcm",
    }
    assert second.body["input"] == "How can I help?"
    assert first.headers["authorization"] == f"Bearer {KEY}"
    stream.close()


def test_blank_sentences_keep_their_index_and_finalize_alone_finishes(rig):
    fake, engine = rig(engine_kwargs={"voice": "coral"})
    sink = Recorder()
    stream = engine.open("call-1", sink)
    for sentence in ("Hi.", " ", "Bye."):
        stream.send(sentence)
    stream.finalize()
    sink.wait_for(finished)
    assert audio_by_index(sink) == {0: speech_pcm("Hi."), 2: speech_pcm("Bye.")}
    assert [r.body["voice"] for r in fake.of("/v1/audio/speech")] == ["coral", "coral"]

    empty = Recorder()
    engine.open("call-2", empty).finalize()
    empty.wait_for(finished)
    assert empty.results == [SpeechFinished()]


def test_first_audio_comes_when_the_fake_is_scripted_to_send_it(rig):
    _, engine = rig(SpeechScript(first_audio_ms=100))
    sink = Recorder()
    started = time.monotonic()
    engine.open("call-1", sink).send("Hi.")
    sink.wait_for(lambda s: s.of(SpeechChunk))
    assert time.monotonic() - started >= 0.1


def test_a_body_cut_mid_sentence_is_asked_again_without_doubled_or_lost_audio(rig):
    text = "A sentence that is cut in the middle."
    fake, engine = rig(SpeechScript(drop_after_bytes={0: 7_001}), max_retries=2)
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(text)
    stream.send("Then another.")
    stream.finalize()

    sink.wait_for(finished)
    assert audio_by_index(sink) == {0: speech_pcm(text), 1: speech_pcm("Then another.")}
    assert all(len(c.pcm) % 2 == 0 for c in sink.of(SpeechChunk))
    (warning,) = sink.failures()
    assert not warning.gave_up
    assert warning.error.startswith("openai: connection failed")
    assert warning.error.endswith("asking again (1/2)")
    assert [r.body["input"] for r in fake.of("/v1/audio/speech")] == [text, text, "Then another."]


def test_a_500_is_retried_by_the_sdk_as_configured(rig):
    fake, engine = rig(SpeechScript(statuses=[500]), max_retries=1)
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("Hi.")
    stream.finalize()

    sink.wait_for(finished)
    assert audio_by_index(sink) == {0: speech_pcm("Hi.")}
    assert sink.failures() == []
    assert len(fake.of("/v1/audio/speech")) == 2


def test_a_429_beyond_the_retries_gives_up_and_stops_the_stream(rig):
    fake, engine = rig(SpeechScript(statuses=[429] * 5), max_retries=1)
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("Hi.")
    stream.send("Bye.")
    stream.finalize()

    sink.wait_for(lambda s: s.failures())
    sink.assert_quiet(50 * MS)
    assert sink.results == [
        EngineFailed(error="openai: rate limited (HTTP 429, rate_limit_exceeded)", gave_up=True)
    ]
    assert len(fake.of("/v1/audio/speech")) == 2


def test_a_wrong_key_fails_at_once_and_appears_in_no_log_or_error(rig, caplog):
    caplog.set_level(logging.DEBUG)
    _, engine = rig(server_key="sk-the-right-one", max_retries=2)
    sink = Recorder()
    engine.open("call-1", sink).send("Hi.")

    sink.wait_for(lambda s: s.failures())
    assert sink.results == [
        EngineFailed(
            error="openai: authentication failed (HTTP 401, invalid_api_key)", gave_up=True
        )
    ]
    assert KEY not in caplog.text


def test_a_hung_server_gets_nothing_invented_and_cancel_closes_the_request(rig):
    fake, engine = rig(SpeechScript(hang=True), timeout_s=30.0)
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("Hi.")
    stream.finalize()
    wait_until(lambda: fake.of("/v1/audio/speech"))
    sink.assert_quiet(150 * MS)

    stream.cancel()
    wait_until(lambda: fake.disconnects == 1)
    assert sink.results == []


def test_cancel_mid_sentence_delivers_nothing_more(rig):
    fake, engine = rig(SpeechScript(chunk_bytes=960, chunk_interval_ms=10))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("A long sentence that takes a while to say out loud.")
    stream.finalize()
    sink.wait_for(lambda s: len(s.of(SpeechChunk)) >= 2)

    stream.cancel()
    delivered = sink.count()
    wait_until(lambda: fake.disconnects == 1)
    sink.assert_quiet(50 * MS)
    assert sink.count() == delivered
    assert not finished(sink)
