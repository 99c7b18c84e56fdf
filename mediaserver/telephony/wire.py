"""Reading untrusted carrier JSON field by field: every wrong shape becomes a `ProtocolViolation`.

The parsers in `twilio.py` and `exotel.py` use these instead of a schema library because they run
50 times a second per call; each check is one `isinstance` and the error says which field.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import cast

from mediaserver.errors import ProtocolViolation

JsonObject = Mapping[str, object]


class MessageTooBig(ProtocolViolation):
    """A message or its audio is over our limit (websocket close code 1009)."""


def load_object(text: str | bytes, *, max_chars: int) -> JsonObject:
    """Decode one JSON text frame that must hold an object.

    Raises:
        MessageTooBig: longer than `max_chars`.
        ProtocolViolation: binary data, not JSON, or not an object.
    """
    if not isinstance(text, str):
        raise ProtocolViolation("binary frames are not part of the protocol")
    if len(text) > max_chars:
        raise MessageTooBig(f"message of {len(text)} characters is over {max_chars}")
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and RecursionError's cousin for deep nesting
        raise ProtocolViolation(f"not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolViolation("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ProtocolViolation(f"expected a JSON object, got {type(value).__name__}")
    return cast(JsonObject, value)


def first_key(obj: JsonObject, *names: str) -> str | None:
    """The first of `names` present in `obj` (carriers differ in snake_case vs camelCase)."""
    for name in names:
        if name in obj:
            return name
    return None


def get_object(obj: JsonObject, *names: str, required: bool = True) -> JsonObject:
    key = first_key(obj, *names)
    if key is None:
        if required:
            raise ProtocolViolation(f"missing field {names[0]!r}")
        return {}
    value = obj[key]
    if not isinstance(value, dict):
        raise ProtocolViolation(f"field {key!r} must be an object, got {type(value).__name__}")
    return cast(JsonObject, value)


def get_str(
    obj: JsonObject, *names: str, required: bool = True, max_len: int = 256, default: str = ""
) -> str:
    key = first_key(obj, *names)
    if key is None:
        if required:
            raise ProtocolViolation(f"missing field {names[0]!r}")
        return default
    value = obj[key]
    if not isinstance(value, str):
        raise ProtocolViolation(f"field {key!r} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise ProtocolViolation(f"field {key!r} is longer than {max_len} characters")
    return value


def get_int(obj: JsonObject, *names: str, required: bool = True) -> int | None:
    """An integer sent as a JSON number or as a string of digits (carriers do both)."""
    key = first_key(obj, *names)
    if key is None:
        if required:
            raise ProtocolViolation(f"missing field {names[0]!r}")
        return None
    value = obj[key]
    if isinstance(value, bool):
        raise ProtocolViolation(f"field {key!r} must be an integer, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and 0 < len(value) <= 18 and value.isascii() and value.isdigit():
        return int(value)
    raise ProtocolViolation(f"field {key!r} must be an integer, got {value!r:.40}")


def get_str_map(obj: JsonObject, *names: str, max_items: int = 32) -> dict[str, str]:
    """An optional object of string values (custom parameters)."""
    inner = get_object(obj, *names, required=False)
    if len(inner) > max_items:
        raise ProtocolViolation(f"field {names[0]!r} has more than {max_items} entries")
    out: dict[str, str] = {}
    for name, value in inner.items():
        if not isinstance(value, str) or len(name) > 256 or len(value) > 1024:
            raise ProtocolViolation(f"{names[0]}[{name[:40]!r}] must be a short string")
        out[name] = value
    return out


def decode_payload(text: str, *, max_bytes: int) -> bytes:
    """Strict base64 (no stray characters) of at most `max_bytes` decoded bytes.

    Raises:
        MessageTooBig: the decoded audio would exceed `max_bytes`.
        ProtocolViolation: not base64.
    """
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise MessageTooBig(f"payload of {len(text)} base64 characters is over {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolViolation(f"payload is not base64: {exc}") from None


def encode_payload(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
