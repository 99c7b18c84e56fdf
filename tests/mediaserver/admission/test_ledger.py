"""The admission ledger: its synchronous state (which the node process reuses) and LocalLedger."""

import asyncio

import pytest

from config.settings import LimitsSettings
from mediaserver.admission.ledger import AdmissionLedger, LedgerState, LocalLedger


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(**limits) -> LedgerState:
    return LedgerState(LimitsSettings(**limits))


def test_slots_are_exact_against_the_server_and_company_limits():
    ledger = state(max_calls=3, company_max_calls=2)
    assert ledger.take("a1", "a", "w1") is None
    assert ledger.take("a2", "a", "w1") is None
    assert ledger.take("a3", "a", "w1") == "company_capacity"
    assert ledger.take("b1", "b", "w2") is None
    assert ledger.take("c1", "c", "w2") == "capacity"
    assert (ledger.count(), ledger.count("a"), ledger.count("b"), ledger.count("c")) == (3, 2, 1, 0)
    assert ledger.room() == "capacity" and ledger.room("c") == "capacity"
    assert ledger.free("a1") and not ledger.free("a1")  # a second free finds nothing
    assert ledger.room() is None and ledger.room("a") is None
    assert ledger.take("c1", "c", "w2") is None


def test_a_dead_holder_gives_back_every_slot_it_held():
    ledger = state()
    for call_id, holder in (("x", "w1"), ("y", "w2"), ("z", "w1")):
        assert ledger.take(call_id, "acme", holder) is None
    assert ledger.holders() == {"w1": 2, "w2": 1}
    assert ledger.free_holder("w1") == ["x", "z"]
    assert ledger.free_holder("w1") == []
    assert (ledger.holder_of("x"), ledger.holder_of("y")) == (None, "w2")
    assert ledger.count("acme") == 1


def test_taking_a_held_slot_again_is_a_no_op_for_its_holder_and_an_error_for_another():
    ledger = state(max_calls=1)
    assert ledger.take("x", "acme", "w1") is None
    assert ledger.take("x", "acme", "w1") is None  # a retried request
    assert ledger.count() == 1
    with pytest.raises(ValueError, match="already holds"):
        ledger.take("x", "acme", "w2")


def test_zero_limits_refuse_every_call():
    assert state(max_calls=0).take("x", "acme", "w") == "capacity"
    assert state(company_max_calls=0).take("x", "acme", "w") == "company_capacity"
    assert state(company_max_calls=0).room() is None  # no company: only the server's limit


def test_call_attempts_and_api_requests_are_counted_in_sliding_minutes():
    clock = FakeClock()
    limits = LimitsSettings(call_attempts_per_min=2, requests_per_min=1)
    ledger = LedgerState(limits, clock=clock)
    assert ledger.call_attempt("a") == 0.0
    clock.now += 10
    assert ledger.call_attempt("a") == 0.0
    assert ledger.call_attempt("a") == pytest.approx(50.0)  # the first leaves the window then
    assert ledger.call_attempt("b") == 0.0  # per company
    clock.now += 50
    assert ledger.call_attempt("a") == 0.0
    assert ledger.api_request("k1") == 0.0
    assert ledger.api_request("k1") == pytest.approx(60.0)
    assert ledger.api_request("k2") == 0.0


def test_call_attempts_are_unlimited_when_off():
    ledger = state(call_attempts_per_min=0)
    assert all(ledger.call_attempt("a") == 0.0 for _ in range(1000))


def test_local_ledger_is_an_admission_ledger_over_the_state():
    async def scenario():
        local = LocalLedger(LimitsSettings(max_calls=1), holder="w7")
        ledger: AdmissionLedger = local
        assert await ledger.room() is None
        assert await ledger.take_slot("x", "acme") is None
        assert await ledger.holder("x") == "w7"
        assert await ledger.room("acme") == "capacity"
        assert await ledger.take_slot("y", "acme") == "capacity"
        await ledger.free_slot("x")
        await ledger.free_slot("x")
        assert await ledger.holder("x") is None and local.state.count() == 0
        assert await ledger.call_attempt("acme") == 0.0
        assert await ledger.api_request("key") == 0.0

    asyncio.run(scenario())
