"""The order of a carrier stream's events."""

import pytest

from mediaserver.errors import ProtocolViolation
from mediaserver.telephony.events import Cleared, Connected, Dtmf, Mark, Media, Started, Stopped
from mediaserver.telephony.stream_order import StreamOrder

START = Started(stream_sid="S", call_sid="C", account_sid="A", encoding="e", sample_rate=8000)


def run(*events):
    order = StreamOrder()
    for event in events:
        order.check(event)
    return order


def test_the_normal_order_is_accepted():
    order = run(
        Connected(),
        START,
        Media(stream_sid="S", audio=b""),
        Dtmf(stream_sid="S", digit="1"),
        Mark(stream_sid="S", name="m"),
        Cleared(stream_sid=""),
        Stopped(stream_sid="S"),
    )
    assert order.started == START and order.stopped


def test_connected_is_optional():
    assert run(START).started == START


@pytest.mark.parametrize(
    ("events", "complaint"),
    [
        ([Media(stream_sid="S", audio=b"")], "media before start"),
        ([Connected(), Dtmf(stream_sid="S", digit="1")], "dtmf before start"),
        ([Stopped(stream_sid="S")], "stop before start"),
        ([START, START], "second start"),
        ([START, Connected()], "connected after"),
        ([Connected(), Connected()], "connected after"),
        ([START, Media(stream_sid="X", audio=b"")], "another stream"),
        ([START, Stopped(stream_sid="S"), Media(stream_sid="S", audio=b"")], "media after stop"),
    ],
)
def test_out_of_order_events_are_violations(events, complaint):
    order = StreamOrder()
    *before, last = events
    for event in before:
        order.check(event)
    with pytest.raises(ProtocolViolation, match=complaint):
        order.check(last)
