"""The Twilio Media Streams codec: Twilio's documented messages in, exact values out."""

import base64
import hashlib
import hmac
import json
from xml.etree import ElementTree

import pytest

from mediaserver.errors import ProtocolViolation
from mediaserver.telephony import twilio
from mediaserver.telephony.events import Connected, Dtmf, Mark, Media, Started, Stopped
from mediaserver.telephony.wire import MessageTooBig

SID = "MZ0123456789abcdef0123456789abcdef"
START = (
    '{"event":"start","sequenceNumber":"1","streamSid":"MZ0123456789abcdef0123456789abcdef",'
    '"start":{"streamSid":"MZ0123456789abcdef0123456789abcdef",'
    '"accountSid":"AC00000000000000000000000000000000",'
    '"callSid":"CA11111111111111111111111111111111","tracks":["inbound"],'
    '"customParameters":{"tenant":"acme","session_token":"abc123"},'
    '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}'
)


def message(event, **fields):
    return json.dumps({"event": event, "sequenceNumber": "2", "streamSid": SID, **fields})


def test_parses_connected():
    event = twilio.parse_event('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    assert event == Connected(protocol="Call", version="1.0.0")


def test_parses_start():
    assert twilio.parse_event(START) == Started(
        stream_sid=SID,
        call_sid="CA11111111111111111111111111111111",
        account_sid="AC00000000000000000000000000000000",
        custom_parameters={"tenant": "acme", "session_token": "abc123"},
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
        tracks=("inbound",),
    )


def test_parses_media_with_its_audio_decoded():
    text = (
        '{"event":"media","sequenceNumber":"2","streamSid":"' + SID + '",'
        '"media":{"track":"inbound","chunk":"1","timestamp":"20","payload":"/////w=="}}'
    )
    assert twilio.parse_event(text) == Media(
        stream_sid=SID, audio=b"\xff\xff\xff\xff", chunk=1, timestamp_ms=20
    )


def test_parses_dtmf_mark_and_stop():
    assert twilio.parse_event(
        message("dtmf", dtmf={"track": "inbound_track", "digit": "5"})
    ) == Dtmf(stream_sid=SID, digit="5")
    assert twilio.parse_event(message("mark", mark={"name": "utt-7"})) == Mark(
        stream_sid=SID, name="utt-7"
    )
    stop = message("stop", stop={"accountSid": "AC0", "callSid": "CA1"})
    assert twilio.parse_event(stop) == Stopped(stream_sid=SID, call_sid="CA1")


def test_unknown_fields_are_ignored():
    text = message("mark", mark={"name": "a", "extra": 1}, somethingNew={"x": [1, 2]})
    assert twilio.parse_event(text) == Mark(stream_sid=SID, name="a")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (b'{"event":"connected"}', "binary"),
        ("not json", "not JSON"),
        ("[1, 2]", "object"),
        ('{"protocol":"Call"}', "missing field 'event'"),
        ('{"event": 5}', "must be a string"),
        ('{"event":"hello"}', "unknown event"),
        (message("media", media={"payload": "!!!!"}), "base64"),
        (message("media", media={"payload": "/////w"}), "base64"),  # missing padding
        (message("media", media={"payload": 1234}), "must be a string"),
        (message("media", media="/////w=="), "must be an object"),
        (message("media"), "missing field 'media'"),
        (message("media", media={"payload": "", "chunk": "one"}), "integer"),
        (message("media", media={"payload": "", "chunk": True}), "integer"),
        (json.dumps({"event": "media", "media": {"payload": ""}}), "streamSid"),
        (message("media", media={"payload": ""}).replace(SID, ""), "empty streamSid"),
        (message("dtmf", dtmf={"digit": "55"}), "longer"),
        (message("dtmf", dtmf={"digit": "x"}), "DTMF"),
        (message("dtmf", dtmf={"digit": 5}), "string"),
        (message("mark", mark={"name": "n" * 200}), "longer"),
        (message("mark", mark={}), "missing field 'name'"),
        (START.replace('"sampleRate":8000', '"sampleRate":16000'), "media format"),
        (START.replace("audio/x-mulaw", "audio/x-alaw"), "media format"),
        (START.replace('"tracks":["inbound"]', '"tracks":"inbound"'), "tracks"),
        (START.replace('"tenant":"acme"', '"tenant":{"a":1}'), "short string"),
        (START.replace('"callSid":"CA11111111111111111111111111111111",', ""), "callSid"),
        (START.replace(SID, "MZother", 1), "differs from streamSid"),
        ("[" * 100_000 + "]" * 100_000, "over"),
        ("{" + '"a":' * 20_000 + "1" + "}" * 20_000, "over"),
    ],
)
def test_malformed_messages_raise_protocol_violation(text, complaint):
    with pytest.raises(ProtocolViolation, match=complaint):
        twilio.parse_event(text)


