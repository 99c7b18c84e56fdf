"""AudioIngest: caller audio in; speech start/stop, end of turn and audio for the Transcriber out.

Receives `AudioReceived` (16 kHz mono PCM16, asserted, never resampled) straight from the
edge's `CallHandle`. For each frame it:

1. appends it to the call's `ReplayBuffer` (the audio since the last settled transcript),
   which gives the frame its offset;
2. forwards it to the Transcriber as `TranscribeAudio`, once that Transcriber instance has been
   fed the buffered audio it missed (`TranscriberStarted` -> `AudioReplayed`, in order);
3. runs the VAD over 512-sample windows (`TurnDetector`): after `min_speech_ms` of voice it
   emits `SpeechStarted` and tells the Responder (barge-in); after `end_of_turn_silence_ms` of
   silence it emits `SpeechStopped` and, with `turn_end="vad"`, records and sends `TurnEnded`.

Echo agent: when all three of the agent's engines are "echo" (`echoes`), every frame is also
put back out as `BotAudio` (turn `ECHO_TURN_ID`) right after it is ingested, so the caller hears
themself through the whole inbound path: the classic media-server echo test.

If it fails, the audio still queued in its mailbox goes back to the handle, which delivers it
to the next instance first (a stalled instance's queue is salvaged by the supervisor the same
way before it is abandoned). Its mailbox drops the oldest audio beyond
`supervision.audio_backlog_ms` (counted, and an `AudioDropped` fact). Checkpoint: the speech
state, on each change, for the snapshot; a new instance rebuilds it exactly from the buffered
audio of the open turn instead (see `started`). Hooks run on the dispatcher thread running
this actor; a raise fails this instance only (the supervisor restarts it).
"""

from __future__ import annotations

from queue import Empty
from types import TracebackType
from typing import TYPE_CHECKING

from actors.call_child import CallChild
from actors.errors import BadAudio
from actors.messages import SAMPLE_RATE, AudioReceived, BotAudio, SpeechStarted, SpeechStopped
from actors.tree_messages import (
    AudioReplayed,
    CallerStartedSpeaking,
    IngestCheckpoint,
    TranscribeAudio,
    TranscriberStarted,
    TurnEnded,
)
from actors.turn_detector import SpeechBegan, SpeechEnded, TurnDetector

if TYPE_CHECKING:
    from actors.agent import AgentConfig
    from actors.call_context import ChildContext

ECHO = "echo"
ECHO_TURN_ID = 0  # the Session numbers real turns from 1


def echoes(agent: AgentConfig) -> bool:
    """True for the echo agent: its speech, reply and voice engines are all `echo`."""
    return agent.stt_engine == agent.llm_engine == agent.tts_engine == ECHO


class AudioIngest(CallChild):
    def __init__(self, ctx: ChildContext) -> None:
        super().__init__(ctx)
        self._state = IngestCheckpoint()  # rebuilt from the replay buffer in started()
        self._feeding = -1  # the Transcriber generation that has had its replay
        self._turns: TurnDetector | None = None
        self._base_offset = 0
        self._echo = echoes(ctx.setup.agent)

    def started(self) -> None:
        """Rebuild the turn state by running the VAD over the buffered audio of the open turn.

        The state is a pure function of that audio, so a restarted instance decides exactly what
        its predecessor would have, including a turn end it crashed before recording.
        """
        replay = self.setup.replay
        self._turns = TurnDetector(self.setup.turns, self.setup.engines.vad())
        items = replay.since(0)
        ends = [i for i, item in enumerate(items) if isinstance(item, TurnEnded)]
        audio = [
            item
            for item in items[ends[-1] + 1 if ends else 0 :]
            if isinstance(item, TranscribeAudio)
        ]
        self._base_offset = audio[0].offset if audio else replay.next_offset
        for item in audio:
            for event in self._turns.feed(item.pcm, item.captured_at):
                if isinstance(event, SpeechBegan):
                    self._state = IngestCheckpoint(
                        in_speech=True,
                        speech_started_at=event.at,
                        speech_start_offset=self._base_offset + event.sample,
                    )
                else:
                    self._speech_ended(event, item.offset + len(item.pcm) // 2)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Hand the audio still queued for this instance back to the handle, then fail as usual."""
        self.setup.handle.salvage(self.actor_ref, self.drain_audio)
        super().on_failure(exception_type, exception_value, traceback)

    def drain_audio(self) -> list[AudioReceived]:
        """Pop every queued message; return the audio among them (any thread; used on failure)."""
        rescued: list[AudioReceived] = []
        while True:
            try:
                envelope = self.actor_inbox.get()
            except Empty:
                return rescued
            if isinstance(envelope.message, AudioReceived):
                rescued.append(envelope.message)

    def handle(self, message: object) -> None:
        match message:
            case AudioReceived():
                self._audio(message)
            case TranscriberStarted(generation=generation, from_offset=from_offset):
                items = self.setup.replay.since(from_offset)
                self.log.info(
                    "= replaying %d items after offset %d to transcriber gen %d",
                    len(items),
                    from_offset,
                    generation,
                )
                self._feeding = generation
                self.tell_peer("transcriber", AudioReplayed(items=items))
            case _:
                super().handle(message)

    def _audio(self, message: AudioReceived) -> None:
        if message.sample_rate != SAMPLE_RATE or len(message.pcm) % 2:
            raise BadAudio(f"{message.sample_rate} Hz, {len(message.pcm)} bytes: need 16 kHz PCM16")
        replay = self.setup.replay
        item = replay.append_audio(self.generation, message.pcm, message.captured_at)
        if item is None:
            return  # replaced meanwhile
        if self._echo:
            self.emit(
                BotAudio(
                    call_id=self.call_id,
                    turn_id=ECHO_TURN_ID,
                    pcm=message.pcm,
                    sample_rate=message.sample_rate,
                )
            )
        if self._feeding == self.setup.generations.current("transcriber"):
            self.tell_peer("transcriber", item)
        assert self._turns is not None
        for event in self._turns.feed(message.pcm, message.captured_at):
            if isinstance(event, SpeechBegan):
                self.emit(SpeechStarted(call_id=self.call_id, at=event.at))
                self.tell_peer("responder", CallerStartedSpeaking(at=event.at))
                self._save(
                    IngestCheckpoint(
                        in_speech=True,
                        speech_started_at=event.at,
                        speech_start_offset=self._base_offset + event.sample,
                    )
                )
            elif isinstance(event, SpeechEnded):
                self._speech_ended(event, replay.next_offset)

    def _speech_ended(self, event: SpeechEnded, offset: int) -> None:
        self.emit(SpeechStopped(call_id=self.call_id, at=event.ended_at))
        if self.setup.turns.turn_end == "vad":
            turn_end = TurnEnded(
                offset=offset,
                start_offset=self._state.speech_start_offset,
                speech_started_at=event.started_at,
                speech_ended_at=event.ended_at,
            )
            stored = self.setup.replay.append_turn_end(self.generation, turn_end)
            if stored and self._feeding == self.setup.generations.current("transcriber"):
                self.tell_peer("transcriber", turn_end)
        self._save(IngestCheckpoint())

    def _save(self, state: IngestCheckpoint) -> None:
        self._state = state
        self.checkpoint(state)
