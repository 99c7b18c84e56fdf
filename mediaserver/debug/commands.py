"""DebugCommands: what each debug-socket command does. Runs on the event loop; never blocks it.

Reads come from snapshots (`CallRegistry`, `Dispatcher.stats()`, psutil): no actor is asked
anything, so a stuck call can be inspected. Reads that grow with the number of calls (`calls`,
`stats`) run on a worker thread. Actions go through the call's `CallHandle` (`tell` only);
waiting for their effect is a short poll of snapshots on the loop, or a wait on a worker thread
(`handle.wait_ended`). `watch`, `unwatch` and `hello` belong to a connection: see `server.py`.
`admission` reads or forces the load gate; `hog` (fault injection) blocks the event loop on a
schedule, so the gate can be seen closing on real lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from actors.messages import HangUp, InjectFault, RestartChild
from mediaserver.debug.protocol import CHILD_KINDS, CommandFailed, Request, parse_address

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from actors.call_handle import CallHandle
    from actors.call_registry import CallEntry, CallRegistry
    from actors.runtime import Dispatcher
    from actors.snapshot import ActorSnapshot, CallTree
    from config.settings import DebugSettings
    from mediaserver.admission.load_gate import LoadGate
    from mediaserver.debug.monitor import LoopMonitor
    from mediaserver.debug.watch import DebugEvents
    from mediaserver.store import Store

logger = logging.getLogger(__name__)

ACTION_WAIT_S = 5.0  # how long restart/crash/stop wait to report the outcome
STACK_LIMIT = 60  # frames per thread


class DebugCommands:
    """The commands that do not depend on the connection; `run` dispatches by name."""

    def __init__(
        self,
        settings: DebugSettings,
        registry: CallRegistry,
        *,
        events: DebugEvents,
        monitor: LoopMonitor,
        dispatcher: Dispatcher | None = None,
        store: Store | None = None,
        gate: LoadGate | None = None,
    ) -> None:
        self._settings = settings
        self.registry = registry
        self.events = events
        self.monitor = monitor
        self._dispatcher = dispatcher
        self._store = store
        self._gate = gate
        self._hogs: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Callable[[Request], Awaitable[Any]]] = {
            "calls": self.calls,
            "tree": self.tree,
            "state": self.state,
            "stats": self.stats,
            "stack": self.stack,
            "restart": self.restart,
            "stop": self.stop,
            "crash": self.crash,
            "loglevel": self.loglevel,
            "reload": self.reload,
            "admission": self.admission,
            "hog": self.hog,
        }

    async def run(self, request: Request) -> Any:
        handler = self._handlers.get(request.cmd)
        assert handler is not None, f"{request.cmd} is not a DebugCommands command"
        return await handler(request)

    # -- reading --------------------------------------------------------------------------------

    async def calls(self, request: Request) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._calls)

    def _calls(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        rows = []
        for entry in sorted(self.registry.calls(), key=lambda e: e.admitted_at):
            tree = entry.handle.tree()
            summary = self.events.summary(entry.call_id)
            children = tree.children if tree is not None else ()
            rows.append(
                {
                    **_call_fields(entry, tree, now),
                    "turns": summary.turns if summary else None,
                    "last_v2v_ms": _round(summary.last_voice_to_voice_ms) if summary else None,
                    "restarts": sum(child.restarts for child in children),
                    "mailbox": sum(child.mailbox_depth for child in children),
                }
            )
        return rows

    async def tree(self, request: Request) -> dict[str, Any]:
        entry, tree = self._tree(str(request.args["call"]))
        return {
            **_call_fields(entry, tree, time.monotonic()),
            "supervisor": snapshot_json(tree.supervisor),
            "children": {_kind(child): snapshot_json(child) for child in tree.children},
        }

    async def state(self, request: Request) -> dict[str, Any]:
        return snapshot_json(self._snapshot(str(request.args["actor"])))

    async def stats(self, request: Request) -> dict[str, Any]:
        return await asyncio.to_thread(self._stats)

    def _stats(self) -> dict[str, Any]:
        admitted, refused = self.registry.admissions()
        actors = dict.fromkeys(("supervisor", *CHILD_KINDS), 0)
        for entry in self.registry.calls():
            tree = entry.handle.tree()
            if tree is None:
                continue
            for snapshot in (tree.supervisor, *tree.children):
                if snapshot.state not in ("stopped", "failed", "abandoned", "starting"):
                    actors[_kind(snapshot)] += 1
        monitor = self.monitor
        watchers = self.events.watchers
        return {
            "calls": {"live": self.registry.count(), "admitted": admitted, "refused": refused},
            "actors": actors,
            "threads": threading.active_count(),
            "dispatcher": self._dispatcher.stats() if self._dispatcher is not None else None,
            "rss_bytes": monitor.rss_bytes(),
            "cpu_pct": round(monitor.cpu_pct, 1),
            "loop_lag_ms": {"last": _round(monitor.lag_ms), "max_10s": _round(monitor.lag_max_ms)},
            "uptime_s": round(time.monotonic() - monitor.started_at, 1),
            "pid": os.getpid(),
            "admission": self._gate.state().as_json() if self._gate is not None else None,
            "debug": {
                "watchers": len(watchers),
                "events_published": self.events.published,
                "events_dropped": sum(w.dropped_total for w in watchers),
            },
        }

    async def stack(self, request: Request) -> dict[str, Any]:
        """The stack of the thread running an actor now, or of every thread."""
        frames = sys._current_frames()
        names = {thread.ident: thread for thread in threading.enumerate()}
        address = request.args.get("actor")
        if address is None:
            threads = [
                {
                    "thread": names[ident].name if ident in names else f"thread-{ident}",
                    "ident": ident,
                    "daemon": names[ident].daemon if ident in names else None,
                    "stack": _format(frame),
                }
                for ident, frame in sorted(frames.items())
            ]
            return {"threads": threads}
        snapshot = self._snapshot(str(address))
        ident = snapshot.thread_ident
        frame = frames.get(ident) if ident is not None else None
        return {
            "actor": snapshot.address,
            "state": snapshot.state,
            "handler_running_s": round(snapshot.handler_running_s, 3),
            "running": frame is not None,
            "thread": names[ident].name if ident is not None and ident in names else None,
            "stack": _format(frame) if frame is not None else [],
        }

    # -- acting ---------------------------------------------------------------------------------

    async def restart(self, request: Request) -> dict[str, Any]:
        address = str(request.args["actor"])
        call_id, kind = parse_address(address)
        if kind == "supervisor":
            msg = "the supervisor cannot restart without ending the call; use `stop`"
            raise CommandFailed("refused", msg)
        before = self._snapshot(address)
        handle = self._handle(call_id)
        logger.info("> %s restart requested", address)
        handle.tell(RestartChild(call_id=call_id, child=kind, reason="debug socket"))
        after = await self._await_generation(address, before.generation, handle)
        return {
            "actor": address,
            "restarted": after is not None,
            "generation": after.generation if after else before.generation,
            "restarts": after.restarts if after else before.restarts,
            "call_ended": handle.ended,
        }

    async def crash(self, request: Request) -> dict[str, Any]:
        address = str(request.args["actor"])
        call_id, kind = parse_address(address)
        if not self._settings.fault_injection:
            msg = "fault injection is off (set MEDIASERVER_DEBUG__FAULT_INJECTION=true)"
            raise CommandFailed("refused", msg)
        fault = str(request.args.get("kind", "exception"))
        before = self._snapshot(address)
        handle = self._handle(call_id)
        logger.warning("> %s crash injected (%s)", address, fault)
        handle.tell(
            InjectFault(
                call_id=call_id,
                actor=kind,
                kind=fault,  # type: ignore[arg-type]  # validated against CRASH_KINDS
                hang_s=float(request.args.get("hang_s", 5.0)),
            )
        )
        result: dict[str, Any] = {"actor": address, "kind": fault, "injected": True}
        if fault == "hang":
            return result  # the watchdog decides when a hang is a stall
        if kind == "supervisor":
            result["call_ended"] = await asyncio.to_thread(handle.wait_ended, ACTION_WAIT_S)
            return result
        after = await self._await_generation(address, before.generation, handle)
        result |= {
            "restarted": after is not None,
            "generation": after.generation if after else before.generation,
            "restarts": after.restarts if after else before.restarts,
            "call_ended": handle.ended,
        }
        return result

    async def stop(self, request: Request) -> dict[str, Any]:
        call_id = str(request.args["call"])
        reason = str(request.args.get("reason", "hangup"))
        handle = self._handle(call_id)
        logger.info("> %s stop requested (%s)", call_id, reason)
        handle.tell(HangUp(call_id=call_id, reason=reason))  # type: ignore[arg-type]  # validated
        ended = await asyncio.to_thread(handle.wait_ended, ACTION_WAIT_S)
        return {"call": call_id, "reason": reason, "ended": ended}

    async def loglevel(self, request: Request) -> dict[str, Any]:
        name = str(request.args["logger"])
        target = logging.getLogger() if name == "root" else logging.getLogger(name)
        previous = logging.getLevelName(target.level)
        target.setLevel(str(request.args["level"]))
        logger.info("= log level of %s: %s -> %s", name, previous, request.args["level"])
        return {"logger": name, "level": request.args["level"], "previous": previous}

    async def reload(self, request: Request) -> dict[str, Any]:
        """Re-read the agents from the store; live calls keep the agent they were admitted with."""
        if self._store is None:
            raise CommandFailed("refused", "this server has no store to reload agents from")
        companies = await self._store.list_companies()
        agents = 0
        for company in companies:
            agents += len(await self._store.list_agents(company.id))
        live = self.registry.count()
        logger.info("= reload: %d agents of %d companies re-read", agents, len(companies))
        return {
            "companies": len(companies),
            "agents": agents,
            "live_calls_unchanged": live,
            "note": (
                "agents are read from the store when a call is admitted, so new calls use the "
                "current rows; live calls keep the configuration they started with"
            ),
        }

    async def admission(self, request: Request) -> dict[str, Any]:
        """The load gate's state; with `mode`, force it closed ("off"), open ("on"), or "auto"."""
        gate = self._gate
        if gate is None:
            raise CommandFailed("refused", "this server has no load gate")
        mode = request.args.get("mode")
        if mode is None:
            return gate.state().as_json()
        logger.warning("> admission %s requested", mode)
        return gate.set_mode(str(mode)).as_json()  # type: ignore[arg-type]  # validated

    async def hog(self, request: Request) -> dict[str, Any]:
        """Fault injection: block the event loop `loop_ms` every `every_ms`, for `for_s`."""
        if not self._settings.fault_injection:
            msg = "fault injection is off (set MEDIASERVER_DEBUG__FAULT_INJECTION=true)"
            raise CommandFailed("refused", msg)
        loop_ms = float(request.args["loop_ms"])
        every_ms = float(request.args.get("every_ms", 2 * loop_ms))
        for_s = float(request.args.get("for_s", 5.0))
        if every_ms < loop_ms:
            raise CommandFailed("refused", "every_ms must be at least loop_ms")
        logger.warning(
            "> hog: blocking the event loop %.0f ms every %.0f ms for %.1f s",
            loop_ms,
            every_ms,
            for_s,
        )
        task = asyncio.get_running_loop().create_task(
            _hog(loop_ms / 1000, every_ms / 1000, for_s), name="debug-hog"
        )
        self._hogs.add(task)
        task.add_done_callback(self._hogs.discard)
        return {"loop_ms": loop_ms, "every_ms": every_ms, "for_s": for_s, "started": True}

    async def close(self) -> None:
        """Stop any hog still running."""
        for task in list(self._hogs):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- helpers --------------------------------------------------------------------------------

    def _handle(self, call_id: str) -> CallHandle:
        handle = self.registry.handle(call_id)
        if handle is None:
            raise CommandFailed("not_found", f"no live call {call_id!r}")
        return handle

    def _tree(self, call_id: str) -> tuple[CallEntry, CallTree]:
        entry = next((e for e in self.registry.calls() if e.call_id == call_id), None)
        tree = entry.handle.tree() if entry is not None else None
        if entry is None or tree is None:
            raise CommandFailed("not_found", f"no live call {call_id!r}")
        return entry, tree

    def _snapshot(self, address: str) -> ActorSnapshot:
        call_id, _ = parse_address(address)
        if self.registry.handle(call_id) is None:
            raise CommandFailed("not_found", f"no live call {call_id!r}")
        snapshot = self.registry.lookup(address)
        if snapshot is None:
            raise CommandFailed("not_found", f"no actor {address!r}")
        return snapshot

    async def _await_generation(
        self, address: str, generation: int, handle: CallHandle
    ) -> ActorSnapshot | None:
        """The actor's snapshot once it runs with a newer generation; None on timeout or end."""
        deadline = time.monotonic() + ACTION_WAIT_S
        while time.monotonic() < deadline and not handle.ended:
            snapshot = self.registry.lookup(address)
            if snapshot is not None and snapshot.generation > generation:
                return snapshot
            await asyncio.sleep(0.01)  # snapshot reads are cheap; this never holds the loop
        return None


