"""Switchboard: the top-level actor. Admits calls, starts one CallSupervisor each, drains.

The edge tells it `AdmitCall(...)` and never asks: the answer goes to the call's own outbox,
`CallAdmitted(call_id, handle)` or `CallRefused(call_id, reason)` with reason

    "shutting_down"     after Shutdown                      -> close 1001
    "duplicate"         a live call already has this id

It does not count calls against limits: the edge's admission ledger (`mediaserver.admission.ledger`)
is the one place that does, and it has taken the call's slot before `AdmitCall` is sent.

`Shutdown(drain_s)` refuses new calls, lets live ones run until the deadline, then hangs them
up with reason "shutdown". `registry.drained` is set when no call is left; the edge waits for it
off the event loop (or polls `registry.count()`), then shuts the dispatcher down.

Hooks run on a dispatcher thread. If a handler raises (a bug), the Switchboard fails alone:
live calls keep running, but new calls cannot be admitted; the edge sees `ActorDeadError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pykka import ActorRef

from actors.call_handle import CallHandle
from actors.call_registry import CallEntry, CallRegistry
from actors.call_supervisor import CallSupervisor
from actors.clock import SYSTEM_CLOCK, Clock
from actors.messages import AdmitCall, CallAdmitted, CallRefused, HangUp, RefusalReason, Shutdown
from actors.runtime import PooledActor
from actors.telling import tell_quietly
from actors.timer import Timer, shared_timer
from actors.tree_messages import CallFinished

if TYPE_CHECKING:
    from actors.runtime import Dispatcher
    from config.settings import SupervisionSettings, VadSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class _DrainDeadline:
    """Internal: the drain time is over; hang up what is left."""


class Switchboard(PooledActor):
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        supervision: SupervisionSettings,
        vad: VadSettings,
        registry: CallRegistry,
        clock: Clock = SYSTEM_CLOCK,
        timer: Timer | None = None,
    ) -> None:
        super().__init__(dispatcher)
        self._supervision = supervision
        self._vad = vad
        self.registry = registry
        self._clock = clock
        self._timer = timer if timer is not None else shared_timer()
        self._shutting_down = False

    def on_receive(self, message: Any) -> Any:
        """Admit, forget and drain calls; unknown messages are logged."""
        match message:
            case AdmitCall():
                self._admit(message)
            case CallFinished(call_id=call_id):
                self.registry.remove(call_id)
                if self._shutting_down and self.registry.count() == 0:
                    self.registry.drained.set()
            case Shutdown(drain_s=drain_s):
                self._shutdown(drain_s)
            case _DrainDeadline():
                for entry in self.registry.calls():
                    entry.handle.tell(HangUp(call_id=entry.call_id, reason="shutdown"))
            case _:
                logger.warning("unexpected message %r", message)

    def _admit(self, admit: AdmitCall) -> None:
        reason = self._refusal(admit)
        if reason is not None:
            logger.info("%s refused: %s", admit.call_id, reason, extra={"call_id": admit.call_id})
            self.registry.record_refusal(reason)
            admit.outbox.put(CallRefused(call_id=admit.call_id, reason=reason))
            return
        s = self._supervision
        handle = CallHandle(admit.call_id, held_audio_ms=s.audio_backlog_ms + s.backoff_max_ms)
        self.registry.add(
            CallEntry(
                call_id=admit.call_id,
                company_id=admit.company_id,
                agent_id=admit.agent.id,
                transport=admit.transport,
                handle=handle,
            )
        )
        CallSupervisor.start(
            self._dispatcher,
            call_id=admit.call_id,
            agent=admit.agent,
            engines=admit.engines,
            outbox=admit.outbox,
            handle=handle,
            supervision=self._supervision,
            vad=self._vad,
            switchboard=self.actor_ref,
            clock=self._clock,
            timer=self._timer,
            faults=admit.faults,
        )
        logger.info(
            "%s admitted (%s, company %s)",
            admit.call_id,
            admit.transport,
            admit.company_id,
            extra={"call_id": admit.call_id},
        )
        admit.outbox.put(CallAdmitted(call_id=admit.call_id, handle=handle))

    def _refusal(self, admit: AdmitCall) -> RefusalReason | None:
        if self._shutting_down:
            return "shutting_down"
        if self.registry.handle(admit.call_id) is not None:
            return "duplicate"
        return None

    def _shutdown(self, drain_s: float) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        live = self.registry.count()
        logger.info("= shutting down: %d live calls, %.1f s to drain", live, drain_s)
        if live == 0:
            self.registry.drained.set()
            return
        ref = self.actor_ref
        self._timer.call_later(drain_s, lambda: _tell(ref, _DrainDeadline()))


def _tell(ref: ActorRef[Any], message: object) -> None:
    tell_quietly(ref, message)  # the Switchboard may have stopped before the timer fired
