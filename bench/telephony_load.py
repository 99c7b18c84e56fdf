"""Benchmark Twilio Media Streams under load: N concurrent phone calls, media both ways.

Three processes, so each one's CPU can be told apart:

- the **server** (`--serve`): the real edge (uvicorn + FastAPI websockets, `TwilioCarrier`,
  `CallEdge`, the actor tree on the shared dispatcher) with the offline VAD (Silero, pooled as
  in `EngineCatalog`) and zero-cost fake STT/LLM/TTS: every finalized turn is heard as "hello",
  answered "Sure.", and voiced with the same canned speech (espeak-ng, made once at start-up,
  at 8 kHz so no resampling is spent on it). `--vad gated` wraps Silero in an energy gate (a
  prototype of what issue 6 asks of silero.py: quiet windows skip the model); `--vad off` runs
  a zero-cost VAD, to show what Silero costs.
- the **client** (`--client`): N Twilio streams on one asyncio loop, each looping a synthesized
  question (espeak-ng, about 1.5 s) followed by silence, as mu-law 20 ms `media` messages sent
  on a shared 20 ms clock (the streams spread over the period in 10 groups), echoing each `mark`
  once the audio before it has played.
- the **orchestrator** (no flag): starts both per N, measures the server's and the client's CPU
  (psutil: CPU time / wall time, % of one core) and the server's RSS, and prints a table.

A frame is **late** when it reaches the client more than 20 ms after its schedule: the client
starts playing an answer when its first frame arrives, and frame k of it is due 20 ms * k later.
Every answer is exactly `answer_frames` long (the server prints it), a `clear` restarts the count.
`others %` is the CPU every other process on the box used during the window: on a shared box,
late frames mean little when it is high. The server also prints its event loop's lag on stderr.

Run: `.venv/bin/python bench/telephony_load.py` (about 3 minutes; `--streams 50,100 --seconds 10`
for a quick look). The last stdout line is JSON with the largest N under 1 % late frames.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

if __package__ in (None, ""):
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import logging

import numpy as np
import psutil  # type: ignore[import-untyped]  # types-psutil is not installed
from fastapi import FastAPI
from uvicorn.protocols.websockets import websockets_sansio_impl as impl
from websockets.asyncio.client import connect

from actors.engines import (
    CallEngines,
    ReplyCompleted,
    Sink,
    SpeechChunk,
    SpeechFinished,
    TokenReceived,
    TranscriptReceived,
)
from config.settings import Settings
from mediaserver.app import http_server, start_actors
from mediaserver.calls import CallEdge
from mediaserver.engines.espeak import EspeakSpeaker
from mediaserver.engines.silero import SileroVadFactory
from mediaserver.lifecycle import Lifecycle
from mediaserver.startup import bind_socket, ensure_demo_tenant
from mediaserver.store import Store
from mediaserver.telephony import g711
from mediaserver.telephony.resample import Resampler
from mediaserver.telephony.twilio_rest import TwilioCalls
from mediaserver.telephony.twilio_stream import twilio_routes

FRAME_S = 0.02
LATE_S = 0.02
GROUPS = 10  # the client's streams send in 10 groups spread over each 20 ms
QUESTION = "Could you tell me your opening hours, please?"
ANSWER = "Sure, we are open from nine to six."
LOOP_SILENCE_S = 3.5  # after each question: turn end, the answer, and a margin
ACCOUNT_SID = "AC" + "0" * 32


def speech_8k(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng, at 8 kHz, padded to whole 20 ms frames."""
    speech = EspeakSpeaker().synthesize(text)
    resampler = Resampler(speech.sample_rate, 8000)
    samples = np.frombuffer(speech.pcm, dtype=np.int16)
    out = np.concatenate((resampler.process_array(samples), resampler.flush()))
    return np.concatenate((out, np.zeros(-len(out) % 160, dtype=np.int16)))


# -- the server ---------------------------------------------------------------------------------