async def _hog(block_s: float, every_s: float, for_s: float) -> None:
    """Hold the event loop for `block_s` at the start of every `every_s`, until `for_s` is over.

    `time.sleep` holds the loop without burning CPU (it releases the GIL), so the dispatcher's
    threads and the rest of a shared box are not slowed by it: only the loop's lag grows.
    """
    end = time.monotonic() + for_s
    while (started := time.monotonic()) < end:
        time.sleep(block_s)  # the point: nothing else runs on the loop meanwhile
        await asyncio.sleep(max(0.0, every_s - (time.monotonic() - started)))


def snapshot_json(snapshot: ActorSnapshot) -> dict[str, Any]:
    """An actor snapshot as JSON: every field, plus its kind and the name of its thread."""
    document = dataclasses.asdict(snapshot)
    ident = document.pop("thread_ident")
    thread = next((t.name for t in threading.enumerate() if t.ident == ident), None)
    for key in ("oldest_message_age_s", "handler_running_s", "dropped_ms"):
        document[key] = round(document[key], 4)
    return {"kind": _kind(snapshot), **document, "thread": thread if ident else None}


def _call_fields(entry: CallEntry, tree: CallTree | None, now: float) -> dict[str, Any]:
    return {
        "id": entry.call_id,
        "company": entry.company_id,
        "agent": entry.agent_id,
        "transport": entry.transport,
        "age_s": round(now - entry.admitted_at, 3),
        "state": tree.state if tree is not None else "starting",
    }


def _kind(snapshot: ActorSnapshot) -> str:
    return snapshot.address.rpartition("/")[2]


def _format(frame: Any) -> list[str]:
    return [line.rstrip("\n") for line in traceback.format_stack(frame, limit=STACK_LIMIT)]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
