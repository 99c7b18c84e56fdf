import dataclasses
import json

import pytest

from mediaserver.store import AgentChanges, AgentSpec, FaqRule, InvalidValue, VadOverrides
from mediaserver.store.validation import (
    check_agent_spec,
    check_number,
    faq_to_json,
    is_e164,
    parse_faq,
    parse_vad,
    vad_to_json,
)


def test_e164_accepts_plus_and_8_to_15_digits():
    assert is_e164("+14155550100")
    assert is_e164("+12345678")
    assert is_e164("+123456789012345")


@pytest.mark.parametrize(
    "number",
    ["14155550100", "+1234567", "+1234567890123456", "+0155550100", "+1 415 555 0100", "", None],
)
def test_e164_rejects(number):
    assert not is_e164(number)
    with pytest.raises(InvalidValue) as caught:
        check_number(number)
    assert caught.value.field == "number"


def test_agent_name_is_stripped_and_required():
    assert check_agent_spec(AgentSpec(name="  Desk ")).name == "Desk"
    with pytest.raises(InvalidValue) as caught:
        check_agent_spec(AgentSpec(name="  "))
    assert caught.value.field == "name"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"stt_engine": "whisper"}, "stt_engine"),
        ({"llm_engine": "deepgram"}, "llm_engine"),
        ({"tts_engine": ""}, "tts_engine"),
        ({"stt_engine": ["offline"]}, "stt_engine"),
        ({"tts_fallback": "nope"}, "tts_fallback"),
        ({"stt_engine": "deepgram", "stt_fallback": "deepgram"}, "stt_fallback"),
        ({"language": ""}, "language"),
        ({"greeting": None}, "greeting"),
        ({"recording": 1}, "recording"),
        ({"faq": [FaqRule(match="x", answer="y")]}, "faq"),
        ({"faq": (FaqRule(match="(", answer="y"),)}, "faq[0].match"),
        ({"faq": (FaqRule(match=(), answer="y"),)}, "faq[0].match"),
        ({"faq": (FaqRule(match="x", answer=" "),)}, "faq[0].answer"),
        ({"vad": VadOverrides(threshold=1.0)}, "vad.threshold"),
        ({"vad": VadOverrides(min_speech_ms=-1)}, "vad.min_speech_ms"),
        ({"vad": VadOverrides(turn_end="never")}, "vad.turn_end"),  # type: ignore[arg-type]
        ({"vad": {"threshold": 0.5}}, "vad"),
    ],
)
def test_bad_agent_fields_name_the_field(changes, field):
    with pytest.raises(InvalidValue) as caught:
        check_agent_spec(AgentSpec(name="Desk", **changes))
    assert caught.value.field == field


def test_faq_parses_regex_and_keyword_rules_and_round_trips():
    rules = parse_faq(
        [
            {"match": r"\bopen(ing)? hours\b", "answer": "Nine to five."},
            {"match": ["price", "cost"], "answer": "Ten euros."},
        ]
    )
    assert rules == (
        FaqRule(match=r"\bopen(ing)? hours\b", answer="Nine to five."),
        FaqRule(match=("price", "cost"), answer="Ten euros."),
    )
    assert parse_faq(json.loads(faq_to_json(rules))) == rules


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"match": "x", "answer": "y"}, "faq"),
        ([{"match": "x"}], "faq[0]"),
        ([{"match": "x", "answer": "y", "extra": 1}], "faq[0]"),
        ([{"match": "[", "answer": "y"}], "faq[0].match"),
        ([{"match": 3, "answer": "y"}], "faq[0].match"),
        ([{"match": ["ok", ""], "answer": "y"}], "faq[0].match"),
    ],
)
def test_faq_rejects(value, field):
    with pytest.raises(InvalidValue) as caught:
        parse_faq(value)
    assert caught.value.field == field


def test_vad_parses_known_keys_and_round_trips():
    vad = parse_vad({"threshold": 0.7, "end_of_turn_silence_ms": 800, "turn_end": "provider"})
    assert vad == VadOverrides(threshold=0.7, end_of_turn_silence_ms=800, turn_end="provider")
    assert parse_vad(json.loads(vad_to_json(vad))) == vad
    assert vad_to_json(VadOverrides()) == "{}"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"treshold": 0.5}, "vad"),
        ([], "vad"),
        ({"threshold": True}, "vad.threshold"),
        ({"threshold": "0.5"}, "vad.threshold"),
        ({"min_speech_ms": 1.5}, "vad.min_speech_ms"),
        ({"turn_end": "maybe"}, "vad.turn_end"),
        ({"turn_end": ["vad"]}, "vad.turn_end"),
    ],
)
def test_vad_rejects(value, field):
    with pytest.raises(InvalidValue) as caught:
        parse_vad(value)
    assert caught.value.field == field


def test_agent_changes_lists_exactly_the_spec_fields():
    spec_fields = {f.name for f in dataclasses.fields(AgentSpec)}
    assert set(AgentChanges.__annotations__) == spec_fields
