"""Benchmark WebRTC calls: server CPU per call-minute against a bare aiortc floor, echo quality.

Processes, so each one's CPU can be told apart:

- the **server**: `mediaserver serve` as a user runs it (fresh store, offline engines, media on
  127.0.0.1), one fresh process per workload;
- the **floor** (`--floor receive|echo`): a bare aiortc server in the same role, one
  `RTCPeerConnection(RTCConfiguration(iceServers=[]))` per caller behind a minimal websocket
  that speaks the `session`/`offer`/`answer` part of signal/1. `receive`: `track.recv()`,
  decoded and discarded. `echo`: each decoded frame sent back through aiortc's default encoder;
- the **callers** (`--callers`): N aiortc peers on one event loop, each signalling over
  `/signal` and sending `sendrecv` audio: a speech WAV (Piper, made once; at least 50 % voiced)
  encoded to Opus once at start-up and looped as packets (aiortc packs them, no encoder), each
  caller from its own point in the loop. They read every event and all audio they get back;
- the **orchestrator** (no flag): for each workload it starts a server and the callers (one
  every `--ramp-s`, 0.1 s), waits `--warmup` seconds after the last one connected, then measures
  `--seconds` of steady state: CPU time of the server's process tree (psutil, user + system),
  its RSS against the RSS before the first call, and the CPU everything else on the machine took.

Workloads: `silent` (40 callers to an agent that never speaks: speech `echo`, which hears no
words, so there is no turn to answer; reply `offline`; voice `echo`, which voices nothing; no
greeting; the VAD still runs on every frame), `echo` (10 callers to the echo agent, all engines
`echo`: the caller's audio comes back through AudioIngest), and the floor with the same callers:
`floor_receive` (40) and `floor_echo` (10).

Columns: `up` is the calls connected at the window's start -> end; `cpu s/call-min` the server's
CPU seconds per call-minute (the minutes each call was up within the window); `server %`,
`callers %`, `others %` CPU as % of one core (`others`: every other process on the machine; a
busy machine skews the numbers, so look at it first); `rss/call` (RSS at the end - RSS before the
calls) / calls connected; `connect` from opening the signaling socket to ICE and DTLS connected;
`echo corr` the median, over callers, of the median Pearson correlation between half-second
voiced pieces of the last 10 s a caller got back and the best-aligned stretch of what it sent
(both at 16 kHz); `frames back` the audio frames the callers received (0: nothing was said);
`udp queued KB/dropped` the most that waited unread in the server's UDP sockets and the most
datagrams the kernel had dropped on them (sampled every 5 s in the window): a server that does
not keep up with the packets builds a queue, its audio arrives late, then ICE consent checks
time out and calls end `ice_failed`.
The JSON's `rss_per_call_mb` is the silent workload's (more calls), `connect_*` over the calls to
the real server (silent and echo).

Run: `.venv/bin/python bench/webrtc_load.py` (about 5 minutes: four workloads of a 60 s window,
with start-up, ramp and warm-up). `--seconds 10 --warmup 3` for a quick look. The last stdout
line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import av
import numpy as np
import psutil  # type: ignore[import-untyped]  # types-psutil is not installed
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.stream import Stream

RATE = 48_000
FRAME = 960  # 20 ms at 48 kHz
TIME_BASE = fractions.Fraction(1, RATE)
REF_RATE = 16_000  # the echo's correlation is taken at the rate the server hears
VOICED_DBFS = -40.0  # a 20 ms frame louder than this (RMS) counts as voiced
SENTENCES = (
    "Hello, I would like to book a table for four people tomorrow evening.",
    "Could you tell me your opening hours, please?",
    "Do you have any vegetarian dishes on the menu?",
    "And is there somewhere to park nearby?",
)
GAP_S = 0.7  # between sentences: longer than the default end-of-turn silence (500 ms)
CONNECT_TIMEOUT_S = 30.0
UDP_SAMPLE_S = 5.0
BUSY_PERCENT = 20.0  # other processes' CPU (% of a core) that makes a row unreliable
RECORD_FRAMES = 500  # the last 10 s a caller heard, for the echo's correlation
WORKLOADS = {  # name -> (callers, agent or floor mode)
    "silent": (40, "silent"),
    "echo": (10, "echo"),
    "floor_receive": (40, "receive"),
    "floor_echo": (10, "echo"),
}


# -- the speech loop --------------------------------------------------------------------------


def make_speech_wav(path: Path) -> None:
    """`SENTENCES` spoken by Piper (steady, no random variation), `GAP_S` apart, 16-bit mono."""
    from piper.config import SynthesisConfig  # noqa: PLC0415  # the offline extra

    from mediaserver.engines.piper import PiperSpeaker  # noqa: PLC0415

    voice = PiperSpeaker().load()
    rate = int(voice.config.sample_rate)
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    gap = bytes(int(GAP_S * rate) * 2)
    pcm = b"".join(
        b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text, steady)) + gap
        for text in SENTENCES
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit WAV's samples (first channel) and rate."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2, "a 16-bit WAV"
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        return samples[:: wav.getnchannels()], wav.getframerate()


def resample(samples: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """Mono PCM16 from `rate` to `to_rate` with libswresample, flushed."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to_rate)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    out = [
        f.to_ndarray().reshape(-1) for f in (*resampler.resample(frame), *resampler.resample(None))
    ]
    return np.concatenate(out).astype(np.int16)


