"""Exotel end to end: a scripted Exotel voicebot stream over a real websocket to the real server."""

import base64
import json

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from mediaserver.store import AgentSpec
from tests.mediaserver.telephony.harness import FakeEngines, FakeExotel, running, tone
from tests.timing import MS

REPLY = "You said what are your opening hours. Okay."
USER, PASSWORD = "exo-key", "exo-token"


def basic(user=USER, password=PASSWORD):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def serve(tmp_path, **exotel):
    section = {"username": USER, "password": PASSWORD, **exotel}
    return running(tmp_path, FakeEngines(), exotel=section)


@pytest.fixture
def server(tmp_path):
    with serve(tmp_path) as running_server:
        yield running_server


def connect(server, path="/exotel/stream", **kwargs):
    return FakeExotel(server.ws_url + path, headers=basic(), **kwargs)


def test_a_call_is_answered_in_chunks_exotel_accepts_and_ends_on_stop(server):
    caller = connect(server)
    caller.start()
    caller.stream()
    call = server.wait_for_call(lambda c: c.transport == "exotel")
    caller.wait_for(lambda c: len(c.marks_echoed) >= 1, 5000 * MS)
    caller.speak(tone(600), wait=False)  # over the greeting: barge-in
    caller.wait_for(lambda c: c.clears == 1)
    caller.wait_for(lambda c: c.media_since_clear >= 4, 10_000 * MS)  # 800 ms of answer
    answer = server.wait_for_turn(call, lambda t: t.role == "assistant" and t.text == REPLY)
    assert not answer.interrupted
    caller.stop()
    assert caller.wait_closed() == (1000, "Call ended")

    assert set(caller.events) <= {"media", "mark", "clear"}
    for message in caller.received:
        assert message["stream_sid"] == caller.stream_sid
        assert "streamSid" not in message
    # Exotel's rules: whole 320-byte frames, at least 3200 bytes, at most 100 kB.
    assert all(size % 320 == 0 and 3200 <= size <= 100_000 for size in caller.media_sizes)
    samples = np.frombuffer(bytes(caller.audio), dtype="<i2")
    assert (samples == 7).mean() > 0.8  # PCM16 at 8 kHz: the fake TTS's constant 7
    ended = server.wait_for_call(lambda c: c.id == call.id and c.end_reason is not None)
    assert (ended.end_reason, ended.peer_id) == ("hangup", "+919800000001")
    user = server.wait_for_turn(call, lambda t: t.role == "user")
    assert user.text == "what are your opening hours"


def test_camel_case_streams_and_the_other_spelling_are_served(tmp_path):
    with serve(tmp_path, stream_sid_field="streamSid") as server:
        caller = connect(server, camel=True)
        caller.start()
        caller.wait_for(lambda c: "media" in c.events)
        caller.stop()
        assert caller.wait_closed() == (1000, "Call ended")
        assert all(m["streamSid"] == caller.stream_sid for m in caller.received)


def test_dtmf_reaches_the_session_and_is_stored(server):
    caller = connect(server)
    caller.start()
    call = server.wait_for_call(lambda c: c.transport == "exotel")
    caller.dtmf("7")
    assert server.wait_for_event(call, "dtmf").data == {"digit": "7"}
    caller.stop()
    caller.wait_closed()


@pytest.mark.parametrize(
    "headers",
    [{}, basic(password="wrong"), basic(user="other"), {"Authorization": "Bearer exo-token"}],
)
def test_the_upgrade_needs_basic_auth_when_configured(server, headers):
    with pytest.raises(InvalidStatus) as refused:
        FakeExotel(server.ws_url + "/exotel/stream", headers=headers)
    assert refused.value.response.status_code == 403


def answering_agent(server, path="/exotel/stream", **start):
    """Start a call, wait until its row exists, hang up; return the id of the agent it reached."""
    before = len(server.run(server.store.admin_list_calls))
    caller = connect(server, path=path)
    caller.start(**start)
    server.wait_for_call(lambda c: len(server.run(server.store.admin_list_calls)) > before)
    caller.stop()
    assert caller.wait_closed() == (1000, "Call ended")
    return server.run(server.store.admin_list_calls)[0].agent_id  # newest first


