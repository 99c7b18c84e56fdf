"""espeak-ng through ctypes: real audio of a plausible length, voices, several threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from actors.engines import SpeechChunk, SpeechFinished
from mediaserver.engines.espeak import EspeakError, EspeakSpeaker
from mediaserver.engines.synthesis import SentenceTts

QUESTION = "What time do you open?"


def test_espeak_speaks_non_silent_22050_hz_audio_of_plausible_length():
    speech = EspeakSpeaker().synthesize(QUESTION)
    samples = np.frombuffer(speech.pcm, dtype=np.int16)
    assert speech.sample_rate == 22_050
    assert 0.8 < speech.duration_s < 3.0, speech.duration_s
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 500


def test_voices_are_chosen_by_espeak_name_and_unknown_ones_refused():
    assert EspeakSpeaker("de").synthesize("Guten Tag.").duration_s > 0.3
    with pytest.raises(EspeakError, match="unknown espeak-ng voice 'xx-nowhere'"):
        EspeakSpeaker("xx-nowhere").synthesize("Hello.")
    assert EspeakSpeaker().synthesize("Hello.").duration_s > 0.3  # still usable


def test_threads_take_turns_and_each_gets_its_own_audio():
    # espeak-ng varies a few samples from run to run; mixed-up audio would differ by far more.
    alone = {
        text: len(EspeakSpeaker().synthesize(text).pcm) for text in ("One.", "Two three four.")
    }
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: (t, EspeakSpeaker().synthesize(t).pcm), list(alone) * 8))
    assert all(abs(len(pcm) - alone[text]) < 0.02 * alone[text] for text, pcm in results)


def test_espeak_works_as_a_tts_engine_beside_piper(piper, executors, sink):
    piper.synthesize("Piper has loaded its own espeak-ng phonemizer.")
    stream = SentenceTts(EspeakSpeaker().synthesize, executors.syntheses, name="espeak-ng").open(
        "c", sink
    )
    stream.send(QUESTION)
    stream.finalize()
    sink.wait_count(SpeechFinished, 1)
    assert sum(len(c.pcm) for c in sink.of(SpeechChunk)) > 22_050  # > 0.5 s