def voiced_fraction(samples: np.ndarray, rate: int) -> float:
    """The share of 20 ms frames whose RMS is above `VOICED_DBFS`."""
    n = rate // 50
    frames = samples[: len(samples) // n * n].astype(np.float64).reshape(-1, n) / 32768
    rms = np.sqrt((frames**2).mean(axis=1))
    return float((20 * np.log10(np.maximum(rms, 1e-9)) > VOICED_DBFS).mean())


def opus_packets(samples_48k: np.ndarray) -> list[bytes]:
    """The loop as 20 ms Opus packets (mono, 32 kb/s, `voip`, as a browser sends speech)."""
    encoder = av.CodecContext.create("libopus", "w")
    assert isinstance(encoder, av.audio.codeccontext.AudioCodecContext)
    encoder.bit_rate = 32_000
    encoder.format = "s16"
    encoder.layout = "mono"
    encoder.sample_rate = RATE
    encoder.time_base = TIME_BASE
    encoder.options = {"application": "voip"}
    whole = samples_48k[: len(samples_48k) // FRAME * FRAME]
    packets: list[bytes] = []
    for index in range(0, len(whole), FRAME):
        frame = av.AudioFrame.from_ndarray(
            whole[index : index + FRAME].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = index
        packets += [bytes(p) for p in encoder.encode(frame)]
    packets += [bytes(p) for p in encoder.encode(None)]
    return packets


# -- the callers ------------------------------------------------------------------------------


class PacketLoop(MediaStreamTrack):
    """Pre-encoded Opus packets, looped, one every 20 ms in real time."""

    kind = "audio"

    def __init__(self, packets: list[bytes], start: int) -> None:
        super().__init__()
        self._packets = packets
        self._index = start
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.Packet[Stream]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        packet = av.Packet(self._packets[self._index % len(self._packets)])
        self._index += 1
        packet.pts = self._pts
        packet.time_base = TIME_BASE
        return packet


class Caller:
    """One peer: signals, sends the loop, reads every event and every frame it gets back."""

    def __init__(self, url: str, packets: list[bytes], start: int) -> None:
        self.url = url
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver(PacketLoop(packets, start), direction="sendrecv")
        self.pc.on("track", self._on_track)
        self.ws: Any = None
        self.call_id: str | None = None  # from the `session` event: the call was admitted
        self.admitted = asyncio.Event()
        self.connect_ms: float | None = None
        self.frames = 0
        self.heard: deque[np.ndarray] = deque(maxlen=RECORD_FRAMES)
        self.events: dict[str, int] = {}
        self.ended: str | None = None
        self.up_at: float | None = None  # monotonic (one clock for every process on the host)
        self.down_at: float | None = None
        self.pc.on("connectionstatechange", self._on_state)
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        started = time.monotonic()
        self.ws = await websockets.connect(self.url, max_size=None)
        session = json.loads(await self.ws.recv())
        assert session["type"] == "session", session
        self.call_id = session.get("call_id")
        self.admitted.set()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp}))
        while (message := json.loads(await self.ws.recv()))["type"] != "answer":
            self._count(message)
        await self.pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
        self._tasks.append(asyncio.ensure_future(self._read_events()))
        while self.pc.connectionState != "connected":
            if self.pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"peer {self.pc.connectionState}")
            await asyncio.sleep(0.005)
        self.up_at = time.monotonic()
        self.connect_ms = (self.up_at - started) * 1000

    def _count(self, message: dict[str, Any]) -> None:
        kind = message["type"] + (f".{message['state']}" if "state" in message else "")
        self.events[kind] = self.events.get(kind, 0) + 1
        if message["type"] == "ended":
            self.ended = message["reason"]
            self._down()

    async def _read_events(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.ws:
                self._count(json.loads(text))
        self.ended = self.ended or "socket closed"
        self._down()

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._down()

    def _down(self) -> None:
        if self.up_at is not None and self.down_at is None:
            self.down_at = time.monotonic()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._read_audio(track)))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                self.frames += 1
                self.heard.append(frame.to_ndarray().reshape(-1)[::2].copy())  # stereo: left

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.ws is not None:
                await self.ws.send(json.dumps({"type": "bye"}))
                await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


