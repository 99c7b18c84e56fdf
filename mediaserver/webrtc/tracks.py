"""Audio in and out of one aiortc peer.

In: `CallerAudio` converts aiortc's decoded frames (s16 stereo 48 kHz, 20 ms) once, with one
stateful resampler, into the 16 kHz mono PCM16 20 ms frames the call tree takes.

Out: `BotAudioTrack` is the track aiortc's sender pulls. `push` resamples bot audio (any rate)
to 48 kHz mono and queues it in 20 ms frames, at most `queue_limit_ms` (the oldest is dropped
beyond it); `recv` encodes one frame with its own Opus encoder and returns the *packet*, paced
in real time. aiortc then only packs it: no encoder of its own and no thread-pool hop per frame
(aiortc's `RTCRtpSender`, rtcrtpsender.py: a frame goes through its encoder in a thread pool,
a packet is sent as it is). When the queue runs dry it sends
`TAIL_SILENCE_FRAMES` of silence and then nothing until more audio comes, like Opus DTX: a
silent bot costs no CPU, and the RTP timestamps keep wall-clock time across the gap. `flush`
empties the queue, so barge-in takes effect by the next frame. Played audio is reported per
turn through `on_played(turn_id, played_ms)`, every `REPORT_EVERY_FRAMES` and at a turn's end.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.audio.codeccontext import AudioCodecContext
from av.stream import Stream

logger = logging.getLogger(__name__)

IN_RATE = 16_000
IN_FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16
OUT_RATE = 48_000
OUT_FRAME_SAMPLES = 960
OUT_FRAME_BYTES = OUT_FRAME_SAMPLES * 2
FRAME_S = 0.02
TIME_BASE = fractions.Fraction(1, OUT_RATE)
OPUS_BITRATE = 32_000  # mono voice; aiortc's own encoder sends 96 kb/s stereo
TAIL_SILENCE_FRAMES = 5
REPORT_EVERY_FRAMES = 5
SILENCE = bytes(OUT_FRAME_BYTES)


def _samples(frame: av.AudioFrame) -> bytes:
    """The PCM16 bytes of a packed (interleaved) s16 frame, without the plane's padding."""
    return bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)]


def _mono_frame(pcm: bytes, rate: int) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm)
    frame.sample_rate = rate
    return frame


