"""Exotel Voicebot (AgentStream) websocket: a pure codec (no I/O, no clock).

Exotel's docs spell fields in snake_case (`stream_sid`, `custom_parameters`, `media_format`);
some integrations (Pipecat) send camelCase (`streamSid`). Input accepts both; output uses the
spelling configured in `ExotelSettings.stream_sid_field` (default `stream_sid`; which one Exotel
requires is unverified). Audio is base64 of raw 16-bit little-endian PCM, mono, at
`media_format.sample_rate` (8000 by default). Outbound audio goes in chunks of whole 20 ms frames
of at least 3200 bytes (200 ms at 8 kHz), at most 100 kB: see `chunk_bytes`.

Reference: https://support.exotel.com/support/solutions/articles/3000108630 (voicebot applet)
and https://developer.exotel.com/api/ (AgentStream); summarised in docs/telephony.md.
"""

from __future__ import annotations

import json
from typing import Literal

from mediaserver.errors import ProtocolViolation
from mediaserver.telephony.events import (
    Cleared,
    Connected,
    Dtmf,
    Mark,
    Media,
    Started,
    Stopped,
    StreamEvent,
)
from mediaserver.telephony.wire import (
    JsonObject,
    decode_payload,
    encode_payload,
    get_int,
    get_object,
    get_str,
    get_str_map,
    load_object,
)

SidField = Literal["stream_sid", "streamSid"]

PCM_ENCODING = "audio/x-raw"
ULAW_ENCODING = "audio/x-mulaw"
SAMPLE_RATES = frozenset((8000, 16000, 24000))
MAX_AUDIO_BYTES = 96_000  # 2 s of 24 kHz PCM16 in one message; Exotel sends about 100 ms
MAX_MESSAGE_CHARS = 160 * 1024
MAX_CHUNK_BYTES = 100_000  # Exotel's documented ceiling for one outbound payload
MIN_CHUNK_BYTES = 3200  # Exotel's documented floor
CHUNK_MULTIPLE = 320
FRAME_MS = 20
DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


def parse_event(text: str | bytes) -> StreamEvent:
    """Parse one Exotel message (a JSON text frame); both field spellings are accepted.

    Raises:
        MessageTooBig: the frame or its audio is over our limits.
        ProtocolViolation: binary frame, not JSON, unknown event, missing or mistyped field.
    """
    obj = load_object(text, max_chars=MAX_MESSAGE_CHARS)
    event = get_str(obj, "event", max_len=32)
    match event:
        case "connected":
            return Connected()
        case "start":
            return _start(obj)
        case "media":
            media = get_object(obj, "media")
            payload = get_str(media, "payload", max_len=1 << 20)
            return Media(
                stream_sid=_stream_sid(obj),
                audio=decode_payload(payload, max_bytes=MAX_AUDIO_BYTES),
                chunk=get_int(media, "chunk", required=False),
                timestamp_ms=get_int(media, "timestamp", required=False),
            )
        case "dtmf":
            dtmf = get_object(obj, "dtmf")
            digit = get_str(dtmf, "digit", max_len=1)
            if digit not in DTMF_DIGITS:
                raise ProtocolViolation(f"not a DTMF digit: {digit!r}")
            return Dtmf(stream_sid=_stream_sid(obj), digit=digit, duration_ms=_duration(dtmf))
        case "mark":
            name = get_str(get_object(obj, "mark"), "name", max_len=128)
            return Mark(stream_sid=_stream_sid(obj), name=name)
        case "clear":
            return Cleared(stream_sid=get_str(obj, "stream_sid", "streamSid", required=False))
        case "stop":
            stop = get_object(obj, "stop", required=False)
            return Stopped(
                stream_sid=_stream_sid(obj),
                call_sid=get_str(stop, "call_sid", "callSid", required=False),
                reason=get_str(stop, "reason", required=False),
            )
        case _:
            raise ProtocolViolation(f"unknown event {event!r}")


