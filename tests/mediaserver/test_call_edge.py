"""The call edge without a network: a recording transport, the real tree, the real store."""

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from pykka import ActorDeadError

from actors.agent import FaqRule as AgentFaqRule
from actors.messages import (
    BotAudio,
    CallEnded,
    EndReason,
    FlushAudio,
    Outbound,
    ResponseCompleted,
    Shutdown,
)
from config.settings import LimitsSettings, Settings, SupervisionSettings
from mediaserver.admission.ledger import LocalLedger, SlotRefusal
from mediaserver.admission.load_gate import LoadGate
from mediaserver.app import start_actors
from mediaserver.calls import CallEdge, CallEvent, CallRefusal
from mediaserver.calls.edge import agent_config
from mediaserver.calls.outbox import CallOutbox
from mediaserver.calls.recorder import wall_time
from mediaserver.lifecycle import Lifecycle
from mediaserver.store import AgentSpec, FaqRule, Store, StoreBusy, VadOverrides
from tests.mediaserver.webrtc.loopback import VAD, FakeEngineSource, run, wait_for
from tests.timing import MS


@dataclass
class RecordingTransport:
    """A transport that records what the call gave it."""

    events: list[CallEvent] = field(default_factory=list)
    audio: list[BotAudio] = field(default_factory=list)
    flushes: int = 0
    closed: list[EndReason] = field(default_factory=list)

    def send_event(self, event: CallEvent, /) -> None:
        self.events.append(event)

    def send_audio(self, audio: BotAudio, /) -> None:
        self.audio.append(audio)

    def flush_audio(self) -> None:
        self.flushes += 1

    async def close(self, reason: EndReason, /) -> None:
        self.closed.append(reason)


@dataclass
class Edge:
    edge: CallEdge
    store: Store
    company: Any
    agent: Any
    lifecycle: Lifecycle
    engines: FakeEngineSource
    registry: Any
    calls: Any


@asynccontextmanager
async def edge_for(
    tmp_path,
    limits: LimitsSettings | None = None,
    store_class: type[Store] = Store,
    *,
    ledger: Any = None,
    gate: LoadGate | None = None,
) -> AsyncIterator[Edge]:
    settings = Settings(
        limits=limits or LimitsSettings(),
        vad=VAD,
        supervision=SupervisionSettings(backoff_initial_ms=1, backoff_max_ms=20),
    )
    store = await store_class.open(str(tmp_path / "edge.db"))
    company = await store.create_company("acme")
    agent = await store.create_agent(company.id, AgentSpec(name="Tester", greeting="Hi."))
    lifecycle = Lifecycle()
    lifecycle.mark_ready()
    calls = start_actors(settings)
    engines = FakeEngineSource()
    edge = CallEdge(
        store=store,
        switchboard=calls.switchboard,
        registry=calls.registry,
        lifecycle=lifecycle,
        limits=settings.limits,
        engines=engines,
        ledger=ledger,
        gate=gate,
    )
    try:
        yield Edge(edge, store, company, agent, lifecycle, engines, calls.registry, calls)
    finally:
        lifecycle.begin_drain()
        with contextlib.suppress(ActorDeadError):  # a test stopped the Switchboard
            await calls.drain(0.0)
        await edge.close(5000 * MS)
        await calls.close()
        await store.close()


def test_a_call_runs_until_hung_up_and_persists_its_facts(tmp_path):
    async def scenario():
        async with edge_for(tmp_path) as e:
            transport = RecordingTransport()
            call = await e.edge.open_call(
                e.company, transport=transport, transport_name="webrtc", peer_id="p1"
            )
            stored = await e.store.get_call(e.company.id, call.call_id)
            assert stored is not None and stored.active
            assert stored.conversation_id == call.conversation_id
            call.text_received("good morning")
            await wait_for(lambda: any(isinstance(m, ResponseCompleted) for m in transport.events))
            assert transport.audio and {a.turn_id for a in transport.audio} == {2}
            call.hang_up("bye")
            call.hang_up("idle")  # a later reason changes nothing
            await asyncio.wait_for(call.finished.wait(), 5000 * MS)
            assert transport.closed == ["bye"]
            ended = await e.store.get_call(e.company.id, call.call_id)
            assert ended is not None and ended.end_reason == "bye"
            turns = await e.store.list_turns(e.company.id, call.call_id)
            assert [(t.seq, t.role) for t in turns] == [(1, "user"), (2, "assistant")]
            usage = await e.store.list_usage(e.company.id, call.call_id)
            assert {u.provider for u in usage} == {"offline"}  # the agent's engine names
            assert sum(u.tokens_out for u in usage) > 0 and sum(u.audio_out_s for u in usage) > 0
            events = await e.store.list_events(e.company.id, call.call_id)
            assert [ev.kind for ev in events] == ["started"]
            assert e.edge.get(call.call_id) is None
            assert e.registry.count() == 0

    run(scenario)


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (LimitsSettings(max_call_duration_s=0.3), "max_duration"),
        (LimitsSettings(idle_timeout_s=0.3), "idle"),
    ],
)
def test_duration_and_idle_limits_end_the_call(tmp_path, limits, reason):
    async def scenario():
        async with edge_for(tmp_path, limits) as e:
            transport = RecordingTransport()
            call = await e.edge.open_call(
                e.company, transport=transport, transport_name="webrtc", peer_id="p1"
            )
            await asyncio.wait_for(call.finished.wait(), 5000 * MS)
            assert transport.closed == [reason] and call.end_reason == reason

    run(scenario)