class CallerAudio:
    """Decoded caller audio -> 16 kHz mono PCM16 frames of 20 ms, stamped with capture time."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=IN_RATE)
        self._buffer = bytearray()

    def convert(self, frame: av.AudioFrame, received_at: float) -> list[tuple[bytes, float]]:
        """Frames completed by `frame`, each with the monotonic time of its first sample."""
        frame.pts = None  # RTP timestamp jumps must not make the resampler pad or stretch
        buffer = self._buffer
        for out in self._resampler.resample(frame):
            # Mono s16: 2 bytes a sample. Sliced as a view: the plane may be padded.
            buffer += memoryview(out.planes[0])[: out.samples * 2]
        backlog = len(buffer)
        if backlog < IN_FRAME_BYTES:
            return []
        chunks: list[tuple[bytes, float]] = []
        start = 0
        while backlog - start >= IN_FRAME_BYTES:
            # The last byte arrived about now; earlier frames started earlier.
            started = received_at - (backlog - start) / (IN_RATE * 2)
            chunks.append((bytes(buffer[start : start + IN_FRAME_BYTES]), started))
            start += IN_FRAME_BYTES
        del buffer[:start]
        return chunks


def _opus_encoder() -> AudioCodecContext:
    encoder = av.CodecContext.create("libopus", "w")
    assert isinstance(encoder, AudioCodecContext)
    encoder.bit_rate = OPUS_BITRATE
    encoder.format = "s16"
    encoder.layout = "mono"
    encoder.sample_rate = OUT_RATE
    encoder.time_base = TIME_BASE
    # CELT ("audio") at complexity 5 encodes a 20 ms frame in about 85 us here, against 220 us
    # for libopus's default (SILK "voip", complexity 10); at 32 kb/s speech sounds the same.
    encoder.options = {"application": "audio", "compression_level": "5"}
    return encoder


class BotAudioTrack(MediaStreamTrack):
    """The call's outbound audio: real-time Opus packets from a bounded queue of bot audio.

    Args:
        queue_limit_ms: bot audio held before the oldest is dropped (TTS runs ahead of playback).
        on_played: `(turn_id, played_ms)`, the total of that turn actually sent so far.
    """

    kind = "audio"

    def __init__(self, *, queue_limit_ms: int, on_played: Callable[[int, float], None]) -> None:
        super().__init__()
        self._on_played = on_played
        self._limit_frames = max(1, queue_limit_ms // 20)
        self._frames: deque[tuple[int, bytes]] = deque()
        self._pending = bytearray()  # resampled audio short of a whole frame
        self._pending_turn: int | None = None
        self._resampler: av.AudioResampler | None = None
        self._resampler_rate = 0
        self._encoder = _opus_encoder()
        self._wake = asyncio.Event()
        self._start: float | None = None
        self._pts = 0
        self._silence_left = 0
        self._turn: int | None = None  # the turn being played and its frames sent
        self._turn_frames = 0
        self.dropped_frames = 0
        self.sent_frames = 0

    # -- feeding (the call's pump) ---------------------------------------------------------------

    def push(self, turn_id: int, pcm: bytes, sample_rate: int) -> None:
        """Queue bot audio: PCM16 mono at `sample_rate`."""
        if turn_id != self._pending_turn:
            self._end_turn()
            self._pending_turn = turn_id
        if sample_rate == OUT_RATE:
            self._pending += pcm
        else:
            if self._resampler is None or self._resampler_rate != sample_rate:
                self._drain_resampler()
                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OUT_RATE)
                self._resampler_rate = sample_rate
            for out in self._resampler.resample(_mono_frame(pcm, sample_rate)):
                self._pending += _samples(out)
        self._queue_whole_frames()
        self._wake.set()

    def flush(self) -> None:
        """Drop all queued audio now (barge-in)."""
        self._frames.clear()
        self._pending.clear()
        self._resampler = None
        self._pending_turn = None

    @property
    def queued_ms(self) -> float:
        return len(self._frames) * FRAME_S * 1000 + len(self._pending) / (OUT_RATE * 2) * 1000

    def stop(self) -> None:
        super().stop()
        self._wake.set()  # a recv() waiting for audio ends now

    # -- aiortc's sender ------------------------------------------------------------------------

    async def recv(self) -> av.Packet[Stream]:
        """The next 20 ms Opus packet, at its real-time moment; waits while there is nothing."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += OUT_FRAME_SAMPLES
            wait = self._start + self._pts / OUT_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        while (pcm := self._next_frame()) is None:
            self._wake.clear()
            await self._wake.wait()
            if self.readyState != "live":
                raise MediaStreamError
            # Resume at the wall clock: the RTP timestamps say how long the gap was.
            elapsed = time.monotonic() - self._start
            self._pts = max(
                self._pts, round(elapsed * OUT_RATE / OUT_FRAME_SAMPLES) * OUT_FRAME_SAMPLES
            )
        return self._encode(pcm)

    def _next_frame(self) -> bytes | None:
        if len(self._frames) <= 1 and self._pending:
            self._end_turn()  # the reply has paused or ended: its tail goes out next
        if self._frames:
            turn_id, pcm = self._frames.popleft()
            self._silence_left = TAIL_SILENCE_FRAMES
            self._played(turn_id)
            return pcm
        if self._silence_left > 0:
            self._silence_left -= 1
            return SILENCE
        return None

    def _encode(self, pcm: bytes) -> av.Packet[Stream]:
        frame = _mono_frame(pcm, OUT_RATE)
        frame.pts = self._pts
        packets = self._encoder.encode(frame)
        if not packets:  # libopus buffered (it does not for 20 ms frames): send silence
            packets = self._encoder.encode(_mono_frame(SILENCE, OUT_RATE))
        packet: av.Packet[Stream] = packets[0]
        packet.pts = self._pts
        packet.time_base = TIME_BASE
        self.sent_frames += 1
        return packet

    # -- helpers ----------------------------------------------------------------------------------

    def _played(self, turn_id: int) -> None:
        if turn_id != self._turn:
            self._turn, self._turn_frames = turn_id, 0
        self._turn_frames += 1
        turn_ends = not self._frames or self._frames[0][0] != turn_id
        if turn_ends or self._turn_frames % REPORT_EVERY_FRAMES == 0:
            self._on_played(turn_id, self._turn_frames * FRAME_S * 1000)

    def _end_turn(self) -> None:
        """Queue the rest of the pending turn, padded with silence to a whole frame."""
        self._drain_resampler()
        if self._pending:
            self._pending += bytes(OUT_FRAME_BYTES - len(self._pending) % OUT_FRAME_BYTES)
            self._queue_whole_frames()

    def _drain_resampler(self) -> None:
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                self._pending += _samples(out)
            self._resampler = None

    def _queue_whole_frames(self) -> None:
        turn_id = self._pending_turn if self._pending_turn is not None else 0
        pending, frames = self._pending, self._frames
        whole = len(pending) - len(pending) % OUT_FRAME_BYTES
        for offset in range(0, whole, OUT_FRAME_BYTES):
            frames.append((turn_id, bytes(pending[offset : offset + OUT_FRAME_BYTES])))
        del pending[:whole]
        over = len(frames) - self._limit_frames
        if over > 0:
            for _ in range(over):
                frames.popleft()
            self.dropped_frames += over
            logger.warning("bot audio queue full: dropped the oldest %d ms", over * 20)
