"""Which host candidates aiortc offers: local addresses, an advertised address, a UDP port range.

aiortc has no API for these; its ICE agent (aioice's `Connection`) binds one UDP socket per
local address on an ephemeral port and offers each as a host candidate. `configure_ice` adapts
that once at start-up, process-wide (decision 0030): aiortc's `rtcicetransport` module gets a
`Connection` subclass whose `get_component_candidates` binds our addresses within our port range
and advertises our address. Server-reflexive (STUN) and relayed (TURN) candidates are still
gathered by aioice itself. Every peer connection made after the call uses the policy, including
a test's client peers in the same process.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import socket
from dataclasses import dataclass

import aioice.ice
import aiortc.rtcicetransport
from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from config.settings import WebRTCSettings
from mediaserver.errors import StartupError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IcePolicy:
    host_addresses: tuple[str, ...] = ()  # empty: what aioice finds (every interface but lo)
    advertised_address: str = ""
    port_min: int = 0  # 0: any port
    port_max: int = 0

    @property
    def is_default(self) -> bool:
        return not (self.host_addresses or self.advertised_address or self.port_min)


_policy = IcePolicy()


def configure_ice(settings: WebRTCSettings) -> IcePolicy:
    """Install the ICE policy of `settings` for every peer connection made from now on.

    Raises:
        StartupError: a host or advertised address is not an IP address.
    """
    global _policy  # noqa: PLW0603  (process-wide by nature: aiortc offers no per-peer hook)
    for address in (*settings.host_addresses, settings.advertised_address):
        if address:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise StartupError(f"webrtc: {address!r} is not an IP address") from None
    _policy = IcePolicy(
        host_addresses=tuple(settings.host_addresses),
        advertised_address=settings.advertised_address,
        port_min=settings.udp_port_min,
        port_max=settings.udp_port_max,
    )
    aiortc.rtcicetransport.Connection = PolicyConnection  # type: ignore[attr-defined]  # the adaptation
    logger.info(
        "= ICE: host addresses %s, advertised %s, UDP ports %s",
        list(_policy.host_addresses) or "all but loopback",
        _policy.advertised_address or "as bound",
        f"{_policy.port_min}-{_policy.port_max}" if _policy.port_min else "any",
    )
    return _policy


class PolicyConnection(aioice.ice.Connection):
    """aioice's ICE agent, gathering host candidates by the installed `IcePolicy`."""

    async def get_component_candidates(
        self, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        policy = _policy
        if addresses and policy.host_addresses:
            # Non-empty `addresses` means the transport policy allows host candidates.
            addresses = list(policy.host_addresses)
        if not addresses or (not policy.port_min and not policy.advertised_address):
            candidates: list[Candidate] = await super().get_component_candidates(
                component, addresses, timeout
            )
            return candidates
        protocols = [
            protocol
            for address in addresses
            if (protocol := await self._bind_host(component, address, policy)) is not None
        ]
        self._protocols += protocols
        candidates = [protocol.local_candidate for protocol in protocols]
        if self.stun_server:
            for protocol in protocols:
                if ipaddress.ip_address(protocol.local_candidate.host).version == 4:
                    try:
                        reflexive, _ = await asyncio.wait_for(
                            aioice.ice.server_reflexive_candidate(protocol, self.stun_server),
                            timeout,
                        )
                        candidates.append(reflexive)
                    except (OSError, TimeoutError, aioice.stun.TransactionError) as exc:
                        logger.info("no server-reflexive candidate via %s: %s", protocol, exc)
        # TURN (relay) candidates: aioice's own code, with no host addresses to bind again.
        candidates += await super().get_component_candidates(component, [], timeout)
        return candidates

    async def _bind_host(
        self, component: int, address: str, policy: IcePolicy
    ) -> aioice.ice.StunProtocol | None:
        loop = asyncio.get_running_loop()
        if policy.port_min:
            ports = list(range(policy.port_min, policy.port_max + 1))
            start = random.randrange(len(ports))
            ports = ports[start:] + ports[:start]
        else:
            ports = [0]
        for port in ports:
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: aioice.ice.StunProtocol(self), local_addr=(address, port)
                )
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                logger.warning("cannot bind UDP on %s: %s", address, exc)
                return None
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE
                )
            bound_host, bound_port = transport.get_extra_info("sockname")[:2]
            host = policy.advertised_address or bound_host
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=bound_port,
                type="host",
            )
            return protocol
        logger.error(
            "no free UDP port on %s in %d-%d: this call gets no host candidate",
            address,
            policy.port_min,
            policy.port_max,
        )
        return None
