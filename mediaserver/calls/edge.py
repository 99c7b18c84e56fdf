"""CallEdge: starts calls for every transport (signaling, WHIP, telephony) and keeps them.

    key -> authenticate -> Company
    open_call(company, agent?, peer, transport) -> LiveCall
        refusals first (draining, the load gate, call attempts per minute, unknown agent),
        AgentConfig from the store row, the agent's engines, a slot from the ledger, AdmitCall
        to the Switchboard, its answer on the call's own outbox, then the conversation and call
        rows. The slot is given back exactly once: on any failure after it was taken, or when
        the call has finished.
    ensure_room(company) -> None       would a call get in now (the Twilio voice webhook asks)
    readiness() -> Readiness           what `/readyz` says of this server

The `AdmissionLedger` is the one place that counts calls (`limits.max_calls`,
`limits.company_max_calls`, call attempts per minute); the `LoadGate` refuses by measured load.
Refusals raise `CallRefusal` with one of `REFUSALS`; each transport maps them to its own wire
(signaling close codes, WHIP HTTP statuses, TwiML). Those decided here are also counted in the
`CallRegistry` (`inspect stats`), as the Switchboard counts its own. Runs on the event loop; it
never waits on an actor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar

from pykka import ActorDeadError, ActorRef

from actors.agent import AgentConfig
from actors.agent import FaqRule as AgentFaqRule
from actors.agent import VadOverrides as AgentVadOverrides
from actors.call_registry import CallRegistry
from actors.engines import CallEngines
from actors.faults import FaultPlan
from actors.messages import AdmitCall, Outbox, RefusalReason
from config.settings import LimitsSettings
from mediaserver.admission.ledger import AdmissionLedger, LocalLedger
from mediaserver.admission.load_gate import LoadGate
from mediaserver.calls.live_call import AdmissionRefused, LiveCall, Transport
from mediaserver.calls.observers import CallObservers
from mediaserver.calls.outbox import CallOutbox
from mediaserver.calls.recorder import CallRecorder
from mediaserver.errors import EdgeError, EngineUnavailable
from mediaserver.lifecycle import Lifecycle, Readiness
from mediaserver.store import Agent, Company, Store, StoreError
from mediaserver.store import Transport as TransportName

logger = logging.getLogger(__name__)

ADMISSION_TIMEOUT_S = 5.0

Refusal = Literal[
    "unauthorized",
    "unknown_agent",
    "rate_limited",
    "capacity",
    "company_capacity",
    "load",
    "shutting_down",
    "internal",
]
REFUSALS: tuple[Refusal, ...] = (
    "unauthorized",
    "unknown_agent",
    "rate_limited",
    "capacity",
    "company_capacity",
    "load",
    "shutting_down",
    "internal",
)


class CallRefusal(EdgeError):
    """A call was not started; `reason` is one of `REFUSALS`, `retry_after_s` a hint or 0."""

    def __init__(self, reason: Refusal, *, retry_after_s: float = 0.0) -> None:
        super().__init__(reason)
        self.reason: Refusal = reason
        self.retry_after_s = retry_after_s


class EngineSource(Protocol):
    """Chooses a call's engines from its agent's engine names (`mediaserver.engines`)."""

    def engines_for(self, agent: AgentConfig, /) -> CallEngines: ...


def agent_config(agent: Agent) -> AgentConfig:
    """The call tree's view of a store agent row."""
    spec = agent.spec
    return AgentConfig(
        id=agent.id,
        name=spec.name,
        system_prompt=spec.system_prompt,
        greeting=spec.greeting,
        language=spec.language,
        voice=spec.voice,
        stt_engine=spec.stt_engine,
        llm_engine=spec.llm_engine,
        tts_engine=spec.tts_engine,
        faq=tuple(
            AgentFaqRule(pattern=rule.match, answer=rule.answer, regex=True)
            if isinstance(rule.match, str)
            else AgentFaqRule(pattern=",".join(rule.match), answer=rule.answer, regex=False)
            for rule in spec.faq
        ),
        vad=AgentVadOverrides(
            threshold=spec.vad.threshold,
            min_speech_ms=spec.vad.min_speech_ms,
            end_of_turn_silence_ms=spec.vad.end_of_turn_silence_ms,
            turn_end=spec.vad.turn_end,
        ),
        recording=spec.recording,
    )


P = ParamSpec("P")
R = TypeVar("R")


