"""Errors of the call tree. One root, `CallError`:

    CallError
    ├── ChildCrashed        a BaseException (SystemExit, KeyboardInterrupt) escaped a handler;
    │                       re-raised as this so it fails one actor, never the process
    ├── EngineGaveUp        an engine stream reported a failure it will not recover from
    ├── StallDetected       a handler ran past `stall_timeout_s`, or an engine showed no
    │                       progress for its kind's progress timeout
    ├── InjectedFault       raised on purpose by `actors.faults.FaultPlan` (tests, debug socket)
    └── BadAudio            audio entered the tree in the wrong format (not 16 kHz mono PCM16)

Supervision turns these into `ChildFailed` messages; none of them crosses to the edge as an
exception. The edge learns of failures through outbound facts (`ChildRestarted`, `CallEnded`).
"""

from __future__ import annotations


class CallError(Exception):
    """Root of every error raised by the call tree."""


class ChildCrashed(CallError):
    """A BaseException escaped a child's handler; the child fails, other calls don't notice."""


class EngineGaveUp(CallError):
    """An engine stream failed for good (after its own reconnects), so its actor fails."""


class StallDetected(CallError):
    """A child was stuck in a handler, or its engine made no progress, for too long."""


class InjectedFault(CallError):
    """Raised on purpose by a `FaultPlan`."""


class BadAudio(CallError):
    """Audio that is not 16 kHz mono PCM16 reached AudioIngest."""
