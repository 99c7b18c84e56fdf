"""Benchmark: what a `watch` at full rate on the debug socket costs the calls.

The server side runs in this process, built as `mediaserver/app.py` builds it: a `Dispatcher`
(2 threads), `CallRegistry`, `Switchboard`, and the debug server on a Unix socket on its own
asyncio loop; each call's outbox is tapped by the debug server's `DebugEvents`, as the call
edge does. The calls are real `CallSupervisor` trees with the zero-cost fake engines of
`tests/actors/fakes.py`, fed in real time: a feeder thread plays every caller, one 20 ms frame
each per tick, saying three words and then staying silent, every `--cycle-s` seconds, so every
call has a turn (speech, transcript, reply, bot audio) every cycle.

Measured per condition (alternating segments, so drift hits both alike):

- voice-to-voice p95: `TurnRecorded.voice_to_voice_ms` of the assistant turns (end of the
  caller's speech on the audio timeline -> first bot audio; it includes the VAD's end-of-turn
  silence, 500 ms by default, the same in both conditions);
- server CPU: this process's CPU time over wall time, in % of one core (the feeder included, in
  both conditions alike).

"with": `mediaserver inspect watch --rate 1000` runs in a subprocess (its CPU is not ours),
watching every call at the highest rate the protocol allows and printing each event; "without":
nobody is connected (the tap still runs, as in production). The calls' own events (speech,
turns, ...) come to a few a second per call, so to hold the watch at its full rate the feeder
also publishes `--extra-events-per-s` (default 1000) small events through `DebugEvents.publish`
in both conditions, the way the edge publishes transport events: a no-op while nobody watches.

Run: `.venv/bin/python -m bench.debug_watch` (about 70 s). The last stdout line is JSON:
`{"bench":"debug_watch","v2v_p95_ms":{"without":..,"with":..},"cpu_pct":{"without":..,"with":..}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from actors.agent import AgentConfig
from actors.call_handle import CallHandle
from actors.call_registry import CallRegistry
from actors.messages import (
    AdmitCall,
    AudioReceived,
    CallAdmitted,
    CallRefused,
    HangUp,
    MediaConnected,
    Outbound,
    TurnRecorded,
)
from actors.runtime import Dispatcher
from actors.switchboard import Switchboard
from actors.timer import Timer
from config.settings import DebugSettings, SupervisionSettings, VadSettings
from mediaserver.debug import DebugEvents, DebugServer, debug_server
from tests.actors.fakes import FRAME_SAMPLES, SILENCE, Script, fake_engines

T = TypeVar("T")
FRAME_S = 0.020
WORDS = 3
FRAMES_PER_WORD = 5
FRAMES = {n: np.full(FRAME_SAMPLES, 1000 + n, dtype=np.int16).tobytes() for n in range(1, 201)}


class LatencyOutbox:
    """The edge's side of one call: keeps the admission answer and assistant turns' v2v."""

    def __init__(self, samples: list[float]) -> None:
        self.answer: CallAdmitted | CallRefused | None = None
        self.answered = threading.Event()
        self._samples = samples

    def put(self, message: Outbound, /) -> None:
        if isinstance(message, TurnRecorded):
            if message.role == "assistant" and message.voice_to_voice_ms is not None:
                self._samples.append(message.voice_to_voice_ms)  # atomic under the GIL
        elif isinstance(message, CallAdmitted | CallRefused) and self.answer is None:
            self.answer = message
            self.answered.set()


class Caller:
    """One caller's audio: `WORDS` words, then silence, every `cycle_frames` frames."""

    def __init__(self, call_id: str, handle: CallHandle, cycle_frames: int, phase: int) -> None:
        self.call_id, self.handle = call_id, handle
        self.cycle_frames = cycle_frames
        self.frame_no = phase
        self.word_base = 1 + (phase * 7) % 150

    def next_frame(self) -> bytes:
        position = self.frame_no % self.cycle_frames
        cycle = self.frame_no // self.cycle_frames
        self.frame_no += 1
        if position < WORDS * FRAMES_PER_WORD:
            word = position // FRAMES_PER_WORD
            return FRAMES[(self.word_base + cycle * WORDS + word) % 200 + 1]
        return SILENCE

    def send(self, now: float) -> None:
        self.handle.send_audio(
            AudioReceived(
                call_id=self.call_id, pcm=self.next_frame(), sample_rate=16_000, captured_at=now
            )
        )


