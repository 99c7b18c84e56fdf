"""ReplayBuffer: the caller's audio since the last settled transcript, kept across restarts.

The CallSupervisor owns it and lends it to each AudioIngest instance, the way an OTP supervisor
keeps an ETS table alive for a restarted worker: checkpointing 50 audio frames a second as
messages would double the tree's message load. AudioIngest appends audio and turn ends; the
supervisor trims it to the Session's settled offset; on a Transcriber restart AudioIngest
replays what is left into the fresh stream.

Thread-safe. Appends carry the writer's generation: a replaced AudioIngest instance cannot write.
Bounded by `max_s` of audio; beyond it the oldest audio is dropped and counted (its words are
lost, and a warning says so).

Audio is kept as plain `(offset, pcm, captured_at)` tuples, not as message objects: a tuple of
atoms is untracked by the cyclic garbage collector after its first young collection, while a
slotted dataclass stays tracked for life. At 300 calls a 30 s buffer of message objects is about
450,000 tracked objects, and each full collection walked them all (63 ms pauses, measured by
bench/actors.py); the tuples cost the collector nothing. Messages are rebuilt only on replay.
"""

from __future__ import annotations

import threading
from collections import deque

from actors.tree_messages import TranscribeAudio, TurnEnded

BYTES_PER_SECOND = 32_000  # 16 kHz PCM16

_Frame = tuple[int, bytes, float]  # (offset in samples, PCM16, captured_at)


class ReplayBuffer:
    def __init__(self, max_s: float) -> None:
        self._lock = threading.Lock()
        self._items: deque[_Frame | TurnEnded] = deque()
        self._bytes = 0
        self._max_bytes = int(max_s * BYTES_PER_SECOND)
        self._next_offset = 0
        self._writer = 0
        self.dropped_bytes = 0

    def admit_writer(self, generation: int) -> None:
        """Only `generation` may append from now on (called by the supervisor)."""
        with self._lock:
            self._writer = generation

    @property
    def next_offset(self) -> int:
        return self._next_offset

    def append_audio(
        self, generation: int, pcm: bytes, captured_at: float
    ) -> TranscribeAudio | None:
        """Store audio at the next offset; None if `generation` may not write."""
        with self._lock:
            if generation != self._writer:
                return None
            offset = self._next_offset
            self._next_offset += len(pcm) // 2
            self._items.append((offset, pcm, captured_at))
            self._bytes += len(pcm)
            while self._bytes > self._max_bytes and self._items:
                old = self._items.popleft()
                if isinstance(old, tuple):
                    self._bytes -= len(old[1])
                    self.dropped_bytes += len(old[1])
        return TranscribeAudio(pcm=pcm, offset=offset, captured_at=captured_at)

    def append_turn_end(self, generation: int, turn_end: TurnEnded) -> bool:
        with self._lock:
            if generation != self._writer:
                return False
            self._items.append(turn_end)
            return True

    def trim(self, through: int) -> None:
        """Forget audio before offset `through` and turn ends at or before it."""
        with self._lock:
            items = self._items
            while items:
                head = items[0]
                if isinstance(head, TurnEnded):
                    if head.offset > through:
                        break
                elif head[0] + len(head[1]) // 2 > through:
                    break
                else:
                    self._bytes -= len(head[1])
                items.popleft()

    def since(self, offset: int) -> tuple[TranscribeAudio | TurnEnded, ...]:
        """Audio starting at or after `offset`, and turn ends after it, in order."""
        with self._lock:
            items = tuple(self._items)
        found: list[TranscribeAudio | TurnEnded] = []
        for item in items:
            if isinstance(item, TurnEnded):
                if item.offset > offset:
                    found.append(item)
            elif item[0] >= offset:
                found.append(TranscribeAudio(pcm=item[1], offset=item[0], captured_at=item[2]))
        return tuple(found)

    def seconds(self) -> float:
        return self._bytes / BYTES_PER_SECOND
