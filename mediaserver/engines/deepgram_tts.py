"""Deepgram Aura streaming text-to-speech (`/v1/speak` websocket) as the call tree's `TtsEngine`.

Construction (composition root / engine catalog)::

    tts = DeepgramTts(settings.deepgram, loop)      # loop: the server's asyncio event loop
    stream = tts.open(call_id, sink)                # from any thread; see actors/engines.py

An engine is cheap: sockets are per stream. Pass `client=deepgram_client(settings.deepgram)`
to share one client between engines, and `model=` for an agent's own Aura voice.

Wire protocol (https://developers.deepgram.com/reference/text-to-speech/speak-streaming,
https://developers.deepgram.com/docs/tts-websocket): `wss://api.deepgram.com/v1/speak?model=aura-2-thalia-en&encoding=linear16&
sample_rate=24000`, header `Authorization: Token <key>`. We send the text frames
`{"type":"Speak","text":…}`, `{"type":"Flush"}`, `{"type":"Clear"}` and `{"type":"Close"}`;
Deepgram sends raw PCM16 in binary frames (no container), `Metadata`, `Flushed` (all audio of
that flush was sent), `Cleared` and `Warning` (for instance more than 20 flushes a minute).

Mapping: each `send(sentence)` becomes Speak + Flush. Flushes are answered in order, so the
audio that arrives before the k-th `Flushed` voices the k-th sentence sent:
`SpeechChunk(text_index=k)` at `sample_rate_hz`. After `finalize()`, the last `Flushed` brings
`SpeechFinished` and the engine sends Close. `cancel()` (barge-in) sends Clear then Close and
delivers nothing more; audio still in flight is dropped. The socket is opened by `open()`, so
its handshake overlaps the LLM's first token.

Threads: `open` and the stream methods run on actor threads; each only hops onto the engine's
event loop with `call_soon_threadsafe` and returns. The socket, its reader and writer tasks and
every `sink` call run on that loop. After `cancel()` or `close()` returns, the sink is not
called again.

Reconnect policy: when the socket drops (or a handshake fails with 429/5xx/a timeout), the
engine reports `EngineFailed(gave_up=False)`, waits `reconnect_backoff_ms * 2**(n-1)`,
reconnects and sends again every sentence whose `Flushed` had not come. For the sentence that
was cut, the audio already delivered is skipped (by byte count: Aura voices the same text to
about the same audio), so nothing is heard twice. The count resets once the new socket delivers
audio; after `reconnect_attempts` failures in a row, or at once for 401/403, it sends
`EngineFailed(gave_up=True)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import websockets.exceptions
from deepgram import AsyncDeepgramClient
from deepgram.speak.v1.socket_client import AsyncV1SocketClient
from deepgram.speak.v1.types import SpeakV1Text

from actors.engines import EngineFailed, EngineResult, Sink, SpeechChunk, SpeechFinished
from config.settings import DeepgramSettings
from mediaserver.engines.deepgram_stt import deepgram_client
from mediaserver.engines.provider_errors import (
    DEEPGRAM_ERRORS,
    ProviderError,
    from_deepgram,
    scrub,
)
from mediaserver.logs import CallLogger

logger = logging.getLogger(__name__)

_CLOSE_GRACE_S = 2.0  # after Close, how long Deepgram may take to close the socket


class DeepgramTts:
    """Text to speech over Deepgram's Aura websocket: one socket per stream (per reply).

    Args:
        settings: the `deepgram` section (key, URL, `tts_model`, reconnect policy).
        loop: the event loop that runs every socket; results are delivered from it.
        client: a shared client (`deepgram_client(settings)`); one is made from `settings` if None.
        model: overrides `settings.tts_model` (the voice, e.g. an agent's `aura-2-…-en`).
        sample_rate_hz: linear16 rate asked of Deepgram (8000, 16000, 24000, 32000 or 48000).
    """

    def __init__(
        self,
        settings: DeepgramSettings,
        loop: asyncio.AbstractEventLoop,
        *,
        client: AsyncDeepgramClient | None = None,
        model: str | None = None,
        sample_rate_hz: int = 24_000,
    ) -> None:
        self._settings = settings
        self._loop = loop
        self.model = model or settings.tts_model
        self.sample_rate_hz = sample_rate_hz
        self._secret = settings.api_key.get_secret_value() if settings.api_key else None
        self._client = client
        self._setup_error: ProviderError | None = None
        if client is None:
            try:
                self._client = deepgram_client(settings)
            except ProviderError as exc:
                self._setup_error = exc
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, call_id: str, sink: Sink) -> DeepgramTtsStream:
        """Open a stream; connects at once, on the loop. Any thread; returns at once."""
        return DeepgramTtsStream(self, call_id, sink)

    async def aclose(self) -> None:
        """Cancel every live stream and wait for its socket to close (on the loop)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _connect(self) -> contextlib.AbstractAsyncContextManager[AsyncV1SocketClient]:
        assert self._client is not None
        # `AsyncDeepgramClient.speak` is an unannotated property: name the type here.
        connection: contextlib.AbstractAsyncContextManager[AsyncV1SocketClient]
        connection = self._client.speak.v1.connect(
            model=self.model,
            encoding="linear16",
            sample_rate=str(self.sample_rate_hz),
        )
        return connection


class DeepgramTtsStream:
    """One reply's speech socket (reconnected as needed). Methods: any thread, at once."""

    def __init__(self, engine: DeepgramTts, call_id: str, sink: Sink) -> None:
        self._engine = engine
        self._loop = engine._loop
        self._sink = sink
        self._log = CallLogger(logger, {"call_id": call_id})
        self._muted = False  # set by cancel()/close() on the caller's thread: no more results
        # Everything below belongs to the loop thread.
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._clear = False  # cancel(): Clear before Close
        self._failures = 0
        self._sentences: list[str] = []
        self._voiced: list[int] = []  # bytes delivered per sentence
        self._finalized = False
        self._finished = False
        # Per connection.
        self._connected_now = False
        self._next = 0  # the next sentence to send on this socket
        self._in_flight: deque[int] = deque()  # flushed on this socket, `Flushed` not yet back
        self._head_bytes = 0  # audio received on this socket for `_in_flight[0]`
        self._post(self._start)

    # -- any thread ---------------------------------------------------------------------------

    def send(self, sentence: str, /) -> None:
        """Voice one more sentence; its chunks carry the index of this call (from 0)."""
        self._post(self._accept_sentence, sentence)

    def finalize(self) -> None:
        """No more text: `SpeechFinished` follows the last sentence's audio."""
        self._post(self._accept_finalize)

    def cancel(self) -> None:
        """Barge-in: Clear, Close, and no more results."""
        self._muted = True
        self._post(self._stop, True)

    def close(self) -> None:
        """Close the socket; no more results. Idempotent."""
        self._muted = True
        self._post(self._stop, False)

    def _post(self, callback: Callable[..., object], *args: Any) -> None:
        # A closed loop means the server is shutting down, and the call with it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # -- loop thread --------------------------------------------------------------------------

    def _emit(self, result: EngineResult) -> None:
        if not self._muted:
            self._sink(result)

    def _start(self) -> None:
        if self._engine._setup_error is not None:
            self._log.warning("= deepgram tts unavailable: %s", self._engine._setup_error)
            self._emit(EngineFailed(error=str(self._engine._setup_error), gave_up=True))
            return
        if self._closing:
            return
        self._task = self._loop.create_task(self._run(), name="deepgram-tts")
        self._engine._tasks.add(self._task)
        self._task.add_done_callback(self._engine._tasks.discard)

    def _accept_sentence(self, sentence: str) -> None:
        if self._closing or self._finalized:
            return
        self._sentences.append(sentence)
        self._voiced.append(0)
        self._wake.set()

    def _accept_finalize(self) -> None:
        if self._closing or self._task is None:
            return
        self._finalized = True
        self._maybe_finish()

    def _stop(self, clear: bool) -> None:
        if self._closing and not clear:
            return
        self._closing = True
        self._clear = self._clear or clear
        if self._task is None:
            return
        if not self._connected_now:
            self._task.cancel()  # nothing to say to Deepgram yet
            return
        self._wake.set()
        self._loop.call_later(_CLOSE_GRACE_S, self._task.cancel)

    def _maybe_finish(self) -> None:
        if self._finished or not self._finalized:
            return
        if self._next < len(self._sentences) or self._in_flight:
            return
        self._finished = True
        self._emit(SpeechFinished())
        self._stop(False)

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 -- a bug of ours: fail this stream, keep the loop
            self._log.exception("= deepgram tts stream crashed")
            self._emit(EngineFailed(error="deepgram: internal error", gave_up=True))

    async def _connect_loop(self) -> None:
        attempts = self._engine._settings.reconnect_attempts
        while not self._closing:
            try:
                async with self._engine._connect() as conn:
                    self._connected()
                    try:
                        await self._session(conn)
                    finally:
                        self._connected_now = False
                return
            except DEEPGRAM_ERRORS as exc:  # the seam: translated here
                error = from_deepgram(exc)
            if self._closing:
                return
            message = scrub(str(error), [self._engine._secret])
            if not error.transient or self._failures >= attempts:
                self._log.warning("= deepgram tts gave up: %s", message)
                self._emit(EngineFailed(error=message, gave_up=True))
                return
            self._failures += 1
            delay_s = self._engine._settings.reconnect_backoff_ms * 2 ** (self._failures - 1) / 1000
            self._log.warning(
                "= deepgram tts: %s; reconnecting in %.0f ms (%d/%d)",
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

    def _connected(self) -> None:
        self._connected_now = True
        if self._in_flight:  # say again what was not fully voiced
            self._next = self._in_flight[0]
            self._in_flight.clear()
        self._head_bytes = 0
        self._wake.set()

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
        while True:
            if self._closing:
                if self._clear:
                    await conn.send_clear()
                await conn.send_close()
                if self._clear and self._task is not None:
                    self._task.cancel()  # barge-in: nothing more is wanted from this socket
                return
            if self._next < len(self._sentences):
                index = self._next
                self._next += 1
                text = self._sentences[index]
                if text.strip():
                    self._in_flight.append(index)
                    await conn.send_text(SpeakV1Text(text=text))
                    await conn.send_flush()
                else:
                    self._maybe_finish()  # nothing to voice
                continue
            self._wake.clear()
            await self._wake.wait()

    async def _read(self, conn: AsyncV1SocketClient) -> None:
        while True:
            try:
                message: object = await conn.recv()
            except websockets.exceptions.ConnectionClosed:
                if self._closing:
                    return
                raise
            if isinstance(message, bytes):
                self._on_audio(message)
                continue
            kind = getattr(message, "type", None)
            if kind == "Flushed":
                self._failures = 0
                if self._in_flight:
                    self._in_flight.popleft()
                    self._head_bytes = 0
                self._maybe_finish()
            elif kind == "Warning":
                self._log.warning("< deepgram tts warning (%s)", getattr(message, "code", "?"))

    def _on_audio(self, data: bytes) -> None:
        if self._closing or not self._in_flight:
            return  # after Clear, or not ours
        self._failures = 0
        index = self._in_flight[0]
        start = self._head_bytes
        self._head_bytes += len(data)
        skip = self._voiced[index] - start  # delivered before a reconnect
        if skip >= len(data):
            return
        piece = data[max(0, skip) :]
        self._voiced[index] += len(piece)
        self._emit(
            SpeechChunk(pcm=piece, sample_rate=self._engine.sample_rate_hz, text_index=index)
        )
