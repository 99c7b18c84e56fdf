"""Errors of the call tree. One root, `CallError`:

    CallError
    ├── EngineGaveUp        an engine stream reported a failure it will not recover from
    ├── StallDetected       a handler ran past `stall_timeout_s`, or an engine showed no
    │                       progress for its kind's progress timeout
    ├── InjectedFault       raised on purpose by `actors.faults.FaultPlan` (tests, debug socket)
    └── BadAudio            audio entered the tree in the wrong format (not 16 kHz mono PCM16)

A BaseException (SystemExit, KeyboardInterrupt) in a handler fails only that actor: the runtime
(`actors.runtime`) guards pykka's stop-everything reaction. Supervision turns failures into
`ChildFailed` messages; none of them crosses to the edge as an exception. The edge learns of
failures through outbound facts (`ChildRestarted`, `CallEnded`).
"""

from __future__ import annotations


class CallError(Exception):
    """Root of every error raised by the call tree."""


class EngineGaveUp(CallError):
    """An engine stream failed for good (after its own reconnects), so its actor fails."""


class StallDetected(CallError):
    """A child was stuck in a handler, or its engine made no progress, for too long."""


class InjectedFault(CallError):
    """Raised on purpose by a `FaultPlan`."""


class BadAudio(CallError):
    """Audio that is not 16 kHz mono PCM16 reached AudioIngest."""