def test_routing_by_custom_parameter_then_number_then_default(tmp_path):
    with serve(tmp_path) as setup:
        company = setup.demo_company()
        named = setup.run(lambda: setup.store.create_agent(company.id, AgentSpec(name="N")))
        numbered = setup.run(lambda: setup.store.create_agent(company.id, AgentSpec(name="T")))
        fallback = setup.run(lambda: setup.store.create_agent(company.id, AgentSpec(name="F")))
        setup.run(lambda: setup.store.add_number(company.id, "+918000000002", numbered.id))
    with serve(tmp_path, default_agent_id=fallback.id) as server:
        assert answering_agent(server, custom_parameters={"agent_id": named.id}) == named.id
        assert answering_agent(server, to="+918000000002") == numbered.id
        assert answering_agent(server, to="+918000000099") == fallback.id
        path = f"/exotel/stream?agent_id={named.id}"  # custom parameters may come on the URL
        assert answering_agent(server, path=path, to="+918000000002") == named.id


def test_without_a_default_the_demo_agent_answers(server):
    demo = server.run(lambda: server.store.get_default_agent(server.demo_company().id))
    assert answering_agent(server, to="+918000000099") == demo.id


def test_without_credentials_configured_anyone_may_connect(tmp_path):
    with running(tmp_path, FakeEngines()) as server:
        caller = FakeExotel(server.ws_url + "/exotel/stream")
        caller.start()
        caller.wait_for(lambda c: "media" in c.events)
        caller.stop()
        assert caller.wait_closed() == (1000, "Call ended")


HOSTILE = {
    "bad base64": {"event": "media", "stream_sid": "b5c1e2f0a9d8", "media": {"payload": "@@@@"}},
    "odd PCM length": {
        "event": "media",
        "stream_sid": "b5c1e2f0a9d8",
        "media": {"payload": base64.b64encode(b"\x00\x01\x02").decode()},
    },
    "wrong type": {"event": "mark", "stream_sid": "b5c1e2f0a9d8", "mark": {"name": 5}},
    "unknown event": {"event": "transfer", "stream_sid": "b5c1e2f0a9d8"},
    "another stream": {"event": "dtmf", "stream_sid": "other", "dtmf": {"digit": "1"}},
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_closes_the_stream_ends_the_call_and_stores_why(server, name):
    caller = connect(server)
    caller.start()
    call = server.wait_for_call(lambda c: c.transport == "exotel")
    caller.wait_for(lambda c: "media" in c.events)
    caller.send(json.dumps(HOSTILE[name]))
    assert caller.wait_closed() == (1008, "Protocol violation")
    ended = server.wait_for_call(lambda c: c.id == call.id and c.end_reason is not None)
    assert ended.end_reason == "hangup"
    assert server.wait_for_event(call, "protocol_violation").data["carrier"] == "exotel"
    second = connect(server)
    second.start()
    second.wait_for(lambda c: "media" in c.events)
    second.stop()
    assert second.wait_closed() == (1000, "Call ended")


def test_media_before_start_closes_the_stream_without_a_call(server):
    caller = connect(server)
    caller.send({"event": "connected"})
    caller.media(bytes(1600))
    assert caller.wait_closed() == (1008, "Protocol violation")
    assert server.run(server.store.admin_list_calls) == []


def test_an_inbound_clear_is_ignored(server):
    caller = connect(server)
    caller.start()
    caller.send({"event": "clear", "stream_sid": caller.stream_sid})
    caller.wait_for(lambda c: "media" in c.events)
    caller.stop()
    assert caller.wait_closed() == (1000, "Call ended")


def test_a_stream_arriving_while_the_load_gate_is_closed_is_closed_1013(server):
    server.run_sync(lambda: server.gate.set_mode("off"))
    caller = connect(server)
    caller.start()
    assert caller.wait_closed() == (1013, "Server at capacity")
    assert server.run(lambda: server.store.list_calls(server.demo_company().id)) == []
