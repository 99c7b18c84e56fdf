"""What the store returns and accepts: frozen, slotted, keyword-only dataclasses.

Timestamps are unix seconds as floats (`time.time()`); durations carry their unit in the name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypedDict

Transport = Literal["webrtc", "whip", "twilio", "exotel", "text"]
TurnRole = Literal["user", "assistant", "dtmf"]
TurnEnd = Literal["vad", "provider"]
CallStatus = Literal["active", "ended"]

TRANSPORTS: frozenset[str] = frozenset(("webrtc", "whip", "twilio", "exotel", "text"))
TURN_ROLES: frozenset[str] = frozenset(("user", "assistant", "dtmf"))
TURN_ENDS: frozenset[str] = frozenset(("vad", "provider"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Company:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """An API key's public record; the secret itself is never stored, only its hash."""

    id: str
    company_id: str
    prefix: str  # public, shown in listings so a key can be recognised and revoked
    label: str
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaqRule:
    """Answer `answer` when the caller's words match.

    `match` is either a regular expression (a string, matched case-insensitively) or a tuple of
    keywords (any of them present in the utterance matches).
    """

    match: str | tuple[str, ...]
    answer: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VadOverrides:
    """Per-agent replacements for `config.settings.VadSettings`; None keeps the server default."""

    threshold: float | None = None
    min_speech_ms: int | None = None
    end_of_turn_silence_ms: int | None = None
    turn_end: TurnEnd | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpec:
    """The editable part of an agent. Engines name the implementation in `mediaserver.engines`."""

    name: str
    system_prompt: str = ""
    greeting: str = ""
    language: str = "en"
    voice: str = ""  # empty: the TTS engine's default voice
    stt_engine: str = "offline"
    llm_engine: str = "offline"
    tts_engine: str = "offline"
    stt_fallback: str | None = None
    llm_fallback: str | None = None
    tts_fallback: str | None = None
    faq: tuple[FaqRule, ...] = ()
    vad: VadOverrides = VadOverrides()
    recording: bool = False


class AgentChanges(TypedDict, total=False):
    """Keyword arguments of `Store.update_agent`: any subset of `AgentSpec`'s fields."""

    name: str
    system_prompt: str
    greeting: str
    language: str
    voice: str
    stt_engine: str
    llm_engine: str
    tts_engine: str
    stt_fallback: str | None
    llm_fallback: str | None
    tts_fallback: str | None
    faq: tuple[FaqRule, ...]
    vad: VadOverrides
    recording: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Agent:
    id: str
    company_id: str
    spec: AgentSpec
    is_default: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PhoneNumber:
    number: str  # E.164, e.g. "+14155550100"
    company_id: str
    agent_id: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Conversation:
    """A thread of calls between one peer and one agent."""

    id: str
    company_id: str
    agent_id: str
    peer_id: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    id: str
    company_id: str
    conversation_id: str | None
    agent_id: str  # no foreign key: the call record outlives a deleted agent
    transport: Transport
    peer_id: str
    started_at: float
    ended_at: float | None
    end_reason: str | None  # one of `actors.messages.END_REASONS`
    recording_path: str | None
    owner_id: str | None = None  # the process that ran it; None for calls from before v4

    @property
    def active(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEvent:
    """Something that happened during a call; `data` must be JSON-serialisable."""

    kind: str
    data: Mapping[str, object] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnRecord:
    """One turn of a call. `seq` numbers turns within the call; latencies are milliseconds."""

    seq: int
    role: TurnRole
    text: str
    started_at: float
    ended_at: float
    interrupted: bool = False
    stt_ms: float | None = None
    llm_first_token_ms: float | None = None
    tts_first_audio_ms: float | None = None
    voice_to_voice_ms: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What one provider consumed for a call."""

    provider: str
    tokens_in: int = 0
    tokens_out: int = 0
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Webhook:
    """Where a company's call events are POSTed, and the secret they are signed with."""

    company_id: str
    url: str
    secret: str
    created_at: float
    updated_at: float


WebhookState = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookDelivery:
    """One event in the durable webhook outbox; `body` is the exact JSON that is signed."""

    id: int
    event_id: str
    company_id: str
    event: str
    call_id: str | None
    url: str
    body: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    delivered_at: float | None
    failed_at: float | None
    claimed_by: str | None = None  # who holds the delivery's claim, or held the last one
    claim_expires_at: float | None = None  # None: nobody holds it now

    @property
    def state(self) -> WebhookState:
        if self.delivered_at is not None:
            return "delivered"
        return "failed" if self.failed_at is not None else "pending"


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """A process that owns calls: a worker of a node, or a whole single-process server.

    The row lives while the process does: it writes `last_seen` every second, and whoever finds
    it dead ends its open calls and deletes the row in one transaction (decision 0080).
    """

    id: str  # chosen by the process, unique per run
    node_id: str  # the node that started it; a single-process server is its own node
    worker_id: int  # 0 for a single-process server
    host: str
    pid: int
    started_at: float
    last_seen: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DayUsage:
    """What a company used on one UTC day (calls counted on the day they started)."""

    day: str  # YYYY-MM-DD
    calls: int
    minutes: float  # of the calls that have ended
    voice_to_voice_p50_ms: float | None
    voice_to_voice_p95_ms: float | None
    interruptions: int
    tokens_in: int
    tokens_out: int
