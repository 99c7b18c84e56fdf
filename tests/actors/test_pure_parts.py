"""The pure pieces of the call tree: turn detection, sentences, supervision policy, replay."""

from __future__ import annotations

import numpy as np

from actors.replay_buffer import ReplayBuffer
from actors.sentences import SentenceSplitter, SpokenText
from actors.supervision import ChildSpec, RestartIntensity, rest_for_one, should_restart
from actors.tree_messages import TranscribeAudio, TurnEnded
from actors.turn_detector import (
    GATE_AFTER_WINDOWS,
    SpeechBegan,
    SpeechEnded,
    TurnDetector,
    TurnEvent,
    TurnSettings,
)
from config.settings import SupervisionSettings
from tests.actors.fakes import SILENCE, FakeVad, word_frame


def feed(detector: TurnDetector, frames: list[bytes], t0: float = 10.0) -> list[TurnEvent]:
    events = []
    for i, frame in enumerate(frames):
        events += detector.feed(frame, t0 + i * 0.02)
    return events


def test_speech_starts_after_min_speech_and_the_turn_ends_after_the_silence():
    detector = TurnDetector(TurnSettings(min_speech_ms=96, end_of_turn_silence_ms=200), FakeVad())
    events = feed(detector, [SILENCE] * 8 + [word_frame(1)] * 10 + [SILENCE] * 15)
    began, ended = events
    assert isinstance(began, SpeechBegan) and isinstance(ended, SpeechEnded)
    assert abs(began.at - (10.0 + 8 * 0.02)) < 0.033  # the first voiced window
    assert began.sample == 8 * 320  # 8 silent frames = 5 silent windows; the 6th is voiced
    assert ended.started_at == began.at
    assert abs(ended.ended_at - (10.0 + 18 * 0.02)) < 0.033


def test_a_blip_shorter_than_min_speech_is_not_speech():
    detector = TurnDetector(TurnSettings(min_speech_ms=200), FakeVad())
    assert feed(detector, [word_frame(1)] * 4 + [SILENCE] * 30) == []


def test_sentences_come_out_as_soon_as_they_end():
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there") == []
    assert splitter.feed(".") == []  # the boundary needs the following space
    assert splitter.feed(" How are") == ["Hello there."]
    assert splitter.feed(" you? It costs 3.5 euros") == ["How are you?"]
    assert splitter.flush() == "It costs 3.5 euros"


def test_spoken_text_is_what_the_played_audio_covers():
    spoken = SpokenText()
    spoken.voiced(spoken.sent("One two three four."), 400)
    spoken.voiced(spoken.sent("Five six."), 200)
    assert spoken.spoken(0) == ""
    assert spoken.spoken(200) == "One two"
    assert spoken.spoken(500) == "One two three four. Five"
    assert spoken.spoken(10_000) == "One two three four. Five six."


def test_rest_for_one_and_restart_types():
    order = ("session", "ingest", "transcriber", "responder")
    assert rest_for_one(order, "ingest") == ("ingest", "transcriber", "responder")
    assert rest_for_one(order, "responder") == ("responder",)
    assert should_restart(ChildSpec(name="x", restart="permanent"))
    assert should_restart(ChildSpec(name="x", restart="transient"), abnormal=True)
    assert not should_restart(ChildSpec(name="x", restart="transient"), abnormal=False)
    assert not should_restart(ChildSpec(name="x", restart="temporary"))


def test_restart_intensity_backs_off_exponentially_then_escalates():
    settings = SupervisionSettings(
        max_restarts=3, restart_window_s=10, backoff_initial_ms=50, backoff_max_ms=150
    )
    intensity = RestartIntensity(settings)
    delays = []
    for t in (0.0, 1.0, 2.0):
        assert intensity.record(t)
        delays.append(intensity.backoff_s())
    assert delays == [0.05, 0.1, 0.15]
    assert not intensity.record(3.0)  # the 4th within 10 s
    fresh = RestartIntensity(settings)
    assert all(fresh.record(t) for t in (0.0, 11.0, 22.0, 33.0, 44.0))  # spread out: fine


def test_replay_buffer_replays_after_the_settled_offset_and_refuses_old_writers():
    buffer = ReplayBuffer(max_s=1.0)
    buffer.admit_writer(1)
    first = buffer.append_audio(1, word_frame(1), 0.0)
    end = TurnEnded(offset=320, start_offset=0, speech_started_at=0.0, speech_ended_at=0.02)
    assert buffer.append_turn_end(1, end)
    second = buffer.append_audio(1, word_frame(2), 0.02)
    assert first is not None and second is not None and second.offset == 320
    assert buffer.since(0) == (first, end, second)
    assert buffer.since(320) == (second,)
    buffer.trim(320)
    assert buffer.since(0) == (second,)
    buffer.admit_writer(2)
    assert buffer.append_audio(1, SILENCE, 0.04) is None
    for i in range(60):  # 1.2 s into a 1 s buffer: the oldest goes
        buffer.append_audio(2, SILENCE, 0.06 + i * 0.02)
    assert buffer.seconds() <= 1.0 and buffer.dropped_bytes > 0
    oldest = buffer.since(0)[0]
    assert isinstance(oldest, TranscribeAudio) and np.frombuffer(oldest.pcm, np.int16).max() == 0


