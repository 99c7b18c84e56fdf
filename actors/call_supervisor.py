"""CallSupervisor: one per call; starts, watches, restarts and stops the call's four children.

Children, in start order, with their OTP restart type (see `actors.supervision`):

    session      permanent   conversation state; everything to persist, as it happens
    ingest       permanent   VAD, speech start/stop, end of turn, the replay buffer
    transcriber  transient   the STT stream
    responder    transient   the LLM and TTS streams; barge-in

Failure: a child tells `ChildFailed` from `on_failure`; the watchdog (a `Tick` from the shared
timer) fails a child whose handler runs past `stall_timeout_s` or whose engine shows no progress
for that kind's timeout, after cancelling its streams and abandoning it. Either way the failed
child and the children after it (rest_for_one) get new generations at once, so the old
instances' late output is discarded; after an exponential backoff (a `RestartDue` scheduled on
the timer, never a sleep) they are started again, in order, each from its last checkpoint.
Too many restarts within the window escalate: the call ends with reason "escalated".

Replay: when a Transcriber starts, AudioIngest is told `TranscriberStarted(from_offset)`, the
offset the Session has settled, and feeds it the buffered audio after it before any live audio.

Operator actions (the debug socket, through the handle): `RestartChild(child)` stops that child
and restarts it and the ones after it exactly as after a failure (backoff, checkpoints, counted
in the restart intensity); `InjectFault(actor)` makes the child (or the supervisor itself) fail
in its next handler.

End: `HangUp(reason)` from the edge, escalation, or the Switchboard's shutdown. The supervisor
stops supervising and asks each live child to stop; a child handles what it was told before, so
its last facts (a keypad press, a turn, usage) go on the outbox, then tells `ChildStopped` from
`on_stop` (a child failing instead tells `ChildFailed`, which counts the same). When every child
has stopped, the supervisor puts `CallEnded(reason)` on the outbox, exactly once and after every
child's last fact, closes the handle, tells the Switchboard `CallFinished`, and stops. It never
waits in a handler: a `StopDeadline` on the shared timer bounds the wait at `stop_timeout_s`, and
a child still running then is silenced and abandoned, an `end_cut_short` event is recorded, and
`CallEnded.detail` names it.

Every hook runs on the dispatcher thread running this actor. If a handler of the supervisor
itself raises, `on_failure` ends the call as "escalated" at once (other calls are untouched); so
does `on_stop` when the dispatcher shuts down. A stopped supervisor hears no `ChildStopped`, so
children still running then are silenced and recorded as cut short.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pykka import ActorRef

from actors.audio_ingest import AudioIngest
from actors.call_context import (
    CallSetup,
    ChildContext,
    EngineWatch,
    Generations,
    Peers,
    call_log,
)
from actors.clock import SYSTEM_CLOCK, Clock
from actors.errors import StallDetected
from actors.faults import inject
from actors.messages import (
    CallEnded,
    CallEventRecorded,
    ChildRestarted,
    DtmfReceived,
    EndReason,
    HangUp,
    InjectFault,
    MediaConnected,
    PlaybackProgressed,
    RestartChild,
    TextReceived,
)
from actors.replay_buffer import ReplayBuffer
from actors.responder import Responder
from actors.runtime import PooledActor
from actors.session import Session
from actors.snapshot import ActorProbe, CallTree
from actors.supervision import ChildSpec, RestartIntensity, rest_for_one, should_restart
from actors.telling import tell_quietly
from actors.timer import Timer, TimerHandle, shared_timer
from actors.transcriber import Transcriber
from actors.tree_messages import (
    CHILD_ORDER,
    CallFinished,
    Checkpoint,
    Checkpointed,
    ChildFailed,
    ChildName,
    ChildStopped,
    RestartDue,
    SessionCheckpoint,
    SiblingStarted,
    StopDeadline,
    Tick,
    TranscriberStarted,
)
from actors.turn_detector import TurnSettings

if TYPE_CHECKING:
    from actors.agent import AgentConfig
    from actors.call_child import CallChild
    from actors.call_handle import CallHandle
    from actors.engines import CallEngines
    from actors.faults import FaultPlan
    from actors.messages import Outbox
    from actors.runtime import Dispatcher
    from config.settings import SupervisionSettings, VadSettings

SPECS: dict[ChildName, ChildSpec] = {
    "session": ChildSpec(name="session", restart="permanent"),
    "ingest": ChildSpec(name="ingest", restart="permanent"),
    "transcriber": ChildSpec(name="transcriber", restart="transient"),
    "responder": ChildSpec(name="responder", restart="transient"),
}
CLASSES: dict[ChildName, type[CallChild]] = {
    "session": Session,
    "ingest": AudioIngest,
    "transcriber": Transcriber,
    "responder": Responder,
}


@dataclass(slots=True)
class _Slot:
    """The supervisor's record of one child (touched only on the supervisor's thread)."""

    name: ChildName
    probe: ActorProbe
    watch: EngineWatch
    actor: CallChild | None = None
    ref: ActorRef[Any] | None = None
    checkpoint: Checkpoint | None = None
    restarts: int = 0
    retired: bool = False  # True: its next instance's generation is already current


class CallSupervisor(PooledActor):
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        call_id: str,
        agent: AgentConfig,
        engines: CallEngines,
        outbox: Outbox,
        handle: CallHandle,
        supervision: SupervisionSettings,
        vad: VadSettings,
        switchboard: ActorRef[Any] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        timer: Timer | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        super().__init__(dispatcher)
        self.call_id = call_id
        self._timer = timer if timer is not None else shared_timer()
        self._call_handle = handle
        self._switchboard = switchboard
        self._settings = supervision
        self.log = call_log(__name__, call_id)
        self.setup = CallSetup(
            call_id=call_id,
            dispatcher=dispatcher,
            agent=agent,
            engines=engines,
            outbox=outbox,
            supervision=supervision,
            turns=TurnSettings.resolve(vad, agent.vad),
            clock=clock,
            generations=Generations(),
            peers=Peers(),
            replay=ReplayBuffer(supervision.replay_buffer_s),
            timer=self._timer,
            handle=handle,
            faults=faults,
        )
        self.probe = ActorProbe(f"{call_id}/supervisor", 1)
        self.probe.actor = self
        self._slots = {
            name: _Slot(name, ActorProbe(f"{call_id}/{name}"), EngineWatch())
            for name in CHILD_ORDER
        }
        self._intensity = RestartIntensity(supervision)
        self._pending: set[ChildName] = set()
        self._epoch = 0
        self._tick: TimerHandle | None = None
        self._ended = False  # ending: children asked to stop, supervision over
        self._finished = False  # `CallEnded` is on the outbox
        self._end_reason: EndReason = "hangup"
        self._end_detail = ""
        self._stopping: dict[ChildName, int] = {}  # asked to stop, not stopped yet
        self._deadline: TimerHandle | None = None
        self.state = "starting"
        handle.bind(self.actor_ref, self.tree)

    # -- introspection (any thread) -----------------------------------------------------------

    def tree(self) -> CallTree:
        now = time.monotonic()
        return CallTree(
            call_id=self.call_id,
            state=self.state,
            supervisor=self.probe.snapshot(now),
            children=tuple(self._slots[name].probe.snapshot(now) for name in CHILD_ORDER),
        )

    # -- pykka hooks ----------------------------------------------------------------------------

    def on_start(self) -> None:
        """Start the children in order and the watchdog tick; raising here ends the call."""
        for name in CHILD_ORDER:
            self._start_child(name)
        period = min(self._settings.stall_timeout_s, *self._progress_timeouts().values()) / 4
        ref = self.actor_ref
        self._tick = self._timer.call_every(max(0.02, min(period, 1.0)), lambda: _tell(ref, Tick()))
        self.state = self.probe.state = "running"
        self._record("started", agent=self.setup.agent.id)

    def on_receive(self, message: Any) -> Any:
        """Route edge messages to children; supervise. Unknown messages are logged."""
        match message:
            case TextReceived() | DtmfReceived() | MediaConnected():
                self.setup.peers.tell("session", message)
            case PlaybackProgressed():
                self.setup.peers.tell("responder", message)
            case Checkpointed(child=child, generation=generation, state=state):
                if generation == self.setup.generations.current(child):
                    self._slots[child].checkpoint = state
                    if isinstance(state, SessionCheckpoint):
                        self.setup.replay.trim(state.heard_through)
            case ChildFailed(child=child, generation=generation, error=error):
                if self._ended:
                    self._child_stopped(child, generation)  # it will not stop any other way
                elif generation == self.setup.generations.current(child):
                    self._child_failed(child, error)
            case ChildStopped(child=child, generation=generation):
                self._child_stopped(child, generation)
            case StopDeadline():
                self._finish()
            case RestartDue(epoch=epoch):
                if epoch == self._epoch and not self._ended:
                    self._restart_pending()
            case Tick():
                if not self._ended:
                    self._watch()
            case HangUp(reason=reason):
                self._end(reason)
            case RestartChild(child=child, reason=reason):
                name = next((n for n in CHILD_ORDER if n == child), None)
                if name is not None and not self._ended and self._slots[name].ref is not None:
                    self._child_failed(name, f"restart requested: {reason}", stopped=True)
            case InjectFault(actor="supervisor"):
                inject(message)
            case InjectFault(actor=actor):
                self.setup.peers.tell(actor, message)
            case _:
                self.log.warning("unexpected message %r", message)

    def on_stop(self) -> None:
        """Runs on this actor's thread when stopped: by itself at the end, or by the dispatcher's
        shutdown, which ends the call at once (see the module docstring)."""
        self._end("shutdown", stopped=True)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """The supervisor itself failed: end the call, escalated. Runs on this actor's thread."""
        if exception_value is not None:
            self.probe.record_error(exception_value)
        self._end("escalated", detail=f"supervisor: {exception_value!r}", stopped=True)

    # -- supervision ----------------------------------------------------------------------------

    def _start_child(self, name: ChildName) -> None:
        setup, slot = self.setup, self._slots[name]
        generation = (
            setup.generations.current(name) if slot.retired else setup.generations.bump(name)
        )
        slot.retired = False
        previous = slot.probe
        slot.probe = ActorProbe(f"{self.call_id}/{name}", generation)
        slot.probe.restarts = slot.restarts
        # The last error is the slot's: after a restart, the tree still shows why it happened.
        slot.probe.last_error = previous.last_error
        slot.probe.last_traceback = previous.last_traceback
        slot.watch = EngineWatch()
        if name == "ingest":
            setup.replay.admit_writer(generation)
        ctx = ChildContext(
            setup=setup,
            name=name,
            parent=self.actor_ref,
            generation=generation,
            checkpoint=slot.checkpoint,
            probe=slot.probe,
            watch=slot.watch,
        )
        slot.ref = CLASSES[name].start(ctx)
        slot.actor = slot.probe.actor  # type: ignore[assignment]  # the child set itself there
        setup.peers.set(name, slot.ref)
        if name == "ingest":
            self._call_handle.attach_ingest(slot.ref)
        if name == "responder":
            # The Session may have asked for a reply while no Responder was there to hear it.
            setup.peers.tell("session", SiblingStarted(child=name, generation=generation))
        if name == "transcriber":
            setup.peers.tell(
                "ingest",
                TranscriberStarted(generation=generation, from_offset=self._heard_through()),
            )

    def _child_failed(self, failed: ChildName, error: str, *, stopped: bool = False) -> None:
        """Replace `failed` and the children after it; `stopped`: it is alive, stop it first."""
        now = self.setup.clock.monotonic()
        if not self._intensity.record(now):
            self.log.error("= restart intensity exceeded (%s): escalating", error)
            self._record("escalated", child=failed, error=error)
            self._end("escalated", detail=f"{failed}: {error}")
            return
        replaced = rest_for_one(CHILD_ORDER, failed)
        for name in reversed(replaced):
            self._retire(name, failed=name == failed and not stopped)
        for name in replaced:
            if should_restart(SPECS[name]):
                self._pending.add(name)
        self._epoch += 1
        delay = self._intensity.backoff_s()
        self.log.warning(
            "= %s failed (%s): restarting %s in %.0f ms", failed, error, replaced, delay * 1000
        )
        kind = "child_restart_requested" if stopped else "child_failed"
        self._record(kind, child=failed, error=error, restarting=",".join(replaced))
        ref, epoch = self.actor_ref, self._epoch
        self._timer.call_later(delay, lambda: _tell(ref, RestartDue(epoch=epoch)))

    def _retire(self, name: ChildName, *, failed: bool) -> None:
        """Silence the instance at once (generation bump) and stop it; the failed one is dead."""
        slot, setup = self._slots[name], self.setup
        setup.generations.bump(name)  # the old instance's emits and tells are now no-ops
        slot.retired = True
        setup.peers.set(name, None)
        if name == "ingest":
            self._call_handle.attach_ingest(None)
        if slot.ref is not None and not failed:
            if isinstance(slot.actor, AudioIngest):
                # Its queued audio goes to the next instance, not through a silenced one.
                self._call_handle.salvage(slot.ref, slot.actor.drain_audio)
                slot.actor.abandon()
            else:
                slot.ref.stop(block=False)  # never raises: a dead actor just stays dead
        slot.ref = slot.actor = None

    def _restart_pending(self) -> None:
        for name in CHILD_ORDER:
            if name in self._pending:
                self._slots[name].restarts += 1
                self._start_child(name)
                generation = self._slots[name].probe.generation
                self.setup.outbox.put(
                    ChildRestarted(
                        call_id=self.call_id, child=name, generation=generation, error=""
                    )
                )
        self._pending.clear()

    def _watch(self) -> None:
        """Fail children stuck in a handler, or waiting on an engine that shows no progress."""
        now = time.monotonic()
        timeouts = self._progress_timeouts()
        for name in CHILD_ORDER:
            slot = self._slots[name]
            if slot.actor is None:
                continue
            started = slot.actor.stats.handler_started_at
            overdue = slot.watch.overdue(self.setup.clock.monotonic(), timeouts)
            if started is not None and now - started > self._settings.stall_timeout_s:
                why = f"handler running for {now - started:.1f} s"
            elif overdue is not None:
                why = f"{overdue[0]} engine silent for {overdue[1]:.1f} s"
            else:
                continue
            self.log.error("= %s stalled: %s; abandoning it", name, why)
            slot.probe.record_error(StallDetected(why))
            slot.watch.cancel_all()
            if isinstance(slot.actor, AudioIngest) and slot.ref is not None:
                self._call_handle.salvage(slot.ref, slot.actor.drain_audio)
            slot.actor.abandon()
            slot.probe.state = "abandoned"
            self._child_failed(name, f"StallDetected: {why}")
            return  # one replacement per tick; the next tick looks at the new instances

    def _end(self, reason: EndReason, *, detail: str = "", stopped: bool = False) -> None:
        """Ask every live child to stop; `_finish` puts `CallEnded` once they all have.

        `stopped`: this actor is stopping itself (`on_stop`, `on_failure`) and will hear no
        `ChildStopped`, so the call finishes now, cutting short the children still running.
        """
        if not self._ended:
            self._ended = True
            self._end_reason, self._end_detail = reason, detail
            self.state = self.probe.state = f"ending: {reason}"
            if self._tick is not None:
                self._tick.cancel()
            for name in reversed(CHILD_ORDER):
                ref = self._slots[name].ref
                # A dead child (failed, abandoned, awaiting a restart) has nothing more to say.
                if ref is not None and ref.is_alive():
                    self._stopping[name] = self.setup.generations.current(name)
                    # Queued behind what it was told already: those facts come out first.
                    ref.stop(block=False)  # never raises: a dead actor just stays dead
            if self._stopping and not stopped:
                self.log.info("= ending: %s; waiting for %s to stop", reason, list(self._stopping))
                ref = self.actor_ref
                self._deadline = self._timer.call_later(
                    self._settings.stop_timeout_s, lambda: _tell(ref, StopDeadline())
                )
        if stopped or not self._stopping:
            self._finish(stop_self=not stopped)

    def _child_stopped(self, child: ChildName, generation: int) -> None:
        if self._finished or self._stopping.get(child) != generation:
            return  # a retired instance, or one the end has already given up on
        del self._stopping[child]
        if not self._stopping:
            self._finish()

    def _finish(self, *, stop_self: bool = True) -> None:
        """Put `CallEnded` (once), close the handle, tell the Switchboard; then stop if asked.

        Children still in `_stopping` are cut short: silenced at once (a generation bump), so
        nothing of theirs follows `CallEnded`, and, if this actor still runs (`StopDeadline`),
        abandoned like a stalled child, since a child past its stop timeout is stuck.
        """
        if self._finished:
            return
        self._finished = True
        if self._deadline is not None:
            self._deadline.cancel()
        reason, detail = self._end_reason, self._end_detail
        late = [name for name in CHILD_ORDER if name in self._stopping]
        if late:
            self.log.warning("= %s still running at the end: cut short", ", ".join(late))
            for name in late:
                slot = self._slots[name]
                self.setup.generations.bump(name)
                if stop_self:
                    slot.watch.cancel_all()
                    if slot.actor is not None and slot.actor.abandon():
                        slot.probe.state = "abandoned"
            self._record("end_cut_short", children=",".join(late))
            cut = f"cut short: {', '.join(late)} still running"
            detail = f"{detail}; {cut}" if detail else cut
        for slot in self._slots.values():
            slot.ref = slot.actor = None
        self.state = self.probe.state = f"ended: {reason}"
        self.log.info("= call ended: %s %s", reason, detail)
        self.setup.outbox.put(CallEnded(call_id=self.call_id, reason=reason, detail=detail))
        self._call_handle.close()
        if self._switchboard is not None:
            _tell(self._switchboard, CallFinished(call_id=self.call_id))
        if stop_self:
            self.stop()

    # -- helpers --------------------------------------------------------------------------------

    def _heard_through(self) -> int:
        checkpoint = self._slots["session"].checkpoint
        return checkpoint.heard_through if isinstance(checkpoint, SessionCheckpoint) else 0

    def _progress_timeouts(self) -> dict[Any, float]:
        s = self._settings
        return {
            "stt": s.stt_progress_timeout_s,
            "llm": s.llm_progress_timeout_s,
            "tts": s.tts_progress_timeout_s,
        }

    def _record(self, kind: str, **data: str | int | float | bool | None) -> None:
        self.setup.outbox.put(
            CallEventRecorded(
                call_id=self.call_id, kind=kind, data=data, at=self.setup.clock.monotonic()
            )
        )


def _tell(ref: ActorRef[Any], message: object) -> None:
    tell_quietly(ref, message)  # the call may have ended before the timer fired
