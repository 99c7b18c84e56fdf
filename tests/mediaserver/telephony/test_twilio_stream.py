"""Twilio end to end: a scripted Twilio sends Twilio's JSON over a real websocket to the server.

The server is the real one (store, actors, CallEdge, uvicorn on 127.0.0.1) with fake engines
that survive G.711: an energy VAD, an STT that hears "what are your opening hours", and the
actor tests' LLM and TTS (100 ms of audio a word). The offline engines on real speech are in
test_offline_phone_calls.py.
"""

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from xml.etree import ElementTree

import pytest
from websockets.exceptions import InvalidStatus

from mediaserver.store import AgentSpec
from mediaserver.telephony import g711, twilio
from mediaserver.telephony.twilio_stream import route_token
from tests.actors.fakes import Script
from tests.mediaserver.telephony.harness import (
    ACCOUNT_SID,
    TWILIO_TOKEN,
    FakeEngines,
    FakeTwilio,
    FakeTwilioApi,
    HeardStt,
    running,
    tone,
)
from tests.timing import MS

REPLY = "You said what are your opening hours. Okay."


@pytest.fixture
def api():
    fake = FakeTwilioApi()
    yield fake
    fake.close()


def serve(tmp_path, api, engines=None, **sections):
    twilio_section = {"auth_token": TWILIO_TOKEN, "api_base_url": api.url}
    twilio_section.update(sections.pop("twilio", {}))
    return running(tmp_path, engines or FakeEngines(), twilio=twilio_section, **sections)


@pytest.fixture
def server(tmp_path, api):
    with serve(tmp_path, api) as running_server:
        yield running_server


def stream_url(server):
    return server.ws_url + "/twilio/stream"


def stream_headers(server):
    return {"X-Twilio-Signature": twilio.signature(TWILIO_TOKEN, stream_url(server))}


def connect(server, sid=1):
    return FakeTwilio(stream_url(server), headers=stream_headers(server), sid=sid)


def routing(server, sid, **params):
    """The <Parameter>s our webhook would have put in the TwiML for call `sid`."""
    company = server.demo_company()
    values = {"company_id": company.id, "agent_id": "", "from": "+15550001111", "to": "", **params}
    values["token"] = route_token(TWILIO_TOKEN, sid, values)
    return values


def started_call(server, sid=1):
    caller = connect(server, sid)
    caller.start(routing(server, caller.call_sid))
    call = server.wait_for_call(lambda c: c.transport == "twilio" and c.end_reason is None)
    return caller, call


def voice_webhook(server, form, *, method="POST", signature=None, query=""):
    url = server.url + "/twilio/voice" + (f"?{query}" if query else "")
    signed = twilio.signature(TWILIO_TOKEN, url, form.items() if method == "POST" else [])
    headers = {"X-Twilio-Signature": signature if signature is not None else signed}
    data = None
    if method == "POST":
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("Content-Type"), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type"), error.read().decode()


def stream_of(twiml):
    root = ElementTree.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream}


# -- the voice webhook -----------------------------------------------------------------------


