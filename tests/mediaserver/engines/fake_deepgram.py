"""A loopback Deepgram: the live listen (`/v1/listen`) and streaming speak (`/v1/speak`) sockets.

A real websockets server on 127.0.0.1, port 0, speaking the documented protocol
(https://developers.deepgram.com/reference/speech-to-text/listen-streaming and
.../text-to-speech/speak-streaming) to the real deepgram-sdk: `Authorization: Token <key>`
checked at the upgrade (401 otherwise), every field the SDK's models require, JSON text frames
for control messages and binary frames for audio.

Listen: fake audio encodes words, as in `tests/actors/fakes.py`: every sample of a voiced frame
is `1000 + id` and transcribes as the word `w<id>`; zeros are silence. The fake "hears" on the
audio timeline it received, like Deepgram: interim `Results` while a word runs, a final with
`speech_final` after `endpointing` ms of silence, empty finals over long silence,
`UtteranceEnd` after `utterance_end_ms`, a `from_finalize` final answering `Finalize` (what was
heard up to that point), finals and `Metadata` then close 1000 on `CloseStream`, close
1011 `NET-0001` after `idle_close_s` without audio or KeepAlive. Every connection starts a
fresh timeline, so a client that resends audio after a drop gets those words once more.

Speak: `Speak` text is buffered; `Flush` voices it (deterministic audio: `speech_pcm(text)`),
then sends `Flushed`; `Clear` drops buffered text and audio and sends `Cleared`; `Close`
finishes the queued audio and closes 1000. `Metadata` on connect.

Scripted faults and timings (`ListenScript`, `SpeakScript`): refuse the first handshakes
with given statuses (429, 500, ...), drop the TCP connection after N audio bytes on connection k
or when it gets a Finalize (no close frame: the client sees 1006), hang (accept and read, never
answer), delay the Finalize answer, turn endpointing off, delay first audio after a Flush and
pace the audio frames. For real speech (the latency bench), `fixed_transcript` makes every
segment with a loud frame transcribe as that text. Everything the
client sent is recorded per connection (`Connection`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

FRAME_MS = 20
LISTEN_RATE = 16_000


def word_audio(word_id: int, ms: int = 200, rate: int = LISTEN_RATE) -> bytes:
    """Audio that the fake transcribes as `w<word_id>`."""
    return np.full(rate * ms // 1000, 1000 + word_id, dtype=np.int16).tobytes()


def silence(ms: int, rate: int = LISTEN_RATE) -> bytes:
    return np.zeros(rate * ms // 1000, dtype=np.int16).tobytes()


def speech_pcm(text: str, bytes_per_char: int = 480) -> bytes:
    """The audio the fake speak socket sends for `text`: a ramp, so doubled or lost audio shows."""
    samples = len(text) * bytes_per_char // 2
    return (np.arange(samples) % 30_000).astype(np.int16).tobytes()


@dataclass
class ListenScript:
    interim_every_ms: int = 100
    endpointing: bool = True  # False: no speech_final; finals only on Finalize and CloseStream
    silent_final_every_ms: int | None = 1000  # empty finals over silence
    finalize_delay_ms: float = 0.0  # the from_finalize answer comes this long after Finalize
    answer_empty_finalize: bool = True  # False: a Finalize with nothing heard gets no answer
    # Real speech instead of word-encoded audio (the latency bench): any frame louder than
    # `voiced_above` is speech, and a segment with speech transcribes as this text.
    fixed_transcript: str | None = None
    voiced_above: int = 300
    refuse: list[int] = field(default_factory=list)  # statuses for the first handshakes
    drop_after_bytes: dict[int, int] = field(default_factory=dict)  # connection -> audio bytes
    drop_at_finalize: set[int] = field(default_factory=set)  # connections dropped on Finalize
    hang: bool = False
    idle_close_s: float = 10.0


@dataclass
class SpeakScript:
    first_audio_ms: float = 0.0  # after the Flush
    bytes_per_char: int = 480  # 10 ms of 24 kHz PCM16 per character
    frame_bytes: int = 4_800  # 100 ms at 24 kHz
    frame_interval_ms: float = 0.0
    refuse: list[int] = field(default_factory=list)
    drop_after_bytes: dict[int, int] = field(default_factory=dict)  # connection -> audio bytes
    hang: bool = False  # Metadata, then silence


@dataclass
class Connection:
    """What one client connection sent, and how it ended."""

    kind: Literal["listen", "speak"]
    number: int  # per kind, from 0
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    messages: list[dict[str, Any]] = field(default_factory=list)  # text frames, parsed
    audio: bytearray = field(default_factory=bytearray)  # binary frames, concatenated
    sent_audio: int = 0  # speak: audio bytes sent to the client
    closed: bool = False
    close_code: int | None = None

    def types(self) -> list[str]:
        return [str(m.get("type")) for m in list(self.messages)]


class FakeDeepgram:
    """Serve with `async with FakeDeepgram(...) as fake:`; point `deepgram.base_url` at `url`."""

    def __init__(
        self,
        *,
        api_key: str = "dg-test-key",
        listen: ListenScript | None = None,
        speak: SpeakScript | None = None,
    ) -> None:
        self.api_key = api_key
        self.listen = listen or ListenScript()
        self.speak = speak or SpeakScript()
        self.connections: list[Connection] = []
        self.handshakes: list[tuple[str, int]] = []  # (path, status) of every upgrade request
        self._attempts = {"listen": 0, "speak": 0}
        self._server: Server | None = None

    async def __aenter__(self) -> FakeDeepgram:
        self._server = await serve(
            self._handle, "127.0.0.1", 0, process_request=self._process_request
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def of(self, kind: Literal["listen", "speak"]) -> list[Connection]:
        return [c for c in list(self.connections) if c.kind == kind]

    # -- handshake ----------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        kind = _kind(request.path)
        if kind is None:
            self.handshakes.append((request.path, 404))
            return connection.respond(404, "Not Found\n")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            self.handshakes.append((request.path, 401))
            return connection.respond(401, '{"err_code":"INVALID_AUTH","err_msg":"Invalid"}\n')
        attempt = self._attempts[kind]
        self._attempts[kind] += 1
        script = self.listen if kind == "listen" else self.speak
        if attempt < len(script.refuse):
            status = script.refuse[attempt]
            self.handshakes.append((request.path, status))
            return connection.respond(status, '{"err_code":"SCRIPTED","err_msg":"scripted"}\n')
        self.handshakes.append((request.path, 101))
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        kind = _kind(request.path)
        assert kind is not None
        conn = Connection(
            kind=kind,
            number=len(self.of(kind)),
            path=request.path,
            query=dict(parse_qsl(urlsplit(request.path).query)),
            headers=dict(request.headers.raw_items()),
        )
        self.connections.append(conn)
        try:
            if kind == "listen":
                await self._listen(ws, conn)
            else:
                await self._speak(ws, conn)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            conn.close_code = ws.close_code

    # -- listen -------------------------------------------------------------------------------

    async def _listen(self, ws: ServerConnection, conn: Connection) -> None:
        script = self.listen
        rate = int(conn.query.get("sample_rate", LISTEN_RATE))
        endpointing = conn.query.get("endpointing", "10")
        utterance_end = conn.query.get("utterance_end_ms")
        heard = _Recognizer(
            rate=rate,
            endpointing_ms=(
                int(endpointing) if script.endpointing and endpointing != "false" else None
            ),
            utterance_end_ms=int(utterance_end) if utterance_end else None,
            interim_every_ms=script.interim_every_ms,
            silent_final_every_ms=script.silent_final_every_ms,
            fixed_transcript=script.fixed_transcript,
            voiced_above=script.voiced_above,
        )
        out = _Sender(ws)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), script.idle_close_s)
                except TimeoutError:
                    await ws.close(1011, "NET-0001")
                    return
                if isinstance(message, bytes):
                    conn.audio += message
                    drop_at = script.drop_after_bytes.get(conn.number)
                    if drop_at is not None and len(conn.audio) >= drop_at:
                        ws.transport.abort()
                        return
                    if not script.hang:
                        out.put(heard.feed(message))
                    continue
                data = json.loads(message)
                conn.messages.append(data)
                if script.hang:
                    continue
                match data.get("type"):
                    case "Finalize" if conn.number in script.drop_at_finalize:
                        ws.transport.abort()
                        return
                    case "Finalize":
                        answer = heard.finalize(script.answer_empty_finalize)
                        out.put([answer] if answer else [], delay_s=script.finalize_delay_ms / 1000)
                    case "CloseStream":
                        out.put([*heard.close(), _listen_metadata(heard.seconds)])
                        await out.drain()
                        await ws.close(1000)
                        return
                    case "KeepAlive":
                        pass
                    case _:
                        await ws.send(json.dumps(_error("SchemaError", message)))
        finally:
            out.stop()

    # -- speak --------------------------------------------------------------------------------

    async def _speak(self, ws: ServerConnection, conn: Connection) -> None:
        script = self.speak
        await ws.send(json.dumps(_speak_metadata(conn.query.get("model", "aura-2-thalia-en"))))
        buffered: list[str] = []
        jobs: asyncio.Queue[tuple[int, str, float] | None] = asyncio.Queue()
        flushes = 0
        player = asyncio.create_task(self._play(ws, conn, jobs))
        try:
            while True:
                data = json.loads(await ws.recv())
                conn.messages.append(data)
                if script.hang:
                    continue
                match data.get("type"):
                    case "Speak":
                        buffered.append(str(data["text"]))
                    case "Flush":
                        loop_time = asyncio.get_running_loop().time()
                        jobs.put_nowait((flushes, "".join(buffered), loop_time))
                        buffered.clear()
                        flushes += 1
                    case "Clear":
                        buffered.clear()
                        player.cancel()
                        await asyncio.gather(player, return_exceptions=True)
                        while not jobs.empty():
                            jobs.get_nowait()
                        await ws.send(json.dumps({"type": "Cleared", "sequence_id": flushes}))
                        player = asyncio.create_task(self._play(ws, conn, jobs))
                    case "Close":
                        jobs.put_nowait(None)
                        await player
                        await ws.close(1000)
                        return
                    case _:
                        await ws.send(
                            json.dumps({"type": "Warning", "description": "?", "code": "UNKNOWN"})
                        )
        finally:
            player.cancel()
            await asyncio.gather(player, return_exceptions=True)

    async def _play(
        self,
        ws: ServerConnection,
        conn: Connection,
        jobs: asyncio.Queue[tuple[int, str, float] | None],
    ) -> None:
        script = self.speak
        loop = asyncio.get_running_loop()
        drop_at = script.drop_after_bytes.get(conn.number)
        while (job := await jobs.get()) is not None:
            sequence_id, text, flushed_at = job
            wait_s = flushed_at + script.first_audio_ms / 1000 - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            pcm = speech_pcm(text, script.bytes_per_char)
            for start in range(0, len(pcm), script.frame_bytes):
                frame = pcm[start : start + script.frame_bytes]
                if drop_at is not None and conn.sent_audio + len(frame) > drop_at:
                    await ws.send(frame[: drop_at - conn.sent_audio])
                    conn.sent_audio = drop_at
                    ws.transport.abort()
                    return
                await ws.send(frame)
                conn.sent_audio += len(frame)
                if script.frame_interval_ms:
                    await asyncio.sleep(script.frame_interval_ms / 1000)
            await ws.send(json.dumps({"type": "Flushed", "sequence_id": sequence_id}))


class _Sender:
    """Sends a connection's messages in order; a delayed message holds back the ones after it."""

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[tuple[float, list[dict[str, Any]]]] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    def put(self, messages: list[dict[str, Any]], *, delay_s: float = 0.0) -> None:
        if messages or delay_s:
            self._queue.put_nowait((asyncio.get_running_loop().time() + delay_s, messages))

    async def drain(self) -> None:
        await self._queue.join()

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, messages = await self._queue.get()
            try:
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                for message in messages:
                    await self._ws.send(json.dumps(message))
            except ConnectionClosed:
                return
            finally:
                self._queue.task_done()


