"""The Exotel voicebot codec: both field spellings in, the configured one out, chunk rules."""

import base64
import json

import pytest

from mediaserver.errors import ProtocolViolation
from mediaserver.telephony import exotel
from mediaserver.telephony.events import Cleared, Connected, Dtmf, Mark, Media, Started, Stopped
from mediaserver.telephony.wire import MessageTooBig

SID = "b5c1e2f0a9d8"
START = {
    "event": "start",
    "sequence_number": "1",
    "stream_sid": SID,
    "start": {
        "stream_sid": SID,
        "call_sid": "c0ffee1234",
        "account_sid": "acme1",
        "from": "+919800000001",
        "to": "+918000000002",
        "custom_parameters": {"tenant": "acme"},
        "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
    },
}


def camel(value):
    """The same message with Pipecat's camelCase keys."""
    names = {
        "stream_sid": "streamSid",
        "sequence_number": "sequenceNumber",
        "call_sid": "callSid",
        "account_sid": "accountSid",
        "custom_parameters": "customParameters",
        "media_format": "mediaFormat",
        "sample_rate": "sampleRate",
        "bit_rate": "bitRate",
    }
    if isinstance(value, dict):
        return {names.get(k, k): camel(v) for k, v in value.items()}
    return value


EXPECTED_START = Started(
    stream_sid=SID,
    call_sid="c0ffee1234",
    account_sid="acme1",
    custom_parameters={"tenant": "acme"},
    encoding="audio/x-raw",
    sample_rate=8000,
    from_number="+919800000001",
    to_number="+918000000002",
)


@pytest.mark.parametrize("spelling", [lambda m: m, camel])
def test_parses_start_in_either_spelling(spelling):
    assert exotel.parse_event(json.dumps(spelling(START))) == EXPECTED_START


def test_connected_needs_no_other_field():
    assert exotel.parse_event('{"event":"connected"}') == Connected()


def test_parses_media_dtmf_mark_clear_and_stop():
    pcm = bytes(range(200)) * 8
    media = {
        "event": "media",
        "sequence_number": "3",
        "stream_sid": SID,
        "media": {"chunk": "2", "timestamp": "200", "payload": base64.b64encode(pcm).decode()},
    }
    assert exotel.parse_event(json.dumps(media)) == Media(
        stream_sid=SID, audio=pcm, chunk=2, timestamp_ms=200
    )
    assert exotel.parse_event(json.dumps(camel(media))) == Media(
        stream_sid=SID, audio=pcm, chunk=2, timestamp_ms=200
    )
    dtmf = {"event": "dtmf", "stream_sid": SID, "dtmf": {"digit": "7", "duration": "120"}}
    assert exotel.parse_event(json.dumps(dtmf)) == Dtmf(stream_sid=SID, digit="7", duration_ms=120)
    odd = {"event": "dtmf", "stream_sid": SID, "dtmf": {"digit": "#", "duration": "0.12s"}}
    assert exotel.parse_event(json.dumps(odd)) == Dtmf(stream_sid=SID, digit="#")
    mark = {"event": "mark", "stream_sid": SID, "mark": {"name": "m3"}}
    assert exotel.parse_event(json.dumps(mark)) == Mark(stream_sid=SID, name="m3")
    assert exotel.parse_event('{"event":"clear","stream_sid":"' + SID + '"}') == Cleared(
        stream_sid=SID
    )
    stop = {
        "event": "stop",
        "stream_sid": SID,
        "stop": {"call_sid": "c0ffee1234", "account_sid": "acme1", "reason": "callended"},
    }
    assert exotel.parse_event(json.dumps(stop)) == Stopped(
        stream_sid=SID, call_sid="c0ffee1234", reason="callended"
    )


def parse_start(message):
    started = exotel.parse_event(json.dumps(message))
    assert isinstance(started, Started)
    return started