def test_voice_webhook_answers_twiml_routed_by_the_dialled_number(server):
    company = server.demo_company()
    sales = server.run(lambda: server.store.create_agent(company.id, AgentSpec(name="Sales")))
    server.run(lambda: server.store.add_number(company.id, "+18005550100", sales.id))
    form = {
        "CallSid": "CA" + "1" * 32,
        "AccountSid": ACCOUNT_SID,
        "From": "+15550001111",
        "To": "+18005550100",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    status, content_type, twiml = voice_webhook(server, form)
    assert (status, content_type.split(";")[0]) == (200, "text/xml")
    url, params = stream_of(twiml)
    assert url == server.ws_url + "/twilio/stream"
    assert params["company_id"] == company.id
    assert params["agent_id"] == sales.id
    assert params["from"] == "+15550001111"
    assert params["token"] == route_token(TWILIO_TOKEN, form["CallSid"], params)

    unknown = {**form, "To": "+18005550199"}  # not in the table, no default: the demo agent
    _, _, twiml = voice_webhook(server, unknown)
    assert stream_of(twiml)[1]["agent_id"] == ""


def test_voice_webhook_answers_a_signed_get(server):
    query = urllib.parse.urlencode({"CallSid": "CA" + "2" * 32, "To": "+18005550100"})
    status, _, twiml = voice_webhook(server, {}, method="GET", query=query)
    assert status == 200
    assert stream_of(twiml)[1]["company_id"] == server.demo_company().id


@pytest.mark.parametrize("signature", ["", "0/KCTR6DLpKmkAf8muzZqo1nDgQ="])
def test_voice_webhook_refuses_a_bad_signature_with_403(server, signature):
    status, _, body = voice_webhook(server, {"CallSid": "CA" + "1" * 32}, signature=signature)
    assert (status, body) == (403, "Forbidden")


def test_default_agent_setting_answers_unknown_numbers(tmp_path, api):
    with serve(tmp_path, api) as first:
        company = first.demo_company()
        agent = first.run(lambda: first.store.create_agent(company.id, AgentSpec(name="Front")))
    with serve(tmp_path, api, twilio={"default_agent_id": agent.id}) as server:
        _, _, twiml = voice_webhook(server, {"CallSid": "CA" + "3" * 32, "To": "+15550000000"})
        assert stream_of(twiml)[1]["agent_id"] == agent.id


# -- the stream's upgrade and start ----------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-Twilio-Signature": "bm9wZQ=="}])
def test_stream_upgrade_without_a_valid_signature_is_refused_with_403(server, headers):
    with pytest.raises(InvalidStatus) as refused:
        FakeTwilio(stream_url(server), headers=headers)
    assert refused.value.response.status_code == 403


def test_routing_parameters_not_signed_for_this_call_are_refused(server):
    caller = connect(server)
    stolen = routing(server, "CA" + "9" * 32)  # a real token, for another call
    caller.start(stolen)
    assert caller.wait_closed() == (1008, "Unauthorized")
    assert server.run(server.store.admin_list_calls) == []


def test_without_an_auth_token_parameters_are_trusted_and_nothing_is_signed(tmp_path, api):
    with serve(tmp_path, api, twilio={"auth_token": None}) as server:
        status, _, twiml = voice_webhook(server, {"CallSid": "CA" + "1" * 32}, signature="")
        assert status == 200 and "token" not in stream_of(twiml)[1]
        caller = FakeTwilio(stream_url(server))
        caller.start({})  # no parameters at all: the demo agent answers
        caller.wait_for(lambda c: "media" in c.events)
        caller.stop()
        assert caller.wait_closed() == (1000, "Call ended")


# -- a call ----------------------------------------------------------------------------------------


def test_a_call_is_answered_with_paced_media_and_marks_and_ends_on_stop(server, api):
    caller, call = started_call(server)
    caller.stream()
    # The greeting plays in 20 ms mu-law frames; marks come back as they play.
    caller.wait_for(lambda c: len(c.marks_echoed) >= 2, 5000 * MS)
    caller.speak(tone(600), wait=False)  # the caller talks over the greeting: barge-in
    caller.wait_for(lambda c: c.clears == 1)
    # The answer: 8 words at 100 ms a word, 40 frames.
    caller.wait_for(lambda c: c.media_since_clear >= 40, 10_000 * MS)
    answer = server.wait_for_turn(call, lambda t: t.role == "assistant" and t.text == REPLY)
    assert not answer.interrupted  # marks said it all played
    greeting = server.wait_for_turn(call, lambda t: t.seq == 1)
    assert greeting.interrupted
    caller.stop()
    assert caller.wait_closed() == (1000, "Call ended")

    assert set(caller.events) <= {"media", "mark", "clear"}
    for message in caller.received:
        assert message["streamSid"] == caller.stream_sid
        assert set(message) <= {"event", "streamSid", "media", "mark"}
    assert set(caller.media_sizes) == {160}  # 20 ms of mu-law, no header
    assert caller.audio[:4] != b"RIFF"
    ended = server.wait_for_call(lambda c: c.id == call.id and c.end_reason is not None)
    assert (ended.transport, ended.end_reason, ended.peer_id) == (
        "twilio",
        "hangup",
        "+15550001111",
    )
    user = server.wait_for_turn(call, lambda t: t.role == "user")
    assert user.text == "what are your opening hours"
    assert api.requests == []  # Twilio stopped the stream itself: no REST hang-up


def test_outbound_media_is_paced_in_real_time_at_most_100_ms_ahead(server):
    caller, _ = started_call(server)
    caller.wait_for(lambda c: c.events.count("media") >= 50, 5000 * MS)
    times = caller.media_times[:50]
    # 50 frames are 1 s of audio: they may not arrive in much less than 900 ms (100 ms lead).
    assert times[49] - times[0] >= 0.9 - 0.1
    assert times[4] - times[0] < 0.05  # the first 100 ms go at once
    caller.stop()
    caller.wait_closed()


def test_decoded_outbound_audio_is_the_bot_audio(server):
    caller, _ = started_call(server)
    caller.wait_for(lambda c: c.events.count("media") >= 20, 5000 * MS)
    samples = g711.ulaw_decode(bytes(caller.audio[160 * 2 : 160 * 20]))
    # The fake TTS speaks a constant 7 at 24 kHz: after resampling and G.711, 8 (the nearest code).
    assert set(samples.tolist()) <= {0, 8}
    assert (samples == 8).mean() > 0.9
    caller.stop()
    caller.wait_closed()


def test_dtmf_reaches_the_session_and_is_stored(server):
    caller, call = started_call(server)
    caller.dtmf("5")
    caller.dtmf("#")
    event = server.wait_for_event(call, "dtmf")
    assert event.data == {"digit": "5"}
    caller.stop()
    caller.wait_closed()
    # The socket closes before the recorder has written everything; it writes the end last.
    server.wait_for_call(lambda c: c.id == call.id and c.end_reason is not None)
    digits = [e.data["digit"] for e in server.events(call) if e.kind == "dtmf"]
    assert digits == ["5", "#"]


# -- hanging up through the REST API --------------------------------------------------------


def assert_hung_up(api, caller):
    (request,) = api.wait_for_requests(1)
    assert request["path"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{caller.call_sid}.json"
    assert request["form"] == {"Status": "completed"}
    expected = base64.b64encode(f"{ACCOUNT_SID}:{TWILIO_TOKEN}".encode()).decode()
    assert request["authorization"] == f"Basic {expected}"


def test_max_duration_hangs_up_through_the_rest_api(tmp_path, api):
    with serve(tmp_path, api, limits={"max_call_duration_s": 1.0}) as server:
        caller, call = started_call(server)
        caller.stream()
        assert caller.wait_closed() == (1000, "Call ended")
        assert_hung_up(api, caller)
        ended = server.wait_for_call(lambda c: c.id == call.id and c.end_reason is not None)
        assert ended.end_reason == "max_duration"


def test_idle_timeout_hangs_up_through_the_rest_api(tmp_path, api):
    script = Script(tts_ms_per_word=10)
    engines = FakeEngines(script=script)
    with serve(tmp_path, api, engines, limits={"idle_timeout_s": 1.0}) as server:
        caller, _call = started_call(server)
        caller.stream()  # silence only
        assert caller.wait_closed(5000 * MS) == (1000, "Call ended")
        assert_hung_up(api, caller)
        assert server.wait_for_call(lambda c: c.end_reason is not None).end_reason == "idle"


def test_shutdown_hangs_up_through_the_rest_api(server, api):
    caller, _call = started_call(server)
    caller.stream()
    caller.wait_for(lambda c: "media" in c.events)
    server.run(lambda: server.calls.drain(0.0))
    assert caller.wait_closed() == (1001, "Server shutting down")
    assert_hung_up(api, caller)
    assert server.wait_for_call(lambda c: c.end_reason is not None).end_reason == "shutdown"


class CrashingStt(HeardStt):
    def open(self, call_id, sink):
        raise RuntimeError("the speech-to-text engine is broken")


def test_an_escalated_call_hangs_up_through_the_rest_api(tmp_path, api):
    engines = FakeEngines(stt=CrashingStt())
    with serve(tmp_path, api, engines, supervision={"max_restarts": 1}) as server:
        caller, _call = started_call(server)
        caller.stream()
        assert caller.wait_closed(10_000 * MS)[0] in (1000, 1011)
        assert_hung_up(api, caller)
        ended = server.wait_for_call(lambda c: c.end_reason is not None)
        assert ended.end_reason == "escalated"


def test_a_failing_rest_api_is_retried_and_never_blocks_the_end(tmp_path):
    api = FakeTwilioApi(status=503)
    try:
        with serve(tmp_path, api, limits={"max_call_duration_s": 0.5}) as server:
            caller, _ = started_call(server)
            assert caller.wait_closed() == (1000, "Call ended")
            assert len(api.wait_for_requests(3)) == 3
            assert server.wait_for_call(lambda c: c.end_reason is not None)
    finally:
        api.close()


# -- malformed and hostile input ----------------------------------------------------------------


def media(caller, payload):
    return {
        "event": "media",
        "sequenceNumber": "9",
        "streamSid": caller.stream_sid,
        "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": payload},
    }


HOSTILE = {
    "bad base64": lambda c: json.dumps(media(c, "not base64!")),
    "payload is a number": lambda c: json.dumps(media(c, 12345)),
    "media is a list": lambda c: json.dumps({**media(c, ""), "media": ["x"]}),
    "unknown event": lambda c: json.dumps({"event": "play", "streamSid": c.stream_sid}),
    "not json": lambda c: "{{{",
    "binary frame": lambda c: b"\x00\x01\x02",
    "second start": lambda c: json.dumps(
        {
            "event": "start",
            "streamSid": c.stream_sid,
            "start": {
                "streamSid": c.stream_sid,
                "accountSid": ACCOUNT_SID,
                "callSid": c.call_sid,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
            },
        }
    ),
    "another stream": lambda c: json.dumps({**media(c, "/////w=="), "streamSid": "MZother"}),
    "audio over 2 s in one message": lambda c: json.dumps(
        media(c, base64.b64encode(bytes(20_000)).decode())
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_closes_the_stream_ends_the_call_and_stores_why(server, api, name):
    caller, call = started_call(server)
    caller.wait_for(lambda c: "media" in c.events)
    caller.send(HOSTILE[name](caller))
    code, reason = caller.wait_closed()
    too_big = name.startswith("audio over")
    assert (code, reason) == (
        (1009, "Message too big") if too_big else (1008, "Protocol violation")
    )
    ended = server.wait_for_call(lambda c: c.id == call.id and c.end_reason is not None)
    assert ended.end_reason == "hangup"
    violation = server.wait_for_event(call, "protocol_violation")
    assert violation.data["carrier"] == "twilio" and violation.data["error"]
    assert_hung_up(api, caller)
    # The server stays up: the next call is answered.
    second, _ = started_call(server, sid=2)
    second.wait_for(lambda c: "media" in c.events)
    second.stop()
    assert second.wait_closed() == (1000, "Call ended")


def test_a_frame_over_the_websocket_limit_is_refused_with_1009(server):
    caller, call = started_call(server)
    caller.send(json.dumps(media(caller, "A" * 70_000)))
    assert caller.wait_closed()[0] == 1009
    assert server.wait_for_call(lambda c: c.id == call.id and c.end_reason).end_reason == "hangup"


@pytest.mark.parametrize(
    "first",
    [
        lambda c: media(c, "/////w=="),
        lambda c: {"event": "dtmf", "streamSid": c.stream_sid, "dtmf": {"digit": "1"}},
        lambda c: {"event": "stop", "streamSid": c.stream_sid, "stop": {}},
    ],
    ids=["media", "dtmf", "stop"],
)
def test_events_before_start_close_the_stream_without_a_call(server, first):
    caller = connect(server)
    caller.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    caller.send(first(caller))
    assert caller.wait_closed() == (1008, "Protocol violation")
    assert server.run(server.store.admin_list_calls) == []


def test_a_refused_call_closes_the_stream_with_a_reason(tmp_path, api):
    with serve(tmp_path, api, limits={"max_calls": 0}) as server:
        caller = connect(server)
        caller.start(routing(server, caller.call_sid))
        assert caller.wait_closed() == (1013, "Server at capacity")
        assert api.requests == []  # the socket's close hands the call back to its TwiML


def test_the_caller_hanging_up_without_stop_ends_the_call(server, api):
    caller, call = started_call(server)
    caller.wait_for(lambda c: "media" in c.events)
    caller.close()
    ended = server.wait_for_call(lambda c: c.id == call.id and c.end_reason is not None)
    assert ended.end_reason == "hangup"
    assert_hung_up(api, caller)  # the stream dropped, the phone call may not have


# -- no room: the webhook rejects as busy, a stream that comes anyway is closed 1013 --------------


def busy(twiml):
    root = ElementTree.fromstring(twiml)
    reject = root.find("./Reject")
    return reject is not None and reject.get("reason") == "busy" and root.find("./Connect") is None


WEBHOOK_FORM = {"CallSid": "CA" + "7" * 32, "AccountSid": ACCOUNT_SID, "From": "+15550001111"}


def test_voice_webhook_rejects_as_busy_while_the_load_gate_is_closed(server):
    server.run_sync(lambda: server.gate.set_mode("off"))
    status, _, twiml = voice_webhook(server, WEBHOOK_FORM)
    assert status == 200 and busy(twiml), twiml
    caller = connect(server)  # Twilio never would; a stale TwiML might
    caller.start(routing(server, caller.call_sid))
    assert caller.wait_closed() == (1013, "Server at capacity")
    assert server.run(lambda: server.store.list_calls(server.demo_company().id)) == []
    assert server.edge_refusals() == {"load": 2}
    server.run_sync(lambda: server.gate.set_mode("auto"))
    _, _, twiml = voice_webhook(server, WEBHOOK_FORM)
    assert stream_of(twiml)[0] == server.ws_url + "/twilio/stream"


@pytest.mark.parametrize("limits", [{"max_calls": 0}, {"company_max_calls": 0}])
def test_voice_webhook_rejects_as_busy_when_the_ledger_has_no_slot(tmp_path, api, limits):
    with serve(tmp_path, api, limits=limits) as server:
        status, _, twiml = voice_webhook(server, WEBHOOK_FORM)
        assert status == 200 and busy(twiml), twiml
