"""The client address: the peer, or X-Forwarded-For from a trusted proxy only."""

import asyncio

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from mediaserver.http.client_address import client_address, is_loopback
from mediaserver.startup import bind_socket


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.168.1.2", False),
        ("8.8.8.8", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
        (None, False),
    ],
)
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_the_scope_client_is_the_address_and_a_unix_socket_has_none():
    assert client_address({"client": ("203.0.113.5", 4242)}) == "203.0.113.5"
    assert client_address({"client": None}) is None
    assert client_address({}) is None


def serve_and_ask(trusted, headers):
    """A real uvicorn server configured as `http_server` does; what the route saw."""
    app = FastAPI()

    @app.get("/who")
    async def who(request: Request) -> dict[str, str | None]:
        return {"client": client_address(request.scope)}

    async def scenario():
        sock = bind_socket("127.0.0.1", 0)
        config = uvicorn.Config(
            app, proxy_headers=True, forwarded_allow_ips=trusted, log_config=None, lifespan="off"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        port = sock.getsockname()[1]
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/who", headers=headers)
        server.should_exit = True
        await serving
        return answer.json()["client"]

    return asyncio.run(scenario())


def test_a_trusted_proxy_sets_the_client_address():
    forwarded = {"X-Forwarded-For": "203.0.113.5"}
    assert serve_and_ask(["127.0.0.1", "::1"], forwarded) == "203.0.113.5"


def test_an_untrusted_peer_cannot_claim_another_address():
    forwarded = {"X-Forwarded-For": "127.0.0.1"}
    assert serve_and_ask(["10.0.0.7"], forwarded) == "127.0.0.1"  # the real peer, not the header
    assert serve_and_ask(["10.0.0.7"], {"X-Forwarded-For": "203.0.113.5"}) == "127.0.0.1"
