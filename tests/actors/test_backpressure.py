"""Audio is real time: a consumer that falls behind loses the oldest audio, counted."""

from __future__ import annotations

import threading

from actors.faults import Fault, FaultPlan
from actors.messages import AudioDropped, HangUp
from actors.snapshot import ActorSnapshot
from tests.actors.conftest import SUPERVISION, Call, make_harness
from tests.actors.fakes import SILENCE, wait_until


def ingest_snapshot(call: Call) -> ActorSnapshot:
    tree = call.handle.tree()
    assert tree is not None
    return tree.children[1]


def test_a_stuck_ingest_drops_its_oldest_audio_and_says_how_much():
    settings = SUPERVISION.model_copy(update={"audio_backlog_ms": 100, "stall_timeout_s": 5.0})
    with make_harness(settings) as harness:
        release = threading.Event()
        plan = FaultPlan(
            Fault(child="ingest", message="AudioReceived", nth=1, kind="hang"), hang=release
        )
        call = harness.call(faults=plan)
        call.caller.frame(SILENCE)  # ingest hangs on this one
        wait_until(lambda: ingest_snapshot(call).handler_running_s > 0)
        for _ in range(50):  # 1 s of audio while the ingest is stuck
            call.caller.frame(SILENCE)
        ingest = ingest_snapshot(call)
        assert ingest.mailbox_depth <= 6  # 100 ms of 20 ms frames, plus the newest
        assert ingest.oldest_message_age_s >= 0
        release.set()
        dropped = call.outbox.wait_count(AudioDropped, 1)
        assert dropped[0].actor == "ingest"
        assert sum(d.dropped_messages for d in dropped) >= 44
        assert sum(d.dropped_ms for d in dropped) >= 880
        call.handle.tell(HangUp(call_id=call.call_id, reason="hangup"))