def test_deeply_nested_json_within_the_size_limit_is_a_violation_not_a_crash():
    with pytest.raises(ProtocolViolation):
        twilio.parse_event('{"event":"media","media":' + "[" * 30_000 + "]" * 30_000 + "}")


def test_huge_payloads_are_too_big():
    audio = base64.b64encode(bytes(twilio.MAX_AUDIO_BYTES + 3)).decode()
    with pytest.raises(MessageTooBig):
        twilio.parse_event(message("media", media={"payload": audio}))
    with pytest.raises(MessageTooBig):
        twilio.parse_event(" " * (twilio.MAX_MESSAGE_CHARS + 1))
    ok = base64.b64encode(bytes(twilio.MAX_AUDIO_BYTES)).decode()
    media = twilio.parse_event(message("media", media={"payload": ok}))
    assert isinstance(media, Media)
    assert len(media.audio) == 16_000


def test_builds_media_mark_and_clear_in_twilios_exact_shapes():
    assert json.loads(twilio.media_message(SID, b"\xff" * 160)) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(b"\xff" * 160).decode()},
    }
    assert json.loads(twilio.mark_message(SID, "m1")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "m1"},
    }
    assert json.loads(twilio.clear_message(SID)) == {"event": "clear", "streamSid": SID}


def test_twiml_connects_a_stream_with_parameters():
    twiml = twilio.connect_stream_twiml(
        "wss://media.example.com/twilio/stream", {"agent_id": "ag_1", "note": 'a<b&"c">'}
    )
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')
    root = ElementTree.fromstring(twiml)
    assert root.tag == "Response"
    (connect,) = root
    (stream,) = connect
    assert (connect.tag, stream.tag) == ("Connect", "Stream")
    assert stream.get("url") == "wss://media.example.com/twilio/stream"
    assert [(p.tag, p.get("name"), p.get("value")) for p in stream] == [
        ("Parameter", "agent_id", "ag_1"),
        ("Parameter", "note", 'a<b&"c">'),
    ]


@pytest.mark.parametrize(
    "url", ["https://x.example/s", "wss://x.example/s?token=1", "wss:///s", "wss://x/s#f"]
)
def test_twiml_refuses_stream_urls_twilio_would_refuse(url):
    with pytest.raises(ValueError):
        twilio.connect_stream_twiml(url, {})


WEBHOOK_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
WEBHOOK_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}


def independent_signature(token, url, params):
    """Twilio's recipe, step by step: URL, then each name+value sorted by name, HMAC-SHA1."""
    data = url
    for name in sorted(params):
        data += name + params[name]
    mac = hmac.new(token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def test_signature_reproduces_the_documented_vector():
    assert twilio.signature("12345", WEBHOOK_URL, WEBHOOK_PARAMS.items()) == (
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    )
    assert independent_signature("12345", WEBHOOK_URL, WEBHOOK_PARAMS) == (
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    )


def test_signature_of_a_get_or_a_websocket_upgrade_covers_the_url_only():
    url = "wss://media.example.com/twilio/stream"
    assert twilio.signature("secret", url) == independent_signature("secret", url, {})


def test_signature_check_is_exact_and_tolerates_the_default_port():
    good = twilio.signature("12345", WEBHOOK_URL, WEBHOOK_PARAMS.items())
    params = list(WEBHOOK_PARAMS.items())
    assert twilio.signature_matches("12345", WEBHOOK_URL, params, good)
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert twilio.signature_matches("12345", with_port, params, good)
    assert not twilio.signature_matches("12346", WEBHOOK_URL, params, good)
    assert not twilio.signature_matches("12345", WEBHOOK_URL + "&x=1", params, good)
    assert not twilio.signature_matches("12345", WEBHOOK_URL, [*params, ("A", "b")], good)
    assert not twilio.signature_matches("12345", WEBHOOK_URL, params, good[:-2] + "x=")
    assert not twilio.signature_matches("12345", WEBHOOK_URL, params, "")
    assert not twilio.signature_matches("12345", WEBHOOK_URL, params, "ü")


def test_repeated_parameters_are_signed_in_sorted_order():
    one = twilio.signature("t", "https://h/p", [("A", "2"), ("A", "1"), ("B", "x")])
    expected = base64.b64encode(
        hmac.new(b"t", b"https://h/pA1A2Bx", hashlib.sha1).digest()
    ).decode()
    assert one == expected
