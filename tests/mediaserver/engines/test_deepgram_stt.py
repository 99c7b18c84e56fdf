"""DeepgramStt through the real deepgram-sdk against the loopback fake Deepgram."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from pydantic import SecretStr

from actors.engines import EngineFailed, TranscriptReceived
from config.settings import DeepgramSettings
from mediaserver.engines.deepgram_stt import DeepgramStt, ListenTimeline, deepgram_environment
from mediaserver.engines.provider_errors import ProviderRejected, from_close
from tests.mediaserver.engines.fake_deepgram import FakeDeepgram, ListenScript, silence, word_audio
from tests.mediaserver.engines.harness import LoopThread, Recorder, wait_until
from tests.timing import MS

KEY = "dg-secret-key-4711-do-not-log"


@pytest.fixture
def loop_thread():
    with LoopThread() as loop_thread:
        yield loop_thread


@pytest.fixture
def rig(loop_thread):
    opened = []

    def make(listen=None, *, server_key=KEY, engine_kwargs=None, **fields):
        fake = FakeDeepgram(api_key=server_key, listen=listen)
        loop_thread.run(fake.__aenter__())
        values = {
            "api_key": SecretStr(KEY),
            "base_url": fake.url,
            "reconnect_attempts": 3,
            "reconnect_backoff_ms": 10,
        }
        values.update(fields)
        engine = DeepgramStt(DeepgramSettings(**values), loop_thread.loop, **(engine_kwargs or {}))
        opened.append((fake, engine))
        return fake, engine

    yield make
    for fake, engine in opened:
        loop_thread.run(engine.aclose())
        loop_thread.run(fake.__aexit__(None, None, None))


def words(*ids: int) -> bytes:
    return b"".join(word_audio(i) for i in ids)


def finals(sink: Recorder) -> list[str]:
    return [r.text for r in sink.of(TranscriptReceived) if r.final and r.text]


def sent_types(fake: FakeDeepgram) -> list[str]:
    """The text messages the first listen connection got so far (none before it exists)."""
    connections = fake.of("listen")
    return connections[0].types() if connections else []


def finalized(sink: Recorder) -> list[TranscriptReceived]:
    return [r for r in sink.of(TranscriptReceived) if r.finalized]


def test_interim_and_final_results_arrive_on_the_loop_thread_with_the_provider_endpoint(rig):
    fake, engine = rig()
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(words(1, 2))
    stream.send(silence(400))

    sink.wait_for(lambda s: finals(s) == ["w1 w2"])
    results = sink.of(TranscriptReceived)
    assert any(not r.final and r.text.startswith("w1") for r in results)
    final = next(r for r in results if r.final)
    assert final.end_of_turn and not final.finalized
    assert sink.threads == {"engine-loop"}
    (conn,) = fake.of("listen")
    assert conn.headers["Authorization"] == f"Token {KEY}"
    assert conn.query["model"] == "nova-3"
    assert conn.query["encoding"] == "linear16"
    assert conn.query["sample_rate"] == "16000"
    assert conn.query["interim_results"] == "true"
    assert conn.query["endpointing"] == "300"
    stream.close()


def test_finalize_yields_exactly_one_finalized_result_settling_the_audio_before_it(rig):
    fake, engine = rig()
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(words(3))
    stream.send(silence(100))  # shorter than endpointing: only Finalize settles w3
    stream.finalize()

    sink.wait_for(lambda s: len(finalized(s)) == 1)
    assert finalized(sink)[0].text == "w3"
    assert finals(sink) == ["w3"]
    # Nothing was sent since: the next finalize is answered at once, without asking Deepgram.
    stream.finalize()
    sink.wait_for(lambda s: len(finalized(s)) == 2)
    assert finalized(sink)[1].text == ""
    assert fake.of("listen")[0].types().count("Finalize") == 1
    stream.close()


def test_finalize_with_no_speech_is_settled_by_the_next_final_when_deepgram_does_not_answer(rig):
    fake, engine = rig(ListenScript(answer_empty_finalize=False, silent_final_every_ms=500))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(silence(200))
    stream.finalize()
    wait_until(lambda: "Finalize" in sent_types(fake))
    sink.assert_quiet(50 * MS)  # no answer, and none invented
    stream.send(silence(600))  # Deepgram keeps finalizing the silence that follows

    sink.wait_for(lambda s: len(finalized(s)) == 1)
    assert finalized(sink)[0].text == ""
    stream.send(words(4))
    stream.send(silence(400))
    sink.wait_for(lambda s: finals(s) == ["w4"])
    assert len(finalized(sink)) == 1
    stream.close()


def test_empty_finalize_answer_is_one_empty_finalized_result(rig):
    _, engine = rig(ListenScript(answer_empty_finalize=True))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(silence(200))
    stream.finalize()

    sink.wait_for(lambda s: len(finalized(s)) == 1)
    assert finalized(sink)[0].text == ""
    sink.assert_quiet(50 * MS)
    assert len(finalized(sink)) == 1
    stream.close()


def test_utterance_end_ends_the_turn_once_and_waits_for_the_final_words(rig):
    _, engine = rig(engine_kwargs={"endpointing_ms": 3000, "utterance_end_ms": 1000})
    sink = Recorder()
    stream = engine.open("call-1", sink)
    # UtteranceEnd (1 s of silence) comes before the final (3 s): the end waits for the words.
    stream.send(words(5, 6))
    stream.send(silence(3200))
    sink.wait_for(lambda s: finals(s) == ["w5 w6"])
    ends = [r for r in sink.of(TranscriptReceived) if r.end_of_turn]
    assert [(r.text, r.final) for r in ends] == [("w5 w6", True)]

    # speech_final first (300 ms), then UtteranceEnd (1 s): still one end of turn.
    _, engine2 = rig(engine_kwargs={"endpointing_ms": 300, "utterance_end_ms": 1000})
    sink2 = Recorder()
    stream2 = engine2.open("call-2", sink2)
    stream2.send(words(7))
    stream2.send(silence(1500))
    sink2.wait_for(lambda s: finals(s) == ["w7"])
    sink2.assert_quiet(50 * MS)
    assert [r.text for r in sink2.of(TranscriptReceived) if r.end_of_turn] == ["w7"]
    stream.close()
    stream2.close()


def test_keepalive_is_sent_while_no_audio_flows(rig):
    fake, engine = rig(keepalive_s=0.03)
    stream = engine.open("call-1", Recorder())
    stream.send(silence(100))
    wait_until(lambda: sent_types(fake).count("KeepAlive") >= 2)
    stream.close()


def test_close_sends_close_stream_and_delivers_nothing_more(rig):
    fake, engine = rig()
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(words(8))
    wait_until(lambda: fake.of("listen") and len(fake.of("listen")[0].audio) == len(words(8)))
    stream.close()

    (conn,) = fake.of("listen")
    wait_until(lambda: conn.closed)
    assert conn.types()[-1] == "CloseStream"
    assert conn.close_code == 1000
    assert finals(sink) == []  # the fake's last final came after close(): not delivered


def test_dropped_socket_mid_utterance_loses_and_doubles_no_word(rig):
    first = words(1, 2) + silence(400)
    second = words(3) + words(4)
    drop_at = len(first) + len(words(3)) + len(word_audio(4)) // 2
    fake, engine = rig(ListenScript(drop_after_bytes={0: drop_at}))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(first)
    sink.wait_for(lambda s: finals(s) == ["w1 w2"])

    stream.send(second)  # the socket drops in the middle of w4
    stream.send(words(5) + silence(400))
    stream.finalize()

    sink.wait_for(lambda s: len(finalized(s)) == 1)
    assert " ".join(finals(sink)) == "w1 w2 w3 w4 w5"
    warnings = [f for f in sink.failures() if not f.gave_up]
    assert len(warnings) == 1
    assert "reconnecting (1/3)" in warnings[0].error
    assert not [f for f in sink.failures() if f.gave_up]
    # The new socket got exactly the audio since the last final, then the rest.
    _old, new = fake.of("listen")
    settled = len(first) - len(silence(400)) + len(silence(300))  # w1 w2 final ends at 300 ms
    assert bytes(new.audio) == (first + second + words(5) + silence(400))[settled:]
    assert new.types() == ["Finalize"]
    stream.close()


def test_a_drop_while_finalize_waits_resends_it_and_answers_exactly_once(rig):
    fake, engine = rig(ListenScript(drop_at_finalize={0}))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(words(1, 2) + silence(400))
    sink.wait_for(lambda s: finals(s) == ["w1 w2"])
    stream.send(words(3) + silence(100))
    stream.finalize()

    sink.wait_for(lambda s: len(finalized(s)) == 1)
    assert finalized(sink)[0].text == "w3"
    assert finals(sink) == ["w1 w2", "w3"]
    _old, new = fake.of("listen")
    assert new.types() == ["Finalize"]
    sink.assert_quiet(50 * MS)
    assert len(finalized(sink)) == 1
    stream.close()


def test_real_speech_gets_the_scripted_transcript_when_finalized_after_the_scripted_delay(rig):
    script = ListenScript(fixed_transcript="what are your hours", endpointing=False)
    script.finalize_delay_ms = 100
    _, engine = rig(script)
    sink = Recorder()
    stream = engine.open("call-1", sink)
    tone = (np.sin(np.arange(16_000) * 2 * np.pi * 220 / 16_000) * 8_000).astype(np.int16)
    stream.send(tone.tobytes() + silence(500))
    sink.wait_for(lambda s: any(not r.final for r in s.of(TranscriptReceived)))
    started = time.monotonic()
    stream.finalize()

    sink.wait_for(finalized)
    assert time.monotonic() - started >= 0.1
    assert finals(sink) == ["what are your hours"]
    stream.close()


def test_429_and_500_at_the_handshake_are_retried_with_backoff(rig):
    fake, engine = rig(ListenScript(refuse=[429, 500]))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(words(9) + silence(400))

    sink.wait_for(lambda s: finals(s) == ["w9"])
    errors = [f.error for f in sink.failures()]
    assert errors == [
        "deepgram: rate limited (HTTP 429); reconnecting (1/3)",
        "deepgram: server error (HTTP 500); reconnecting (2/3)",
    ]
    assert [status for _, status in fake.handshakes] == [429, 500, 101]
    stream.close()


def test_gives_up_after_the_configured_reconnect_attempts(rig):
    fake, engine = rig(ListenScript(refuse=[503] * 10), reconnect_attempts=2)
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(words(1))

    sink.wait_for(lambda s: any(f.gave_up for f in s.failures()))
    assert [f.gave_up for f in sink.failures()] == [False, False, True]
    assert sink.failures()[-1].error == "deepgram: server error (HTTP 503)"
    assert len(fake.handshakes) == 3
    stream.close()


def test_idle_close_by_deepgram_is_a_drop_and_reconnects(rig):
    fake, engine = rig(ListenScript(idle_close_s=0.05))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(silence(20))

    sink.wait_for(lambda s: len(s.failures()) >= 1)
    assert sink.failures()[0].error.startswith(
        "deepgram: server closed the stream (close 1011, NET-0001); reconnecting"
    )
    wait_until(lambda: len(fake.of("listen")) >= 2)
    stream.cancel()


def test_a_wrong_key_fails_at_once_and_appears_in_no_log_or_error(rig, caplog):
    caplog.set_level(logging.DEBUG)
    _, engine = rig(server_key="another-key")
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(words(1))

    sink.wait_for(lambda s: any(f.gave_up for f in s.failures()))
    (failure,) = sink.failures()
    assert failure.error == "deepgram: authentication failed (HTTP 401)"
    assert KEY not in caplog.text
    assert "call-1" in {getattr(r, "call_id", None) for r in caplog.records}
    stream.close()


def test_no_key_configured_fails_the_stream_without_reading_the_environment(
    loop_thread, monkeypatch
):
    monkeypatch.setenv("DEEPGRAM_API_KEY", "from-the-environment")
    engine = DeepgramStt(DeepgramSettings(), loop_thread.loop)
    sink = Recorder()
    engine.open("call-1", sink)
    sink.wait_for(lambda s: s.failures())
    assert sink.failures() == [
        EngineFailed(error="deepgram: no API key configured (deepgram.api_key)", gave_up=True)
    ]


def test_a_hung_provider_gets_no_invented_results_and_cancel_is_clean(rig):
    fake, engine = rig(ListenScript(hang=True))
    sink = Recorder()
    stream = engine.open("call-1", sink)
    stream.send(words(1, 2) + silence(400))
    stream.finalize()
    wait_until(lambda: "Finalize" in sent_types(fake))
    sink.assert_quiet(150 * MS)

    stream.cancel()
    (conn,) = fake.of("listen")
    wait_until(lambda: conn.closed)
    assert sink.results == []
    assert "CloseStream" not in conn.types()


def test_deepgram_environment_keeps_the_path_and_maps_the_schemes():
    env = deepgram_environment("https://dg.example.com/proxy/")
    assert env.production == "wss://dg.example.com/proxy"
    assert env.base == "https://dg.example.com/proxy"
    env = deepgram_environment("ws://127.0.0.1:9000")
    assert (env.production, env.base) == ("ws://127.0.0.1:9000", "http://127.0.0.1:9000")
    assert deepgram_environment("").production == "wss://api.deepgram.com"
    with pytest.raises(ProviderRejected):
        deepgram_environment("127.0.0.1:9000")


def test_close_codes_translate_to_our_errors():
    bad_audio = from_close("deepgram", 1008, "DATA-0000")
    assert str(bad_audio) == "deepgram: stream rejected (close 1008, DATA-0000)"
    assert not bad_audio.transient
    assert from_close("deepgram", 1011, "NET-0001").transient
    assert from_close("deepgram", None).transient
    # A reason that is not a short code is left out: it could hold anything.
    assert str(from_close("deepgram", 1011, "see https://x/y?k=v")) == (
        "deepgram: server closed the stream (close 1011)"
    )


def final(timeline: ListenTimeline, text: str, end_s: float, **flags: bool):
    return timeline.results(
        text,
        is_final=True,
        speech_final=flags.get("speech_final", False),
        from_finalize=flags.get("from_finalize", False),
        start_s=0.0,
        duration_s=end_s,
    )


def test_timeline_resends_from_the_last_final_and_maps_the_new_socket_times_back():
    timeline = ListenTimeline(max_unsettled_bytes=1 << 20)
    timeline.reconnected()
    timeline.add_audio(b"\x01\x00" * 16_000)  # 1 s
    assert timeline.next_message(1 << 20) == b"\x01\x00" * 16_000
    assert final(timeline, "w1", 0.25) == [TranscriptReceived(text="w1", final=True)]
    assert timeline.settled == 8_000
    timeline.reconnected()  # a drop: the new socket starts at 0.25 s
    assert len(timeline.next_message(1 << 20) or b"") == 24_000
    final(timeline, "", 0.5)  # 0.5 s on the new socket = 0.75 s on ours
    assert timeline.settled == 24_000


def test_timeline_takes_a_late_finalize_answer_for_what_it_is():
    timeline = ListenTimeline(max_unsettled_bytes=1 << 20)
    timeline.reconnected()
    timeline.add_audio(b"\x00\x00" * 3_200)  # 200 ms
    assert timeline.finalize() == []
    assert timeline.next_message(1 << 20) is not None
    assert timeline.next_message(1 << 20) == "Finalize"
    # An ordinary final reaching the finalize point answers it...
    assert final(timeline, "", 0.2) == [
        TranscriptReceived(text="", final=True, finalized=True, end_of_turn=False)
    ]
    timeline.add_audio(b"\x00\x00" * 3_200)
    assert timeline.finalize() == []
    assert timeline.next_message(1 << 20) is not None
    assert timeline.next_message(1 << 20) == "Finalize"
    # ...so the first from_finalize answer that follows belongs to the first Finalize, not the
    # second: it settles nothing new, and the second waits for its own.
    assert final(timeline, "", 0.2, from_finalize=True) == []
    assert final(timeline, "w9", 0.4, from_finalize=True) == [
        TranscriptReceived(text="w9", final=True, finalized=True)
    ]
