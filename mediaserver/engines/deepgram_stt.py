"""Deepgram live speech-to-text (`/v1/listen` websocket) as the call tree's `SttEngine`.

Construction (composition root / engine catalog)::

    stt = DeepgramStt(settings.deepgram, loop)      # loop: the server's asyncio event loop
    stream = stt.open(call_id, sink)                # from any thread; see actors/engines.py

An engine is cheap: sockets are per stream. Pass `client=deepgram_client(settings.deepgram)`
to share one client between engines, and `language=` for an agent's language.

Wire protocol (https://developers.deepgram.com/reference/speech-to-text/listen-streaming,
https://developers.deepgram.com/docs/finalize, .../keep-alive, .../close-stream,
.../understanding-end-of-speech-detection):
`wss://api.deepgram.com/v1/listen?model=…&encoding=linear16&sample_rate=16000&channels=1&
interim_results=true&endpointing=300&utterance_end_ms=1000&smart_format=true&punctuate=true`,
header `Authorization: Token <key>`. We send binary 16 kHz PCM16 frames and the text frames
`{"type":"KeepAlive"}` (no audio for `deepgram.keepalive_s`), `{"type":"Finalize"}` and
`{"type":"CloseStream"}`. Deepgram sends `Results` (`is_final` false = interim; true = that
span's text is fixed; `speech_final` = its endpoint; `from_finalize` = answers a Finalize;
`start` + `duration` place the span on the audio timeline of this socket), `UtteranceEnd`,
`Metadata`, `SpeechStarted` and `Error`.

Mapping to `TranscriptReceived`: interim -> `final=False`; a non-empty final -> `final=True`;
`speech_final` or `UtteranceEnd` after words -> `end_of_turn=True` (once per turn). `finalize()`
-> exactly one `finalized=True` result, which settles all audio sent before it: Deepgram's
`from_finalize` answer, or any final whose span reaches the finalize point (Deepgram may not
answer a Finalize when it has nothing buffered, but it keeps sending finals over the silence
that follows). When nothing was sent since the last final, the answer is immediate and empty.
A provider that answers nothing at all gets no fake answer: the Transcriber's watchdog sees the
stall and restarts it.

Threads: `open` and the stream methods run on actor threads; each only hops onto the engine's
event loop with `call_soon_threadsafe` and returns. Everything else (the socket, the writer
and reader tasks, the keepalive timer, the `sink` calls) runs on that loop. After `cancel()` or
`close()` returns, the sink is not called again.

Reconnect policy: the audio since the last final result is kept (at most `max_unsettled_s`;
`ListenTimeline` does this bookkeeping, without I/O).
When the socket drops (or a handshake fails with 429/5xx/a timeout) the engine reports
`EngineFailed(gave_up=False)`, waits `reconnect_backoff_ms * 2**(n-1)`, reconnects and resends
that audio and any unanswered Finalize, so Deepgram transcribes every word exactly once. The
attempt count resets once the new socket delivers a message. After `reconnect_attempts`
failures in a row, or at once for 401/403/1008, it sends `EngineFailed(gave_up=True)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

import websockets.exceptions
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.listen.v1.socket_client import AsyncV1SocketClient
from deepgram.listen.v1.types import ListenV1Error, ListenV1Results, ListenV1UtteranceEnd

from actors.engines import EngineFailed, EngineResult, Sink, TranscriptReceived
from config.settings import DeepgramSettings
from mediaserver.engines.provider_errors import (
    DEEPGRAM_ERRORS,
    ProviderAuthFailed,
    ProviderError,
    ProviderRejected,
    from_deepgram,
    scrub,
)
from mediaserver.logs import CallLogger

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
_BYTES_PER_SAMPLE = 2
_MAX_FRAME_BYTES = 3_200  # 100 ms: resent audio goes out in frames of this size
_CLOSE_GRACE_S = 2.0  # after CloseStream, how long Deepgram may take to close the socket


def deepgram_environment(base_url: str) -> DeepgramClientEnvironment:
    """The SDK environment for `base_url` (empty = Deepgram production).

    deepgram-sdk 7 joins `environment.production + "/v1/listen"` (websockets) and
    `environment.base + "/v1/speak"` (REST), so both are derived here from one URL of any of
    the schemes http, https, ws, wss; a path prefix is kept.
    """
    if not base_url:
        return DeepgramClientEnvironment.PRODUCTION
    scheme, sep, rest = base_url.rstrip("/").partition("://")
    if not sep or scheme not in ("http", "https", "ws", "wss") or not rest:
        raise ProviderRejected("deepgram", "bad URL (check deepgram.base_url)")
    secure = scheme in ("https", "wss")
    http = f"{'https' if secure else 'http'}://{rest}"
    ws = f"{'wss' if secure else 'ws'}://{rest}"
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


def deepgram_client(settings: DeepgramSettings) -> AsyncDeepgramClient:
    """An async client with the key and URL passed explicitly (never read from the environment).

    Raises:
        ProviderAuthFailed: no key is configured.
        ProviderRejected: `base_url` is malformed.
    """
    if settings.api_key is None or not settings.api_key.get_secret_value():
        raise ProviderAuthFailed("deepgram", "no API key configured (deepgram.api_key)")
    return AsyncDeepgramClient(
        api_key=settings.api_key.get_secret_value(),
        environment=deepgram_environment(settings.base_url),
    )


class DeepgramStt:
    """Speech to text over Deepgram's live websocket: one socket per stream.

    Args:
        settings: the `deepgram` section (key, URL, model, reconnect and keepalive policy).
        loop: the event loop that runs every socket; results are delivered from it.
        client: a shared client (`deepgram_client(settings)`); one is made from `settings` if None.
        language: Deepgram `language` (`multi` for nova-3 multilingual).
        endpointing_ms: Deepgram `endpointing` (silence before `speech_final`).
        utterance_end_ms: Deepgram `utterance_end_ms` (>= 1000); None leaves it off.
        max_unsettled_s: audio kept for resending after a drop; older audio is let go.
    """

    def __init__(
        self,
        settings: DeepgramSettings,
        loop: asyncio.AbstractEventLoop,
        *,
        client: AsyncDeepgramClient | None = None,
        language: str = "en",
        endpointing_ms: int = 300,
        utterance_end_ms: int | None = 1000,
        max_unsettled_s: float = 30.0,
    ) -> None:
        self._settings = settings
        self._loop = loop
        self._language = language
        self._endpointing_ms = endpointing_ms
        self._utterance_end_ms = utterance_end_ms
        self._max_unsettled_bytes = int(max_unsettled_s * SAMPLE_RATE_HZ) * _BYTES_PER_SAMPLE
        self._secret = settings.api_key.get_secret_value() if settings.api_key else None
        self._client = client
        self._setup_error: ProviderError | None = None
        if client is None:
            try:
                self._client = deepgram_client(settings)
            except ProviderError as exc:
                self._setup_error = exc
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, call_id: str, sink: Sink) -> DeepgramSttStream:
        """Open a stream; connects at once, on the loop. Any thread; returns at once."""
        return DeepgramSttStream(self, call_id, sink)

    async def aclose(self) -> None:
        """Cancel every live stream and wait for its socket to close (on the loop)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _connect(self) -> contextlib.AbstractAsyncContextManager[AsyncV1SocketClient]:
        assert self._client is not None
        # `AsyncDeepgramClient.listen` is an unannotated property: name the type here.
        connection: contextlib.AbstractAsyncContextManager[AsyncV1SocketClient]
        connection = self._client.listen.v1.connect(
            model=self._settings.stt_model,
            language=self._language,
            encoding="linear16",
            sample_rate=str(SAMPLE_RATE_HZ),
            channels="1",
            interim_results="true",
            endpointing=str(self._endpointing_ms),
            utterance_end_ms=(
                str(self._utterance_end_ms) if self._utterance_end_ms is not None else None
            ),
            smart_format="true",
            punctuate="true",
        )
        return connection


