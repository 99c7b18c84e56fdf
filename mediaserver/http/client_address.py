"""The client address: who is on the other end of a request, for rules that depend on it.

It is the socket peer, or the `X-Forwarded-For` address when the peer is one of
`server.forwarded_allow_ips` (a proxy such as HAProxy in front; loopback by default): uvicorn's
proxy-headers middleware rewrites the ASGI scope's `client` before any route sees it, so every
rule reads the same address behind a proxy as without one. Requests between a node's own
processes arrive on Unix sockets and have no client address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any


def client_address(scope: Mapping[str, Any]) -> str | None:
    """The client's IP address as text, or None (a Unix socket, or nothing known)."""
    client = scope.get("client")
    if not client:
        return None
    host = client[0]
    return host if isinstance(host, str) and host else None


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (and an IPv4-mapped loopback); False for anything else."""
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
