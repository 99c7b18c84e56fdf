"""WHIP (RFC 9725): a call from one HTTP POST of an SDP offer, ended by DELETE.

    POST   /whip[?agent=ID&peer=NAME]   Authorization: Bearer KEY, Content-Type: application/sdp
           -> 201, Location: /whip/{call_id}, ETag, body: the SDP answer (all our candidates)
    PATCH  /whip/{call_id}              application/trickle-ice-sdpfrag (RFC 8840): the client's
           trickled candidates -> 204; an ICE restart -> 422 (not supported); stale If-Match -> 412
    DELETE /whip/{call_id}              -> 200; the call ends with reason `bye`
    OPTIONS on both                     -> 204 with CORS headers (RFC 9725 §4.2)

Refusals: no or bad key 401, wrong content type 415, bad offer 400, unknown agent 404,
capacity, overload (`load`) or shutting down 503 with Retry-After, call attempts over the rate
429 with Retry-After.
An offer whose audio is `sendrecv` hears the agent; a `sendonly` one (OBS, GStreamer) is
receive-only and its transcript goes to the store. A data channel named `events` gets the
signaling events (docs/signaling.md) mirrored on it, and `ended` last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import Response

from actors.messages import BotAudio, EndReason
from config.settings import LimitsSettings, WebRTCSettings
from mediaserver.calls import CallEdge, CallEvent, CallRefusal, LiveCall
from mediaserver.signaling.protocol import ended_message, event_message
from mediaserver.signaling.server import bearer_key
from mediaserver.webrtc.peer import BadOffer, CallPeer, audio_direction

logger = logging.getLogger(__name__)

SDP = "application/sdp"
SDP_FRAGMENT = "application/trickle-ice-sdpfrag"
RETRY_AFTER_S = 5
END_WAIT_S = 10.0
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Accept-Patch, Retry-After",
}
REFUSAL_STATUS = {
    "unauthorized": 401,
    "unknown_agent": 404,
    "rate_limited": 429,
    "capacity": 503,
    "company_capacity": 503,
    "load": 503,
    "shutting_down": 503,
    "internal": 500,
}


@dataclass(eq=False)
class WhipSession:
    """One WHIP call: the call's `Transport` (its peer carries audio, events go to a channel)."""

    etag: str = field(default_factory=lambda: f'"{secrets.token_hex(8)}"')
    call: LiveCall | None = None
    peer: CallPeer | None = None

    def send_event(self, event: CallEvent, /) -> None:
        if self.peer is not None:
            self.peer.send_event(event_message(event))

    def send_audio(self, audio: BotAudio, /) -> None:
        if self.peer is not None:
            self.peer.send_audio(audio)

    def flush_audio(self) -> None:
        if self.peer is not None:
            self.peer.flush_audio()

    async def close(self, reason: EndReason, /) -> None:
        if self.peer is not None:
            self.peer.send_event(ended_message(reason))
            await self.peer.close()


def _text(status: int, text: str, **headers: str) -> Response:
    return Response(text + "\n", status, media_type="text/plain", headers={**CORS, **headers})


def _refused(refusal: CallRefusal) -> Response:
    status = REFUSAL_STATUS[refusal.reason]
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="mediaserver"'
    if status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(refusal.retry_after_s or RETRY_AFTER_S)))
    return _text(status, refusal.reason.replace("_", " "), **headers)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


