"""The audio tracks on their own: conversion in, paced Opus packets out, flush, progress."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from mediaserver.webrtc.tracks import (
    FRAME_S,
    TAIL_SILENCE_FRAMES,
    BotAudioTrack,
    CallerAudio,
)
from tests.mediaserver.webrtc.loopback import run
from tests.timing import MS


def stereo_frame(left: np.ndarray) -> av.AudioFrame:
    """A frame as aiortc's Opus decoder gives it: s16, stereo interleaved, 48 kHz, 20 ms."""
    interleaved = np.repeat(left, 2).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
    frame.sample_rate = 48_000
    return frame


def sine(n: int, rate: int, freq: float = 440.0) -> np.ndarray:
    return (np.sin(2 * np.pi * freq * np.arange(n) / rate) * 10_000).astype(np.int16)


def test_caller_audio_becomes_16k_mono_frames_of_20_ms_with_capture_times():
    audio = CallerAudio()
    signal = sine(48_000, 48_000)
    chunks = []
    for i in range(50):
        chunks += audio.convert(stereo_frame(signal[i * 960 : (i + 1) * 960]), float(i))
    assert len(chunks) in (49, 50)  # the resampler holds back a few samples at the start
    assert {len(pcm) for pcm, _ in chunks} == {640}
    pcm = np.frombuffer(b"".join(pcm for pcm, _ in chunks), dtype=np.int16)
    segment = pcm[1600:]
    spectrum = np.abs(np.fft.rfft(segment))
    assert abs(np.argmax(spectrum) * 16_000 / len(segment) - 440) <= 2  # still a 440 Hz tone
    times = [at for _, at in chunks]
    assert times == sorted(times) and times[-1] <= 49.0


def test_caller_audio_ignores_rtp_timestamp_jumps():
    audio = CallerAudio()
    out = []
    for pts in (0, 960, 96_000, 96_960):  # a 2 s gap in the sender's timestamps
        frame = stereo_frame(sine(960, 48_000))
        frame.pts = pts
        out += audio.convert(frame, 0.0)
    assert sum(len(pcm) for pcm, _ in out) <= 4 * 640  # no silence invented for the gap


def decode(packets: list[av.Packet[Any]]) -> np.ndarray:
    decoder = av.CodecContext.create("libopus", "r")
    samples = []
    for packet in packets:
        for frame in decoder.decode(av.Packet(bytes(packet))):
            samples.append(frame.to_ndarray().reshape(-1))
    return np.concatenate(samples)


class Played:
    def __init__(self):
        self.reports: list[tuple[int, float]] = []

    def __call__(self, turn_id: int, played_ms: float) -> None:
        self.reports.append((turn_id, played_ms))


def test_bot_audio_at_any_rate_comes_out_as_paced_20_ms_opus_packets():
    async def scenario():
        played = Played()
        track = BotAudioTrack(queue_limit_ms=10_000, on_played=played)
        track.push(1, sine(24_000 // 5, 24_000).tobytes(), 24_000)  # 200 ms at 24 kHz
        started = time.monotonic()
        packets = [await track.recv() for _ in range(10 + TAIL_SILENCE_FRAMES)]
        elapsed = time.monotonic() - started
        assert elapsed == pytest.approx((len(packets) - 1) * FRAME_S, abs=0.03)
        assert [p.pts for p in packets] == [i * 960 for i in range(len(packets))]
        assert all(0 < len(bytes(p)) < 400 for p in packets)
        decoded = decode(packets)
        assert np.abs(decoded[:9000]).max() > 5000  # the tone
        assert np.abs(decoded[-960:]).max() < 500  # then silence
        # Reported every 100 ms and at the end: 200 ms, plus the resampler's tail, padded.
        assert played.reports[0] == (1, 100.0)
        assert played.reports[-1][0] == 1 and 200 <= played.reports[-1][1] <= 220
        track.stop()

    run(scenario)


def test_flush_drops_queued_audio_by_the_next_frame():
    async def scenario():
        track = BotAudioTrack(queue_limit_ms=10_000, on_played=Played())
        track.push(1, sine(48_000, 48_000).tobytes(), 48_000)  # 1 s
        await track.recv()
        track.flush()
        assert track.queued_ms == 0
        rest = decode([await track.recv() for _ in range(TAIL_SILENCE_FRAMES)])
        # Only the encoder's look-ahead (a few ms) of the tone is left in the next packet.
        assert np.abs(rest[960 * 2 :]).max() < 500
        track.stop()

    run(scenario)


def test_an_idle_track_sends_nothing_then_resumes_on_wall_clock_time():
    async def scenario():
        track = BotAudioTrack(queue_limit_ms=10_000, on_played=Played())
        track.push(1, sine(960, 48_000).tobytes(), 48_000)
        for _ in range(1 + TAIL_SILENCE_FRAMES):
            await track.recv()
        waiting = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.3)  # a gap in which the bot is silent
        assert not waiting.done()  # nothing is sent while there is nothing to say
        track.push(2, sine(960, 48_000).tobytes(), 48_000)
        packet = await asyncio.wait_for(waiting, 100 * MS)
        assert (packet.pts or 0) >= (
            1 + TAIL_SILENCE_FRAMES + 14
        ) * 960  # the gap is in the timestamps
        track.stop()
        with pytest.raises(MediaStreamError):
            await track.recv()

    run(scenario)


def test_a_full_queue_drops_the_oldest_audio():
    track = BotAudioTrack(queue_limit_ms=100, on_played=Played())
    track.push(1, sine(48_000, 48_000).tobytes(), 48_000)  # 1 s into a 100 ms queue
    assert track.queued_ms == 100
    assert track.dropped_frames == 45


def test_each_turn_is_reported_to_its_end_and_padded_to_whole_frames():
    async def scenario():
        played = Played()
        track = BotAudioTrack(queue_limit_ms=10_000, on_played=played)
        track.push(3, sine(1000, 16_000).tobytes(), 16_000)  # 62.5 ms
        track.push(4, sine(320, 16_000).tobytes(), 16_000)  # 20 ms
        for _ in range(6):
            await track.recv()
        assert played.reports == [(3, 80.0), (4, 40.0)]  # 62.5 -> 4 frames; 20 + tail -> 2
        track.stop()

    run(scenario)
