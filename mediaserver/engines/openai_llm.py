"""OpenAI chat completions, streamed, as the call tree's `LlmEngine`.

Construction (composition root / engine catalog)::

    client = openai_client(settings.openai)         # one per process (HTTP connection pool)
    llm = OpenAILlm(settings.openai, loop, client=client)   # loop: the server's event loop
    stream = llm.open(call_id, sink)                # from any thread; see actors/engines.py
    stream.send(ReplyRequest(...))

Wire protocol (https://platform.openai.com/docs/api-reference/chat/create,
https://platform.openai.com/docs/api-reference/chat-streaming): `POST {base_url}/chat/completions`
with `stream: true` and `stream_options: {"include_usage": true}`, header `Authorization: Bearer
<key>`; the answer is server-sent events `data: {chat.completion.chunk}`: content pieces in
`choices[0].delta.content`, then a chunk with `choices: []` and `usage`, then `data: [DONE]`. Each
content piece becomes a `TokenReceived`, the end one `ReplyCompleted(tokens_in, tokens_out)` (zeros
when the server reports no usage, as some OpenAI-compatible servers do).

`openai.base_url` points the engine at any OpenAI-compatible server (include the `/v1`):
Ollama `http://localhost:11434/v1`, vLLM `http://host:8000/v1`, llama.cpp `http://host:8080/v1`.
Without a key such a server gets a placeholder key; OpenAI itself (empty `base_url`) needs one.
Key, URL, timeout and retries are passed to the SDK explicitly; it never reads `OPENAI_API_KEY`
or `OPENAI_BASE_URL` for us.

History budget: `ReplyRequest.messages` is trimmed to `openai.context_budget_tokens`, estimated
at 4 characters a token plus 4 tokens a message (`estimate_tokens`): the system prompt and the
newest message always stay, then as many of the newest others as fit, oldest dropped first.

Failures: the SDK retries connection errors, timeouts, 408, 409, 429 and 5xx itself,
`openai.max_retries` times with backoff, before any token arrived; `openai.timeout_s` bounds
the connect and every read, so a server that stops mid-stream times out too. What remains is
translated at the seam (`provider_errors.from_openai`) into one `EngineFailed(gave_up=True)`:
a reply cannot be resumed mid-stream without doubling text, so the Responder decides (it asks
once more, or apologizes).

Threads: `open` and the stream methods run on actor threads; each only hops onto the engine's
event loop with `call_soon_threadsafe` and returns. The request task and every `sink` call run
on that loop. `cancel()` and `close()` cancel the request task, which closes the HTTP response;
after they return the sink is not called again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import openai
from openai import AsyncOpenAI
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)

from actors.engines import (
    ChatMessage,
    EngineFailed,
    EngineResult,
    ReplyCompleted,
    ReplyRequest,
    Sink,
    TokenReceived,
)
from config.settings import OpenAISettings
from mediaserver.engines.provider_errors import (
    OPENAI_ERRORS,
    ProviderAuthFailed,
    ProviderError,
    from_openai,
    scrub,
)
from mediaserver.logs import CallLogger

logger = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators, roughly, per message
_PLACEHOLDER_KEY = "not-needed"  # OpenAI-compatible local servers accept any key


def openai_client(settings: OpenAISettings) -> AsyncOpenAI:
    """An async client with key, URL, timeout and retries passed explicitly.

    Raises:
        ProviderAuthFailed: no key, and `base_url` is OpenAI's own.
    """
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if not key:
        if not settings.base_url:
            raise ProviderAuthFailed("openai", "no API key configured (openai.api_key)")
        key = _PLACEHOLDER_KEY
    return AsyncOpenAI(
        api_key=key,
        base_url=settings.base_url or OPENAI_BASE_URL,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )


def estimate_tokens(text: str) -> int:
    """Tokens of one message, estimated: 4 characters a token, plus the message's overhead."""
    return -(-len(text) // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS


def trim_history(
    messages: Sequence[ChatMessage], budget_tokens: int, *, reserved_tokens: int = 0
) -> list[ChatMessage]:
    """The newest messages that fit `budget_tokens - reserved_tokens`, in order.

    The newest message is always kept (it is what the reply answers), even over budget.
    """
    kept: list[ChatMessage] = []
    left = budget_tokens - reserved_tokens
    for message in reversed(messages):
        cost = estimate_tokens(message.content)
        if kept and cost > left:
            break
        kept.append(message)
        left -= cost
    kept.reverse()
    return kept


def chat_messages(request: ReplyRequest, budget_tokens: int) -> list[ChatCompletionMessageParam]:
    """The request's system prompt and history, trimmed to the budget, in the wire's shape."""
    params: list[ChatCompletionMessageParam] = []
    reserved = 0
    if request.system_prompt:
        params.append(_param(ChatMessage(role="system", content=request.system_prompt)))
        reserved = estimate_tokens(request.system_prompt)
    params.extend(
        _param(m) for m in trim_history(request.messages, budget_tokens, reserved_tokens=reserved)
    )
    return params


def _param(message: ChatMessage) -> ChatCompletionMessageParam:
    match message.role:
        case "system":
            return ChatCompletionSystemMessageParam(role="system", content=message.content)
        case "assistant":
            return ChatCompletionAssistantMessageParam(role="assistant", content=message.content)
        case _:
            return ChatCompletionUserMessageParam(role="user", content=message.content)


class OpenAILlm:
    """Reply text from any OpenAI-compatible chat completions endpoint; one request per stream.

    Args:
        settings: the `openai` section (key, URL, model, timeout, retries, history budget).
        loop: the event loop that runs every request; results are delivered from it.
        client: a shared client (`openai_client(settings)`); one is made from `settings` if None.
        model: overrides `settings.model`.
        temperature, max_completion_tokens: sent when given; the server's default otherwise.
    """

    def __init__(
        self,
        settings: OpenAISettings,
        loop: asyncio.AbstractEventLoop,
        *,
        client: AsyncOpenAI | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_completion_tokens: int | None = None,
    ) -> None:
        self._settings = settings
        self._loop = loop
        self.model = model or settings.model
        self._temperature = temperature
        self._max_completion_tokens = max_completion_tokens
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

    def open(self, call_id: str, sink: Sink) -> OpenAILlmStream:
        """Open a stream for one reply. Any thread; returns at once."""
        return OpenAILlmStream(self, call_id, sink)

    async def aclose(self) -> None:
        """Cancel every request in flight and close the client if it made it (on the loop)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None and self._owns_client:
            await self._client.close()

    async def _complete(self, request: ReplyRequest, emit: Sink) -> ReplyCompleted:
        assert self._client is not None
        stream = await self._client.chat.completions.create(
            model=self.model,
            messages=chat_messages(request, self._settings.context_budget_tokens),
            stream=True,
            stream_options={"include_usage": True},
            temperature=openai.omit if self._temperature is None else self._temperature,
            max_completion_tokens=(
                openai.omit if self._max_completion_tokens is None else self._max_completion_tokens
            ),
        )
        tokens_in = tokens_out = 0
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens_in = chunk.usage.prompt_tokens
                    tokens_out = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        emit(TokenReceived(text=choice.delta.content))
        return ReplyCompleted(tokens_in=tokens_in, tokens_out=tokens_out)


class OpenAILlmStream:
    """One reply's completion request. Methods: any thread, at once."""

    def __init__(self, engine: OpenAILlm, call_id: str, sink: Sink) -> None:
        self._engine = engine
        self._loop = engine._loop
        self._sink = sink
        self._log = CallLogger(logger, {"call_id": call_id})
        self._muted = False  # set by cancel()/close() on the caller's thread: no more results
        self._task: asyncio.Task[None] | None = None  # loop thread only
        self._stopped = False  # loop thread only

    def send(self, request: ReplyRequest, /) -> None:
        """Ask for the reply to `request` (once per stream)."""
        self._post(self._start, request)

    def finalize(self) -> None:
        """Nothing to do: the request is complete when sent."""

    def cancel(self) -> None:
        """Abandon the request (barge-in); no more results."""
        self._muted = True
        self._post(self._stop)

    def close(self) -> None:
        """Release the request; no more results. Idempotent."""
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

    def _start(self, request: ReplyRequest) -> None:
        if self._stopped:
            return
        if self._task is not None:
            self._log.warning(
                "= openai llm: one request per stream; turn %d ignored", request.turn_id
            )
            return
        if self._engine._setup_error is not None:
            self._log.warning("= openai llm unavailable: %s", self._engine._setup_error)
            self._emit(EngineFailed(error=str(self._engine._setup_error), gave_up=True))
            return
        self._task = self._loop.create_task(self._run(request), name="openai-llm")
        self._engine._tasks.add(self._task)
        self._task.add_done_callback(self._engine._tasks.discard)

    def _stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self, request: ReplyRequest) -> None:
        started = self._loop.time()
        self._log.debug("> openai llm turn %d, %d messages", request.turn_id, len(request.messages))
        try:
            completed = await self._engine._complete(request, self._emit)
        except asyncio.CancelledError:
            raise
        except OPENAI_ERRORS as exc:  # the seam: translated here
            error = scrub(str(from_openai(exc)), [self._engine._secret])
            self._log.warning("= openai llm failed: %s", error)
            self._emit(EngineFailed(error=error, gave_up=True))
            return
        except Exception:  # noqa: BLE001 -- a bug of ours: fail this stream, keep the loop
            self._log.exception("= openai llm stream crashed")
            self._emit(EngineFailed(error="openai: internal error", gave_up=True))
            return
        self._log.debug(
            "< openai llm done in %.0f ms, %d+%d tokens",
            (self._loop.time() - started) * 1000,
            completed.tokens_in,
            completed.tokens_out,
        )
        self._emit(completed)
