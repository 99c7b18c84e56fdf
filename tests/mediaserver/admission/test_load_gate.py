"""The load gate from measured samples (a fake clock), and the probes that measure for it."""

import asyncio
import logging
import re
import threading
import time

import pytest

from actors.runtime import Dispatcher, PooledActor
from config.settings import LimitsSettings
from mediaserver.admission.load_gate import GateState, LoadGate
from mediaserver.admission.probes import CpuProbe, DispatchLagProbe
from mediaserver.metrics import LoopLagProbe
from tests.timing import MS

LIMITS = LimitsSettings(max_loop_lag_ms=50, max_dispatch_lag_ms=100, max_cpu_pct=85)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(
    gate: LoadGate, clock: FakeClock, seconds: float, *, loop_ms=1.0, dispatch_ms=1.0, cpu_pct=10.0
):
    """Samples as the probes take them: the loop's every 20 ms, the dispatcher's every 50 ms,
    the CPU every 250 ms."""
    for tick in range(round(seconds / 0.01)):
        clock.now += 0.01
        if tick % 2 == 0:
            gate.observe_loop_lag(loop_ms / 1000)
        if tick % 5 == 0:
            gate.observe_dispatch_lag(dispatch_ms / 1000)
        if tick % 25 == 0:
            gate.observe_cpu(cpu_pct / 100)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def gate(clock):
    return LoadGate(LIMITS, clock=clock)


def test_the_gate_closes_when_the_loop_lag_p99_passes_its_threshold(gate, clock, caplog):
    feed(gate, clock, 3.0, loop_ms=40)
    assert gate.is_open
    with caplog.at_level(logging.WARNING, "mediaserver.admission.load_gate"):
        feed(gate, clock, 0.5, loop_ms=80)
    state = gate.state()
    assert not gate.is_open and state.why == "loop_lag"
    assert state.loop_lag_p99_ms == pytest.approx(80) and state.max_loop_lag_ms == 50
    closing = [r.getMessage() for r in caplog.records]
    assert closing == ["= admission closed: loop lag p99 80 ms over 50 ms: new calls are refused"]


def test_a_single_slow_wake_up_among_a_hundred_does_not_close_it(gate, clock):
    feed(gate, clock, 2.0, loop_ms=2)
    gate.observe_loop_lag(0.5)  # one 500 ms stall: p99 of 100 samples is the second worst
    feed(gate, clock, 0.02, loop_ms=2)
    assert gate.is_open


def test_in_a_short_window_the_worst_sample_never_decides_alone(gate, clock):
    feed(gate, clock, 0.2, loop_ms=2)  # just started: 10 samples, p99 would be the maximum
    gate.observe_loop_lag(0.3)
    assert gate.is_open
    gate.observe_loop_lag(0.3)
    assert not gate.is_open


def test_the_dispatcher_lag_closes_it_too(gate, clock):
    feed(gate, clock, 1.0, dispatch_ms=150)
    assert not gate.is_open and gate.state().why == "dispatch_lag"


def test_it_reopens_only_after_both_lags_stay_under_half_their_threshold(gate, clock, caplog):
    feed(gate, clock, 1.0, loop_ms=200)
    assert not gate.is_open
    gate.refused()
    gate.refused()
    feed(gate, clock, 6.0, loop_ms=30)  # under the threshold, not under half of it
    assert not gate.is_open
    feed(gate, clock, 2.5, loop_ms=10)  # 2 s for the bad samples to age out, then 1 s calm
    assert not gate.is_open
    with caplog.at_level(logging.INFO, "mediaserver.admission.load_gate"):
        feed(gate, clock, 0.6, loop_ms=10)
    assert gate.is_open and gate.state().why == ""
    message = caplog.records[-1].getMessage()
    assert message.startswith("= admission open again after ") and "2 calls refused" in message


def test_a_lag_spike_while_calming_down_restarts_the_wait(gate, clock):
    feed(gate, clock, 0.5, loop_ms=200)
    feed(gate, clock, 2.8, loop_ms=5)
    feed(gate, clock, 0.3, loop_ms=60)  # over half the threshold: not calm
    feed(gate, clock, 1.9, loop_ms=5)
    assert not gate.is_open  # the spike's samples still count for 2 s
    feed(gate, clock, 1.5, loop_ms=5)
    assert gate.is_open


def test_the_operator_forces_it_closed_or_open_and_auto_follows_the_load_again(gate, clock):
    seen: list[GateState] = []
    unsubscribe = gate.subscribe(seen.append)
    state = gate.set_mode("off")
    assert not state.open and state.why == "forced" and state.mode == "off"
    gate.refused()
    state = gate.set_mode("auto")
    assert state.open and state.mode == "auto"
    feed(gate, clock, 0.5, loop_ms=300)
    assert not gate.is_open
    assert gate.set_mode("on").open  # admits however loaded
    feed(gate, clock, 0.5, loop_ms=300)
    assert gate.is_open
    assert not gate.set_mode("auto").open
    assert [(s.open, s.why) for s in seen] == [
        (False, "forced"),
        (True, ""),
        (False, "loop_lag"),
        (True, ""),
        (False, "loop_lag"),
    ]
    assert seen[1].refused == 1
    unsubscribe()
    gate.set_mode("on")
    assert len(seen) == 5
    with pytest.raises(ValueError, match="mode"):
        gate.set_mode("sometimes")


