"""A loopback OpenAI: `POST /v1/chat/completions` (SSE) and `POST /v1/audio/speech` (PCM).

A small HTTP/1.1 server on raw asyncio streams (127.0.0.1, port 0), so every byte and every fault
is in the test's hands, speaking what the real openai SDK expects
(https://platform.openai.com/docs/api-reference/chat/create): `Authorization: Bearer <key>` (401
with an OpenAI error body otherwise: the body quotes the key, as OpenAI's does, to prove it never
reaches our errors); chat answers `200 text/event-stream`, chunked, one `data: {chunk}` event per
chunk: a role chunk, one chunk per token, a `finish_reason` chunk, a `choices: []` usage chunk when
`stream_options.include_usage` asks for it, `data: [DONE]`, then the terminating zero-length chunk
(the SDK drains the body after [DONE]). Speech answers `200`, chunked raw 24 kHz PCM16:
`speech_pcm(input)`, a ramp, so lost or doubled audio shows. Connections are kept alive.

Scripted faults and timings (`ChatScript`, `SpeechScript`): the first requests answered with
given statuses (429, 500, ... with `retry-after-ms` so the SDK's backoff stays short), hang
(never answer), stall after N tokens, drop the TCP connection after N tokens or N audio bytes,
an error event inside the stream, first token after N ms then one every M ms, first audio after
N ms with paced chunks. Every request is recorded (`Recorded`), and so is every client that went
away before its answer was complete (`disconnects`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tests.mediaserver.engines.fake_deepgram import speech_pcm

_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    429: ("requests", "rate_limit_exceeded"),
}


def tokens_of(text: str) -> list[str]:
    """How the fake splits a reply into streamed tokens: words with their leading space."""
    return re.findall(r"\s*\S+", text)


@dataclass
class ChatScript:
    reply: str = "Hello there. How can I help you today?"
    first_token_ms: float = 0.0
    token_interval_ms: float = 0.0
    statuses: list[int] = field(default_factory=list)  # for the first requests, in order
    error_code: str | None = None  # overrides the error body's `code`
    hang: bool = False  # never answer
    stall_after_tokens: int | None = None  # then send nothing more
    drop_after_tokens: int | None = None  # then drop the TCP connection
    error_after_tokens: int | None = None  # then `data: {"error": ...}`
    honour_include_usage: bool = True  # False: like servers that ignore stream_options


@dataclass
class SpeechScript:
    first_audio_ms: float = 0.0
    bytes_per_char: int = 480  # 10 ms of 24 kHz PCM16 per character
    chunk_bytes: int = 4_800
    chunk_interval_ms: float = 0.0
    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    drop_after_bytes: dict[int, int] = field(default_factory=dict)  # request number -> bytes


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]


class FakeOpenAI:
    """Serve with `async with FakeOpenAI(...) as fake:`; point `openai.base_url` at `base_url`."""

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        chat: ChatScript | None = None,
        speech: SpeechScript | None = None,
    ) -> None:
        self.api_key = api_key
        self.chat = chat or ChatScript()
        self.speech = speech or SpeechScript()
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self._counts = {"chat": 0, "speech": 0}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def of(self, path: str) -> list[Recorded]:
        return [r for r in list(self.requests) if r.path == path]

    # -- HTTP/1.1 -----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while (request := await _read_request(reader)) is not None:
                self.requests.append(request)
                if not await self._answer(request, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnects += 1
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(
        self, request: Recorded, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is finished with."""
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            await _error(writer, 401, f"Incorrect API key provided: {given}.")
            return True
        if request.method == "POST" and request.path == "/v1/chat/completions":
            return await self._chat(request, reader, writer)
        if request.method == "POST" and request.path == "/v1/audio/speech":
            return await self._speech(request, reader, writer)
        await _error(writer, 404, "Unknown route.")
        return True

    async def _chat(
        self, request: Recorded, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        script = self.chat
        number = self._counts["chat"]
        self._counts["chat"] += 1
        if number < len(script.statuses):
            await _error(writer, script.statuses[number], "Scripted failure.", script.error_code)
            return True
        if script.hang:
            await self._until_client_leaves(reader)
            return False
        await _chunked_head(writer, "text/event-stream")
        model = str(request.body.get("model", "gpt-4o-mini"))
        await asyncio.sleep(script.first_token_ms / 1000)
        await _event(writer, _chunk(model, {"role": "assistant", "content": ""}))
        tokens = tokens_of(script.reply)
        for n, token in enumerate(tokens):
            if n == script.stall_after_tokens:
                await self._until_client_leaves(reader)
                return False
            if n == script.drop_after_tokens:
                writer.transport.abort()
                return False
            if n == script.error_after_tokens:
                await _event(
                    writer,
                    {
                        "error": {
                            "message": "The server had an error.",
                            "type": "server_error",
                            "code": None,
                        }
                    },
                )
                await _end(writer)
                return True
            if n and script.token_interval_ms:
                await asyncio.sleep(script.token_interval_ms / 1000)
            await _event(writer, _chunk(model, {"content": token}))
        await _event(writer, _chunk(model, {}, finish_reason="stop"))
        options = request.body.get("stream_options") or {}
        if options.get("include_usage") and script.honour_include_usage:
            prompt = sum(len(str(m.get("content", ""))) for m in request.body["messages"]) // 4
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": len(tokens),
                "total_tokens": prompt + len(tokens),
            }
            await _event(writer, {**_chunk(model, {}), "choices": [], "usage": usage})
        writer.write(_frame(b"data: [DONE]\n\n"))
        await _end(writer)
        return True

    async def _speech(
        self, request: Recorded, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        script = self.speech
        number = self._counts["speech"]
        self._counts["speech"] += 1
        if number < len(script.statuses):
            await _error(writer, script.statuses[number], "Scripted failure.")
            return True
        if script.hang:
            await self._until_client_leaves(reader)
            return False
        await _chunked_head(writer, "audio/pcm")
        await asyncio.sleep(script.first_audio_ms / 1000)
        pcm = speech_pcm(str(request.body["input"]), script.bytes_per_char)
        drop_at = script.drop_after_bytes.get(number)
        for start in range(0, len(pcm), script.chunk_bytes):
            if start and script.chunk_interval_ms:
                await asyncio.sleep(script.chunk_interval_ms / 1000)
            piece = pcm[start : start + script.chunk_bytes]
            if drop_at is not None and start + len(piece) > drop_at:
                writer.write(_frame(piece[: drop_at - start]))
                await writer.drain()
                writer.transport.abort()
                return False
            writer.write(_frame(piece))
            await writer.drain()
        await _end(writer)
        return True

    async def _until_client_leaves(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        self.disconnects += 1


async def _read_request(reader: asyncio.StreamReader) -> Recorded | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    body = json.loads(raw) if raw else {}
    return Recorded(method=method, path=target.split("?", 1)[0], headers=headers, body=body)


async def _error(
    writer: asyncio.StreamWriter, status: int, message: str, code: str | None = None
) -> None:
    kind, default_code = _ERRORS.get(status, ("server_error", "server_error"))
    body = json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code or default_code}}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "retry-after-ms: 10\r\n"
        "\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


async def _chunked_head(writer: asyncio.StreamWriter, content_type: str) -> None:
    writer.write(
        (
            f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
        ).encode()
    )
    await writer.drain()


def _frame(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _event(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    writer.write(_frame(f"data: {json.dumps(payload)}\n\n".encode()))
    await writer.drain()


async def _end(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": None,
    }
