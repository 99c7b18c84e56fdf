"""Benchmark the actor runtime: audio latency, CPU, threads and memory per call.

Measures the time from the edge's `tell` of an `AudioReceived` to the start of the Transcriber's
work on it, at 1, 100 and 300 concurrent calls, each getting a 640-byte PCM16 16 kHz frame every
20 ms (50 messages/s), plus the process CPU spent (CPU time / wall time, % of one core) and the
threads and RSS of an idle call tree.

Three runtimes, each in a fresh interpreter (no heap, threads or GC state carried over):

- `real` (the measured side): real `CallSupervisor` trees admitted through a real `Switchboard`
  on one `Dispatcher` of `--threads` workers, with zero-cost fake engines. The edge's tell is
  `CallHandle.send_audio`; the fake STT stream's `send`, which the Transcriber calls when it
  handles `TranscribeAudio`, records the time. The audio is silence, so the VAD (a fake saying
  0.0) never starts a turn and the LLM/TTS are never used: this is the audio path alone.
- `synth`: a 5-actor tree (supervisor, session, ingest, transcriber, responder) on `PooledActor`:
  the ingest does one numpy step and tells the transcriber, whose handler records the time first
  thing. It shows the runtime's own cost, without the call logic.
- `stock`: the same 5-actor tree on pykka's `ThreadingActor` (one thread per actor), the
  baseline. At 300 calls it saturates, so that row runs only `--saturated-seconds`.

The feeder thread plays the edge: every 20 ms it tells each call one frame, the calls spread over
the period in 10 groups the way independent peers' packets arrive (`--burst`: all at once). Its
own CPU is in `cpu %` and shown apart as `feeder %`. `gc max ms` is the longest garbage
collector pause in the window: a full collection stops every thread.

Run: `.venv/bin/python bench/actors.py` (about a minute). The last stdout line is JSON: `rows`
are the real trees, `baseline_rows` stock pykka, `synthetic_rows` the synthetic pooled tree.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

if __package__ in (None, ""):
    # Run as a script, this folder comes first on sys.path and its name `actors.py` would shadow
    # the `actors` package: put the project root there instead.
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import psutil  # type: ignore[import-untyped]  # types-psutil is not installed
import pykka

from actors.agent import AgentConfig
from actors.call_handle import CallHandle
from actors.call_registry import CallRegistry
from actors.engines import CallEngines, ReplyRequest, Sink, Window
from actors.messages import AdmitCall, AudioReceived, CallAdmitted, CallRefused, HangUp, Outbound
from actors.runtime import Dispatcher, PooledActor
from actors.switchboard import Switchboard
from actors.timer import Timer
from config.settings import SupervisionSettings, VadSettings

FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16 mono
FRAME_S = 0.020
SAMPLE_RATE = 16_000


class LatencyLog:
    """Where transcribers write `handler start - tell`; a list append is atomic under the GIL."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.recording = False

    def record(self, told_at: float) -> None:
        if self.recording:
            self.samples.append(time.monotonic() - told_at)


# --- real call trees with zero-cost fake engines ---------------------------------------------


class TellTimes:
    """Tell time of each frame, by the identity of its PCM bytes (passed through unchanged)."""

    def __init__(self) -> None:
        self._told: dict[int, float] = {}

    def told(self, message: AudioReceived) -> None:
        # A frame dropped on the way leaves a stale entry; the next frame whose bytes get the
        # same id overwrites it here before the STT can see it.
        self._told[id(message.pcm)] = message.captured_at

    def take(self, pcm: bytes) -> float | None:
        return self._told.pop(id(pcm), None)


class TimingSttStream:
    def __init__(self, log: LatencyLog, tells: TellTimes) -> None:
        self._log = log
        self._tells = tells

    def send(self, pcm: bytes, /) -> None:
        told_at = self._tells.take(pcm)
        if told_at is not None:
            self._log.record(told_at)

    def finalize(self) -> None:
        pass

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class TimingStt:
    def __init__(self, log: LatencyLog, tells: TellTimes) -> None:
        self._log = log
        self._tells = tells

    def open(self, call_id: str, sink: Sink) -> TimingSttStream:
        return TimingSttStream(self._log, self._tells)


