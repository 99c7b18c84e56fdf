"""Every way a call with media ends: the tree stops, the peer closes, the reason is stored,
`ended` is sent while the socket is open, and nothing is left behind (calls, peers, threads).
"""

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from config.settings import LimitsSettings, WebRTCSettings
from mediaserver.webrtc.peer import live_peers
from tests.mediaserver.webrtc.loopback import (
    WEBRTC,
    Caller,
    Server,
    Signal,
    decoder_threads,
    run,
    running_server,
    wait_for,
)
from tests.timing import MS

DEFAULT_LIMITS = LimitsSettings()


@dataclass
class Path:
    """How to end the call; what the caller sees (None: the caller closed the socket itself)."""

    end: Callable[[Server, Signal, Caller, AsyncExitStack], Awaitable[Any]]
    reason: str
    close: tuple[int, str] | None
    limits: LimitsSettings = DEFAULT_LIMITS
    webrtc: WebRTCSettings = WEBRTC
    connect_media: bool = True
    broken_stt: bool = False


async def send_bye(server: Server, sig: Signal, caller: Caller, stack: AsyncExitStack) -> None:
    await sig.send({"type": "bye"})


async def close_socket(server: Server, sig: Signal, caller: Caller, stack: AsyncExitStack) -> None:
    await sig.ws.close()


async def nothing(server: Server, sig: Signal, caller: Caller, stack: AsyncExitStack) -> None:
    pass


async def mute_caller(server: Server, sig: Signal, caller: Caller, stack: AsyncExitStack) -> None:
    caller.audio.mute.set()  # no more RTP: the caller vanished from the network


async def close_caller_peer(
    server: Server, sig: Signal, caller: Caller, stack: AsyncExitStack
) -> None:
    await caller.pc.close()


async def drain(server: Server, sig: Signal, caller: Caller, stack: AsyncExitStack) -> None:
    await server.drain(0.0)


async def replace(server: Server, sig: Signal, caller: Caller, stack: AsyncExitStack) -> Signal:
    second = await stack.enter_async_context(Signal.connect(server.signal_url()))
    await second.next("session")
    return second


PATHS = {
    "bye": Path(send_bye, "bye", (1000, "Call ended")),
    "socket_closed": Path(close_socket, "hangup", None),
    "ice_never_connects": Path(
        nothing,
        "ice_failed",
        (1000, "Call ended"),
        webrtc=WebRTCSettings(host_addresses=["127.0.0.1"], ice_connect_timeout_s=0.3),
        connect_media=False,
    ),
    "media_stops": Path(
        mute_caller,
        "ice_failed",
        (1000, "Call ended"),
        webrtc=WebRTCSettings(host_addresses=["127.0.0.1"], media_timeout_s=0.4),
    ),
    "peer_closed": Path(close_caller_peer, "ice_failed", (1000, "Call ended")),
    "max_duration": Path(
        nothing, "max_duration", (1000, "Call ended"), limits=LimitsSettings(max_call_duration_s=1)
    ),
    "idle": Path(nothing, "idle", (1000, "Call ended"), limits=LimitsSettings(idle_timeout_s=0.5)),
    "escalated": Path(nothing, "escalated", (1011, "Internal error"), broken_stt=True),
    "replaced": Path(replace, "replaced", (1008, "Replaced")),
    "shutdown": Path(drain, "shutdown", (1001, "Server shutting down")),
}


@pytest.mark.parametrize("name", list(PATHS))
def test_every_end_path_stops_everything_and_records_why(tmp_path, name):
    path = PATHS[name]

    async def scenario():
        threads_before = decoder_threads()
        async with (
            running_server(tmp_path, limits=path.limits, webrtc=path.webrtc) as server,
            AsyncExitStack() as stack,
        ):
            server.engines.broken_stt = path.broken_stt
            async with Signal.connect(server.signal_url()) as sig:
                call_id = (await sig.next("session"))["call_id"]
                caller = Caller()
                await sig.send({"type": "offer", "sdp": await caller.offer()})
                answer = await sig.next("answer")
                if path.connect_media:
                    await caller.accept(answer["sdp"])
                    await caller.connected()
                await path.end(server, sig, caller, stack)
                if path.close is not None:
                    ended = await sig.next("ended", timeout=10_000 * MS)
                    assert ended == {"type": "ended", "reason": path.reason}
                    assert await sig.closed() == path.close
                await caller.close()

            call = None
            for _ in range(500):
                call = await server.store.get_call(server.company_id, call_id)
                if call is not None and not call.active:
                    break
                await asyncio.sleep(0.01)
            assert call is not None and call.end_reason == path.reason
            assert call_id not in [c.call_id for c in server.edge.live_calls()]
            await wait_for(lambda: server.registry.handle(call_id) is None)
            await wait_for(lambda: live_peers() == 0)
            await wait_for(lambda: decoder_threads() <= threads_before)

    run(scenario)