def serve(vad_mode: str, calls: int, switch_interval_ms: float, lazy_pause: bool) -> None:
    if switch_interval_ms:
        sys.setswitchinterval(switch_interval_ms / 1000)
    if lazy_pause:
        _pause_reading_lazily()
    logging.basicConfig(level=logging.WARNING)
    answer = speech_8k(ANSWER).tobytes()

    class Stream:
        """One stream of a zero-cost engine: `finalize` answers at once."""

        def __init__(self, sink: Sink, kind: str) -> None:
            self.sink, self.kind, self.sent = sink, kind, 0

        def send(self, item: Any, /) -> None:
            if self.kind == "llm":
                self.sink(TokenReceived(text="Sure."))
                self.sink(ReplyCompleted(tokens_in=1, tokens_out=1))
            elif self.kind == "tts":
                pcm = answer if self.sent == 0 else b""  # one answer's audio per reply
                self.sink(SpeechChunk(pcm=pcm, sample_rate=8000, text_index=self.sent))
                self.sent += 1

        def finalize(self) -> None:
            if self.kind == "stt":
                self.sink(TranscriptReceived(text="hello", final=True, finalized=True))
            elif self.kind == "tts":
                self.sink(SpeechFinished())

        def cancel(self) -> None:
            pass

        def close(self) -> None:
            pass

    class Engine:
        def __init__(self, kind: str) -> None:
            self.kind = kind

        def open(self, call_id: str, sink: Sink) -> Stream:
            return Stream(sink, self.kind)

    class NoVad:
        def process(self, window: Any, /) -> float:
            return 0.0

    class GatedVad:
        """Energy gate before Silero: quiet windows never reach the model."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def process(self, window: Any, /) -> float:
            if float(np.abs(window).max()) < 0.005:  # about -46 dBFS peak: line silence
                return 0.0
            return float(self.inner.process(window))

    silero = SileroVadFactory(spare=0)
    silero.warm_up(calls if vad_mode != "off" else 0)

    def vad() -> Any:
        if vad_mode == "off":
            return NoVad()
        return GatedVad(silero()) if vad_mode == "gated" else silero()

    class Engines:
        def engines_for(self, agent: Any, /) -> CallEngines:
            return CallEngines(stt=Engine("stt"), llm=Engine("llm"), tts=Engine("tts"), vad=vad)

    async def main() -> None:
        folder = tempfile.mkdtemp(prefix="telephony-bench-")
        settings = Settings(
            store={"path": os.path.join(folder, "store.db")},
            limits={
                "max_calls": 5000,
                "company_max_calls": 5000,
                "idle_timeout_s": 3600,
                "signal_message_max_bytes": 65536,
            },
        )
        store = await Store.open(settings.store.path)
        await ensure_demo_tenant(store)
        lifecycle = Lifecycle()
        actors = start_actors(settings)
        edge = CallEdge(
            store=store,
            switchboard=actors.switchboard,
            registry=actors.registry,
            lifecycle=lifecycle,
            limits=settings.limits,
            engines=Engines(),
        )
        app = FastAPI()
        app.include_router(
            twilio_routes(
                edge,
                store,
                server=settings.server,
                settings=settings.twilio,
                calls=TwilioCalls(settings.twilio),
            )
        )
        sock = bind_socket("127.0.0.1", 0)
        server = http_server(app, settings)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        lifecycle.mark_ready()
        print(
            json.dumps({"port": sock.getsockname()[1], "answer_frames": len(answer) // 320}),
            flush=True,
        )
        lags: list[float] = []

        async def watch_loop() -> None:
            """The event loop's lag: how late a 10 ms sleep wakes up."""
            while True:
                asked = loop.time()
                await asyncio.sleep(0.01)
                lags.append(loop.time() - asked - 0.01)

        loop = asyncio.get_running_loop()
        watcher = loop.create_task(watch_loop())
        await stop.wait()
        watcher.cancel()
        if lags:
            ordered = sorted(lags)
            print(
                json.dumps(
                    {
                        "loop_lag_ms": {
                            "p50": round(ordered[len(ordered) // 2] * 1000, 1),
                            "p99": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
                            "max": round(ordered[-1] * 1000, 1),
                        }
                    }
                ),
                file=sys.stderr,
                flush=True,
            )
        server.should_exit = True
        await serving
        await actors.close()
        await store.close()

    asyncio.run(main())


def _pause_reading_lazily() -> None:
    """Experiment: uvicorn's websockets-sansio protocol pauses the socket after every message
    and resumes it on every `receive()`: two epoll syscalls (and GIL hand-offs) per message.
    Pause only once 32 messages wait, as the websockets library's own `max_queue` does."""
    original = impl.WebSocketsSansIOProtocol.send_receive_event_to_app

    def send_receive_event_to_app(self: Any) -> None:
        self.read_paused = True  # tell the original not to pause...
        original(self)
        self.read_paused = False
        if self.queue.qsize() >= 32:  # ...and pause here only when the app falls behind
            self.read_paused = True
            self.transport.pause_reading()

    # The experiment patches uvicorn in the bench's server process only.
    impl.WebSocketsSansIOProtocol.send_receive_event_to_app = send_receive_event_to_app  # type: ignore[method-assign]


# -- the client ---------------------------------------------------------------------------------


@dataclass
class StreamStats:
    frames: int = 0
    late: int = 0
    worst_late_s: float = 0.0
    clears: int = 0
    marks: int = 0
    sent: int = 0


@dataclass
class Caller:
    index: int
    ws: Any = None
    sid: str = ""
    position: int = 0  # next frame of the question loop
    answer_start: float = 0.0
    answer_frame: int = 0  # frames of the current answer received so far
    plays_until: float = 0.0
    stats: StreamStats = field(default_factory=StreamStats)


async def run_client(
    port: int, streams: int, warmup_s: float, seconds: float, answer_frames: int
) -> None:
    question = speech_8k(QUESTION)
    loop_audio = np.concatenate((question, np.zeros(int(LOOP_SILENCE_S * 8000), dtype=np.int16)))
    payloads = [
        base64.b64encode(g711.ulaw_encode(loop_audio[i : i + 160])).decode()
        for i in range(0, len(loop_audio), 160)
    ]
    loop = asyncio.get_running_loop()
    measuring = {"from": float("inf"), "to": float("inf")}
    callers = [Caller(i) for i in range(streams)]
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coroutine: Any) -> None:
        task = loop.create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def counted(now: float) -> bool:
        return measuring["from"] <= now < measuring["to"]

    async def receive(caller: Caller) -> None:
        async for text in caller.ws:
            now = loop.time()
            if text.startswith('{"event": "media"'):
                if caller.answer_frame == 0:
                    caller.answer_start = now
                else:
                    lateness = now - (caller.answer_start + FRAME_S * caller.answer_frame)
                    if counted(now):
                        caller.stats.frames += 1
                        if lateness > LATE_S:
                            caller.stats.late += 1
                        caller.stats.worst_late_s = max(caller.stats.worst_late_s, lateness)
                caller.answer_frame = (caller.answer_frame + 1) % answer_frames
                caller.plays_until = max(caller.plays_until, now) + FRAME_S
            elif text.startswith('{"event": "mark"'):
                name = json.loads(text)["mark"]["name"]
                echo = json.dumps(
                    {"event": "mark", "streamSid": caller.sid, "mark": {"name": name}}
                )
                loop.call_at(caller.plays_until, echo_later, caller, echo)
                caller.stats.marks += 1
            elif text.startswith('{"event": "clear"'):
                caller.answer_frame = 0
                caller.plays_until = now
                caller.stats.clears += 1

    def echo_later(caller: Caller, text: str) -> None:
        spawn(send(caller, text))

    async def send(caller: Caller, text: str) -> None:
        with contextlib.suppress(Exception):
            await caller.ws.send(text)

    async def open_stream(caller: Caller) -> None:
        caller.ws = await connect(
            f"ws://127.0.0.1:{port}/twilio/stream", max_size=None, compression=None
        )
        caller.sid = f"MZ{caller.index:032x}"
        await caller.ws.send(
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        )
        await caller.ws.send(
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": "1",
                    "streamSid": caller.sid,
                    "start": {
                        "streamSid": caller.sid,
                        "accountSid": ACCOUNT_SID,
                        "callSid": f"CA{caller.index:032x}",
                        "tracks": ["inbound"],
                        "customParameters": {},
                        "mediaFormat": {
                            "encoding": "audio/x-mulaw",
                            "sampleRate": 8000,
                            "channels": 1,
                        },
                    },
                }
            )
        )
        # Streams begin at different points of the loop, as independent callers would.
        caller.position = (caller.index * 37) % len(payloads)
        spawn(receive(caller))

    for start in range(0, streams, 20):  # connect in waves, as calls arrive
        await asyncio.gather(*(open_stream(c) for c in callers[start : start + 20]))

    t0 = loop.time() + 0.1
    measuring["from"] = t0 + warmup_s
    measuring["to"] = measuring["from"] + seconds
    groups = [callers[g::GROUPS] for g in range(GROUPS)]
    loop.call_at(measuring["from"], lambda: print('{"window": "open"}', flush=True))

    async def pace(group: list[Caller], offset: float) -> None:
        tick = 0
        while loop.time() < measuring["to"]:
            target = t0 + offset + tick * FRAME_S
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for caller in group:
                payload = payloads[caller.position]
                caller.position = (caller.position + 1) % len(payloads)
                text = (
                    f'{{"event": "media", "sequenceNumber": "{tick + 2}", "streamSid": '
                    f'"{caller.sid}", "media": {{"track": "inbound", "chunk": "{tick + 1}", '
                    f'"timestamp": "{tick * 20}", "payload": "{payload}"}}}}'
                )
                await send(caller, text)
                caller.stats.sent += 1
            tick += 1

    await asyncio.gather(*(pace(g, i * FRAME_S / GROUPS) for i, g in enumerate(groups)))
    for caller in callers:
        with contextlib.suppress(Exception):
            await caller.ws.close()
    totals = StreamStats()
    for caller in callers:
        for name in ("frames", "late", "clears", "marks", "sent"):
            setattr(totals, name, getattr(totals, name) + getattr(caller.stats, name))
        totals.worst_late_s = max(totals.worst_late_s, caller.stats.worst_late_s)
    print(json.dumps(totals.__dict__), flush=True)


