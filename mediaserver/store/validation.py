"""Checks on what callers hand the store, and the JSON codec of an agent's FAQ and VAD fields.

Everything here is pure and raises `InvalidValue` naming the field at fault.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Any, cast

from mediaserver.store.errors import InvalidValue
from mediaserver.store.models import TURN_ENDS, AgentSpec, FaqRule, VadOverrides

STT_ENGINES: frozenset[str] = frozenset(("offline", "deepgram", "echo"))
LLM_ENGINES: frozenset[str] = frozenset(("offline", "openai", "echo"))
TTS_ENGINES: frozenset[str] = frozenset(("offline", "deepgram", "openai", "echo"))
_ENGINES = {"stt": STT_ENGINES, "llm": LLM_ENGINES, "tts": TTS_ENGINES}

# E.164: "+", a country code that never starts with 0, at most 15 digits in all.
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_VAD_FIELDS = frozenset(f.name for f in dataclasses.fields(VadOverrides))


def is_e164(number: object) -> bool:
    return isinstance(number, str) and _E164.fullmatch(number) is not None


def check_number(number: object) -> str:
    if not is_e164(number):
        raise InvalidValue("number", f"{number!r} is not E.164 (+ then 8 to 15 digits)")
    assert isinstance(number, str)
    return number


def check_name(field: str, value: object) -> str:
    """Return `value` stripped; it must be a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(field, "must be a non-empty string")
    return value.strip()


def check_choice(field: str, value: object, allowed: Collection[str]) -> None:
    # The isinstance check first: an unhashable value would make `in` raise TypeError.
    if not isinstance(value, str) or value not in allowed:
        raise InvalidValue(field, f"{value!r} is not one of {sorted(allowed)}")


def check_agent_spec(spec: AgentSpec) -> AgentSpec:
    """Return `spec` with its name stripped, or raise `InvalidValue`."""
    name = check_name("name", spec.name)
    for text_field in ("system_prompt", "greeting", "voice"):
        if not isinstance(getattr(spec, text_field), str):
            raise InvalidValue(text_field, "must be a string")
    check_name("language", spec.language)
    for kind, allowed in _ENGINES.items():
        engine = getattr(spec, f"{kind}_engine")
        fallback = getattr(spec, f"{kind}_fallback")
        check_choice(f"{kind}_engine", engine, allowed)
        if fallback is not None:
            check_choice(f"{kind}_fallback", fallback, allowed)
        if fallback == engine:
            raise InvalidValue(f"{kind}_fallback", "must differ from the primary engine")
    if not isinstance(spec.recording, bool):
        raise InvalidValue("recording", "must be a bool")
    if not isinstance(spec.faq, tuple) or not all(isinstance(r, FaqRule) for r in spec.faq):
        raise InvalidValue("faq", "must be a tuple of FaqRule")
    for index, rule in enumerate(spec.faq):
        _check_faq_rule(index, rule)
    if not isinstance(spec.vad, VadOverrides):
        raise InvalidValue("vad", "must be a VadOverrides")
    _check_vad(spec.vad)
    return dataclasses.replace(spec, name=name)


def _check_faq_rule(index: int, rule: FaqRule) -> None:
    where = f"faq[{index}]"
    if not isinstance(rule.answer, str) or not rule.answer.strip():
        raise InvalidValue(f"{where}.answer", "must be a non-empty string")
    if isinstance(rule.match, str):
        if not rule.match:
            raise InvalidValue(f"{where}.match", "regex must not be empty")
        try:
            re.compile(rule.match)
        except re.error as exc:
            raise InvalidValue(f"{where}.match", f"regex does not compile: {exc}") from None
    elif isinstance(rule.match, tuple):
        if not rule.match or not all(isinstance(k, str) and k.strip() for k in rule.match):
            raise InvalidValue(f"{where}.match", "keywords must be non-empty strings")
    else:
        raise InvalidValue(f"{where}.match", "must be a regex string or a tuple of keywords")


def _check_vad(vad: VadOverrides) -> None:
    if vad.threshold is not None and (
        isinstance(vad.threshold, bool)
        or not isinstance(vad.threshold, int | float)
        or not 0 < vad.threshold < 1
    ):
        raise InvalidValue("vad.threshold", "must be a number strictly between 0 and 1")
    for ms_field in ("min_speech_ms", "end_of_turn_silence_ms"):
        check_count(f"vad.{ms_field}", getattr(vad, ms_field), optional=True)
    if vad.turn_end is not None:
        check_choice("vad.turn_end", vad.turn_end, TURN_ENDS)


def parse_faq(value: object) -> tuple[FaqRule, ...]:
    """Build FAQ rules from JSON: `[{"match": "regex" | ["keyword", ...], "answer": "..."}]`."""
    if not isinstance(value, list):
        raise InvalidValue("faq", "must be a list of {match, answer} objects")
    rules = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"match", "answer"}:
            raise InvalidValue(f"faq[{index}]", "must be an object with exactly match and answer")
        match = item["match"]
        rule = FaqRule(
            match=tuple(match) if isinstance(match, list) else match, answer=item["answer"]
        )
        _check_faq_rule(index, rule)
        rules.append(rule)
    return tuple(rules)


def parse_vad(value: object) -> VadOverrides:
    """Build VAD overrides from a JSON object; unknown keys are errors, not ignored."""
    if not isinstance(value, Mapping):
        raise InvalidValue("vad", "must be an object")
    unknown = set(value) - _VAD_FIELDS
    if unknown:
        raise InvalidValue("vad", f"unknown keys {sorted(unknown)}; known: {sorted(_VAD_FIELDS)}")
    # The values are still untrusted here: `_check_vad` checks each one just below.
    vad = VadOverrides(**cast("dict[str, Any]", dict(value)))
    _check_vad(vad)
    return vad


def faq_to_json(faq: tuple[FaqRule, ...]) -> str:
    return json.dumps(
        [
            {"match": list(r.match) if isinstance(r.match, tuple) else r.match, "answer": r.answer}
            for r in faq
        ]
    )


def vad_to_json(vad: VadOverrides) -> str:
    return json.dumps({k: v for k, v in dataclasses.asdict(vad).items() if v is not None})


def data_to_json(field: str, data: Mapping[str, object]) -> str:
    """Serialise event data; NaN and infinities are refused since they are not JSON."""
    if not isinstance(data, Mapping):
        raise InvalidValue(field, "must be a mapping")
    try:
        return json.dumps(dict(data), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValue(field, f"is not JSON-serialisable: {exc}") from None


def check_finite(field: str, value: object, *, optional: bool = False) -> None:
    """A non-negative finite number (bools refused); None passes when `optional`."""
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidValue(field, "must be a finite non-negative number")


def check_count(field: str, value: object, *, optional: bool = False) -> None:
    """A non-negative integer (bools refused); None passes when `optional`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValue(field, "must be a non-negative integer")
