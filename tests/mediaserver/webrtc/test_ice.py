"""The ICE policy (decision 0030): host addresses, advertised address, UDP port range."""

import random
import re
from collections.abc import Iterator

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from config.settings import WebRTCSettings
from mediaserver.errors import StartupError
from mediaserver.webrtc.ice import configure_ice
from tests.mediaserver.webrtc.loopback import WEBRTC, Caller, run

CANDIDATE = re.compile(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)")


@pytest.fixture(autouse=True)
def _loopback_policy_after() -> Iterator[None]:
    yield
    configure_ice(WEBRTC)


async def host_candidates(settings: WebRTCSettings, peers: int = 1) -> list[list[tuple[str, int]]]:
    """The host candidates each of `peers` new peer connections offers under `settings`."""
    configure_ice(settings)
    found = []
    for _ in range(peers):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        found.append(
            [
                (host, int(port))
                for host, port, kind in CANDIDATE.findall(pc.localDescription.sdp)
                if kind == "host"
            ]
        )
        await pc.close()
    return found


def test_only_the_configured_host_addresses_are_offered():
    (candidates,) = run(lambda: host_candidates(WebRTCSettings(host_addresses=["127.0.0.1"])))
    assert [host for host, _ in candidates] == ["127.0.0.1"]


def test_ports_come_from_the_configured_range():
    low = random.randrange(40_000, 60_000)
    settings = WebRTCSettings(host_addresses=["127.0.0.1"], udp_port_min=low, udp_port_max=low + 9)
    found = run(lambda: host_candidates(settings, peers=3))
    ports = [port for candidates in found for _, port in candidates]
    assert len(ports) == 3 and all(low <= port <= low + 9 for port in ports)


def test_a_full_port_range_leaves_the_peer_without_candidates(caplog):
    async def scenario():
        low = random.randrange(40_000, 60_000)
        settings = WebRTCSettings(host_addresses=["127.0.0.1"], udp_port_min=low, udp_port_max=low)
        configure_ice(settings)
        holder = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        holder.addTransceiver("audio")
        await holder.setLocalDescription(await holder.createOffer())  # holds the one port
        (second,) = await host_candidates(settings)
        await holder.close()
        return second

    assert run(scenario) == []
    assert "no free UDP port" in caplog.text


def test_the_advertised_address_replaces_the_bound_one():
    settings = WebRTCSettings(host_addresses=["127.0.0.1"], advertised_address="198.51.100.7")
    (candidates,) = run(lambda: host_candidates(settings))
    assert [host for host, _ in candidates] == ["198.51.100.7"]


def test_peers_connect_under_a_port_range():
    async def scenario():
        low = random.randrange(40_000, 60_000)
        configure_ice(
            WebRTCSettings(host_addresses=["127.0.0.1"], udp_port_min=low, udp_port_max=low + 9)
        )
        a, b = Caller(), Caller()
        await b.pc.setRemoteDescription(RTCSessionDescription(sdp=await a.offer(), type="offer"))
        await b.pc.setLocalDescription(await b.pc.createAnswer())
        await a.accept(b.pc.localDescription.sdp)
        await a.connected()
        await a.close()
        await b.close()

    run(scenario)


@pytest.mark.parametrize("address", ["localhost", "10.0.0"])
def test_addresses_must_be_ip_addresses(address):
    with pytest.raises(StartupError, match="not an IP address"):
        configure_ice(WebRTCSettings(host_addresses=[address]))
