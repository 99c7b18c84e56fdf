"""The message vocabulary between the edge and the call tree.

Inbound (edge -> actors), told through a `CallHandle` or to the `Switchboard`:

    AdmitCall  Shutdown                                  -> Switchboard
    AudioReceived                                        -> AudioIngest (through the handle)
    TextReceived DtmfReceived PlaybackProgressed
    MediaConnected HangUp                                -> CallSupervisor (through the handle)
    RestartChild InjectFault                             -> CallSupervisor (operator, debug socket)

Outbound (actors -> edge), put on the call's `Outbox`: every other class here. The edge maps
them to wire events (signaling `transcript`, `speech`, `response.delta`, `response`,
`interrupted`, `ended`), to the transport (`BotAudio`, `FlushAudio`) and to the store
(`CallEventRecorded`, `TurnRecorded`, `UsageRecorded`, `CallEnded`).

All messages are frozen, slotted and keyword-only: pykka hands the same object to other threads.
Times are monotonic seconds (`time.monotonic`, the clock the edge stamps audio with).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, get_args

if TYPE_CHECKING:
    from actors.agent import AgentConfig
    from actors.call_handle import CallHandle
    from actors.engines import CallEngines
    from actors.faults import FaultPlan

SAMPLE_RATE = 16_000  # every inbound audio message is 16 kHz mono PCM16
Scalar = str | int | float | bool | None

# Why a call ended; the one list (docs/http-api.md, "End reasons", is its table). A live call is
# ended by its tree or its edge (`HangUp`, `CallEnded`); a crashed one by another process,
# after the process that owned it died (`mediaserver/owners.py`).
EndReason = Literal[
    "bye",
    "hangup",
    "api_hangup",
    "ice_failed",
    "max_duration",
    "idle",
    "escalated",
    "shutdown",
    "replaced",
]
CrashReason = Literal["worker_crash", "server_crash", "node_lost"]
LIVE_END_REASONS: tuple[EndReason, ...] = get_args(EndReason)
CRASH_REASONS: tuple[CrashReason, ...] = get_args(CrashReason)
END_REASONS: tuple[EndReason | CrashReason, ...] = LIVE_END_REASONS + CRASH_REASONS
RefusalReason = Literal["shutting_down", "duplicate"]


# --- inbound -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioReceived:
    """Caller audio, 16-bit mono PCM at 16 kHz (the edge converts; AudioIngest asserts)."""

    call_id: str
    pcm: bytes
    sample_rate: int
    captured_at: float  # monotonic seconds at the first sample

    @property
    def realtime_ms(self) -> float:
        """Duration: the runtime drops the oldest audio beyond the backlog by this measure."""
        return len(self.pcm) * 500.0 / self.sample_rate


@dataclass(frozen=True, slots=True, kw_only=True)
class TextReceived:
    """Chat text from the caller; it joins the conversation as a user turn."""

    call_id: str
    text: str
    received_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DtmfReceived:
    """A keypad press (0-9, *, #, A-D): stored, and read by the LLM as the text `(keypad: D)`."""

    call_id: str
    digit: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybackProgressed:
    """How much of `turn_id`'s bot audio the transport has actually played out, in total."""

    call_id: str
    turn_id: int
    played_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConnected:
    """Media flows both ways: the agent's greeting starts. A text-only call never sends it."""

    call_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HangUp:
    """End the call. The supervisor stops the tree and answers with `CallEnded(reason)`."""

    call_id: str
    reason: EndReason


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartChild:
    """Operator action: replace a child now, as if it had failed (rest_for_one, counted).

    The running instance is stopped (not failed); it and the children after it restart from
    their checkpoints after the usual backoff. Counts toward the restart intensity.
    """

    call_id: str
    child: str  # "session", "ingest", "transcriber", "responder"; others are ignored
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InjectFault:
    """Fault injection: make `actor` fail in its next handler, exactly as a bug would.

    `actor` is "supervisor" (the call ends, escalated) or a child's name (supervision restarts
    it). `kind` "hang" blocks the handler for `hang_s` (the watchdog abandons a stalled child).
    The edge sends it only when `debug.fault_injection` is on.
    """

    call_id: str
    actor: str
    kind: Literal["exception", "system_exit", "hang"] = "exception"
    hang_s: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmitCall:
    """Start a call tree; the answer (`CallAdmitted` or `CallRefused`) goes to `outbox`."""

    call_id: str
    company_id: str
    agent: AgentConfig
    transport: str  # "webrtc", "whip", "twilio", "exotel": recorded, not interpreted
    outbox: Outbox
    engines: CallEngines
    faults: FaultPlan | None = None  # only when fault injection is enabled


@dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown:
    """Refuse new calls; end the live ones with reason "shutdown" after `drain_s`."""

    drain_s: float


# --- outbound ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CallAdmitted:
    """The tree runs; tell it through `handle` (thread-safe, never blocks)."""

    call_id: str
    handle: CallHandle


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRefused:
    call_id: str
    reason: RefusalReason


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStarted:
    call_id: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStopped:
    call_id: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptUpdated:
    """The caller's words in `turn_id` so far (`final=False`) or settled (`final=True`)."""

    call_id: str
    turn_id: int
    text: str
    final: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseDelta:
    call_id: str
    turn_id: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseCompleted:
    call_id: str
    turn_id: int
    content: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BotAudio:
    """Reply audio, PCM16 mono at any rate: resampling for the transport is the edge's job."""

    call_id: str
    turn_id: int
    pcm: bytes
    sample_rate: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FlushAudio:
    """Barge-in: drop every queued outbound audio frame now."""

    call_id: str
    turn_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseInterrupted:
    call_id: str
    turn_id: int
    spoken: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded:
    """The tree has stopped (sent exactly once). The edge hangs up and persists the reason."""

    call_id: str
    reason: EndReason
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEventRecorded:
    """A row for the call's event log; `data` is read-only."""

    call_id: str
    kind: str
    data: Mapping[str, Scalar]
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnRecorded:
    """A settled turn, with its latencies in ms (None where they do not apply)."""

    call_id: str
    turn_id: int
    role: Literal["user", "assistant", "dtmf"]
    text: str
    started_at: float
    ended_at: float
    interrupted: bool = False
    stt_ms: float | None = None  # end of caller speech -> final transcript
    llm_first_token_ms: float | None = None
    tts_first_audio_ms: float | None = None
    voice_to_voice_ms: float | None = None  # end of caller speech -> first BotAudio put


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecorded:
    call_id: str
    turn_id: int
    tokens_in: int
    tokens_out: int
    audio_in_s: float
    audio_out_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioDropped:
    """Metric: `actor` fell behind and the runtime dropped its oldest audio."""

    call_id: str
    actor: str
    dropped_ms: float
    dropped_messages: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildRestarted:
    """Metric: supervision replaced `child` (generation is the new instance's)."""

    call_id: str
    child: str
    generation: int
    error: str


Outbound = (
    CallAdmitted
    | CallRefused
    | SpeechStarted
    | SpeechStopped
    | TranscriptUpdated
    | ResponseDelta
    | ResponseCompleted
    | BotAudio
    | FlushAudio
    | ResponseInterrupted
    | CallEnded
    | CallEventRecorded
    | TurnRecorded
    | UsageRecorded
    | AudioDropped
    | ChildRestarted
)


class Outbox(Protocol):
    """Where a call's outbound messages go. Called from actor threads: it must never block.

    The edge implements it with `loop.call_soon_threadsafe(queue.put_nowait, message)`.
    """

    def put(self, message: Outbound, /) -> None: ...
