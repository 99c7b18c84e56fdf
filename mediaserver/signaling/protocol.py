"""Signaling contract v1 (`signal/1`): a pure codec, no I/O. The contract is `docs/signaling.md`.

Client -> server (JSON text frames), parsed by `parse_client_message` into pydantic models:

    offer {sdp}   candidate {candidate, sdpMid?, sdpMLineIndex?}   message {message}   ping   bye

Server -> client, built here as JSON text:

    session  answer  pong  error {code, message}  ended {reason}
    speech  transcript  response.delta  response  interrupted      (from the call tree's facts)

Bad input raises `BadMessage` with an `ErrorCode`; the server answers it with an `error` event
and the connection lives on. Close codes for refusals and ends are the tables at the bottom.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from actors.messages import (
    EndReason,
    ResponseCompleted,
    ResponseDelta,
    ResponseInterrupted,
    SpeechStarted,
    SpeechStopped,
    TranscriptUpdated,
)
from mediaserver.errors import SignalingError

if TYPE_CHECKING:
    from mediaserver.calls import CallEvent, Refusal

PROTOCOL = "signal/1"
MAX_TEXT_CHARS = 4000  # one typed `message`: a chat turn, not a document

ErrorCode = Literal[
    "bad_json", "unknown_type", "missing_field", "too_large", "rate_limited", "bad_sdp", "internal"
]


class BadMessage(SignalingError):
    """A client message the server cannot take; answered with `error` {code, message}."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


# -- client -> server ---------------------------------------------------------------------------


class _Message(BaseModel):
    # Unknown fields are ignored, so a newer client still talks to this server.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Offer(_Message):
    type: Literal["offer"]
    sdp: str


class Candidate(_Message):
    """A trickled ICE candidate; `candidate` "" means end of candidates."""

    type: Literal["candidate"]
    candidate: str
    sdpMid: str | None = None  # noqa: N815  (the W3C RTCIceCandidateInit field name)
    sdpMLineIndex: int | None = Field(None, ge=0)  # noqa: N815


class Text(_Message):
    type: Literal["message"]
    message: str


class Ping(_Message):
    type: Literal["ping"]


class Bye(_Message):
    type: Literal["bye"]


ClientMessage = Offer | Candidate | Text | Ping | Bye
_CLIENT_MESSAGE: TypeAdapter[ClientMessage] = TypeAdapter(
    Annotated[ClientMessage, Field(discriminator="type")]
)
CLIENT_TYPES = ("offer", "candidate", "message", "ping", "bye")


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse one client frame.

    Raises:
        BadMessage: `bad_json` (not a JSON object, or a binary frame), `unknown_type`,
            `missing_field` (a required field is missing or has the wrong type), `too_large`
            (a `message` over `MAX_TEXT_CHARS`).
    """
    if isinstance(text, bytes):
        raise BadMessage("bad_json", "binary frames are not part of signal/1; send JSON text")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadMessage("bad_json", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadMessage("bad_json", "a message is a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise BadMessage("missing_field", "missing field: type")
    if kind not in CLIENT_TYPES:
        raise BadMessage("unknown_type", f"unknown type {kind[:40]!r}")
    try:
        message = _CLIENT_MESSAGE.validate_python(data)
    except ValidationError as exc:
        fields = sorted(
            {".".join(str(part) for part in error["loc"][1:]) for error in exc.errors()}
        )
        problem = f"{kind}: missing or invalid field: {', '.join(fields)}"
        raise BadMessage("missing_field", problem) from None
    if isinstance(message, Candidate) and message.sdpMid is None and message.sdpMLineIndex is None:
        raise BadMessage("missing_field", "candidate: needs sdpMid or sdpMLineIndex")
    if isinstance(message, Text) and len(message.message) > MAX_TEXT_CHARS:
        raise BadMessage("too_large", f"message: at most {MAX_TEXT_CHARS} characters")
    return message


# -- server -> client ---------------------------------------------------------------------------


def _dump(data: dict[str, object]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def session_message(*, call_id: str, conversation_id: str, agent_id: str, agent_name: str) -> str:
    return _dump(
        {
            "type": "session",
            "protocol": PROTOCOL,
            "call_id": call_id,
            "conversation_id": conversation_id,
            "agent": {"id": agent_id, "name": agent_name},
        }
    )


def answer_message(sdp: str) -> str:
    return _dump({"type": "answer", "sdp": sdp})


def pong_message() -> str:
    return _dump({"type": "pong"})


def error_message(code: ErrorCode, message: str) -> str:
    return _dump({"type": "error", "code": code, "message": message})


def ended_message(reason: EndReason) -> str:
    return _dump({"type": "ended", "reason": reason})


def event_message(event: CallEvent) -> str:
    """The wire event for a caller-facing fact of the call tree."""
    data: dict[str, object]
    match event:
        case SpeechStarted():
            data = {"type": "speech", "state": "started"}
        case SpeechStopped():
            data = {"type": "speech", "state": "stopped"}
        case TranscriptUpdated(turn_id=turn_id, text=text, final=final):
            data = {"type": "transcript", "turn_id": turn_id, "text": text, "final": final}
        case ResponseDelta(turn_id=turn_id, text=text):
            data = {"type": "response.delta", "turn_id": turn_id, "text": text}
        case ResponseCompleted(turn_id=turn_id, content=content):
            data = {"type": "response", "turn_id": turn_id, "content": content}
        case ResponseInterrupted(turn_id=turn_id, spoken=spoken):
            data = {"type": "interrupted", "turn_id": turn_id, "spoken": spoken}
    return _dump(data)


# -- close codes (RFC 6455 §7.4; 1013 from the IANA registry) -------------------------------------

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

REFUSAL_CLOSE: dict[Refusal, tuple[int, str]] = {
    "unauthorized": (CLOSE_POLICY, "Unauthorized"),
    "unknown_agent": (CLOSE_POLICY, "Unknown agent"),
    "rate_limited": (CLOSE_TRY_AGAIN, "Rate limited"),
    "capacity": (CLOSE_TRY_AGAIN, "Server at capacity"),
    "company_capacity": (CLOSE_TRY_AGAIN, "Company at capacity"),
    "load": (CLOSE_TRY_AGAIN, "Server at capacity"),  # overloaded: the same to a client
    "shutting_down": (CLOSE_GOING_AWAY, "Server shutting down"),
    "internal": (CLOSE_INTERNAL, "Internal error"),
}

END_CLOSE: dict[EndReason, tuple[int, str]] = {
    "bye": (CLOSE_NORMAL, "Call ended"),
    "hangup": (CLOSE_NORMAL, "Call ended"),
    "api_hangup": (CLOSE_NORMAL, "Call ended"),
    "ice_failed": (CLOSE_NORMAL, "Call ended"),
    "max_duration": (CLOSE_NORMAL, "Call ended"),
    "idle": (CLOSE_NORMAL, "Call ended"),
    "escalated": (CLOSE_INTERNAL, "Internal error"),
    "shutdown": (CLOSE_GOING_AWAY, "Server shutting down"),
    "replaced": (CLOSE_POLICY, "Replaced"),
}

ABUSE_CLOSE = (CLOSE_POLICY, "Too many bad messages")
TOO_BIG_CLOSE = (CLOSE_TOO_BIG, "Message too big")
BAD_PEER_CLOSE = (CLOSE_POLICY, "Bad peer id")
