"""DeepgramTts through the real deepgram-sdk against the loopback fake Deepgram speak socket."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import pytest
from pydantic import SecretStr

from actors.engines import EngineFailed, SpeechChunk, SpeechFinished
from config.settings import DeepgramSettings
from mediaserver.engines.deepgram_tts import DeepgramTts
from tests.mediaserver.engines.fake_deepgram import FakeDeepgram, SpeakScript, speech_pcm
from tests.mediaserver.engines.harness import LoopThread, Recorder, wait_until
from tests.timing import MS

KEY = "dg-secret-key-0815-do-not-log"


@pytest.fixture
def loop_thread():
    with LoopThread() as loop_thread:
        yield loop_thread


@pytest.fixture
def rig(loop_thread):
    opened = []

    def make(speak=None, *, server_key=KEY, **fields):
        fake = FakeDeepgram(api_key=server_key, speak=speak)
        loop_thread.run(fake.__aenter__())
        values = {
            "api_key": SecretStr(KEY),
            "base_url": fake.url,
            "reconnect_attempts": 3,
            "reconnect_backoff_ms": 10,
        }
        values.update(fields)
        engine = DeepgramTts(DeepgramSettings(**values), loop_thread.loop)
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


def test_sentences_are_voiced_in_order_with_their_index_then_speech_finished(rig):
    fake, engine = rig()
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("Hello there.")
    stream.send("How can I help?")
    stream.finalize()

    sink.wait_for(finished)
    assert isinstance(sink.results[-1], SpeechFinished)
    assert audio_by_index(sink) == {0: speech_pcm("Hello there."), 1: speech_pcm("How can I help?")}
    indexes = [c.text_index for c in sink.of(SpeechChunk)]
    assert indexes == sorted(indexes)
    assert {c.sample_rate for c in sink.of(SpeechChunk)} == {24_000}
    assert sink.threads == {"engine-loop"}
    (conn,) = fake.of("speak")
    wait_until(lambda: conn.closed)
    assert conn.types() == ["Speak", "Flush", "Speak", "Flush", "Close"]
    assert conn.messages[0]["text"] == "Hello there."
    assert conn.query == {
        "model": "aura-2-thalia-en",
        "encoding": "linear16",
        "sample_rate": "24000",
    }
    assert conn.headers["Authorization"] == f"Token {KEY}"
    stream.close()


def test_cancel_sends_clear_and_delivers_nothing_more(rig):
    fake, engine = rig(SpeakScript(frame_bytes=960, frame_interval_ms=5))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("A long sentence that takes a while to say out loud.")
    sink.wait_for(lambda s: len(s.of(SpeechChunk)) >= 2)

    stream.cancel()
    delivered = sink.count()
    (conn,) = fake.of("speak")
    wait_until(lambda: conn.closed)
    assert conn.types() == ["Speak", "Flush", "Clear", "Close"]
    sink.assert_quiet(30 * MS)
    assert sink.count() == delivered
    assert not finished(sink)


def test_a_dropped_socket_mid_sentence_is_resumed_without_doubled_or_lost_audio(rig):
    first, second = "The first sentence.", "And the second one."
    cut = len(speech_pcm(first)) // 2 + 1000
    fake, engine = rig(SpeakScript(frame_bytes=960, drop_after_bytes={0: cut}))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(first)
    stream.send(second)
    stream.finalize()

    sink.wait_for(finished)
    assert audio_by_index(sink) == {0: speech_pcm(first), 1: speech_pcm(second)}
    failures = sink.failures()
    assert len(failures) == 1
    assert not failures[0].gave_up
    assert "connection dropped" in failures[0].error
    _old, new = fake.of("speak")
    assert [m.get("text") for m in new.messages if m["type"] == "Speak"] == [first, second]


def test_blank_sentences_keep_their_index_and_are_not_sent(rig):
    fake, engine = rig()
    sink = Recorder()
    stream = engine.open("call-1", sink)
    for sentence in ("Hi.", "  ", "Bye."):
        stream.send(sentence)
    stream.finalize()

    sink.wait_for(finished)
    assert audio_by_index(sink) == {0: speech_pcm("Hi."), 2: speech_pcm("Bye.")}
    assert fake.of("speak")[0].types().count("Speak") == 2
    stream.close()


def test_finalize_with_nothing_sent_finishes_at_once(rig):
    _, engine = rig()
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.finalize()
    sink.wait_for(finished)
    assert sink.results == [SpeechFinished()]
    stream.close()


def test_first_audio_comes_when_the_fake_is_scripted_to_send_it(rig):
    _, engine = rig(SpeakScript(first_audio_ms=100))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    started = time.monotonic()
    stream.send("Hi.")
    sink.wait_for(lambda s: s.of(SpeechChunk))
    assert time.monotonic() - started >= 0.1
    stream.close()


def test_server_errors_at_the_handshake_are_retried_then_given_up(rig):
    fake, engine = rig(SpeakScript(refuse=[500, 502, 503]), reconnect_attempts=2)
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("Hi.")

    sink.wait_for(lambda s: any(f.gave_up for f in s.failures()))
    assert [f.gave_up for f in sink.failures()] == [False, False, True]
    assert sink.failures()[-1].error == "deepgram: server error (HTTP 503)"
    assert [status for _, status in fake.handshakes] == [500, 502, 503]
    stream.close()


def test_a_wrong_key_fails_at_once_and_appears_in_no_log_or_error(rig, caplog):
    caplog.set_level(logging.DEBUG)
    _, engine = rig(server_key="another-key")
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("Hi.")

    sink.wait_for(lambda s: s.failures())
    assert sink.failures() == [
        EngineFailed(error="deepgram: authentication failed (HTTP 401)", gave_up=True)
    ]
    assert KEY not in caplog.text
    stream.close()


def test_a_hung_provider_sends_nothing_and_cancel_is_clean(rig):
    fake, engine = rig(SpeakScript(hang=True))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send("Hi.")
    stream.finalize()
    wait_until(lambda: fake.of("speak") and "Flush" in fake.of("speak")[0].types())
    sink.assert_quiet(150 * MS)

    stream.cancel()
    (conn,) = fake.of("speak")
    wait_until(lambda: conn.closed)
    assert conn.types() == ["Speak", "Flush", "Clear", "Close"]
    assert sink.results == []
