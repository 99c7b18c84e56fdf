"""OpenAI `/audio/speech` text-to-speech, streamed as raw PCM, as the call tree's `TtsEngine`.

Construction (composition root / engine catalog)::

    client = openai_client(settings.openai)             # one per process (HTTP connection pool)
    tts = OpenAITts(settings.openai, loop, client=client, voice=agent.voice or None)
    stream = tts.open(call_id, sink)                    # from any thread; see actors/engines.py

Wire protocol (https://platform.openai.com/docs/api-reference/audio/createSpeech,
https://platform.openai.com/docs/guides/text-to-speech): `POST {base_url}/audio/speech` with
`{"model", "voice", "input", "response_format": "pcm"}`, header `Authorization: Bearer <key>`;
the answer body is raw 24 kHz 16-bit little-endian mono PCM with no header, sent chunked. We
read it as it arrives (`with_streaming_response`) in `chunk_ms` pieces: each is a
`SpeechChunk(sample_rate=24000, text_index=i)` for the i-th sentence sent.

One request per sentence, one sentence at a time per stream, in the order sent, so chunks come
in sentence order; after `finalize()` and the last sentence's audio, `SpeechFinished`.

Failures: the SDK retries connection errors, timeouts, 429 and 5xx before the audio starts
(`openai.max_retries`, with backoff); `openai.timeout_s` bounds the connect and every read. When
the body breaks off mid-sentence, the engine asks for that sentence again (up to
`openai.max_retries` times, reporting `EngineFailed(gave_up=False)`) and skips the bytes already
delivered (the same text voices to about the same audio), so nothing is heard twice. Otherwise
the failure is translated at the seam (`provider_errors.from_openai`) into
`EngineFailed(gave_up=True)` and the stream stops.

Threads: `open` and the stream methods run on actor threads; each only hops onto the engine's
event loop with `call_soon_threadsafe` and returns. The worker task and every `sink` call run on
that loop. `cancel()` and `close()` cancel the worker, which closes the HTTP response; after they
return the sink is not called again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import openai
from openai import AsyncOpenAI

from actors.engines import EngineFailed, EngineResult, Sink, SpeechChunk, SpeechFinished
from config.settings import OpenAISettings
from mediaserver.engines.openai_llm import openai_client
from mediaserver.engines.provider_errors import (
    OPENAI_ERRORS,
    ProviderError,
    from_openai,
    scrub,
)
from mediaserver.logs import CallLogger

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 24_000  # `response_format="pcm"` is always 24 kHz mono PCM16


class _GaveUp(Exception):
    """The stream's failure has been reported; stop the worker."""


class _Interrupted(Exception):
    """A sentence's audio broke off after `delivered` bytes."""

    def __init__(self, delivered: int) -> None:
        super().__init__(f"interrupted after {delivered} bytes")
        self.delivered = delivered


