"""The engine boundary: what the edge implements so the call tree can hear, think and speak.

One rule for every streaming engine (speech-to-text, LLM, text-to-speech): every method is
synchronous and returns at once, so an actor never blocks and never imports I/O.

    stream = engine.open(call_id, sink)    # per call (STT) or per reply (LLM, TTS)
    stream.send(item)                      # STT: bytes of 16 kHz PCM16; LLM: ReplyRequest;
                                           # TTS: one sentence of text
    stream.finalize()                      # STT: end of turn; TTS: no more text
    stream.cancel()                        # drop pending work (barge-in, restart); no more results
    stream.close()                         # release resources; idempotent

Results come back by calling `sink(result)` from any thread (the event loop, an executor):
the sink only tells the owning actor, so it never blocks. Each result is one of the frozen
dataclasses below. Any result counts as progress for stall detection; an engine that works for a
long time without output may send `EngineProgressed`. Transient failures (a dropped socket,
a 429) are the engine's to absorb; when it gives up it sends `EngineFailed(gave_up=True)`.

The owning actor wraps the sink so each result is tagged with the actor instance's generation
and the stream's number: results from a cancelled stream, or from an instance that was
abandoned or restarted, are discarded, never delivered twice. A sink must therefore never be
called after `cancel()` or `close()` returned in the hope of being heard: it will not be.

Contracts per engine kind:

* STT: results are `TranscriptReceived`. After `finalize()` the engine MUST eventually send
  exactly one result with `finalized=True` (its text may be empty) that settles all audio sent
  before the call. `end_of_turn=True` marks the provider's own endpoint (`turn_end="provider"`).
* LLM: one `send(ReplyRequest)` per stream; then `TokenReceived`* and one `ReplyCompleted`.
* TTS: `SpeechChunk`s carry the index of the `send()` they voice (0-based), at any sample rate;
  after `finalize()` and the last chunk, one `SpeechFinished`.
* VAD is the exception: called inline on AudioIngest's thread (~0.15 ms a window).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

EngineKind = Literal["stt", "llm", "tts"]

T_contra = TypeVar("T_contra", contravariant=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    """One entry of the conversation history sent to the LLM."""

    role: Literal["user", "assistant", "system"]
    content: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyRequest:
    """What an LLM stream is asked to answer; trimming `messages` to a budget is the engine's."""

    call_id: str
    turn_id: int
    system_prompt: str
    messages: tuple[ChatMessage, ...]
    language: str = "en"


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptReceived:
    """STT result: interim (`final=False`) or final text for audio sent so far."""

    text: str
    final: bool
    finalized: bool = False  # answers finalize(): everything sent before it is now final
    end_of_turn: bool = False  # the provider's endpoint (speech_final / UtteranceEnd)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenReceived:
    """LLM result: the next piece of reply text."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyCompleted:
    """LLM result: the reply is complete; token usage as reported by the provider."""

    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechChunk:
    """TTS result: PCM16 mono audio for the `text_index`-th sentence sent."""

    pcm: bytes
    sample_rate: int
    text_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechFinished:
    """TTS result: all text sent before `finalize()` has been voiced."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineProgressed:
    """Any engine: still working (keeps the stall watchdog quiet without other output)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineFailed:
    """Any engine: a failure. `gave_up` means the stream is dead; `error` never holds a key."""

    error: str
    gave_up: bool = True


EngineResult = (
    TranscriptReceived
    | TokenReceived
    | ReplyCompleted
    | SpeechChunk
    | SpeechFinished
    | EngineProgressed
    | EngineFailed
)

Sink = Callable[[EngineResult], None]


class EngineStream(Protocol[T_contra]):
    """One open engine stream; every method returns at once."""

    def send(self, item: T_contra, /) -> None: ...
    def finalize(self) -> None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


class SttEngine(Protocol):
    """Speech to text: opened once per Transcriber instance; `send` takes 16 kHz PCM16."""

    def open(self, call_id: str, sink: Sink) -> EngineStream[bytes]: ...


class LlmEngine(Protocol):
    """Reply text: opened once per reply."""

    def open(self, call_id: str, sink: Sink) -> EngineStream[ReplyRequest]: ...


class TtsEngine(Protocol):
    """Text to speech: opened once per reply; `send` takes one sentence."""

    def open(self, call_id: str, sink: Sink) -> EngineStream[str]: ...


Window = npt.NDArray[np.float32]


class VoiceDetector(Protocol):
    """Per-call VAD state: speech probability of one 512-sample float32 window in [-1, 1]."""

    def process(self, window: Window, /) -> float: ...


class VadFactory(Protocol):
    """Makes a detector per AudioIngest instance; the model behind it may be shared."""

    def __call__(self) -> VoiceDetector: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEngines:
    """The engines of one call, chosen by the edge from the agent's engine names."""

    stt: SttEngine
    llm: LlmEngine
    tts: TtsEngine
    vad: VadFactory