def normalized_lag(reference: np.ndarray, piece: np.ndarray) -> int:
    """Where `piece` best matches `reference` (normalized cross-correlation, by FFT)."""
    n, m = len(reference), len(piece)
    size = 1 << (n + m).bit_length()
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(piece, size)), size)
    corr = corr[: n - m + 1]
    energy = np.concatenate(([0.0], np.cumsum(reference**2)))
    window = np.sqrt(np.maximum(energy[m:] - energy[: n - m + 1], 1e-9))
    return int(np.argmax(corr / window))


def echo_correlation(sent_16k: np.ndarray, heard_48k: np.ndarray) -> float | None:
    """Median Pearson correlation of the voiced half-second pieces of what came back with the
    best-aligned stretch of the (looped) audio sent; None when nothing voiced came back.

    Short pieces, each aligned on its own: a frame lost or a gap under load spoils one piece.
    """
    heard = resample(heard_48k, RATE, REF_RATE).astype(np.float64)
    looped = np.tile(sent_16k.astype(np.float64), 2)
    size = REF_RATE // 2
    scores = []
    for start in range(0, len(heard) - size + 1, size):
        piece = heard[start : start + size]
        if voiced_fraction(piece.astype(np.int16), REF_RATE) < 0.5:
            continue
        lag = normalized_lag(looped, piece)
        scores.append(float(np.corrcoef(piece, looped[lag : lag + size])[0, 1]))
    return float(np.median(scores)) if scores else None