class ListenTimeline:
    """The audio timeline of one listen stream, without I/O: what to (re)send, what is settled.

    Offsets are bytes of 16 kHz PCM16 since the stream opened. Audio is kept from the end of the
    last final result (`settled`) to the end of what the caller sent (`received`). Each socket
    starts at `settled` (`reconnected`): that is its time 0, so Deepgram's `start + duration`
    maps back onto our offsets, and a new socket hears the unsettled audio again. `finalize()`
    points wait in order for their answer; `results` and `utterance_end` turn Deepgram's
    messages into `TranscriptReceived`s.
    """

    def __init__(self, max_unsettled_bytes: int) -> None:
        self._max_unsettled = max_unsettled_bytes
        self._audio = bytearray()  # [settled, received)
        self.settled = 0
        self.received = 0
        self._pending: deque[int] = deque()  # finalize() points not yet answered
        # Per socket.
        self._base = 0  # this socket's time 0 on our timeline
        self._sent = 0  # audio sent on this socket up to here
        self._finalizes_sent = 0  # leading `_pending` points whose Finalize went on this socket
        self._owed = 0  # from_finalize answers still due for points settled otherwise
        # Turn ends.
        self._words_since_turn = False  # final words not yet followed by an end of turn
        self._interim_open = False  # interim words not yet in a final
        self._end_turn_due = False  # UtteranceEnd came before the final of its words

    @property
    def unsettled(self) -> int:
        return len(self._audio)

    def add_audio(self, pcm: bytes) -> int:
        """Take audio from the caller; return the bytes let go for lack of a final (0 mostly)."""
        self._audio += pcm
        self.received += len(pcm)
        overflow = len(self._audio) - self._max_unsettled
        if overflow <= 0:
            return 0
        overflow += overflow % _BYTES_PER_SAMPLE
        del self._audio[:overflow]
        self.settled += overflow
        return overflow

    def finalize(self) -> list[TranscriptReceived]:
        """Mark a finalize point; answered at once when everything before it is settled."""
        self._pending.append(self.received)
        return self._answer_settled()

    def reconnected(self) -> None:
        """A new socket: it starts at `settled` and has been sent nothing."""
        self._base = self._sent = self.settled
        self._finalizes_sent = 0
        self._owed = 0
        self._interim_open = False

    def next_message(self, max_bytes: int) -> bytes | Literal["Finalize"] | None:
        """What the socket needs next: audio (at most `max_bytes`), a Finalize, or nothing."""
        self._sent = max(self._sent, self.settled)  # audio let go is never sent
        limit = self.received
        finalize_due = self._finalizes_sent < len(self._pending)
        if finalize_due:
            limit = min(limit, self._pending[self._finalizes_sent])
        if self._sent < limit:
            end = min(limit, self._sent + max_bytes)
            start = self._sent - self.settled
            chunk = bytes(self._audio[start : start + end - self._sent])
            self._sent = end
            return chunk
        if finalize_due:
            self._finalizes_sent += 1
            return "Finalize"
        return None

    def results(
        self,
        text: str,
        *,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
        start_s: float,
        duration_s: float,
    ) -> list[TranscriptReceived]:
        """One `Results` message."""
        if not is_final:
            if not text:
                return []
            self._interim_open = True
            return [TranscriptReceived(text=text, final=False)]
        self._interim_open = False
        end = self._base + round((start_s + duration_s) * SAMPLE_RATE_HZ) * _BYTES_PER_SAMPLE
        end = min(end, self._sent)
        if text:
            self._words_since_turn = True
        end_of_turn = (speech_final or self._end_turn_due) and self._words_since_turn
        self._end_turn_due = False
        if from_finalize and self._owed:
            self._owed -= 1  # the late answer to a Finalize already settled otherwise
            from_finalize = False
        if from_finalize and self._finalizes_sent and self._pending:
            # Deepgram's answer to the oldest Finalize: all audio before it is settled.
            point = self._pending.popleft()
            self._finalizes_sent -= 1
            self._settle(max(end, min(point, self._sent)))
            return [self._finalized(text, end_of_turn), *self._answer_settled()]
        self._settle(end)
        if self._pending and self._pending[0] <= self.settled:
            # A final reaching the finalize point settles it, flagged or not.
            self._pop_pending()
            return [self._finalized(text, end_of_turn), *self._answer_settled()]
        if not text and not end_of_turn:
            return []  # Deepgram finalizes silence too
        if end_of_turn:
            self._words_since_turn = False
        return [TranscriptReceived(text=text, final=True, end_of_turn=end_of_turn)]

    def utterance_end(self) -> list[TranscriptReceived]:
        """An `UtteranceEnd`: ends the turn, once, and only after its words are final."""
        if self._interim_open:
            self._end_turn_due = True  # end the turn with the final of those words
            return []
        if not self._words_since_turn:
            return []  # speech_final already ended it
        self._words_since_turn = False
        return [TranscriptReceived(text="", final=True, end_of_turn=True)]

    def _settle(self, end: int) -> None:
        if end > self.settled:
            del self._audio[: end - self.settled]
            self.settled = end

    def _pop_pending(self) -> None:
        self._pending.popleft()
        if self._finalizes_sent:
            self._finalizes_sent -= 1
            self._owed += 1  # Deepgram may still answer that Finalize

    def _answer_settled(self) -> list[TranscriptReceived]:
        """Answer, in order, every finalize point whose audio is all settled already."""
        answers = []
        while self._pending and self._pending[0] <= self.settled:
            self._pop_pending()
            answers.append(self._finalized("", end_of_turn=False))
        return answers

    def _finalized(self, text: str, end_of_turn: bool) -> TranscriptReceived:
        self._words_since_turn = self._end_turn_due = False
        return TranscriptReceived(text=text, final=True, finalized=True, end_of_turn=end_of_turn)


