"""Playout pacing, chunking and marks, driven by a hand-moved clock."""

import numpy as np
import pytest

from mediaserver.telephony.playout import AudioChunk, MarkOut, Playout, Progress


def audio(ms, value=100, rate=8000):
    return np.full(rate * ms // 1000, value, dtype="<i2").tobytes()


def samples(chunk):
    return np.frombuffer(chunk.audio, dtype="<i2")


def chunks(items):
    return [item for item in items if isinstance(item, AudioChunk)]


def marks(items):
    return [item.name for item in items if isinstance(item, MarkOut)]


def twilio_like():
    return Playout(sample_rate=8000, chunk_ms=20, lead_ms=100, mark_every_ms=100)


def test_sends_at_most_the_lead_ahead_then_one_frame_every_20_ms():
    playout = twilio_like()
    playout.push(1, audio(1000), 1000)
    first = chunks(playout.due(10.0))
    assert len(first) == 5  # 100 ms ahead
    assert all(len(samples(c)) == 160 for c in first)
    assert chunks(playout.due(10.0)) == []
    assert playout.next_due_at(10.0) == pytest.approx(10.02)
    assert len(chunks(playout.due(10.019))) == 0
    assert len(chunks(playout.due(10.02))) == 1
    assert len(chunks(playout.due(10.1))) == 4
    # A late wake-up (the loop was busy): the far end ran dry; refill up to the lead, no more.
    assert len(chunks(playout.due(10.5))) == 5
    assert playout.queued_ms == pytest.approx(1000 - 20 * 15)


def test_a_partial_frame_waits_until_the_far_end_would_run_dry_then_is_padded():
    playout = twilio_like()
    playout.push(1, audio(50), 50)
    sent = chunks(playout.due(0.0))
    assert len(sent) == 2  # 40 ms of whole frames; 10 ms wait for more
    assert playout.next_due_at(0.0) == pytest.approx(0.02)
    assert chunks(playout.due(0.01)) == []
    playout.push(1, audio(10), 10)  # more audio arrived in time: no padding
    sent = chunks(playout.due(0.01))
    assert len(sent) == 1 and np.all(samples(sent[0]) == 100)
    playout.push(1, audio(5), 5)
    (padded,) = chunks(playout.due(0.04))
    assert np.count_nonzero(samples(padded)) == 40 and len(samples(padded)) == 160
    assert playout.padded_chunks == 1


def test_turns_never_share_a_chunk():
    playout = twilio_like()
    playout.push(1, audio(30, 1), 30)
    playout.push(2, audio(30, 2), 30)
    sent = chunks(playout.due(0.0)) + chunks(playout.due(0.04))
    assert [(c.turn_id, int(np.count_nonzero(samples(c)))) for c in sent] == [
        (1, 160),
        (1, 80),
        (2, 160),
        (2, 80),
    ]
    assert all(set(np.unique(samples(c))) <= {0, c.turn_id} for c in sent)


def test_marks_track_what_was_played_and_report_the_whole_turn_at_its_end():
    playout = twilio_like()
    playout.push(3, audio(250), 250.3)  # the turn's own duration, as the TTS produced it
    sent = playout.due(0.0)
    assert [type(item).__name__ for item in sent] == ["AudioChunk"] * 5 + ["MarkOut"]
    out = [*sent, *playout.due(0.1), *playout.due(0.2), *playout.due(0.3)]
    names = marks(out)
    assert len(names) == 3
    assert [playout.mark_played(n) for n in names] == [
        Progress(turn_id=3, played_ms=100.0),
        Progress(turn_id=3, played_ms=200.0),
        Progress(turn_id=3, played_ms=250.3),  # the end: exactly the turn's duration
    ]
    assert playout.mark_played(names[0]) is None  # echoed twice
    assert playout.mark_played("not-ours") is None


def test_flush_drops_the_queue_and_forgets_the_marks_still_out():
    playout = twilio_like()
    playout.push(1, audio(500), 500)
    names = marks(playout.due(0.0))
    assert names
    playout.flush(0.05)
    assert playout.queued_ms == 0
    assert playout.due(0.05) == []
    assert playout.next_due_at(0.05) is None
    assert [playout.mark_played(n) for n in names] == [None]  # echoed on clear: not played
    # The next turn starts at once, without waiting for the cleared audio's schedule.
    playout.push(2, audio(100), 100)
    assert len(chunks(playout.due(0.05))) == 5


def test_exotel_like_chunks_of_200_ms():
    playout = Playout(sample_rate=8000, chunk_ms=200, lead_ms=400, mark_every_ms=200)
    playout.push(1, audio(500), 500)
    first = playout.due(0.0)
    assert [len(samples(c)) for c in chunks(first)] == [1600, 1600]
    assert len(marks(first)) == 2
    assert chunks(playout.due(0.1)) == []
    (last,) = chunks(playout.due(0.2))  # the far end is about to run dry: padded
    assert np.count_nonzero(samples(last)) == 800


def test_a_carrier_that_never_echoes_marks_does_not_grow_memory():
    playout = twilio_like()
    for second in range(400):
        playout.push(1, audio(100), 100)
        playout.due(float(second))
    assert len(playout._marks) <= 256


def test_refill_wakes_the_sender_only_when_two_frames_fit():
    playout = Playout(sample_rate=8000, chunk_ms=20, lead_ms=100, refill_ms=40)
    playout.push(1, audio(1000), 1000)
    assert len(chunks(playout.due(0.0))) == 5
    assert playout.next_due_at(0.0) == pytest.approx(0.04)
    assert len(chunks(playout.due(0.04))) == 2
    assert playout.next_due_at(0.04) == pytest.approx(0.08)


def test_mu_law_is_padded_with_its_own_silence():
    playout = Playout(sample_rate=8000, chunk_ms=20, lead_ms=100, silence=b"\xff")
    playout.push(1, b"\x00" * 100, 12.5)
    (chunk,) = chunks(playout.due(0.0))
    assert chunk.audio == b"\x00" * 100 + b"\xff" * 60
    with pytest.raises(ValueError, match="whole samples"):
        Playout(sample_rate=8000, chunk_ms=20, lead_ms=100).push(1, b"\x00", 0.1)


def test_lead_shorter_than_a_chunk_is_refused():
    with pytest.raises(ValueError):
        Playout(sample_rate=8000, chunk_ms=200, lead_ms=100)
