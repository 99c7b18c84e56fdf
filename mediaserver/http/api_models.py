"""The tenant API's request and response bodies (pydantic: untrusted JSON at a trust boundary).

Request bodies forbid unknown fields, so a typo is a 422 naming the field instead of a silent
no-op. Responses are built from the store's dataclasses by the `from_*` constructors; times are
unix seconds, durations carry their unit in the name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mediaserver.store import (
    LLM_ENGINES,
    STT_ENGINES,
    TTS_ENGINES,
    Agent,
    Call,
    CallEvent,
    CallSummary,
    DayUsage,
    FaqRule,
    Percentiles,
    PhoneNumber,
    TurnRecord,
    VadOverrides,
    Webhook,
    WebhookDelivery,
)

E164 = r"^\+[1-9][0-9]{7,14}$"


def _engine(kinds: frozenset[str], default: str | None) -> Any:
    # An enum in the schema only: the store checks the value and names the field (422).
    extra: dict[str, Any] = {"enum": sorted(kinds)}
    return Field(default, json_schema_extra=extra)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """An error: `detail` says what went wrong (validation errors list each field)."""

    detail: str | list[dict[str, Any]]


# -- agents --------------------------------------------------------------------------------------


class FaqRuleBody(Request):
    match: str | list[str] = Field(description="A regex, or keywords of which any one matches")
    answer: str = Field(min_length=1)


class VadBody(Request):
    threshold: float | None = Field(None, gt=0, lt=1)
    min_speech_ms: int | None = Field(None, ge=0)
    end_of_turn_silence_ms: int | None = Field(None, ge=0)
    turn_end: Literal["vad", "provider"] | None = None


class AgentCreate(Request):
    name: str = Field(min_length=1, max_length=200)
    system_prompt: str = ""
    greeting: str = ""
    language: str = Field("en", min_length=1, max_length=35)
    voice: str = ""
    stt_engine: str = _engine(STT_ENGINES, "offline")
    llm_engine: str = _engine(LLM_ENGINES, "offline")
    tts_engine: str = _engine(TTS_ENGINES, "offline")
    stt_fallback: str | None = _engine(STT_ENGINES, None)
    llm_fallback: str | None = _engine(LLM_ENGINES, None)
    tts_fallback: str | None = _engine(TTS_ENGINES, None)
    faq: list[FaqRuleBody] = []
    vad: VadBody = VadBody()
    recording: bool = Field(False, description="Record every call of this agent (stereo WAV)")
    is_default: bool = Field(False, description="Make it the company's default agent")


class AgentUpdate(Request):
    """Any subset of an agent's fields; the ones left out keep their value."""

    name: str | None = Field(None, min_length=1, max_length=200)
    system_prompt: str | None = None
    greeting: str | None = None
    language: str | None = Field(None, min_length=1, max_length=35)
    voice: str | None = None
    stt_engine: str | None = _engine(STT_ENGINES, None)
    llm_engine: str | None = _engine(LLM_ENGINES, None)
    tts_engine: str | None = _engine(TTS_ENGINES, None)
    stt_fallback: str | None = _engine(STT_ENGINES, None)
    llm_fallback: str | None = _engine(LLM_ENGINES, None)
    tts_fallback: str | None = _engine(TTS_ENGINES, None)
    faq: list[FaqRuleBody] | None = None
    vad: VadBody | None = None
    recording: bool | None = None
    is_default: Literal[True] | None = Field(None, description="true: make it the default")


def faq_rules(rules: list[FaqRuleBody]) -> tuple[FaqRule, ...]:
    return tuple(
        FaqRule(match=tuple(r.match) if isinstance(r.match, list) else r.match, answer=r.answer)
        for r in rules
    )


def vad_overrides(vad: VadBody) -> VadOverrides:
    return VadOverrides(**vad.model_dump())


