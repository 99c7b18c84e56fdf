"""Whole calls through the real actor tree with the embedded engines, on speech made by Piper.

The caller's audio is synthesized, resampled to 16 kHz and fed as 20 ms frames through the call
handle, on a timeline that ends now (as if captured in real time), so the recorded latencies
are the ones a caller would see. Playback is reported by the test, like a transport would.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest
from pykka import ActorRef

from actors.agent import AgentConfig, FaqRule
from actors.call_handle import CallHandle
from actors.call_registry import CallRegistry
from actors.messages import (
    AdmitCall,
    AudioReceived,
    BotAudio,
    CallAdmitted,
    CallEnded,
    FlushAudio,
    HangUp,
    MediaConnected,
    PlaybackProgressed,
    ResponseCompleted,
    ResponseInterrupted,
    SpeechStarted,
    TranscriptUpdated,
    TurnRecorded,
)
from actors.runtime import Dispatcher
from actors.switchboard import Switchboard
from actors.timer import Timer
from config.settings import SupervisionSettings, VadSettings
from mediaserver.engines.silero import SileroVadFactory
from tests.actors.fakes import RecordingOutbox
from tests.mediaserver.engines.conftest import words
from tests.timing import MS

FRAME_BYTES = 640  # 20 ms at 16 kHz
HOURS = "We are open from nine in the morning to six in the evening, Monday to Saturday."
GREETING = "Hello, and thank you for calling the corner bakery. How can I help you today?"
AGENT = AgentConfig(
    id="bakery",
    name="Bakery",
    greeting=GREETING,
    faq=(FaqRule(pattern="opening hours, open", answer=HOURS),),
)
TIMEOUT = 30_000 * MS  # Whisper and Piper on a busy 2-core box


@dataclass
class Call:
    call_id: str
    handle: CallHandle
    outbox: RecordingOutbox

    def speak(self, pcm: bytes, silence_ms: int) -> None:
        """Feed `pcm` then `silence_ms` of silence as 20 ms frames ending now."""
        audio = pcm + bytes(len(pcm) % FRAME_BYTES and FRAME_BYTES - len(pcm) % FRAME_BYTES)
        audio += bytes(silence_ms * 32)
        t = time.monotonic() - len(audio) / 32_000
        for i in range(0, len(audio), FRAME_BYTES):
            self.handle.send_audio(
                AudioReceived(
                    call_id=self.call_id,
                    pcm=audio[i : i + FRAME_BYTES],
                    sample_rate=16_000,
                    captured_at=t,
                )
            )
            t += 0.02

    def played_all(self, turn_id: int) -> None:
        """The transport says the whole turn was played (ends it without waiting in real time)."""
        self.handle.tell(PlaybackProgressed(call_id=self.call_id, turn_id=turn_id, played_ms=1e6))

    def turn(self, turn_id: int, role: str) -> TurnRecorded:
        self.outbox.wait_for(
            lambda box: any(t.turn_id == turn_id and t.role == role for t in box.of(TurnRecorded)),
            TIMEOUT,
        )
        return next(t for t in self.outbox.of(TurnRecorded) if t.turn_id == turn_id)


@contextmanager
def running_switchboard() -> Iterator[ActorRef[Switchboard]]:
    dispatcher = Dispatcher(threads=2, name="offline-calls")
    timer = Timer("offline-timer")
    try:
        yield Switchboard.start(
            dispatcher,
            supervision=SupervisionSettings(audio_backlog_ms=60_000),  # audio comes faster
            vad=VadSettings(),
            registry=CallRegistry(),
            timer=timer,
        )
    finally:
        dispatcher.shutdown(5.0)
        timer.close()


@pytest.fixture
def switchboard() -> Iterator[ActorRef[Switchboard]]:
    with running_switchboard() as board:
        yield board


def admit(board, catalog, call_id: str, vad=None) -> Call:
    outbox = RecordingOutbox()
    engines = catalog.engines_for(AGENT)
    board.tell(
        AdmitCall(
            call_id=call_id,
            company_id="acme",
            agent=AGENT,
            transport="test",
            outbox=outbox,
            engines=engines if vad is None else replace(engines, vad=vad),
        )
    )
    outbox.wait_for(lambda box: box.of(CallAdmitted), TIMEOUT)
    return Call(call_id, outbox.of(CallAdmitted)[0].handle, outbox)


@pytest.fixture
def call(switchboard, catalog) -> Iterator[Call]:
    live = admit(switchboard, catalog, "offline-1")
    yield live
    live.handle.tell(HangUp(call_id=live.call_id, reason="bye"))
    assert live.handle.wait_ended(5000 * MS)
    assert live.outbox.of(CallEnded)[0].reason == "bye"


def test_a_spoken_question_is_transcribed_answered_and_voiced(call, say):
    call.speak(say("What are your opening hours?"), silence_ms=800)

    final = next(
        t
        for t in call.outbox.wait_count(TranscriptUpdated, 1, TIMEOUT)
        if t.final  # Whisper has no interim results
    )
    assert {"opening", "hours"} <= words(final.text), final.text
    call.outbox.wait_for(lambda box: box.of(BotAudio), TIMEOUT)
    reply_turn = call.outbox.of(BotAudio)[0].turn_id
    call.played_all(reply_turn)

    assistant = call.turn(reply_turn, "assistant")
    user = call.turn(final.turn_id, "user")
    completed = call.outbox.wait_count(ResponseCompleted, 1, TIMEOUT)[0]
    assert completed.content == HOURS == assistant.text
    audio = [a for a in call.outbox.of(BotAudio) if a.turn_id == reply_turn]
    assert {a.sample_rate for a in audio} == {22_050}
    assert sum(len(a.pcm) for a in audio) / 2 / 22_050 > 3.0  # the whole answer was voiced
    assert user.stt_ms is not None and user.stt_ms > 0
    for latency in (
        assistant.llm_first_token_ms,
        assistant.tts_first_audio_ms,
        assistant.voice_to_voice_ms,
    ):
        assert latency is not None and latency >= 0
    assert assistant.voice_to_voice_ms is not None and assistant.voice_to_voice_ms < 10_000


def test_a_conversation_with_a_greeting_and_a_barge_in(call, say):
    call.handle.tell(MediaConnected(call_id=call.call_id))
    call.outbox.wait_for(lambda box: box.of(BotAudio), TIMEOUT)
    greeting_turn = call.outbox.of(BotAudio)[0].turn_id
    # The caller has heard about a second of the greeting when they start talking over it.
    call.handle.tell(
        PlaybackProgressed(call_id=call.call_id, turn_id=greeting_turn, played_ms=1200)
    )
    call.speak(say("Sorry, when are you open?"), silence_ms=800)

    interrupted = call.outbox.wait_count(ResponseInterrupted, 1, TIMEOUT)[0]
    assert interrupted.turn_id == greeting_turn
    assert call.outbox.of(SpeechStarted)
    assert [f.turn_id for f in call.outbox.of(FlushAudio)] == [greeting_turn]
    assert interrupted.spoken and GREETING.startswith(interrupted.spoken)
    assert interrupted.spoken != GREETING
    greeting = call.turn(greeting_turn, "assistant")
    assert greeting.interrupted and greeting.text == interrupted.spoken

    # The question asked over the greeting is answered.
    call.outbox.wait_for(
        lambda box: any(a.turn_id > greeting_turn for a in box.of(BotAudio)), TIMEOUT
    )
    answer_turn = max(a.turn_id for a in call.outbox.of(BotAudio))
    call.played_all(answer_turn)
    assert call.turn(answer_turn, "assistant").text == HOURS
    user = [t for t in call.outbox.of(TurnRecorded) if t.role == "user"]
    assert len(user) == 1 and "open" in words(user[0].text), user[0].text


def test_an_ended_calls_vad_model_goes_back_to_the_pool(catalog, say):
    pool = SileroVadFactory(loading=catalog.executors.loading, spare=1)  # without onnxruntime

    def one_call() -> None:
        with running_switchboard() as board:
            call = admit(board, catalog, "offline-vad", vad=pool)
            call.speak(say("Hello there."), silence_ms=100)
            call.handle.tell(HangUp(call_id=call.call_id, reason="bye"))
            assert call.handle.wait_ended(5000 * MS)
        # The dispatcher's and timer's threads are gone too: nothing refers to the tree.

    one_call()
    catalog.executors.loading.submit(lambda: None).result()  # a spare being built is done
    gc.collect()  # the call tree's objects refer to each other
    assert pool.idle == pool.models