def decision(detector: TurnDetector, frames: list[bytes], t0: float = 10.0):
    """The SpeechEnded event and the time (end of the frame) at which it was decided."""
    for i, frame in enumerate(frames):
        for event in detector.feed(frame, t0 + i * 0.02):
            if isinstance(event, SpeechEnded):
                return event, t0 + (i + 1) * 0.02
    raise AssertionError("the turn never ended")


class LaggingVad:
    """Like Silero: the window after the last syllable still scores as voiced."""

    def __init__(self):
        self.previous_loud = False

    def process(self, window):
        loud = float(np.abs(window).max()) > 0.01
        voiced, self.previous_loud = loud or self.previous_loud, loud
        return 1.0 if voiced else 0.0


def test_the_turn_ends_after_the_silence_from_the_last_loud_sample_not_the_vads_lag():
    settings = TurnSettings(min_speech_ms=96, end_of_turn_silence_ms=200)
    frames = [SILENCE] * 8 + [word_frame(1)] * 10 + [SILENCE] * 30
    ended, decided_at = decision(TurnDetector(settings, LaggingVad()), frames)
    assert ended.ended_at == 10.0 + 18 * 0.02  # the last loud sample, exactly
    # Within one frame of 200 ms after it; counting windows after the lagging one would take
    # 7 x 32 ms from the end of that window, 250-280 ms.
    assert 0.200 <= decided_at - ended.ended_at < 0.200 + 0.021


def test_noise_the_vad_calls_silence_never_ends_a_turn_early():
    class QuietOnNoise:
        def process(self, window):
            return 1.0 if float(np.abs(window).max()) > 0.02 else 0.0

    settings = TurnSettings(min_speech_ms=96, end_of_turn_silence_ms=200)
    loud_word = np.full(320, 5000, dtype=np.int16).tobytes()
    noise = np.full(320, 400, dtype=np.int16).tobytes()  # loud enough, but "silence" to the VAD
    frames = [SILENCE] * 8 + [loud_word] * 10 + [noise] * 30
    _, decided_at = decision(TurnDetector(settings, QuietOnNoise()), frames)
    speech_end = 10.0 + 18 * 0.02
    assert decided_at - speech_end >= 7 * 0.032 - 0.020  # seven silent windows, as before


class CountingVad(FakeVad):
    """FakeVad that counts the windows it is given."""

    def __init__(self):
        self.windows = 0

    def process(self, window):
        self.windows += 1
        return super().process(window)


def test_the_quiet_gate_keeps_line_silence_from_the_vad_once_it_has_heard_half_a_second():
    vad = CountingVad()
    detector = TurnDetector(TurnSettings(min_speech_ms=96, end_of_turn_silence_ms=200), vad)
    hush = np.full(320, 40, dtype=np.int16).tobytes()  # -58 dBFS: under the gate
    assert feed(detector, [hush] * 100) == []  # 2 s: 62 windows
    assert vad.windows == GATE_AFTER_WINDOWS
    assert detector.skipped_windows == 62 - GATE_AFTER_WINDOWS


def test_the_quiet_gate_never_skips_a_window_in_speech():
    vad = CountingVad()
    settings = TurnSettings(min_speech_ms=96, end_of_turn_silence_ms=2000)
    detector = TurnDetector(settings, vad)
    # A 1.2 s pause inside the turn: 37 quiet windows, all of them heard by the VAD.
    frames = [SILENCE] * 64 + [word_frame(1)] * 16 + [SILENCE] * 60 + [word_frame(2)] * 16
    events = feed(detector, frames)
    assert [type(e) for e in events] == [SpeechBegan]
    assert detector.skipped_windows == 64 * 320 // 512 - GATE_AFTER_WINDOWS  # before speech only
    assert vad.windows + detector.skipped_windows == len(frames) * 320 // 512


def test_the_quiet_gate_resumes_right_after_a_turn_ends():
    vad = CountingVad()
    settings = TurnSettings(min_speech_ms=96, end_of_turn_silence_ms=600)
    detector = TurnDetector(settings, vad)
    events = feed(detector, [SILENCE] * 50 + [word_frame(1)] * 10 + [SILENCE] * 100)
    began, ended = events
    assert isinstance(began, SpeechBegan) and isinstance(ended, SpeechEnded)
    heard = vad.windows
    feed(detector, [SILENCE] * 50, t0=20.0)
    # The turn's own 600 ms of trailing silence went through the VAD: no new warm-up needed.
    assert vad.windows == heard


def test_the_quiet_gate_changes_no_decision_of_the_fake_vad():
    settings = TurnSettings(min_speech_ms=96, end_of_turn_silence_ms=200)
    frames = ([SILENCE] * 40 + [word_frame(1)] * 10 + [SILENCE] * 30) * 3
    gated = feed(TurnDetector(settings, FakeVad()), frames)
    ungated = feed(TurnDetector(settings, FakeVad(), gate_peak=0), frames)
    assert gated == ungated and len(gated) == 6
