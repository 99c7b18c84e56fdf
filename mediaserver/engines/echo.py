"""The `echo` engines, for the echo agent: its text path repeats, its speech engines are silent.

* `EchoLlm` answers with the caller's last message, word by word.
* `EchoStt` hears nothing: each `finalize()` gets one empty final transcript. The echo agent's
  audio goes back to the caller inside the call tree, not through speech recognition.
* `EchoTts` voices nothing: replies stay text, and `SpeechFinished` follows `finalize()`.

Threads: every method answers at once on the calling actor's thread, calling the sink there.
"""

from __future__ import annotations

from actors.engines import ReplyRequest, Sink, SpeechFinished, TranscriptReceived
from mediaserver.engines.scripted import InstantReply, last_user_message


def echo_reply(request: ReplyRequest) -> str:
    return last_user_message(request)


class EchoLlm:
    def open(self, call_id: str, sink: Sink) -> InstantReply:
        return InstantReply(echo_reply, sink)


class EchoStt:
    def open(self, call_id: str, sink: Sink) -> SilentStream:
        return SilentStream(sink, TranscriptReceived(text="", final=True, finalized=True))


class EchoTts:
    def open(self, call_id: str, sink: Sink) -> SilentStream:
        return SilentStream(sink, SpeechFinished())


class SilentStream:
    """Ignores what it is sent; answers each `finalize()` with `done` until cancelled."""

    def __init__(self, sink: Sink, done: TranscriptReceived | SpeechFinished) -> None:
        self._sink = sink
        self._done = done
        self._open = True

    def send(self, item: object, /) -> None:
        pass

    def finalize(self) -> None:
        if self._open:
            self._sink(self._done)

    def cancel(self) -> None:
        self._open = False

    def close(self) -> None:
        self._open = False
