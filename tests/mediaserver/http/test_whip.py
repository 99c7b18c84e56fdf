"""WHIP (RFC 9725) against the real server: an aiortc publisher over httpx."""

import asyncio
import re
from typing import Any

import httpx
import pytest

from config.settings import LimitsSettings
from mediaserver.webrtc.peer import live_peers
from tests.mediaserver.webrtc.loopback import (
    Caller,
    Server,
    run,
    running_server,
    tone,
    wait_for,
)

SDP = "application/sdp"


def auth(server: Server, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key if key is None else key}"}


async def publish(
    client: httpx.AsyncClient, server: Server, caller: Caller, query: str = ""
) -> httpx.Response:
    return await client.post(
        f"/whip{query}",
        content=await caller.offer(),
        headers={**auth(server), "Content-Type": SDP},
    )


async def ended(server: Server, call_id: str) -> Any:
    for _ in range(500):
        call = await server.store.get_call(server.company_id, call_id)
        if call is not None and not call.active:
            return call
        await asyncio.sleep(0.01)
    raise AssertionError("the call did not end")


def test_a_sendrecv_publisher_hears_the_agent_and_delete_ends_the_call(tmp_path):
    async def scenario():
        async with (
            running_server(tmp_path) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            caller = Caller(events_channel=True)
            response = await publish(client, server, caller)
            assert response.status_code == 201
            assert response.headers["content-type"] == SDP
            location = response.headers["location"]
            assert re.fullmatch(r"/whip/[0-9a-f]{32}", location)
            assert response.headers["etag"] and response.headers["accept-patch"]
            assert "a=sendrecv" in response.text
            await caller.accept(response.text)
            await caller.connected()
            await wait_for(lambda: caller.loud_ms() >= 100)  # the greeting, spoken
            await wait_for(lambda: any(e.get("type") == "response" for e in caller.events))
            caller.audio.play(tone(0.4))
            await wait_for(lambda: any(e.get("final") for e in caller.events))
            assert {"type": "speech", "state": "started"} in caller.events

            deleted = await client.delete(location, headers=auth(server))
            assert deleted.status_code == 200
            call = await ended(server, location.rsplit("/", 1)[1])
            assert call.transport == "whip" and call.end_reason == "bye"
            assert (await client.delete(location, headers=auth(server))).status_code == 404
            await wait_for(lambda: live_peers() == 0)
            await caller.close()

    run(scenario)


def test_a_sendonly_publisher_is_received_only_and_its_transcript_is_stored(tmp_path):
    async def scenario():
        async with (
            running_server(tmp_path) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            caller = Caller(direction="sendonly")
            response = await publish(client, server, caller)
            assert response.status_code == 201
            assert "a=recvonly" in response.text
            call_id = response.headers["location"].rsplit("/", 1)[1]
            await caller.accept(response.text)
            await caller.connected()
            caller.audio.play(tone(0.4))
            turns = []
            for _ in range(500):
                turns = await server.store.list_turns(server.company_id, call_id)
                if any(t.role == "user" for t in turns):
                    break
                await asyncio.sleep(0.01)
            assert [t.text for t in turns if t.role == "user"] == ["hello world"]
            assert caller.loud_ms() == 0  # receive-only: no greeting, no reply audio
            await client.delete(response.headers["location"], headers=auth(server))
            await caller.close()

    run(scenario)


def test_trickled_candidates_are_taken_and_ice_restarts_are_not(tmp_path):
    async def scenario():
        async with (
            running_server(tmp_path) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            caller = Caller()
            response = await publish(client, server, caller)
            location, etag = response.headers["location"], response.headers["etag"]
            fragment = (
                "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\nm=audio 9 RTP/AVP 0\r\n"
                "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
                "a=end-of-candidates\r\n"
            )
            frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
            patch = await client.patch(
                location, content=fragment, headers={**auth(server), **frag, "If-Match": etag}
            )
            assert patch.status_code == 204
            stale = await client.patch(
                location, content=fragment, headers={**auth(server), **frag, "If-Match": '"x"'}
            )
            assert stale.status_code == 412
            restart = await client.patch(
                location, content=fragment, headers={**auth(server), **frag, "If-Match": "*"}
            )
            assert restart.status_code == 422
            wrong = await client.patch(
                location, content="x", headers={**auth(server), "Content-Type": SDP}
            )
            assert wrong.status_code == 415
            await client.delete(location, headers=auth(server))
            await caller.close()

    run(scenario)


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": SDP}, "offer", 401),  # no token
        ({"Content-Type": SDP, "Authorization": "Bearer nope"}, "offer", 401),
        ({"Content-Type": "text/plain", "Authorization": "key"}, "offer", 415),
        ({"Content-Type": SDP, "Authorization": "key"}, "v=0\r\n", 400),
    ],
)
def test_bad_requests_are_refused(tmp_path, headers, body, status):
    async def scenario():
        async with (
            running_server(tmp_path) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            caller = Caller()
            content = await caller.offer() if body == "offer" else body
            if headers.get("Authorization") == "key":
                headers["Authorization"] = f"Bearer {server.key}"
            response = await client.post("/whip", content=content, headers=headers)
            assert response.status_code == status
            if status == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
            assert await server.store.list_calls(server.company_id) == []
            await caller.close()

    run(scenario)


@pytest.mark.parametrize(
    ("limits", "status"),
    [
        (LimitsSettings(max_calls=1), 503),
        (LimitsSettings(company_max_calls=1), 503),
        (LimitsSettings(call_attempts_per_min=1), 429),
    ],
)
def test_capacity_and_rate_refusals_say_when_to_retry(tmp_path, limits, status):
    async def scenario():
        async with (
            running_server(tmp_path, limits=limits) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            first, second = Caller(), Caller()
            assert (await publish(client, server, first)).status_code == 201
            refused = await publish(client, server, second)
            assert refused.status_code == status
            assert int(refused.headers["retry-after"]) >= 1
            await first.close()
            await second.close()

    run(scenario)


def test_methods_cors_and_unknown_sessions(tmp_path):
    async def scenario():
        async with (
            running_server(tmp_path) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            preflight = await client.options(
                "/whip",
                headers={
                    "Origin": "https://example.org",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == "*"
            assert "POST" in preflight.headers["access-control-allow-methods"]
            assert "Location" in preflight.headers["access-control-expose-headers"]
            for method in ("GET", "PUT"):
                assert (await client.request(method, "/whip")).status_code == 405
            assert (await client.get("/whip/abc")).status_code == 405
            missing = await client.delete("/whip/abc", headers=auth(server))
            assert missing.status_code == 404
            unauthorized = await client.delete("/whip/abc")
            assert unauthorized.status_code == 401

    run(scenario)


def test_another_companys_key_cannot_end_a_session(tmp_path):
    async def scenario():
        async with (
            running_server(tmp_path) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            other = await server.store.create_company("other")
            _, other_key = await server.store.create_api_key(other.id)
            caller = Caller()
            location = (await publish(client, server, caller)).headers["location"]
            response = await client.delete(location, headers=auth(server, other_key))
            assert response.status_code == 404
            assert (await client.delete(location, headers=auth(server))).status_code == 200
            await caller.close()

    run(scenario)


def test_an_overloaded_server_answers_503_with_retry_after(tmp_path):
    async def scenario():
        async with (
            running_server(tmp_path) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            server.gate.set_mode("off")
            caller = Caller()
            refused = await publish(client, server, caller)
            assert refused.status_code == 503 and refused.text == "load\n"
            assert int(refused.headers["retry-after"]) >= 1
            assert await server.store.list_calls(server.company_id) == []
            server.gate.set_mode("auto")
            assert (await publish(client, server, caller)).status_code == 201
            await caller.close()

    run(scenario)
