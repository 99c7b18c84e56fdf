"""CallOutbox: the call tree's `Outbox` on the edge, one per call.

Actor threads `put`; the put hops onto the event loop with `loop.call_soon_threadsafe`, never
blocks and never raises (after the loop has closed the message is dropped: the server is gone).
One task on the loop `get`s the messages in order. Control messages are never dropped; when
more than `audio_backlog_ms` of `BotAudio` waits (the loop fell behind), the oldest audio is
dropped and counted, so a stalled peer can't grow memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from actors.messages import BotAudio, Outbound


def audio_ms(audio: BotAudio) -> float:
    """Duration of a `BotAudio` (PCM16 mono) in milliseconds."""
    return len(audio.pcm) * 500.0 / audio.sample_rate


class CallOutbox:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, audio_backlog_ms: float) -> None:
        self._loop = loop
        self._items: deque[Outbound] = deque()
        self._audio_ms = 0.0
        self._limit_ms = audio_backlog_ms
        self._ready = asyncio.Event()
        self.dropped_audio_ms = 0.0

    def put(self, message: Outbound, /) -> None:
        """Hand a message to the loop. Any thread; never blocks, never raises."""
        # A closed loop raises RuntimeError: the server is gone and nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._arrive, message)

    async def get(self) -> Outbound:
        """The next message, in the order they were put (loop only)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        message = self._items.popleft()
        if isinstance(message, BotAudio):
            self._audio_ms -= audio_ms(message)
        return message

    def _arrive(self, message: Outbound) -> None:
        self._items.append(message)
        if isinstance(message, BotAudio):
            self._audio_ms += audio_ms(message)
            if self._audio_ms > self._limit_ms:
                self._drop_oldest_audio()
        self._ready.set()

    def _drop_oldest_audio(self) -> None:
        kept: deque[Outbound] = deque()
        for item in self._items:
            if (
                isinstance(item, BotAudio)
                and self._audio_ms > self._limit_ms
                and item is not (self._items[-1])
            ):
                self._audio_ms -= audio_ms(item)
                self.dropped_audio_ms += audio_ms(item)
            else:
                kept.append(item)
        self._items = kept