class _Recognizer:
    """The fake's ears: word-encoded audio in, Deepgram messages out, on the audio timeline."""

    def __init__(
        self,
        *,
        rate: int,
        endpointing_ms: int | None,
        utterance_end_ms: int | None,
        interim_every_ms: int,
        silent_final_every_ms: int | None,
        fixed_transcript: str | None = None,
        voiced_above: int = 300,
    ) -> None:
        self.rate = rate
        self.fixed_transcript = fixed_transcript
        self.voiced_above = voiced_above
        self.frame = rate * FRAME_MS // 1000
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.interim_every_ms = interim_every_ms
        self.silent_final_every_ms = silent_final_every_ms
        self._leftover = b""
        self.t = 0  # samples heard
        self._segment_start = 0
        self._words: list[tuple[int, int, int]] = []  # (id, start, end) not yet final
        self._current: tuple[int, int] | None = None  # (id, start) of the word being spoken
        self._silence_since: int | None = None
        self._last_word_end: int | None = None
        self._utterance_open = False
        self._since_interim_ms = 0

    @property
    def seconds(self) -> float:
        return self.t / self.rate

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        data = self._leftover + data
        usable = len(data) - len(data) % (self.frame * 2)
        self._leftover = data[usable:]
        samples = np.frombuffer(data[:usable], dtype=np.int16)
        events: list[dict[str, Any]] = []
        for start in range(0, len(samples), self.frame):
            if self.fixed_transcript is not None:
                loudest = int(np.abs(samples[start : start + self.frame].astype(np.int32)).max())
                events.extend(self._frame(0 if loudest > self.voiced_above else None))
                continue
            value = int(samples[start])
            events.extend(self._frame(value - 1000 if 1000 < value < 2000 else None))
        return events

    def finalize(self, answer_empty: bool) -> dict[str, Any] | None:
        self._end_word()
        if not self._words and not answer_empty:
            return None
        return self._final(speech_final=False, from_finalize=True)

    def close(self) -> list[dict[str, Any]]:
        self._end_word()
        return [self._final(speech_final=False)] if self._words else []

    def _frame(self, word: int | None) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if word is not None:
            if self._current is not None and self._current[0] != word:
                self._end_word()
            if self._current is None:
                self._current = (word, self.t)
            self._silence_since = None
        else:
            self._end_word()
            if self._silence_since is None:
                self._silence_since = self.t
        self.t += self.frame
        if word is not None:
            self._since_interim_ms += FRAME_MS
            if self._since_interim_ms >= self.interim_every_ms:
                self._since_interim_ms = 0
                events.append(self._result(is_final=False))
            return events
        assert self._silence_since is not None
        silent_ms = self._ms(self.t - self._silence_since)
        if self._words and self.endpointing_ms is not None and silent_ms >= self.endpointing_ms:
            events.append(self._final(speech_final=True))
        elif (
            not self._words
            and self.silent_final_every_ms is not None
            and self._ms(self.t - self._segment_start) >= self.silent_final_every_ms
        ):
            events.append(self._final(speech_final=False))
        if (
            self.utterance_end_ms is not None
            and self._utterance_open
            and self._last_word_end is not None
            and self._ms(self.t - self._last_word_end) >= self.utterance_end_ms
        ):
            self._utterance_open = False
            events.append(
                {
                    "type": "UtteranceEnd",
                    "channel": [0, 1],
                    "last_word_end": self._last_word_end / self.rate,
                }
            )
        return events

    def _ms(self, samples: int) -> float:
        return samples * 1000 / self.rate

    def _end_word(self) -> None:
        if self._current is not None:
            word, start = self._current
            self._words.append((word, start, self.t))
            self._last_word_end = self.t
            self._utterance_open = True
            self._current = None

    def _final(self, *, speech_final: bool, from_finalize: bool = False) -> dict[str, Any]:
        result = self._result(is_final=True, speech_final=speech_final, from_finalize=from_finalize)
        self._segment_start = self.t
        self._words = []
        self._since_interim_ms = 0
        return result

    def _result(
        self, *, is_final: bool, speech_final: bool = False, from_finalize: bool = False
    ) -> dict[str, Any]:
        words = list(self._words)
        if not is_final and self._current is not None:
            words.append((*self._current, self.t))
        items = [
            {
                "word": f"w{word}",
                "start": start / self.rate,
                "end": end / self.rate,
                "confidence": 0.99,
                "punctuated_word": f"w{word}",
            }
            for word, start, end in words
        ]
        transcript = " ".join(str(item["word"]) for item in items)
        if self.fixed_transcript is not None:
            transcript = self.fixed_transcript if items else ""
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": (self.t - self._segment_start) / self.rate,
            "start": self._segment_start / self.rate,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": transcript,
                        "confidence": 0.99 if items else 0.0,
                        "words": items,
                    }
                ]
            },
            "metadata": {
                "request_id": str(uuid.uuid4()),
                "model_info": {"name": "2-general-nova", "version": "fake", "arch": "nova-3"},
                "model_uuid": "00000000-0000-0000-0000-000000000003",
            },
        }


def _kind(path: str) -> Literal["listen", "speak"] | None:
    route = urlsplit(path).path
    if route.endswith("/v1/listen"):
        return "listen"
    if route.endswith("/v1/speak"):
        return "speak"
    return None


def _listen_metadata(duration_s: float) -> dict[str, Any]:
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": str(uuid.uuid4()),
        "sha256": "0" * 64,
        "created": "2025-01-01T00:00:00.000Z",
        "duration": duration_s,
        "channels": 1,
    }


def _speak_metadata(model: str) -> dict[str, Any]:
    return {
        "type": "Metadata",
        "request_id": str(uuid.uuid4()),
        "model_name": model,
        "model_version": "fake",
        "model_uuid": "00000000-0000-0000-0000-000000000002",
    }


def _error(variant: str, message: str) -> dict[str, Any]:
    return {"type": "Error", "variant": variant, "description": "bad message", "message": message}
