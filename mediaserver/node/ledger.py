"""The admission ledger with workers: kept by the node, asked by every worker.

    worker: CallEdge --take_slot / free_slot / room / call_attempt / api_request / holder-->
            NodeLedger --a call on the control channel--> node: LedgerService --> LedgerState

One `LedgerState` (mediaserver/calls/ledger.py) on the node's loop counts every worker's calls,
so `limits.max_calls`, `limits.company_max_calls`, `limits.call_attempts_per_min` and the tenant
API's per-key rate hold for the whole host exactly: the node answers one call at a time. A slot
is held by the worker's number; when a worker dies, the node frees its slots with
`free_holder` before it restarts it. This is the place a cluster backs with Redis instead.

A worker that cannot reach the node (it is gone, or did not answer within `LEDGER_TIMEOUT_S`)
refuses the call (`LedgerUnavailable`, which the edge answers as an internal refusal): it must
not admit beyond limits it cannot check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

from mediaserver.admission.ledger import LedgerState, SlotRefusal
from mediaserver.errors import EdgeError
from mediaserver.node.control import ControlChannel, ControlError

logger = logging.getLogger(__name__)

LEDGER_TIMEOUT_S = 2.0
_REFUSALS: tuple[SlotRefusal, ...] = ("capacity", "company_capacity")


class LedgerUnavailable(EdgeError):
    """The node keeping the ledger did not answer: nothing can be admitted meanwhile."""


class NodeLedger:
    """An `AdmissionLedger` whose state the node keeps; each method is one control-channel call.

    Args:
        channel: the worker's control channel (read when called: it exists once attached).
    """

    def __init__(self, channel: Callable[[], ControlChannel]) -> None:
        self._channel = channel

    async def take_slot(self, call_id: str, company_id: str, /) -> SlotRefusal | None:
        return _refusal(await self._call("take_slot", call_id=call_id, company_id=company_id))

    async def free_slot(self, call_id: str, /) -> None:
        try:
            await self._call("free_slot", call_id=call_id)
        except LedgerUnavailable as exc:
            # If the node is gone it frees our slots when it sees us go; else this one leaks
            # until we exit, which the log says.
            logger.error("= slot of call %s not freed: %s", call_id, exc)

    async def room(self, company_id: str | None = None, /) -> SlotRefusal | None:
        return _refusal(await self._call("room", company_id=company_id))

    async def call_attempt(self, company_id: str, /) -> float:
        return float(await self._call("call_attempt", company_id=company_id))

    async def api_request(self, key_id: str, /) -> float:
        return float(await self._call("api_request", key_id=key_id))

    async def holder(self, call_id: str, /) -> str | None:
        found = await self._call("holder", call_id=call_id)
        return None if found is None else str(found)

    async def _call(self, op: str, **args: Any) -> Any:
        try:
            return await self._channel().call(op, timeout_s=LEDGER_TIMEOUT_S, **args)
        except ControlError as exc:
            raise LedgerUnavailable(f"the node did not answer {op}: {exc}") from None


class LedgerService:
    """The node's side: answers each worker's ledger calls from one `LedgerState`. Loop only."""

    def __init__(self, state: LedgerState) -> None:
        self.state = state

    async def answer(self, holder: str, op: str, args: Mapping[str, Any]) -> Any:
        """Do `op` for the worker named `holder`; raises `ControlError` for a bad request."""
        state = self.state
        try:
            match op:
                case "take_slot":
                    return state.take(str(args["call_id"]), str(args["company_id"]), holder)
                case "free_slot":
                    state.free(str(args["call_id"]))
                    return None
                case "room":
                    company = args.get("company_id")
                    return state.room(None if company is None else str(company))
                case "call_attempt":
                    return state.call_attempt(str(args["company_id"]))
                case "api_request":
                    return state.api_request(str(args["key_id"]))
                case "holder":
                    return state.holder_of(str(args["call_id"]))
        except (KeyError, ValueError) as exc:
            raise ControlError(f"bad ledger call {op}: {exc}") from None
        raise ControlError(f"no ledger operation {op!r}")


def _refusal(answer: Any) -> SlotRefusal | None:
    if answer is None:
        return None
    if answer not in _REFUSALS:
        raise LedgerUnavailable(f"the node answered an unknown refusal {answer!r}")
    return cast(SlotRefusal, answer)
