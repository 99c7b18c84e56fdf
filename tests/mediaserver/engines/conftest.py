"""Shared fixtures for the engine tests: models loaded once per session, speech made by Piper.

Speech for the tests is synthesized here, with the same Piper voice the server speaks with but
without Piper's random variation (which now and then turns "hours" into "now"), and resampled
to the 16 kHz the call tree hears.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from piper.config import SynthesisConfig

from config.settings import OfflineSettings
from mediaserver.engines.catalog import EngineCatalog
from mediaserver.engines.executors import EngineExecutors
from mediaserver.engines.piper import PiperSpeaker
from mediaserver.engines.silero import SharedSileroVad, SileroVadFactory
from mediaserver.engines.synthesis import Speech
from mediaserver.engines.whisper import WhisperRecognizer
from tests.timing import MS

SAMPLE_RATE = 16_000


def to_16k(speech: Speech) -> bytes:
    """Linear-interpolation resampling: plenty for speech recognition tests."""
    samples = np.frombuffer(speech.pcm, dtype=np.int16).astype(np.float32)
    n = len(samples) * SAMPLE_RATE // speech.sample_rate
    positions = np.arange(n) * (speech.sample_rate / SAMPLE_RATE)
    resampled = np.interp(positions, np.arange(len(samples)), samples)
    return bytes(resampled.round().astype(np.int16).tobytes())


def words(text: str) -> set[str]:
    return {w.strip(".,?!'\"").lower() for w in text.split()}


class Collected:
    """A sink that records engine results; tests wait on it, never sleep."""

    def __init__(self) -> None:
        self.results: list[object] = []
        self.threads: set[str] = set()
        self._changed = threading.Condition()

    def __call__(self, result: object) -> None:
        with self._changed:
            self.results.append(result)
            self.threads.add(threading.current_thread().name)
            self._changed.notify_all()

    def of(self, kind: type) -> list[Any]:
        with self._changed:
            return [r for r in self.results if isinstance(r, kind)]

    def wait_for(self, predicate: Callable[[Collected], object], timeout: float = 10_000 * MS):
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                kinds = [type(r).__name__ for r in self.results]
                raise AssertionError(f"timed out; results: {kinds}")

    def wait_count(self, kind: type, n: int, timeout: float = 10_000 * MS) -> list[Any]:
        self.wait_for(lambda c: len(c.of(kind)) >= n, timeout)
        return self.of(kind)


@pytest.fixture(scope="session")
def catalog() -> Iterator[EngineCatalog]:
    """The server's catalog with default settings, warmed up once for the whole session."""
    engines = EngineCatalog(OfflineSettings())
    engines.warm_up()
    yield engines
    engines.close()


@pytest.fixture(scope="session")
def piper(catalog: EngineCatalog) -> PiperSpeaker:
    return catalog.piper


@pytest.fixture(scope="session")
def whisper(catalog: EngineCatalog) -> WhisperRecognizer:
    assert catalog.whisper is not None
    return catalog.whisper


@pytest.fixture(scope="session")
def vad_factory(catalog: EngineCatalog) -> SharedSileroVad | SileroVadFactory:
    return catalog.vad


@pytest.fixture(scope="session")
def speak_steadily(piper: PiperSpeaker) -> Callable[[str], Speech]:
    """Text -> Piper's speech without its random variation, so every run hears the same audio."""
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    voice = piper.load()

    def speak(text: str) -> Speech:
        pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text, steady))
        return Speech(pcm=pcm, sample_rate=int(voice.config.sample_rate))

    return speak


@pytest.fixture(scope="session")
def say(speak_steadily: Callable[[str], Speech]) -> Callable[[str], bytes]:
    """Text -> 16 kHz PCM16 of Piper speaking it, the same every run (cached for the session)."""
    cache: dict[str, bytes] = {}

    def speak(text: str) -> bytes:
        if text not in cache:
            cache[text] = to_16k(speak_steadily(text))
        return cache[text]

    return speak


@pytest.fixture
def executors() -> Iterator[EngineExecutors]:
    pools = EngineExecutors(transcriptions=1, syntheses=1)
    yield pools
    pools.close()


@pytest.fixture
def sink() -> Collected:
    return Collected()
