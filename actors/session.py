"""Session: the conversation. History, turn ids, and every fact that must be persisted.

Receives transcripts from the Transcriber, typed text, DTMF and `MediaConnected` from the edge
(through the supervisor), and `ReplyFinished` from the Responder. It puts persistence facts on
the outbox the moment they happen (`TurnRecorded`, `UsageRecorded`, `CallEventRecorded`,
`TranscriptUpdated`, `ResponseCompleted` / `ResponseInterrupted`), so a crash loses at most
the turn in flight, and checkpoints its state after every change.

Exactly once: an utterance whose audio ends at or before `heard_through` has been settled
already (a replay after a restart) and is ignored; a `ReplyFinished` for a turn at or before
`replied_through` likewise. A reply asked for and not finished is re-sent when the Responder
restarts (`SiblingStarted`). Hooks run on the dispatcher thread running this actor; a raise
fails this instance, and rest_for_one restarts every child after it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from actors.call_child import CallChild
from actors.engines import ChatMessage, ReplyRequest
from actors.messages import (
    CallEventRecorded,
    DtmfReceived,
    MediaConnected,
    ResponseCompleted,
    ResponseInterrupted,
    TextReceived,
    TranscriptUpdated,
    TurnRecorded,
    UsageRecorded,
)
from actors.tree_messages import (
    InterimTranscribed,
    Reply,
    ReplyFinished,
    SessionCheckpoint,
    SiblingStarted,
    Speak,
    UtteranceTranscribed,
)

if TYPE_CHECKING:
    from actors.call_context import ChildContext


class Session(CallChild):
    def __init__(self, ctx: ChildContext) -> None:
        super().__init__(ctx)
        checkpoint = ctx.checkpoint
        self.state = (
            checkpoint if isinstance(checkpoint, SessionCheckpoint) else SessionCheckpoint()
        )

    def handle(self, message: object) -> None:
        match message:
            case InterimTranscribed(text=text):
                turn_id = self._user_turn()
                self.emit(
                    TranscriptUpdated(call_id=self.call_id, turn_id=turn_id, text=text, final=False)
                )
            case UtteranceTranscribed():
                self._utterance(message)
            case TextReceived(text=text, received_at=at):
                if text.strip():
                    self._user_said(text.strip(), started_at=at, ended_at=at, speech_ended_at=None)
            case DtmfReceived(digit=digit):
                self._event("dtmf", digit=digit)
                # The LLM reads a keypad press as text, in the conversation's order.
                at = self.clock.monotonic()
                text = f"(keypad: {digit})"
                self._user_said(text, started_at=at, ended_at=at, speech_ended_at=None, role="dtmf")
            case MediaConnected():
                self._greet()
            case ReplyFinished():
                self._reply_finished(message)
            case SiblingStarted(child="responder"):
                if self.state.pending is not None:
                    self.log.info(
                        "= re-sending turn %d to the new responder", self.state.pending.turn_id
                    )
                    self.tell_peer("responder", self.state.pending)
            case _:
                super().handle(message)

    def _utterance(self, utterance: UtteranceTranscribed) -> None:
        if utterance.end_offset <= self.state.heard_through:
            self.log.info("= utterance up to %d already settled: ignored", utterance.end_offset)
            return
        self.state = replace(self.state, heard_through=utterance.end_offset)
        text = utterance.text.strip()
        if not text:
            self.checkpoint(self.state)
            return
        stt_ms = (utterance.transcribed_at - utterance.speech_ended_at) * 1000
        audio_in_s = (utterance.end_offset - utterance.start_offset) / 16_000
        self._user_said(
            text,
            started_at=utterance.speech_started_at,
            ended_at=utterance.speech_ended_at,
            speech_ended_at=utterance.speech_ended_at,
            stt_ms=stt_ms,
            audio_in_s=audio_in_s,
        )

    def _user_said(
        self,
        text: str,
        *,
        started_at: float,
        ended_at: float,
        speech_ended_at: float | None,
        stt_ms: float | None = None,
        audio_in_s: float = 0.0,
        role: Literal["user", "dtmf"] = "user",
    ) -> None:
        turn_id = self._user_turn()
        if role == "user":
            self.emit(
                TranscriptUpdated(call_id=self.call_id, turn_id=turn_id, text=text, final=True)
            )
        self.emit(
            TurnRecorded(
                call_id=self.call_id,
                turn_id=turn_id,
                role=role,
                text=text,
                started_at=started_at,
                ended_at=ended_at,
                stt_ms=stt_ms,
            )
        )
        if audio_in_s:
            self.emit(
                UsageRecorded(
                    call_id=self.call_id,
                    turn_id=turn_id,
                    tokens_in=0,
                    tokens_out=0,
                    audio_in_s=audio_in_s,
                    audio_out_s=0.0,
                )
            )
        history = (*self.state.history, ChatMessage(role="user", content=text))
        reply_id = self.state.next_turn_id
        agent = self.setup.agent
        request = ReplyRequest(
            call_id=self.call_id,
            turn_id=reply_id,
            system_prompt=agent.system_prompt,
            messages=history,
            language=agent.language,
        )
        pending = Reply(turn_id=reply_id, request=request, speech_ended_at=speech_ended_at)
        self.state = replace(
            self.state,
            history=history,
            next_turn_id=reply_id + 1,
            user_turn_id=None,
            pending=pending,
        )
        self.checkpoint(self.state)
        self.tell_peer("responder", pending)

    def _greet(self) -> None:
        greeting = self.setup.agent.greeting.strip()
        if self.state.greeted or not greeting:
            return
        turn_id = self.state.next_turn_id
        pending = Speak(turn_id=turn_id, text=greeting)
        self.state = replace(self.state, greeted=True, next_turn_id=turn_id + 1, pending=pending)
        self.checkpoint(self.state)
        self.tell_peer("responder", pending)

    def _reply_finished(self, done: ReplyFinished) -> None:
        if done.turn_id <= self.state.replied_through:
            return
        said = done.spoken if done.interrupted else done.content
        history = self.state.history
        if said:
            history = (*history, ChatMessage(role="assistant", content=said))
        pending = self.state.pending
        speech_ended_at = None
        if isinstance(pending, Reply) and pending.turn_id == done.turn_id:
            speech_ended_at = pending.speech_ended_at
        if pending is not None and pending.turn_id <= done.turn_id:
            pending = None
        self.state = replace(
            self.state, history=history, pending=pending, replied_through=done.turn_id
        )
        if done.interrupted:
            self.emit(
                ResponseInterrupted(call_id=self.call_id, turn_id=done.turn_id, spoken=done.spoken)
            )
        else:
            self.emit(
                ResponseCompleted(call_id=self.call_id, turn_id=done.turn_id, content=done.content)
            )
        v2v = None
        if speech_ended_at is not None and done.first_audio_at is not None:
            v2v = (done.first_audio_at - speech_ended_at) * 1000
        self.emit(
            TurnRecorded(
                call_id=self.call_id,
                turn_id=done.turn_id,
                role="assistant",
                text=said,
                started_at=done.started_at,
                ended_at=done.ended_at,
                interrupted=done.interrupted,
                llm_first_token_ms=done.llm_first_token_ms,
                tts_first_audio_ms=done.tts_first_audio_ms,
                voice_to_voice_ms=v2v,
            )
        )
        self.emit(
            UsageRecorded(
                call_id=self.call_id,
                turn_id=done.turn_id,
                tokens_in=done.tokens_in,
                tokens_out=done.tokens_out,
                audio_in_s=0.0,
                audio_out_s=done.audio_out_s,
            )
        )
        if done.failed:
            self._event("reply_failed", turn_id=done.turn_id)
        self.checkpoint(self.state)

    def _user_turn(self) -> int:
        if self.state.user_turn_id is None:
            self.state = replace(
                self.state,
                user_turn_id=self.state.next_turn_id,
                next_turn_id=self.state.next_turn_id + 1,
            )
            self.checkpoint(self.state)
        assert self.state.user_turn_id is not None
        return self.state.user_turn_id

    def _event(self, kind: str, **data: str | int | float | bool | None) -> None:
        self.emit(
            CallEventRecorded(call_id=self.call_id, kind=kind, data=data, at=self.clock.monotonic())
        )
