"""The real server on 127.0.0.1 for telephony tests, scripted carriers, and a fake Twilio REST API.

`TelephonyServer` builds the same pieces as the composition root (store, actors, CallEdge,
the FastAPI app, uvicorn on a bound socket) on its own event loop thread. `FakeTwilio` and
`FakeExotel` are websocket clients that send the carriers' real JSON and emulate playback:
a mark is echoed once the audio sent before it has played (in real time), or at once on `clear`.
`FakeTwilioApi` is an HTTP server recording REST hang-ups.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from actors.engines import CallEngines, Sink, TranscriptReceived
from config.settings import Settings
from mediaserver.admission.load_gate import LoadGate
from mediaserver.app import http_server, start_actors
from mediaserver.calls import CallEdge
from mediaserver.lifecycle import Lifecycle
from mediaserver.startup import bind_socket, ensure_demo_tenant
from mediaserver.store import Store
from mediaserver.telephony import g711
from mediaserver.telephony.exotel_stream import exotel_routes
from mediaserver.telephony.twilio_rest import TwilioCalls
from mediaserver.telephony.twilio_stream import twilio_routes
from tests.actors.fakes import FakeLlm, FakeTts, FakeVad, Script
from tests.timing import MS

ACCOUNT_SID = "AC" + "0" * 32
TWILIO_TOKEN = "test-auth-token"


def call_sid(n: int = 1) -> str:
    return f"CA{n:032x}"


# -- fake engines that survive G.711 -------------------------------------------------------------


class HeardStt:
    """STT fake for telephone audio: every finalized utterance is heard as `text`."""

    def __init__(self, text: str = "what are your opening hours") -> None:
        self.text = text
        self.bytes_heard = 0

    def open(self, call_id: str, sink: Sink) -> HeardStt.Stream:
        return HeardStt.Stream(self, sink)

    class Stream:
        def __init__(self, stt: HeardStt, sink: Sink) -> None:
            self.stt, self.sink = stt, sink

        def send(self, pcm: bytes, /) -> None:
            self.stt.bytes_heard += len(pcm)

        def finalize(self) -> None:
            self.sink(TranscriptReceived(text=self.stt.text, final=True, finalized=True))

        def cancel(self) -> None:
            pass

        def close(self) -> None:
            pass


@dataclass
class FakeEngines:
    """An `EngineSource`: energy VAD, a fixed transcript, the actor tests' LLM and TTS."""

    script: Script = field(default_factory=lambda: Script(tts_ms_per_word=100))
    stt: HeardStt = field(default_factory=HeardStt)

    def engines_for(self, agent: object, /) -> CallEngines:
        return CallEngines(
            stt=self.stt, llm=FakeLlm(self.script), tts=FakeTts(self.script), vad=FakeVad
        )


# -- the server ------------------------------------------------------------------------------------


