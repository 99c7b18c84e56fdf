"""Ending a call: every child's last facts reach the outbox before the one `CallEnded`."""

from __future__ import annotations

import threading

from actors.faults import Fault, FaultPlan
from actors.messages import (
    CallEnded,
    CallEventRecorded,
    DtmfReceived,
    HangUp,
    Outbound,
    TurnRecorded,
)
from actors.snapshot import CallTree
from tests.actors.conftest import SUPERVISION, Call, make_harness
from tests.actors.fakes import wait_until
from tests.timing import MS


def tree_of(call: Call) -> CallTree:
    tree = call.handle.tree()
    assert tree is not None
    return tree


def press(call: Call, *digits: str) -> None:
    for digit in digits:
        call.handle.tell(DtmfReceived(call_id=call.call_id, digit=digit))


def hang_up(call: Call) -> None:
    """Tell `HangUp` and wait until the supervisor has handled it (it is idle, not running)."""
    call.handle.tell(HangUp(call_id=call.call_id, reason="hangup"))

    def handled() -> bool:
        tree = tree_of(call)
        return tree.state != "running" and tree.supervisor.handler_running_s == 0.0

    wait_until(handled)


def before_the_end(call: Call) -> list[Outbound]:
    """The outbox up to (not including) the first `CallEnded`; there must be exactly one."""
    messages = list(call.outbox.messages)
    ends = [i for i, m in enumerate(messages) if isinstance(m, CallEnded)]
    assert len(ends) == 1, messages[ends[0] :] if ends else messages
    return messages[: ends[0]]


def events(messages, kind: str) -> list[CallEventRecorded]:
    return [m for m in messages if isinstance(m, CallEventRecorded) and m.kind == kind]


def dtmf_events(messages) -> list[object]:
    return [e.data["digit"] for e in events(messages, "dtmf")]


def test_a_fact_the_session_records_during_the_hang_up_lands_before_call_ended(harness):
    release = threading.Event()
    # The Session is inside its handler for "#" when the supervisor handles HangUp.
    plan = FaultPlan(
        Fault(child="session", message="DtmfReceived", nth=2, kind="hang"), hang=release
    )
    call = harness.call(faults=plan)
    press(call, "5", "#")
    wait_until(lambda: plan.fired)
    hang_up(call)
    release.set()

    call.outbox.wait_count(CallEnded, 1)
    assert call.handle.wait_ended(2000 * MS)
    early = before_the_end(call)
    assert dtmf_events(early) == ["5", "#"]
    dtmf_turns = [m.text for m in early if isinstance(m, TurnRecorded) and m.role == "dtmf"]
    assert dtmf_turns == ["(keypad: 5)", "(keypad: #)"]
    assert call.outbox.of(CallEnded)[0].reason == "hangup"
    assert not events(early, "end_cut_short")
    wait_until(lambda: harness.registry.count() == 0)


def test_a_child_that_fails_while_the_call_ends_counts_as_stopped():
    # A stop timeout far beyond the wait below: the end must not come from the fallback.
    settings = SUPERVISION.model_copy(update={"stop_timeout_s": 60.0})
    with make_harness(settings) as harness:
        release = threading.Event()
        plan = FaultPlan(
            Fault(child="session", message="DtmfReceived", nth=1, kind="hang"),
            Fault(child="session", message="DtmfReceived", nth=2),
            hang=release,
        )
        call = harness.call(faults=plan)
        press(call, "5", "#")
        wait_until(lambda: plan.fired)
        hang_up(call)
        release.set()

        ended = call.outbox.wait_count(CallEnded, 1, timeout=2000 * MS)[0]
        assert ended.reason == "hangup"
        assert dtmf_events(before_the_end(call)) == ["5"]
        wait_until(lambda: harness.registry.count() == 0)


def test_a_child_that_never_stops_is_cut_short_and_the_call_still_ends():
    settings = SUPERVISION.model_copy(update={"stop_timeout_s": 0.2})
    with make_harness(settings) as harness:
        release = threading.Event()
        plan = FaultPlan(
            Fault(child="session", message="DtmfReceived", nth=1, kind="hang"), hang=release
        )
        call = harness.call(faults=plan)
        try:
            press(call, "5")
            wait_until(lambda: plan.fired)
            hang_up(call)
            ended = call.outbox.wait_count(CallEnded, 1, timeout=2000 * MS)[0]
            assert ended.reason == "hangup"
            assert "session" in ended.detail
            early = before_the_end(call)
            cut = events(early, "end_cut_short")
            assert [e.data["children"] for e in cut] == ["session"]
            assert call.handle.wait_ended(1000 * MS)
            wait_until(lambda: harness.registry.count() == 0)
            assert tree_of(call).children[0].state == "abandoned"
        finally:
            release.set()
        # The abandoned handler finishes now; nothing it does reaches the outbox.
        wait_until(lambda: tree_of(call).children[0].state == "idle")
        assert dtmf_events(call.outbox.messages) == []
        assert len(call.outbox.of(CallEnded)) == 1