def _stream_sid(obj: JsonObject) -> str:
    sid = get_str(obj, "stream_sid", "streamSid", max_len=64)
    if not sid:
        raise ProtocolViolation("empty stream_sid")
    return sid


def _duration(dtmf: JsonObject) -> int | None:
    # The duration's unit and type are not documented clearly: keep it when it is an integer.
    try:
        return get_int(dtmf, "duration", required=False)
    except ProtocolViolation:
        return None


def _start(obj: JsonObject) -> Started:
    start = get_object(obj, "start")
    stream_sid = get_str(start, "stream_sid", "streamSid", required=False, max_len=64)
    outer = get_str(obj, "stream_sid", "streamSid", required=False, max_len=64)
    if stream_sid and outer and stream_sid != outer:
        raise ProtocolViolation("start.stream_sid differs from stream_sid")
    stream_sid = stream_sid or outer
    if not stream_sid:
        raise ProtocolViolation("empty stream_sid")
    media_format = get_object(start, "media_format", "mediaFormat", required=False)
    encoding = get_str(media_format, "encoding", required=False, default=PCM_ENCODING)
    rate = get_int(media_format, "sample_rate", "sampleRate", required=False) or 8000
    bits = get_int(media_format, "bit_rate", "bitRate", required=False)
    if rate not in SAMPLE_RATES:
        raise ProtocolViolation(f"unsupported sample rate {rate}")
    is_ulaw = "mulaw" in encoding.lower() or "pcmu" in encoding.lower()
    if not is_ulaw and bits not in (None, 16):
        raise ProtocolViolation(f"unsupported sample size {bits} bits")
    return Started(
        stream_sid=stream_sid,
        call_sid=get_str(start, "call_sid", "callSid", required=False, max_len=64),
        account_sid=get_str(start, "account_sid", "accountSid", required=False, max_len=64),
        custom_parameters=get_str_map(start, "custom_parameters", "customParameters"),
        encoding=ULAW_ENCODING if is_ulaw else PCM_ENCODING,
        sample_rate=rate,
        from_number=get_str(start, "from", required=False, max_len=64),
        to_number=get_str(start, "to", required=False, max_len=64),
    )


def chunk_bytes(sample_rate: int, chunk_ms: int, *, bytes_per_sample: int = 2) -> int:
    """Bytes of one outbound chunk of `chunk_ms`, checked against Exotel's documented rules.

    The docs ask for a multiple of 320 bytes, at least 3200 bytes, at most 100 kB; they call
    3200 bytes "100 ms", but at 8 kHz 16-bit that is 200 ms. We keep to the byte rules and to
    whole 20 ms frames, so the default is 200 ms (3200 bytes at 8 kHz).

    Raises:
        ValueError: a chunk of `chunk_ms` breaks one of those rules.
    """
    size = sample_rate * chunk_ms // 1000 * bytes_per_sample
    if (
        chunk_ms % FRAME_MS
        or size % CHUNK_MULTIPLE
        or not MIN_CHUNK_BYTES <= size <= MAX_CHUNK_BYTES
    ):
        raise ValueError(
            f"an Exotel chunk must be whole 20 ms frames of {MIN_CHUNK_BYTES} to "
            f"{MAX_CHUNK_BYTES} bytes in multiples of {CHUNK_MULTIPLE}: {chunk_ms} ms at "
            f"{sample_rate} Hz is {size} bytes"
        )
    return size


def media_message(stream_sid: str, audio: bytes, *, sid_field: SidField = "stream_sid") -> str:
    """The outbound `media` event for one chunk of wire audio (see `chunk_bytes`)."""
    payload = encode_payload(audio)
    return json.dumps({"event": "media", sid_field: stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str, *, sid_field: SidField = "stream_sid") -> str:
    """A `mark`: Exotel echoes it once the audio sent before it has played."""
    return json.dumps({"event": "mark", sid_field: stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str, *, sid_field: SidField = "stream_sid") -> str:
    """`clear`: drop the audio queued at Exotel but not yet played (barge-in)."""
    return json.dumps({"event": "clear", sid_field: stream_sid})
