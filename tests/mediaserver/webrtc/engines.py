"""Engines for edge tests that work on real audio after an Opus round trip.

`ToneStt` "recognizes" any voiced audio (a tone) as the words "hello world"; `ToneTts` voices
each sentence as a 440 Hz tone, 60 ms per word, at 24 kHz, so the caller can hear it.
"""

from __future__ import annotations

import numpy as np

from actors.engines import Sink, SpeechChunk, SpeechFinished, TranscriptReceived

TTS_RATE = 24_000
TTS_MS_PER_WORD = 60


class ToneSttStream:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.voiced = 0

    def send(self, pcm: bytes, /) -> None:
        if np.abs(np.frombuffer(pcm, dtype=np.int16)).max() > 1000:
            self.voiced += 1
            if self.voiced == 5:
                self.sink(TranscriptReceived(text="hello", final=False))

    def finalize(self) -> None:
        text = "hello world" if self.voiced >= 5 else ""
        self.voiced = 0
        self.sink(TranscriptReceived(text=text, final=True, finalized=True))

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class ToneStt:
    def open(self, call_id: str, sink: Sink) -> ToneSttStream:
        return ToneSttStream(sink)


class BrokenStt:
    """Fails to open, every time: the Transcriber keeps failing until the call escalates."""

    def open(self, call_id: str, sink: Sink) -> ToneSttStream:
        raise RuntimeError("the STT provider is down")


def tts_tone(words: int) -> bytes:
    n = TTS_RATE * TTS_MS_PER_WORD * words // 1000
    t = np.arange(n) / TTS_RATE
    return (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype(np.int16).tobytes()


class ToneTtsStream:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.sent = 0

    def send(self, sentence: str, /) -> None:
        pcm = tts_tone(max(1, len(sentence.split())))
        self.sink(SpeechChunk(pcm=pcm, sample_rate=TTS_RATE, text_index=self.sent))
        self.sent += 1

    def finalize(self) -> None:
        self.sink(SpeechFinished())

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class ToneTts:
    def open(self, call_id: str, sink: Sink) -> ToneTtsStream:
        return ToneTtsStream(sink)
