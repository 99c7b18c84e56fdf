"""Twilio Media Streams, bidirectional `<Connect><Stream>`: a pure codec (no I/O, no clock).

* `parse_event(text)` reads one JSON text frame from Twilio into a `mediaserver.telephony.events`
  value; `media_message`, `mark_message` and `clear_message` build ours.
* `connect_stream_twiml(url, parameters)` answers the voice webhook; `reject_twiml(reason)`
  refuses the call (`<Reject>`, https://www.twilio.com/docs/voice/twiml/reject).
* `signature(...)` / `signature_matches(...)` implement `X-Twilio-Signature`.

Wire reference: https://www.twilio.com/docs/voice/media-streams/websocket-messages and
https://www.twilio.com/docs/usage/webhooks/webhooks-security (summarised, with what is
unverified, in docs/telephony.md). Audio both ways is mu-law 8 kHz mono; 20 ms = 160 bytes.
Outbound messages keep exactly Twilio's documented shapes: an extra field makes Twilio warn
(31951) and drop the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit
from xml.etree import ElementTree

from mediaserver.errors import ProtocolViolation
from mediaserver.telephony.events import (
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

SAMPLE_RATE = 8000
ENCODING = "audio/x-mulaw"
FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
MAX_AUDIO_BYTES = 16_000  # 2 s in one message; Twilio sends 20 ms
MAX_MESSAGE_CHARS = 64 * 1024
MAX_MARK_NAME = 128
DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


def parse_event(text: str | bytes) -> StreamEvent:
    """Parse one Twilio Media Streams message (a JSON text frame).

    Unknown extra fields are ignored (Twilio may add some); everything we read is type-checked.

    Raises:
        MessageTooBig: the frame or its audio is over our limits.
        ProtocolViolation: binary frame, not JSON, unknown event, missing or mistyped field.
    """
    obj = load_object(text, max_chars=MAX_MESSAGE_CHARS)
    event = get_str(obj, "event", max_len=32)
    match event:
        case "connected":
            return Connected(
                protocol=get_str(obj, "protocol", required=False),
                version=get_str(obj, "version", required=False),
            )
        case "start":
            return _start(obj)
        case "media":
            media = get_object(obj, "media")
            return Media(
                stream_sid=_stream_sid(obj),
                audio=decode_payload(
                    get_str(media, "payload", max_len=1 << 20), max_bytes=MAX_AUDIO_BYTES
                ),
                chunk=get_int(media, "chunk", required=False),
                timestamp_ms=get_int(media, "timestamp", required=False),
            )
        case "dtmf":
            digit = get_str(get_object(obj, "dtmf"), "digit", max_len=1)
            if digit not in DTMF_DIGITS:
                raise ProtocolViolation(f"not a DTMF digit: {digit!r}")
            return Dtmf(stream_sid=_stream_sid(obj), digit=digit)
        case "mark":
            name = get_str(get_object(obj, "mark"), "name", max_len=MAX_MARK_NAME)
            return Mark(stream_sid=_stream_sid(obj), name=name)
        case "stop":
            stop = get_object(obj, "stop", required=False)
            return Stopped(
                stream_sid=_stream_sid(obj), call_sid=get_str(stop, "callSid", required=False)
            )
        case _:
            raise ProtocolViolation(f"unknown event {event!r}")


def _stream_sid(obj: JsonObject) -> str:
    sid = get_str(obj, "streamSid", max_len=64)
    if not sid:
        raise ProtocolViolation("empty streamSid")
    return sid


def _start(obj: JsonObject) -> Started:
    start = get_object(obj, "start")
    media_format = get_object(start, "mediaFormat")
    tracks = start.get("tracks", [])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise ProtocolViolation("start.tracks must be a list of strings")
    stream_sid = get_str(start, "streamSid", max_len=64)
    if not stream_sid or ("streamSid" in obj and obj["streamSid"] != stream_sid):
        raise ProtocolViolation("start.streamSid is empty or differs from streamSid")
    started = Started(
        stream_sid=stream_sid,
        call_sid=get_str(start, "callSid", max_len=64),
        account_sid=get_str(start, "accountSid", max_len=64),
        custom_parameters=get_str_map(start, "customParameters"),
        encoding=get_str(media_format, "encoding", max_len=64),
        sample_rate=get_int(media_format, "sampleRate") or 0,
        channels=get_int(media_format, "channels", required=False) or 1,
        tracks=tuple(tracks[:4]),
    )
    if (started.encoding, started.sample_rate, started.channels) != (ENCODING, SAMPLE_RATE, 1):
        raise ProtocolViolation(
            f"unsupported media format {started.encoding} {started.sample_rate} Hz "
            f"x{started.channels}; Twilio streams are {ENCODING} {SAMPLE_RATE} Hz mono"
        )
    return started


def media_message(stream_sid: str, ulaw: bytes) -> str:
    """The outbound `media` event for mu-law audio (20 ms = 160 bytes), no file header."""
    payload = encode_payload(ulaw)
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    """A `mark`: Twilio echoes it back once the audio sent before it has played."""
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """`clear`: drop the audio queued at Twilio now (barge-in); pending marks come back."""
    return json.dumps({"event": "clear", "streamSid": stream_sid})


def connect_stream_twiml(url: str, parameters: Mapping[str, str]) -> str:
    """TwiML answering a voice webhook: `<Connect><Stream url>` with `<Parameter>`s.

    The parameters come back in the `start` message's `customParameters`. Twilio does not
    allow a query string on the stream URL.

    Raises:
        ValueError: `url` is not ws:// or wss://, or it has a query string or fragment.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"stream URL must be wss://host/path without a query: {url!r}")
    response = ElementTree.Element("Response")
    stream = ElementTree.SubElement(ElementTree.SubElement(response, "Connect"), "Stream")
    stream.set("url", url)
    for name, value in parameters.items():
        ElementTree.SubElement(stream, "Parameter", {"name": name, "value": value})
    body = ElementTree.tostring(response, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>{body}'


def reject_twiml(reason: Literal["rejected", "busy"] = "rejected") -> str:
    """TwiML refusing the call before it is answered: the caller hears a busy tone for "busy"
    and Twilio's not-in-service message for "rejected" (the default)."""
    response = ElementTree.Element("Response")
    ElementTree.SubElement(response, "Reject", {"reason": reason} if reason == "busy" else {})
    body = ElementTree.tostring(response, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>{body}'


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """`X-Twilio-Signature`: base64(HMAC-SHA1(auth_token, url + sorted name+value pairs)).

    `url` is the full URL exactly as Twilio requested it; `params` are the POST form fields
    (none for GET and for the websocket upgrade). Repeated names are appended value by value
    in sorted order (twilio-python's `RequestValidator`; unverified against Twilio's doc).
    """
    signed = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_matches(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], received: str
) -> bool:
    """Constant-time check of a received `X-Twilio-Signature`.

    Tries the URL as given and with its default port added or removed: Twilio signs the URL it
    was configured with, and a proxy may or may not show the port (as twilio-python does).
    """
    pairs = list(params)
    matched = False
    for candidate in _port_variants(url):
        expected = signature(auth_token, candidate, pairs)
        matched |= hmac.compare_digest(expected.encode(), received.encode())
    return matched


def _port_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    default = {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme)
    variants = [url]
    if default is None or parts.hostname is None:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    elif parts.port == default:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    return variants