class TelephonyServer:
    """Store, actors, CallEdge and the telephony routes behind uvicorn, on a loop thread."""

    def __init__(self, tmp_path, engines: Any, **sections: Any) -> None:
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        server = {"public_url": self.url, "port": self.port, **sections.pop("server", {})}
        self.settings = Settings(
            server=server, store={"path": str(tmp_path / "store.db")}, **sections
        )
        self.engines = engines
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="telephony-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30_000 * MS) or self._error is not None:
            raise AssertionError(f"the server did not start: {self._error!r}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        settings = self.settings
        self.store = await Store.open(settings.store.path)
        await ensure_demo_tenant(self.store)
        self.lifecycle = Lifecycle()
        self.calls = start_actors(settings)
        self.gate = LoadGate(settings.limits)  # no probes: open until a test forces it
        self.edge = CallEdge(
            store=self.store,
            switchboard=self.calls.switchboard,
            registry=self.calls.registry,
            lifecycle=self.lifecycle,
            limits=settings.limits,
            engines=self.engines,
            gate=self.gate,
        )
        self.rest = TwilioCalls(settings.twilio)
        app = FastAPI()
        app.include_router(
            twilio_routes(
                self.edge,
                self.store,
                server=settings.server,
                settings=settings.twilio,
                calls=self.rest,
            )
        )
        app.include_router(exotel_routes(self.edge, self.store, settings=settings.exotel))
        self.server = http_server(app, settings)
        serving = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            await asyncio.sleep(0.01)
        self.lifecycle.mark_ready()
        self._stopped = asyncio.Event()
        self._ready.set()
        await self._stopped.wait()
        self.server.should_exit = True
        await serving
        await self.edge.close(5.0)
        await self.calls.close()
        await self.store.close()

    def run(self, coroutine_factory: Callable[[], Any], timeout: float = 10_000 * MS) -> Any:
        """Run a coroutine on the server's loop (store queries) and return its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine_factory(), self.loop)
        return future.result(timeout)

    def call_later(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def run_sync(self, fn: Callable[[], Any]) -> Any:
        """Call `fn` on the server's loop (the load gate is loop only) and return its result."""

        async def call() -> Any:
            return fn()

        return self.run(call)

    def edge_refusals(self) -> dict[str, int]:
        """Calls refused so far, by reason, as `inspect stats` reads them."""
        return self.calls.registry.admissions()[1]

    def stop(self) -> None:
        if self._stopped is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(30_000 * MS)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # store helpers --------------------------------------------------------------------------

    def demo_company(self):
        companies = self.run(self.store.list_companies)
        return next(c for c in companies if c.name == "demo")

    def wait_for_call(self, predicate: Callable[[Any], bool], timeout: float = 10_000 * MS):
        """The first call row (any company) matching `predicate`, polled until it appears."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            calls = self.run(lambda: self.store.admin_list_calls(limit=50))
            for found in calls:
                if predicate(found):
                    return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no such call; calls: {calls}")
            pause.wait(0.02)

    def wait_for_turn(self, call, predicate, timeout: float = 10_000 * MS):
        """The first stored turn of `call` matching `predicate`, polled until it appears."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            turns = self.turns(call)
            for turn in turns:
                if predicate(turn):
                    return turn
            if time.monotonic() > deadline:
                raise AssertionError(f"no such turn; turns: {turns}")
            pause.wait(0.02)

    def wait_for_event(self, call, kind: str, timeout: float = 10_000 * MS):
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            events = self.events(call)
            for event in events:
                if event.kind == kind:
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} event; events: {events}")
            pause.wait(0.02)

    def events(self, call):
        return self.run(lambda: self.store.list_events(call.company_id, call.id))

    def turns(self, call):
        return self.run(lambda: self.store.list_turns(call.company_id, call.id))


# -- a fake Twilio REST API ----------------------------------------------------------------------


