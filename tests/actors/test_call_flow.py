"""A call end to end through the real actor tree with fake engines."""

from __future__ import annotations

import threading

import pykka

from actors.messages import (
    BotAudio,
    CallEnded,
    CallEventRecorded,
    CallRefused,
    DtmfReceived,
    FlushAudio,
    HangUp,
    MediaConnected,
    PlaybackProgressed,
    ResponseCompleted,
    ResponseDelta,
    ResponseInterrupted,
    Shutdown,
    SpeechStarted,
    SpeechStopped,
    TextReceived,
    TranscriptUpdated,
    TurnRecorded,
    UsageRecorded,
)
from actors.responder import APOLOGY
from tests.actors.fakes import Script, wait_until
from tests.timing import MS


def user_texts(outbox) -> list[str]:
    return [t.text for t in outbox.of(TurnRecorded) if t.role == "user"]


def test_greeting_then_two_spoken_turns_are_answered_and_recorded(harness):
    call = harness.call()
    call.handle.tell(MediaConnected(call_id=call.call_id))
    greeting = call.outbox.wait_count(ResponseCompleted, 1)[0]
    assert greeting.content == "Hello there."

    first = call.caller.say(3)
    call.outbox.wait_count(ResponseCompleted, 2)
    second = call.caller.say(2)
    replies = call.outbox.wait_count(ResponseCompleted, 3)

    assert user_texts(call.outbox) == [" ".join(first), " ".join(second)]
    assert replies[1].content == "You said w1 w2 w3. Okay."
    assert replies[2].content == "You said w4 w5. Okay."
    box = call.outbox
    assert len(box.of(SpeechStarted)) == 2
    assert len(box.of(SpeechStopped)) == 2
    finals = [t for t in box.of(TranscriptUpdated) if t.final]
    assert [t.text for t in finals] == ["w1 w2 w3", "w4 w5"]
    assert any(not t.final for t in box.of(TranscriptUpdated))
    deltas = "".join(d.text for d in box.of(ResponseDelta) if d.turn_id == replies[1].turn_id)
    assert deltas == replies[1].content
    assert {a.turn_id for a in box.of(BotAudio)} == {r.turn_id for r in replies}
    assistant = [t for t in box.of(TurnRecorded) if t.role == "assistant"]
    assert [t.text for t in assistant] == [r.content for r in replies]
    spoken_turn = assistant[1]
    assert spoken_turn.voice_to_voice_ms is not None and spoken_turn.voice_to_voice_ms > 0
    assert spoken_turn.llm_first_token_ms is not None
    assert spoken_turn.tts_first_audio_ms is not None
    user_turn = next(t for t in box.of(TurnRecorded) if t.role == "user")
    assert user_turn.stt_ms is not None
    usage = box.of(UsageRecorded)
    assert any(u.audio_in_s > 0 for u in usage) and any(u.tokens_out > 0 for u in usage)


def test_typed_text_joins_the_conversation(harness):
    call = harness.call()
    call.handle.tell(TextReceived(call_id=call.call_id, text="hi there", received_at=5.0))
    reply = call.outbox.wait_count(ResponseCompleted, 1)[0]
    assert reply.content == "You said hi there. Okay."
    assert user_texts(call.outbox) == ["hi there"]


def test_a_keypad_press_is_stored_and_read_by_the_llm_as_text(harness):
    call = harness.call()
    call.handle.tell(DtmfReceived(call_id=call.call_id, digit="5"))
    reply = call.outbox.wait_count(ResponseCompleted, 1)[0]
    assert reply.content == "You said (keypad: 5). Okay."  # the fake LLM echoes its last input
    dtmf = [t for t in call.outbox.of(TurnRecorded) if t.role == "dtmf"]
    assert [t.text for t in dtmf] == ["(keypad: 5)"]
    events = [e for e in call.outbox.of(CallEventRecorded) if e.kind == "dtmf"]
    assert [e.data["digit"] for e in events] == ["5"]
    assert user_texts(call.outbox) == []  # not a spoken or typed turn: no transcript event
    assert call.outbox.of(TranscriptUpdated) == []


