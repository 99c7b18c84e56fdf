"""Call recordings: one stereo WAV per call, caller on the left, bot on the right.

    StereoWavWriter   appends 16-bit stereo frames to a RIFF/WAVE file and patches the two
                      size fields on close (and every `PATCH_EVERY_S` of audio, so a crash
                      leaves a playable file)
    CallRecording     places both sides on the call's timeline and writes as the call goes

The timeline is the monotonic clock, zero at the call's start, at 16 kHz. Caller audio follows
its own cadence (20 ms frames back to back; a gap of more than `GAP_S` in `captured_at` is
filled with silence). Bot audio arrives ahead of real time (TTS runs ahead of playback), so it is
queued in memory from where it will be heard, `max(end of the bot's audio so far, now)`, the way
a transport plays it; a barge-in (`flush_bot`) cuts whatever was not heard yet. Audio is written
up to "now" only, so what stays in memory is the caller's last frame and the bot's unplayed
reply, never the call. Pure file I/O: no event loop, no clock of its own.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from mediaserver.telephony.resample import Resampler

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
GAP_S = 0.1  # caller frames later than this start after a silence instead of back to back
HOLD_S = 1.0  # without caller audio, write the timeline up to this far behind "now"
PATCH_EVERY_S = 10.0
BUFFER_BYTES = 64 * 1024
_HEADER_BYTES = 44

Pcm16 = npt.NDArray[np.int16]


def wav_header(*, sample_rate: int, channels: int, data_bytes: int) -> bytes:
    """The 44-byte canonical WAVE header for 16-bit PCM (RIFF, `fmt `, `data`)."""
    block_align = channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align,
                      block_align, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )  # fmt: skip


class StereoWavWriter:
    """A 16-bit stereo WAV file written frame by frame; `close` makes its header exact.

    Raises:
        OSError: the file cannot be created or written (from the constructor and `write`).
    """

    def __init__(self, path: str | Path, *, sample_rate: int = SAMPLE_RATE) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.frames = 0  # stereo sample pairs written
        self._patched_at = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(self.path, "wb", buffering=BUFFER_BYTES)  # noqa: SIM115 - closed in close()
        self._file.write(wav_header(sample_rate=sample_rate, channels=2, data_bytes=0))

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def write(self, left: Pcm16, right: Pcm16) -> None:
        """Append equal-length mono int16 arrays as one stereo run."""
        assert self._file is not None, "write after close"
        assert len(left) == len(right), (len(left), len(right))
        if not len(left):
            return
        stereo = np.empty(2 * len(left), dtype="<i2")
        stereo[0::2] = left
        stereo[1::2] = right
        self._file.write(stereo.tobytes())
        self.frames += len(left)
        if self.frames - self._patched_at >= PATCH_EVERY_S * self.sample_rate:
            self._patch_header()

    def close(self) -> float:
        """Patch the sizes, close the file, return its duration in seconds (idempotent)."""
        if self._file is not None:
            try:
                self._patch_header()
            finally:
                self._file.close()
                self._file = None
        return self.duration_s

    def _patch_header(self) -> None:
        assert self._file is not None
        data_bytes = self.frames * 4
        self._file.flush()
        self._file.seek(4)
        self._file.write(struct.pack("<I", 36 + data_bytes))
        self._file.seek(40)
        self._file.write(struct.pack("<I", data_bytes))
        self._file.seek(0, 2)
        self._patched_at = self.frames


class CallRecording:
    """One call's recording. Times are `time.monotonic()` seconds; one thread (the loop) only.

    Args:
        started_at: the call's start on the monotonic clock (timeline zero).
    """

    def __init__(
        self, path: str | Path, *, started_at: float, sample_rate: int = SAMPLE_RATE
    ) -> None:
        self._writer = StereoWavWriter(path, sample_rate=sample_rate)
        self._rate = sample_rate
        self._start = started_at
        self._written = 0  # timeline samples already in the file
        self._caller = np.zeros(0, dtype=np.int16)  # caller samples from `_written` on
        self._bot = np.zeros(0, dtype=np.int16)  # bot samples from `_written` on (0 = silent)
        self._resamplers: dict[int, Resampler] = {}
        self.path = self._writer.path

    @property
    def duration_s(self) -> float:
        return self._writer.duration_s

    def caller_audio(self, pcm: bytes, captured_at: float) -> None:
        """Caller audio, PCM16 mono at the recording's rate, captured at `captured_at`."""
        samples = np.frombuffer(pcm, dtype="<i2")
        end = self._written + len(self._caller)
        late = self._position(captured_at) - end
        if late > GAP_S * self._rate:
            self._caller = np.concatenate([self._caller, np.zeros(late, dtype=np.int16)])
        self._caller = np.concatenate([self._caller, samples])
        self._commit(self._written + len(self._caller))

    def bot_audio(self, pcm: bytes, sample_rate: int, at: float) -> None:
        """Bot audio (PCM16 mono at any rate) handed to the transport at `at`."""
        samples = np.frombuffer(pcm, dtype="<i2")
        if sample_rate != self._rate:
            resampler = self._resamplers.get(sample_rate)
            if resampler is None:
                resampler = self._resamplers[sample_rate] = Resampler(sample_rate, self._rate)
            samples = resampler.process_array(samples)
        start = max(len(self._bot), self._position(at) - self._written)
        if start > len(self._bot):
            self._bot = np.concatenate([self._bot, np.zeros(start - len(self._bot), np.int16)])
        self._bot = np.concatenate([self._bot, samples])
        self._commit(self._position(at) - int(HOLD_S * self._rate))

    def flush_bot(self, at: float) -> None:
        """Barge-in: bot audio queued for after `at` is never heard."""
        self._bot = self._bot[: max(0, self._position(at) - self._written)]

    def close(self, at: float) -> float:
        """Write what was heard up to `at`, finish the file, return its duration (idempotent)."""
        self.flush_bot(at)
        self._commit(self._written + max(len(self._caller), len(self._bot)))
        return self._writer.close()

    def _position(self, at: float) -> int:
        return max(0, round((at - self._start) * self._rate))

    def _commit(self, through: int) -> None:
        """Write the timeline up to sample `through`; silence where a side has nothing."""
        count = through - self._written
        if count <= 0:
            return
        left, right = self._take(self._caller, count), self._take(self._bot, count)
        self._caller, self._bot = self._caller[count:], self._bot[count:]
        self._writer.write(left, right)
        self._written = through

    @staticmethod
    def _take(samples: Pcm16, count: int) -> Pcm16:
        if len(samples) >= count:
            return samples[:count]
        return np.concatenate([samples, np.zeros(count - len(samples), dtype=np.int16)])
