"""The real server on 127.0.0.1 in the test's event loop, and real clients for it.

`running_server` builds the server the way `run_server` does (same constructors: store, ICE
policy, actors, `CallEdge`, `build_http_app`, `http_server`), with test engines instead of the
catalog. `Signal` is a websockets client speaking signal/1; `Caller` is an aiortc peer that
sends synthesized audio (tones, silence) in real time and records what it hears. Tests wait on
messages and conditions with `MS` timeouts, never on sleeps.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from actors.agent import AgentConfig
from actors.call_registry import CallRegistry
from actors.engines import CallEngines
from config.settings import (
    LimitsSettings,
    Settings,
    SupervisionSettings,
    VadSettings,
    WebRTCSettings,
)
from mediaserver.admission.load_gate import LoadGate
from mediaserver.app import build_http_app, http_server, start_actors
from mediaserver.calls import CallEdge
from mediaserver.engines.echo import EchoLlm, EchoStt, EchoTts
from mediaserver.lifecycle import Lifecycle
from mediaserver.startup import bind_socket
from mediaserver.store import AgentSpec, Store
from mediaserver.webrtc.ice import configure_ice
from tests.actors.fakes import FakeLlm, FakeVad, Script
from tests.mediaserver.webrtc.engines import BrokenStt, ToneStt, ToneTts
from tests.timing import MS

RATE = 48_000
FRAME = 960

VAD = VadSettings(min_speech_ms=60, end_of_turn_silence_ms=200)
WEBRTC = WebRTCSettings(host_addresses=["127.0.0.1"])
SUPERVISION = SupervisionSettings(dispatcher_threads=2)


class FakeEngineSource:
    """Engines by agent: `echo` names get the echo engines, anything else the tone fakes."""

    def __init__(self) -> None:
        self.script = Script()
        self.fail = False  # engines_for raises: the call is refused
        self.broken_stt = False  # the STT engine raises on open: the call tree escalates

    def engines_for(self, agent: AgentConfig, /) -> CallEngines:
        if self.fail:
            raise RuntimeError("no engines today")
        if agent.stt_engine == "echo":
            return CallEngines(stt=EchoStt(), llm=EchoLlm(), tts=EchoTts(), vad=FakeVad)
        stt = BrokenStt() if self.broken_stt else ToneStt()
        return CallEngines(stt=stt, llm=FakeLlm(self.script), tts=ToneTts(), vad=FakeVad)


@dataclass
class Server:
    url: str
    key: str
    store: Store
    edge: CallEdge
    lifecycle: Lifecycle
    company_id: str
    agent_id: str
    echo_agent_id: str
    silent_agent_id: str
    settings: Settings
    engines: FakeEngineSource
    registry: CallRegistry
    drain: Callable[[float], Any]
    gate: LoadGate
    ws_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.ws_url = self.url.replace("http://", "ws://")

    def signal_url(self, peer: str = "peer-1", key: str | None = None, query: str = "") -> str:
        return f"{self.ws_url}/signal/{peer}/{self.key if key is None else key}{query}"


@asynccontextmanager
async def running_server(
    tmp_path: Any,
    *,
    limits: LimitsSettings | None = None,
    webrtc: WebRTCSettings = WEBRTC,
) -> AsyncIterator[Server]:
    settings = Settings(
        limits=limits or LimitsSettings(),
        webrtc=webrtc,
        vad=VAD,
        supervision=SUPERVISION,
    )
    configure_ice(settings.webrtc)
    store = await Store.open(str(tmp_path / "store.db"))
    company = await store.create_company("acme")
    agent = await store.create_agent(
        company.id, AgentSpec(name="Tester", greeting="Hello there.", system_prompt="Be brief.")
    )
    echo = await store.create_agent(
        company.id,
        AgentSpec(name="Echo", stt_engine="echo", llm_engine="echo", tts_engine="echo"),
    )
    silent = await store.create_agent(company.id, AgentSpec(name="Quiet"))
    _, key = await store.create_api_key(company.id, label="test")
    lifecycle = Lifecycle()
    calls = start_actors(settings)
    engines = FakeEngineSource()
    gate = LoadGate(settings.limits)  # no probes: open until a test forces it
    edge = CallEdge(
        store=store,
        switchboard=calls.switchboard,
        registry=calls.registry,
        lifecycle=lifecycle,
        limits=settings.limits,
        engines=engines,
        gate=gate,
        outbound_audio_ms=settings.webrtc.outbound_queue_ms,
    )
    server = http_server(build_http_app(lifecycle, edge=edge, settings=settings), settings)
    sock = bind_socket("127.0.0.1", 0)
    serving = asyncio.create_task(server.serve(sockets=[sock]))

    async def drain(drain_s: float) -> None:
        lifecycle.begin_drain()
        await calls.drain(drain_s)

    try:
        while not server.started:
            assert not serving.done(), serving
            await asyncio.sleep(0.005)
        lifecycle.mark_ready()
        yield Server(
            url=f"http://127.0.0.1:{sock.getsockname()[1]}",
            key=key,
            store=store,
            edge=edge,
            lifecycle=lifecycle,
            company_id=company.id,
            agent_id=agent.id,
            echo_agent_id=echo.id,
            silent_agent_id=silent.id,
            settings=settings,
            engines=engines,
            registry=calls.registry,
            drain=drain,
            gate=gate,
        )
    finally:
        await drain(0.0)
        await edge.close(5000 * MS)
        server.should_exit = True
        await serving
        await calls.close()
        await store.close()


# -- signaling client ---------------------------------------------------------------------------


class Signal:
    """A signal/1 client on a real websocket."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, **kwargs: Any) -> AsyncIterator[Signal]:
        async with websockets.connect(url, max_size=None, **kwargs) as ws:
            yield cls(ws)

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a message: a dict as JSON text, a str or bytes frame as it is."""
        await self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    async def recv(self, timeout: float = 5000 * MS) -> dict[str, Any]:
        text = await asyncio.wait_for(self.ws.recv(), timeout)
        message: dict[str, Any] = json.loads(text)
        self.seen.append(message)
        return message

    async def next(self, kind: str, timeout: float = 5000 * MS, **match: Any) -> dict[str, Any]:
        """The next message of type `kind` (and with the `match` fields); others are kept."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.001, deadline - time.monotonic()))
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return message

    async def closed(self, timeout: float = 5000 * MS) -> tuple[int | None, str]:
        """Read until the server closes; the close code and reason it sent."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                await self.recv(max(0.001, deadline - time.monotonic()))
        except websockets.ConnectionClosed as closed:
            rcvd = closed.rcvd
            return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


# -- media client -------------------------------------------------------------------------------


def tone(seconds: float, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


class ScriptedAudio(MediaStreamTrack):
    """Mono 48 kHz audio in real time: queued samples first, then silence (or nothing)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, dtype=np.int16)
        self._start: float | None = None
        self._pts = 0
        self.mute = asyncio.Event()  # set: stop sending frames at all (a vanished peer)
        self.sent_frames = 0

    def play(self, samples: np.ndarray) -> None:
        self._queue = np.concatenate([self._queue, samples])

    @property
    def playing(self) -> bool:
        return len(self._queue) > 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        if self.mute.is_set():
            await asyncio.Event().wait()  # never again: the peer went silent on the network
        chunk, self._queue = self._queue[:FRAME], self._queue[FRAME:]
        if len(chunk) < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), dtype=np.int16)])
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent_frames += 1
        return frame


