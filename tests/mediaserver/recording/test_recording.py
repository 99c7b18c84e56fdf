"""Recordings on their own: the WAV writer and a call's timeline, on a scripted clock."""

import struct
import wave

import numpy as np
import pytest

from mediaserver.recording import PATCH_EVERY_S, CallRecording, StereoWavWriter, wav_header

RATE = 16_000
FRAME = 320  # 20 ms


def tone(seconds, freq, rate=RATE, amplitude=0.3):
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


def read_stereo(path):
    """(sample rate, left, right) of a 16-bit stereo WAV, read by the stdlib."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 2
        assert wav.getsampwidth() == 2
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return wav.getframerate(), frames[0::2], frames[1::2]


def loud(samples, start_s, end_s, rate=RATE):
    """RMS of `samples` between two times: > 1000 for our tones, 0 for silence."""
    part = samples[int(start_s * rate) : int(end_s * rate)].astype(np.float64)
    return float(np.sqrt(np.mean(part**2))) if len(part) else 0.0


def test_the_header_is_the_canonical_44_bytes():
    header = wav_header(sample_rate=16_000, channels=2, data_bytes=64_000)
    assert len(header) == 44
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert struct.unpack("<I", header[4:8])[0] == 36 + 64_000
    fmt = struct.unpack("<IHHIIHH", header[16:36])
    assert fmt == (16, 1, 2, 16_000, 64_000, 4, 16)
    assert struct.unpack("<I", header[40:44])[0] == 64_000


def test_the_writer_appends_frames_and_patches_the_sizes_on_close(tmp_path):
    path = tmp_path / "deep" / "call.wav"
    writer = StereoWavWriter(path)
    left, right = tone(0.5, 440), tone(0.5, 880)
    for start in range(0, len(left), FRAME):
        writer.write(left[start : start + FRAME], right[start : start + FRAME])
    assert writer.close() == pytest.approx(0.5)
    assert writer.close() == pytest.approx(0.5)  # idempotent
    rate, got_left, got_right = read_stereo(path)
    assert rate == RATE
    assert np.array_equal(got_left, left) and np.array_equal(got_right, right)
    assert path.stat().st_size == 44 + len(left) * 4


def test_a_file_cut_short_still_declares_the_audio_patched_so_far(tmp_path):
    path = tmp_path / "crash.wav"
    writer = StereoWavWriter(path)
    second = np.zeros(RATE, dtype=np.int16)
    for _ in range(int(PATCH_EVERY_S) + 1):
        writer.write(second, second)
    assert writer._file is not None
    writer._file.flush()  # what a killed process leaves behind: no close, no final patch
    with wave.open(str(path), "rb") as wav:
        assert wav.getnframes() == int(PATCH_EVERY_S) * RATE
    writer.close()


def test_a_call_puts_the_caller_left_and_the_bot_right_on_one_timeline(tmp_path):
    path = tmp_path / "call.wav"
    start = 1000.0
    recording = CallRecording(path, started_at=start)
    caller = tone(3.0, 440)
    bot = tone(1.0, 880, rate=24_000)  # TTS audio at its own rate, handed over all at once
    for index in range(0, len(caller), FRAME):
        at = start + index / RATE
        recording.caller_audio(caller[index : index + FRAME].tobytes(), at)
        if index == int(0.5 * RATE):
            recording.bot_audio(bot.tobytes(), 24_000, at)
    duration = recording.close(start + 3.0)

    assert duration == pytest.approx(3.0, abs=0.03)
    rate, left, right = read_stereo(path)
    assert len(left) / rate == pytest.approx(duration)
    assert loud(left, 0.0, 3.0) > 5000  # the caller, all along
    assert loud(right, 0.0, 0.45) == 0.0  # the bot had not spoken yet
    assert loud(right, 0.55, 1.45) > 5000  # heard from when it was handed over
    assert loud(right, 1.55, 3.0) == 0.0
    # Both sides line up: the caller's tone is exactly where it was captured.
    assert np.array_equal(left[: len(caller)], caller[: len(left)])


def test_a_barge_in_cuts_the_bot_audio_that_was_never_heard(tmp_path):
    path = tmp_path / "barge.wav"
    start = 0.0
    recording = CallRecording(path, started_at=start)
    frame = np.zeros(FRAME, dtype=np.int16).tobytes()
    recording.bot_audio(tone(4.0, 880).tobytes(), RATE, start)  # a long reply, queued at once
    for index in range(100):  # 2 s of caller silence
        recording.caller_audio(frame, start + index * 0.02)
        if index == 50:
            recording.flush_bot(start + 1.0)  # the caller talked over it at 1 s
    recording.close(start + 2.0)

    _, _, right = read_stereo(path)
    assert loud(right, 0.0, 0.95) > 5000
    assert loud(right, 1.05, 2.0) == 0.0
    assert len(right) == 2 * RATE


def test_silence_fills_a_gap_in_the_callers_audio(tmp_path):
    path = tmp_path / "gap.wav"
    recording = CallRecording(path, started_at=0.0)
    voiced = tone(0.02, 440).tobytes()
    for index in range(25):  # 0.5 s, then nothing for 1 s, then 0.5 s again
        recording.caller_audio(voiced, index * 0.02)
    for index in range(25):
        recording.caller_audio(voiced, 1.5 + index * 0.02)
    recording.close(2.0)

    _, left, _ = read_stereo(path)
    assert len(left) == 2 * RATE
    assert loud(left, 0.0, 0.5) > 5000
    assert loud(left, 0.55, 1.45) == 0.0
    assert loud(left, 1.5, 2.0) > 5000


def test_a_call_without_caller_audio_records_the_bot_up_to_the_end(tmp_path):
    path = tmp_path / "text.wav"
    recording = CallRecording(path, started_at=0.0)
    recording.bot_audio(tone(0.5, 880).tobytes(), RATE, 0.2)
    recording.bot_audio(tone(0.5, 660).tobytes(), RATE, 3.0)  # a second reply, later
    assert recording.close(3.2) == pytest.approx(3.2)  # the second reply was cut at the end

    _, left, right = read_stereo(path)
    assert loud(left, 0.0, 3.2) == 0.0
    assert loud(right, 0.25, 0.65) > 5000
    assert loud(right, 0.75, 2.95) == 0.0
    assert loud(right, 3.0, 3.2) > 5000


def test_memory_holds_the_unplayed_reply_not_the_call(tmp_path):
    recording = CallRecording(tmp_path / "long.wav", started_at=0.0)
    frame = tone(0.02, 440).tobytes()
    for index in range(30 * 50):  # 30 s of caller audio
        recording.caller_audio(frame, index * 0.02)
    assert len(recording._caller) == 0  # written as it came
    assert recording._writer.frames == 30 * RATE
    recording.close(30.0)
