"""Twilio endpoints: the voice webhook that answers TwiML, and the Media Streams websocket.

    POST|GET /twilio/voice    form fields CallSid, AccountSid, From, To, ...
        -> TwiML <Connect><Stream url="{public wss}/twilio/stream"> with <Parameter>s naming the
           company and agent (routed by `To`, else twilio.default_agent_id, else the demo agent);
           <Reject/> when no agent answers, <Reject reason="busy"/> when the server has no room
           for the call now (draining, overloaded, or the ledger full for the server or company)
    WS /twilio/stream         connected, start, media, dtmf, mark, stop (see `twilio.py`)

With `twilio.auth_token` set, `X-Twilio-Signature` must match on both (403 otherwise), and the
routing parameters carry an HMAC bound to the CallSid: the upgrade's signature covers only the
URL, which is the same for every call, so it alone would let a replayed upgrade pick any agent.
Without a token (development), parameters are trusted and nothing is signed.

The call ends through `LiveCall`; unless Twilio stopped the stream, the phone call is then
completed through the REST API (`TwilioCalls`). Closing the socket alone would also end it,
since our TwiML has nothing after `<Connect>`, but only the REST call is sure to.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response

from actors.messages import EndReason
from config.settings import ServerSettings, TwilioSettings
from mediaserver.calls import CallEdge, CallRefusal, LiveCall, Transport
from mediaserver.store import Store
from mediaserver.telephony import twilio
from mediaserver.telephony.events import Started, StreamEvent
from mediaserver.telephony.media_stream import CLOSE_POLICY, CarrierStream, Pacing, WireAudio
from mediaserver.telephony.routing import route_call
from mediaserver.telephony.twilio_rest import TwilioCalls

logger = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
STREAM_PATH = "/twilio/stream"
MAX_FORM_BYTES = 64 * 1024
TWIML = "text/xml"
PARAMS = ("company_id", "agent_id", "from", "to")  # the routing <Parameter>s, in signing order
REFILL_MS = 40  # send two 20 ms frames per wake-up: half the timer wake-ups, 60-100 ms ahead


def public_base(server: ServerSettings, fallback: str) -> str:
    """Our public http(s) base URL: `server.public_url`, else what the request was sent to."""
    return (server.public_url or fallback).rstrip("/")


def websocket_url(base: str, path: str) -> str:
    """https://host -> wss://host/path (http -> ws)."""
    parts = urlsplit(base)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{path}"


def route_token(auth_token: str, call_sid: str, params: dict[str, str]) -> str:
    """HMAC-SHA256 binding the routing parameters to one call (hex)."""
    signed = "\n".join([call_sid, *(params.get(name, "") for name in PARAMS)])
    return hmac.new(auth_token.encode(), signed.encode(), hashlib.sha256).hexdigest()


class TwilioCarrier:
    """Twilio's side of a `CarrierStream`: mu-law 8 kHz, 20 ms frames, REST hang-up."""

    name = "twilio"

    def __init__(
        self, *, edge: CallEdge, store: Store, settings: TwilioSettings, calls: TwilioCalls
    ) -> None:
        self._edge = edge
        self._store = store
        self._settings = settings
        self._calls = calls

    def parse(self, text: str | bytes, /) -> StreamEvent:
        return twilio.parse_event(text)

    def wire_audio(self, started: Started, /) -> WireAudio:
        return WireAudio(sample_rate=twilio.SAMPLE_RATE, ulaw=True)  # `parse_event` checked it

    def pacing(self, wire: WireAudio, /) -> Pacing:
        lead_ms = self._settings.playout_lead_ms
        return Pacing(
            chunk_ms=20,
            lead_ms=lead_ms,
            mark_every_ms=self._settings.mark_every_ms,
            refill_ms=min(REFILL_MS, lead_ms),
        )

    def media_message(self, stream_sid: str, audio: bytes, /) -> str:
        return twilio.media_message(stream_sid, audio)

    def mark_message(self, stream_sid: str, name: str, /) -> str:
        return twilio.mark_message(stream_sid, name)

    def clear_message(self, stream_sid: str, /) -> str:
        return twilio.clear_message(stream_sid)

    async def open_call(self, started: Started, transport: Transport, /) -> LiveCall:
        params = dict(started.custom_parameters)
        token = self._settings.auth_token
        if token is not None:
            expected = route_token(token.get_secret_value(), started.call_sid, params)
            if not hmac.compare_digest(expected, params.get("token", "")):
                logger.warning(
                    "< start for %s: routing parameters not signed by us", started.call_sid
                )
                raise CallRefusal("unauthorized")
        route = await route_call(
            self._store,
            company_id=params.get("company_id", ""),
            agent_id=params.get("agent_id", ""),
            number=params.get("to", ""),
            default_agent_id=self._settings.default_agent_id,
        )
        if route is None:
            raise CallRefusal("unknown_agent")
        return await self._edge.open_call(
            route.company,
            transport=transport,
            transport_name="twilio",
            peer_id=(params.get("from") or started.call_sid)[:128],
            agent_id=route.agent_id,
        )

    async def ended(self, started: Started, reason: EndReason, /) -> None:
        logger.info("= %s ended (%s): completing it through the REST API", started.call_sid, reason)
        await self._calls.hang_up(started.call_sid, started.account_sid)