class DeepgramSttStream:
    """One live transcription socket (reconnected as needed). Methods: any thread, at once."""

    def __init__(self, engine: DeepgramStt, call_id: str, sink: Sink) -> None:
        self._engine = engine
        self._loop = engine._loop
        self._settings = engine._settings
        self._sink = sink
        self._log = CallLogger(logger, {"call_id": call_id})
        self._muted = False  # set by cancel()/close() on the caller's thread: no more results
        # Everything below belongs to the loop thread.
        self._timeline = ListenTimeline(engine._max_unsettled_bytes)
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._keepalive: asyncio.TimerHandle | None = None
        self._keepalive_due = False
        self._last_sent_at = 0.0
        self._failures = 0
        self._post(self._start)

    # -- any thread ---------------------------------------------------------------------------

    def send(self, pcm: bytes, /) -> None:
        """Queue 16 kHz mono PCM16 audio."""
        self._post(self._accept_audio, pcm)

    def finalize(self) -> None:
        """Ask for one `finalized=True` result settling all audio sent so far."""
        self._post(self._accept_finalize)

    def cancel(self) -> None:
        """Drop the socket without waiting; no more results."""
        self._muted = True
        self._post(self._abort)

    def close(self) -> None:
        """Send CloseStream and let Deepgram close the socket; no more results. Idempotent."""
        self._muted = True
        self._post(self._begin_close)

    def _post(self, callback: Callable[..., object], *args: Any) -> None:
        # A closed loop means the server is shutting down, and the call with it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # -- loop thread --------------------------------------------------------------------------

    def _emit(self, *results: EngineResult) -> None:
        for result in results:
            if not self._muted:
                self._sink(result)

    def _start(self) -> None:
        if self._engine._setup_error is not None:
            self._log.warning("= deepgram stt unavailable: %s", self._engine._setup_error)
            self._emit(EngineFailed(error=str(self._engine._setup_error), gave_up=True))
            return
        if self._closing:
            return
        self._task = self._loop.create_task(self._run(), name="deepgram-stt")
        self._engine._tasks.add(self._task)
        self._task.add_done_callback(self._engine._tasks.discard)
        self._last_sent_at = self._loop.time()
        self._keepalive = self._loop.call_later(self._settings.keepalive_s, self._keepalive_tick)

    def _accept_audio(self, pcm: bytes) -> None:
        if self._closing or self._task is None:
            return
        let_go = self._timeline.add_audio(pcm)
        if let_go:
            self._log.warning("= deepgram stt: no final for too long; %d bytes let go", let_go)
        self._wake.set()

    def _accept_finalize(self) -> None:
        if self._closing or self._task is None:
            return
        self._emit(*self._timeline.finalize())
        self._wake.set()

    def _abort(self) -> None:
        self._closing = True
        self._stop_keepalive()
        if self._task is not None:
            self._task.cancel()

    def _begin_close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_keepalive()
        self._wake.set()
        if self._task is not None:
            self._loop.call_later(_CLOSE_GRACE_S, self._task.cancel)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _keepalive_tick(self) -> None:
        period = self._settings.keepalive_s
        idle = self._loop.time() - self._last_sent_at
        if idle >= period:
            self._keepalive_due = True
            self._wake.set()
            idle = 0.0
        self._keepalive = self._loop.call_later(period - idle, self._keepalive_tick)

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 -- a bug of ours: fail this stream, keep the loop
            self._log.exception("= deepgram stt stream crashed")
            self._emit(EngineFailed(error="deepgram: internal error", gave_up=True))
        finally:
            self._stop_keepalive()

    async def _connect_loop(self) -> None:
        attempts = self._settings.reconnect_attempts
        while not self._closing:
            try:
                async with self._engine._connect() as conn:
                    self._log.debug(
                        "= deepgram stt connected; resending %d bytes", self._timeline.unsettled
                    )
                    self._timeline.reconnected()
                    await self._session(conn)
                return
            except DEEPGRAM_ERRORS as exc:  # the seam: translated here
                error = from_deepgram(exc)
            if self._closing:
                return
            message = scrub(str(error), [self._engine._secret])
            if not error.transient or self._failures >= attempts:
                self._log.warning("= deepgram stt gave up: %s", message)
                self._emit(EngineFailed(error=message, gave_up=True))
                return
            self._failures += 1
            delay_s = self._settings.reconnect_backoff_ms * 2 ** (self._failures - 1) / 1000
            self._log.warning(
                "= deepgram stt: %s; reconnecting in %.0f ms (%d/%d)",
                message,
                delay_s * 1000,
                self._failures,
                attempts,
            )
            self._emit(
                EngineFailed(
                    error=f"{message}; reconnecting ({self._failures}/{attempts})", gave_up=False
                )
            )
            await asyncio.sleep(delay_s)

    async def _session(self, conn: AsyncV1SocketClient) -> None:
        """Run the reader and the writer until the socket closes; raise on a drop."""
        reader = asyncio.create_task(self._read(conn))
        writer = asyncio.create_task(self._write(conn))
        try:
            await asyncio.wait((reader, writer), return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        for task in (reader, writer):  # the reader's error says more (it has the close code)
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    async def _write(self, conn: AsyncV1SocketClient) -> None:
        """Bring the socket up to date with the timeline: audio, Finalizes, KeepAlive, close."""
        while True:
            if self._closing:
                await conn.send_close_stream()
                return
            message = self._timeline.next_message(_MAX_FRAME_BYTES)
            if message is None and self._keepalive_due:
                self._keepalive_due = False
                self._last_sent_at = self._loop.time()
                await conn.send_keep_alive()
            elif message is None:
                self._wake.clear()
                await self._wake.wait()
            else:
                self._keepalive_due = False
                self._last_sent_at = self._loop.time()
                if message == "Finalize":
                    await conn.send_finalize()
                else:
                    await conn.send_media(message)

    async def _read(self, conn: AsyncV1SocketClient) -> None:
        while True:
            try:
                message: object = await conn.recv()
            except websockets.exceptions.ConnectionClosed:
                if self._closing:
                    return
                raise
            self._failures = 0  # the socket works: a later drop starts a fresh count
            match message:
                case ListenV1Results(channel=channel):
                    alternatives = channel.alternatives
                    self._emit(
                        *self._timeline.results(
                            alternatives[0].transcript.strip() if alternatives else "",
                            is_final=bool(message.is_final),
                            speech_final=bool(message.speech_final),
                            from_finalize=bool(message.from_finalize),
                            start_s=message.start,
                            duration_s=message.duration,
                        )
                    )
                case ListenV1UtteranceEnd():
                    self._emit(*self._timeline.utterance_end())
                case ListenV1Error(variant=variant):
                    self._log.warning("< deepgram stt error message (%s)", variant)
                    self._emit(
                        EngineFailed(error=f"deepgram: error message ({variant})", gave_up=False)
                    )
                case _:
                    pass  # Metadata, SpeechStarted, ConfigureSuccess, unknown types (None)