class WhipEndpoint:
    """The WHIP endpoint and its sessions (loop only)."""

    def __init__(self, edge: CallEdge, *, webrtc: WebRTCSettings, limits: LimitsSettings) -> None:
        self._edge = edge
        self._webrtc = webrtc
        self._limits = limits
        self.sessions: dict[str, WhipSession] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    def routes(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/whip", self.endpoint_options, methods=["OPTIONS"])
        router.add_api_route("/whip", self.publish, methods=["POST"])
        router.add_api_route("/whip/{session_id}", self.session_options, methods=["OPTIONS"])
        router.add_api_route("/whip/{session_id}", self.trickle, methods=["PATCH"])
        router.add_api_route("/whip/{session_id}", self.unpublish, methods=["DELETE"])
        return router

    async def endpoint_options(self) -> Response:
        return Response(
            status_code=204,
            headers={**CORS, "Access-Control-Allow-Methods": "POST, OPTIONS", "Accept-Post": SDP},
        )

    async def session_options(self, session_id: str) -> Response:
        return Response(
            status_code=204,
            headers={
                **CORS,
                "Access-Control-Allow-Methods": "PATCH, DELETE, OPTIONS",
                "Accept-Patch": SDP_FRAGMENT,
            },
        )

    async def publish(self, request: Request) -> Response:
        """POST /whip: an SDP offer in, 201 with the answer and the session's Location out."""
        key = bearer_key(request.headers.get("authorization"))
        if not key:
            return _refused(CallRefusal("unauthorized"))
        if _media_type(request) != SDP:
            return _text(415, f"the offer must be {SDP}")
        body = await request.body()
        if len(body) > self._limits.signal_message_max_bytes:
            return _text(413, "offer too large")
        try:
            offer = body.decode()
            direction = audio_direction(offer)
        except (UnicodeDecodeError, BadOffer) as exc:
            return _text(400, f"bad offer: {exc}")
        try:
            company = await self._edge.authenticate(key)
            session = WhipSession()
            call = await self._edge.open_call(
                company,
                transport=session,
                transport_name="whip",
                peer_id=request.query_params.get("peer") or "whip",
                agent_id=request.query_params.get("agent") or None,
            )
        except CallRefusal as refusal:
            return _refused(refusal)
        session.call = call
        session.peer = CallPeer(call, self._webrtc)
        try:
            answer = await session.peer.answer(offer)
        except BadOffer as bad:
            call.hang_up("hangup")
            return _text(400, str(bad))
        self.sessions[call.call_id] = session
        watcher = asyncio.get_running_loop().create_task(self._forget(call))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        call.log.info("= WHIP session: %s offer", direction)
        return Response(
            answer,
            201,
            media_type=SDP,
            headers={
                **CORS,
                "Location": f"/whip/{call.call_id}",
                "ETag": session.etag,
                "Accept-Patch": SDP_FRAGMENT,
            },
        )

    async def trickle(self, request: Request, session_id: str) -> Response:
        """PATCH: trickled candidates (RFC 8840 fragment); no ICE restarts."""
        found = await self._session(request, session_id)
        if isinstance(found, Response):
            return found
        if _media_type(request) != SDP_FRAGMENT:
            return _text(415, f"PATCH takes {SDP_FRAGMENT}")
        if_match = request.headers.get("if-match")
        if if_match == "*":
            return _text(422, "ICE restarts are not supported")
        if if_match is not None and if_match != found.etag:
            return _text(412, "ETag does not match")
        candidates = parse_sdp_fragment((await request.body()).decode(errors="replace"))
        assert found.peer is not None
        try:
            for candidate, mid in candidates:
                await found.peer.add_candidate(candidate, mid, None if mid else 0)
        except BadOffer as bad:
            return _text(400, str(bad))
        return Response(status_code=204, headers=CORS)

    async def unpublish(self, request: Request, session_id: str) -> Response:
        """DELETE: end the call (reason `bye`) and answer once it has ended."""
        found = await self._session(request, session_id)
        if isinstance(found, Response):
            return found
        call = found.call
        assert call is not None
        call.hang_up("bye")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.finished.wait(), END_WAIT_S)
        return Response(status_code=200, headers=CORS)

    async def _session(self, request: Request, session_id: str) -> WhipSession | Response:
        key = bearer_key(request.headers.get("authorization"))
        try:
            company = await self._edge.authenticate(key)
        except CallRefusal as refusal:
            return _refused(refusal)
        session = self.sessions.get(session_id)
        if session is None or session.call is None or session.call.company_id != company.id:
            return _text(404, "no such session")
        return session

    async def _forget(self, call: LiveCall) -> None:
        await call.finished.wait()
        self.sessions.pop(call.call_id, None)


def parse_sdp_fragment(fragment: str) -> list[tuple[str, str | None]]:
    """The candidates of an RFC 8840 SDP fragment, each with its media's mid; "" = the end."""
    candidates: list[tuple[str, str | None]] = []
    mid: str | None = None
    for raw in fragment.splitlines():
        line = raw.strip()
        if line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:")
        elif line.startswith("a=candidate:"):
            candidates.append((line.removeprefix("a="), mid))
        elif line == "a=end-of-candidates":
            candidates.append(("", mid))
    return candidates