async def run_callers(args: argparse.Namespace) -> None:
    """Connect `args.callers` peers, report, hold the calls until stdin says stop, report."""
    from config.settings import WebRTCSettings  # noqa: PLC0415
    from mediaserver.webrtc.ice import configure_ice  # noqa: PLC0415

    configure_ice(WebRTCSettings(host_addresses=["127.0.0.1"]))  # all media on loopback
    samples, rate = read_wav(Path(args.wav))
    packets = opus_packets(resample(samples, rate, RATE))
    sent_16k = resample(samples, rate, REF_RATE)
    callers = [
        Caller(
            args.url.format(peer=f"bench-{i}"),
            packets,
            start=(i * len(packets) * 7 // args.callers) % len(packets),  # spread over the loop
        )
        for i in range(args.callers)
    ]

    async def start(i: int, caller: Caller) -> BaseException | None:
        await asyncio.sleep(i * args.ramp_s)
        try:
            await asyncio.wait_for(caller.connect(), CONNECT_TIMEOUT_S)
        except Exception as exc:  # reported: a caller that did not connect is counted
            await caller.close()
            return exc
        return None

    errors = await asyncio.gather(*(start(i, c) for i, c in enumerate(callers)))
    failed = [repr(e) for e in errors if e is not None]
    connected = [c.connect_ms for c in callers if c.connect_ms is not None]
    print(json.dumps({"connected_ms": connected, "failed": failed}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    up = [(c.up_at, c.down_at) for c in callers if c.up_at is not None]
    correlations = [
        echo_correlation(sent_16k, np.concatenate(c.heard))
        for c in callers
        if args.correlate and len(c.heard) == RECORD_FRAMES
    ]
    valid = [c for c in correlations if c is not None]
    events: dict[str, int] = {}
    for caller in callers:
        for kind, count in caller.events.items():
            events[kind] = events.get(kind, 0) + count
    report = {
        "up": up,
        "frames_heard": sum(c.frames for c in callers),
        "ended_early": sorted({c.ended for c in callers if c.ended}),
        "events": events,
        "correlation": statistics.median(valid) if valid else None,
    }
    await asyncio.gather(*(c.close() for c in callers))
    print(json.dumps(report), flush=True)


# -- the floor --------------------------------------------------------------------------------


class Relay(MediaStreamTrack):
    """The caller's decoded frames, as they come: aiortc's sender encodes each one."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> av.AudioFrame:
        frame = await self._source.recv()
        assert isinstance(frame, av.AudioFrame)
        return frame


async def run_floor(mode: str) -> None:
    """A bare aiortc server for `mode` (`receive`, `echo`) behind a minimal signal/1 socket."""
    from websockets.asyncio.server import ServerConnection, serve  # noqa: PLC0415

    from config.settings import WebRTCSettings  # noqa: PLC0415
    from mediaserver.webrtc.ice import configure_ice  # noqa: PLC0415

    configure_ice(WebRTCSettings(host_addresses=["127.0.0.1"]))  # as the server is configured

    async def drain(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def call(ws: ServerConnection) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tasks: list[asyncio.Task[None]] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if mode == "echo":
                pc.addTrack(Relay(track))
            else:
                tasks.append(asyncio.ensure_future(drain(track)))

        try:
            await ws.send(json.dumps({"type": "session", "protocol": "signal/1"}))
            async for text in ws:
                message = json.loads(text)
                if message["type"] == "offer":
                    await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
                    await pc.setLocalDescription(await pc.createAnswer())
                    await ws.send(json.dumps({"type": "answer", "sdp": pc.localDescription.sdp}))
                elif message["type"] == "bye":
                    break
        except websockets.ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await pc.close()

    async with serve(call, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"listening on ws://127.0.0.1:{port}", flush=True)
        await asyncio.Future()


# -- the orchestrator -------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    calls: int
    connected: int
    cpu_s_per_call_min: float
    cpu_percent: float
    callers_percent: float
    others_percent: float
    rss_per_call_mb: float
    connect_ms: list[float]
    frames_heard: int
    events: dict[str, int]
    ended_early: list[str]
    correlation: float | None
    udp_queued_kb: float
    udp_dropped: int
    up_before: int
    up_after: int


def tree_cpu_s(process: psutil.Process) -> float:
    total = 0.0
    for p in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return float(total)


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def udp_backlog(process: psutil.Process) -> tuple[int, int]:
    """Bytes waiting in the receive queues of the process tree's UDP sockets, and the datagrams
    the kernel dropped on them because those queues were full (Linux `/proc/net/udp`)."""
    ports = set()
    for p in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            ports |= {c.laddr.port for c in p.net_connections(kind="udp")}
    queued = dropped = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in rows.readlines()[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                    queued += int(fields[4].split(":")[1], 16)
                    dropped += int(fields[-1])
    return queued, dropped


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return int(total)


def start_listening(command: list[str], env: dict[str, str], log: Path) -> tuple[Any, str]:
    """Start a server process; return it and the URL of its `listening on` line."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env, cwd=log.parent
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("listening on "):
            return process, line.split()[-1]
    process.wait()
    raise RuntimeError(f"{command[1:4]} did not start: {log.read_text()[-2000:]}")


async def create_agents(store_path: Path) -> tuple[str, dict[str, str]]:
    """A company with the silent and the echo agents; its API key and the agents' ids."""
    from mediaserver.store import AgentSpec, Store  # noqa: PLC0415

    store = await Store.open(str(store_path))
    try:
        company = await store.create_company("bench")
        silent = await store.create_agent(
            company.id,
            AgentSpec(name="Silent", stt_engine="echo", llm_engine="offline", tts_engine="echo"),
        )
        echo = await store.create_agent(
            company.id,
            AgentSpec(name="Echo", stt_engine="echo", llm_engine="echo", tts_engine="echo"),
        )
        _, key = await store.create_api_key(company.id, label="bench")
    finally:
        await store.close()
    return key, {"silent": silent.id, "echo": echo.id}


def measure(name: str, args: argparse.Namespace, work: Path, wav: Path) -> Row:
    calls, target = WORKLOADS[name]
    calls = args.calls.get(name, calls)
    folder = work / name
    folder.mkdir()
    if name.startswith("floor_"):
        command = [sys.executable, __file__, "--floor", target]
        process, url = start_listening(command, dict(os.environ), folder / "floor.log")
        signal_url = url + "/{peer}"
    else:
        store = folder / "store.db"
        key, agents = asyncio.run(create_agents(store))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASERVER_")}
        env.update(
            MEDIASERVER_STORE__PATH=str(store),
            MEDIASERVER_WEBRTC__HOST_ADDRESSES='["127.0.0.1"]',
            MEDIASERVER_DEBUG__SOCKET_PATH=str(folder / "debug.sock"),
            MEDIASERVER_LIMITS__DRAIN_S="1",
        )
        command = [sys.executable, "-m", "mediaserver", "serve", "--host", "127.0.0.1"]
        command += ["--workers", "1"]  # one process: bench/capacity.py measures workers
        process, url = start_listening([*command, "--port", "0"], env, folder / "server.log")
        signal_url = (
            url.replace("http://", "ws://") + f"/signal/{{peer}}/{key}?agent={agents[target]}"
        )
    server = psutil.Process(process.pid)
    try:
        time.sleep(1.0)  # let start-up work (model warm-up threads) finish
        rss_before = tree_rss(server)
        callers = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--callers",
                str(calls),
                "--url",
                signal_url,
                "--wav",
                str(wav),
                f"--ramp-s={args.ramp_s}",
                *(["--correlate"] if target == "echo" else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert callers.stdin is not None and callers.stdout is not None
        connected = json.loads(callers.stdout.readline())
        if connected["failed"]:
            print(f"{name}: {len(connected['failed'])} callers failed: {connected['failed'][:3]}")
        time.sleep(args.warmup)
        caller_process = psutil.Process(callers.pid)
        cpu_before, callers_before = tree_cpu_s(server), tree_cpu_s(caller_process)
        machine_before, started = busy_cpu_s(), time.monotonic()
        udp_queued = udp_dropped = 0
        while (left := started + args.seconds - time.monotonic()) > 0:
            # Sampled through the window: a call that ends takes its socket's counts with it.
            time.sleep(min(UDP_SAMPLE_S, left))
            queued, dropped = udp_backlog(server)
            udp_queued, udp_dropped = max(udp_queued, queued), max(udp_dropped, dropped)
        wall = time.monotonic() - started
        window_end = started + wall
        cpu, callers_cpu = (
            tree_cpu_s(server) - cpu_before,
            tree_cpu_s(caller_process) - callers_before,
        )
        others_cpu = max(0.0, busy_cpu_s() - machine_before - cpu - callers_cpu)
        rss = tree_rss(server)
        callers.stdin.write("stop\n")
        callers.stdin.flush()
        report = json.loads(callers.stdout.readline())
        callers.wait(30)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
    n = len(connected["connected_ms"])
    # The call-minutes inside the window, from when each call was up (a call that dropped
    # counts until it dropped).
    spans = [(up, down if down is not None else window_end) for up, down in report["up"]]
    call_min = sum(max(0.0, min(end, window_end) - max(up, started)) for up, end in spans) / 60
    return Row(
        name=name,
        calls=calls,
        connected=n,
        cpu_s_per_call_min=cpu / call_min if call_min else float("nan"),
        cpu_percent=100 * cpu / wall,
        callers_percent=100 * callers_cpu / wall,
        others_percent=100 * others_cpu / wall,
        rss_per_call_mb=(rss - rss_before) / max(n, 1) / 2**20,
        connect_ms=connected["connected_ms"],
        frames_heard=report["frames_heard"],
        events=report["events"],
        ended_early=report["ended_early"],
        correlation=report["correlation"],
        udp_queued_kb=udp_queued / 1024,
        udp_dropped=udp_dropped,
        up_before=sum(1 for up, end in spans if up <= started < end),
        up_after=sum(1 for up, end in spans if up <= window_end <= end),
    )


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def print_table(rows: list[Row]) -> None:
    print(
        f"{'workload':<14}{'calls':>6}{'up':>9}{'cpu s/call-min':>16}{'server %':>10}"
        f"{'callers %':>11}{'others %':>10}{'rss/call MB':>13}{'connect p50/p95 ms':>20}"
        f"{'echo corr':>11}{'frames back':>13}{'udp queued KB/dropped':>23}"
    )
    for row in rows:
        corr = "-" if row.correlation is None else f"{row.correlation:.3f}"
        connect = f"{percentile(row.connect_ms, 50):.0f}/{percentile(row.connect_ms, 95):.0f}"
        up = f"{row.up_before}->{row.up_after}"
        print(
            f"{row.name:<14}{row.calls:>6}{up:>9}{row.cpu_s_per_call_min:>16.2f}"
            f"{row.cpu_percent:>10.1f}{row.callers_percent:>11.1f}{row.others_percent:>10.1f}"
            f"{row.rss_per_call_mb:>13.2f}{connect:>20}{corr:>11}{row.frames_heard:>13}"
            f"{f'{row.udp_queued_kb:.0f}/{row.udp_dropped}':>23}"
        )
    for row in rows:
        if row.ended_early or row.up_after < row.calls:
            print(
                f"{row.name}: {row.calls - row.connected} of {row.calls} never connected, "
                f"{row.calls - row.up_after} down at the window's end; ended {row.ended_early}"
            )
        if row.events:
            print(f"{row.name}: events {row.events}")
        if row.others_percent > BUSY_PERCENT:
            print(
                f"{row.name}: other processes took {row.others_percent:.0f} % of a core "
                "during the window: the machine was busy, its numbers are unreliable"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured steady state")
    parser.add_argument("--warmup", type=float, default=5.0, help="after the last caller connects")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated subset, in this order"
    )
    parser.add_argument(
        "--calls",
        type=lambda text: {k: int(v) for k, v in (item.split("=") for item in text.split(","))},
        default={},
        help="override callers per workload, e.g. silent=20,floor_receive=20",
    )
    parser.add_argument(
        "--ramp-s", type=float, default=0.1, help="between two callers' starts (10 calls/s)"
    )
    parser.add_argument("--wav", help="the speech loop (16-bit WAV); default: Piper, made here")
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs and stores")
    parser.add_argument("--floor", choices=("receive", "echo"), help=argparse.SUPPRESS)
    parser.add_argument("--callers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--correlate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        asyncio.run(run_floor(args.floor))
        return
    if args.callers:
        asyncio.run(run_callers(args))
        return

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="webrtc-bench-"))
    try:
        wav = Path(args.wav) if args.wav else work / "speech.wav"
        if not args.wav:
            make_speech_wav(wav)
        samples, rate = read_wav(wav)
        voiced = voiced_fraction(samples, rate)
        print(
            f"speech loop: {len(samples) / rate:.1f} s, {voiced:.0%} voiced "
            f"(20 ms frames above {VOICED_DBFS:.0f} dBFS); window {args.seconds:.0f} s "
            f"after {args.warmup:.0f} s of warm-up; {psutil.cpu_count()} cores",
            flush=True,
        )
        if voiced < 0.5:
            raise SystemExit("the speech loop must be at least 50 % voiced")
        rows = []
        for name in args.workloads.split(","):
            rows.append(measure(name, args, work, wav))
            print(f"  {name}: {rows[-1].cpu_s_per_call_min:.2f} CPU-s per call-minute", flush=True)
    finally:
        if args.keep:
            print(f"logs and stores kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    by_name = {row.name: row for row in rows}

    def cost(name: str) -> float | None:
        row = by_name.get(name)
        return round(row.cpu_s_per_call_min, 3) if row else None

    ratios = []
    for name, floor, goal in (("silent", "floor_receive", 1.2), ("echo", "floor_echo", 0.6)):
        if (ours := cost(name)) and (base := cost(floor)):
            ratios.append(f"{name} / {floor} = {ours / base:.2f} (goal <= {goal})")
    print("; ".join(ratios) + f"; run took {time.monotonic() - started:.0f} s")
    served = [ms for row in rows if not row.name.startswith("floor_") for ms in row.connect_ms]
    echo, silent = by_name.get("echo"), by_name.get("silent")
    print(
        json.dumps(
            {
                "bench": "webrtc",
                "calls": {
                    name: by_name[name].calls for name in ("silent", "echo") if name in by_name
                },
                "cpu_s_per_call_min": {name: cost(name) for name in WORKLOADS},
                "echo_correlation": (
                    round(echo.correlation, 3) if echo and echo.correlation is not None else None
                ),
                "rss_per_call_mb": round(silent.rss_per_call_mb, 2) if silent else None,
                "connect_p50_ms": round(percentile(served, 50), 1) if served else None,
                "connect_p95_ms": round(percentile(served, 95), 1) if served else None,
            }
        )
    )


if __name__ == "__main__":
    main()