def test_activity_keeps_an_idle_timer_from_firing(tmp_path):
    async def scenario():
        async with edge_for(tmp_path, LimitsSettings(idle_timeout_s=0.4)) as e:
            call = await e.edge.open_call(
                e.company, transport=RecordingTransport(), transport_name="webrtc", peer_id="p"
            )
            for _ in range(4):
                await asyncio.sleep(0.2)  # the caller types every 200 ms: never 400 ms idle
                call.text_received("still here")
            assert not call.ending
            await asyncio.wait_for(call.finished.wait(), 5000 * MS)
            assert call.end_reason == "idle"

    run(scenario)


def test_the_tree_ending_itself_is_reported_once(tmp_path):
    async def scenario():
        async with edge_for(tmp_path) as e:
            e.engines.broken_stt = True
            transport = RecordingTransport()
            call = await e.edge.open_call(
                e.company, transport=transport, transport_name="webrtc", peer_id="p1"
            )
            await asyncio.wait_for(call.finished.wait(), 5000 * MS)
            call.hang_up("bye")  # too late: nothing happens
            assert transport.closed == ["escalated"]
            stored = await e.store.get_call(e.company.id, call.call_id)
            assert stored is not None and stored.end_reason == "escalated"
            kinds = [ev.kind for ev in await e.store.list_events(e.company.id, call.call_id)]
            assert kinds[0] == "started" and "escalated" in kinds

    run(scenario)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("draining", "shutting_down"),
        ("unknown_agent", "unknown_agent"),
        ("engines_fail", "internal"),
        ("attempts", "rate_limited"),
        ("capacity", "capacity"),
        ("company_capacity", "company_capacity"),
    ],
)
def test_refusals_leave_nothing_behind(tmp_path, setup, reason):
    async def scenario():
        limits = {
            "attempts": LimitsSettings(call_attempts_per_min=1),
            "capacity": LimitsSettings(max_calls=0),
            "company_capacity": LimitsSettings(company_max_calls=0),
        }.get(setup)
        async with edge_for(tmp_path, limits) as e:
            agent_id = None
            if setup == "draining":
                e.lifecycle.begin_drain()
            elif setup == "unknown_agent":
                agent_id = "nope"
            elif setup == "engines_fail":
                e.engines.fail = True
            elif setup == "attempts":
                first = await e.edge.open_call(
                    e.company, transport=RecordingTransport(), transport_name="webrtc", peer_id="a"
                )
                first.hang_up("bye")
            before = len(await e.store.list_calls(e.company.id))
            with pytest.raises(CallRefusal) as refused:
                await e.edge.open_call(
                    e.company,
                    transport=RecordingTransport(),
                    transport_name="webrtc",
                    peer_id="b",
                    agent_id=agent_id,
                )
            assert refused.value.reason == reason
            if reason == "rate_limited":
                assert 0 < refused.value.retry_after_s <= 60
            assert len(await e.store.list_calls(e.company.id)) == before
            await wait_for(lambda: e.registry.count() == 0)

    run(scenario)


def test_an_unknown_key_is_unauthorized(tmp_path):
    async def scenario():
        async with edge_for(tmp_path) as e:
            with pytest.raises(CallRefusal) as refused:
                await e.edge.authenticate("msk_nothing")
            assert refused.value.reason == "unauthorized"
            _, key = await e.store.create_api_key(e.company.id)
            assert (await e.edge.authenticate(key)).id == e.company.id

    run(scenario)


class RowlessStore(Store):
    """A store whose disk is full, as far as new conversations go."""

    async def create_conversation(self, company_id: str, agent_id: str, peer_id: str) -> Any:
        raise StoreBusy("database is locked")


def test_a_store_that_fails_after_admission_aborts_the_tree(tmp_path):
    async def scenario():
        async with edge_for(tmp_path, store_class=RowlessStore) as e:
            transport = RecordingTransport()
            with pytest.raises(CallRefusal) as refused:
                await e.edge.open_call(
                    e.company, transport=transport, transport_name="webrtc", peer_id="x"
                )
            assert refused.value.reason == "internal"
            await wait_for(lambda: e.registry.count() == 0)  # no zombie tree
            assert transport.closed == []  # the caller never had a call to be told about
            assert await e.store.list_calls(e.company.id) == []

    run(scenario)


