"""The hooks the debug socket uses: operator restarts, injected faults, counters, thread idents."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from actors.call_registry import CallRegistry
from actors.messages import (
    CallEnded,
    CallEventRecorded,
    ChildRestarted,
    HangUp,
    InjectFault,
    MediaConnected,
    ResponseCompleted,
    RestartChild,
    Shutdown,
)
from actors.snapshot import ActorSnapshot
from tests.actors.conftest import SUPERVISION, make_harness
from tests.actors.fakes import wait_until
from tests.timing import MS

CHILDREN = ["session", "ingest", "transcriber", "responder"]


def reply_to(call, words):
    expected = f"You said {' '.join(words)}. Okay."
    return [r for r in call.outbox.of(ResponseCompleted) if r.content == expected]


def greeted(call):
    call.handle.tell(MediaConnected(call_id=call.call_id))
    call.outbox.wait_for(lambda box: box.of(ResponseCompleted))


def snap(registry: CallRegistry, address: str) -> ActorSnapshot:
    snapshot = registry.lookup(address)
    assert snapshot is not None, address
    return snapshot


def generation(registry, address):
    return snap(registry, address).generation


@pytest.mark.parametrize("child", CHILDREN)
def test_restart_child_replaces_a_live_child_and_the_call_goes_on(harness, child):
    call = harness.call()
    greeted(call)
    address = f"{call.call_id}/{child}"
    before = generation(harness.registry, address)

    call.handle.tell(RestartChild(call_id=call.call_id, child=child, reason="operator"))

    wait_until(lambda: generation(harness.registry, address) > before)
    wait_until(lambda: snap(harness.registry, address).state in {"idle", "running"})
    snapshot = snap(harness.registry, address)
    assert snapshot.restarts == 1
    assert not call.handle.ended
    events = [e for e in call.outbox.of(CallEventRecorded) if e.kind == "child_restart_requested"]
    assert events[0].data["child"] == child
    words = call.caller.say(2)
    call.outbox.wait_for(lambda box: reply_to(call, words))


def test_restart_of_an_unknown_child_or_the_supervisor_is_ignored(harness):
    call = harness.call()
    greeted(call)
    for name in ("supervisor", "nobody"):
        call.handle.tell(RestartChild(call_id=call.call_id, child=name, reason="operator"))
    words = call.caller.say(1)
    call.outbox.wait_for(lambda box: reply_to(call, words))
    assert call.outbox.of(ChildRestarted) == []


@pytest.mark.parametrize("child", CHILDREN)
@pytest.mark.parametrize("kind", ["exception", "system_exit"])
def test_injected_fault_fails_the_child_and_supervision_restarts_it(harness, child, kind):
    call = harness.call()
    greeted(call)
    address = f"{call.call_id}/{child}"

    call.handle.tell(InjectFault(call_id=call.call_id, actor=child, kind=kind))

    restarted = call.outbox.wait_count(ChildRestarted, 1)
    assert restarted[0].child == child
    wait_until(lambda: snap(harness.registry, address).restarts == 1)
    # The new instance's snapshot still says why the slot was restarted.
    assert "injected into" in snap(harness.registry, address).last_error
    assert "injected into" in snap(harness.registry, address).last_traceback
    words = call.caller.say(2)
    call.outbox.wait_for(lambda box: reply_to(call, words))


def test_injected_fault_in_the_supervisor_ends_that_call_only(harness):
    doomed, other = harness.call(), harness.call()
    greeted(other)

    doomed.handle.tell(InjectFault(call_id=doomed.call_id, actor="supervisor"))

    ended = doomed.outbox.wait_count(CallEnded, 1)
    assert ended[0].reason == "escalated"
    words = other.caller.say(1)
    other.outbox.wait_for(lambda box: reply_to(other, words))


def test_a_hanging_handler_exposes_its_thread_for_a_stack_dump():
    with make_harness(SUPERVISION.model_copy(update={"stall_timeout_s": 5.0})) as harness:
        call = harness.call()
        address = f"{call.call_id}/session"
        call.handle.tell(
            InjectFault(call_id=call.call_id, actor="session", kind="hang", hang_s=0.5)
        )

        wait_until(lambda: snap(harness.registry, address).thread_ident is not None)
        ident = snap(harness.registry, address).thread_ident
        frames = sys._current_frames()
        assert ident in frames
        assert any(t.ident == ident for t in threading.enumerate())
        call.handle.tell(HangUp(call_id=call.call_id, reason="hangup"))
        assert call.handle.wait_ended(5000 * MS)


def test_an_idle_actor_has_no_thread():
    with make_harness() as harness:
        call = harness.call()
        greeted(call)
        wait_until(lambda: snap(harness.registry, f"{call.call_id}/responder").state == "idle")
        snapshot = snap(harness.registry, f"{call.call_id}/responder")
        assert snapshot.thread_ident is None or snapshot.state != "idle"


def test_registry_counts_admissions_and_refusals_by_reason():
    with make_harness() as harness:
        before = time.monotonic()
        call = harness.call()
        harness.switchboard.tell(Shutdown(drain_s=5.0))
        refused = harness.admit()
        assert not hasattr(refused, "handle")
        admitted, by_reason = harness.registry.admissions()
        assert admitted == 1
        assert by_reason == {"shutting_down": 1}
        entry = harness.registry.calls()[0]
        assert entry.call_id == call.call_id
        assert before <= entry.admitted_at <= time.monotonic()
