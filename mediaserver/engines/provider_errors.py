"""Provider failures, translated at the seam into our own errors.

    EdgeError                       (mediaserver/errors.py)
    └── ProviderError               a speech or language provider failed; `transient` says
        │                           whether trying again may help
        ├── ProviderAuthFailed      401/403 or no key configured (permanent)
        ├── ProviderRateLimited     429 (transient, except OpenAI's `insufficient_quota`)
        ├── ProviderUnavailable     5xx, websocket close 1011/1012/1013/1014 (transient)
        ├── ProviderTimeout         connect or read timeout (transient)
        ├── ProviderDisconnected    the socket dropped or the connection failed (transient)
        └── ProviderRejected        any other 4xx, close 1008 (bad audio), bad URL (permanent)

`from_openai` and `from_deepgram` are the only places that look at the SDKs' and the transports'
exceptions. Messages are built here from status codes, close codes and exception class names,
never from response bodies, headers or `str(exc)` (OpenAI's 401 body quotes the key it was
given; a handshake error carries the request headers). A provider's error code is kept only
when it is a short identifier such as `insufficient_quota` or `NET-0001`. `scrub` removes the
configured secrets from any text as a last guard, and engines pass every error through it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

import httpx2
import openai
import websockets.exceptions
from deepgram.core.api_error import ApiError as DeepgramApiError

from mediaserver.errors import EdgeError

_CODE = re.compile(r"[A-Za-z0-9_.-]{1,40}")

#: What the openai SDK and its HTTP stack raise; anything else is a bug of ours.
OPENAI_ERRORS: tuple[type[BaseException], ...] = (
    openai.OpenAIError,
    httpx2.HTTPError,
    OSError,
    TimeoutError,
)
#: What deepgram-sdk and its websocket transport raise; anything else is a bug of ours.
DEEPGRAM_ERRORS: tuple[type[BaseException], ...] = (
    DeepgramApiError,
    websockets.exceptions.WebSocketException,
    OSError,
    TimeoutError,
)
_TRANSIENT_CLOSE_CODES = frozenset({1000, 1001, 1006, 1011, 1012, 1013, 1014})


class ProviderError(EdgeError):
    """A provider failed; the message names the provider and never holds a key."""

    transient = False

    def __init__(self, provider: str, what: str, *, status: int | None = None) -> None:
        super().__init__(f"{provider}: {what}")
        self.provider = provider
        self.status = status


class ProviderAuthFailed(ProviderError):
    """The key is missing, wrong, or lacks access; retrying cannot help."""


class ProviderRateLimited(ProviderError):
    """Too many requests; retrying later may help."""

    transient = True

    def __init__(
        self, provider: str, what: str, *, status: int | None = None, transient: bool = True
    ) -> None:
        super().__init__(provider, what, status=status)
        self.transient = transient


class ProviderUnavailable(ProviderError):
    """The provider failed on its side (5xx or an internal-error close)."""

    transient = True


class ProviderTimeout(ProviderError):
    """No answer in time."""

    transient = True


class ProviderDisconnected(ProviderError):
    """The connection could not be made or dropped mid-stream."""

    transient = True


class ProviderRejected(ProviderError):
    """The provider refused the request as malformed or not allowed; retrying cannot help."""


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every non-empty secret in `text` with `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def from_status(provider: str, status: int, code: str | None = None) -> ProviderError:
    """Translate an HTTP status (and the provider's short error code, if any)."""
    detail = f"HTTP {status}" if not code else f"HTTP {status}, {code}"
    if status in (401, 403):
        return ProviderAuthFailed(provider, f"authentication failed ({detail})", status=status)
    if status == 429:
        # OpenAI answers 429 for an exhausted quota too; waiting does not refill it.
        transient = code != "insufficient_quota"
        return ProviderRateLimited(
            provider, f"rate limited ({detail})", status=status, transient=transient
        )
    if status == 408:
        return ProviderTimeout(provider, f"request timed out ({detail})", status=status)
    if status >= 500:
        return ProviderUnavailable(provider, f"server error ({detail})", status=status)
    return ProviderRejected(provider, f"request rejected ({detail})", status=status)


def from_openai(exc: BaseException, provider: str = "openai") -> ProviderError:
    """Translate an exception raised by the openai SDK or its HTTP stack (httpx2)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        return from_status(provider, exc.status_code, _openai_code(exc.body))
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException | TimeoutError):
        return ProviderTimeout(provider, "request timed out")
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError | OSError):
        return ProviderDisconnected(provider, f"connection failed ({_cause_name(exc)})")
    if isinstance(exc, openai.APIError):
        # An error event inside a 200 stream: `data: {"error": {...}}`.
        return ProviderUnavailable(provider, f"error in stream ({_openai_code(exc.body) or '-'})")
    if isinstance(exc, openai.OpenAIError):
        return ProviderRejected(provider, f"client error ({type(exc).__name__})")
    return ProviderRejected(provider, f"unexpected failure ({type(exc).__name__})")


def from_deepgram(exc: BaseException, provider: str = "deepgram") -> ProviderError:
    """Translate an exception raised by deepgram-sdk or its websocket transport."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, DeepgramApiError):
        if exc.status_code is None:
            return ProviderRejected(provider, "client error (no status)")
        return from_status(provider, exc.status_code)
    if isinstance(exc, websockets.exceptions.ConnectionClosed):
        return from_close(provider, *_close_of(exc))
    if isinstance(exc, websockets.exceptions.InvalidURI):
        return ProviderRejected(provider, "bad URL (check deepgram.base_url)")
    if isinstance(exc, websockets.exceptions.InvalidHandshake):
        return ProviderUnavailable(provider, f"handshake failed ({type(exc).__name__})")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ProviderTimeout(provider, "connection timed out")
    if isinstance(exc, OSError):
        return ProviderDisconnected(provider, f"connection failed ({type(exc).__name__})")
    return ProviderRejected(provider, f"unexpected failure ({type(exc).__name__})")


def from_close(provider: str, code: int | None, reason: str = "") -> ProviderError:
    """Translate a websocket close (RFC 6455 §7.4) that we did not ask for."""
    shown = f"close {code}" if code is not None else "no close frame"
    if reason and _CODE.fullmatch(reason):
        shown = f"{shown}, {reason}"
    if code == 1008:
        return ProviderRejected(provider, f"stream rejected ({shown})")
    if code is None or code in _TRANSIENT_CLOSE_CODES:
        if code in (1011, 1012, 1013, 1014):
            return ProviderUnavailable(provider, f"server closed the stream ({shown})")
        return ProviderDisconnected(provider, f"connection dropped ({shown})")
    return ProviderRejected(provider, f"stream closed ({shown})")


def _close_of(exc: websockets.exceptions.ConnectionClosed) -> tuple[int | None, str]:
    if exc.rcvd is None:
        return None, ""
    return exc.rcvd.code, exc.rcvd.reason


def _openai_code(body: object) -> str | None:
    """The `code` (or `type`) of an OpenAI error body, if it is a short identifier."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            for key in ("code", "type"):
                value = error.get(key)
                if isinstance(value, str) and _CODE.fullmatch(value):
                    return value
    return None


def _cause_name(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return type(cause if cause is not None else exc).__name__