class NullStream:
    """LLM and TTS stream that does nothing (silence never starts a turn)."""

    def send(self, item: ReplyRequest | str, /) -> None:
        pass

    def finalize(self) -> None:
        pass

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class NullEngine:
    def open(self, call_id: str, sink: Sink) -> NullStream:
        return NullStream()


class SilentVad:
    def process(self, window: Window, /) -> float:
        return 0.0


class AdmissionOutbox:
    """Keeps the answer to `AdmitCall`; drops every other outbound message."""

    def __init__(self) -> None:
        self.answer: CallAdmitted | CallRefused | None = None
        self.answered = threading.Event()

    def put(self, message: Outbound, /) -> None:
        if isinstance(message, CallAdmitted | CallRefused) and self.answer is None:
            self.answer = message
            self.answered.set()


# --- the synthetic call tree, on either runtime ----------------------------------------------


def _ingest_step(message: AudioReceived) -> None:
    # A trivial numpy step, as the real ingest does for VAD/level.
    np.frombuffer(message.pcm, dtype=np.int16).max()


class StockTranscriber(pykka.ThreadingActor):
    def __init__(self, log: LatencyLog) -> None:
        super().__init__()
        self._log = log

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, AudioReceived):
            self._log.record(message.captured_at)
        return None


class StockIngest(pykka.ThreadingActor):
    def __init__(self, transcriber: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self._transcriber = transcriber

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, AudioReceived):
            _ingest_step(message)
            self._transcriber.tell(message)
        return None


class StockIdle(pykka.ThreadingActor):
    """Session and responder: present, idle during the audio load."""


class StockSupervisor(pykka.ThreadingActor):
    def __init__(self, log: LatencyLog) -> None:
        super().__init__()
        self._log = log
        self.children: list[pykka.ActorRef[Any]] = []

    def on_start(self) -> None:
        transcriber = StockTranscriber.start(self._log)
        ingest = StockIngest.start(transcriber)
        self.children = [StockIdle.start(), ingest, transcriber, StockIdle.start()]

    def on_receive(self, message: Any) -> Any:
        if message == "ingest":
            return self.children[1]
        return None

    def on_stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


class PooledTranscriber(PooledActor):
    def __init__(self, dispatcher: Dispatcher, log: LatencyLog) -> None:
        super().__init__(dispatcher)
        self._log = log

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, AudioReceived):
            self._log.record(message.captured_at)
        return None


class PooledIngest(PooledActor):
    def __init__(self, dispatcher: Dispatcher, transcriber: pykka.ActorRef[Any]) -> None:
        super().__init__(dispatcher)
        self._transcriber = transcriber

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, AudioReceived):
            _ingest_step(message)
            self._transcriber.tell(message)
        return None


class PooledIdle(PooledActor):
    pass


class PooledSupervisor(PooledActor):
    def __init__(self, dispatcher: Dispatcher, log: LatencyLog) -> None:
        super().__init__(dispatcher)
        self._log = log
        self.children: list[pykka.ActorRef[Any]] = []

    def on_start(self) -> None:
        d = self._dispatcher
        transcriber = PooledTranscriber.start(d, self._log)
        ingest = PooledIngest.start(d, transcriber)
        self.children = [PooledIdle.start(d), ingest, transcriber, PooledIdle.start(d)]

    def on_receive(self, message: Any) -> Any:
        if message == "ingest":
            return self.children[1]
        return None

    def on_stop(self) -> None:
        for child in reversed(self.children):
            child.stop(block=False)


# --- runtimes --------------------------------------------------------------------------------


@dataclass
class BenchCall:
    """One running call: `tell` feeds it a frame; `stop` ends it."""

    tell: Callable[[AudioReceived], None]
    stop: Callable[[], None]