class AgentOut(BaseModel):
    id: str
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
    faq: list[dict[str, Any]]
    vad: dict[str, Any]
    recording: bool
    is_default: bool
    created_at: float
    updated_at: float

    @classmethod
    def from_agent(cls, agent: Agent) -> AgentOut:
        spec = agent.spec
        return cls(
            id=agent.id,
            name=spec.name,
            system_prompt=spec.system_prompt,
            greeting=spec.greeting,
            language=spec.language,
            voice=spec.voice,
            stt_engine=spec.stt_engine,
            llm_engine=spec.llm_engine,
            tts_engine=spec.tts_engine,
            stt_fallback=spec.stt_fallback,
            llm_fallback=spec.llm_fallback,
            tts_fallback=spec.tts_fallback,
            faq=[
                {
                    "match": list(r.match) if isinstance(r.match, tuple) else r.match,
                    "answer": r.answer,
                }
                for r in spec.faq
            ],
            vad={
                name: getattr(spec.vad, name)
                for name in ("threshold", "min_speech_ms", "end_of_turn_silence_ms", "turn_end")
                if getattr(spec.vad, name) is not None
            },
            recording=spec.recording,
            is_default=agent.is_default,
            created_at=agent.created_at,
            updated_at=agent.updated_at,
        )


# -- numbers -------------------------------------------------------------------------------------


class NumberCreate(Request):
    number: str = Field(pattern=E164, description="E.164, e.g. +14155550100")
    agent_id: str | None = Field(None, description="Default: the company's default agent")


class NumberOut(BaseModel):
    number: str
    agent_id: str
    created_at: float

    @classmethod
    def from_number(cls, number: PhoneNumber) -> NumberOut:
        return cls(number=number.number, agent_id=number.agent_id, created_at=number.created_at)


# -- calls ---------------------------------------------------------------------------------------


class CallOut(BaseModel):
    id: str
    conversation_id: str | None
    agent_id: str
    transport: str
    peer_id: str
    status: Literal["active", "ended"]
    started_at: float
    ended_at: float | None
    end_reason: str | None
    duration_s: float | None
    recorded: bool = Field(description="A recording of the call exists on the server")

    @classmethod
    def from_call(cls, call: Call) -> CallOut:
        return cls(
            id=call.id,
            conversation_id=call.conversation_id,
            agent_id=call.agent_id,
            transport=call.transport,
            peer_id=call.peer_id,
            status="active" if call.active else "ended",
            started_at=call.started_at,
            ended_at=call.ended_at,
            end_reason=call.end_reason,
            duration_s=None if call.ended_at is None else call.ended_at - call.started_at,
            recorded=call.recording_path is not None,
        )


class CallList(BaseModel):
    items: list[CallOut]
    total: int = Field(description="Calls matching the filters, over all pages")
    limit: int
    offset: int


class TurnOut(BaseModel):
    seq: int
    role: str
    text: str
    started_at: float
    ended_at: float
    interrupted: bool
    stt_ms: float | None
    llm_first_token_ms: float | None
    tts_first_audio_ms: float | None
    voice_to_voice_ms: float | None

    @classmethod
    def from_turn(cls, turn: TurnRecord) -> TurnOut:
        return cls(
            seq=turn.seq,
            role=turn.role,
            text=turn.text,
            started_at=turn.started_at,
            ended_at=turn.ended_at,
            interrupted=turn.interrupted,
            stt_ms=turn.stt_ms,
            llm_first_token_ms=turn.llm_first_token_ms,
            tts_first_audio_ms=turn.tts_first_audio_ms,
            voice_to_voice_ms=turn.voice_to_voice_ms,
        )


class EventOut(BaseModel):
    at: float
    kind: str
    data: dict[str, Any]

    @classmethod
    def from_event(cls, event: CallEvent) -> EventOut:
        return cls(at=event.at, kind=event.kind, data=dict(event.data))


class LatencyOut(BaseModel):
    count: int
    p50: float | None
    p95: float | None
    max: float | None

    @classmethod
    def from_percentiles(cls, p: Percentiles) -> LatencyOut:
        return cls(count=p.count, p50=p.p50, p95=p.p95, max=p.max)


