"""Benchmark what a caller waits for: voice-to-voice latency, server overhead and barge-in.

One call runs through the real call tree (Dispatcher, CallRegistry and Switchboard built as
`mediaserver.app.start_actors` builds them, the call admitted with `AdmitCall` and an outbox
that stamps every message's arrival) with the real engines: Deepgram live STT, OpenAI chat
and Deepgram Aura TTS against the loopback fakes of `tests/mediaserver/engines`, on a server
event loop of their own (the fakes run on another), and Silero VAD. The fakes' timings are
fixed: the STT final comes `STT_FINAL_MS` after Finalize, the first token `LLM_FIRST_TOKEN_MS`
after the request and one token every `LLM_TOKEN_MS` after it, the first audio
`TTS_FIRST_AUDIO_MS` after the text.

The caller is Piper speaking a question (resampled to 16 kHz), then silence: 20 ms frames
handed to `CallHandle.send_audio` in real time, as a transport would (it is left out). Each
question starts `BARGE_IN_AFTER_S` after the previous reply's first audio, while that reply
is still playing, so every turn is also a barge-in. One warm-up turn comes first and is not
counted; then `TURNS` turns. `vad.min_speech_ms` and every other setting keep their defaults.

Measured, per turn (times are `time.monotonic()`):

- end of speech: the capture time of the question's last sample above `VOICED_ABOVE`;
- v2v: end of speech -> the reply's first `BotAudio` put on the outbox;
- overhead: v2v minus `vad.end_of_turn_silence_ms` minus the fakes' fixed latencies (STT
  final, first token, the first sentence's remaining tokens at `LLM_TOKEN_MS`, first audio);
  "where the overhead goes" splits it at the engine boundary, stamped by a pass-through
  wrapper around each engine (`TimedEngine`);
- barge-in: the interrupting question's first speech frame handed to the handle ->
  `FlushAudio` put on the outbox (min_speech_ms of voice plus the VAD's 32 ms windows).

Then `OFFLINE_TURNS` turns of another call with the embedded engines (EngineCatalog "offline":
Whisper, the scripted LLM, Piper), each reply played out before the next question.

Run: `.venv/bin/python bench/latency.py` (about two minutes, no arguments). Percentiles are
nearest-rank (p95 of 20 turns is the 19th). The last stdout line is JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeVar

if __package__ in (None, ""):
    # Run as a script: the fake providers live in the `tests` package of the project root.
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from pydantic import SecretStr

from actors.agent import AgentConfig, FaqRule
from actors.call_handle import CallHandle
from actors.call_registry import CallRegistry
from actors.engines import CallEngines, EngineResult, Sink
from actors.messages import (
    AdmitCall,
    AudioReceived,
    BotAudio,
    CallAdmitted,
    FlushAudio,
    HangUp,
    Outbound,
    PlaybackProgressed,
    ResponseCompleted,
    SpeechStopped,
    TranscriptUpdated,
    TurnRecorded,
)
from actors.runtime import Dispatcher
from actors.switchboard import Switchboard
from config.settings import (
    DeepgramSettings,
    OfflineSettings,
    OpenAISettings,
    SupervisionSettings,
    VadSettings,
)
from mediaserver.engines.catalog import EngineCatalog
from mediaserver.engines.deepgram_stt import DeepgramStt
from mediaserver.engines.deepgram_tts import DeepgramTts
from mediaserver.engines.openai_llm import OpenAILlm
from mediaserver.telephony.resample import Resampler
from tests.mediaserver.engines.fake_deepgram import FakeDeepgram, ListenScript, SpeakScript
from tests.mediaserver.engines.fake_openai import ChatScript, FakeOpenAI, tokens_of

R = TypeVar("R")

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
VOICED_ABOVE = 300  # |sample| above this is voice (about -40 dBFS; the fake STT's threshold too)
TURNS = 20
OFFLINE_TURNS = 5
BARGE_IN_AFTER_S = 0.3
TIMEOUT_S = 20.0

STT_FINAL_MS = 100
LLM_FIRST_TOKEN_MS = 200
LLM_TOKEN_MS = 10
TTS_FIRST_AUDIO_MS = 100

QUESTIONS = (
    "What time do you open on Saturday?",
    "Can I order a birthday cake for Friday?",
    "Do you have gluten free bread?",
    "Where can I park near the shop?",
)
FIRST_SENTENCE = "We open at eight every day."
# The rest keeps the reply playing (the fake voices 10 ms a character) past the next question's
# barge-in.
REPLY = (
    f"{FIRST_SENTENCE} On Saturdays the bakery stays open until six in the evening, and the "
    "cafe next door serves breakfast until eleven. Is there anything else I can help with?"
)
FIRST_SENTENCE_TOKENS = len(tokens_of(FIRST_SENTENCE))
FAKES_MS = STT_FINAL_MS + LLM_FIRST_TOKEN_MS + (FIRST_SENTENCE_TOKENS - 1) * LLM_TOKEN_MS
FAKES_MS += TTS_FIRST_AUDIO_MS

PROVIDER_AGENT = AgentConfig(
    id="latency", name="Latency", stt_engine="deepgram", llm_engine="openai", tts_engine="deepgram"
)
OFFLINE_AGENT = AgentConfig(
    id="offline",
    name="Offline",
    faq=(FaqRule(pattern="open, cake, bread, park", answer=REPLY),),
)


# --- event loops, the outbox and the engine stamps -------------------------------------------


class LoopThread:
    """An asyncio event loop on its own thread: the server's, or the providers'."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, R], timeout: float = TIMEOUT_S) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class TimedOutbox:
    """Records each outbound message with the time it was put; never blocks for long."""

    def __init__(self) -> None:
        self.log: list[tuple[float, Outbound]] = []
        self._changed = threading.Condition()

    def put(self, message: Outbound, /) -> None:
        at = time.monotonic()
        with self._changed:
            self.log.append((at, message))
            self._changed.notify_all()

    def mark(self) -> int:
        with self._changed:
            return len(self.log)

    def wait(self, match: Callable[[Outbound], bool], since: int = 0) -> tuple[float, Any]:
        """The first message after index `since` that matches, with its time; waits for it."""

        def found() -> tuple[float, Outbound] | None:
            return next(((t, m) for t, m in self.log[since:] if match(m)), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None, TIMEOUT_S):
                kinds = [type(m).__name__ for _, m in self.log[-20:]]
                msg = f"timed out; last messages: {kinds}"
                raise TimeoutError(msg)
            hit = found()
            assert hit is not None
            return hit

    def of(self, kind: type[R]) -> list[tuple[float, R]]:
        with self._changed:
            return [(t, m) for t, m in self.log if isinstance(m, kind)]


