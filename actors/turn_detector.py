"""TurnDetector: voice activity windows in, speech-start and end-of-turn decisions out.

Pure: no actor, no clock. Times come from the audio (`captured_at` of each frame), so the same
audio always gives the same decisions, however fast it is fed.

Where speech ends. Silero scores in 32 ms windows and still calls the window after the last
syllable voiced (its recurrent state decays), so counting the silence from the end of the last
voiced window starts it 40-90 ms after the caller stopped (measured by bench/latency.py). The
detector therefore also tracks the last *loud* sample of the turn (within 30 dB of its loudest)
and ends the turn `end_of_turn_silence_ms` after it, checked every frame, once the VAD has seen at
least one silent window. This only ever ends a turn earlier than window counting would, never
later: sound the VAD does not call speech (breath, background noise) moves the loud mark on, and
then the window count decides as before. Voiced windows with no loud sample for longer than
`QUIET_VOICED_MS` are quiet speech, not the VAD's lag, and count as loud.

The quiet gate. A window none of whose samples reaches `GATE_PEAK` (-54 dBFS) is not given to
the VAD at all when no speech is open or starting (not in speech, no voiced run): it counts as a
silent window, for no model run (about 215 us). Only after the VAD itself has heard
`GATE_AFTER_WINDOWS` quiet windows in a row, though: Silero's recurrent state then has settled
on silence, so resuming it later from that state, not from the state after the windows it
skipped, gives the same decisions to within a window (and a fresh state would not: it is slow
to call the first words of a call). Decision 0070 has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from actors.agent import TurnEnd

if TYPE_CHECKING:
    from actors.agent import VadOverrides
    from actors.engines import VoiceDetector
    from config.settings import VadSettings

WINDOW_SAMPLES = 512  # Silero's window at 16 kHz: 32 ms
SAMPLE_RATE = 16_000
WINDOW_MS = WINDOW_SAMPLES * 1000 / SAMPLE_RATE
LOUD_FRACTION = 0.03  # a sample within 30 dB of the turn's loudest is speech energy
MIN_LOUD = 120  # ... and never quieter than -49 dBFS
QUIET_VOICED_MS = 100.0  # longer voiced-but-quiet runs are quiet speech, not VAD lag
GATE_PEAK = 64  # a window with no sample this loud (-54 dBFS) is line silence: the VAD may skip it
GATE_AFTER_WINDOWS = 16  # ... once it has heard 16 quiet windows in a row itself (0.5 s)
_SCALE = np.float32(1 / 32768)  # PCM16 -> [-1, 1), exact (a power of two)


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnSettings:
    """The server's `VadSettings` with the agent's overrides applied."""

    threshold: float = 0.5
    min_speech_ms: int = 200
    end_of_turn_silence_ms: int = 500
    turn_end: TurnEnd = "vad"

    @classmethod
    def resolve(cls, vad: VadSettings, agent: VadOverrides) -> TurnSettings:
        return cls(
            threshold=agent.threshold if agent.threshold is not None else vad.threshold,
            min_speech_ms=agent.min_speech_ms
            if agent.min_speech_ms is not None
            else vad.min_speech_ms,
            end_of_turn_silence_ms=agent.end_of_turn_silence_ms
            if agent.end_of_turn_silence_ms is not None
            else vad.end_of_turn_silence_ms,
            turn_end=agent.turn_end if agent.turn_end is not None else vad.turn_end,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechBegan:
    at: float  # start of the first voiced window of the run
    sample: int  # its position in the fed audio, in samples


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechEnded:
    """Enough silence after speech: the caller's turn is over (or paused, in provider mode)."""

    started_at: float
    ended_at: (
        float  # the last loud sample of the turn (at the latest, the last voiced window's end)
    )


TurnEvent = SpeechBegan | SpeechEnded


