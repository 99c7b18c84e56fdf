from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from actors.agent import AgentConfig
from actors.call_handle import CallHandle
from actors.call_registry import CallRegistry
from actors.faults import FaultPlan
from actors.messages import AdmitCall, CallAdmitted, CallRefused
from actors.runtime import Dispatcher
from actors.switchboard import Switchboard
from actors.timer import Timer
from config.settings import SupervisionSettings, VadSettings
from tests.actors.fakes import Caller, RecordingOutbox, Script, fake_engines

VAD = VadSettings(min_speech_ms=64, end_of_turn_silence_ms=200)
SUPERVISION = SupervisionSettings(
    backoff_initial_ms=1,
    backoff_max_ms=20,
    audio_backlog_ms=60_000,  # tests feed audio faster than real time
    stall_timeout_s=1.0,
    stt_progress_timeout_s=0.5,
    llm_progress_timeout_s=0.5,
    tts_progress_timeout_s=0.5,
)
AGENT = AgentConfig(
    id="agent-1", name="Test agent", system_prompt="Be brief.", greeting="Hello there."
)
_ids = itertools.count(1)


@dataclass
class Call:
    call_id: str
    outbox: RecordingOutbox
    handle: CallHandle
    script: Script
    caller: Caller
    faults: FaultPlan | None


class Harness:
    def __init__(
        self,
        dispatcher: Dispatcher,
        timer: Timer,
        supervision: SupervisionSettings,
    ) -> None:
        self.dispatcher, self.timer = dispatcher, timer
        self.registry = CallRegistry()
        self.switchboard = Switchboard.start(
            dispatcher,
            supervision=supervision,
            vad=VAD,
            registry=self.registry,
            timer=timer,
        )

    def admit(
        self,
        *,
        script: Script | None = None,
        faults: FaultPlan | None = None,
        agent: AgentConfig = AGENT,
        company_id: str = "acme",
    ) -> Call | CallRefused:
        call_id = f"call-{next(_ids)}"
        outbox = RecordingOutbox()
        script = script or Script(timer=self.timer)
        script.timer = self.timer
        self.switchboard.tell(
            AdmitCall(
                call_id=call_id,
                company_id=company_id,
                agent=agent,
                transport="test",
                outbox=outbox,
                engines=fake_engines(script),
                faults=faults,
            )
        )
        outbox.wait_for(lambda box: box.of(CallAdmitted) or box.of(CallRefused))
        if refused := outbox.of(CallRefused):
            return refused[0]
        handle = outbox.of(CallAdmitted)[0].handle
        return Call(call_id, outbox, handle, script, Caller(call_id, handle.send_audio), faults)

    def call(self, **kwargs: object) -> Call:
        call = self.admit(**kwargs)  # type: ignore[arg-type]
        assert isinstance(call, Call), call
        return call


@contextmanager
def make_harness(supervision: SupervisionSettings = SUPERVISION) -> Iterator[Harness]:
    dispatcher = Dispatcher(threads=2, name="test-calls")
    timer = Timer("test-timer")
    timer.call_later(0, lambda: None)  # start its thread now, so thread counts have a baseline
    try:
        yield Harness(dispatcher, timer, supervision)
    finally:
        dispatcher.shutdown(5.0)
        timer.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    with make_harness() as harness:
        yield harness