class Stamps:
    """Times of engine calls and results: (time, "stt.finalize" | "llm.TokenReceived" | ...)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []  # list.append is atomic under the GIL

    def add(self, name: str) -> None:
        self.events.append((time.monotonic(), name))

    def mark(self) -> int:
        return len(self.events)

    def chain(self, since: int, steps: list[tuple[str, int]]) -> list[float]:
        """For each (name, n): the time of the n-th `name` stamped after the previous step's."""
        times = []
        at = since - 1
        for name, n in steps:
            later = [i for i in range(at + 1, len(self.events)) if self.events[i][1] == name]
            if len(later) < n:
                msg = f"{name} #{n} was not stamped"
                raise LookupError(msg)
            at = later[n - 1]
            times.append(self.events[at][0])
        return times


class TimedStream:
    def __init__(self, stream: Any, name: str, stamps: Stamps) -> None:
        self._stream = stream
        self._name = name
        self._stamps = stamps

    def send(self, item: Any, /) -> None:
        self._stamps.add(f"{self._name}.send")
        self._stream.send(item)

    def finalize(self) -> None:
        self._stamps.add(f"{self._name}.finalize")
        self._stream.finalize()

    def cancel(self) -> None:
        self._stream.cancel()

    def close(self) -> None:
        self._stream.close()


class TimedEngine:
    """A real engine, passed through; stamps `send`, `finalize` and every result."""

    def __init__(self, engine: Any, name: str, stamps: Stamps) -> None:
        self._engine = engine
        self._name = name
        self._stamps = stamps

    def open(self, call_id: str, sink: Sink) -> TimedStream:
        def stamped(result: EngineResult) -> None:
            kind = type(result).__name__
            if kind == "TranscriptReceived" and getattr(result, "finalized", False):
                kind = "finalized"
            self._stamps.add(f"{self._name}.{kind}")
            sink(result)

        return TimedStream(self._engine.open(call_id, stamped), self._name, self._stamps)


