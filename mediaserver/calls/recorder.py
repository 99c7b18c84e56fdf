"""CallRecorder: writes one call's persistence facts to the store, in order, off the call's path.

The call's pump hands it `CallEventRecorded`, `TurnRecorded` and `UsageRecorded` the moment
they arrive (`record`, which only appends to a queue), and the end reason last (`end`). One
task per call writes them: consecutive events go in one transaction, and a store error is
logged and skipped, so a busy or broken store never delays or ends a call. Times from the
actors are monotonic; they are converted to unix seconds on arrival.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from actors.agent import AgentConfig
from actors.messages import CallEventRecorded, EndReason, TurnRecorded, UsageRecorded
from mediaserver.logs import CallLogger
from mediaserver.store import CallEvent, Store, StoreError, TurnRecord, Usage

logger = logging.getLogger(__name__)

Fact = CallEventRecorded | TurnRecorded | UsageRecorded


@dataclass(frozen=True, slots=True)
class _End:
    reason: EndReason


def wall_time(monotonic_at: float) -> float:
    """Unix seconds of a `time.monotonic()` reading taken in this process."""
    return time.time() - (time.monotonic() - monotonic_at)


class CallRecorder:
    def __init__(self, store: Store, *, company_id: str, call_id: str, agent: AgentConfig) -> None:
        self._store = store
        self._company_id = company_id
        self._call_id = call_id
        self._agent = agent
        self._queue: deque[Fact | _End] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ended = False
        self.log = CallLogger(logger, {"call_id": call_id})
        self.failures = 0

    def record(self, fact: Fact) -> None:
        """Queue a fact (loop only; returns at once)."""
        if not self._ended:
            self._queue.append(fact)
            self._wake.set()

    def end(self, reason: EndReason) -> None:
        """Queue the end of the call; the writer stops after persisting it. Idempotent."""
        if not self._ended:
            self._ended = True
            self._queue.append(_End(reason))
            self._wake.set()

    def start(self) -> None:
        """Start writing; call once the call's row exists."""
        assert self._task is None
        self._task = asyncio.get_running_loop().create_task(
            self._write(), name=f"recorder-{self._call_id}"
        )

    def discard(self) -> None:
        """Forget everything: the call never got its row (it was refused or aborted)."""
        self._ended = True
        self._queue.clear()

    async def wait_written(self) -> None:
        """Return when the writer has persisted the end (or at once if it never started)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _write(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            item = self._queue.popleft()
            try:
                if isinstance(item, _End):
                    await self._store.end_call(self._company_id, self._call_id, item.reason)
                else:
                    await self._persist(item)
            except StoreError as exc:
                self.failures += 1
                self.log.error("= store: %s lost: %s", type(item).__name__, exc)
            except Exception:
                self.failures += 1
                self.log.exception("= store: %s lost", type(item).__name__)
            if isinstance(item, _End):
                return

    async def _persist(self, fact: Fact) -> None:
        store, company_id, call_id = self._store, self._company_id, self._call_id
        match fact:
            case CallEventRecorded():
                events = [_event(fact)]
                while self._queue and isinstance(self._queue[0], CallEventRecorded):
                    following = self._queue.popleft()
                    assert isinstance(following, CallEventRecorded)
                    events.append(_event(following))
                await store.add_call_events(company_id, call_id, events)
            case TurnRecorded():
                await store.add_turn(company_id, call_id, _turn(fact))
            case UsageRecorded():
                for usage in _usages(fact, self._agent):
                    await store.add_usage(company_id, call_id, usage)


def _event(fact: CallEventRecorded) -> CallEvent:
    return CallEvent(kind=fact.kind, data=dict(fact.data), at=wall_time(fact.at))


def _turn(fact: TurnRecorded) -> TurnRecord:
    return TurnRecord(
        seq=fact.turn_id,
        role=fact.role,
        text=fact.text,
        started_at=wall_time(fact.started_at),
        ended_at=wall_time(fact.ended_at),
        interrupted=fact.interrupted,
        stt_ms=fact.stt_ms,
        llm_first_token_ms=fact.llm_first_token_ms,
        tts_first_audio_ms=fact.tts_first_audio_ms,
        voice_to_voice_ms=fact.voice_to_voice_ms,
    )


def _usages(fact: UsageRecorded, agent: AgentConfig) -> list[Usage]:
    """One row per engine that consumed something: LLM tokens, STT audio in, TTS audio out."""
    usages = []
    if fact.tokens_in or fact.tokens_out:
        usages.append(
            Usage(provider=agent.llm_engine, tokens_in=fact.tokens_in, tokens_out=fact.tokens_out)
        )
    if fact.audio_in_s:
        usages.append(Usage(provider=agent.stt_engine, audio_in_s=fact.audio_in_s))
    if fact.audio_out_s:
        usages.append(Usage(provider=agent.tts_engine, audio_out_s=fact.audio_out_s))
    return usages
