"""A stateful polyphase resampler for 16-bit mono PCM (8 kHz <-> 16 kHz, and any rational ratio).

One `Resampler` per direction of a stream: it keeps the filter's history and its phase between
calls, so feeding a signal in 20 ms pieces gives the same samples as feeding it whole, and frame
edges never click. Values in, values out: no I/O, no clock.

The filter is a Kaiser-windowed sinc (80 dB stopband) with its -6 dB point at the lower rate's
Nyquist frequency and a transition band of 15 % of the lower rate: for 8 kHz <-> 16 kHz it passes
0-3.4 kHz (the telephone band) and stops 4.6 kHz and up, so upsampled speech carries no images
above 4.6 kHz and downsampled speech no aliases below 3.4 kHz. Its delay is half its length:
about 2 ms between 8 and 16 kHz.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Pcm16 = npt.NDArray[np.int16]
Floats = npt.NDArray[np.float64]

STOPBAND_DB = 80.0
TRANSITION = 0.15  # transition band width, as a fraction of the lower of the two rates


def _kaiser_beta(attenuation_db: float) -> float:
    """Kaiser's window parameter for a stopband attenuation over 50 dB (Oppenheim & Schafer)."""
    assert attenuation_db > 50
    return 0.1102 * (attenuation_db - 8.7)


def design_filter(up: int, down: int) -> npt.NDArray[np.float64]:
    """The low-pass FIR for resampling by `up/down` at the upsampled rate; `up` divides its length.

    Gain `up` at DC, so the zero-stuffed signal keeps its level.
    """
    # Frequencies in cycles per upsampled sample: the upsampled rate is up * in_rate, and the
    # lower rate is min(up, down) in units of gcd(in_rate, out_rate).
    lower = min(up, down) / (up * down)
    cutoff = 0.5 * lower
    width = TRANSITION * lower
    taps = math.ceil((STOPBAND_DB - 7.95) / (2.285 * 2 * math.pi * width)) + 1
    taps = math.ceil(taps / up) * up
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, _kaiser_beta(STOPBAND_DB))
    return np.asarray(h * (up / h.sum()), dtype=np.float64)


class Resampler:
    """Resample a stream of PCM16 from `in_rate` to `out_rate`, keeping state between chunks.

    Any chunk length works; each call returns every output sample the input so far determines.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        g = math.gcd(in_rate, out_rate)
        self.in_rate, self.out_rate = in_rate, out_rate
        self._up, self._down = out_rate // g, in_rate // g
        self._passthrough = in_rate == out_rate
        h = design_filter(self._up, self._down)
        self._taps_per_phase = len(h) // self._up
        # phases[p, k] weighs input x[m0 - (K-1) + k] for an output whose position is L*m0 + p.
        self._phases = h.reshape(self._taps_per_phase, self._up).T[:, ::-1].copy()
        self._reversed = h.reshape(self._taps_per_phase, self._up).T.copy()  # for np.convolve
        self._stuffed_kernel = h  # convolving zero-stuffed input with h is every phase at once
        self._stuffed: Floats = np.zeros(0, dtype=np.float64)
        self._history: Floats = np.zeros(self._taps_per_phase - 1, dtype=np.float64)
        self._position = 0  # next output's position in upsampled samples, from the chunk start

    @property
    def delay_s(self) -> float:
        """Group delay: the output lags the input by this much."""
        return (self._taps_per_phase * self._up - 1) / 2 / (self._up * self.in_rate)

    def reset(self) -> None:
        """Forget the history, as if the stream started again (after a barge-in flush)."""
        self._history[:] = 0
        self._position = 0

    def process(self, pcm: bytes) -> bytes:
        """Little-endian PCM16 bytes in, resampled PCM16 bytes out."""
        if len(pcm) % 2:
            raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
        return self.process_array(np.frombuffer(pcm, dtype="<i2").astype(np.int16)).tobytes()

    def process_array(self, samples: Pcm16) -> Pcm16:
        """int16 samples in, resampled int16 samples out (rounded, clipped)."""
        if self._passthrough:
            return samples.copy()
        count = len(samples)
        if count == 0:
            return np.zeros(0, dtype=np.int16)
        up, down, taps = self._up, self._down, self._taps_per_phase
        buffer: Floats = np.concatenate((self._history, samples.astype(np.float64)))
        end = up * count
        outputs = max(0, -(-(end - self._position) // down))
        y: Floats
        if down == 1:  # integer upsampling: zero-stuff, then one convolution (one GIL release)
            # Each sample ends its slot of `up`, so output up*r + p lands at valid index up*r + p.
            # The buffer is reused: its zeros stay zeros, and numpy allocates zeroed memory with
            # the GIL released, a costly hand-off on a busy event loop.
            size = up * len(buffer) + up - 1
            if len(self._stuffed) != size:
                self._stuffed = np.zeros(size, dtype=np.float64)
            stuffed = self._stuffed
            stuffed[up - 1 : up * len(buffer) : up] = buffer
            y = np.convolve(stuffed, self._stuffed_kernel, "valid")
        elif up == 1:  # integer downsampling: filter, then keep every down-th sample
            filtered = np.convolve(buffer, self._reversed[0], "valid")
            y = filtered[self._position :: down][:outputs]
        else:
            positions = self._position + down * np.arange(outputs)
            base, phase = np.divmod(positions, up)
            windows = np.lib.stride_tricks.sliding_window_view(buffer, taps)[base]
            y = np.einsum("ij,ij->i", windows, self._phases[phase])
        self._position += outputs * down - end
        self._history = buffer[len(buffer) - (taps - 1) :]
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)

    def flush(self) -> Pcm16:
        """The samples still held in the filter: push zeros through its delay and reset."""
        if self._passthrough:
            return np.zeros(0, dtype=np.int16)
        tail = self.process_array(np.zeros(self._taps_per_phase, dtype=np.int16))
        self.reset()
        return tail
