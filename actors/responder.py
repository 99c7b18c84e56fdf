"""Responder: the assistant's voice. LLM tokens -> text deltas, sentences -> TTS -> bot audio.

For a `Reply` it opens an LLM stream and a TTS stream; every token goes out as `ResponseDelta`,
and each sentence goes to TTS the moment it is complete, so first audio never waits for the
whole reply. `Speak` (the greeting) skips the LLM. Audio chunks go out as `BotAudio` at the
engine's rate. When both streams are done it tells the Session `ReplyFinished` with the turn's
latencies (LLM first token, TTS first audio, first audio handed to the outbox) and usage.

A reply stays active until its audio has played out: until `PlaybackProgressed` reaches the
audio's duration, or the time the audio takes from its first chunk (`PlaybackDue`, from the
shared timer), whichever comes first.

Barge-in: `CallerStartedSpeaking` (or a newer reply) while a reply is active cancels both
streams, puts `FlushAudio`, and finishes the turn as interrupted with the text actually
played, from the edge's `PlaybackProgressed` and each sentence's audio duration.

Failure: an LLM failure is retried once on a fresh stream; after that (or after a partial
reply) the caller hears `APOLOGY` if TTS works, and the turn is marked failed. A TTS failure
leaves the reply text-only. Checkpoint: the last finished turn and the turn in flight; a
restarted Responder flushes the old partial audio when the Session re-sends that turn. Hooks
run on the dispatcher thread running this actor; a raise fails this instance only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actors.call_child import CallChild
from actors.engines import (
    EngineFailed,
    EngineStream,
    ReplyCompleted,
    ReplyRequest,
    SpeechChunk,
    SpeechFinished,
    TokenReceived,
)
from actors.messages import BotAudio, FlushAudio, PlaybackProgressed, ResponseDelta
from actors.sentences import SentenceSplitter, SpokenText
from actors.telling import tell_quietly
from actors.tree_messages import (
    CallerStartedSpeaking,
    EngineOutput,
    PlaybackDue,
    Reply,
    ReplyFinished,
    ResponderCheckpoint,
    Speak,
)

if TYPE_CHECKING:
    from actors.call_context import ChildContext
    from actors.engines import EngineResult

APOLOGY = "Sorry, I can't answer that right now. Please try again in a moment."
LLM_ATTEMPTS = 2


@dataclass(slots=True)
class _Active:
    """The reply in progress (owned by the Responder's thread)."""

    turn_id: int
    request: ReplyRequest | None
    started_at: float
    tts: tuple[int, EngineStream[Any]] | None = None
    llm: tuple[int, EngineStream[Any]] | None = None
    splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    spoken: SpokenText = field(default_factory=SpokenText)
    content: str = ""
    attempts: int = 0
    llm_done: bool = False
    tts_done: bool = False
    failed: bool = False
    requested_at: float = 0.0
    first_token_at: float | None = None
    tts_sent_at: float | None = None
    first_audio_at: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    audio_out_s: float = 0.0
    played_ms: float = 0.0
    playing: bool = False  # everything synthesized; the edge is still playing it out


class Responder(CallChild):
    def __init__(self, ctx: ChildContext) -> None:
        super().__init__(ctx)
        checkpoint = ctx.checkpoint
        self._state = (
            checkpoint if isinstance(checkpoint, ResponderCheckpoint) else ResponderCheckpoint()
        )
        self._active: _Active | None = None

    def stopping(self) -> None:
        if self._active is not None:
            self._close_streams(self._active, cancel=True)

    def handle(self, message: object) -> None:
        match message:
            case Reply(turn_id=turn_id, request=request):
                self._begin(turn_id, request=request, text=None)
            case Speak(turn_id=turn_id, text=text):
                self._begin(turn_id, request=None, text=text)
            case CallerStartedSpeaking():
                if self._active is not None:
                    self.log.info("= barge-in during turn %d", self._active.turn_id)
                    self._interrupt(self._active)
            case PlaybackProgressed(turn_id=turn_id, played_ms=played_ms):
                active = self._active
                if active is not None and active.turn_id == turn_id:
                    active.played_ms = played_ms
                    if active.playing and played_ms >= active.audio_out_s * 1000 - 1:
                        self._finish(active, interrupted=False)
            case PlaybackDue(turn_id=turn_id):
                active = self._active
                if active is not None and active.turn_id == turn_id and active.playing:
                    self._finish(active, interrupted=False)
            case _:
                super().handle(message)

    def handle_engine(self, output: EngineOutput) -> None:
        active = self._active
        if active is None:
            return
        if active.llm is not None and output.stream == active.llm[0]:
            self._llm_result(active, output.result)
        elif active.tts is not None and output.stream == active.tts[0]:
            self._tts_result(active, output.result)

    # -- a reply's life -----------------------------------------------------------------------

    def _begin(self, turn_id: int, *, request: ReplyRequest | None, text: str | None) -> None:
        if turn_id <= self._state.finished_through:
            last = self._state.last_finished
            if last is not None and last.turn_id == turn_id:
                self.tell_peer("session", last)  # a restarted Session may have lost it
            return
        if self._active is not None:
            if self._active.turn_id == turn_id:
                return
            self._interrupt(self._active)
        if self._state.redo_turn == turn_id:
            self.emit(
                FlushAudio(call_id=self.call_id, turn_id=turn_id)
            )  # a restart's partial audio
        now = self.clock.monotonic()
        active = self._active = _Active(turn_id=turn_id, request=request, started_at=now)
        self._save(
            ResponderCheckpoint(
                finished_through=self._state.finished_through,
                redo_turn=turn_id,
                last_finished=self._state.last_finished,
            )
        )
        active.tts = self.open_stream("tts", self.setup.engines.tts)
        if request is not None:
            self._ask_llm(active)
        else:
            assert text is not None
            self._say_whole(active, text)

    def _ask_llm(self, active: _Active) -> None:
        active.attempts += 1
        active.requested_at = self.clock.monotonic()
        active.llm = self.open_stream("llm", self.setup.engines.llm)
        assert active.request is not None
        active.llm[1].send(active.request)
        self.ctx.watch.waiting(active.llm[0], active.requested_at)

    def _say_whole(self, active: _Active, text: str) -> None:
        active.content = text
        self.emit(ResponseDelta(call_id=self.call_id, turn_id=active.turn_id, text=text))
        for sentence in active.splitter.feed(text):
            self._speak(active, sentence)
        self._llm_finished(active)

    def _llm_result(self, active: _Active, result: EngineResult) -> None:
        match result:
            case TokenReceived(text=text):
                if active.first_token_at is None:
                    active.first_token_at = self.clock.monotonic()
                active.content += text
                self.emit(ResponseDelta(call_id=self.call_id, turn_id=active.turn_id, text=text))
                for sentence in active.splitter.feed(text):
                    self._speak(active, sentence)
            case ReplyCompleted(tokens_in=tokens_in, tokens_out=tokens_out):
                active.tokens_in += tokens_in
                active.tokens_out += tokens_out
                self._llm_finished(active)
            case EngineFailed(error=error, gave_up=True):
                self.log.warning("llm failed (attempt %d): %s", active.attempts, error)
                assert active.llm is not None
                self.close_stream(*active.llm, cancel=True)
                active.llm = None
                if not active.content and active.attempts < LLM_ATTEMPTS:
                    self._ask_llm(active)
                    return
                active.failed = True
                if not active.content:
                    self._say_whole(active, APOLOGY)
                    return
                self._llm_finished(active)
            case _:
                pass  # progress

    def _llm_finished(self, active: _Active) -> None:
        if active.llm is not None:
            self.close_stream(*active.llm)
            active.llm = None
        active.llm_done = True
        rest = active.splitter.flush()
        if rest:
            self._speak(active, rest)
        if active.tts is not None:
            active.tts[1].finalize()
            self.ctx.watch.waiting(active.tts[0], self.clock.monotonic())
        self._maybe_finish(active)

    def _speak(self, active: _Active, sentence: str) -> None:
        if active.tts is None:
            return
        index = active.spoken.sent(sentence)
        assert index == len(active.spoken.sentences) - 1
        if active.tts_sent_at is None:
            active.tts_sent_at = self.clock.monotonic()
        active.tts[1].send(sentence)

    def _tts_result(self, active: _Active, result: EngineResult) -> None:
        match result:
            case SpeechChunk(pcm=pcm, sample_rate=rate, text_index=index):
                if active.first_audio_at is None:
                    active.first_audio_at = self.clock.monotonic()
                self.emit(
                    BotAudio(
                        call_id=self.call_id, turn_id=active.turn_id, pcm=pcm, sample_rate=rate
                    )
                )
                ms = len(pcm) * 500.0 / rate
                if 0 <= index < len(active.spoken.audio_ms):
                    active.spoken.voiced(index, ms)
                active.audio_out_s += ms / 1000
            case SpeechFinished():
                active.tts_done = True
                self._maybe_finish(active)
            case EngineFailed(error=error, gave_up=True):
                self.log.warning("tts failed: %s; the reply goes on as text", error)
                active.tts_done = True
                self._maybe_finish(active)
            case _:
                pass

    def _maybe_finish(self, active: _Active) -> None:
        """Both streams done: the turn ends when its audio has played out (barge-in until then)."""
        if not (active.llm_done and active.tts_done) or active.playing:
            return
        self._close_streams(active, cancel=False)
        audio_ms = active.audio_out_s * 1000
        if active.first_audio_at is None or active.played_ms >= audio_ms - 1:
            self._finish(active, interrupted=False)
            return
        # The edge plays in real time from the first chunk; PlaybackProgressed may end it sooner.
        active.playing = True
        due_in = active.first_audio_at + active.audio_out_s - self.clock.monotonic()
        ref, turn_id = self.actor_ref, active.turn_id
        self.setup.timer.call_later(
            max(0.0, due_in), lambda: tell_quietly(ref, PlaybackDue(turn_id=turn_id))
        )

    def _interrupt(self, active: _Active) -> None:
        self.emit(FlushAudio(call_id=self.call_id, turn_id=active.turn_id))
        self._finish(active, interrupted=True)

    def _finish(self, active: _Active, *, interrupted: bool) -> None:
        self._close_streams(active, cancel=interrupted)
        now = self.clock.monotonic()
        first_token_ms = None
        if active.first_token_at is not None:
            first_token_ms = (active.first_token_at - active.requested_at) * 1000
        first_audio_ms = None
        if active.first_audio_at is not None and active.tts_sent_at is not None:
            first_audio_ms = (active.first_audio_at - active.tts_sent_at) * 1000
        finished = ReplyFinished(
            turn_id=active.turn_id,
            content=active.content,
            spoken=active.spoken.spoken(active.played_ms) if interrupted else active.content,
            interrupted=interrupted,
            failed=active.failed,
            started_at=active.started_at,
            ended_at=now,
            llm_first_token_ms=first_token_ms,
            tts_first_audio_ms=first_audio_ms,
            first_audio_at=active.first_audio_at,
            tokens_in=active.tokens_in,
            tokens_out=active.tokens_out,
            audio_out_s=active.audio_out_s,
        )
        self.tell_peer("session", finished)
        self._active = None
        self._save(ResponderCheckpoint(finished_through=active.turn_id, last_finished=finished))

    def _close_streams(self, active: _Active, *, cancel: bool) -> None:
        for opened in (active.llm, active.tts):
            if opened is not None:
                self.close_stream(*opened, cancel=cancel)
        active.llm = active.tts = None

    def _save(self, state: ResponderCheckpoint) -> None:
        self._state = state
        self.checkpoint(state)