# -- the orchestrator ---------------------------------------------------------------------------


@dataclass
class Row:
    streams: int
    frames: int
    late_pct: float
    worst_late_ms: float
    server_cpu_pct: float
    client_cpu_pct: float
    rss_mb: float
    rss_idle_mb: float
    clears: int
    others_cpu_pct: float  # every other process on the box during the window

    @property
    def cpu_per_stream(self) -> float:
        return self.server_cpu_pct / self.streams

    @property
    def rss_per_stream(self) -> float:
        return (self.rss_mb - self.rss_idle_mb) / self.streams


def measure(
    streams: int, vad: str, warmup_s: float, seconds: float, switch_ms: float, lazy_pause: bool
) -> Row:
    me = [sys.executable, os.path.abspath(__file__)]
    server = subprocess.Popen(
        [
            *me,
            "--serve",
            "--vad",
            vad,
            "--streams",
            str(streams),
            "--switch-interval-ms",
            f"{switch_ms}",
            *(["--lazy-pause"] if lazy_pause else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        hello = json.loads(server.stdout.readline())
        server_ps = psutil.Process(server.pid)
        rss_idle = server_ps.memory_info().rss / 2**20
        client = subprocess.Popen(
            [
                *me,
                "--client",
                "--port",
                str(hello["port"]),
                "--streams",
                str(streams),
                "--warmup",
                str(warmup_s),
                "--seconds",
                str(seconds),
                "--answer-frames",
                str(hello["answer_frames"]),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        client_ps = psutil.Process(client.pid)
        assert client.stdout is not None
        client.stdout.readline()  # every stream connected and warmed up: the window opens
        s0, c0, w0 = server_ps.cpu_times(), client_ps.cpu_times(), time.monotonic()
        box0 = psutil.cpu_times()
        time.sleep(seconds * 0.9)
        s1, c1, w1 = server_ps.cpu_times(), client_ps.cpu_times(), time.monotonic()
        box1 = psutil.cpu_times()
        rss = server_ps.memory_info().rss / 2**20
        out, _ = client.communicate(timeout=seconds + 120)
        stats = json.loads(out.strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    wall = w1 - w0
    busy = sum(
        getattr(box1, f) - getattr(box0, f) for f in ("user", "system", "nice", "irq", "softirq")
    )
    server_cpu = 100.0 * (s1.user + s1.system - s0.user - s0.system) / wall
    client_cpu = 100.0 * (c1.user + c1.system - c0.user - c0.system) / wall
    return Row(
        streams=streams,
        frames=stats["frames"],
        late_pct=100.0 * stats["late"] / max(stats["frames"], 1),
        worst_late_ms=stats["worst_late_s"] * 1000,
        server_cpu_pct=server_cpu,
        client_cpu_pct=client_cpu,
        others_cpu_pct=max(0.0, 100.0 * busy / wall - server_cpu - client_cpu),
        rss_mb=rss,
        rss_idle_mb=rss_idle,
        clears=stats["clears"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--answer-frames", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--streams", default="50,100,150,200,300")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per N")
    parser.add_argument("--warmup", type=float, default=6.0, help="before measuring, per N")
    parser.add_argument("--vad", choices=("silero", "gated", "off"), default="silero")
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=0.0,
        help="the server's sys.setswitchinterval (0 = Python's 5 ms)",
    )
    parser.add_argument(
        "--lazy-pause",
        action="store_true",
        help="experiment: uvicorn pauses reading only when 32 messages wait (not after each)",
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.vad, int(args.streams), args.switch_interval_ms, args.lazy_pause)
        return
    if args.client:
        asyncio.run(
            run_client(args.port, int(args.streams), args.warmup, args.seconds, args.answer_frames)
        )
        return

    counts = [int(n) for n in args.streams.split(",")]
    switch = args.switch_interval_ms or 5.0
    print(
        f"telephony load: vad={args.vad}, GIL switch interval {switch:g} ms, "
        f"{args.seconds:.0f} s measured per N"
    )
    print(
        f"{'streams':>7} {'frames':>8} {'late %':>7} {'worst ms':>8} {'server %':>8} "
        f"{'%/stream':>8} {'MB/stream':>9} {'client %':>8} {'clears':>6} {'others %':>8}"
    )
    rows = []
    for n in counts:
        row = measure(
            n, args.vad, args.warmup, args.seconds, args.switch_interval_ms, args.lazy_pause
        )
        rows.append(row)
        print(
            f"{row.streams:>7} {row.frames:>8} {row.late_pct:>7.2f} {row.worst_late_ms:>8.0f} "
            f"{row.server_cpu_pct:>8.0f} {row.cpu_per_stream:>8.2f} {row.rss_per_stream:>9.2f} "
            f"{row.client_cpu_pct:>8.0f} {row.clears:>6} {row.others_cpu_pct:>8.0f}",
            flush=True,
        )
    good = [r for r in rows if r.late_pct < 1.0 and r.frames > 0]
    best = max(good, key=lambda r: r.streams) if good else min(rows, key=lambda r: r.late_pct)
    print(
        json.dumps(
            {
                "bench": "telephony",
                "streams": best.streams,
                "late_frame_pct": round(best.late_pct, 3),
                "cpu_pct_per_stream": round(best.cpu_per_stream, 3),
                "rss_per_stream_mb": round(best.rss_per_stream, 2),
                "client_cpu_pct": round(best.client_cpu_pct, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
