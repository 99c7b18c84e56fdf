"""Playout: paces a carrier stream's outbound audio in real time and tracks what was played.

Pure (sans-I/O): the caller passes the monotonic time in, and sends what `due(now)` returns.

* Audio is queued per turn already in the wire encoding (mu-law or PCM16 bytes, so each chunk
  leaves as a slice, with no numpy work per frame) and leaves in chunks of `chunk_ms` (Twilio:
  20 ms frames; Exotel: 200 ms chunks), never more than `lead_ms` ahead of real time: the
  carrier's own buffer stays short, so a barge-in `clear` has little to throw away, and a
  carrier that plays late does not let us run ahead without bound.
* A full chunk leaves as soon as the lead allows; a partial one (the end of what a slow TTS has
  produced so far) is padded with silence to a whole chunk, but only when the far end is about
  to run dry, so streaming audio is not chopped into padded pieces. With `refill_ms` above a
  chunk, the sender wakes only when that much fits in the lead, and sends it at once.
* A mark follows the end of each turn's queued audio and every `mark_every_ms` within it. The
  carrier echoes it once the audio before it has played; `mark_played` turns the echo into the
  turn's played milliseconds (`Progress`). The mark after a turn's last queued audio reports
  the turn's whole duration as produced, so the call tree sees the reply played out exactly.
  After `flush` (barge-in), marks still out are forgotten: the carrier echoes them on `clear`,
  but that audio was not played.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

MAX_MARKS_OUT = 256  # a carrier that never echoes marks must not grow this without bound
MAX_TURNS_KEPT = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioChunk:
    """Send this audio (exactly one chunk, wire-encoded) now."""

    turn_id: int
    audio: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkOut:
    """Send a mark named `name` now (after the audio sent before it)."""

    name: str


Outgoing = AudioChunk | MarkOut


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """`played_ms` of turn `turn_id`'s bot audio have played at the far end, in total."""

    turn_id: int
    played_ms: float


@dataclass(slots=True)
class _Turn:
    turn_id: int
    audio_ms: float = 0.0  # duration of the bot audio received for the turn (at its own rate)
    queued: int = 0  # wire bytes received
    sent: int = 0  # wire bytes sent (padding excluded)