def timed(engines: CallEngines, stamps: Stamps) -> CallEngines:
    return CallEngines(
        stt=TimedEngine(engines.stt, "stt", stamps),
        llm=TimedEngine(engines.llm, "llm", stamps),
        tts=TimedEngine(engines.tts, "tts", stamps),
        vad=engines.vad,
    )


# --- the caller --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """16 kHz PCM16 padded to whole frames, with its first and last voiced samples."""

    pcm: bytes
    first_voiced: int
    last_voiced: int

    @classmethod
    def of(cls, pcm: bytes) -> Utterance:
        samples = np.frombuffer(pcm, dtype=np.int16)
        voiced = np.flatnonzero(np.abs(samples.astype(np.int32)) > VOICED_ABOVE)
        pad = -len(samples) % FRAME_SAMPLES
        return cls(pcm + bytes(2 * pad), int(voiced[0]), int(voiced[-1]))


@dataclass
class Said:
    """When the caller said an utterance (filled in by the caller's thread)."""

    utterance: Utterance
    first_voice_sent_at: float = math.nan  # its first voiced frame handed to the handle
    voice_ended_at: float = math.nan  # capture time of its last voiced sample


class Caller(threading.Thread):
    """Hands the call one 20 ms frame every 20 ms, on time: utterances, silence in between."""

    def __init__(self, call_id: str, handle: CallHandle) -> None:
        super().__init__(name=f"caller-{call_id}", daemon=True)
        self._call_id = call_id
        self._handle = handle
        self._queue: deque[Said] = deque()
        self._stopping = threading.Event()
        self.late_ms: list[float] = []

    def say(self, utterance: Utterance) -> Said:
        said = Said(utterance)
        self._queue.append(said)
        return said

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)

    def run(self) -> None:
        silence = bytes(2 * FRAME_SAMPLES)
        t0 = time.monotonic()
        frame = 0  # frame n is captured over [t0 + n * 20 ms, + 20 ms) and handed over at its end
        current: tuple[Said, int] | None = None  # the utterance being said, its first frame
        while not self._stopping.is_set():
            due = t0 + (frame + 1) * FRAME_S
            while (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            if current is None and self._queue:
                said = self._queue.popleft()
                current = (said, frame)
                said.voice_ended_at = (
                    t0 + frame * FRAME_S + (said.utterance.last_voiced + 1) / SAMPLE_RATE
                )
            pcm = silence
            if current is not None:
                said, first = current
                offset = (frame - first) * FRAME_SAMPLES
                pcm = said.utterance.pcm[2 * offset : 2 * (offset + FRAME_SAMPLES)]
                if offset <= said.utterance.first_voiced < offset + FRAME_SAMPLES:
                    said.first_voice_sent_at = time.monotonic()
                if 2 * (offset + FRAME_SAMPLES) >= len(said.utterance.pcm):
                    current = None
            self.late_ms.append((time.monotonic() - due) * 1000)
            self._handle.send_audio(
                AudioReceived(
                    call_id=self._call_id,
                    pcm=pcm,
                    sample_rate=SAMPLE_RATE,
                    captured_at=t0 + frame * FRAME_S,
                )
            )
            frame += 1


def to_16k(pcm: bytes, rate: int) -> bytes:
    resampler = Resampler(rate, SAMPLE_RATE)
    return resampler.process(pcm) + resampler.flush().tobytes()


# --- one call ----------------------------------------------------------------------------------

# The chain from the end of the caller's speech to the reply's first audio, one stamp per step:
# (name, what the step ends with). Consecutive differences add up to voice-to-voice.
HOPS = (
    ("vad lag", "end of the last window the VAD calls voiced (SpeechStopped.at)"),
    ("turn end", "SpeechStopped out: silence counted in 32 ms windows, on 20 ms frames"),
    ("to stt", "Transcriber calls stt.finalize()"),
    ("stt", "finalized transcript at the engine sink"),
    ("to llm", "Responder calls llm.send() (Transcriber -> Session -> Responder)"),
    ("llm", "first token at the engine sink"),
    ("sentence", "last token of the first sentence at the sink"),
    ("boundary", "next token at the sink: the splitter waits for the space after the '.'"),
    ("to tts", "Responder calls tts.send(first sentence)"),
    ("tts", "first audio at the engine sink"),
    ("to outbox", "first BotAudio put on the outbox"),
)


@dataclass
class Turn:
    """One turn's latencies in ms; `hops` are the raw steps of HOPS."""

    v2v: float
    stt_final: float  # SpeechStopped out -> final transcript out
    hops: dict[str, float]
    barge_in: float | None  # None: nothing was playing, or no flush came
    reply_turn_id: int
    user_turn_id: int


class BenchCall:
    """One admitted call: its stamping outbox and engines, and a caller speaking in real time."""

    def __init__(self, board: Any, engines: CallEngines, agent: AgentConfig, call_id: str) -> None:
        self.stamps = Stamps()
        self.outbox = TimedOutbox()
        self.call_id = call_id
        board.tell(
            AdmitCall(
                call_id=call_id,
                company_id="bench",
                agent=agent,
                transport="bench",
                outbox=self.outbox,
                engines=timed(engines, self.stamps),
            )
        )
        _, admitted = self.outbox.wait(lambda m: isinstance(m, CallAdmitted))
        self.handle: CallHandle = admitted.handle
        self.caller = Caller(call_id, self.handle)
        self.caller.start()
        self._reply_turn = 0

    def turn(self, utterance: Utterance, *, play_out: bool) -> Turn:
        """Say `utterance`; return its latencies once the reply's first audio is out."""
        box_mark, stamp_mark = self.outbox.mark(), self.stamps.mark()
        previous = self._reply_turn
        said = self.caller.say(utterance)
        t_bot, bot = self.outbox.wait(
            lambda m: isinstance(m, BotAudio) and m.turn_id > previous, box_mark
        )
        self._reply_turn = bot.turn_id
        t_stopped, stopped = self.outbox.wait(lambda m: isinstance(m, SpeechStopped), box_mark)
        t_final, final = self.outbox.wait(
            lambda m: isinstance(m, TranscriptUpdated) and m.final, box_mark
        )
        engine_times = self.stamps.chain(
            stamp_mark,
            [
                ("stt.finalize", 1),
                ("stt.finalized", 1),
                ("llm.send", 1),
                ("llm.TokenReceived", 1),
                ("llm.TokenReceived", FIRST_SENTENCE_TOKENS - 1),
                ("llm.TokenReceived", 1),
                ("tts.send", 1),
                ("tts.SpeechChunk", 1),
            ],
        )
        times = [said.voice_ended_at, stopped.at, t_stopped, *engine_times, t_bot]
        hops = {
            name: (later - earlier) * 1000
            for (name, _), (earlier, later) in zip(HOPS, pairwise(times), strict=True)
        }
        flushed = [t for t, m in self.outbox.of(FlushAudio) if previous and m.turn_id == previous]
        barge_in = (flushed[0] - said.first_voice_sent_at) * 1000 if flushed else None
        if play_out:  # what a transport reports once the reply has played
            self.handle.tell(
                PlaybackProgressed(call_id=self.call_id, turn_id=bot.turn_id, played_ms=1e9)
            )
            self.outbox.wait(
                lambda m: isinstance(m, ResponseCompleted) and m.turn_id == bot.turn_id, box_mark
            )
        return Turn(
            v2v=(t_bot - said.voice_ended_at) * 1000,
            stt_final=(t_final - t_stopped) * 1000,
            hops=hops,
            barge_in=barge_in,
            reply_turn_id=bot.turn_id,
            user_turn_id=final.turn_id,
        )

    def recorded(self, turn_id: int) -> TurnRecorded | None:
        return next((m for _, m in self.outbox.of(TurnRecorded) if m.turn_id == turn_id), None)

    def hang_up(self) -> None:
        self.caller.stop()
        self.handle.tell(HangUp(call_id=self.call_id, reason="bye"))
        self.handle.wait_ended(5.0)


# --- the two runs ------------------------------------------------------------------------------


@dataclass
class Run:
    turns: list[Turn]
    call: BenchCall


def provider_run(board: Any, vad: Any, questions: list[Utterance]) -> Run:
    """A warm-up turn and TURNS turns against the fake providers, each barging in."""
    providers, server = LoopThread("providers"), LoopThread("server")
    deepgram = FakeDeepgram(
        listen=ListenScript(
            fixed_transcript="What time do you open?",
            endpointing=False,  # so the final is the answer to Finalize
            finalize_delay_ms=STT_FINAL_MS,
        ),
        speak=SpeakScript(first_audio_ms=TTS_FIRST_AUDIO_MS),
    )
    openai = FakeOpenAI(
        chat=ChatScript(
            reply=REPLY, first_token_ms=LLM_FIRST_TOKEN_MS, token_interval_ms=LLM_TOKEN_MS
        )
    )
    providers.run(deepgram.__aenter__())
    providers.run(openai.__aenter__())
    dg = DeepgramSettings(api_key=SecretStr(deepgram.api_key), base_url=deepgram.url)
    oa = OpenAISettings(api_key=SecretStr(openai.api_key), base_url=openai.base_url)
    stt, tts, llm = DeepgramStt(dg, server.loop), DeepgramTts(dg, server.loop), None
    try:
        llm = OpenAILlm(oa, server.loop)
        engines = CallEngines(stt=stt, llm=llm, tts=tts, vad=vad)
        call = BenchCall(board, engines, PROVIDER_AGENT, "latency-providers")
        turns: list[Turn] = []
        try:
            for n in range(TURNS + 1):
                turn = call.turn(questions[n % len(questions)], play_out=False)
                if n:  # the first one warms up sockets and connection pools
                    turns.append(turn)
                time.sleep(BARGE_IN_AFTER_S)  # the next question interrupts this reply
        finally:
            call.hang_up()
    finally:
        for engine in (stt, tts, llm):
            if engine is not None:
                server.run(engine.aclose())
        time.sleep(0.2)  # the fakes see the clients leave: none of their handlers is cancelled
        providers.run(openai.__aexit__(None, None, None))
        providers.run(deepgram.__aexit__(None, None, None))
        server.close()
        providers.close()
    return Run(turns, call)


def offline_run(board: Any, catalog: EngineCatalog, questions: list[Utterance]) -> Run:
    """A warm-up turn and OFFLINE_TURNS turns with the embedded engines, each reply played."""
    call = BenchCall(board, catalog.engines_for(OFFLINE_AGENT), OFFLINE_AGENT, "latency-offline")
    turns: list[Turn] = []
    try:
        for n in range(OFFLINE_TURNS + 1):
            turn = call.turn(questions[n % len(questions)], play_out=True)
            if n:
                turns.append(turn)
            time.sleep(BARGE_IN_AFTER_S)
    finally:
        call.hang_up()
    return Run(turns, call)


# --- report ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def row(name: str, span: str, fixed: str, values: list[float]) -> str:
    if not values:
        return f"{name:<16} {span:<52} {fixed:>6} {'-':>7} {'-':>7} {'-':>7}"
    return (
        f"{name:<16} {span:<52} {fixed:>6} {pct(values, 50):>7.1f} {pct(values, 95):>7.1f} "
        f"{max(values):>7.1f}"
    )


def report(provider: Run, offline: Run, eot_ms: int, min_speech_ms: int) -> dict[str, Any]:
    turns = provider.turns
    nominal = {
        "turn end": eot_ms,
        "stt": STT_FINAL_MS,
        "llm": LLM_FIRST_TOKEN_MS,
        "sentence": (FIRST_SENTENCE_TOKENS - 1) * LLM_TOKEN_MS,
        "tts": TTS_FIRST_AUDIO_MS,
    }
    fixed = eot_ms + FAKES_MS
    overhead = [t.v2v - fixed for t in turns]
    barge_in = [t.barge_in for t in turns if t.barge_in is not None]
    offline_v2v = [t.v2v for t in offline.turns]

    stages = [
        ("turn end", "end of speech -> SpeechStopped out", eot_ms,
         [t.hops["vad lag"] + t.hops["turn end"] for t in turns]),
        ("stt final", "SpeechStopped out -> final transcript out", STT_FINAL_MS,
         [t.stt_final for t in turns]),
        ("llm first token", "llm.send() -> first token at the engine sink", LLM_FIRST_TOKEN_MS,
         [t.hops["llm"] for t in turns]),
        ("tts first audio", "tts.send(sentence) -> first audio at the sink", TTS_FIRST_AUDIO_MS,
         [t.hops["tts"] for t in turns]),
        ("voice-to-voice", "end of speech -> first BotAudio out", fixed, [t.v2v for t in turns]),
        ("overhead", f"v2v - {eot_ms} silence - {FAKES_MS} fakes (goal p95 < 40)", 0, overhead),
        ("  after turn end", "SpeechStopped out -> first BotAudio out, - fakes", 0,
         [t.v2v - t.hops["vad lag"] - t.hops["turn end"] - FAKES_MS for t in turns]),
        ("barge-in", "first speech frame in -> FlushAudio out (goal < 250)", min_speech_ms,
         barge_in),
        (f"offline v2v n={len(offline_v2v)}", "end of speech -> first BotAudio out", eot_ms,
         offline_v2v),
    ]  # fmt: skip
    header = f"{'stage':<16} {'from -> to':<52} {'fixed':>6} {'p50':>7} {'p95':>7} {'max':>7}"
    print(f"{TURNS} turns through the real call tree: Deepgram STT, OpenAI LLM, Deepgram TTS")
    print("against loopback fakes; ms; 'fixed' is the silence or the fakes' part of the span\n")
    print(header)
    print("-" * len(header))
    for name, span, part, values in stages:
        print(row(name, span, str(part), values))

    print("\nwhere the overhead goes (each step minus its fixed part; the steps add up to it)")
    print(f"{'step':<10} {'p50':>7} {'p95':>7} {'max':>7}  ends at")
    for name, meaning in HOPS:
        values = [t.hops[name] - nominal.get(name, 0) for t in turns]
        print(
            f"{name:<10} {pct(values, 50):>7.1f} {pct(values, 95):>7.1f} {max(values):>7.1f}  "
            f"{meaning}"
        )

    print("\noffline engines (Whisper, scripted LLM, Piper), each step p50 in ms (raw)")
    print(
        "  "
        + "  ".join(
            f"{name} {pct([t.hops[name] for t in offline.turns], 50):.0f}" for name, _ in HOPS
        )
    )

    recorded = [provider.call.recorded(t.reply_turn_id) for t in turns]
    users = [provider.call.recorded(t.user_turn_id) for t in turns]

    def tree(values: list[float | None]) -> str:
        present = [v for v in values if v is not None]
        return f"{pct(present, 50):.1f}" if present else "-"

    print(
        "\nthe tree's own TurnRecorded metrics, p50 (from the VAD's end of speech): "
        f"stt_ms {tree([u.stt_ms if u else None for u in users])}, "
        f"llm_first_token_ms {tree([r.llm_first_token_ms if r else None for r in recorded])}, "
        f"tts_first_audio_ms {tree([r.tts_first_audio_ms if r else None for r in recorded])}, "
        f"voice_to_voice_ms {tree([r.voice_to_voice_ms if r else None for r in recorded])}"
    )
    late = provider.call.caller.late_ms
    print(
        f"caller frames handed over late by p99 {pct(late, 99):.2f} ms, max {max(late):.2f} ms; "
        f"barge-ins measured {len(barge_in)}/{len(turns)}"
    )
    return {
        "bench": "latency",
        "turns": len(turns),
        "overhead_p50_ms": round(pct(overhead, 50), 1),
        "overhead_p95_ms": round(pct(overhead, 95), 1),
        "barge_in_p95_ms": round(pct(barge_in, 95), 1) if barge_in else None,
        "min_speech_ms": min_speech_ms,
        "offline_v2v_p50_ms": round(pct(offline_v2v, 50), 1),
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    vad_settings = VadSettings()
    catalog = EngineCatalog(OfflineSettings())
    catalog.warm_up()
    speech = [catalog.piper.synthesize(text) for text in QUESTIONS]
    questions = [Utterance.of(to_16k(s.pcm, s.sample_rate)) for s in speech]

    # As mediaserver.app.start_actors builds them, with every setting at its default.
    supervision = SupervisionSettings()
    dispatcher = Dispatcher(threads=supervision.dispatcher_threads, name="calls")
    registry = CallRegistry()
    board = Switchboard.start(
        dispatcher,
        supervision=supervision,
        vad=vad_settings,
        registry=registry,
    )
    try:
        provider = provider_run(board, catalog.vad, questions)
        offline = offline_run(board, catalog, questions)
    finally:
        dispatcher.shutdown(5.0)
        catalog.close()
    result = report(
        provider, offline, vad_settings.end_of_turn_silence_ms, vad_settings.min_speech_ms
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
