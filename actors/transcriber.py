"""Transcriber: drives one STT stream; interim and final transcripts out to the Session.

Opens the call's STT engine when it starts and feeds it `TranscribeAudio` in offset order
(replayed audio first; anything at an offset it has already sent is skipped, so a replay
overlapping live audio is never transcribed twice). On `TurnEnded` it calls `finalize()` and
waits for the engine's `finalized` result; the final texts since the previous turn then go to
the Session as one `UtteranceTranscribed` with the turn's audio offsets. With
`turn_end="provider"`, the engine's `end_of_turn` result ends the utterance instead.

Interim text goes to the Session as `InterimTranscribed`. `EngineFailed(gave_up=True)` raises
`EngineGaveUp`: the instance fails, the supervisor starts a fresh one with a fresh stream, and
AudioIngest replays the audio the Session has not settled yet. Hooks run on the dispatcher
thread running this actor; a raise fails this instance only.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from actors.call_child import CallChild
from actors.engines import EngineFailed, EngineStream, TranscriptReceived
from actors.errors import EngineGaveUp
from actors.tree_messages import (
    AudioReplayed,
    EngineOutput,
    InterimTranscribed,
    TranscribeAudio,
    TranscriberCheckpoint,
    TurnEnded,
    UtteranceTranscribed,
)

if TYPE_CHECKING:
    from actors.call_context import ChildContext


class Transcriber(CallChild):
    def __init__(self, ctx: ChildContext) -> None:
        super().__init__(ctx)
        checkpoint = ctx.checkpoint
        self._state = (
            checkpoint if isinstance(checkpoint, TranscriberCheckpoint) else TranscriberCheckpoint()
        )
        self._stream: EngineStream[Any] | None = None
        self._stream_no = 0
        self._next_offset: int | None = None  # the first offset not yet sent
        self._last_captured_end = 0.0
        self._utterance_start: int | None = None
        self._turn_ends: deque[TurnEnded] = deque()
        self._finals: list[str] = []

    def started(self) -> None:
        self._stream_no, self._stream = self.open_stream("stt", self.setup.engines.stt)

    def stopping(self) -> None:
        if self._stream is not None:
            self.close_stream(self._stream_no, self._stream)

    def handle(self, message: object) -> None:
        match message:
            case TranscribeAudio():
                self._send(message)
            case TurnEnded():
                self._turn_ended(message)
            case AudioReplayed(items=items):
                for item in items:
                    if isinstance(item, TranscribeAudio):
                        self._send(item)
                    else:
                        self._turn_ended(item)
            case _:
                super().handle(message)

    def handle_engine(self, output: EngineOutput) -> None:
        match output.result:
            case TranscriptReceived(text=text, final=False):
                if text:
                    self.tell_peer(
                        "session", InterimTranscribed(text=" ".join([*self._finals, text]))
                    )
            case TranscriptReceived(text=text, finalized=finalized, end_of_turn=end_of_turn):
                if text:
                    self._finals.append(text)
                if finalized and self._turn_ends:
                    self._deliver(self._turn_ends.popleft())
                    if not self._turn_ends:
                        self.ctx.watch.settled(self._stream_no)
                elif end_of_turn and self.setup.turns.turn_end == "provider":
                    self._deliver_provider_turn()
            case EngineFailed(error=error, gave_up=True):
                raise EngineGaveUp(f"stt: {error}")
            case EngineFailed(error=error):
                self.log.warning("stt engine reported: %s", error)
            case _:
                pass  # progress

    def _send(self, item: TranscribeAudio) -> None:
        if self._next_offset is not None and item.offset < self._next_offset:
            return  # already sent (replay overlapping live audio)
        assert self._stream is not None
        if self._utterance_start is None:
            self._utterance_start = item.offset
        self._stream.send(item.pcm)
        self._next_offset = item.offset + len(item.pcm) // 2
        self._last_captured_end = item.captured_at + len(item.pcm) / 32_000

    def _turn_ended(self, turn_end: TurnEnded) -> None:
        if self._next_offset is None:
            return  # no audio reached this stream: nothing to settle
        if any(t.offset >= turn_end.offset for t in self._turn_ends):
            return
        assert self._stream is not None
        self._turn_ends.append(turn_end)
        self._stream.finalize()
        self.ctx.watch.waiting(self._stream_no, self.clock.monotonic())

    def _deliver(self, turn_end: TurnEnded) -> None:
        self._utter(
            UtteranceTranscribed(
                text=" ".join(self._finals),
                start_offset=turn_end.start_offset,
                end_offset=turn_end.offset,
                speech_started_at=turn_end.speech_started_at,
                speech_ended_at=turn_end.speech_ended_at,
                transcribed_at=self.clock.monotonic(),
            )
        )

    def _deliver_provider_turn(self) -> None:
        end = self._next_offset or 0
        self._utter(
            UtteranceTranscribed(
                text=" ".join(self._finals),
                start_offset=self._utterance_start or 0,
                end_offset=end,
                speech_started_at=self._last_captured_end,
                speech_ended_at=self._last_captured_end,
                transcribed_at=self.clock.monotonic(),
            )
        )

    def _utter(self, utterance: UtteranceTranscribed) -> None:
        self._finals = []
        self._utterance_start = None
        self.tell_peer("session", utterance)
        self._state = TranscriberCheckpoint(utterances=self._state.utterances + 1)
        self.checkpoint(self._state)
