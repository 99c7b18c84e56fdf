"""StreamOrder: the order a carrier's events must come in, checked without I/O.

    connected? -> start -> (media | dtmf | mark | clear)* -> stop

`connected` is optional (Exotel's Stream applet may skip it) but comes at most once and first;
`start` comes exactly once; everything after it names the started stream; nothing follows `stop`.
Anything else is a `ProtocolViolation` that ends the stream.
"""

from __future__ import annotations

from mediaserver.errors import ProtocolViolation
from mediaserver.telephony.events import (
    Cleared,
    Connected,
    Dtmf,
    Mark,
    Media,
    Started,
    Stopped,
    StreamEvent,
)


class StreamOrder:
    def __init__(self) -> None:
        self.connected = False
        self.started: Started | None = None
        self.stopped = False

    def check(self, event: StreamEvent) -> None:
        """Accept `event` as the next one, or raise.

        Raises:
            ProtocolViolation: the event is out of order or names another stream.
        """
        if self.stopped:
            raise ProtocolViolation(f"{_name(event)} after stop")
        match event:
            case Connected():
                if self.connected or self.started is not None:
                    raise ProtocolViolation("connected after the stream began")
                self.connected = True
            case Started():
                if self.started is not None:
                    raise ProtocolViolation("a second start")
                self.started = event
            case Media() | Dtmf() | Mark() | Stopped() | Cleared():
                if self.started is None:
                    raise ProtocolViolation(f"{_name(event)} before start")
                sid = event.stream_sid
                if sid and sid != self.started.stream_sid:
                    raise ProtocolViolation(f"{_name(event)} for another stream {sid[:64]!r}")
                if isinstance(event, Stopped):
                    self.stopped = True


def _name(event: StreamEvent) -> str:
    return {
        Connected: "connected",
        Started: "start",
        Media: "media",
        Dtmf: "dtmf",
        Mark: "mark",
        Cleared: "clear",
        Stopped: "stop",
    }[type(event)]
