"""Supervision of a live call: restarts from checkpoints, replay, escalation, stalls, isolation."""

from __future__ import annotations

import threading

import pytest

from actors.faults import Fault, FaultPlan
from actors.messages import (
    CallEnded,
    CallEventRecorded,
    ChildRestarted,
    MediaConnected,
    ResponseCompleted,
    TurnRecorded,
)
from tests.actors.conftest import SUPERVISION, make_harness
from tests.actors.fakes import Script, wait_until
from tests.timing import MS


def replies_to(call, words: list[str]) -> list[ResponseCompleted]:
    expected = f"You said {' '.join(words)}. Okay."
    return [r for r in call.outbox.of(ResponseCompleted) if r.content == expected]


def run_conversation(call) -> tuple[list[str], list[str]]:
    """Greeting, then two spoken turns, each answered before the next starts."""
    call.handle.tell(MediaConnected(call_id=call.call_id))
    call.outbox.wait_for(
        lambda box: (
            box.of(ResponseCompleted)
            or any(f.message == "MediaConnected" for f in call.faults.fired)
        )
    )
    first = call.caller.say(3)
    call.outbox.wait_for(lambda box: replies_to(call, first))
    second = call.caller.say(2)
    call.outbox.wait_for(lambda box: replies_to(call, second))
    return first, second


def assert_every_word_once(call, first, second):
    user = [t.text for t in call.outbox.of(TurnRecorded) if t.role == "user"]
    assert user == [" ".join(first), " ".join(second)]
    assert len(replies_to(call, first)) == 1
    assert len(replies_to(call, second)) == 1
    assistant_ids = [t.turn_id for t in call.outbox.of(TurnRecorded) if t.role == "assistant"]
    assert len(assistant_ids) == len(set(assistant_ids))


CRASHES = [
    ("session", "MediaConnected", 1),
    ("session", "InterimTranscribed", 2),
    ("session", "UtteranceTranscribed", 1),
    ("session", "UtteranceTranscribed", 2),
    ("session", "ReplyFinished", 2),
    ("ingest", "AudioReceived", 12),
    ("ingest", "AudioReceived", 45),
    ("ingest", "TranscriberStarted", 1),
    ("transcriber", "TranscribeAudio", 7),
    ("transcriber", "TurnEnded", 1),
    ("transcriber", "AudioReplayed", 1),
    ("transcriber", "EngineOutput", 4),
    ("responder", "Speak", 1),
    ("responder", "Reply", 1),
    ("responder", "EngineOutput", 5),
    ("responder", "CallerStartedSpeaking", 2),
    ("responder", "PlaybackDue", 2),
]


@pytest.mark.parametrize("kind", ["exception", "system_exit"])
@pytest.mark.parametrize(("child", "message", "nth"), CRASHES)
def test_a_crashed_child_restarts_from_its_checkpoint_and_no_word_is_lost_or_doubled(
    harness, child, message, nth, kind
):
    plan = FaultPlan(Fault(child=child, message=message, nth=nth, kind=kind))
    call = harness.call(faults=plan, script=Script(tts_ms_per_word=5))
    first, second = run_conversation(call)
    assert [f.child for f in plan.fired] == [child]
    assert_every_word_once(call, first, second)
    restarted = call.outbox.of(ChildRestarted)
    assert restarted and restarted[0].child == child
    assert not call.outbox.of(CallEnded)


def test_an_engine_that_gives_up_is_replaced_and_the_audio_replayed(harness):
    call = harness.call(
        faults=FaultPlan(), script=Script(stt_fail_after_words=2, tts_ms_per_word=5)
    )
    first, second = run_conversation(call)
    assert_every_word_once(call, first, second)
    assert call.script.streams["stt"] == 2
    assert [r.child for r in call.outbox.of(ChildRestarted)] == ["transcriber", "responder"]