def test_store_rows_become_the_trees_agent_config():
    spec = AgentSpec(
        name="Support",
        greeting="Hello",
        voice="espeak",
        stt_engine="deepgram",
        faq=(
            FaqRule(match=r"open(ing)? hours", answer="9 to 5"),
            FaqRule(match=("price", "cost"), answer="Free"),
        ),
        vad=VadOverrides(threshold=0.7, turn_end="provider"),
    )
    row = _Agent(id="a1", spec=spec)
    config = agent_config(row)  # type: ignore[arg-type]  # a row's shape is all it reads
    assert (config.id, config.name, config.voice, config.stt_engine) == (
        "a1",
        "Support",
        "espeak",
        "deepgram",
    )
    assert config.faq == (
        AgentFaqRule(pattern=r"open(ing)? hours", answer="9 to 5", regex=True),
        AgentFaqRule(pattern="price,cost", answer="Free", regex=False),
    )
    assert config.vad.threshold == 0.7 and config.vad.turn_end == "provider"
    assert config.vad.min_speech_ms is None


@dataclass
class _Agent:
    id: str
    spec: AgentSpec


def test_the_outbox_drops_the_oldest_audio_never_control_and_never_raises():
    async def scenario():
        loop = asyncio.get_running_loop()
        outbox = CallOutbox(loop, audio_backlog_ms=100)
        second = bytes(32_000)  # 1 s at 16 kHz
        messages: list[Outbound] = [
            BotAudio(call_id="c", turn_id=1, pcm=second[:1600], sample_rate=16_000),  # 50 ms
            FlushAudio(call_id="c", turn_id=1),
            BotAudio(call_id="c", turn_id=2, pcm=second[:1600], sample_rate=16_000),
            BotAudio(call_id="c", turn_id=3, pcm=second[:1600], sample_rate=16_000),
            CallEnded(call_id="c", reason="bye"),
        ]

        def from_an_actor_thread() -> None:
            for message in messages:
                outbox.put(message)

        thread = threading.Thread(target=from_an_actor_thread)
        thread.start()
        thread.join()
        got = [await asyncio.wait_for(outbox.get(), 1000 * MS) for _ in range(4)]
        assert [type(m).__name__ for m in got] == [
            "FlushAudio",
            "BotAudio",
            "BotAudio",
            "CallEnded",
        ]
        assert [m.turn_id for m in got if isinstance(m, BotAudio)] == [2, 3]
        assert outbox.dropped_audio_ms == 50
        return outbox

    outbox = run(scenario)
    outbox.put(CallEnded(call_id="c", reason="bye"))  # after the loop closed: dropped quietly


def test_actor_times_become_wall_clock_times():
    now_wall, now_mono = time.time(), time.monotonic()
    assert wall_time(now_mono - 2.0) == pytest.approx(now_wall - 2.0, abs=0.05)


# -- admission: the ledger counts, the gate refuses by load --------------------------------------


class RecordingLedger(LocalLedger):
    """A LocalLedger that records every slot taken and freed."""

    def __init__(self, limits: LimitsSettings) -> None:
        super().__init__(limits)
        self.taken: list[str] = []
        self.freed: list[str] = []
        self.on_take: Any = None

    async def take_slot(self, call_id: str, company_id: str, /) -> SlotRefusal | None:
        refusal = await super().take_slot(call_id, company_id)
        if refusal is None:
            self.taken.append(call_id)
            if self.on_take is not None:
                self.on_take()
        return refusal

    async def free_slot(self, call_id: str, /) -> None:
        self.freed.append(call_id)
        await super().free_slot(call_id)


def test_ten_simultaneous_calls_of_a_company_with_three_slots_admit_exactly_three(tmp_path):
    async def scenario():
        limits = LimitsSettings(company_max_calls=3)
        async with edge_for(tmp_path, limits) as e:
            outcomes = await asyncio.gather(
                *(
                    e.edge.open_call(
                        e.company,
                        transport=RecordingTransport(),
                        transport_name="webrtc",
                        peer_id=f"p{n}",
                    )
                    for n in range(10)
                ),
                return_exceptions=True,
            )
            admitted = [o for o in outcomes if not isinstance(o, BaseException)]
            refused = [o for o in outcomes if isinstance(o, CallRefusal)]
            assert len(admitted) == 3 and len(refused) == 7
            assert {r.reason for r in refused} == {"company_capacity"}
            assert e.registry.count() == 3
            assert len(await e.store.list_calls(e.company.id)) == 3
            assert e.registry.admissions()[1] == {"company_capacity": 7}
            for call in admitted:
                call.hang_up("bye")
                await asyncio.wait_for(call.finished.wait(), 5000 * MS)
            assert e.edge.ledger.state.count() == 0  # type: ignore[attr-defined]

    run(scenario)