class Feeder(threading.Thread):
    """Sends every caller one frame per 20 ms tick, the callers spread over the tick in groups."""

    def __init__(
        self, callers: list[Caller], events: DebugEvents, extra_per_s: int, groups: int = 5
    ) -> None:
        super().__init__(name="feeder", daemon=True)
        self.callers = callers
        self.groups = [callers[i::groups] for i in range(groups)]
        self.events = events
        self.extra_per_group = extra_per_s * FRAME_S / groups
        self.stopping = threading.Event()

    def run(self) -> None:
        tick = time.monotonic()
        pause = threading.Event()
        owed = 0.0
        publish, names = self.events.publish, itertools.cycle([c.call_id for c in self.callers])
        while not self.stopping.is_set():
            for n, group in enumerate(self.groups):
                due = tick + n * FRAME_S / len(self.groups)
                delay = due - time.monotonic()
                if delay > 0:
                    pause.wait(delay)
                now = time.monotonic()
                for caller in group:
                    caller.send(now)
                owed += self.extra_per_group
                while owed >= 1.0:
                    owed -= 1.0
                    publish(next(names), "bench", {"at": now})
            tick += FRAME_S
            if time.monotonic() - tick > 1.0:
                tick = time.monotonic()  # fell far behind: do not try to catch up in a burst


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="debug-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class WatchClient:
    """`mediaserver inspect watch --rate 1000` in a subprocess; counts the lines it prints."""

    def __init__(self, socket_path: str) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASERVER_")}
        environ["MEDIASERVER_DEBUG__SOCKET_PATH"] = socket_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mediaserver", "inspect", "watch", "--rate", "1000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=environ,
            cwd=str(Path(socket_path).parent),
        )
        self.lines = 0
        self.dropped_notices = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines += 1
            if "events dropped" in line:
                self.dropped_notices += 1

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5.0)


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples), q)) if samples else float("nan")


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def measure(seconds: float, samples: list[float]) -> tuple[list[float], float]:
    """The v2v samples settled during `seconds`, and this process's CPU in % of one core."""
    start = len(samples)
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    threading.Event().wait(seconds)
    cpu1, wall1 = cpu_seconds(), time.monotonic()
    return samples[start:], 100.0 * (cpu1 - cpu0) / (wall1 - wall0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--segment-s", type=float, default=12.0, help="one measuring segment")
    parser.add_argument("--rounds", type=int, default=2, help="without/with pairs")
    parser.add_argument("--cycle-s", type=float, default=2.5, help="one turn per call this often")
    parser.add_argument("--warmup-s", type=float, default=4.0)
    parser.add_argument("--extra-events-per-s", type=int, default=1000)
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="msbench-", dir="/tmp")
    socket_path = str(Path(directory) / "debug.sock")
    dispatcher = Dispatcher(threads=2, name="calls")
    timer = Timer("bench-timer")
    timer.call_later(0.0, lambda: None)
    registry = CallRegistry()
    switchboard = Switchboard.start(
        dispatcher,
        supervision=SupervisionSettings(),
        vad=VadSettings(),
        registry=registry,
        timer=timer,
    )
    loop = LoopThread()
    server: DebugServer = debug_server(DebugSettings(socket_path=socket_path), registry, dispatcher)
    loop.run(server.start())

    samples: list[float] = []
    agent = AgentConfig(id="bench-agent", name="Bench", greeting="")
    callers: list[Caller] = []
    cycle_frames = round(args.cycle_s / FRAME_S)
    for n in range(args.calls):
        call_id = f"bench-{n}"
        outbox = LatencyOutbox(samples)
        switchboard.tell(
            AdmitCall(
                call_id=call_id,
                company_id="bench",
                agent=agent,
                transport="bench",
                outbox=server.events.tap(outbox),
                engines=fake_engines(Script(timer=timer)),
            )
        )
        if not outbox.answered.wait(10.0) or not isinstance(outbox.answer, CallAdmitted):
            raise SystemExit(f"{call_id} not admitted: {outbox.answer}")
        handle = outbox.answer.handle
        handle.tell(MediaConnected(call_id=call_id))
        callers.append(Caller(call_id, handle, cycle_frames, phase=(n * 37) % cycle_frames))

    feeder = Feeder(callers, server.events, args.extra_events_per_s)
    feeder.start()
    print(f"{args.calls} calls, a turn each every {args.cycle_s} s; warming up", flush=True)
    threading.Event().wait(args.warmup_s)

    results: dict[str, tuple[list[float], list[float]]] = {"without": ([], []), "with": ([], [])}
    delivered = dropped = 0
    for round_no, condition in itertools.product(range(args.rounds), ("without", "with")):
        watch = None
        if condition == "with":
            watch = WatchClient(socket_path)
            deadline = time.monotonic() + 20.0
            while not server.events.watching and time.monotonic() < deadline:
                threading.Event().wait(0.05)
            if not server.events.watching:
                raise SystemExit("the watch client did not connect")
        got, cpu = measure(args.segment_s, samples)
        results[condition][0].extend(got)
        results[condition][1].append(cpu)
        line = f"round {round_no + 1} {condition:>7}: {len(got)} turns, v2v p50 "
        line += f"{percentile(got, 50):.1f} ms p95 {percentile(got, 95):.1f} ms, CPU {cpu:.1f} %"
        if watch is not None:
            watcher = server.events.watchers[0]
            delivered += watcher.delivered_total
            dropped += watcher.dropped_total
            line += f", {watcher.delivered_total} events streamed, {watcher.dropped_total} dropped"
            watch.stop()
            line += f" ({watch.lines} lines printed by the client)"
        print(line, flush=True)

    feeder.stopping.set()
    feeder.join(5.0)
    for caller in callers:
        caller.handle.tell(HangUp(call_id=caller.call_id, reason="bye"))
    for caller in callers:
        caller.handle.wait_ended(10.0)
    loop.run(server.close())
    loop.close()
    switchboard.stop(timeout=10.0)
    dispatcher.shutdown(timeout=10.0)
    timer.close()
    shutil.rmtree(directory, ignore_errors=True)

    p95 = {name: round(percentile(v2v, 95), 1) for name, (v2v, _) in results.items()}
    cpu_pct = {name: round(sum(cpu) / len(cpu), 1) for name, (_, cpu) in results.items()}
    print(f"watch: {delivered} events streamed, {dropped} dropped by the rate limit", flush=True)
    print(
        json.dumps(
            {
                "bench": "debug_watch",
                "v2v_p95_ms": {"without": p95["without"], "with": p95["with"]},
                "cpu_pct": {"without": cpu_pct["without"], "with": cpu_pct["with"]},
            },
            separators=(",", ":"),
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