class Runtime:
    """Builds call trees on one runtime and tears the runtime down."""

    name: str

    def start_call(self, call_id: str, log: LatencyLog) -> BenchCall:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RealTreeRuntime(Runtime):
    """Real call trees admitted through a Switchboard, as `mediaserver/app.py` would."""

    name = "real"

    def __init__(self, threads: int) -> None:
        self.dispatcher = Dispatcher(threads=threads, name="calls")
        self.timer = Timer("bench-timer")
        self.timer.call_later(0.0, lambda: None)  # start its thread now, not in a measurement
        self.tells = TellTimes()
        self.agent = AgentConfig(id="bench-agent", name="Bench")
        self.switchboard = Switchboard.start(
            self.dispatcher,
            supervision=SupervisionSettings(),
            vad=VadSettings(),
            registry=CallRegistry(),
            timer=self.timer,
        )

    def start_call(self, call_id: str, log: LatencyLog) -> BenchCall:
        outbox = AdmissionOutbox()
        engines = CallEngines(
            stt=TimingStt(log, self.tells), llm=NullEngine(), tts=NullEngine(), vad=SilentVad
        )
        self.switchboard.tell(
            AdmitCall(
                call_id=call_id,
                company_id="bench",
                agent=self.agent,
                transport="bench",
                outbox=outbox,
                engines=engines,
            )
        )
        if not outbox.answered.wait(10.0) or not isinstance(outbox.answer, CallAdmitted):
            msg = f"{call_id} not admitted: {outbox.answer}"
            raise RuntimeError(msg)
        handle = outbox.answer.handle
        tells = self.tells

        def tell(message: AudioReceived) -> None:
            tells.told(message)
            handle.send_audio(message)

        return BenchCall(tell=tell, stop=lambda: _hang_up(handle, call_id))

    def close(self) -> None:
        self.switchboard.stop(timeout=10.0)
        self.dispatcher.shutdown(timeout=10.0)
        self.timer.close()


def _hang_up(handle: CallHandle, call_id: str) -> None:
    handle.tell(HangUp(call_id=call_id, reason="bye"))
    handle.wait_ended(10.0)


class StockRuntime(Runtime):
    name = "stock"

    def start_call(self, call_id: str, log: LatencyLog) -> BenchCall:
        supervisor = StockSupervisor.start(log)
        ingest: pykka.ActorRef[Any] = supervisor.ask("ingest", block=True)
        return BenchCall(tell=ingest.tell, stop=lambda: _stop_quietly(supervisor))


class PooledRuntime(Runtime):
    name = "synth"

    def __init__(self, threads: int) -> None:
        self.dispatcher = Dispatcher(threads=threads, name="calls")

    def start_call(self, call_id: str, log: LatencyLog) -> BenchCall:
        supervisor = PooledSupervisor.start(self.dispatcher, log)
        ingest: pykka.ActorRef[Any] = supervisor.ask("ingest", block=True)
        return BenchCall(tell=ingest.tell, stop=lambda: _stop_quietly(supervisor))

    def close(self) -> None:
        self.dispatcher.shutdown(timeout=10.0)


def _stop_quietly(ref: pykka.ActorRef[Any]) -> None:
    ref.stop(block=True, timeout=10.0)


# --- measurement -----------------------------------------------------------------------------


@dataclass
class Row:
    runtime: str
    calls: int
    seconds: float
    sent_per_s: float
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_pct: float
    feeder_cpu_pct: float
    gc_max_ms: float
    gc_full: int

    def json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "calls": self.calls,
            "seconds": round(self.seconds, 2),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "cpu_pct": round(self.cpu_pct, 1),
            "feeder_cpu_pct": round(self.feeder_cpu_pct, 1),
            "sent_per_s": round(self.sent_per_s),
            "received": self.received,
            "gc_max_ms": round(self.gc_max_ms, 1),
            "gc_full": self.gc_full,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(**data)