def twilio_routes(
    edge: CallEdge,
    store: Store,
    *,
    server: ServerSettings,
    settings: TwilioSettings,
    calls: TwilioCalls,
) -> APIRouter:
    """`POST|GET /twilio/voice` and `WS /twilio/stream`."""
    router = APIRouter()
    carrier = TwilioCarrier(edge=edge, store=store, settings=settings, calls=calls)

    @router.api_route(VOICE_PATH, methods=["GET", "POST"])
    async def voice(request: Request) -> Response:
        form: list[tuple[str, str]] = []
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_FORM_BYTES:
                return Response("Request too large", status_code=413)
            try:
                form = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=200)
            except (UnicodeDecodeError, ValueError):
                return Response("Bad form", status_code=400)
        base = public_base(server, str(request.base_url))
        if settings.auth_token is not None:
            url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            received = request.headers.get("x-twilio-signature", "")
            token = settings.auth_token.get_secret_value()
            if not twilio.signature_matches(token, url, form, received):
                logger.warning("< %s %s: bad X-Twilio-Signature", request.method, VOICE_PATH)
                return Response("Forbidden", status_code=403)
        fields = dict(form) if request.method == "POST" else dict(request.query_params)
        call_sid = fields.get("CallSid", "")
        route = await route_call(
            store, number=fields.get("To", ""), default_agent_id=settings.default_agent_id
        )
        if route is None:
            logger.warning(
                "< call %s to %s: no agent answers; rejecting", call_sid, fields.get("To")
            )
            return Response(twilio.reject_twiml(), media_type=TWIML)
        try:
            await edge.ensure_room(route.company.id)
        except CallRefusal as refusal:
            # Load refusals are logged once per episode by the gate, not once per call.
            level = logging.DEBUG if refusal.reason == "load" else logging.INFO
            logger.log(level, "< call %s: no room (%s): busy", call_sid, refusal.reason)
            return Response(twilio.reject_twiml("busy"), media_type=TWIML)
        params = {
            "company_id": route.company.id,
            "agent_id": route.agent_id or "",
            "from": fields.get("From", "")[:64],
            "to": fields.get("To", "")[:64],
        }
        if settings.auth_token is not None:
            params["token"] = route_token(settings.auth_token.get_secret_value(), call_sid, params)
        logger.info(
            "< call %s to %s: %s agent %s of company %s",
            call_sid,
            params["to"],
            route.rule,
            params["agent_id"] or "(default)",
            route.company.id,
        )
        twiml = twilio.connect_stream_twiml(websocket_url(base, STREAM_PATH), params)
        return Response(twiml, media_type=TWIML)

    @router.websocket(STREAM_PATH)
    async def stream(websocket: WebSocket) -> None:
        if settings.auth_token is not None:
            base = public_base(server, str(websocket.base_url))
            url = websocket_url(base, STREAM_PATH)
            received = websocket.headers.get("x-twilio-signature", "")
            token = settings.auth_token.get_secret_value()
            if not twilio.signature_matches(token, url, [], received):
                logger.warning("< %s upgrade: bad X-Twilio-Signature", STREAM_PATH)
                await websocket.close(CLOSE_POLICY)  # before accept: uvicorn answers 403
                return
        await websocket.accept()
        await CarrierStream(websocket, carrier).run()

    return router
