"""Exotel endpoint: the voicebot (AgentStream) websocket.

    WS /exotel/stream[?agent_id=...]   connected, start, media, dtmf, mark, stop (see `exotel.py`)

With `exotel.username` set, the upgrade must carry `Authorization: Basic` with
`exotel.username:exotel.password` (Exotel sends it for a `wss://user:pass@host/...` URL), else 403.
Routing: the agent named by the `exotel.agent_parameter` custom parameter (or the same name in
the URL query: where Exotel puts custom parameters is unverified), else the dialled number (`to`)
in the number table, else `exotel.default_agent_id`, else the demo agent.

Audio: 16-bit PCM (or mu-law when `start.media_format` says so) at the stream's rate, in and out;
outbound in chunks of `exotel.chunk_ms` (Exotel's byte rules: `exotel.chunk_bytes`). Exotel has no
REST hang-up here: closing the socket ends the applet and the flow moves on.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging

from fastapi import APIRouter, WebSocket

from actors.messages import EndReason
from config.settings import ExotelSettings
from mediaserver.calls import CallEdge, CallRefusal, LiveCall, Transport
from mediaserver.errors import ProtocolViolation
from mediaserver.store import Store
from mediaserver.telephony import exotel
from mediaserver.telephony.events import Started, StreamEvent
from mediaserver.telephony.media_stream import CLOSE_POLICY, CarrierStream, Pacing, WireAudio
from mediaserver.telephony.routing import route_call

logger = logging.getLogger(__name__)

STREAM_PATH = "/exotel/stream"


def basic_auth_matches(header: str | None, username: str, password: str) -> bool:
    """Constant-time check of an `Authorization: Basic base64(user:pass)` header."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = f"{username}:{password}".encode()
    return hmac.compare_digest(given, expected)


class ExotelCarrier:
    """Exotel's side of a `CarrierStream`."""

    name = "exotel"

    def __init__(
        self, *, edge: CallEdge, store: Store, settings: ExotelSettings, query_agent: str = ""
    ) -> None:
        self._edge = edge
        self._store = store
        self._settings = settings
        self._query_agent = query_agent

    def parse(self, text: str | bytes, /) -> StreamEvent:
        return exotel.parse_event(text)

    def wire_audio(self, started: Started, /) -> WireAudio:
        return WireAudio(
            sample_rate=started.sample_rate, ulaw=started.encoding == exotel.ULAW_ENCODING
        )

    def pacing(self, wire: WireAudio, /) -> Pacing:
        chunk_ms = self._settings.chunk_ms
        try:
            # For mu-law the docs give no rule: keep the durations the PCM byte rules imply.
            exotel.chunk_bytes(wire.sample_rate, chunk_ms)
        except ValueError as exc:
            raise ProtocolViolation(f"exotel.chunk_ms cannot serve this stream: {exc}") from None
        return Pacing(
            chunk_ms=chunk_ms,
            lead_ms=max(self._settings.playout_lead_ms, chunk_ms),
            mark_every_ms=chunk_ms,
        )

    def media_message(self, stream_sid: str, audio: bytes, /) -> str:
        return exotel.media_message(stream_sid, audio, sid_field=self._settings.stream_sid_field)

    def mark_message(self, stream_sid: str, name: str, /) -> str:
        return exotel.mark_message(stream_sid, name, sid_field=self._settings.stream_sid_field)

    def clear_message(self, stream_sid: str, /) -> str:
        return exotel.clear_message(stream_sid, sid_field=self._settings.stream_sid_field)

    async def open_call(self, started: Started, transport: Transport, /) -> LiveCall:
        agent_id = started.custom_parameters.get(self._settings.agent_parameter, "")
        route = await route_call(
            self._store,
            agent_id=(agent_id or self._query_agent)[:128],
            number=started.to_number,
            default_agent_id=self._settings.default_agent_id,
        )
        if route is None:
            raise CallRefusal("unknown_agent")
        logger.info(
            "< exotel call %s to %s: %s agent %s of company %s",
            started.call_sid,
            started.to_number,
            route.rule,
            route.agent_id or "(default)",
            route.company.id,
        )
        return await self._edge.open_call(
            route.company,
            transport=transport,
            transport_name="exotel",
            peer_id=(started.from_number or started.call_sid or started.stream_sid)[:128],
            agent_id=route.agent_id,
        )

    async def ended(self, started: Started, reason: EndReason, /) -> None:
        """Closing the socket was the hang-up: nothing more to do."""


def exotel_routes(edge: CallEdge, store: Store, *, settings: ExotelSettings) -> APIRouter:
    """`WS /exotel/stream`."""
    router = APIRouter()

    @router.websocket(STREAM_PATH)
    async def stream(websocket: WebSocket) -> None:
        if settings.username:
            password = settings.password.get_secret_value() if settings.password else ""
            header = websocket.headers.get("authorization")
            if not basic_auth_matches(header, settings.username, password):
                logger.warning("< %s upgrade: bad or missing Basic auth", STREAM_PATH)
                await websocket.close(CLOSE_POLICY)  # before accept: uvicorn answers 403
                return
        await websocket.accept()
        query_agent = websocket.query_params.get(settings.agent_parameter, "")
        carrier = ExotelCarrier(edge=edge, store=store, settings=settings, query_agent=query_agent)
        await CarrierStream(websocket, carrier).run()

    return router
