"""What a carrier media stream tells us, whichever carrier: the parsers' common vocabulary.

`twilio.parse_event` and `exotel.parse_event` turn one JSON text frame into one of these; the
media stream loop (`media_stream.py`) only sees these. `Media.audio` is the wire audio as sent
(Twilio: mu-law bytes, Exotel: PCM16 little-endian), already base64-decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    """The first message: the carrier opened the stream (no stream id yet)."""

    protocol: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """The stream's metadata, once, before any media."""

    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    encoding: str
    sample_rate: int
    channels: int = 1
    from_number: str = ""
    to_number: str = ""
    tracks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Media:
    """A chunk of caller audio in the wire encoding."""

    stream_sid: str
    audio: bytes
    chunk: int | None = None  # counts from 1
    timestamp_ms: int | None = None  # since the stream started


@dataclass(frozen=True, slots=True, kw_only=True)
class Dtmf:
    stream_sid: str
    digit: str
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mark:
    """A mark we sent, echoed once the audio sent before it has played (or was cleared)."""

    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Cleared:
    """An inbound `clear` (Exotel community clients send one; it means nothing to us)."""

    stream_sid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped:
    """The carrier ended the stream (the caller hung up, or the stream was stopped)."""

    stream_sid: str
    call_sid: str = ""
    reason: str = ""


StreamEvent = Connected | Started | Media | Dtmf | Mark | Cleared | Stopped