class GcPauses:
    """Longest collector pause and count of full (generation 2) collections while recording."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self.full = 0
        self._started = 0.0
        self.recording = False

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self.recording:
            self.max_s = max(self.max_s, time.perf_counter() - self._started)
            self.full += info["generation"] == 2


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


class Feeder:
    """The edge: one thread telling every call a frame each 20 ms, calls spread over the period."""

    def __init__(self, calls: Sequence[tuple[str, BenchCall]], *, burst: bool) -> None:
        groups = 1 if burst else min(10, max(1, len(calls)))
        self._groups = [calls[i::groups] for i in range(groups)]
        self._stop = threading.Event()
        self.sent = 0
        self.cpu_s = 0.0  # the feeder's own CPU time so far, updated every period
        self._thread = threading.Thread(target=self._run, name="bench-feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        step = FRAME_S / len(self._groups)
        due = time.monotonic()
        while not self._stop.is_set():
            for group in self._groups:
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                elif now - due > FRAME_S:
                    # Starved (a saturated runtime holds the GIL): skip the missed slots rather
                    # than send them in a burst, so the offered load never exceeds 50 frames/s.
                    due += (now - due) // step * step
                for call_id, tree in group:
                    message = AudioReceived(
                        call_id=call_id,
                        pcm=bytes(FRAME_BYTES),  # a new object each: `TellTimes` keys on its id
                        sample_rate=SAMPLE_RATE,
                        captured_at=time.monotonic(),
                    )
                    try:
                        tree.tell(message)
                    except pykka.ActorDeadError:
                        continue
                    self.sent += 1
                due += step
            self.cpu_s = time.thread_time()


def measure_load(
    runtime: Runtime, calls: int, *, seconds: float, warmup_s: float, burst: bool
) -> Row:
    log = LatencyLog()
    trees = [(f"call-{n}", runtime.start_call(f"call-{n}", log)) for n in range(calls)]
    feeder = Feeder(trees, burst=burst)
    feeder.start()
    time.sleep(warmup_s)
    with GcPauses() as pauses:
        log.recording = pauses.recording = True
        sent0, feeder_cpu0 = feeder.sent, feeder.cpu_s
        wall0, cpu0 = time.monotonic(), time.process_time()
        time.sleep(seconds)
        log.recording = pauses.recording = False
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        sent, feeder_cpu = feeder.sent - sent0, feeder.cpu_s - feeder_cpu0
    feeder.stop()
    for _, tree in trees:
        tree.stop()
    samples = sorted(log.samples)
    return Row(
        runtime=runtime.name,
        calls=calls,
        seconds=wall,
        sent_per_s=sent / wall,
        received=len(samples),
        p50_ms=1000 * percentile(samples, 0.50),
        p99_ms=1000 * percentile(samples, 0.99),
        max_ms=1000 * (samples[-1] if samples else float("nan")),
        cpu_pct=100 * cpu / wall,
        feeder_cpu_pct=100 * feeder_cpu / wall,
        gc_max_ms=1000 * pauses.max_s,
        gc_full=pauses.full,
    )


@dataclass
class IdleCost:
    runtime: str
    calls: int
    rss_per_call_mb: float
    threads_per_call: float


def measure_idle(runtime: Runtime, calls: int) -> IdleCost:
    process = psutil.Process()
    log = LatencyLog()
    gc.collect()
    rss0, threads0 = process.memory_info().rss, threading.active_count()
    trees = [runtime.start_call(f"idle-{n}", log) for n in range(calls)]
    gc.collect()
    rss1, threads1 = process.memory_info().rss, threading.active_count()
    for tree in trees:
        tree.stop()
    return IdleCost(
        runtime=runtime.name,
        calls=calls,
        rss_per_call_mb=(rss1 - rss0) / calls / 2**20,
        threads_per_call=(threads1 - threads0) / calls,
    )


# --- report ----------------------------------------------------------------------------------


def print_table(rows: list[Row], idle: list[IdleCost], baseline_p99: dict[int, float]) -> None:
    header = (
        f"{'runtime':<8} {'calls':>5} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'cpu %':>6} {'feeder %':>8} {'gc max ms':>9} {'stock p99 / p99':>15}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        stock = baseline_p99.get(row.calls)
        ratio = f"{stock / row.p99_ms:.1f}x" if stock and row.runtime != "stock" else ""
        print(
            f"{row.runtime:<8} {row.calls:>5} {row.sent_per_s:>8.0f} {row.p50_ms:>8.2f} "
            f"{row.p99_ms:>8.2f} {row.max_ms:>8.2f} {row.cpu_pct:>6.1f} {row.feeder_cpu_pct:>8.1f} "
            f"{row.gc_max_ms:>9.1f} {ratio:>15}"
        )
    print()
    for cost in idle:
        print(
            f"idle call tree ({cost.runtime}, {cost.calls} trees): "
            f"{cost.rss_per_call_mb * 1024:.0f} KiB RSS, "
            f"{cost.threads_per_call:.2f} threads each"
        )


RUNTIMES = ("real", "synth", "stock")


def make_runtime(name: str, threads: int) -> Runtime:
    if name == "real":
        return RealTreeRuntime(threads)
    if name == "synth":
        return PooledRuntime(threads)
    return StockRuntime()


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """All measurements of one runtime, in this process."""
    counts = [int(part) for part in args.calls.split(",") if part]
    runtime = make_runtime(name, args.threads)
    rows: list[Row] = []
    try:
        # Idle cost first, while the heap has no free arenas left over from a load run.
        idle = measure_idle(runtime, args.idle_calls)
        for calls in counts:
            seconds = args.seconds
            if name == "stock" and calls > 100:
                seconds = args.saturated_seconds
            rows.append(
                measure_load(
                    runtime, calls, seconds=seconds, warmup_s=args.warmup, burst=args.burst
                )
            )
    finally:
        runtime.close()
        pykka.ActorRegistry.stop_all(timeout=10.0)
    return {"rows": [row.json() for row in rows], "idle": idle.__dict__}


def run_isolated(name: str, argv: Sequence[str]) -> dict[str, Any]:
    """Run one runtime in a fresh interpreter: no heap, threads or GC state from another."""
    command = [sys.executable, "-m", "bench.actors", *argv, "--runtime", name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        msg = f"{name} run failed with exit code {done.returncode}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,100,300", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument(
        "--saturated-seconds",
        type=float,
        default=2.0,
        help="measured seconds of the stock rows above 100 calls (they saturate)",
    )
    parser.add_argument("--threads", type=int, default=2, help="dispatcher worker threads")
    parser.add_argument("--idle-calls", type=int, default=300, help="trees for the idle cost")
    parser.add_argument("--burst", action="store_true", help="tell all calls at once per 20 ms")
    parser.add_argument("--no-baseline", action="store_true", help="skip stock pykka")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic tree")
    parser.add_argument("--runtime", choices=RUNTIMES, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.runtime is not None:
        print(json.dumps(run_one(args.runtime, args)))
        return

    passthrough = [
        f"--calls={args.calls}",
        f"--seconds={args.seconds}",
        f"--warmup={args.warmup}",
        f"--saturated-seconds={args.saturated_seconds}",
        f"--threads={args.threads}",
        f"--idle-calls={args.idle_calls}",
        *(["--burst"] if args.burst else []),
    ]
    names = [
        name
        for name in RUNTIMES
        if not (name == "synth" and args.no_synthetic)
        and not (name == "stock" and args.no_baseline)
    ]
    results = {name: run_isolated(name, passthrough) for name in names}
    rows = {
        name: [Row.from_json(row) for row in result["rows"]] for name, result in results.items()
    }
    idle = {name: IdleCost(**result["idle"]) for name, result in results.items()}

    baseline = rows.get("stock", [])
    print_table(
        [row for runtime_rows in rows.values() for row in runtime_rows],
        list(idle.values()),
        {row.calls: row.p99_ms for row in baseline},
    )
    real, stock_idle = idle["real"], idle.get("stock")
    print(
        json.dumps(
            {
                "bench": "actors",
                "burst": args.burst,
                "threads": args.threads,
                "rows": [row.json() for row in rows["real"]],
                "baseline_rows": [row.json() for row in baseline],
                "synthetic_rows": [row.json() for row in rows.get("synth", [])],
                "rss_per_idle_call_mb": round(real.rss_per_call_mb, 4),
                "threads_per_call": round(real.threads_per_call, 3),
                "baseline_rss_per_idle_call_mb": (
                    round(stock_idle.rss_per_call_mb, 4) if stock_idle else None
                ),
                "baseline_threads_per_call": (
                    round(stock_idle.threads_per_call, 3) if stock_idle else None
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