class Caller:
    """An aiortc peer: sends a `ScriptedAudio` track, records the audio it receives (mono)."""

    def __init__(self, *, direction: str = "sendrecv", events_channel: bool = False) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.audio = ScriptedAudio()
        if direction == "recvonly":
            self.pc.addTransceiver("audio", direction="recvonly")
        else:
            self.pc.addTransceiver(self.audio, direction=direction)
        self.received: list[np.ndarray] = []
        self.first_audio_at: float | None = None
        self._heard = asyncio.Event()
        self.events: list[dict[str, Any]] = []
        self.channel = self.pc.createDataChannel("events") if events_channel else None
        if self.channel is not None:

            @self.channel.on("message")
            def on_message(text: str) -> None:
                self.events.append(json.loads(text))

        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            samples = frame.to_ndarray().reshape(-1, 2)[:, 0]  # stereo from aiortc: left
            self.received.append(samples)
            if self.first_audio_at is None and np.abs(samples).max() > 1000:
                self.first_audio_at = time.monotonic()
            self._heard.set()

    def loud_ms(self, threshold: int = 1000) -> float:
        """Milliseconds of received audio that were not silence."""
        return 20.0 * sum(1 for frame in self.received if np.abs(frame).max() > threshold)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def connected(self, timeout: float = 5000 * MS) -> None:
        await wait_for(lambda: self.pc.connectionState == "connected", timeout)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()


async def wait_for(predicate: Callable[[], object], timeout: float = 5000 * MS) -> None:
    """Poll `predicate` on the loop every 5 ms until it holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def decoder_threads() -> int:
    """aiortc's per-receiver decoder threads alive now (each peer's inbound track has one)."""
    return sum(1 for thread in threading.enumerate() if "decoder_worker" in thread.name)


def run(scenario: Callable[[], Any], timeout: float = 30_000 * MS) -> Any:
    """Run an async test scenario on a fresh event loop, failing after `timeout`."""
    return asyncio.run(asyncio.wait_for(scenario(), timeout))