def test_a_failing_subscriber_is_logged_and_the_others_still_hear(gate, clock, caplog):
    def broken(state: GateState) -> None:
        raise RuntimeError("subscriber bug")

    seen: list[GateState] = []
    gate.subscribe(broken)
    gate.subscribe(seen.append)
    with caplog.at_level(logging.ERROR):
        gate.set_mode("off")
    assert len(seen) == 1 and "subscriber failed" in caplog.text


def test_the_process_cpu_closes_it_before_the_loop_lags(gate, clock, caplog):
    feed(gate, clock, 3.0, cpu_pct=80)  # busy, under the limit: open
    assert gate.is_open
    with caplog.at_level(logging.WARNING, "mediaserver.admission.load_gate"):
        feed(gate, clock, 2.0, cpu_pct=95)  # the mean over 2 s passes 85 %, no lag at all
    state = gate.state()
    assert not gate.is_open and state.why == "cpu"
    assert state.cpu_pct == pytest.approx(95) and state.max_cpu_pct == 85
    (closing,) = [r.getMessage() for r in caplog.records]  # once, as soon as the mean passed
    assert re.fullmatch(
        r"= admission closed: CPU (8[6-9]|9\d) % of a core over 85 %: new calls are refused",
        closing,
    )
    feed(gate, clock, 4.0, cpu_pct=80)  # under the limit, but not under 90 % of it (76.5)
    assert not gate.is_open
    feed(gate, clock, 4.0, cpu_pct=70)
    assert gate.is_open


def test_a_threshold_of_zero_turns_that_measurement_off(clock):
    gate = LoadGate(LimitsSettings(max_loop_lag_ms=0, max_dispatch_lag_ms=100), clock=clock)
    feed(gate, clock, 1.0, loop_ms=5000)
    assert gate.is_open
    feed(gate, clock, 1.0, loop_ms=5000, dispatch_ms=500)
    assert not gate.is_open
    feed(gate, clock, 3.5, loop_ms=5000, dispatch_ms=1)
    assert gate.is_open


def test_the_state_is_json_with_rounded_figures(gate, clock):
    feed(gate, clock, 0.5, loop_ms=12.345)
    document = gate.state().as_json()
    assert document["open"] is True and document["mode"] == "auto"
    assert document["loop_lag_p99_ms"] == 12.3 and document["max_dispatch_lag_ms"] == 100.0
    assert set(document) == {
        "open",
        "mode",
        "why",
        "loop_lag_p99_ms",
        "dispatch_lag_p99_ms",
        "cpu_pct",
        "max_loop_lag_ms",
        "max_dispatch_lag_ms",
        "max_cpu_pct",
        "refused",
        "since_s",
    }


# -- the probes, measuring for real ------------------------------------------------------------


def test_the_loop_lag_probe_sees_a_blocked_loop():
    async def scenario():
        lags: list[float] = []
        probe = LoopLagProbe(None, 0.01, on_lag=lags.append)
        probe.start()
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # hold the loop
        await asyncio.sleep(0.05)
        await probe.close()
        assert max(lags) >= 0.15

    asyncio.run(scenario())


def test_the_cpu_probe_sees_the_process_burn_a_core():
    async def scenario():
        shares: list[float] = []
        probe = CpuProbe(shares.append, interval_s=0.1)
        probe.start()
        await asyncio.sleep(0.25)
        idle = max(shares)
        ends = time.process_time() + 0.3
        while time.process_time() < ends:  # burn CPU on the loop's thread
            pass
        await asyncio.sleep(0.15)
        await probe.close()
        assert idle < 0.5
        assert max(shares) > 0.7  # the burn's interval was (nearly) all CPU

    asyncio.run(scenario())


class Blocker(PooledActor):
    """Holds a dispatcher thread for as long as it is told."""

    def __init__(self, dispatcher: Dispatcher, entered: threading.Event) -> None:
        super().__init__(dispatcher)
        self._entered = entered

    def on_receive(self, message):
        self._entered.set()
        time.sleep(message)


def test_the_dispatch_lag_probe_sees_a_busy_dispatcher():
    async def scenario():
        lags: list[float] = []
        with Dispatcher(threads=1, name="probe-test", stall_compensation_s=None) as dispatcher:
            probe = DispatchLagProbe(dispatcher, lags.append, interval_s=0.01)
            probe.start()
            deadline = time.monotonic() + 5000 * MS
            while not lags and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert lags and max(lags) < 0.1  # idle: a ping runs at once
            entered = threading.Event()
            Blocker.start(dispatcher, entered).tell(0.3)
            await asyncio.to_thread(entered.wait, 5000 * MS)
            await asyncio.sleep(0.4)
            await probe.close()
            assert max(lags) >= 0.2  # pings waited behind the blocked thread

    asyncio.run(scenario())
