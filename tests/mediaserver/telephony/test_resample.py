"""The stateful resampler: 20 ms pieces equal the whole, the telephone band passes, images stop."""

import numpy as np
import pytest

from mediaserver.telephony.resample import Resampler


def sine(freq_hz, rate, seconds=1.0, amplitude=16000.0):
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def in_pieces(resampler, samples, piece):
    return np.concatenate(
        [resampler.process_array(samples[i : i + piece]) for i in range(0, len(samples), piece)]
    )


def spectrum_db(samples, rate):
    """Magnitude spectrum in dB relative to its peak; the Blackman window's leakage falls off
    fast enough to stay far below the levels measured here."""
    x = samples.astype(np.float64) * np.blackman(len(samples))
    magnitude = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return freqs, 20 * np.log10(np.maximum(magnitude, 1e-9) / magnitude.max())


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "piece"),
    [
        (8000, 16000, 160),
        (16000, 8000, 320),
        (24000, 8000, 480),
        (22050, 8000, 441),
        (8000, 16000, 37),
        (16000, 8000, 1),
        (22050, 8000, 1000),
    ],
)
def test_resampling_in_pieces_equals_resampling_whole(in_rate, out_rate, piece):
    signal = sine(440, in_rate) // 2 + sine(1700, in_rate) // 2
    whole = Resampler(in_rate, out_rate).process_array(signal)
    pieces = in_pieces(Resampler(in_rate, out_rate), signal, piece)
    assert len(whole) == len(pieces) == len(signal) * out_rate // in_rate
    assert np.abs(whole.astype(np.int32) - pieces).max() <= 1


def test_20_ms_frames_give_20_ms_frames():
    up, down = Resampler(8000, 16000), Resampler(16000, 8000)
    for _ in range(5):
        assert len(up.process(bytes(320))) == 640
        assert len(down.process(bytes(640))) == 320


def test_no_click_at_frame_edges():
    """A sine resampled frame by frame is as smooth at the edges as in the middle."""
    out = in_pieces(Resampler(8000, 16000), sine(1000, 8000), 160).astype(np.int32)
    steady = out[1000:]  # past the filter's start-up
    step = np.abs(np.diff(steady))
    edges = step[np.arange(len(step)) % 320 == 319 - (1000 % 320)]
    assert edges.max() <= step.max()
    # The largest sample-to-sample step of a 1 kHz sine of 16000 at 16 kHz is 16000*2*pi/16.
    assert step.max() < 16000 * 2 * np.pi / 16 * 1.02


@pytest.mark.parametrize("freq_hz", [300, 1000, 2000, 3000, 3400])
def test_upsampling_keeps_the_telephone_band_and_leaves_no_images_above_4_khz(freq_hz):
    out = in_pieces(Resampler(8000, 16000), sine(freq_hz, 8000), 160)
    steady = out[200:]
    # Level kept: the same RMS as the input sine (within 0.1 dB).
    rms = np.sqrt(np.mean(steady.astype(np.float64) ** 2))
    assert abs(20 * np.log10(rms / (16000 / np.sqrt(2)))) < 0.1
    freqs, db = spectrum_db(steady, 16000)
    assert db[np.abs(freqs - freq_hz) < 5].max() == pytest.approx(0, abs=0.01)
    # The image of f is at 8000 - f; everything above 4.2 kHz must be 60 dB down.
    assert db[freqs > 4200].max() < -60


@pytest.mark.parametrize("freq_hz", [4600, 5000, 6000, 7500])
def test_downsampling_stops_what_would_alias_into_the_band(freq_hz):
    out = in_pieces(Resampler(16000, 8000), sine(freq_hz, 16000), 320)
    rms = np.sqrt(np.mean(out[200:].astype(np.float64) ** 2))
    assert 20 * np.log10(max(rms, 1e-9) / (16000 / np.sqrt(2))) < -60


def test_downsampling_keeps_the_telephone_band():
    for freq_hz in (300, 1000, 3000, 3400):
        out = in_pieces(Resampler(24000, 8000), sine(freq_hz, 24000), 480)[200:]
        rms = np.sqrt(np.mean(out.astype(np.float64) ** 2))
        assert abs(20 * np.log10(rms / (16000 / np.sqrt(2)))) < 0.1


def test_delay_is_about_2_ms_and_flush_releases_the_tail():
    resampler = Resampler(8000, 16000)
    assert 0.001 < resampler.delay_s < 0.003
    impulse = np.zeros(160, dtype=np.int16)
    impulse[-1] = 16000
    out = resampler.process_array(impulse)
    assert np.abs(out).max() < 16000 * 0.2  # the impulse has barely started to come out
    tail = resampler.flush()
    assert np.abs(tail).max() > 16000 * 0.5
    # After flush the resampler starts afresh.
    assert np.array_equal(resampler.process_array(np.zeros(160, np.int16)), np.zeros(320, np.int16))


def test_loud_input_is_clipped_not_wrapped():
    square = np.tile(np.r_[np.full(20, 32767), np.full(20, -32768)].astype(np.int16), 40)
    out = Resampler(8000, 16000).process_array(square)
    assert out.max() == 32767  # Gibbs overshoot clipped at full scale
    assert out.min() == -32768


def test_same_rate_passes_through_and_bad_rates_are_refused():
    samples = sine(1000, 8000, 0.02)
    assert np.array_equal(Resampler(8000, 8000).process_array(samples), samples)
    with pytest.raises(ValueError):
        Resampler(0, 8000)
    with pytest.raises(ValueError, match="even"):
        Resampler(8000, 16000).process(b"\x00")
