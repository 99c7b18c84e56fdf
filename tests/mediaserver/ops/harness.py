"""The real server on 127.0.0.1 with its operations side: metrics, recordings, webhooks.

Built like `run_server` builds it (`build_operations`, `MeteredEngines`, `CallEdge` with the
observers, `build_http_app` with the store and metrics), with the loopback tests' engines and
an optional `FaultPlan` per call. Clients are the loopback tests' `Signal` and `Caller`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from actors.agent import AgentConfig
from actors.call_registry import CallRegistry
from actors.engines import CallEngines, EngineFailed, ReplyRequest, Sink
from actors.faults import FaultPlan
from config.settings import (
    LimitsSettings,
    RecordingSettings,
    Settings,
    SupervisionSettings,
    WebhookSettings,
)
from mediaserver.admission.load_gate import LoadGate
from mediaserver.app import Operations, build_http_app, build_operations, http_server, start_actors
from mediaserver.calls import CallEdge
from mediaserver.lifecycle import Lifecycle
from mediaserver.metrics import MeteredEngines
from mediaserver.startup import bind_socket
from mediaserver.store import AgentSpec, Store
from mediaserver.webrtc.ice import configure_ice
from tests.actors.fakes import FakeLlm, FakeVad, Script
from tests.mediaserver.webrtc.engines import ToneStt, ToneTts
from tests.mediaserver.webrtc.loopback import SUPERVISION, VAD, WEBRTC
from tests.timing import MS


class FlakyLlmStream:
    """Fails its request the way a provider engine does, while `failures` are left."""

    def __init__(self, inner: Any, sink: Sink, engines: OpsEngines) -> None:
        self.inner, self.sink, self.engines = inner, sink, engines

    def send(self, request: ReplyRequest, /) -> None:
        if self.engines.llm_failures > 0:
            self.engines.llm_failures -= 1
            self.sink(EngineFailed(error=self.engines.llm_error, gave_up=True))
            return
        self.inner.send(request)

    def finalize(self) -> None:
        self.inner.finalize()

    def cancel(self) -> None:
        self.inner.cancel()

    def close(self) -> None:
        self.inner.close()


class FlakyLlm:
    def __init__(self, inner: Any, engines: OpsEngines) -> None:
        self.inner, self.engines = inner, engines

    def open(self, call_id: str, sink: Sink) -> FlakyLlmStream:
        return FlakyLlmStream(self.inner.open(call_id, sink), sink, self.engines)


class OpsEngines:
    """Tone STT and TTS, a scripted LLM that fails `llm_failures` requests with `llm_error`."""

    def __init__(self) -> None:
        self.script = Script()
        self.llm_failures = 0
        self.llm_error = "openai: rate limited (HTTP 429)"

    def engines_for(self, agent: AgentConfig, /) -> CallEngines:
        llm = FlakyLlm(FakeLlm(self.script), self)
        return CallEngines(stt=ToneStt(), llm=llm, tts=ToneTts(), vad=FakeVad)


async def eventually(check: Callable[[], Any], timeout: float = 5000 * MS) -> Any:
    """Await `check()` every 5 ms until it returns something true; fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
    return result


@dataclass
class OpsServer:
    url: str
    key: str
    store: Store
    edge: CallEdge
    ops: Operations
    company_id: str
    agent_id: str
    recorded_agent_id: str
    openai_agent_id: str
    engines: OpsEngines
    settings: Settings
    registry: CallRegistry
    gate: LoadGate

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def signal_url(self, peer: str = "peer-1", key: str | None = None, query: str = "") -> str:
        return f"{self.ws_url}/signal/{peer}/{self.key if key is None else key}{query}"

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """GET /metrics over HTTP; every sample as {(name, sorted labels): value}."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.url}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@asynccontextmanager
async def ops_server(
    tmp_path: Any,
    *,
    limits: LimitsSettings | None = None,
    supervision: SupervisionSettings = SUPERVISION,
    faults: Callable[[], FaultPlan] | None = None,
    webhooks: WebhookSettings | None = None,
) -> AsyncIterator[OpsServer]:
    settings = Settings(
        limits=limits or LimitsSettings(),
        webrtc=WEBRTC,
        vad=VAD,
        supervision=supervision,
        recording=RecordingSettings(dir=str(tmp_path / "recordings")),
        webhooks=webhooks or WebhookSettings(backoff_initial_s=0.05, backoff_max_s=0.2),
    )
    configure_ice(settings.webrtc)
    store = await Store.open(str(tmp_path / "store.db"))
    company = await store.create_company("acme")
    agent = await store.create_agent(
        company.id, AgentSpec(name="Tester", greeting="Hello there.", system_prompt="Be brief.")
    )
    recorded = await store.create_agent(
        company.id, AgentSpec(name="Recorded", greeting="Hello there.", recording=True)
    )
    openai = await store.create_agent(company.id, AgentSpec(name="Remote", llm_engine="openai"))
    _, key = await store.create_api_key(company.id, label="test")
    lifecycle = Lifecycle()
    calls = start_actors(settings)
    # The probes run, but measure for nothing: a busy test box must not refuse calls. A test
    # closes the gate with `set_mode("off")`.
    gate = LoadGate(LimitsSettings(max_loop_lag_ms=0, max_dispatch_lag_ms=0, max_cpu_pct=0))
    ops = build_operations(settings, store, calls, gate)
    engines = OpsEngines()
    edge = CallEdge(
        store=store,
        switchboard=calls.switchboard,
        registry=calls.registry,
        lifecycle=lifecycle,
        limits=settings.limits,
        engines=MeteredEngines(engines, ops.metrics),
        outbound_audio_ms=settings.webrtc.outbound_queue_ms,
        faults=faults,
        observers=ops.observers,
        gate=gate,
    )
    app = build_http_app(lifecycle, edge=edge, settings=settings, store=store, metrics=ops.metrics)
    server = http_server(app, settings)
    sock = bind_socket("127.0.0.1", 0)
    ops.start()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not serving.done(), serving
            await asyncio.sleep(0.005)
        lifecycle.mark_ready()
        yield OpsServer(
            url=f"http://127.0.0.1:{sock.getsockname()[1]}",
            key=key,
            store=store,
            edge=edge,
            ops=ops,
            company_id=company.id,
            agent_id=agent.id,
            recorded_agent_id=recorded.id,
            openai_agent_id=openai.id,
            engines=engines,
            settings=settings,
            registry=calls.registry,
            gate=gate,
        )
    finally:
        lifecycle.begin_drain()
        await calls.drain(0.0)
        await edge.close(5000 * MS)
        await ops.close()
        server.should_exit = True
        await serving
        await calls.close()
        await store.close()
