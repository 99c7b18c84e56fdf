"""CarrierStream: one carrier media-stream websocket carrying one call (the call's `Transport`).

    carrier --JSON text frames--> parse_event -> StreamOrder -> start: route, open the call
                                                             -> media: decode, 8k -> 16k, 20 ms
                                                             -> dtmf, mark (played), stop
    call tree --BotAudio--> resample to the wire rate -> Playout (real-time, marks) -> writer
              --FlushAudio--> Playout.flush + `clear`

What differs between Twilio and Exotel (codec, audio format, routing, hanging up) is a `Carrier`;
this module is the loop both share. Everything runs on the event loop. One writer task sends
every outbound frame, in order, so a flush can never be overtaken by audio queued before it.

Ending: the call ends exactly once through `LiveCall` (it calls `close` here). The carrier's
`stop` or a closed socket asks for `hangup`; malformed or out-of-order input is recorded as a
`protocol_violation` call event, closes the socket (1008, or 1009 when too big) and ends the call
with `hangup`. Unless the carrier itself stopped the stream, `Carrier.ended` then hangs up the
phone call (Twilio: through its REST API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from actors.messages import BotAudio, CallEventRecorded, EndReason
from mediaserver.calls import CallEvent, CallRefusal, LiveCall, Transport
from mediaserver.errors import ProtocolViolation
from mediaserver.logs import CallLogger
from mediaserver.telephony import g711
from mediaserver.telephony.events import (
    Cleared,
    Connected,
    Dtmf,
    Mark,
    Media,
    Started,
    Stopped,
    StreamEvent,
)
from mediaserver.telephony.playout import AudioChunk, MarkOut, Playout
from mediaserver.telephony.resample import Resampler
from mediaserver.telephony.stream_order import StreamOrder
from mediaserver.telephony.wire import MessageTooBig

logger = logging.getLogger(__name__)

CALL_RATE = 16_000  # what the call tree hears
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
START_TIMEOUT_S = 10.0  # a stream that never says `start` is closed
FINISH_WAIT_S = 15.0  # the call's end, including a REST hang-up with retries
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

REFUSAL_CLOSE = {
    "unauthorized": (CLOSE_POLICY, "Unauthorized"),
    "unknown_agent": (CLOSE_POLICY, "Unknown agent"),
    "rate_limited": (CLOSE_TRY_AGAIN, "Rate limited"),
    "capacity": (CLOSE_TRY_AGAIN, "Server at capacity"),
    "company_capacity": (CLOSE_TRY_AGAIN, "Company at capacity"),
    "load": (CLOSE_TRY_AGAIN, "Server at capacity"),
    "shutting_down": (CLOSE_GOING_AWAY, "Server shutting down"),
    "internal": (CLOSE_INTERNAL, "Internal error"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WireAudio:
    """The audio format of a stream: PCM16 or mu-law, mono, at `sample_rate`."""

    sample_rate: int
    ulaw: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Pacing:
    chunk_ms: int  # outbound audio per media message
    lead_ms: int  # at most this far ahead of real time
    mark_every_ms: int
    refill_ms: int = 0  # wake the writer when this much fits in the lead (0: one chunk)


class Carrier(Protocol):
    """What one carrier's streams need that the loop does not know."""

    name: str  # "twilio" | "exotel": logs

    def parse(self, text: str | bytes, /) -> StreamEvent: ...
    def wire_audio(self, started: Started, /) -> WireAudio: ...
    def pacing(self, wire: WireAudio, /) -> Pacing: ...
    def media_message(self, stream_sid: str, audio: bytes, /) -> str: ...
    def mark_message(self, stream_sid: str, name: str, /) -> str: ...
    def clear_message(self, stream_sid: str, /) -> str: ...

    async def open_call(self, started: Started, transport: Transport, /) -> LiveCall:
        """Route and start the call.

        Raises:
            CallRefusal: the call did not start.
        """

    async def ended(self, started: Started, reason: EndReason, /) -> None:
        """The call ended and the carrier did not stop the stream: end the phone call too."""


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class CarrierStream:
    """Serves one accepted websocket until its call has finished. Loop only."""

    def __init__(self, websocket: WebSocket, carrier: Carrier) -> None:
        self._ws = websocket
        self._carrier = carrier
        self._order = StreamOrder()
        self.call: LiveCall | None = None
        self.started: Started | None = None
        self.log: logging.Logger | CallLogger = logger
        self.stopped_by_carrier = False
        self.violation: str | None = None
        self._socket_open = True
        self._close_override: tuple[int, str] | None = None
        self._wire = WireAudio(sample_rate=8000, ulaw=True)
        self._inbound: Resampler | None = None
        self._inbound_rest = np.zeros(0, dtype=np.int16)
        self._outbound: Resampler | None = None
        self._outbound_turn: int | None = None
        self._playout: Playout | None = None
        self._control: list[str | _Close] = []  # sent before any further audio
        self._epoch = 0  # bumped by every flush: the writer drops a batch from before it
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.frames_in = 0
        self.clears = 0

    # -- the stream's life -----------------------------------------------------------------------

    async def run(self) -> None:
        """Read the stream until the call ends; return once the call has finished."""
        try:
            await self._serve()
        finally:
            call = self.call
            if call is not None:
                call.hang_up("hangup")  # a no-op when the call is already ending
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(call.finished.wait(), FINISH_WAIT_S)
            elif self._socket_open:
                await self._close_socket(*(self._close_override or (CLOSE_NORMAL, "")))
            if self._writer is not None:
                self._writer.cancel()

    async def _serve(self) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                started = await self._until_started()
        except TimeoutError:
            self.log.info("< no start within %.0f s: closing", START_TIMEOUT_S)
            self._close_override = (CLOSE_POLICY, "No start")
            return
        except ProtocolViolation as violation:
            self._violated(violation)
            return
        if started is None:
            return
        self.started = started
        try:
            self._wire = self._carrier.wire_audio(started)
            pacing = self._carrier.pacing(self._wire)
        except ProtocolViolation as violation:
            self._violated(violation)
            return
        self._inbound = Resampler(self._wire.sample_rate, CALL_RATE)
        self._playout = Playout(
            sample_rate=self._wire.sample_rate,
            chunk_ms=pacing.chunk_ms,
            lead_ms=pacing.lead_ms,
            mark_every_ms=pacing.mark_every_ms,
            refill_ms=pacing.refill_ms,
            silence=bytes([g711.ULAW_SILENCE]) if self._wire.ulaw else b"\x00\x00",
        )
        try:
            call = await self._carrier.open_call(started, self)
        except CallRefusal as refusal:
            level = logging.DEBUG if refusal.reason == "load" else logging.INFO  # the gate logs
            logger.log(
                level, "= %s call %s refused: %s", self._carrier.name, started.call_sid, refusal
            )
            self._close_override = REFUSAL_CLOSE[refusal.reason]
            return
        self.call = call
        self.log = call.log
        self._writer = asyncio.get_running_loop().create_task(
            self._write(), name=f"{self._carrier.name}-out-{call.call_id}"
        )
        call.media_connected()
        await self._receive(call)

    async def _until_started(self) -> Started | None:
        """Read until `start`; None when the socket closed first."""
        while True:
            text = await self._next_frame()
            if text is None:
                return None
            event = self._carrier.parse(text)
            self._order.check(event)
            if isinstance(event, Started):
                self.log.info(
                    "< start %s call %s (%s %d Hz)",
                    event.stream_sid,
                    event.call_sid,
                    event.encoding,
                    event.sample_rate,
                )
                return event
            self.log.debug("< %s", type(event).__name__)

    async def _receive(self, call: LiveCall) -> None:
        while not call.ending:
            text = await self._next_frame()
            if text is None:
                call.hang_up("hangup")
                return
            try:
                event = self._carrier.parse(text)
                self._order.check(event)
                self._handle(event, call)
            except ProtocolViolation as violation:
                self._violated(violation)
                return

    async def _next_frame(self) -> str | bytes | None:
        """The next text (or binary) frame; None when the carrier closed the socket."""
        try:
            frame = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError, OSError):
            frame = {"type": "websocket.disconnect"}
        if frame["type"] == "websocket.disconnect":
            self._socket_open = False
            self.log.info("< socket closed (%s)", frame.get("code"))
            return None
        text: str | bytes | None = frame.get("text")
        return text if text is not None else frame.get("bytes") or b""

    def _handle(self, event: StreamEvent, call: LiveCall) -> None:
        match event:
            case Media(audio=audio):
                self._audio_in(audio, call)
            case Dtmf(digit=digit):
                self.log.info("< dtmf %s", digit)
                call.dtmf_received(digit)
            case Mark(name=name):
                assert self._playout is not None
                progress = self._playout.mark_played(name)
                if progress is not None:
                    call.playback_progressed(progress.turn_id, progress.played_ms)
            case Stopped(reason=reason):
                self.log.info("< stop %s", reason)
                self.stopped_by_carrier = True
                call.hang_up("hangup")
            case Cleared() | Connected() | Started():
                pass  # an inbound clear means nothing to us; the others were checked by order

    def _audio_in(self, audio: bytes, call: LiveCall) -> None:
        """Wire audio -> PCM16 16 kHz in 20 ms frames, stamped as captured just now."""
        if self._wire.ulaw:
            samples = g711.ulaw_decode(audio)
        else:
            if len(audio) % 2:
                raise ProtocolViolation(f"PCM16 audio of odd length {len(audio)}")
            samples = np.frombuffer(audio, dtype="<i2").astype(np.int16)
        assert self._inbound is not None
        resampled = self._inbound.process_array(samples)
        if len(self._inbound_rest):
            resampled = np.concatenate((self._inbound_rest, resampled))
        whole = len(resampled) - len(resampled) % FRAME_SAMPLES
        self._inbound_rest = resampled[whole:]
        now = time.monotonic()
        captured_at = now - len(samples) / self._wire.sample_rate
        for start in range(0, whole, FRAME_SAMPLES):
            call.audio_received(resampled[start : start + FRAME_SAMPLES].tobytes(), captured_at)
            captured_at += FRAME_SAMPLES / CALL_RATE
            self.frames_in += 1

    def _violated(self, violation: ProtocolViolation) -> None:
        """Bad input: record it, close the socket with 1008 (1009 too big), end the call."""
        text = str(violation)[:200]
        self.violation = text
        self.log.warning("< protocol violation: %s", text)
        too_big = isinstance(violation, MessageTooBig)
        self._close_override = (
            (CLOSE_TOO_BIG, "Message too big") if too_big else (CLOSE_POLICY, "Protocol violation")
        )
        call = self.call
        if call is not None:
            call.recorder.record(
                CallEventRecorded(
                    call_id=call.call_id,
                    kind="protocol_violation",
                    data={"carrier": self._carrier.name, "error": text},
                    at=time.monotonic(),
                )
            )
            call.hang_up("hangup")

    # -- the call's Transport ----------------------------------------------------------------------

    def send_event(self, event: CallEvent, /) -> None:
        """Carrier streams carry audio only: transcripts and replies go to the store alone."""

    def send_audio(self, audio: BotAudio, /) -> None:
        playout = self._playout
        if playout is None or not self._socket_open:
            return
        rate = self._wire.sample_rate
        if (
            self._outbound is None
            or self._outbound.in_rate != audio.sample_rate
            or self._outbound_turn != audio.turn_id
        ):
            # A new turn starts clean: the previous turn's filter tail is a ~2 ms whisper.
            self._outbound = Resampler(audio.sample_rate, rate)
            self._outbound_turn = audio.turn_id
        samples = np.frombuffer(audio.pcm[: len(audio.pcm) // 2 * 2], dtype="<i2")
        resampled = self._outbound.process_array(samples.astype(np.int16))
        # Encoded once per TTS chunk, not per frame: the writer only slices bytes.
        wire = g711.ulaw_encode(resampled) if self._wire.ulaw else resampled.astype("<i2").tobytes()
        playout.push(audio.turn_id, wire, len(samples) * 1000 / audio.sample_rate)
        self._wake.set()

    def flush_audio(self) -> None:
        playout, started = self._playout, self.started
        if playout is None or started is None or not self._socket_open:
            return
        playout.flush(time.monotonic())
        self._outbound = None
        self._epoch += 1
        self.clears += 1
        self.log.info("> clear (barge-in)")
        self._control.append(self._carrier.clear_message(started.stream_sid))
        self._wake.set()

    async def close(self, reason: EndReason, /) -> None:
        """The call ended: close the socket (if open), then end the phone call if we must."""
        if self._socket_open:
            code, text = self._close_override or (
                (CLOSE_GOING_AWAY, "Server shutting down")
                if reason == "shutdown"
                else (CLOSE_NORMAL, "Call ended")
            )
            self._control.append(_Close(code, text))
            self._wake.set()
            if self._writer is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._writer), 2.0)
        if self._writer is not None:
            self._writer.cancel()
        if self._socket_open:  # the writer never got to it
            await self._close_socket(*(self._close_override or (CLOSE_NORMAL, "Call ended")))
        started = self.started
        if started is not None and not self.stopped_by_carrier:
            try:
                await self._carrier.ended(started, reason)
            except Exception:
                self.log.exception("= ending the %s call failed", self._carrier.name)

    # -- the writer --------------------------------------------------------------------------------

    async def _write(self) -> None:
        """Send control frames first, then whatever audio and marks are due, until closed."""
        playout, started = self._playout, self.started
        assert playout is not None and started is not None
        sid = started.stream_sid
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self._control:
                    item = self._control.pop(0)
                    if isinstance(item, _Close):
                        await self._close_socket(item.code, item.reason)
                        return
                    await self._ws.send_text(item)
                now = time.monotonic()
                epoch = self._epoch
                for out in playout.due(now):
                    if self._epoch != epoch or self._control:
                        break  # a flush or the end came in while we were sending: stop here
                    if isinstance(out, AudioChunk):
                        await self._ws.send_text(self._carrier.media_message(sid, out.audio))
                    elif isinstance(out, MarkOut):
                        await self._ws.send_text(self._carrier.mark_message(sid, out.name))
                if self._control:
                    continue
                due_at = playout.next_due_at(time.monotonic())
                self._wake.clear()
                timer = None
                if due_at is not None:
                    # A timer handle, not wait_for: no task per frame (50 a second per call).
                    timer = loop.call_later(max(0.0, due_at - time.monotonic()), self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            self.log.info("> socket gone: %r", exc)
            self._socket_open = False

    async def _close_socket(self, code: int, reason: str) -> None:
        self._socket_open = False
        self.log.info("> close %d %s", code, reason)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._ws.close(code, reason)
