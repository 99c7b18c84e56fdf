"""CallChild: what every child of a CallSupervisor does to be supervised.

A child gets its parent's ref, its generation and its last checkpoint through a `ChildContext`
in `__init__`. It reports failure to the parent with `ChildFailed` from `on_failure`, and its
stop with `ChildStopped` from `on_stop`. It saves its recoverable state with `checkpoint()` after
each change, and puts outbound messages through `emit()`, which does nothing once the instance
has been replaced. Engine streams are opened through `open_stream()`, whose sink tags every
result with (generation, stream number): late output of a cancelled stream or an abandoned
instance is discarded in `on_receive`.

Subclasses implement `handle(message)` and `handle_engine(output)`, and optionally `started()`
and `stopping()`. All hooks run on the dispatcher thread running this actor.
"""

from __future__ import annotations

import traceback
from types import TracebackType
from typing import TYPE_CHECKING, Any

from actors.call_context import CallLog, call_log
from actors.engines import EngineKind, EngineResult, EngineStream
from actors.faults import inject
from actors.messages import AudioDropped, InjectFault
from actors.runtime import PooledActor
from actors.telling import tell_quietly
from actors.tree_messages import (
    Checkpoint,
    Checkpointed,
    ChildFailed,
    ChildStopped,
    EngineOutput,
)

if TYPE_CHECKING:
    from actors.call_context import ChildContext
    from actors.messages import Outbound


class CallChild(PooledActor):
    def __init__(self, ctx: ChildContext) -> None:
        setup = ctx.setup
        super().__init__(setup.dispatcher, realtime_backlog_ms=setup.supervision.audio_backlog_ms)
        self.ctx = ctx
        self.setup = setup
        self.name = ctx.name
        self.call_id = setup.call_id
        self.generation = ctx.generation
        self.clock = setup.clock
        self.log: CallLog = call_log(f"actors.{ctx.name}", setup.call_id)
        self._streams = 0
        ctx.probe.actor = self

    # -- pykka hooks ------------------------------------------------------------------------

    def on_start(self) -> None:
        """Runs `started()`. If it raises, the parent is told, and the instance stops."""
        try:
            self.started()
        except Exception as exc:
            self._report(exc)
            raise
        self.ctx.probe.state = "idle"

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message; an exception fails this instance (see `on_failure`)."""
        probe = self.ctx.probe
        probe.state = f"handling {type(message).__name__}"
        faults = self.setup.faults
        if faults is not None:
            faults.check(self.name, message)
        if isinstance(message, InjectFault):
            inject(message)  # raises (or hangs) in this handler, exactly as a bug would
        elif isinstance(message, EngineOutput):
            if message.generation == self.generation and self._is_open(message.stream):
                self.ctx.watch.progressed(message.stream, self.clock.monotonic())
                self.handle_engine(message)
        else:
            self.handle(message)
        probe.state = "idle"

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Runs on this actor's thread after a handler raised: close streams, tell the parent."""
        self.ctx.watch.cancel_all()
        if exception_value is not None:
            self._report(exception_value)

    def on_stop(self) -> None:
        """Runs on this actor's thread when stopped normally: `stopping()`, close streams, then
        tell the parent `ChildStopped` (also if `stopping()` raised): at the end of a call the
        supervisor waits for it, so the last facts of every child precede `CallEnded`."""
        try:
            self.stopping()
        finally:
            self.ctx.watch.cancel_all()
            self.ctx.probe.state = "stopped"
            self._tell_parent(ChildStopped(child=self.name, generation=self.generation))

    def on_dropped(self, count: int, ms: float) -> None:
        """The runtime dropped `count` audio messages (`ms` of audio): emit a metric fact."""
        self.log.warning(
            "= %s fell behind: dropped %d audio messages (%.0f ms)", self.name, count, ms
        )
        self.emit(
            AudioDropped(
                call_id=self.call_id, actor=self.name, dropped_ms=ms, dropped_messages=count
            )
        )

    # -- for subclasses -----------------------------------------------------------------------

    def started(self) -> None:
        """Set up on this actor's thread before the first message."""

    def stopping(self) -> None:
        """Clean up on this actor's thread when the supervisor stops it."""

    def handle(self, message: object) -> None:
        self.log.warning("unexpected message %s", type(message).__name__)

    def handle_engine(self, output: EngineOutput) -> None:
        self.log.warning("unexpected engine output %s", type(output.result).__name__)

    def live(self) -> bool:
        """False once the supervisor has replaced this instance."""
        return self.setup.generations.current(self.name) == self.generation

    def emit(self, message: Outbound) -> None:
        if self.live():
            self.setup.outbox.put(message)

    def tell_peer(self, child: str, message: object) -> None:
        if self.live():
            self.setup.peers.tell(child, message)

    def checkpoint(self, state: Checkpoint) -> None:
        size = len(repr(state))
        self.ctx.probe.checkpoint_size = size
        if self.live():
            self._tell_parent(
                Checkpointed(child=self.name, generation=self.generation, state=state, size=size)
            )

    def open_stream(self, kind: EngineKind, engine: Any) -> tuple[int, EngineStream[Any]]:
        """Open an engine stream whose results come back as `EngineOutput` to this instance."""
        self._streams += 1
        stream_no, generation, ref = self._streams, self.generation, self.actor_ref

        def sink(result: EngineResult) -> None:
            # If the instance is gone, its stream's output goes nowhere, by design.
            tell_quietly(
                ref, EngineOutput(generation=generation, stream=stream_no, kind=kind, result=result)
            )

        stream: EngineStream[Any] = engine.open(self.call_id, sink)
        self.ctx.watch.opened(stream_no, kind, stream)
        return stream_no, stream

    def close_stream(
        self, stream_no: int, stream: EngineStream[Any], *, cancel: bool = False
    ) -> None:
        self.ctx.watch.forget(stream_no)
        try:
            if cancel:
                stream.cancel()
            stream.close()
        except Exception:
            self.log.exception("closing stream %d failed", stream_no)

    def _is_open(self, stream_no: int) -> bool:
        return self.ctx.watch.is_open(stream_no)

    def _report(self, error: BaseException) -> None:
        self.ctx.probe.record_error(error)
        self.ctx.probe.state = "failed"
        self.log.error("= %s gen %d failed: %r", self.name, self.generation, error)
        self._tell_parent(
            ChildFailed(
                child=self.name,
                generation=self.generation,
                error=f"{type(error).__name__}: {error}",
                traceback="".join(traceback.format_exception(error)[-8:]),
            )
        )

    def _tell_parent(self, message: object) -> None:
        tell_quietly(self.ctx.parent, message)