def test_start_defaults_to_pcm_8k_and_knows_mulaw_and_16k():
    started = parse_start({"event": "start", "stream_sid": SID, "start": {"call_sid": "c"}})
    assert (started.encoding, started.sample_rate) == ("audio/x-raw", 8000)
    wide = json.loads(json.dumps(START))
    wide["start"]["media_format"] = {"encoding": "audio/L16;rate=16000", "sample_rate": 16000}
    assert parse_start(wide).sample_rate == 16000
    ulaw = json.loads(json.dumps(START))
    ulaw["start"]["media_format"] = {"encoding": "audio/x-mulaw;rate=8000", "sample_rate": "8000"}
    assert parse_start(ulaw).encoding == "audio/x-mulaw"


def with_start(**changes):
    message = json.loads(json.dumps(START))
    message["start"].update(changes)
    return json.dumps(message)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (b"\x00\x01", "binary"),
        ("{", "not JSON"),
        ('"start"', "object"),
        ('{"event":"start"}', "missing field 'start'"),
        ('{"event":"play"}', "unknown event"),
        ('{"event":"media","stream_sid":"s","media":{"payload":"AAA*"}}', "base64"),
        ('{"event":"media","stream_sid":"s","media":{"payload":["AAAA"]}}', "string"),
        ('{"event":"media","media":{"payload":"AAAA"}}', "stream_sid"),
        ('{"event":"media","stream_sid":7,"media":{"payload":"AAAA"}}', "string"),
        ('{"event":"dtmf","stream_sid":"s","dtmf":{"digit":"?"}}', "DTMF"),
        ('{"event":"mark","stream_sid":"s","mark":"m1"}', "object"),
        (with_start(media_format={"sample_rate": "11025"}), "sample rate"),
        (with_start(media_format={"sample_rate": "8000", "bit_rate": "8"}), "sample size"),
        (with_start(media_format={"sample_rate": -1}), "sample rate"),
        (with_start(media_format={"sample_rate": 8000.5}), "integer"),
        (with_start(custom_parameters=["agent"]), "object"),
        (with_start(stream_sid="other"), "differs"),
        ('{"event":"start","start":{"call_sid":"c"}}', "empty stream_sid"),
    ],
)
def test_malformed_messages_raise_protocol_violation(text, complaint):
    with pytest.raises(ProtocolViolation, match=complaint):
        exotel.parse_event(text)


def test_huge_messages_are_too_big():
    audio = base64.b64encode(bytes(exotel.MAX_AUDIO_BYTES + 3)).decode()
    media = {"event": "media", "stream_sid": SID, "media": {"payload": audio}}
    with pytest.raises(MessageTooBig):
        exotel.parse_event(json.dumps(media))


@pytest.mark.parametrize("sid_field", ["stream_sid", "streamSid"])
def test_builds_media_mark_and_clear_with_the_configured_spelling(sid_field):
    pcm = bytes(3200)
    assert json.loads(exotel.media_message(SID, pcm, sid_field=sid_field)) == {
        "event": "media",
        sid_field: SID,
        "media": {"payload": base64.b64encode(pcm).decode()},
    }
    assert json.loads(exotel.mark_message(SID, "m1", sid_field=sid_field)) == {
        "event": "mark",
        sid_field: SID,
        "mark": {"name": "m1"},
    }
    assert json.loads(exotel.clear_message(SID, sid_field=sid_field)) == {
        "event": "clear",
        sid_field: SID,
    }


def test_outbound_chunks_follow_exotels_size_rules():
    assert exotel.chunk_bytes(8000, 200) == 3200  # the documented minimum
    assert exotel.chunk_bytes(8000, 400) == 6400
    assert exotel.chunk_bytes(16000, 100) == 3200
    assert exotel.chunk_bytes(16000, 200) == 6400
    assert exotel.chunk_bytes(24000, 200) == 9600
    for ms, rate in ((100, 8000), (20, 8000), (210, 8000), (3000, 24000)):
        with pytest.raises(ValueError, match="Exotel chunk"):
            exotel.chunk_bytes(rate, ms)
