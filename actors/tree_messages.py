"""Messages inside one call's actor tree (the edge never sees these).

Audio positions are *offsets*: samples at 16 kHz since the call started, assigned by AudioIngest.
They make replay exact: the Session settles transcripts up to an offset, the supervisor trims
the replay buffer to it, and a fresh Transcriber is fed the audio after it, so no word is lost
and none is counted twice.

    supervisor <- ChildFailed, Checkpointed, ChildStopped   (every child)
    supervisor -> RestartDue, Tick, StopDeadline       (from the shared timer, to itself)
    supervisor -> TranscriberStarted                   -> ingest (then ingest replays)
    supervisor -> SiblingStarted                       -> session (re-sends a lost Reply)
    ingest     -> TranscribeAudio, AudioReplayed, TurnEnded   -> transcriber
    ingest     -> CallerStartedSpeaking                -> responder (barge-in)
    transcriber-> InterimTranscribed, UtteranceTranscribed    -> session
    session    -> Reply, Speak                         -> responder
    responder  -> ReplyFinished                        -> session
    any engine -> EngineOutput (through the owner's sink wrapper)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from actors.engines import ChatMessage, EngineKind, EngineResult, ReplyRequest

ChildName = Literal["session", "ingest", "transcriber", "responder"]
CHILD_ORDER: tuple[ChildName, ...] = ("session", "ingest", "transcriber", "responder")


# --- supervision -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildFailed:
    """Sent by a child from `on_failure` (or by the watchdog for a stalled one)."""

    child: ChildName
    generation: int
    error: str
    traceback: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildStopped:
    """Sent by a child from `on_stop`: it has stopped, and all it emitted is on the outbox."""

    child: ChildName
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCheckpoint:
    history: tuple[ChatMessage, ...] = ()
    next_turn_id: int = 1
    heard_through: int = 0  # offset up to which caller audio is settled in history
    greeted: bool = False
    pending: Reply | Speak | None = None  # a reply asked for and not finished yet
    replied_through: int = 0  # the highest assistant turn recorded
    user_turn_id: int | None = None  # the caller's turn in progress


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestCheckpoint:
    in_speech: bool = False
    speech_started_at: float | None = None
    speech_start_offset: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriberCheckpoint:
    utterances: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderCheckpoint:
    finished_through: int = 0  # the highest turn id whose reply finished
    redo_turn: int | None = None  # the reply in flight when this state was saved
    last_finished: ReplyFinished | None = None  # re-sent if the Session lost it in a crash


Checkpoint = SessionCheckpoint | IngestCheckpoint | TranscriberCheckpoint | ResponderCheckpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpointed:
    """A child's recoverable state after a change; a restarted child starts from the last one."""

    child: ChildName
    generation: int
    state: Checkpoint
    size: int  # rough size in bytes, for the snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartDue:
    """Backoff over: start the children waiting for a restart (ignored if `epoch` is stale)."""

    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """Periodic watchdog tick from the shared timer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StopDeadline:
    """The call is ending and `stop_timeout_s` is over: end it without the children still up."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriberStarted:
    """A Transcriber instance is up: feed it, starting with the audio after `from_offset`."""

    generation: int
    from_offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFinished:
    """CallSupervisor -> Switchboard: the call's tree has stopped; forget it."""

    call_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SiblingStarted:
    child: ChildName
    generation: int


# --- audio and transcripts -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscribeAudio:
    """Live caller audio for the STT stream (real-time: droppable under backlog)."""

    pcm: bytes
    offset: int
    captured_at: float

    @property
    def realtime_ms(self) -> float:
        return len(self.pcm) / 32.0  # 16 kHz PCM16: 32 bytes a millisecond


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnEnded:
    """The caller's turn ended at `offset` (VAD silence); the Transcriber finalizes."""

    offset: int
    start_offset: int
    speech_started_at: float
    speech_ended_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioReplayed:
    """Buffered audio and turn ends after a restart, in order (a control message: never dropped)."""

    items: tuple[TranscribeAudio | TurnEnded, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallerStartedSpeaking:
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class InterimTranscribed:
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UtteranceTranscribed:
    """One caller turn, transcribed: audio [start_offset, end_offset)."""

    text: str
    start_offset: int
    end_offset: int
    speech_started_at: float
    speech_ended_at: float
    transcribed_at: float


# --- replies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Answer the caller: LLM stream, then speech sentence by sentence."""

    turn_id: int
    request: ReplyRequest
    speech_ended_at: float | None  # for voice-to-voice; None for typed turns


@dataclass(frozen=True, slots=True, kw_only=True)
class Speak:
    """Say a fixed text (the greeting) as an assistant turn."""

    turn_id: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybackDue:
    """Responder to itself (via the timer): the reply's audio should have played out by now."""

    turn_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyFinished:
    """An assistant turn is over: completed, interrupted (barge-in) or failed (apology)."""

    turn_id: int
    content: str
    spoken: str
    interrupted: bool
    failed: bool
    started_at: float
    ended_at: float
    llm_first_token_ms: float | None
    tts_first_audio_ms: float | None
    first_audio_at: float | None
    tokens_in: int
    tokens_out: int
    audio_out_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOutput:
    """An engine result, tagged by the sink wrapper with its owner's generation and stream."""

    generation: int
    stream: int
    kind: EngineKind
    result: EngineResult