class FakeTwilioApi:
    """Records `POST .../Calls/{sid}.json`; answers 200 (or `status`)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with api._changed:
                    api.requests.append(
                        {
                            "path": self.path,
                            "form": dict(parse_qsl(body.decode())),
                            "authorization": self.headers.get("Authorization", ""),
                        }
                    )
                    api._changed.notify_all()
                self.send_response(api.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "completed"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait_for_requests(self, n: int, timeout: float = 10_000 * MS) -> list[dict[str, Any]]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"{len(self.requests)} REST requests, wanted {n}")
            return list(self.requests)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


# -- scripted carriers -----------------------------------------------------------------------------


class FakeCarrier:
    """A websocket client: sends JSON, records everything received, emulates playback.

    After `start`, `stream()` sends the caller's audio in real time the way carriers do: a
    message every `frame_s`, silence when the caller says nothing; `speak` queues words.
    """

    sid_key = "streamSid"
    stream_sid = ""
    bytes_per_second = 8000  # of outbound (server -> carrier) wire audio
    frame_s = 0.02
    frame_bytes = 320  # PCM16 8 kHz per inbound message

    def media(self, pcm: bytes) -> None:
        raise NotImplementedError

    def __init__(self, url: str, *, headers: dict[str, str] | None = None) -> None:
        self.ws: ClientConnection = connect(
            url, additional_headers=headers, open_timeout=5, legacy=True
        )
        self.received: list[dict[str, Any]] = []
        self.audio = bytearray()  # every outbound audio payload, in order
        self.media_sizes: list[int] = []
        self.media_times: list[float] = []
        self.marks_echoed: list[str] = []
        self.clears = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.sequence = 0
        self.media_since_clear = 0
        self._queued: deque[bytes] = deque()
        self._streaming = threading.Event()
        self._send_lock = threading.Lock()
        self._pending_marks: list[tuple[float, str]] = []  # (plays at, name)
        self._plays_until = 0.0
        self._changed = threading.Condition()
        self._receiver = threading.Thread(target=self._receive, daemon=True)
        self._receiver.start()
        self._echoer = threading.Thread(target=self._echo_marks, daemon=True)
        self._echoer.start()

    # receiving and playback ---------------------------------------------------------------------

    def _receive(self) -> None:
        try:
            for text in self.ws:
                message = json.loads(text)
                now = time.monotonic()
                with self._changed:
                    self.received.append(message)
                    self._on_message(message, now)
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            with self._changed:
                close = self.ws.protocol.close_rcvd
                self.close_code = close.code if close is not None else 1006
                self.close_reason = close.reason if close is not None else ""
                self._changed.notify_all()

    def _on_message(self, message: dict[str, Any], now: float) -> None:
        match message.get("event"):
            case "media":
                payload = base64.b64decode(message["media"]["payload"], validate=True)
                self.audio += payload
                self.media_sizes.append(len(payload))
                self.media_times.append(now)
                self.media_since_clear += 1
                self._plays_until = (
                    max(self._plays_until, now) + len(payload) / self.bytes_per_second
                )
            case "mark":
                self._pending_marks.append((max(self._plays_until, now), message["mark"]["name"]))
            case "clear":
                self.clears += 1
                self.media_since_clear = 0
                self._plays_until = now
                names = [name for _, name in self._pending_marks]
                self._pending_marks.clear()
                for name in names:  # returned at once, as Twilio does on clear
                    self._send_mark(name)

    def _echo_marks(self) -> None:
        while True:
            with self._changed:
                if self.close_code is not None:
                    return
                due = [m for m in self._pending_marks if m[0] <= time.monotonic()]
                for mark in due:
                    self._pending_marks.remove(mark)
                    self._send_mark(mark[1])
                self._changed.wait(0.005)

    def _send_mark(self, name: str) -> None:
        self.marks_echoed.append(name)
        with suppress(ConnectionClosed):
            self.send({"event": "mark", self.sid_key: self.stream_sid, "mark": {"name": name}})

    def wait_for(self, predicate: Callable[[FakeCarrier], object], timeout: float = 10_000 * MS):
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                events = [m.get("event") for m in self.received[-10:]]
                raise AssertionError(
                    f"timed out; last events {events}, close {self.close_code} {self.close_reason}"
                )

    def wait_closed(self, timeout: float = 10_000 * MS) -> tuple[int | None, str]:
        self.wait_for(lambda c: c.close_code is not None, timeout)
        return self.close_code, self.close_reason

    @property
    def events(self) -> list[str | None]:
        with self._changed:
            return [m.get("event") for m in self.received]

    # sending ------------------------------------------------------------------------------------

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        with self._send_lock:
            self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    def stream(self) -> None:
        """Send caller audio from now on, in real time: queued speech, else silence."""
        self._streaming.set()
        threading.Thread(target=self._pace, daemon=True).start()

    def _pace(self) -> None:
        t0 = time.monotonic()
        tick = 0
        while self._streaming.is_set() and self.close_code is None:
            with self._changed:
                pcm = self._queued.popleft() if self._queued else bytes(self.frame_bytes)
                self._changed.notify_all()
            try:
                self.media(pcm)
            except ConnectionClosed:
                return
            tick += 1
            _sleep_until(t0 + tick * self.frame_s)

    def speak(self, pcm8k: bytes, *, silence_ms: int = 0, wait: bool = True) -> None:
        """Queue 8 kHz PCM16 speech (then silence); with `wait`, return once it was sent."""
        audio = pcm8k + bytes(silence_ms * 16)
        audio += bytes(-len(audio) % self.frame_bytes)
        with self._changed:
            for start in range(0, len(audio), self.frame_bytes):
                self._queued.append(audio[start : start + self.frame_bytes])
        if wait:
            seconds = len(audio) / 16_000
            self.wait_for(lambda c: not c._queued, (seconds + 5) * 1000 * MS)

    def stop_streaming(self) -> None:
        self._streaming.clear()

    def next_sequence(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    def close(self) -> None:
        self.ws.close()


class FakeTwilio(FakeCarrier):
    """Twilio Media Streams as the docs describe it (protocols.md section 1)."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, sid: int = 1) -> None:
        self.stream_sid = f"MZ{sid:032x}"
        self.call_sid = call_sid(sid)
        self.chunk = 0
        super().__init__(url, headers=headers)

    def start(self, custom_parameters: dict[str, str] | None = None) -> None:
        self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self.send(
            {
                "event": "start",
                "sequenceNumber": self.next_sequence(),
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": ACCOUNT_SID,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": custom_parameters or {},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )

    def media(self, pcm: bytes) -> None:
        """One message of caller audio: 8 kHz PCM16, sent as mu-law."""
        self.media_ulaw(g711.ulaw_encode(pcm))

    def media_ulaw(self, ulaw: bytes) -> None:
        self.chunk += 1
        self.send(
            {
                "event": "media",
                "sequenceNumber": self.next_sequence(),
                "streamSid": self.stream_sid,
                "media": {
                    "track": "inbound",
                    "chunk": str(self.chunk),
                    "timestamp": str(self.chunk * 20),
                    "payload": base64.b64encode(ulaw).decode(),
                },
            }
        )

    def dtmf(self, digit: str) -> None:
        self.send(
            {
                "event": "dtmf",
                "sequenceNumber": self.next_sequence(),
                "streamSid": self.stream_sid,
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    def stop(self) -> None:
        self.stop_streaming()
        self.send(
            {
                "event": "stop",
                "sequenceNumber": self.next_sequence(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid},
            }
        )


class FakeExotel(FakeCarrier):
    """Exotel's voicebot stream as its docs describe it (protocols.md section 2)."""

    sid_key = "stream_sid"
    bytes_per_second = 16_000  # PCM16 at 8 kHz
    frame_s = 0.1  # Exotel sends about every 100 ms
    frame_bytes = 1600

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, camel: bool = False):
        self.stream_sid = "b5c1e2f0a9d8"
        self.camel = camel
        if camel:
            self.sid_key = "streamSid"
        self.chunk = 0
        super().__init__(url, headers=headers)

    def start(
        self, custom_parameters: dict[str, str] | None = None, to: str = "+918000000002"
    ) -> None:
        self.send({"event": "connected"})
        start = {
            "stream_sid": self.stream_sid,
            "call_sid": "c0ffee1234",
            "account_sid": "acme1",
            "from": "+919800000001",
            "to": to,
            "custom_parameters": custom_parameters or {},
            "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
        }
        self.send(
            {
                "event": "start",
                "sequence_number": self.next_sequence(),
                "stream_sid": self.stream_sid,
                "start": start,
            }
        )

    def media(self, pcm: bytes) -> None:
        self.chunk += 1
        self.send(
            {
                "event": "media",
                "sequence_number": self.next_sequence(),
                self.sid_key: self.stream_sid,
                "media": {
                    "chunk": str(self.chunk),
                    "timestamp": str(self.chunk * 100),
                    "payload": base64.b64encode(pcm).decode(),
                },
            }
        )

    def dtmf(self, digit: str) -> None:
        self.send(
            {
                "event": "dtmf",
                "sequence_number": self.next_sequence(),
                self.sid_key: self.stream_sid,
                "dtmf": {"digit": digit, "duration": "100"},
            }
        )

    def stop(self) -> None:
        self.stop_streaming()
        self.send(
            {
                "event": "stop",
                "sequence_number": self.next_sequence(),
                self.sid_key: self.stream_sid,
                "stop": {"call_sid": "c0ffee1234", "account_sid": "acme1", "reason": "callended"},
            }
        )


def _sleep_until(deadline: float) -> None:
    """Real-time pacing of a phone stream (not a wait for a condition)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def tone(ms: int, freq_hz: float = 440.0, rate: int = 8000, amplitude: int = 8000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes()


@contextmanager
def running(tmp_path, engines: Any, **sections: Any) -> Iterator[TelephonyServer]:
    server = TelephonyServer(tmp_path, engines, **sections)
    try:
        yield server
    finally:
        server.stop()