class TurnDetector:
    """Cuts 16 kHz PCM16 into 512-sample windows and tracks speech and silence runs.

    Args:
        gate_peak: `GATE_PEAK` unless given; 0 gives every window to the VAD.
    """

    def __init__(
        self, settings: TurnSettings, detector: VoiceDetector, *, gate_peak: int | None = None
    ) -> None:
        self._settings = settings
        self._detector = detector
        self._gate_peak = GATE_PEAK if gate_peak is None else gate_peak
        self._quiet_windows = 0  # quiet windows in a row that the VAD has heard
        self.skipped_windows = 0  # windows the gate kept from the VAD
        self._pending = np.zeros(0, dtype=np.int16)
        self._fed = 0  # samples cut into windows so far
        self._voiced_ms = 0.0
        self._run_start: tuple[float, int] | None = None
        self._silence_ms = 0.0
        self._last_voiced_end = 0.0
        self._peak = 0  # loudest sample of the speech run, PCM16 units
        self._last_loud_end = 0.0
        self._quiet_voiced_ms = 0.0
        self.in_speech = False
        self.speech_started_at: float | None = None

    def feed(self, pcm: bytes, captured_at: float) -> list[TurnEvent]:
        samples = np.frombuffer(pcm, dtype=np.int16)
        # Time of the first pending sample: the pending tail precedes this frame.
        t0 = captured_at - len(self._pending) / SAMPLE_RATE
        buffered = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        events: list[TurnEvent] = []
        n_windows = len(buffered) // WINDOW_SAMPLES
        for i in range(n_windows):
            window = buffered[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
            start = t0 + i * WINDOW_SAMPLES / SAMPLE_RATE
            event = self._window(window, start)
            if event is not None:
                events.append(event)
        self._pending = buffered[n_windows * WINDOW_SAMPLES :].copy()
        if self.in_speech and self._silence_ms > 0:
            # Between windows: the silence since the last loud sample may already be enough.
            tail_start = t0 + n_windows * WINDOW_SAMPLES / SAMPLE_RATE
            if self._loud_until(self._pending, tail_start, _peak(self._pending)) is None:
                tail_end = tail_start + len(self._pending) / SAMPLE_RATE
                if (tail_end - self._last_loud_end) * 1000 >= self._settings.end_of_turn_silence_ms:
                    events.append(self._end_turn(tail_start))
        return events

    def _loud_until(
        self, samples: np.ndarray[tuple[int], np.dtype[np.int16]], start: float, peak: int
    ) -> float | None:
        """Time just after the last loud sample of `samples` (whose peak is `peak`), or None."""
        floor = max(self._peak * LOUD_FRACTION, MIN_LOUD)
        if peak < floor:
            return None  # the usual case in silence: no search
        loud = np.flatnonzero(np.abs(samples, dtype=np.int32) >= floor)
        return start + (int(loud[-1]) + 1) / SAMPLE_RATE

    def _end_turn(self, start: float) -> SpeechEnded:
        self.in_speech = False
        started_at = self.speech_started_at if self.speech_started_at is not None else start
        self.speech_started_at = None
        self._silence_ms = 0.0
        self._peak = 0
        ended_at = min(self._last_loud_end, self._last_voiced_end)
        return SpeechEnded(started_at=started_at, ended_at=ended_at)

    def _window(
        self, window: np.ndarray[tuple[int], np.dtype[np.int16]], start: float
    ) -> TurnEvent | None:
        sample = self._fed
        self._fed += WINDOW_SAMPLES
        peak = _peak(window)
        quiet = peak < self._gate_peak
        if (
            quiet
            and self._quiet_windows >= GATE_AFTER_WINDOWS
            and not self.in_speech
            and self._run_start is None
        ):
            self.skipped_windows += 1
            voiced = False
        else:
            self._quiet_windows = self._quiet_windows + 1 if quiet else 0
            probability = self._detector.process(np.multiply(window, _SCALE, dtype=np.float32))
            voiced = probability >= self._settings.threshold
        end = start + WINDOW_MS / 1000
        if voiced:
            self._silence_ms = 0.0
            self._last_voiced_end = end
            self._peak = max(self._peak, peak)
            loud_until = self._loud_until(window, start, peak)
            if loud_until is not None:
                self._last_loud_end = loud_until
                self._quiet_voiced_ms = 0.0
            else:
                self._quiet_voiced_ms += WINDOW_MS
                if self._quiet_voiced_ms > QUIET_VOICED_MS or self._run_start is None:
                    self._last_loud_end = end
            if self._run_start is None:
                self._run_start = (start, sample)
            self._voiced_ms += WINDOW_MS
            if not self.in_speech and self._voiced_ms >= self._settings.min_speech_ms:
                self.in_speech = True
                self.speech_started_at = self._run_start[0]
                return SpeechBegan(at=self._run_start[0], sample=self._run_start[1])
            return None
        self._voiced_ms = 0.0
        self._run_start = None
        self._quiet_voiced_ms = 0.0
        if not self.in_speech:
            self._peak = 0
            return None
        loud_until = self._loud_until(window, start, peak)
        if loud_until is not None:  # sound the VAD does not call speech: let the windows decide
            self._last_loud_end = max(self._last_loud_end, loud_until)
        self._silence_ms += WINDOW_MS
        eot_ms = self._settings.end_of_turn_silence_ms
        if self._silence_ms < eot_ms and (end - self._last_loud_end) * 1000 < eot_ms:
            return None
        return self._end_turn(start)


def _peak(samples: np.ndarray[tuple[int], np.dtype[np.int16]]) -> int:
    """The largest magnitude among `samples` (0 if none); -32768 counts as 32768."""
    if not len(samples):
        return 0
    return max(int(samples.max()), -int(samples.min()))
