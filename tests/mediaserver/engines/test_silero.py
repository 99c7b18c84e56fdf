"""Silero VAD: real speech, silence, noise; per-call state; the shared session; the pool."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from actors.turn_detector import SpeechBegan, SpeechEnded, TurnDetector, TurnSettings
from mediaserver.engines.silero import (
    WINDOW_SAMPLES,
    SharedSileroVad,
    SileroVadFactory,
    silero_vad,
)

QUESTION = "What time do you open on Saturday? I would like to come by after work."


def windows(pcm: bytes) -> list[np.ndarray]:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    n = len(samples) // WINDOW_SAMPLES
    return [samples[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES].copy() for i in range(n)]


def probabilities(detector, pcm: bytes) -> list[float]:
    return [detector.process(w) for w in windows(pcm)]


def noise(seconds: float, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(16_000 * seconds)
    t = np.arange(n) / 16_000
    hiss = rng.normal(0, 0.03, n)
    hum = 0.05 * np.sin(2 * np.pi * 50 * t) + 0.02 * np.sin(2 * np.pi * 150 * t)
    return ((hiss + hum) * 32768).astype(np.int16).tobytes()


@pytest.fixture(params=["shared", "pooled"])
def any_vad(request, vad_factory):
    """The catalog's shared session, and the pool used without onnxruntime."""
    return vad_factory if request.param == "shared" else SileroVadFactory()


def test_the_server_shares_one_session_when_onnxruntime_is_installed(vad_factory):
    assert isinstance(silero_vad(), SharedSileroVad)
    assert isinstance(vad_factory, SharedSileroVad)


def test_the_shared_session_gives_silero_vad_lites_probabilities(vad_factory, say):
    audio = say(QUESTION) + noise(1.0) + bytes(16_000) + say("Hello there.")
    shared = probabilities(vad_factory(), audio)
    lite = probabilities(SileroVadFactory()(), audio)
    assert shared == pytest.approx(lite, abs=1e-5)
    assert max(shared) > 0.9


def test_speech_is_found_in_speech_and_not_in_silence_or_noise(any_vad, say):
    speech = probabilities(any_vad(), say(QUESTION))
    silence = probabilities(any_vad(), bytes(2 * 16_000 * 2))
    noisy = probabilities(any_vad(), noise(3.0))

    voiced = sum(p >= 0.5 for p in speech) / len(speech)
    assert voiced > 0.5, voiced
    assert max(speech) > 0.9
    assert max(silence) < 0.1
    assert sum(p >= 0.5 for p in noisy) / len(noisy) < 0.05


def test_each_call_keeps_its_own_state_while_sharing_the_model(any_vad, say):
    a_audio, b_audio = say(QUESTION), noise(2.0, seed=7)
    alone_a = probabilities(any_vad(), a_audio)
    alone_b = probabilities(any_vad(), b_audio)

    a, b = any_vad(), any_vad()
    interleaved_a, interleaved_b = [], []
    for wa, wb in zip(windows(a_audio), windows(b_audio), strict=False):
        interleaved_a.append(a.process(wa))
        interleaved_b.append(b.process(wb))

    n = len(interleaved_a)
    assert interleaved_a == pytest.approx(alone_a[:n], abs=1e-6)
    assert interleaved_b == pytest.approx(alone_b[:n], abs=1e-6)


def test_a_finished_calls_model_is_reused_with_fresh_state(say):
    factory = SileroVadFactory()
    first = factory()
    probabilities(first, say(QUESTION))  # leaves speech in the recurrent state
    assert (factory.models, factory.idle) == (1, 0)

    del first
    gc.collect()
    assert factory.idle == 1
    second = factory()
    assert factory.models == 1
    fresh = SileroVadFactory()()
    audio = say("Hello there.")
    assert probabilities(second, audio) == pytest.approx(probabilities(fresh, audio), abs=1e-6)


def test_spare_models_are_built_on_the_loading_pool(executors):
    factory = SileroVadFactory(loading=executors.loading, spare=1)
    detector = factory()  # the pool is empty: built inline, and a spare is ordered
    executors.loading.submit(lambda: None).result()  # the loading pool is FIFO: spare is done
    assert (factory.models, factory.idle) == (2, 1)
    assert detector.process(np.zeros(WINDOW_SAMPLES, dtype=np.float32)) < 0.1


def test_read_only_and_int_backed_windows_are_accepted(any_vad):
    detector = any_vad()
    read_only = np.frombuffer(bytes(WINDOW_SAMPLES * 4), dtype=np.float32)
    assert not read_only.flags.writeable
    assert detector.process(read_only) < 0.1
    assert detector.process(np.zeros(WINDOW_SAMPLES, dtype=np.float64)) < 0.1
    with pytest.raises(ValueError, match="window size"):
        detector.process(np.zeros(100, dtype=np.float32))


def test_the_quiet_gate_keeps_silero_s_decisions_on_speech_silence_and_noise(vad_factory, say):
    rng = np.random.default_rng(5)

    def pcm(samples: np.ndarray) -> bytes:
        return np.clip(np.round(samples), -32768, 32767).astype(np.int16).tobytes()

    def speech(text: str, gain_db: float = 0.0) -> np.ndarray:
        return np.frombuffer(say(text), dtype=np.int16) * 10 ** (gain_db / 20)

    def hiss(seconds: float, rms: float) -> np.ndarray:
        return rng.normal(0, rms, int(16_000 * seconds))

    quiet = speech("Could you tell me your opening hours, please?", -20)  # about -39 dBFS
    over_hum = speech("Hello there.")
    audio = b"".join(
        [
            pcm(np.zeros(16_000)),  # line silence
            say(QUESTION),
            pcm(np.zeros(40_000)),
            pcm(quiet),
            pcm(hiss(1.5, 3)),  # -80 dBFS: under the gate
            pcm(over_hum + hiss(len(over_hum) / 16_000, 3)),
            pcm(hiss(1.0, 60)),  # -55 dBFS: over the gate, so every window is heard
            pcm(np.zeros(24_000)),
        ]
    )

    def decisions(gate_peak: int | None) -> tuple[list[tuple[str, float]], int]:
        detector = TurnDetector(TurnSettings(), vad_factory(), gate_peak=gate_peak)
        events = []
        for i in range(0, len(audio) - 639, 640):
            for event in detector.feed(audio[i : i + 640], i / 32_000):
                if isinstance(event, SpeechBegan):
                    events.append(("began", event.at))
                elif isinstance(event, SpeechEnded):
                    events.append(("ended", event.ended_at))
        return events, detector.skipped_windows

    every_window, none_skipped = decisions(gate_peak=0)
    gated, skipped = decisions(gate_peak=None)
    assert none_skipped == 0
    assert (
        [kind for kind, _ in gated] == [kind for kind, _ in every_window] == ["began", "ended"] * 3
    )
    for (_, at), (_, reference) in zip(gated, every_window, strict=True):
        assert abs(at - reference) <= 0.033  # the same window, or the next one
    assert skipped / (len(audio) // 1024) > 0.25
