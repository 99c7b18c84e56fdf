"""Request lines are logged by us, and no API key ever reaches the log."""

import logging

import httpx
import pytest

from mediaserver.http.access_log import redact
from tests.mediaserver.signaling.test_signaling import session
from tests.mediaserver.webrtc.loopback import Caller, Signal, run, running_server


@pytest.mark.parametrize(
    ("path", "query", "logged"),
    [
        ("/signal/peer-1/ms_live_secret", "", "/signal/peer-1/***"),
        ("/signal/peer-1/ms_live_secret", "agent=a1", "/signal/peer-1/***?agent=a1"),
        ("/signal/peer-1", "", "/signal/peer-1"),
        ("/readyz", "token=abc&x=1", "/readyz?token=***&x=1"),
        ("/whip", "api_key=abc", "/whip?api_key=***"),
    ],
)
def test_redact_hides_keys_in_paths_and_queries(path, query, logged):
    assert redact(path, query) == logged


def test_no_key_used_on_any_route_appears_in_the_log(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="mediaserver")

    async def scenario():
        async with running_server(tmp_path) as server:
            async with Signal.connect(server.signal_url("in-path")) as sig:
                await session(sig)
                await sig.send({"type": "bye"})
                await sig.closed()
            headers = {"Authorization": f"Bearer {server.key}"}
            async with Signal.connect(
                f"{server.ws_url}/signal/in-header", additional_headers=headers
            ) as sig:
                await session(sig)
            async with httpx.AsyncClient(base_url=server.url) as client:
                caller = Caller()
                sdp = await caller.offer()
                posted = await client.post(
                    "/whip", content=sdp, headers={**headers, "Content-Type": "application/sdp"}
                )
                await client.delete(posted.headers["location"], headers=headers)
                await client.get(f"/readyz?token={server.key}")
                await caller.close()
            return server.key

    key = run(scenario)
    clients = ("websockets.client", "httpx", "httpcore")  # the test's own clients log too
    server_side = [r for r in caplog.records if not r.name.startswith(clients)]
    leaks = [f"{r.name}: {r.getMessage()}" for r in server_side if key in r.getMessage()]
    assert leaks == []
    lines = [r.getMessage() for r in caplog.records if r.name == "mediaserver.http.access_log"]
    assert any('"WS /signal/in-path/***" 101' in line for line in lines)
    assert any('"WS /signal/in-header" 101' in line for line in lines)
    assert any('"POST /whip" 201' in line for line in lines)
    assert any('"GET /readyz?token=***" 200' in line for line in lines)
    assert not any('"WebSocket ' in r.getMessage() for r in caplog.records)  # uvicorn's own
