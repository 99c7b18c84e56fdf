"""`WS /signal/{peer_id}[/{api_key}]`: signaling contract v1 over FastAPI websockets.

One `SignalingConnection` per socket. It always accepts the upgrade (a browser cannot read a
refused handshake) and refuses by closing with a code and reason (`protocol.REFUSAL_CLOSE`).
Once the call is admitted it sends `session`, then reads client messages in a loop: each costs
one token of `limits.signal_messages_per_s`; bad or over-budget messages get an `error` event
and count as abuse, and more than `limits.signal_messages_per_s` of those within 10 s close
the socket with 1008. Everything the server sends goes through one writer task, in order, so
a slow client never blocks the call's pump or its media.

The connection is the call's `Transport`: events go to the socket, audio to the call's
`CallPeer` (made at the first `offer` or `candidate`), and `close(reason)` sends `ended`, closes
the socket with `protocol.END_CLOSE[reason]` and the peer. A second socket with the same company
and peer id replaces the first: the old call ends with reason `replaced` (1008 "Replaced")
before the new one is admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from actors.messages import BotAudio, EndReason
from config.settings import LimitsSettings, WebRTCSettings
from mediaserver.calls import CallEdge, CallEvent, CallRefusal, LiveCall
from mediaserver.logs import CallLogger
from mediaserver.signaling.budget import AbuseCounter, MessageBudget
from mediaserver.signaling.protocol import (
    ABUSE_CLOSE,
    BAD_PEER_CLOSE,
    END_CLOSE,
    REFUSAL_CLOSE,
    TOO_BIG_CLOSE,
    BadMessage,
    Bye,
    Candidate,
    ClientMessage,
    ErrorCode,
    Offer,
    Ping,
    Text,
    answer_message,
    ended_message,
    error_message,
    event_message,
    parse_client_message,
    pong_message,
    session_message,
)
from mediaserver.webrtc.peer import BadOffer, CallPeer

logger = logging.getLogger(__name__)

PEER_ID = re.compile(r"[A-Za-z0-9._:@+\-]{1,128}")
REPLACE_WAIT_S = 5.0  # how long a replacing socket waits for the old call to end
CLOSE_WAIT_S = 2.0  # how long `ended` and the close frame may take to a slow client
FINISH_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class PeerSockets:
    """The live signaling socket of each (company, peer id): a newer one replaces it."""

    def __init__(self) -> None:
        self._sockets: dict[tuple[str, str], SignalingConnection] = {}

    async def claim(self, key: tuple[str, str], connection: SignalingConnection) -> None:
        """Make `connection` the peer's socket; end the previous one's call and wait for it."""
        previous = self._sockets.get(key)
        self._sockets[key] = connection
        if previous is not None:
            await previous.replace()

    def release(self, key: tuple[str, str], connection: SignalingConnection) -> None:
        if self._sockets.get(key) is connection:
            del self._sockets[key]


class SignalingConnection:
    def __init__(
        self,
        websocket: WebSocket,
        *,
        edge: CallEdge,
        sockets: PeerSockets,
        webrtc: WebRTCSettings,
        limits: LimitsSettings,
    ) -> None:
        self._ws = websocket
        self._edge = edge
        self._sockets = sockets
        self._webrtc = webrtc
        self._limits = limits
        self._budget = MessageBudget(limits.signal_messages_per_s)
        self._abuse = AbuseCounter(limits.signal_messages_per_s)
        self._out: deque[str | _Close] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._socket_open = False
        self._close_override: tuple[int, str] | None = None
        self._replaced = False
        self.done = asyncio.Event()
        self.call: LiveCall | None = None
        self.peer: CallPeer | None = None
        self.log: logging.Logger | CallLogger = logger

    # -- the connection's life -------------------------------------------------------------------

    async def run(self, *, api_key: str, peer_id: str, agent_id: str | None) -> None:
        """Serve the socket until the call ends and the socket is closed."""
        try:
            await self._ws.accept()
            self._socket_open = True
            await self._serve(api_key, peer_id, agent_id)
        finally:
            self.done.set()

    async def _serve(self, api_key: str, peer_id: str, agent_id: str | None) -> None:
        if not PEER_ID.fullmatch(peer_id):
            await self._refuse(*BAD_PEER_CLOSE)
            return
        try:
            company = await self._edge.authenticate(api_key)
        except CallRefusal as refusal:
            await self._refuse(*REFUSAL_CLOSE[refusal.reason])
            return
        slot = (company.id, peer_id)
        await self._sockets.claim(slot, self)
        try:
            try:
                call = await self._edge.open_call(
                    company,
                    transport=self,
                    transport_name="webrtc",
                    peer_id=peer_id,
                    agent_id=agent_id,
                )
            except CallRefusal as refusal:
                # Load refusals are logged once per episode by the gate, not once per call.
                level = logging.DEBUG if refusal.reason == "load" else logging.INFO
                logger.log(level, "= call refused: %s", refusal.reason)
                await self._refuse(*REFUSAL_CLOSE[refusal.reason])
                return
            self.call = call
            self.log = CallLogger(logger, {"call_id": call.call_id})
            self._send(
                session_message(
                    call_id=call.call_id,
                    conversation_id=call.conversation_id,
                    agent_id=call.agent.id,
                    agent_name=call.agent.name,
                )
            )
            self._writer = asyncio.get_running_loop().create_task(
                self._write(), name=f"signal-out-{call.call_id}"
            )
            if self._replaced:
                call.hang_up("replaced")
            await self._receive()
        finally:
            self._sockets.release(slot, self)
            if self.call is not None:
                self.call.hang_up("hangup")  # no-op when the call is already ending
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.call.finished.wait(), FINISH_WAIT_S)

    async def replace(self) -> None:
        """A newer socket took this peer id: end this call (`replaced`) and wait for it."""
        self._replaced = True
        if self.call is not None:
            self.call.hang_up("replaced")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), REPLACE_WAIT_S)

    async def _refuse(self, code: int, reason: str) -> None:
        self._socket_open = False
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._ws.close(code, reason)

    # -- client -> server ------------------------------------------------------------------------

    async def _receive(self) -> None:
        """Read client messages until the call is over for this socket."""
        call = self.call
        assert call is not None
        max_bytes = self._limits.signal_message_max_bytes
        while not call.ending:
            frame = await self._ws.receive()
            if frame["type"] == "websocket.disconnect":
                self._socket_open = False
                self.log.info("< socket closed (%s)", frame.get("code"))
                call.hang_up("hangup")
                return
            data: str | bytes | None = frame.get("text")
            if data is None:
                data = frame.get("bytes") or b""
            # UTF-8 takes at most 4 bytes a character: encode only when it could matter.
            size = len(data.encode()) if isinstance(data, str) and len(data) * 4 > max_bytes else 0
            if len(data) > max_bytes or size > max_bytes:
                self.log.warning("< %d-byte message over the cap", len(data))
                self._close_override = TOO_BIG_CLOSE
                call.hang_up("hangup")
                return
            if not self._budget.take():
                if self._refused("rate_limited", "over limits.signal_messages_per_s"):
                    return
                continue
            try:
                message = parse_client_message(data)
            except BadMessage as bad:
                self.log.info("< bad message: %s %s", bad.code, bad.message)
                if self._refused(bad.code, bad.message):
                    return
                continue
            try:
                if await self._handle(message, call):
                    return
            except Exception:
                self.log.exception("< %s failed", message.type)
                self._send(error_message("internal", f"{message.type} failed"))

    async def _handle(self, message: ClientMessage, call: LiveCall) -> bool:
        """Act on one client message; True when the socket should stop reading (bye)."""
        self.log.debug("< %s", message.type)
        match message:
            case Offer(sdp=sdp):
                self.log.info("< offer (%d bytes)", len(sdp))
                try:
                    answer = await self._peer(call).answer(sdp)
                except BadOffer as bad:
                    self._refused("bad_sdp", str(bad))
                    return call.ending
                self._send(answer_message(answer))
            case Candidate(candidate=candidate, sdpMid=sdp_mid, sdpMLineIndex=index):
                try:
                    await self._peer(call).add_candidate(candidate, sdp_mid, index)
                except BadOffer as bad:
                    self._refused("bad_sdp", str(bad))
            case Text(message=text):
                self.log.info("< message (%d chars)", len(text))
                call.text_received(text)
            case Ping():
                self._send(pong_message())
            case Bye():
                self.log.info("< bye")
                call.hang_up("bye")
                return True
        return call.ending

    def _peer(self, call: LiveCall) -> CallPeer:
        if self.peer is None:
            self.peer = CallPeer(call, self._webrtc)
        return self.peer

    def _refused(self, code: ErrorCode, text: str) -> bool:
        """Answer a refused message with `error`; True when that was one too many (1008)."""
        self._send(error_message(code, text))
        if not self._abuse.strike():
            return False
        self.log.warning("< too many bad messages: closing")
        self._close_override = ABUSE_CLOSE
        assert self.call is not None
        self.call.hang_up("hangup")
        return True

    # -- server -> client (the call's Transport) --------------------------------------------------

    def send_event(self, event: CallEvent, /) -> None:
        self._send(event_message(event))

    def send_audio(self, audio: BotAudio, /) -> None:
        if self.peer is not None:
            self.peer.send_audio(audio)

    def flush_audio(self) -> None:
        if self.peer is not None:
            self.peer.flush_audio()

    async def close(self, reason: EndReason, /) -> None:
        """Say `ended` and close the socket (if it is still open), then close the peer."""
        if self._socket_open:
            code, text = self._close_override or END_CLOSE[reason]
            self._send(ended_message(reason))
            self._out.append(_Close(code, text))
            self._wake.set()
            if self._writer is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_WAIT_S)
        if self._writer is not None:
            self._writer.cancel()
        if self.peer is not None:
            await self.peer.close()

    def _send(self, text: str) -> None:
        if self._socket_open:
            self._out.append(text)
            self._wake.set()

    async def _write(self) -> None:
        ws = self._ws
        try:
            while True:
                while not self._out:
                    self._wake.clear()
                    await self._wake.wait()
                item = self._out.popleft()
                if isinstance(item, _Close):
                    self._socket_open = False
                    self.log.info("> close %d %s", item.code, item.reason)
                    await ws.close(item.code, item.reason)
                    return
                await ws.send_text(item)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            self.log.info("> socket gone: %r", exc)
            self._socket_open = False


def bearer_key(authorization: str | None) -> str:
    """The key of an `Authorization: Bearer KEY` header ("" when absent or another scheme)."""
    scheme, _, key = (authorization or "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def signaling_routes(
    edge: CallEdge, *, webrtc: WebRTCSettings, limits: LimitsSettings
) -> APIRouter:
    """`WS /signal/{peer_id}/{api_key}` and `WS /signal/{peer_id}` (Authorization: Bearer)."""
    router = APIRouter()
    sockets = PeerSockets()

    async def serve(websocket: WebSocket, peer_id: str, api_key: str) -> None:
        connection = SignalingConnection(
            websocket, edge=edge, sockets=sockets, webrtc=webrtc, limits=limits
        )
        agent = websocket.query_params.get("agent") or None
        await connection.run(api_key=api_key, peer_id=peer_id, agent_id=agent)

    @router.websocket("/signal/{peer_id}/{api_key}")
    async def signal_key_in_path(websocket: WebSocket, peer_id: str, api_key: str) -> None:
        await serve(websocket, peer_id, api_key)

    @router.websocket("/signal/{peer_id}")
    async def signal_key_in_header(websocket: WebSocket, peer_id: str) -> None:
        await serve(websocket, peer_id, bearer_key(websocket.headers.get("authorization")))

    return router
