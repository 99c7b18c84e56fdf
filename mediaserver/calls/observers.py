"""CallObservers: what watches calls from the edge without taking part in them.

    CallEdge --refused(reason)--------------------> CallObservers (metrics)
    CallEdge --opened(call) once its row exists---> CallObservers --> CallObserver (one per call)
    LiveCall --caller_audio(pcm, captured_at)-----> CallObserver --> recording (left)
    LiveCall --outbound(message), every one-------> CallObserver --> metrics, recording (right)
    CallEdge --finished(call) after the store-----> CallObserver --> metrics, recording closed,
                                                                     webhook `call.ended`

Three observers ride along: `Metrics`, the call's `CallRecording` (when the agent opted in) and
`WebhookEvents`. Everything runs on the event loop, returns at once and never raises into the
call: a failing recording is logged, closed and dropped; the call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from actors.agent import AgentConfig
from actors.messages import (
    AudioDropped,
    BotAudio,
    CallEventRecorded,
    ChildRestarted,
    EndReason,
    FlushAudio,
    Outbound,
    SpeechStarted,
    TurnRecorded,
)
from config.settings import RecordingSettings
from mediaserver.calls.outbox import CallOutbox
from mediaserver.logs import CallLogger
from mediaserver.metrics import Metrics
from mediaserver.recording import CallRecording
from mediaserver.store import Store, StoreError
from mediaserver.webhooks import WebhookEvents

logger = logging.getLogger(__name__)

BARGE_IN_WINDOW_S = 5.0  # a flush this long after speech began is not that speech's doing


class ObservedCall(Protocol):
    """What the observers read of a call (`LiveCall` is one; this module does not import it)."""

    @property
    def call_id(self) -> str: ...
    @property
    def company_id(self) -> str: ...
    @property
    def agent(self) -> AgentConfig: ...
    @property
    def log(self) -> CallLogger: ...
    @property
    def end_reason(self) -> EndReason | None: ...
    @property
    def outbox(self) -> CallOutbox: ...


class CallObserver:
    """One call's observers; with nothing given it observes nothing (a call not yet opened)."""

    def __init__(
        self,
        call_id: str = "",
        *,
        metrics: Metrics | None = None,
        recording: CallRecording | None = None,
        webhooks: WebhookEvents | None = None,
    ) -> None:
        self._metrics = metrics
        self._recording = recording
        self._webhooks = webhooks
        self._speech_at: float | None = None
        self.log = CallLogger(logger, {"call_id": call_id})

    def caller_audio(self, pcm: bytes, captured_at: float) -> None:
        """16 kHz mono PCM16 from the caller, as the transport hands it to the call."""
        if self._recording is not None:
            try:
                self._recording.caller_audio(pcm, captured_at)
            except Exception:  # a boundary: the call goes on without its recording
                self.log.exception("= recording stopped")
                self._drop_recording()

    def outbound(self, message: Outbound) -> None:
        """Every message the call tree puts on its outbox, in order."""
        try:
            self._observe(message)
        except Exception:  # a boundary: an observer's bug must not cost the call a message
            self.log.exception("= observing %s failed", type(message).__name__)

    def _observe(self, message: Outbound) -> None:
        metrics = self._metrics
        match message:
            case BotAudio(pcm=pcm, sample_rate=rate):
                if self._recording is not None:
                    try:
                        self._recording.bot_audio(pcm, rate, time.monotonic())
                    except Exception:  # the call goes on without its recording
                        self.log.exception("= recording stopped")
                        self._drop_recording()
            case FlushAudio():
                now = time.monotonic()
                if self._recording is not None:
                    self._recording.flush_bot(now)
                speech_at, self._speech_at = self._speech_at, None
                waited = None if speech_at is None else now - speech_at
                if metrics is not None and waited is not None and 0 <= waited <= BARGE_IN_WINDOW_S:
                    metrics.barge_in(waited)
            case SpeechStarted(at=at):
                self._speech_at = at
            case TurnRecorded() if metrics is not None:
                metrics.turn_recorded(message)
            case ChildRestarted(child=child) if metrics is not None:
                metrics.child_restarted(child)
            case CallEventRecorded(kind="child_failed", data=data) if metrics is not None:
                if str(data.get("error", "")).startswith("StallDetected"):
                    metrics.actor_stalled(str(data.get("child", "unknown")))
            case AudioDropped(actor=actor, dropped_ms=dropped_ms) if metrics is not None:
                metrics.audio_dropped(actor, dropped_ms)
            case _:
                pass

    def finished(self, call: ObservedCall) -> None:
        """The call has ended and its facts are in the store."""
        try:
            self._finish(call)
        except Exception:  # a boundary: the call is over whatever happens here
            self.log.exception("= observing the end failed")

    def _finish(self, call: ObservedCall) -> None:
        if self._metrics is not None:
            self._metrics.call_ended(call.end_reason or "unknown")
            self._metrics.audio_dropped("outbox", call.outbox.dropped_audio_ms)
        if self._recording is not None:
            try:
                duration_s = self._recording.close(time.monotonic())
                self.log.info("= recording closed: %.1f s", duration_s)
            except OSError as exc:
                self.log.error("= recording not finished: %s", exc)
            self._recording = None
        if self._webhooks is not None:
            self._webhooks.call_ended(call.company_id, call.call_id)

    def _drop_recording(self) -> None:
        recording, self._recording = self._recording, None
        if recording is not None:
            with contextlib.suppress(Exception):
                recording.close(time.monotonic())


NO_OBSERVER = CallObserver()


class CallObservers:
    """The server's observers; with nothing given, calls are not observed at all.

    Args:
        store: where a recording's path is written (needed with `recording`).
        recording: where recordings go; None records no call, whatever the agent says.
    """

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        store: Store | None = None,
        recording: RecordingSettings | None = None,
        webhooks: WebhookEvents | None = None,
    ) -> None:
        assert recording is None or store is not None, "recordings need the store"
        self._metrics = metrics
        self._store = store
        self._recording = recording
        self._webhooks = webhooks
        self._tasks: set[asyncio.Task[None]] = set()

    def refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.call_refused(reason)

    def opened(self, call: ObservedCall) -> CallObserver:
        """A call was admitted and its row written: its observer (loop only)."""
        if self._metrics is not None:
            self._metrics.call_admitted()
        if self._webhooks is not None:
            self._webhooks.call_started(call.company_id, call.call_id)
        return CallObserver(
            call.call_id,
            metrics=self._metrics,
            recording=self._start_recording(call),
            webhooks=self._webhooks,
        )

    def _start_recording(self, call: ObservedCall) -> CallRecording | None:
        if self._recording is None or not call.agent.recording:
            return None
        assert self._store is not None
        path = Path(self._recording.dir) / call.company_id / f"{call.call_id}.wav"
        try:
            recording = CallRecording(path, started_at=time.monotonic())
        except OSError as exc:
            call.log.error("= not recording: %s", exc)
            return None
        call.log.info("= recording to %s", path)
        self._spawn(self._store_path(self._store, call, str(path.resolve())))
        return recording

    @staticmethod
    async def _store_path(store: Store, call: ObservedCall, path: str) -> None:
        try:
            await store.set_call_recording(call.company_id, call.call_id, path)
        except StoreError as exc:
            call.log.error("= store: the recording's path was not written: %s", exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