class Playout:
    """Real-time pacing, chunking and mark bookkeeping for one carrier stream. Loop only."""

    def __init__(
        self,
        *,
        sample_rate: int,
        chunk_ms: int,
        lead_ms: int,
        mark_every_ms: int = 200,
        refill_ms: int = 0,
        silence: bytes = b"\x00\x00",
        mark_prefix: str = "m",
    ) -> None:
        """`silence` is one sample of silence in the wire encoding (mu-law: 0xFF), so its
        length is the bytes per sample."""
        if chunk_ms <= 0 or lead_ms < chunk_ms:
            raise ValueError(f"need 0 < chunk_ms <= lead_ms, got {chunk_ms} and {lead_ms}")
        self.sample_rate = sample_rate
        self._silence = silence
        self._bytes_per_s = sample_rate * len(silence)
        self.chunk_bytes = sample_rate * chunk_ms // 1000 * len(silence)
        self._chunk_s = chunk_ms / 1000
        self._lead_s = lead_ms / 1000
        # Wake for a full chunk only once this much fits in the lead: fewer, larger sends.
        self._refill_s = min(max(refill_ms, chunk_ms), lead_ms) / 1000
        self._mark_every = self._bytes_per_s * mark_every_ms // 1000
        self._mark_prefix = mark_prefix
        self._queue: deque[tuple[_Turn, memoryview]] = deque()
        self._queued_bytes = 0
        self._turns: dict[int, _Turn] = {}
        self._plays_until = 0.0  # when the far end will have played everything sent
        self._marks: OrderedDict[str, Progress] = OrderedDict()
        self._mark_seq = 0
        self._since_mark = 0
        self.sent_chunks = 0
        self.padded_chunks = 0

    @property
    def queued_ms(self) -> float:
        return self._queued_bytes * 1000 / self._bytes_per_s

    def push(self, turn_id: int, audio: bytes, audio_ms: float) -> None:
        """Queue a turn's wire audio (whole samples); `audio_ms` is its duration as produced."""
        if len(audio) % len(self._silence):
            raise ValueError(f"{len(audio)} bytes are not whole samples")
        turn = self._turns.get(turn_id)
        if turn is None:
            turn = self._turns[turn_id] = _Turn(turn_id)
        turn.audio_ms += audio_ms
        if audio:
            turn.queued += len(audio)
            self._queue.append((turn, memoryview(audio)))  # sliced without copying
            self._queued_bytes += len(audio)

    def next_due_at(self, now: float) -> float | None:
        """When `due` will next have something to send; None while nothing is queued."""
        if not self._queue:
            return None
        plays_until = max(self._plays_until, now)
        if self._has_full_chunk():
            return max(now, plays_until + self._refill_s - self._lead_s)
        return max(now, plays_until - self._chunk_s)

    def due(self, now: float) -> list[Outgoing]:
        """Everything to send at `now`, in order."""
        out: list[Outgoing] = []
        while self._queue:
            plays_until = max(self._plays_until, now)
            full = self._has_full_chunk()
            if full and plays_until + self._chunk_s > now + self._lead_s + 1e-6:
                break
            if not full and plays_until - self._chunk_s > now + 1e-6:
                break
            turn, chunk, real = self._take_chunk()
            self._plays_until = plays_until + self._chunk_s
            out.append(AudioChunk(turn_id=turn.turn_id, audio=chunk))
            self.sent_chunks += 1
            turn.sent += real
            self._since_mark += real
            drained = turn.sent >= turn.queued
            played_ms = turn.audio_ms if drained else turn.sent * 1000 / self._bytes_per_s
            if drained or self._since_mark >= self._mark_every:
                progress = Progress(turn_id=turn.turn_id, played_ms=min(played_ms, turn.audio_ms))
                out.append(MarkOut(name=self._new_mark(progress)))
            if drained:
                self._forget_drained_turns()
        return out

    def mark_played(self, name: str) -> Progress | None:
        """The carrier echoed mark `name`: how much of its turn has played (None: not ours,
        already seen, or sent before a flush)."""
        return self._marks.pop(name, None)

    def flush(self, now: float) -> None:
        """Barge-in: drop the queue and forget the marks still out (their audio is cleared)."""
        self._queue.clear()
        self._queued_bytes = 0
        self._turns.clear()
        self._marks.clear()
        self._since_mark = 0
        self._plays_until = now

    def _has_full_chunk(self) -> bool:
        if self._queued_bytes < self.chunk_bytes:
            return False
        # Turns never share a chunk: enough of the first turn's audio must be queued.
        first = self._queue[0][0]
        count = 0
        for turn, audio in self._queue:
            if turn is not first:
                return False
            count += len(audio)
            if count >= self.chunk_bytes:
                return True
        return False

    def _take_chunk(self) -> tuple[_Turn, bytes, int]:
        """The next chunk of the first queued turn, padded with silence; and its real bytes."""
        turn = self._queue[0][0]
        pieces: list[bytes | memoryview] = []
        need = self.chunk_bytes
        while need and self._queue and self._queue[0][0] is turn:
            _, audio = self._queue[0]
            if len(audio) <= need:
                self._queue.popleft()
                pieces.append(audio)
                need -= len(audio)
            else:
                pieces.append(audio[:need])
                self._queue[0] = (turn, audio[need:])
                need = 0
        real = self.chunk_bytes - need
        self._queued_bytes -= real
        if need:
            pieces.append(self._silence * (need // len(self._silence)))
            self.padded_chunks += 1
        return turn, b"".join(pieces), real

    def _forget_drained_turns(self) -> None:
        """Keep the bookkeeping of the last few turns only (a slow TTS may still add audio)."""
        while len(self._turns) > MAX_TURNS_KEPT:
            oldest = min(self._turns)
            if any(turn.turn_id == oldest for turn, _ in self._queue):
                break
            del self._turns[oldest]

    def _new_mark(self, progress: Progress) -> str:
        self._mark_seq += 1
        self._since_mark = 0
        name = f"{self._mark_prefix}{self._mark_seq}"
        self._marks[name] = progress
        while len(self._marks) > MAX_MARKS_OUT:
            self._marks.popitem(last=False)
        return name