@pytest.mark.parametrize("path", ["finished", "store_fails", "switchboard_refuses", "cancelled"])
def test_a_slot_is_freed_exactly_once_on_every_path(tmp_path, path):
    async def scenario():
        ledger = RecordingLedger(LimitsSettings())
        store_class = RowlessStore if path == "store_fails" else Store
        async with edge_for(tmp_path, store_class=store_class, ledger=ledger) as e:
            if path == "switchboard_refuses":
                e.calls.switchboard.tell(Shutdown(drain_s=0.0))  # the lifecycle still accepts
            opening: asyncio.Future[Any] = asyncio.ensure_future(
                e.edge.open_call(
                    e.company, transport=RecordingTransport(), transport_name="webrtc", peer_id="p"
                )
            )
            if path == "cancelled":
                ledger.on_take = opening.cancel  # while it holds the slot
                with pytest.raises(asyncio.CancelledError):
                    await opening
            elif path == "finished":
                call = await opening
                assert ledger.freed == []
                call.hang_up("bye")
                call.hang_up("idle")
                await asyncio.wait_for(call.finished.wait(), 5000 * MS)
                await wait_for(lambda: ledger.freed)
            else:
                with pytest.raises(CallRefusal):
                    await opening
            await asyncio.sleep(0.05)  # a second free would have come by now
            assert len(ledger.taken) == 1 and ledger.freed == ledger.taken
            assert ledger.state.count() == 0

    run(scenario)


def test_no_slot_is_taken_for_a_call_refused_before_it(tmp_path):
    async def scenario():
        ledger = RecordingLedger(LimitsSettings())
        async with edge_for(tmp_path, ledger=ledger) as e:
            e.engines.fail = True
            with pytest.raises(CallRefusal):
                await e.edge.open_call(
                    e.company, transport=RecordingTransport(), transport_name="webrtc", peer_id="p"
                )
            assert ledger.taken == [] and ledger.freed == []

    run(scenario)


def test_a_closed_load_gate_refuses_new_calls_and_keeps_the_live_ones(tmp_path):
    async def scenario():
        gate = LoadGate(LimitsSettings())
        ledger = RecordingLedger(LimitsSettings())
        async with edge_for(tmp_path, gate=gate, ledger=ledger) as e:
            live = await e.edge.open_call(
                e.company, transport=RecordingTransport(), transport_name="webrtc", peer_id="a"
            )
            gate.set_mode("off")
            assert await e.edge.readiness() == "full"
            with pytest.raises(CallRefusal) as refused:
                await e.edge.open_call(
                    e.company, transport=RecordingTransport(), transport_name="webrtc", peer_id="b"
                )
            assert refused.value.reason == "load"
            with pytest.raises(CallRefusal) as no_room:
                await e.edge.ensure_room(e.company.id)
            assert no_room.value.reason == "load"
            assert gate.state().refused == 2
            assert e.registry.admissions()[1] == {"load": 2}
            assert len(ledger.taken) == 1 and not live.ending
            assert len(await e.store.list_calls(e.company.id)) == 1
            gate.set_mode("auto")
            assert await e.edge.readiness() == "ready"
            await e.edge.ensure_room(e.company.id)

    run(scenario)


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (LimitsSettings(max_calls=1), "capacity"),
        (LimitsSettings(company_max_calls=1), "company_capacity"),
    ],
)
def test_ensure_room_asks_the_ledger_without_taking_a_slot(tmp_path, limits, reason):
    async def scenario():
        async with edge_for(tmp_path, limits) as e:
            await e.edge.ensure_room(e.company.id)
            await e.edge.ensure_room(e.company.id)
            call = await e.edge.open_call(
                e.company, transport=RecordingTransport(), transport_name="webrtc", peer_id="a"
            )
            with pytest.raises(CallRefusal) as refused:
                await e.edge.ensure_room(e.company.id)
            assert refused.value.reason == reason
            assert await e.edge.readiness() == ("full" if reason == "capacity" else "ready")
            call.hang_up("bye")

    run(scenario)


def test_readiness_follows_the_lifecycle_and_the_switchboard(tmp_path):
    async def scenario():
        async with edge_for(tmp_path) as e:
            assert await e.edge.readiness() == "ready"
            e.calls.switchboard.stop(block=True, timeout=5000 * MS)
            assert await e.edge.readiness() == "admission_failed"
            e.lifecycle.begin_drain()
            assert await e.edge.readiness() == "draining"

    run(scenario)
