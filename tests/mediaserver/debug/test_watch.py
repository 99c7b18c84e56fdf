"""Event fan-out, the outbox tap and the snapshot poller, without a socket."""

from __future__ import annotations

import threading

from actors.messages import (
    AudioDropped,
    BotAudio,
    CallEnded,
    CallEventRecorded,
    Outbound,
    SpeechStarted,
    TurnRecorded,
)
from actors.snapshot import ActorSnapshot, CallTree
from mediaserver.debug.poller import TreePoller, lifecycle
from mediaserver.debug.watch import DebugEvent, DebugEvents, Watcher
from tests.actors.fakes import RecordingOutbox


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def event(call_id="c", kind="test", n=0):
    return DebugEvent(at=0.0, call_id=call_id, kind=kind, data={"n": n})


def test_a_watcher_takes_what_it_was_offered_in_order():
    watcher = Watcher(None, rate_per_s=100, clock=FakeClock())
    for n in range(5):
        watcher.offer(event(n=n))
    events, dropped = watcher.take(3)
    assert [e.data["n"] for e in events] == [0, 1, 2]
    assert dropped == 0
    assert [e.data["n"] for e in watcher.take(10)[0]] == [3, 4]


def test_a_watcher_over_its_rate_drops_and_counts():
    clock = FakeClock()
    watcher = Watcher(None, rate_per_s=10, clock=clock)
    for n in range(25):
        watcher.offer(event(n=n))
    events, dropped = watcher.take(100)
    assert (len(events), dropped) == (10, 15)
    assert watcher.take(100) == ([], 0)  # the count is told once
    clock.now += 0.5  # half a second refills five
    for n in range(10):
        watcher.offer(event(n=n))
    assert [len(part) if isinstance(part, list) else part for part in watcher.take(100)] == [5, 5]


def test_a_watcher_that_is_never_drained_stays_bounded():
    clock = FakeClock()
    watcher = Watcher(None, rate_per_s=1000, capacity=50, clock=clock)
    for n in range(10_000):
        clock.now += 0.01
        watcher.offer(event(n=n))
    events, dropped = watcher.take(10_000)
    assert (len(events), dropped) == (50, 9950)
    assert [e.data["n"] for e in events] == list(range(50))  # the oldest kept: no gap inside


def test_events_lost_before_a_watcher_are_told_with_its_own_drops():
    watcher = Watcher(None, rate_per_s=1, clock=FakeClock())
    watcher.offer(event(n=0))
    watcher.offer(event(n=1))  # over the rate
    watcher.count_dropped(40)  # lost upstream (a worker's watch, relayed by the node)
    events, dropped = watcher.take(10)
    assert (len(events), dropped, watcher.dropped_total) == (1, 41, 41)


def test_an_event_names_its_worker_only_when_it_has_one():
    assert "worker" not in event().as_json()
    relayed = DebugEvent(at=1.0, call_id=None, kind="worker", data={"state": "up"}, worker=2)
    assert relayed.as_json() == {
        "event": "worker",
        "call": None,
        "at": 1.0,
        "data": {"state": "up"},
        "worker": 2,
    }


def test_a_watcher_of_one_call_ignores_the_others():
    watcher = Watcher("mine", clock=FakeClock())
    watcher.offer(event("other"))
    watcher.offer(event("mine"))
    assert [e.call_id for e in watcher.take(10)[0]] == ["mine"]


def publish_many(events, call_id):
    for _ in range(100):
        events.publish(call_id, "x", {})