class CallMetrics(BaseModel):
    duration_s: float | None
    turn_count: int
    user_turns: int
    assistant_turns: int
    interruptions: int
    latency_ms: dict[str, LatencyOut] = Field(
        description="stt_ms, llm_first_token_ms, tts_first_audio_ms, voice_to_voice_ms"
    )
    tokens_in: int
    tokens_out: int
    audio_in_s: float
    audio_out_s: float

    @classmethod
    def from_summary(cls, summary: CallSummary) -> CallMetrics:
        return cls(
            duration_s=summary.duration_s,
            turn_count=summary.turns,
            user_turns=summary.user_turns,
            assistant_turns=summary.assistant_turns,
            interruptions=summary.interruptions,
            latency_ms={
                name: LatencyOut.from_percentiles(p) for name, p in summary.latency_ms.items()
            },
            tokens_in=summary.tokens_in,
            tokens_out=summary.tokens_out,
            audio_in_s=summary.audio_in_s,
            audio_out_s=summary.audio_out_s,
        )


class CallDetail(CallOut):
    transcript: list[TurnOut]
    events: list[EventOut]
    metrics: CallMetrics


class ContextMessage(BaseModel):
    role: str
    content: str
    call_id: str
    seq: int
    interrupted: bool


class ConversationContext(BaseModel):
    """What the agent knows of a conversation: every turn of its calls, oldest first."""

    id: str
    agent_id: str
    peer_id: str
    created_at: float
    call_ids: list[str]
    messages: list[ContextMessage]


# -- usage ---------------------------------------------------------------------------------------


class UsageDay(BaseModel):
    day: str = Field(description="UTC day, YYYY-MM-DD; calls count on the day they started")
    calls: int
    minutes: float = Field(description="Minutes of the calls that have ended")
    voice_to_voice_p50_ms: float | None
    voice_to_voice_p95_ms: float | None
    interruptions: int
    tokens_in: int
    tokens_out: int

    @classmethod
    def from_day(cls, day: DayUsage) -> UsageDay:
        return cls(
            day=day.day,
            calls=day.calls,
            minutes=day.minutes,
            voice_to_voice_p50_ms=day.voice_to_voice_p50_ms,
            voice_to_voice_p95_ms=day.voice_to_voice_p95_ms,
            interruptions=day.interruptions,
            tokens_in=day.tokens_in,
            tokens_out=day.tokens_out,
        )


class UsageReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    days: list[UsageDay] = Field(description="Days with at least one call, oldest first")


# -- webhook -------------------------------------------------------------------------------------


class WebhookUpdate(Request):
    url: str = Field(min_length=1, max_length=2048, description="http:// or https:// URL")
    secret: str | None = Field(
        None,
        min_length=16,
        description="Signing secret; left out, the server makes one and returns it once",
    )


class DeliveryOut(BaseModel):
    event_id: str
    event: str
    call_id: str | None
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None

    @classmethod
    def from_delivery(cls, delivery: WebhookDelivery) -> DeliveryOut:
        return cls(
            event_id=delivery.event_id,
            event=delivery.event,
            call_id=delivery.call_id,
            state=delivery.state,
            attempts=delivery.attempts,
            created_at=delivery.created_at,
            next_attempt_at=delivery.next_attempt_at,
            last_error=delivery.last_error,
        )


class WebhookOut(BaseModel):
    url: str
    secret: str | None = Field(None, description="Only in the answer to the PUT that set it")
    created_at: float
    updated_at: float
    recent_deliveries: list[DeliveryOut] = []

    @classmethod
    def from_webhook(
        cls,
        hook: Webhook,
        *,
        show_secret: bool = False,
        deliveries: list[WebhookDelivery] | None = None,
    ) -> WebhookOut:
        return cls(
            url=hook.url,
            secret=hook.secret if show_secret else None,
            created_at=hook.created_at,
            updated_at=hook.updated_at,
            recent_deliveries=[DeliveryOut.from_delivery(d) for d in deliveries or []],
        )
