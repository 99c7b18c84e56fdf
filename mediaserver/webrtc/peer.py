"""CallPeer: the one aiortc `RTCPeerConnection` of a call.

    offer (signaling or WHIP) -> answer(): audio sendrecv/recvonly -> BotAudioTrack added
                                           audio sendonly          -> receive-only, no greeting
                                           video                   -> answered inactive
    inbound audio track -> CallerAudio (16 kHz mono, 20 ms) -> call.audio_received
    connectionState connected (and we send) -> call.media_connected (the greeting starts)
    bot audio -> send_audio -> BotAudioTrack -> call.playback_progressed as it is sent

A call ends from here with reason `ice_failed` when ICE does not connect within
`webrtc.ice_connect_timeout_s` of the answer, when the connection fails or is closed by the
remote side, or when a caller that offered to send audio sends none for
`webrtc.media_timeout_s` once connected (a peer that vanished).

aiortc gathers all its candidates before `setLocalDescription` returns, so the answer is
complete (no trickle from the server). Loop only. aiortc's exceptions never leave this module:
a bad offer or candidate is `BadOffer`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import TYPE_CHECKING, Protocol

from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription, candidate_from_sdp
from av import AudioFrame

from actors.messages import BotAudio, EndReason
from config.settings import WebRTCSettings
from mediaserver.errors import ProtocolViolation
from mediaserver.logs import CallLogger
from mediaserver.webrtc.tracks import BotAudioTrack, CallerAudio

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCRtpTransceiver
    from aiortc.mediastreams import MediaStreamTrack

logger = logging.getLogger(__name__)

EVENTS_CHANNEL = "events"
_AIORTC_ERRORS = (ValueError, InternalError, InvalidAccessError, InvalidStateError)
_live: weakref.WeakSet[CallPeer] = weakref.WeakSet()


class BadOffer(ProtocolViolation):
    """An SDP offer or ICE candidate we cannot use (the message says why)."""


class MediaCall(Protocol):
    """What a peer tells its call (`mediaserver.calls.LiveCall` implements it)."""

    call_id: str

    def audio_received(self, pcm: bytes, captured_at: float, /) -> None: ...
    def media_connected(self) -> None: ...
    def playback_progressed(self, turn_id: int, played_ms: float, /) -> None: ...
    def hang_up(self, reason: EndReason, /) -> None: ...


def live_peers() -> int:
    """Peers made and not yet closed, in this process (tests check for leaks with it)."""
    return sum(1 for peer in _live if not peer.closed)


def ice_configuration(settings: WebRTCSettings) -> RTCConfiguration:
    """ICE servers from settings; none by default (an empty list, so aiortc adds no STUN)."""
    servers = []
    if settings.stun_urls:
        servers.append(RTCIceServer(urls=list(settings.stun_urls)))
    if settings.turn_urls:
        password = settings.turn_password
        servers.append(
            RTCIceServer(
                urls=list(settings.turn_urls),
                username=settings.turn_username or None,
                credential=password.get_secret_value() if password is not None else None,
            )
        )
    return RTCConfiguration(iceServers=servers)


def audio_direction(sdp: str) -> str:
    """The direction of the offer's first audio section, from the caller's point of view.

    Raises:
        BadOffer: not an SDP offer with an audio section.
    """
    try:
        description = SessionDescription.parse(sdp)
    except (ValueError, IndexError, KeyError) as exc:
        raise BadOffer(f"unparsable SDP: {exc}") from None
    for media in description.media:
        if media.kind == "audio":
            return media.direction or "sendrecv"
    raise BadOffer("the offer has no audio section")


class CallPeer:
    def __init__(self, call: MediaCall, settings: WebRTCSettings) -> None:
        self._call = call
        self._settings = settings
        self.log = CallLogger(logger, {"call_id": call.call_id})
        self._pc = RTCPeerConnection(ice_configuration(settings))
        self.track: BotAudioTrack | None = None
        self.events: RTCDataChannel | None = None
        self.receive_only = False
        self._caller_sends = False  # the offer's audio is sendrecv or sendonly
        self.closed = False
        self.connected_after_s: float | None = None  # answer -> connected
        self._answered_at: float | None = None
        self._pending_candidates: list[RTCIceCandidate | None] = []
        self._reader: asyncio.Task[None] | None = None
        self._last_audio_at: float | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._media_timer: asyncio.TimerHandle | None = None
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._pc.on("datachannel", self._on_datachannel)
        _live.add(self)

    # -- signaling -------------------------------------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """Apply the caller's offer and return our complete answer (all candidates in it).

        Raises:
            BadOffer: a second offer, an offer without audio, or one aiortc cannot take.
        """
        if self._answered_at is not None:
            raise BadOffer("renegotiation is not supported: one offer per call")
        if self.closed:
            raise BadOffer("the call has ended")
        direction = audio_direction(offer_sdp)
        self._caller_sends = direction in ("sendrecv", "sendonly")
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            for transceiver in self._pc.getTransceivers():
                self._choose_direction(transceiver, direction)
            answer = await self._pc.createAnswer()
            await self._pc.setLocalDescription(answer)
        except _AIORTC_ERRORS as exc:
            raise BadOffer(f"offer rejected: {exc}") from None
        self._answered_at = time.monotonic()
        self._timers.append(
            asyncio.get_running_loop().call_later(
                self._settings.ice_connect_timeout_s, self._check_connected
            )
        )
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            try:
                await self._add_candidate(candidate)
            except BadOffer as bad:
                self.log.info("= an early candidate was not usable: %s", bad)
        self.log.info(
            "= answered a %s offer%s", direction, " (receive-only)" if self.receive_only else ""
        )
        return str(self._pc.localDescription.sdp)

    async def add_candidate(
        self, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        """Add a trickled remote candidate ("" = end of candidates); kept until the offer.

        Raises:
            BadOffer: the candidate line cannot be parsed or used.
        """
        parsed: RTCIceCandidate | None = None
        if candidate:
            try:
                parsed = candidate_from_sdp(candidate.removeprefix("a=").split(":", 1)[1])
            except (ValueError, IndexError, AssertionError):  # aiortc asserts the syntax
                raise BadOffer(f"bad candidate: {candidate[:80]!r}") from None
            parsed.sdpMid = sdp_mid
            parsed.sdpMLineIndex = sdp_mline_index
        if self._answered_at is None:
            self._pending_candidates.append(parsed)
            return
        await self._add_candidate(parsed)

    async def _add_candidate(self, candidate: RTCIceCandidate | None) -> None:
        if self.closed:
            return
        try:
            await self._pc.addIceCandidate(candidate)
        except _AIORTC_ERRORS as exc:
            raise BadOffer(f"bad candidate: {exc}") from None

    # -- media out -------------------------------------------------------------------------------

    def send_audio(self, audio: BotAudio) -> None:
        if self.track is not None:
            self.track.push(audio.turn_id, audio.pcm, audio.sample_rate)

    def flush_audio(self) -> None:
        if self.track is not None:
            self.track.flush()

    def send_event(self, text: str) -> None:
        """Mirror a signaling event on the caller's `events` data channel, if it opened one."""
        channel = self.events
        if channel is not None and channel.readyState == "open":
            try:
                channel.send(text)
            except _AIORTC_ERRORS as exc:
                self.log.info("= events channel: %s", exc)

    async def close(self) -> None:
        """Stop the tracks and close the peer connection (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for timer in [*self._timers, self._media_timer]:
            if timer is not None:
                timer.cancel()
        if self.track is not None:
            self.track.stop()
        if self._reader is not None:
            self._reader.cancel()
        try:
            await self._pc.close()
        except Exception:
            self.log.exception("= closing the peer connection failed")
        self.log.info("= peer closed")

    # -- aiortc events ---------------------------------------------------------------------------

    def _choose_direction(self, transceiver: RTCRtpTransceiver, audio_direction: str) -> None:
        if transceiver.kind != "audio":
            transceiver.direction = "inactive"  # video is not for us: ask the caller not to send
        elif self.track is None and not self.receive_only:
            if audio_direction in ("sendrecv", "recvonly"):
                self.track = BotAudioTrack(
                    queue_limit_ms=self._settings.outbound_queue_ms,
                    on_played=self._call.playback_progressed,
                )
                self._pc.addTrack(self.track)
            else:
                self.receive_only = True

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(
                self._read(track), name=f"audio-in-{self._call.call_id}"
            )

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        self.log.info("= connection %s", state)
        if self.closed:
            return
        if state == "connected":
            if self._answered_at is not None and self.connected_after_s is None:
                self.connected_after_s = time.monotonic() - self._answered_at
            if self.track is not None:
                self._call.media_connected()
            if self._caller_sends and self._media_timer is None:
                self._last_audio_at = time.monotonic()  # audio must flow from now on
                self._watch_media()
        elif state in ("failed", "closed"):
            self._call.hang_up("ice_failed")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == EVENTS_CHANNEL:
            self.events = channel

    def _check_connected(self) -> None:
        if not self.closed and self._pc.connectionState != "connected":
            self.log.warning(
                "= not connected %.1f s after the answer", self._settings.ice_connect_timeout_s
            )
            self._call.hang_up("ice_failed")

    async def _read(self, track: MediaStreamTrack) -> None:
        audio = CallerAudio()
        call = self._call
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                assert isinstance(frame, AudioFrame)
                now = time.monotonic()
                self._last_audio_at = now
                for pcm, captured_at in audio.convert(frame, now):
                    call.audio_received(pcm, captured_at)
        except Exception:
            # A bug here must not pass silently; the media watchdog then ends the call.
            self.log.exception("= reading caller audio failed")

    def _watch_media(self) -> None:
        if self.closed:
            return
        timeout = self._settings.media_timeout_s
        last = self._last_audio_at
        if last is not None and time.monotonic() - last > timeout:
            self.log.warning("= no caller audio for %.1f s", timeout)
            self._call.hang_up("ice_failed")
            return
        self._media_timer = asyncio.get_running_loop().call_later(timeout / 4, self._watch_media)
