"""TreePoller: turns differences between successive call-tree snapshots into watch events.

Polling snapshots (`CallRegistry` trees) sees every call, whether or not the edge taps its
outbox, and costs the actors nothing: a snapshot reads attributes and takes each mailbox lock for
a moment. The debug server polls every `POLL_S` while someone watches, on a worker thread.

Events, as (call id, kind, data):

    call           the call's state changed: appeared ("running", ...), "ending: <reason>",
                   "ended: <reason>", or "gone" (left the registry)
    state          an actor's lifecycle state changed; "idle" and "handling <Message>" both
                   count as "running", so the 50-a-second audio does not flood a watcher
    restart        an actor has a new generation (supervision replaced it)
    error          an actor's last error changed (with the short traceback)
    audio_dropped  an actor's mailbox dropped real-time audio since the last poll

The first poll after `reset()` only takes a baseline: a new watcher is not flooded with the
state of every live call (that is what `calls` and `tree` are for).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.call_registry import CallRegistry
    from actors.snapshot import ActorSnapshot, CallTree
    from mediaserver.debug.watch import Scalar

POLL_S = 0.2

PolledEvent = tuple[str, str, dict[str, "Scalar"]]


@dataclass(frozen=True, slots=True)
class _ActorView:
    state: str
    generation: int
    last_error: str
    dropped: int
    dropped_ms: float


def lifecycle(state: str) -> str:
    """An actor's state without the message it is handling: "running" for idle or handling."""
    if state == "idle" or state.startswith("handling "):
        return "running"
    return state


def read_trees(registry: CallRegistry) -> dict[str, CallTree]:
    """Every live call's tree, read from any thread without messaging an actor."""
    trees = {}
    for entry in registry.calls():
        tree = entry.handle.tree()
        if tree is not None:
            trees[entry.call_id] = tree
    return trees


class TreePoller:
    """Remembers the last view of every actor; `poll` returns what changed since."""

    def __init__(self) -> None:
        self._calls: dict[str, str] | None = None
        self._actors: dict[str, _ActorView] = {}

    @property
    def needs_baseline(self) -> bool:
        return self._calls is None

    def reset(self) -> None:
        """Forget everything: the next poll takes a baseline and reports nothing."""
        self._calls = None
        self._actors = {}

    def poll(self, trees: Mapping[str, CallTree]) -> list[PolledEvent]:
        baseline = self._calls is None
        previous_calls = self._calls or {}
        events: list[PolledEvent] = []
        actors: dict[str, _ActorView] = {}
        for call_id, tree in trees.items():
            if not baseline and previous_calls.get(call_id) != tree.state:
                events.append((call_id, "call", {"state": tree.state}))
            for snapshot in (tree.supervisor, *tree.children):
                view = _view(snapshot)
                actors[snapshot.address] = view
                before = self._actors.get(snapshot.address)
                if not baseline:
                    events += _changes(call_id, snapshot, before, view)
        if not baseline:
            events += [
                (call_id, "call", {"state": "gone"})
                for call_id in previous_calls.keys() - trees.keys()
            ]
        self._calls = {call_id: tree.state for call_id, tree in trees.items()}
        self._actors = actors
        return events


def _view(snapshot: ActorSnapshot) -> _ActorView:
    return _ActorView(
        state=lifecycle(snapshot.state),
        generation=snapshot.generation,
        last_error=snapshot.last_error,
        dropped=snapshot.dropped,
        dropped_ms=snapshot.dropped_ms,
    )


def _changes(
    call_id: str, snapshot: ActorSnapshot, before: _ActorView | None, now: _ActorView
) -> list[PolledEvent]:
    actor = snapshot.address
    if before is None:  # a new call: its start is reported as a `call` event
        return []
    events: list[PolledEvent] = []
    restarted = now.generation != before.generation
    if restarted:
        events.append(
            (
                call_id,
                "restart",
                {"actor": actor, "generation": now.generation, "restarts": snapshot.restarts},
            )
        )
    if now.state != before.state:
        events.append((call_id, "state", {"actor": actor, "from": before.state, "to": now.state}))
    if now.last_error and now.last_error != before.last_error:
        events.append(
            (
                call_id,
                "error",
                {"actor": actor, "error": now.last_error, "traceback": snapshot.last_traceback},
            )
        )
    # A new instance has a new mailbox whose counters start at zero.
    base_dropped, base_ms = (0, 0.0) if restarted else (before.dropped, before.dropped_ms)
    if now.dropped > base_dropped:
        events.append(
            (
                call_id,
                "audio_dropped",
                {
                    "actor": actor,
                    "messages": now.dropped - base_dropped,
                    "ms": round(now.dropped_ms - base_ms, 1),
                },
            )
        )
    return events