def test_barge_in_cancels_the_reply_and_records_the_spoken_text(harness):
    call = harness.call()
    call.script.tts_delay_s = 0.01
    call.caller.say(2)
    call.outbox.wait_count(BotAudio, 1)
    turn_id = call.outbox.of(BotAudio)[0].turn_id
    # "You said w1 w2." is 4 words = 400 ms of audio; the caller heard 200 ms of it.
    call.handle.tell(PlaybackProgressed(call_id=call.call_id, turn_id=turn_id, played_ms=200))
    call.caller.say(1)
    interrupted = call.outbox.wait_count(ResponseInterrupted, 1)[0]
    assert interrupted.turn_id == turn_id
    assert interrupted.spoken == "You said"
    assert call.outbox.of(FlushAudio)[0].turn_id == turn_id
    record = next(t for t in call.outbox.of(TurnRecorded) if t.turn_id == turn_id)
    assert record.interrupted and record.text == "You said"
    # The caller's new words are answered, with the interrupted turn in the history.
    replies = call.outbox.wait_count(ResponseCompleted, 1)
    assert replies[-1].content == "You said w3. Okay."


def test_hang_up_stops_every_actor_and_thread_of_the_call(harness):
    baseline_actors = len(pykka.ActorRegistry.get_all())
    baseline_threads = threading.active_count()
    call = harness.call()
    call.caller.say(1)
    call.outbox.wait_count(ResponseCompleted, 1)
    assert len(pykka.ActorRegistry.get_all()) == baseline_actors + 5
    call.handle.tell(HangUp(call_id=call.call_id, reason="bye"))
    assert call.handle.wait_ended(2000 * MS)
    ended = call.outbox.wait_count(CallEnded, 1)
    assert ended[0].reason == "bye"
    wait_until(lambda: len(pykka.ActorRegistry.get_all()) == baseline_actors)
    wait_until(lambda: threading.active_count() <= baseline_threads)
    assert harness.registry.count() == 0
    call.caller.say(1)  # the edge may still send: swallowed
    call.handle.tell(HangUp(call_id=call.call_id, reason="bye"))
    assert len(call.outbox.of(CallEnded)) == 1


def test_the_switchboard_leaves_counting_calls_to_the_edge_ledger(harness):
    # limits.max_calls and company_max_calls are the edge's ledger's (tests/mediaserver/calls).
    calls = [harness.call(company_id="a") for _ in range(3)]
    assert harness.registry.count("a") == 3
    assert all(call.handle is not None for call in calls)


def test_shutdown_refuses_new_calls_and_ends_live_ones_after_the_drain(harness):
    call = harness.call()
    harness.switchboard.tell(Shutdown(drain_s=0.05))
    refused = harness.admit()
    assert isinstance(refused, CallRefused) and refused.reason == "shutting_down"
    assert harness.registry.drained.wait(2000 * MS)
    assert call.outbox.of(CallEnded)[0].reason == "shutdown"


def test_a_failed_llm_request_is_retried_once_then_the_caller_hears_an_apology(harness):
    call = harness.call(script=Script(llm_fail=1, tts_ms_per_word=5))
    call.handle.tell(TextReceived(call_id=call.call_id, text="one", received_at=1.0))
    assert call.outbox.wait_count(ResponseCompleted, 1)[0].content == "You said one. Okay."
    call.script.llm_fail = 2
    call.handle.tell(TextReceived(call_id=call.call_id, text="two", received_at=2.0))
    apology = call.outbox.wait_count(ResponseCompleted, 2)[1]
    assert apology.content == APOLOGY
    assert any(a.turn_id == apology.turn_id for a in call.outbox.of(BotAudio))
    events = call.outbox.of(CallEventRecorded)
    assert any(e.kind == "reply_failed" and e.data["turn_id"] == apology.turn_id for e in events)