def _observing_refusals(
    method: Callable[Concatenate[CallEdge, P], Awaitable[R]],
) -> Callable[Concatenate[CallEdge, P], Awaitable[R]]:
    """Report each `CallRefusal` the method raises to the edge's observers (metrics)."""

    @functools.wraps(method)
    async def observed(edge: CallEdge, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(edge, *args, **kwargs)
        except CallRefusal as refusal:
            edge._observers.refused(refusal.reason)
            raise

    return observed


class HostAdmission(Protocol):
    """Whether any process of the host admits new calls now (a node's workers share one)."""

    def admitting(self) -> bool: ...


class CallEdge:
    """The calls of this server, for every transport. Loop only.

    Args:
        owner_id: this process's owner row (decision 0080): every call is stamped with it.
        outbound_audio_ms: bot audio a call's outbox holds before dropping the oldest (the
            transport has its own, larger, real-time queue behind it).
        ledger: who holds which call slot, and the per-minute windows (a `LocalLedger` over
            `limits` by default).
        gate: refuses new calls while the server is overloaded; None admits regardless of load.
        host: whether any process of this host admits new calls (in a node's worker: what the
            node last said), for `/readyz` and `ensure_room`; None: this server's own gate.
        faults: makes a `FaultPlan` per call (debug.fault_injection), or None.
        tap_outbox: wraps the outbox the tree puts to (the debug socket's `DebugEvents.tap`).
        observers: metrics, recordings and webhooks of every call (none by default).
    """

    def __init__(
        self,
        *,
        store: Store,
        owner_id: str | None = None,
        switchboard: ActorRef[Any],
        registry: CallRegistry,
        lifecycle: Lifecycle,
        limits: LimitsSettings,
        engines: EngineSource,
        ledger: AdmissionLedger | None = None,
        gate: LoadGate | None = None,
        host: HostAdmission | None = None,
        outbound_audio_ms: float = 60_000,
        faults: Callable[[], FaultPlan] | None = None,
        tap_outbox: Callable[[Outbox], Outbox] | None = None,
        observers: CallObservers | None = None,
    ) -> None:
        self._store = store
        self._owner_id = owner_id
        self._switchboard = switchboard
        self._registry = registry
        self._lifecycle = lifecycle
        self._limits = limits
        self._engines = engines
        self._outbound_audio_ms = outbound_audio_ms
        self._faults = faults
        self._tap_outbox = tap_outbox
        self._observers = observers or CallObservers()
        self.ledger: AdmissionLedger = ledger if ledger is not None else LocalLedger(limits)
        self._gate = gate
        self._host = host
        self._slots: set[str] = set()  # calls holding a ledger slot, each freed exactly once
        self._live: dict[str, LiveCall] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    # -- reading -------------------------------------------------------------------------------

    def get(self, call_id: str) -> LiveCall | None:
        return self._live.get(call_id)

    def live_calls(self) -> list[LiveCall]:
        return list(self._live.values())

    async def readiness(self) -> Readiness:
        """What `/readyz` says: the lifecycle's phase, else whether a new call could get in."""
        phase = self._lifecycle.readiness()
        if phase != "ready":
            return phase
        if not self._switchboard.is_alive():
            return "admission_failed"
        if not self._host_admits():
            return "full"
        if await self.ledger.room(None) is not None:
            return "full"
        return "ready"

    # -- starting calls ------------------------------------------------------------------------

    @_observing_refusals
    async def ensure_room(self, company_id: str) -> None:
        """Check that a call of `company_id` would get in now; takes nothing.

        Raises:
            CallRefusal: "shutting_down", "load", "capacity" or "company_capacity".
        """
        self._check_open(host=True)
        refusal = await self.ledger.room(company_id)
        if refusal is not None:
            raise self._refused(refusal)

    @_observing_refusals
    async def authenticate(self, api_key: str) -> Company:
        """The company of a live API key.

        Raises:
            CallRefusal: "unauthorized" (unknown, revoked or malformed key), or "internal".
        """
        try:
            found = await self._store.authenticate_key(api_key)
        except StoreError:
            logger.exception("= authenticating a key failed")
            raise CallRefusal("internal") from None
        if found is None:
            raise CallRefusal("unauthorized")
        return found[0]

    @_observing_refusals
    async def open_call(
        self,
        company: Company,
        *,
        transport: Transport,
        transport_name: TransportName,
        peer_id: str,
        agent_id: str | None = None,
    ) -> LiveCall:
        """Start a call for `company` carried by `transport`; it runs until it ends.

        Raises:
            CallRefusal: the call did not start (nothing of it is left behind).
        """
        self._check_open()
        wait_s = await self.ledger.call_attempt(company.id)
        if wait_s > 0:
            raise self._refused("rate_limited", retry_after_s=wait_s)
        agent = await self._find_agent(company.id, agent_id)
        config = agent_config(agent)
        try:
            engines = self._engines.engines_for(config)
        except EngineUnavailable as exc:
            # A configuration problem, not a bug: say which, without a traceback.
            logger.warning("= call refused: agent %s: %s", agent.id, exc)
            raise self._refused("internal") from None
        except Exception:
            logger.exception("= no engines for agent %s", agent.id)
            raise self._refused("internal") from None

        call_id = uuid.uuid4().hex
        refusal = await self.ledger.take_slot(call_id, company.id)
        if refusal is not None:
            raise self._refused(refusal)
        self._slots.add(call_id)
        try:
            return await self._admit(
                call_id,
                company,
                agent=agent,
                config=config,
                engines=engines,
                transport=transport,
                transport_name=transport_name,
                peer_id=peer_id,
            )
        except BaseException:
            await self._free_slot(call_id)
            raise

    async def _admit(
        self,
        call_id: str,
        company: Company,
        *,
        agent: Agent,
        config: AgentConfig,
        engines: CallEngines,
        transport: Transport,
        transport_name: TransportName,
        peer_id: str,
    ) -> LiveCall:
        """Admit the call through the Switchboard and write its rows (it holds a slot)."""
        loop = asyncio.get_running_loop()
        outbox = CallOutbox(loop, audio_backlog_ms=self._outbound_audio_ms)
        recorder = CallRecorder(self._store, company_id=company.id, call_id=call_id, agent=config)
        call = LiveCall(
            call_id=call_id,
            company_id=company.id,
            agent=config,
            transport=transport,
            outbox=outbox,
            recorder=recorder,
            limits=self._limits,
        )
        try:
            self._switchboard.tell(
                AdmitCall(
                    call_id=call_id,
                    company_id=company.id,
                    agent=config,
                    transport=transport_name,
                    outbox=self._tap_outbox(outbox) if self._tap_outbox else outbox,
                    engines=engines,
                    faults=self._faults() if self._faults is not None else None,
                )
            )
        except ActorDeadError:
            logger.error("= the Switchboard is gone: refusing calls")
            raise self._refused("internal") from None
        try:
            await call.admitted(ADMISSION_TIMEOUT_S)
        except AdmissionRefused as refused:
            raise CallRefusal(_refusal(refused.reason)) from None

        try:
            conversation = await self._store.create_conversation(company.id, agent.id, peer_id)
            await self._store.start_call(
                company.id,
                call_id=call_id,
                conversation_id=conversation.id,
                agent_id=agent.id,
                transport=transport_name,
                peer_id=peer_id,
                owner_id=self._owner_id,
            )
        except (StoreError, asyncio.CancelledError) as exc:
            call.abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
            call.log.error("= store: the call's rows were not written: %s", exc)
            raise self._refused("internal") from None
        call.conversation_id = conversation.id
        call.observer = self._observers.opened(call)
        recorder.start()
        call.start_timers()
        self._live[call_id] = call
        watcher = loop.create_task(self._forget_when_finished(call))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        call.log.info(
            "= call started: %s, company %s, agent %s, peer %r",
            transport_name,
            company.id,
            agent.id,
            peer_id,
        )
        return call

    async def close(self, timeout_s: float = 10.0) -> None:
        """Wait until every live call has finished (they end through the Switchboard's drain)."""
        calls = self.live_calls()
        if not calls:
            return
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(call.finished.wait()) for call in calls], timeout=timeout_s
        )
        for waiter in pending:
            waiter.cancel()
        if pending:
            logger.error("= %d calls had not finished at close", len(pending))

    async def _find_agent(self, company_id: str, agent_id: str | None) -> Agent:
        try:
            agent = (
                await self._store.get_agent(company_id, agent_id)
                if agent_id
                else await self._store.get_default_agent(company_id)
            )
        except StoreError:
            logger.exception("= reading agent %r failed", agent_id)
            raise self._refused("internal") from None
        if agent is None:
            raise self._refused("unknown_agent")
        return agent

    async def _forget_when_finished(self, call: LiveCall) -> None:
        await call.finished.wait()
        self._live.pop(call.call_id, None)
        await self._free_slot(call.call_id)

    async def _free_slot(self, call_id: str) -> None:
        if call_id in self._slots:
            self._slots.discard(call_id)
            await self.ledger.free_slot(call_id)

    def _host_admits(self) -> bool:
        if self._host is not None:
            return self._host.admitting()
        return self._gate is None or self._gate.is_open

    def _check_open(self, *, host: bool = False) -> None:
        """The cheap refusals: draining, and the load gate (`host`: any process's of the host)."""
        if not self._lifecycle.accepting_calls:
            raise self._refused("shutting_down")
        if host and self._host is not None:
            if not self._host.admitting():
                raise self._refused("load")
            return
        if self._gate is not None and not self._gate.is_open:
            self._gate.refused()
            raise self._refused("load")

    def _refused(self, reason: Refusal, *, retry_after_s: float = 0.0) -> CallRefusal:
        """A refusal decided here (not by the Switchboard), counted for `inspect stats`."""
        self._registry.record_refusal(reason)
        return CallRefusal(reason, retry_after_s=retry_after_s)


def _refusal(reason: RefusalReason) -> Refusal:
    match reason:
        case "shutting_down":
            return reason
        case _:
            return "internal"  # "duplicate" or no answer: our bug, not the caller's
