"""The signal/1 codec on its own: values in, exact values out."""

import json
from typing import get_args

import pytest

from actors.messages import (
    EndReason,
    ResponseCompleted,
    ResponseDelta,
    ResponseInterrupted,
    SpeechStarted,
    SpeechStopped,
    TranscriptUpdated,
)
from mediaserver.calls import REFUSALS
from mediaserver.signaling.protocol import (
    END_CLOSE,
    REFUSAL_CLOSE,
    BadMessage,
    Bye,
    Candidate,
    Offer,
    Ping,
    Text,
    ended_message,
    error_message,
    event_message,
    parse_client_message,
    session_message,
)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ('{"type":"offer","sdp":"v=0"}', Offer(type="offer", sdp="v=0")),
        (
            '{"type":"candidate","candidate":"candidate:1 1 udp 1 h 9 typ host","sdpMid":"0"}',
            Candidate(type="candidate", candidate="candidate:1 1 udp 1 h 9 typ host", sdpMid="0"),
        ),
        (
            '{"type":"candidate","candidate":"","sdpMLineIndex":0}',
            Candidate(type="candidate", candidate="", sdpMLineIndex=0),
        ),
        ('{"type":"message","message":"hi"}', Text(type="message", message="hi")),
        ('{"type":"ping"}', Ping(type="ping")),
        ('{"type":"bye","future_field":1}', Bye(type="bye")),  # unknown fields are ignored
    ],
)
def test_client_messages_parse(text, parsed):
    assert parse_client_message(text) == parsed


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "bad_json"),
        ("null", "bad_json"),
        (b'{"type":"ping"}', "bad_json"),
        ('{"type":7}', "missing_field"),
        ('{"type":"Offer","sdp":""}', "unknown_type"),
        ('{"type":"message","message":5}', "missing_field"),
        ('{"type":"candidate","candidate":"x","sdpMLineIndex":-1}', "missing_field"),
        ('{"type":"candidate","candidate":"x","sdpMLineIndex":true}', "missing_field"),
        (json.dumps({"type": "message", "message": "é" * 4001}), "too_large"),
    ],
)
def test_bad_client_messages_raise_with_a_code(text, code):
    with pytest.raises(BadMessage) as bad:
        parse_client_message(text)
    assert bad.value.code == code and bad.value.message


def test_server_messages_are_compact_json():
    assert json.loads(
        session_message(call_id="c1", conversation_id="v1", agent_id="a1", agent_name="Ana")
    ) == {
        "type": "session",
        "protocol": "signal/1",
        "call_id": "c1",
        "conversation_id": "v1",
        "agent": {"id": "a1", "name": "Ana"},
    }
    assert error_message("bad_json", "no") == '{"type":"error","code":"bad_json","message":"no"}'
    assert ended_message("idle") == '{"type":"ended","reason":"idle"}'


@pytest.mark.parametrize(
    ("fact", "event"),
    [
        (SpeechStarted(call_id="c", at=1.0), {"type": "speech", "state": "started"}),
        (SpeechStopped(call_id="c", at=1.0), {"type": "speech", "state": "stopped"}),
        (
            TranscriptUpdated(call_id="c", turn_id=3, text="hi", final=False),
            {"type": "transcript", "turn_id": 3, "text": "hi", "final": False},
        ),
        (
            ResponseDelta(call_id="c", turn_id=4, text="Hel"),
            {"type": "response.delta", "turn_id": 4, "text": "Hel"},
        ),
        (
            ResponseCompleted(call_id="c", turn_id=4, content="Hello"),
            {"type": "response", "turn_id": 4, "content": "Hello"},
        ),
        (
            ResponseInterrupted(call_id="c", turn_id=4, spoken="Hel"),
            {"type": "interrupted", "turn_id": 4, "spoken": "Hel"},
        ),
    ],
)
def test_call_facts_become_events(fact, event):
    assert json.loads(event_message(fact)) == event


def test_every_refusal_and_end_reason_has_a_close_code_and_a_short_reason():
    assert set(REFUSAL_CLOSE) == set(REFUSALS)
    assert set(END_CLOSE) == set(get_args(EndReason))
    for code, reason in [*REFUSAL_CLOSE.values(), *END_CLOSE.values()]:
        assert code in (1000, 1001, 1008, 1011, 1013) and len(reason.encode()) <= 123
