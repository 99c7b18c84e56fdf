"""LiveCall: one admitted call as the edge sees it, whatever carries it (WebRTC, WHIP, telephony).

    transport --audio_received, text_received, media_connected, playback_progressed--> LiveCall
    LiveCall --CallHandle (tell, never ask)--> the call tree
    the tree --CallOutbox--> LiveCall._pump --> Transport (events, audio, flush)
                                           --> CallRecorder (facts, the end reason)

The pump is the only reader of the call's outbox. It forwards the caller-facing facts to the
transport, persistence facts to the recorder, and finishes the call on `CallEnded`.

Ending, exactly once on every path: the edge asks with `hang_up(reason)` (bye, socket closed,
ICE failure, WHIP DELETE, max duration, idle, replacement), which tells the tree `HangUp`; the
tree itself ends with `escalated` or `shutdown`. Either way the tree answers with one
`CallEnded(reason)`, and `_finish` then persists the reason, closes the transport (which says
`ended` if it still can) and sets `finished`. A tree that does not answer within
`HANGUP_GRACE_S` is finished anyway with the edge's reason, so no call outlives its caller.
Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from actors.agent import AgentConfig
from actors.call_handle import CallHandle
from actors.messages import (
    AudioDropped,
    AudioReceived,
    BotAudio,
    CallAdmitted,
    CallEnded,
    CallEventRecorded,
    CallRefused,
    ChildRestarted,
    DtmfReceived,
    EndReason,
    FlushAudio,
    HangUp,
    MediaConnected,
    Outbound,
    PlaybackProgressed,
    RefusalReason,
    ResponseCompleted,
    ResponseDelta,
    ResponseInterrupted,
    SpeechStarted,
    SpeechStopped,
    TextReceived,
    TranscriptUpdated,
    TurnRecorded,
    UsageRecorded,
)
from config.settings import LimitsSettings
from mediaserver.calls.observers import NO_OBSERVER, CallObserver
from mediaserver.calls.outbox import CallOutbox
from mediaserver.calls.recorder import CallRecorder
from mediaserver.logs import CallLogger

logger = logging.getLogger(__name__)

HANGUP_GRACE_S = 5.0  # how long the tree may take to answer HangUp with CallEnded
SAMPLE_RATE = 16_000

CallEvent = (
    SpeechStarted
    | SpeechStopped
    | TranscriptUpdated
    | ResponseDelta
    | ResponseCompleted
    | ResponseInterrupted
)


class Transport(Protocol):
    """What carries one call to its caller: a signaling socket with a peer, WHIP, telephony.

    Every method is called on the event loop. `send_event`, `send_audio` and `flush_audio`
    return at once (a transport queues what it cannot send yet); `close` is called exactly once,
    when the call has ended.
    """

    def send_event(self, event: CallEvent, /) -> None:
        """A caller-facing fact (transcript, speech, response...); in order, never dropped."""

    def send_audio(self, audio: BotAudio, /) -> None:
        """Queue bot audio (PCM16 mono at any rate) for real-time playback."""

    def flush_audio(self) -> None:
        """Barge-in: drop every queued bot audio frame now."""

    async def close(self, reason: EndReason, /) -> None:
        """The call has ended: tell the caller if possible, then release everything."""


class AdmissionRefused(Exception):
    """Internal: the Switchboard refused the call (`reason` from `CallRefused`)."""

    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(reason)
        self.reason = reason


class LiveCall:
    def __init__(
        self,
        *,
        call_id: str,
        company_id: str,
        agent: AgentConfig,
        transport: Transport,
        outbox: CallOutbox,
        recorder: CallRecorder,
        limits: LimitsSettings,
    ) -> None:
        self.call_id = call_id
        self.company_id = company_id
        self.agent = agent
        self.conversation_id = ""
        self.transport = transport
        self.outbox = outbox
        self.recorder = recorder
        self.observer: CallObserver = NO_OBSERVER  # metrics, recording, webhooks: set when opened
        self.log = CallLogger(logger, {"call_id": call_id})
        self.handle: CallHandle | None = None
        self.end_reason: EndReason | None = None
        self.finished = asyncio.Event()
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._admission: asyncio.Future[CallHandle] = self._loop.create_future()
        self._hang_up_reason: EndReason | None = None
        self._media_connected = False
        self._quiet = False  # aborted: finish without the transport or the store
        self._last_activity = self._loop.time()
        self._timers: list[asyncio.TimerHandle] = []
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._pump_task = self._loop.create_task(self._pump(), name=f"call-{call_id}")

    # -- admission (the edge) ------------------------------------------------------------------

    async def admitted(self, timeout_s: float) -> CallHandle:
        """Wait for the Switchboard's answer.

        Raises:
            AdmissionRefused: `CallRefused`, or no answer within `timeout_s` ("capacity" is
                not claimed then: the reason is "duplicate", which the edge reports as internal).
        """
        try:
            return await asyncio.wait_for(asyncio.shield(self._admission), timeout_s)
        except TimeoutError:
            self.abort()  # should the answer come after all, the tree is hung up at once
            raise AdmissionRefused("duplicate") from None

    def start_timers(self) -> None:
        """Arm `limits.max_call_duration_s` and `limits.idle_timeout_s` (once admitted)."""
        loop, limits = self._loop, self._limits
        self._last_activity = loop.time()
        self._timers.append(
            loop.call_later(limits.max_call_duration_s, self.hang_up, "max_duration")
        )
        self._idle_timer = loop.call_later(limits.idle_timeout_s, self._check_idle)

    def abort(self) -> None:
        """End an admitted call the caller never learned about: no transport, no store row."""
        self._quiet = True
        self.recorder.discard()
        self.hang_up("hangup")

    # -- from the transport ----------------------------------------------------------------------

    def audio_received(self, pcm: bytes, captured_at: float) -> None:
        """Caller audio: 16 kHz mono PCM16, ideally 20 ms; `captured_at` is monotonic seconds."""
        handle = self.handle
        if handle is not None:
            handle.send_audio(
                AudioReceived(
                    call_id=self.call_id, pcm=pcm, sample_rate=SAMPLE_RATE, captured_at=captured_at
                )
            )
        self.observer.caller_audio(pcm, captured_at)

    def text_received(self, text: str) -> None:
        self._active()
        self._tell(TextReceived(call_id=self.call_id, text=text, received_at=time.monotonic()))

    def dtmf_received(self, digit: str) -> None:
        self._active()
        self._tell(DtmfReceived(call_id=self.call_id, digit=digit))

    def media_connected(self) -> None:
        """Media flows both ways: the greeting starts (told once)."""
        if not self._media_connected:
            self._media_connected = True
            self.log.info("= media connected")
            self._tell(MediaConnected(call_id=self.call_id))

    def playback_progressed(self, turn_id: int, played_ms: float) -> None:
        self._tell(PlaybackProgressed(call_id=self.call_id, turn_id=turn_id, played_ms=played_ms))

    def hang_up(self, reason: EndReason) -> None:
        """Ask the tree to end the call; the first reason asked for wins. Idempotent."""
        if self.end_reason is not None or self._hang_up_reason is not None:
            return
        self._hang_up_reason = reason
        self.log.info("= hanging up: %s", reason)
        if self.handle is not None:
            self.handle.tell(HangUp(call_id=self.call_id, reason=reason))
        self._timers.append(self._loop.call_later(HANGUP_GRACE_S, self._finish, reason))

    @property
    def ending(self) -> bool:
        return self.end_reason is not None or self._hang_up_reason is not None

    # -- the pump ------------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            message = await self.outbox.get()
            try:
                if self._dispatch(message):
                    return
            except Exception:
                self.log.exception("= handling %s failed", type(message).__name__)

    def _dispatch(self, message: Outbound) -> bool:
        """Act on one outbound message; True when the pump is done."""
        self.observer.outbound(message)
        match message:
            case BotAudio():
                self._active()
                if not self._quiet:
                    self.transport.send_audio(message)
            case FlushAudio():
                if not self._quiet:
                    self.transport.flush_audio()
            case (
                SpeechStarted()
                | SpeechStopped()
                | TranscriptUpdated()
                | ResponseDelta()
                | ResponseCompleted()
                | ResponseInterrupted()
            ):
                self._active()
                if not self._quiet:
                    self.transport.send_event(message)
            case CallEventRecorded() | TurnRecorded() | UsageRecorded():
                self.recorder.record(message)
            case CallEnded(reason=reason, detail=detail):
                if detail:
                    self.log.info("= tree ended: %s (%s)", reason, detail)
                self._finish(reason)
                return True
            case CallAdmitted(handle=handle):
                self._admitted(handle)
            case CallRefused(reason=reason):
                if not self._admission.done():
                    self._admission.set_exception(AdmissionRefused(reason))
                return True
            case AudioDropped(actor=actor, dropped_ms=dropped_ms):
                self.log.warning("= %s dropped %.0f ms of audio", actor, dropped_ms)
            case ChildRestarted(child=child, generation=generation):
                self.log.info("= %s restarted (generation %d)", child, generation)
            case _:
                self.log.warning("unexpected outbound %r", message)
        return False

    def _admitted(self, handle: CallHandle) -> None:
        self.handle = handle
        if not self._admission.done():
            self._admission.set_result(handle)
        if self._hang_up_reason is not None:  # the caller left while we were admitting
            handle.tell(HangUp(call_id=self.call_id, reason=self._hang_up_reason))

    def _finish(self, reason: EndReason) -> None:
        if self.end_reason is not None:
            return
        self.end_reason = reason
        for timer in [*self._timers, self._idle_timer]:
            if timer is not None:
                timer.cancel()
        if not self._pump_task.done() and asyncio.current_task() is not self._pump_task:
            self._pump_task.cancel()  # the tree never answered; nothing more will come
        self.log.info("= call ended: %s", reason)
        self._closing = self._loop.create_task(self._close(reason), name=f"close-{self.call_id}")

    async def _close(self, reason: EndReason) -> None:
        try:
            if not self._quiet:
                self.recorder.end(reason)
                try:
                    await self.transport.close(reason)
                except Exception:
                    self.log.exception("= closing the transport failed")
            await self.recorder.wait_written()
            self.observer.finished(self)
        finally:
            self.finished.set()

    # -- helpers ---------------------------------------------------------------------------------

    def _tell(
        self,
        message: TextReceived | DtmfReceived | MediaConnected | PlaybackProgressed,
    ) -> None:
        if self.handle is not None and self.end_reason is None:
            self.handle.tell(message)

    def _active(self) -> None:
        self._last_activity = self._loop.time()

    def _check_idle(self) -> None:
        if self.end_reason is not None:
            return
        left = self._last_activity + self._limits.idle_timeout_s - self._loop.time()
        if left <= 0:
            self.hang_up("idle")
        else:
            self._idle_timer = self._loop.call_later(left, self._check_idle)
