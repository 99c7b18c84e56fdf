"""Signaling contract v1 against the real server on 127.0.0.1: messages, events, close codes."""

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import websockets

from config.settings import LimitsSettings
from tests.mediaserver.webrtc.loopback import (
    Caller,
    Server,
    Signal,
    run,
    running_server,
    tone,
    wait_for,
)
from tests.timing import MS


async def session(sig: Signal) -> dict[str, Any]:
    message = await sig.recv()
    assert message["type"] == "session"
    return message


async def call_ended(server: Server, call_id: str, reason: str) -> None:
    """The store row is ended with `reason` (written right after the socket closed)."""
    for _ in range(400):
        call = await server.store.get_call(server.company_id, call_id)
        if call is not None and call.end_reason is not None:
            assert call.end_reason == reason
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"call {call_id} not ended in the store")


def test_session_is_the_first_message_then_nothing_unprompted(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            first = await sig.recv()
            assert first == {
                "type": "session",
                "protocol": "signal/1",
                "call_id": first["call_id"],
                "conversation_id": first["conversation_id"],
                "agent": {"id": server.agent_id, "name": "Tester"},
            }
            with pytest.raises(TimeoutError):
                await sig.recv(timeout=300 * MS)  # no greeting without media
            call = await server.store.get_call(server.company_id, first["call_id"])
            assert call is not None and call.active and call.transport == "webrtc"
            assert call.conversation_id == first["conversation_id"] and call.peer_id == "peer-1"

    run(scenario)


def test_ping_gets_pong_and_bye_ends_the_call_with_1000(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            call_id = (await session(sig))["call_id"]
            await sig.send({"type": "ping"})
            assert await sig.recv() == {"type": "pong"}
            await sig.send({"type": "bye"})
            assert await sig.recv() == {"type": "ended", "reason": "bye"}
            assert await sig.closed() == (1000, "Call ended")
            await call_ended(server, call_id, "bye")

    run(scenario)


def test_a_typed_message_gets_deltas_then_one_response_and_is_stored(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            call_id = (await session(sig))["call_id"]
            await sig.send({"type": "message", "message": "what time is it"})
            transcript = await sig.next("transcript")
            assert transcript["text"] == "what time is it" and transcript["final"] is True
            response = await sig.next("response")
            assert response["content"] == "You said what time is it. Okay."
            deltas = [m for m in sig.seen if m["type"] == "response.delta"]
            assert "".join(d["text"] for d in deltas) == response["content"]
            assert {d["turn_id"] for d in deltas} == {response["turn_id"]}
            await sig.send({"type": "bye"})
            await sig.closed()
            await call_ended(server, call_id, "bye")
            turns = await server.store.list_turns(server.company_id, call_id)
            assert [(t.role, t.text) for t in turns] == [
                ("user", "what time is it"),
                ("assistant", "You said what time is it. Okay."),
            ]

    run(scenario)


def test_key_in_a_bearer_header_and_agent_chosen_by_query(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server:
            url = f"{server.ws_url}/signal/peer-9?agent={server.echo_agent_id}"
            headers = {"Authorization": f"Bearer {server.key}"}
            async with Signal.connect(url, additional_headers=headers) as sig:
                first = await session(sig)
                assert first["agent"] == {"id": server.echo_agent_id, "name": "Echo"}

    run(scenario)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/signal/peer-1/not-a-key", (1008, "Unauthorized")),
        ("/signal/peer-1", (1008, "Unauthorized")),  # no key at all
        ("/signal/peer-1/{key}?agent=nope", (1008, "Unknown agent")),
        ("/signal/{long}/{key}", (1008, "Bad peer id")),
    ],
)
def test_refusals_accept_the_upgrade_then_close_with_a_reason(tmp_path, url, expected):
    async def scenario():
        async with running_server(tmp_path) as server:
            target = server.ws_url + url.format(key=server.key, long="p" * 129)
            async with Signal.connect(target) as sig:
                assert await sig.closed() == expected
            assert sig.seen == []
            assert await server.store.list_calls(server.company_id) == []

    run(scenario)


def test_a_revoked_key_is_refused(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server:
            (key,) = await server.store.list_api_keys(server.company_id)
            await server.store.revoke_api_key(server.company_id, key.id)
            async with Signal.connect(server.signal_url()) as sig:
                assert await sig.closed() == (1008, "Unauthorized")

    run(scenario)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (LimitsSettings(max_calls=1), (1013, "Server at capacity")),
        (LimitsSettings(company_max_calls=1), (1013, "Company at capacity")),
        (LimitsSettings(call_attempts_per_min=1), (1013, "Rate limited")),
        ("load", (1013, "Server at capacity")),
    ],
)
def test_capacity_load_and_call_rate_refusals_close_with_1013(tmp_path, limits, expected):
    async def scenario():
        async with (
            running_server(tmp_path, limits=None if limits == "load" else limits) as server,
            Signal.connect(server.signal_url("first")) as first,
        ):
            await session(first)
            if limits == "load":
                server.gate.set_mode("off")
            async with Signal.connect(server.signal_url("second")) as second:
                assert await second.closed() == expected
            await first.send({"type": "ping"})
            assert await first.recv() == {"type": "pong"}  # the first call never noticed

    run(scenario)


def test_a_draining_server_refuses_with_1001_and_ends_live_calls_as_shutdown(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server:
            async with Signal.connect(server.signal_url("live")) as live:
                call_id = (await session(live))["call_id"]
                await server.drain(0.0)
                assert await live.recv() == {"type": "ended", "reason": "shutdown"}
                assert await live.closed() == (1001, "Server shutting down")
                await call_ended(server, call_id, "shutdown")
            async with Signal.connect(server.signal_url("late")) as late:
                assert await late.closed() == (1001, "Server shutting down")

    run(scenario)


def test_a_second_socket_with_the_same_peer_id_replaces_the_first(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server:
            async with Signal.connect(server.signal_url("same")) as old:
                old_id = (await session(old))["call_id"]
                async with Signal.connect(server.signal_url("same")) as new:
                    assert await old.recv() == {"type": "ended", "reason": "replaced"}
                    assert await old.closed() == (1008, "Replaced")
                    new_id = (await session(new))["call_id"]
                    assert new_id != old_id
                    await call_ended(server, old_id, "replaced")
                    await new.send({"type": "ping"})
                    assert await new.recv() == {"type": "pong"}
            assert [c.call_id for c in server.edge.live_calls()] in ([], [new_id])

    run(scenario)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        (b"\x00\x01", "bad_json"),
        ('{"type": "shout"}', "unknown_type"),
        ('{"sdp": "v=0"}', "missing_field"),
        ('{"type": "offer"}', "missing_field"),
        (
            '{"type": "candidate", "candidate": "candidate:1 1 udp 1 1.2.3.4 9 typ host"}',
            "missing_field",
        ),
        (json.dumps({"type": "message", "message": "x" * 4001}), "too_large"),
        ('{"type": "offer", "sdp": "hello"}', "bad_sdp"),
        ('{"type": "candidate", "candidate": "candidate:garbage", "sdpMid": "0"}', "bad_sdp"),
    ],
)
def test_bad_input_gets_an_error_event_and_the_connection_lives_on(tmp_path, frame, code):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            await session(sig)
            await sig.send(frame)
            error = await sig.next("error")
            assert error["code"] == code and error["message"]
            await sig.send({"type": "ping"})
            assert await sig.next("pong") == {"type": "pong"}

    run(scenario)


def test_messages_over_the_rate_are_refused_and_repeated_abuse_closes_with_1008(tmp_path):
    async def scenario():
        limits = LimitsSettings(signal_messages_per_s=5)
        async with running_server(tmp_path, limits=limits) as server:
            async with Signal.connect(server.signal_url("abuser")) as sig:
                call_id = (await session(sig))["call_id"]
                with contextlib.suppress(websockets.ConnectionClosed):
                    for _ in range(20):
                        await sig.send({"type": "ping"})
                assert await sig.closed() == (1008, "Too many bad messages")
                kinds = [m["type"] for m in sig.seen]
                # A burst of 5 passes; the 6th refused message within 10 s is one too many.
                assert kinds == ["session", *["pong"] * 5, *["error"] * 6, "ended"]
                assert {m["code"] for m in sig.seen if m["type"] == "error"} == {"rate_limited"}
                await call_ended(server, call_id, "hangup")
            async with Signal.connect(server.signal_url("bystander")) as other:
                await session(other)  # the server and other callers never noticed

    run(scenario)


def test_a_frame_over_the_size_cap_closes_with_1009(tmp_path):
    async def scenario():
        limits = LimitsSettings(signal_message_max_bytes=2048)
        async with (
            running_server(tmp_path, limits=limits) as server,
            Signal.connect(server.signal_url()) as sig,
        ):
            call_id = (await session(sig))["call_id"]
            await sig.send({"type": "message", "message": "y" * 3000})
            code, _ = await sig.closed()
            assert code == 1009
            await call_ended(server, call_id, "hangup")

    run(scenario)


def test_closing_the_socket_without_bye_ends_the_call_as_hangup(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server:
            async with Signal.connect(server.signal_url()) as sig:
                call_id = (await session(sig))["call_id"]
            await call_ended(server, call_id, "hangup")
            assert await _no_live_calls(server)

    run(scenario)


async def _no_live_calls(server: Server) -> bool:
    for _ in range(400):
        if not server.edge.live_calls():
            return True
        await asyncio.sleep(0.005)
    return False


def test_readyz_says_full_while_the_ledger_has_no_slot_left(tmp_path):
    async def scenario():
        limits = LimitsSettings(max_calls=1)
        async with running_server(tmp_path, limits=limits) as server:
            ready = server.url + "/readyz"
            assert await asyncio.to_thread(_get, ready) == (200, {"status": "ready"})
            async with Signal.connect(server.signal_url()) as sig:
                await session(sig)
                assert await asyncio.to_thread(_get, ready) == (503, {"status": "full"})
                await sig.send({"type": "bye"})
                await sig.closed()
            await wait_for(lambda: not server.edge.live_calls())
            assert await asyncio.to_thread(_get, ready) == (200, {"status": "ready"})

    run(scenario)


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_speech_and_transcript_events_follow_the_callers_audio(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            await session(sig)
            caller = Caller()
            await sig.send({"type": "offer", "sdp": await caller.offer()})
            await caller.accept((await sig.next("answer"))["sdp"])
            await sig.next("response", content="Hello there.")  # the greeting, once media is up
            caller.audio.play(tone(0.4))
            assert await sig.next("speech") == {"type": "speech", "state": "started"}
            assert (await sig.next("transcript"))["final"] is False
            assert await sig.next("speech") == {"type": "speech", "state": "stopped"}
            final = await sig.next("transcript", final=True)
            assert final["text"] == "hello world"
            reply = await sig.next("response")
            assert reply["content"] == "You said hello world. Okay."
            assert reply["turn_id"] > final["turn_id"]
            await caller.close()

    run(scenario)


def test_talking_over_the_bot_interrupts_it(tmp_path):
    async def scenario():
        async with running_server(tmp_path) as server, Signal.connect(server.signal_url()) as sig:
            await session(sig)
            caller = Caller()
            await sig.send({"type": "offer", "sdp": await caller.offer()})
            await caller.accept((await sig.next("answer"))["sdp"])
            await sig.next("response", content="Hello there.")
            words = " ".join(f"word{i}" for i in range(60))  # about 4 s of bot speech
            await sig.send({"type": "message", "message": words})
            await wait_for(lambda: caller.loud_ms() >= 400)  # the reply is playing
            caller.audio.play(tone(0.3))
            interrupted = await sig.next("interrupted")
            assert interrupted["spoken"] and interrupted["spoken"] != f"You said {words}. Okay."
            heard = caller.loud_ms()
            await asyncio.sleep(0.4)  # a window to hear whatever still comes
            # The server flushes within a frame; what was on the wire or in the caller's
            # jitter buffer still plays. The rest of the 4 s reply never comes.
            assert caller.loud_ms() - heard <= 200
            assert caller.loud_ms() < 2000
            await caller.close()

    run(scenario)
