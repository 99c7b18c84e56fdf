"""The admission ledger: who holds which call slot, and the per-minute windows. The one place
that counts.

    LedgerState (sync, no threads, no clock of its own but the windows')
        take(call_id, company_id, holder) -> SlotRefusal | None    exact against
                                                limits.max_calls and limits.company_max_calls
        free(call_id), free_holder(holder) -> [call_id], holder_of(call_id), count(company_id?)
        room(company_id?)                   would a call get a slot now (takes none)
        call_attempt(company_id) -> wait_s  limits.call_attempts_per_min (`CallAttempts`)
        api_request(key_id) -> wait_s       limits.requests_per_min (`RequestRate`)

    AdmissionLedger (async Protocol)  what the edge uses, so that a ledger kept elsewhere (the
                                      node process over its control socket, Redis) fits
    LocalLedger                       an AdmissionLedger over a LedgerState in this process

A holder names who took a slot: a worker process, or "local" in a single-process server. When
a worker dies, its node frees every slot the worker held with `free_holder`. Loop only (the
state has no lock: the node keeps it on its own loop too).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Literal, Protocol

from config.settings import LimitsSettings
from mediaserver.admission.api_rate import RequestRate
from mediaserver.admission.attempts import CallAttempts

SlotRefusal = Literal["capacity", "company_capacity"]
LOCAL_HOLDER = "local"


class LedgerState:
    """The slot table and the sliding windows, in plain synchronous code.

    Args:
        clock: monotonic seconds, for the windows (tests pass a fake).
    """

    def __init__(
        self, limits: LimitsSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_calls = limits.max_calls
        self._company_max_calls = limits.company_max_calls
        self._slots: dict[str, tuple[str, str]] = {}  # call id -> (company id, holder)
        self._by_company: Counter[str] = Counter()
        self._attempts = CallAttempts(limits.call_attempts_per_min, clock=clock)
        self._requests = RequestRate(limits.requests_per_min, clock=clock)

    # -- slots -----------------------------------------------------------------------------------

    def take(self, call_id: str, company_id: str, holder: str) -> SlotRefusal | None:
        """Give `call_id` a slot, or say why not (nothing is taken then).

        Taking a slot the same holder already holds for the same company is a no-op (a retried
        request from a remote holder).

        Raises:
            ValueError: `call_id` is held by another holder or for another company.
        """
        held = self._slots.get(call_id)
        if held is not None:
            if held != (company_id, holder):
                raise ValueError(f"call {call_id} already holds a slot of {held[1]}")
            return None
        refusal = self.room(company_id)
        if refusal is not None:
            return refusal
        self._slots[call_id] = (company_id, holder)
        self._by_company[company_id] += 1
        return None

    def free(self, call_id: str) -> bool:
        """Give the call's slot back; False when it held none (freed already, or never taken)."""
        held = self._slots.pop(call_id, None)
        if held is None:
            return False
        company_id = held[0]
        self._by_company[company_id] -= 1
        if self._by_company[company_id] <= 0:
            del self._by_company[company_id]
        return True

    def free_holder(self, holder: str) -> list[str]:
        """Free every slot `holder` held (its process died); the call ids, in taking order."""
        gone = [call_id for call_id, (_, owner) in self._slots.items() if owner == holder]
        for call_id in gone:
            self.free(call_id)
        return gone

    def holder_of(self, call_id: str) -> str | None:
        held = self._slots.get(call_id)
        return held[1] if held is not None else None

    def count(self, company_id: str | None = None) -> int:
        """Slots held, on the whole server or by one company."""
        if company_id is None:
            return len(self._slots)
        return self._by_company.get(company_id, 0)

    def holders(self) -> dict[str, int]:
        """Slots held by each holder."""
        return dict(Counter(owner for _, owner in self._slots.values()))

    def room(self, company_id: str | None = None) -> SlotRefusal | None:
        """Why a call (of `company_id`, or of any company) would not get a slot now, or None."""
        if len(self._slots) >= self._max_calls:
            return "capacity"
        if company_id is not None and self.count(company_id) >= self._company_max_calls:
            return "company_capacity"
        return None

    # -- windows ---------------------------------------------------------------------------------

    def call_attempt(self, company_id: str) -> float:
        """Count one call attempt: 0.0, or the seconds to wait when over the rate (not counted)."""
        if self._attempts.allow(company_id):
            return 0.0
        return max(0.001, self._attempts.retry_after_s(company_id))

    def api_request(self, key_id: str) -> float:
        """Count one tenant API request: 0.0, or the seconds to wait (not counted)."""
        return self._requests.check(key_id)


class AdmissionLedger(Protocol):
    """The ledger as the call edge and the tenant API use it. Loop only.

    Async so that a ledger kept in another process fits; the local one never waits.
    """

    async def take_slot(self, call_id: str, company_id: str, /) -> SlotRefusal | None:
        """Take a slot for a new call, or say why there is none (nothing taken then)."""

    async def free_slot(self, call_id: str, /) -> None:
        """Give the call's slot back (a no-op when it holds none)."""

    async def room(self, company_id: str | None = None, /) -> SlotRefusal | None:
        """Would a call (of `company_id`, or of any company) get a slot now; takes none."""

    async def call_attempt(self, company_id: str, /) -> float:
        """0.0: allowed and counted; else seconds until the company may try again."""

    async def api_request(self, key_id: str, /) -> float:
        """0.0: allowed and counted; else seconds until the key may call the API again."""

    async def holder(self, call_id: str, /) -> str | None:
        """Who holds the call's slot, or None."""


class LocalLedger:
    """An `AdmissionLedger` over a `LedgerState` in this process; slots are taken as `holder`."""

    def __init__(
        self,
        limits: LimitsSettings,
        *,
        holder: str = LOCAL_HOLDER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = LedgerState(limits, clock=clock)
        self.holder_name = holder

    async def take_slot(self, call_id: str, company_id: str, /) -> SlotRefusal | None:
        return self.state.take(call_id, company_id, self.holder_name)

    async def free_slot(self, call_id: str, /) -> None:
        self.state.free(call_id)

    async def room(self, company_id: str | None = None, /) -> SlotRefusal | None:
        return self.state.room(company_id)

    async def call_attempt(self, company_id: str, /) -> float:
        return self.state.call_attempt(company_id)

    async def api_request(self, key_id: str, /) -> float:
        return self.state.api_request(key_id)

    async def holder(self, call_id: str, /) -> str | None:
        return self.state.holder_of(call_id)