def test_too_many_restarts_escalate_and_end_the_call():
    settings = SUPERVISION.model_copy(update={"max_restarts": 2})
    with make_harness(settings) as harness:
        faults = [Fault(child="transcriber", message="EngineOutput", nth=n) for n in (2, 4, 6)]
        call = harness.call(faults=FaultPlan(*faults))
        call.caller.say(3)
        ended = call.outbox.wait_count(CallEnded, 1)
        assert ended[0].reason == "escalated"
        assert "transcriber" in ended[0].detail
        assert any(e.kind == "escalated" for e in call.outbox.of(CallEventRecorded))
        assert call.handle.wait_ended(1000 * MS)
        wait_until(lambda: harness.registry.count() == 0)


def test_a_hung_engine_is_detected_and_replaced_without_duplicate_output(harness):
    call = harness.call(faults=FaultPlan(), script=Script(llm_hang=1, tts_ms_per_word=5))
    words = call.caller.say(2)
    call.outbox.wait_for(lambda box: replies_to(call, words), timeout=3000 * MS)
    assert len(replies_to(call, words)) == 1
    failures = [e for e in call.outbox.of(CallEventRecorded) if e.kind == "child_failed"]
    assert failures[0].data["child"] == "responder"
    assert "llm engine silent" in str(failures[0].data["error"])
    user = [t for t in call.outbox.of(TurnRecorded) if t.role == "user"]
    assert [t.text for t in user] == [" ".join(words)]


def test_a_handler_stuck_past_the_stall_timeout_is_abandoned_and_replaced(harness):
    release = threading.Event()
    plan = FaultPlan(Fault(child="responder", message="Reply", nth=1, kind="hang"), hang=release)
    call = harness.call(faults=plan, script=Script(tts_ms_per_word=5))
    try:
        words = call.caller.say(2)
        call.outbox.wait_for(lambda box: replies_to(call, words), timeout=4000 * MS)
        tree = call.handle.tree()
        responder = next(s for s in tree.children if s.address.endswith("/responder"))
        assert responder.restarts == 1
        assert responder.generation == 2
        failures = [e for e in call.outbox.of(CallEventRecorded) if e.kind == "child_failed"]
        assert "handler running" in str(failures[0].data["error"])
    finally:
        release.set()
    assert len(replies_to(call, words)) == 1


def test_a_system_exit_in_one_call_leaves_another_call_untouched(harness):
    doomed_plan = FaultPlan(
        *[
            Fault(child="transcriber", message="EngineOutput", nth=n, kind="system_exit")
            for n in range(2, 40, 2)
        ]
    )
    doomed = harness.call(faults=doomed_plan)
    healthy = harness.call(faults=FaultPlan(), script=Script(tts_ms_per_word=5))
    doomed.caller.say(3)
    assert doomed.outbox.wait_count(CallEnded, 1)[0].reason == "escalated"
    first, second = run_conversation(healthy)
    assert_every_word_once(healthy, first, second)
    assert not healthy.outbox.of(CallEnded)
    assert not healthy.outbox.of(ChildRestarted)


def test_the_tree_snapshot_is_readable_without_asking_the_actors(harness):
    call = harness.call(
        faults=FaultPlan(Fault(child="transcriber", message="AudioReplayed", nth=1))
    )
    words = call.caller.say(2)
    call.outbox.wait_for(lambda box: replies_to(call, words))
    tree = call.handle.tree()
    assert tree is not None and tree.state == "running"
    assert [s.address for s in tree.children] == [
        f"{call.call_id}/{name}" for name in ("session", "ingest", "transcriber", "responder")
    ]
    transcriber = tree.children[2]
    assert transcriber.restarts == 1 and transcriber.generation == 2
    session = harness.registry.lookup(f"{call.call_id}/session")
    assert session is not None and session.handled > 0 and session.checkpoint_size > 0
    assert harness.registry.lookup(f"{call.call_id}/supervisor").state == "running"
    assert harness.registry.lookup("nope/session") is None
