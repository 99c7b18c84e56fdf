"""espeak-ng text to speech through ctypes: a tiny, robotic fallback voice, 22.05 kHz.

The library and its data ship inside the `espeakng-loader` wheel (GPL-3, like Piper); nothing is
fetched. Measured on the 2-core box: 2-6 ms a sentence and next to no memory, against Piper's
50-400 ms and 120 MB, but robotic (Whisper tiny.en mishears about a quarter of its words). An
agent picks it with the voice "espeak" or "espeak:<espeak voice name>" (default "en-us").

espeak-ng is one global state machine per process (one voice, one callback), so every
synthesis holds one module-level lock. The library is loaded and initialized once, on first use.
Reference: espeak-ng `speak_lib.h` (`espeak_Initialize`, `espeak_SetSynthCallback`,
`espeak_SetVoiceByName`, `espeak_Synth`, `AUDIO_OUTPUT_SYNCHRONOUS`).

Threads: `synthesize` runs on a `syntheses` pool worker; the callback runs on that same thread,
inside `espeak_Synth`.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from mediaserver.engines.synthesis import Speech

DEFAULT_VOICE = "en-us"

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report a missing data folder instead of exit()ing the process
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    """espeak-ng refused: its library or data cannot be loaded, or a voice is unknown."""


class _Library:
    """The process's espeak-ng, initialized once; use only while holding `_LOCK`."""

    def __init__(self) -> None:
        import espeakng_loader  # noqa: PLC0415  (optional extra)

        lib: Any = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak-ng did not initialize (code {rate})")
        self.lib = lib
        self.sample_rate = int(rate)
        self.voice = ""
        self.pieces: list[bytes] = []
        # Kept referenced for the life of the process: espeak-ng calls it from C.
        self._callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, samples: int, _events: Any) -> int:
        if samples > 0 and wav:
            self.pieces.append(ctypes.string_at(wav, samples * 2))
        return 0  # go on


_LOCK = threading.Lock()
_library: _Library | None = None


def _loaded() -> _Library:
    global _library  # noqa: PLW0603  (one espeak-ng per process, like the C library itself)
    if _library is None:
        _library = _Library()
    return _library


class EspeakSpeaker:
    """An espeak-ng voice; `synthesize` from any thread (they take turns)."""

    def __init__(self, voice: str = DEFAULT_VOICE) -> None:
        self.voice = voice or DEFAULT_VOICE

    def load(self) -> None:
        """Load and initialize the library (a few ms); later calls do nothing."""
        with _LOCK:
            _loaded()

    def synthesize(self, text: str) -> Speech:
        """`text` spoken (blocking, a few ms a sentence).

        Raises:
            EspeakError: the voice is unknown or synthesis failed.
        """
        encoded = text.encode() + b"\0"
        with _LOCK:
            library = _loaded()
            if library.voice != self.voice:
                if library.lib.espeak_SetVoiceByName(self.voice.encode()) != _EE_OK:
                    raise EspeakError(f"unknown espeak-ng voice {self.voice!r}")
                library.voice = self.voice
            library.pieces = []
            status = library.lib.espeak_Synth(
                encoded, len(encoded), 0, 0, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
            )
            pcm = b"".join(library.pieces)
            library.pieces = []
        if status != _EE_OK:
            raise EspeakError(f"espeak-ng could not synthesize (code {status})")
        return Speech(pcm=pcm, sample_rate=library.sample_rate)