class OpenAITts:
    """Speech from OpenAI's `/audio/speech` (or a compatible server): one request per sentence.

    Args:
        settings: the `openai` section (key, URL, `tts_model`, `tts_voice`, timeout, retries).
        loop: the event loop that runs every request; results are delivered from it.
        client: a shared client (`openai_client(settings)`); one is made from `settings` if None.
        voice: overrides `settings.tts_voice` (an agent's voice).
        chunk_ms: audio per `SpeechChunk`.
        instructions: speaking style for models that take it (not tts-1).
        retry_backoff_ms: pause before asking again for a sentence whose audio broke off.
    """

    def __init__(
        self,
        settings: OpenAISettings,
        loop: asyncio.AbstractEventLoop,
        *,
        client: AsyncOpenAI | None = None,
        voice: str | None = None,
        chunk_ms: int = 100,
        instructions: str | None = None,
        retry_backoff_ms: int = 200,
    ) -> None:
        self._settings = settings
        self._loop = loop
        self.voice = voice or settings.tts_voice
        self._chunk_bytes = SAMPLE_RATE_HZ * 2 * chunk_ms // 1000
        self._instructions = instructions
        self._retry_backoff_s = retry_backoff_ms / 1000
        self._secret = settings.api_key.get_secret_value() if settings.api_key else None
        self._client = client
        self._owns_client = client is None
        self._setup_error: ProviderError | None = None
        if client is None:
            try:
                self._client = openai_client(settings)
            except ProviderError as exc:
                self._setup_error = exc
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, call_id: str, sink: Sink) -> OpenAITtsStream:
        """Open a stream for one reply. Any thread; returns at once."""
        return OpenAITtsStream(self, call_id, sink)

    async def aclose(self) -> None:
        """Cancel every request in flight and close the client if it made it (on the loop)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None and self._owns_client:
            await self._client.close()

    async def _voice(self, text: str, index: int, skip: int, emit: Sink) -> int:
        """Stream one sentence's audio, skipping its first `skip` bytes; return bytes delivered.

        Raises:
            _Interrupted: the body broke off after the audio started; `delivered` says how far.
            Whatever the SDK raises before the audio starts.
        """
        assert self._client is not None
        delivered = skip
        received = 0
        carry = b""
        async with self._client.audio.speech.with_streaming_response.create(
            model=self._settings.tts_model,
            voice=self.voice,
            input=text,
            response_format="pcm",
            instructions=openai.omit if self._instructions is None else self._instructions,
        ) as response:
            try:
                async for data in response.iter_bytes(self._chunk_bytes):
                    start = received
                    received += len(data)
                    if received <= delivered:
                        continue  # voiced before the body broke off last time
                    piece = carry + data[max(0, delivered - start) :]
                    cut = len(piece) - len(piece) % 2  # whole samples only
                    piece, carry = piece[:cut], piece[cut:]
                    if piece:
                        delivered += len(piece)
                        emit(SpeechChunk(pcm=piece, sample_rate=SAMPLE_RATE_HZ, text_index=index))
            except OPENAI_ERRORS as exc:
                raise _Interrupted(delivered) from exc
        return delivered


class OpenAITtsStream:
    """One reply's speech: its sentences, voiced one at a time. Methods: any thread, at once."""

    def __init__(self, engine: OpenAITts, call_id: str, sink: Sink) -> None:
        self._engine = engine
        self._loop = engine._loop
        self._sink = sink
        self._log = CallLogger(logger, {"call_id": call_id})
        self._muted = False  # set by cancel()/close() on the caller's thread: no more results
        # Everything below belongs to the loop thread.
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sentences: list[str] = []
        self._finalized = False
        self._stopped = False

    def send(self, sentence: str, /) -> None:
        """Voice one more sentence; its chunks carry the index of this call (from 0)."""
        self._post(self._accept_sentence, sentence)

    def finalize(self) -> None:
        """No more text: `SpeechFinished` follows the last sentence's audio."""
        self._post(self._accept_finalize)

    def cancel(self) -> None:
        """Barge-in: abandon the request in flight; no more results."""
        self._muted = True
        self._post(self._stop)

    def close(self) -> None:
        """Release the stream; no more results. Idempotent."""
        self._muted = True
        self._post(self._stop)

    def _post(self, callback: Callable[..., object], *args: Any) -> None:
        # A closed loop means the server is shutting down, and the call with it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # -- loop thread --------------------------------------------------------------------------

    def _emit(self, result: EngineResult) -> None:
        if not self._muted:
            self._sink(result)

    def _accept_sentence(self, sentence: str) -> None:
        if self._stopped or self._finalized:
            return
        self._sentences.append(sentence)
        self._ensure_worker()
        self._wake.set()

    def _accept_finalize(self) -> None:
        if self._stopped:
            return
        self._finalized = True
        self._ensure_worker()
        self._wake.set()

    def _ensure_worker(self) -> None:
        if self._task is not None:
            return
        self._task = self._loop.create_task(self._work(), name="openai-tts")
        self._engine._tasks.add(self._task)
        self._task.add_done_callback(self._engine._tasks.discard)

    def _stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def _work(self) -> None:
        if self._engine._setup_error is not None:
            self._log.warning("= openai tts unavailable: %s", self._engine._setup_error)
            self._emit(EngineFailed(error=str(self._engine._setup_error), gave_up=True))
            return
        index = 0
        try:
            while True:
                if index < len(self._sentences):
                    text = self._sentences[index]
                    if text.strip():
                        await self._say(text, index)
                    index += 1
                elif self._finalized:
                    self._emit(SpeechFinished())
                    return
                else:
                    self._wake.clear()
                    await self._wake.wait()
        except _GaveUp:
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 -- a bug of ours: fail this stream, keep the loop
            self._log.exception("= openai tts stream crashed")
            self._emit(EngineFailed(error="openai: internal error", gave_up=True))

    async def _say(self, text: str, index: int) -> None:
        """Voice one sentence, asking again when its audio breaks off."""
        retries = self._engine._settings.max_retries
        delivered = failures = 0
        started = self._loop.time()
        while True:
            try:
                delivered = await self._engine._voice(text, index, delivered, self._emit)
            except _Interrupted as exc:
                delivered = exc.delivered
                error = from_openai(exc.__cause__ or exc)
                if error.transient and failures < retries:
                    failures += 1
                    message = self._scrub(str(error))
                    self._log.warning(
                        "= openai tts: %s after %d bytes; asking again (%d/%d)",
                        message,
                        delivered,
                        failures,
                        retries,
                    )
                    self._emit(
                        EngineFailed(
                            error=f"{message}; asking again ({failures}/{retries})", gave_up=False
                        )
                    )
                    await asyncio.sleep(self._engine._retry_backoff_s * 2 ** (failures - 1))
                    continue
                self._give_up(error)
            except OPENAI_ERRORS as exc:  # the seam: translated here
                self._give_up(from_openai(exc))
            self._log.debug(
                "< openai tts sentence %d: %d bytes in %.0f ms",
                index,
                delivered,
                (self._loop.time() - started) * 1000,
            )
            return

    def _give_up(self, error: ProviderError) -> None:
        message = self._scrub(str(error))
        self._log.warning("= openai tts gave up: %s", message)
        self._emit(EngineFailed(error=message, gave_up=True))
        raise _GaveUp

    def _scrub(self, text: str) -> str:
        return scrub(text, [self._engine._secret])