def test_publish_reaches_every_watcher_from_any_thread():
    events = DebugEvents()
    one, two = events.subscribe(None, rate_per_s=1000), events.subscribe("b", rate_per_s=1000)
    threads = [threading.Thread(target=publish_many, args=(events, c)) for c in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(one.take(1000)[0]) == 200
    assert {e.call_id for e in two.take(1000)[0]} == {"b"}
    events.unsubscribe(one)
    events.unsubscribe(two)
    assert not events.watching


def test_the_tap_passes_everything_through_and_publishes_the_facts():
    events = DebugEvents()
    watcher = events.subscribe(None)
    inner = RecordingOutbox()
    outbox = events.tap(inner)
    messages: list[Outbound] = [
        BotAudio(call_id="c", turn_id=1, pcm=b"\0\0", sample_rate=16000),
        SpeechStarted(call_id="c", at=1.0),
        TurnRecorded(
            call_id="c",
            turn_id=2,
            role="assistant",
            text="Hi there",
            started_at=1.0,
            ended_at=2.0,
            voice_to_voice_ms=420.0,
        ),
        AudioDropped(call_id="c", actor="transcriber", dropped_ms=40.0, dropped_messages=2),
        CallEventRecorded(call_id="c", kind="reply_failed", data={"error": "boom"}, at=3.0),
        CallEventRecorded(call_id="c", kind="dtmf", data={"digit": "5"}, at=3.0),
    ]
    for message in messages:
        outbox.put(message)
    assert inner.messages == messages
    published = [(e.kind, dict(e.data)) for e in watcher.take(100)[0]]
    assert published == [
        ("speech", {"speaking": True}),
        (
            "turn",
            {
                "turn_id": 2,
                "role": "assistant",
                "chars": 8,
                "interrupted": False,
                "stt_ms": None,
                "llm_first_token_ms": None,
                "tts_first_audio_ms": None,
                "voice_to_voice_ms": 420.0,
            },
        ),
        ("error", {"event": "reply_failed", "error": "boom"}),
    ]
    summary = events.summary("c")
    assert summary is not None
    assert (summary.turns, summary.last_voice_to_voice_ms) == (1, 420.0)
    outbox.put(CallEnded(call_id="c", reason="bye"))
    assert events.summary("c") is None
    assert watcher.take(10)[0][0].kind == "ended"


def test_the_tap_keeps_turn_counts_even_when_nobody_watches():
    events = DebugEvents()
    outbox = events.tap(RecordingOutbox())
    outbox.put(
        TurnRecorded(call_id="c", turn_id=1, role="user", text="x", started_at=0, ended_at=1)
    )
    summary = events.summary("c")
    assert summary is not None
    assert summary.turns == 1
    assert events.published == 0


def snapshot(address, state="idle", generation=1, error="", dropped=0, restarts=0):
    return ActorSnapshot(
        address=address,
        state=state,
        generation=generation,
        restarts=restarts,
        mailbox_depth=0,
        oldest_message_age_s=0.0,
        handled=0,
        dropped=dropped,
        dropped_ms=20.0 * dropped,
        handler_running_s=0.0,
        last_error=error,
        last_traceback="Traceback...\n" if error else "",
        checkpoint_size=0,
    )


def tree(call_id, call_state="running", **ingest):
    return CallTree(
        call_id=call_id,
        state=call_state,
        supervisor=snapshot(f"{call_id}/supervisor", state="running"),
        children=(snapshot(f"{call_id}/session"), snapshot(f"{call_id}/ingest", **ingest)),
    )


def test_the_poller_takes_a_baseline_first():
    poller = TreePoller()
    assert poller.needs_baseline
    assert poller.poll({"a": tree("a")}) == []
    assert not poller.needs_baseline
    assert poller.poll({"a": tree("a", state="handling AudioReceived")}) == []


def test_the_poller_reports_restarts_errors_states_and_dropped_audio():
    poller = TreePoller()
    poller.poll({"a": tree("a", dropped=3)})
    assert poller.poll({"a": tree("a", state="handling X", dropped=5)}) == [
        ("a", "audio_dropped", {"actor": "a/ingest", "messages": 2, "ms": 40.0}),
    ]
    changed = tree("a", state="starting", generation=2, error="Boom: x", dropped=1, restarts=1)
    assert poller.poll({"a": changed}) == [
        ("a", "restart", {"actor": "a/ingest", "generation": 2, "restarts": 1}),
        ("a", "state", {"actor": "a/ingest", "from": "running", "to": "starting"}),
        ("a", "error", {"actor": "a/ingest", "error": "Boom: x", "traceback": "Traceback...\n"}),
        ("a", "audio_dropped", {"actor": "a/ingest", "messages": 1, "ms": 20.0}),
    ]


def test_the_poller_reports_calls_coming_changing_and_going():
    poller = TreePoller()
    poller.poll({"a": tree("a")})
    assert poller.poll({"a": tree("a"), "b": tree("b")}) == [("b", "call", {"state": "running"})]
    assert poller.poll({"b": tree("b", call_state="ended: bye")}) == [
        ("b", "call", {"state": "ended: bye"}),
        ("a", "call", {"state": "gone"}),
    ]
    poller.reset()
    assert poller.poll({}) == []


def test_lifecycle_folds_idle_and_handling_into_running():
    assert lifecycle("idle") == lifecycle("handling AudioReceived") == "running"
    assert lifecycle("failed") == "failed"
