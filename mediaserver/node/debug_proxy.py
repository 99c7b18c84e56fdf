"""DebugProxy: the node's debug socket, one path for every worker (decision 0082).

    client --JSON lines v1--> DebugListener on debug.socket_path (and TCP with the token)
                                  | DebugProxy.execute: route (debug_routing.py)
                                  v
           WorkerDebugClient --> worker I's own debug socket, RUN_DIR/wI.debug.sock

The listener is the one every debug socket has (`mediaserver/debug/listener.py`): the same
limits, authentication and watch streaming. Each client connection gets its own connection to
each worker, opened when first needed and closed with it, so a worker sees that client's limits
as its own (at most 8 requests and 4 watches at a time) and one slow client holds up no other.

A worker that is down (restarting) is skipped, never waited for: a request that goes to several
workers answers with the others and lists it in `workers_down` beside the result; one for that
worker alone is answered `unavailable`. Every upstream wait is bounded (`debug_upstream.py`).

A `watch` is relayed from the same watch on the workers through one local `Watcher` per client
watch (`debug_relay.py`), so the client's rate limit and `dropped` count work as on one server.
Loop only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from mediaserver.debug.listener import DebugConnection, DebugListener, hello_info
from mediaserver.debug.protocol import CommandFailed, Reply, Request
from mediaserver.debug.watch import DEFAULT_RATE_PER_S, Watcher
from mediaserver.node.debug_relay import WatchRelay
from mediaserver.node.debug_routing import (
    WorkerAnswer,
    call_of,
    describe_down,
    extra_fields,
    merge_calls,
    merge_every,
    merge_stats,
    merge_threads,
    owner_answer,
    route,
    tagged,
)
from mediaserver.node.debug_upstream import WorkerConnections, WorkerUnavailable

if TYPE_CHECKING:
    from config.settings import DebugSettings
    from mediaserver.debug.listener import Release
    from mediaserver.node.debug_upstream import WorkerSockets

logger = logging.getLogger(__name__)


class DebugProxy:
    """The node's debug socket: a `CommandExecutor` that asks the workers; see the docstring."""

    def __init__(self, settings: DebugSettings, workers: WorkerSockets) -> None:
        self._settings = settings
        self._workers = workers
        self._listener = DebugListener(settings, self)
        self._upstreams: dict[DebugConnection, WorkerConnections] = {}

    @property
    def path(self) -> str:
        return self._listener.path

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        return self._listener.tcp_address

    async def start(self) -> None:
        """Listen on `debug.socket_path` (and TCP if configured).

        Raises:
            StartupError: as `DebugListener.start`.
        """
        await self._listener.start()

    async def close(self) -> None:
        """Stop listening, drop every connection (and theirs to the workers). Idempotent."""
        await self._listener.close()

    async def execute(self, connection: DebugConnection, request: Request) -> Any:
        """Answer one authenticated request: by the node, one worker, or several."""
        upstreams = self._upstreams_of(connection)
        match route(request):
            case "watch" if request.cmd == "watch":
                return await self._watch(connection, upstreams, request)
            case "watch":
                return await self._unwatch(connection, upstreams, request)
            case "node":
                numbers = self._workers.worker_numbers
                return {**hello_info(self._settings), "node": True, "workers": len(numbers)}
            case "worker":
                worker = self._check_worker(request.worker)
                client = await upstreams.client(worker)
                result = await client.request(request.cmd, request.args)
                return Reply(tagged(request.cmd, result, worker), {"worker": worker})
            case "owner":
                return await self._owner(upstreams, request)
            case "calls":
                answers, down = await self._fan_out(upstreams, request)
                return _reply(merge_calls(answers), extra_fields(down, answers))
            case "stats":
                answers, down = await self._fan_out(upstreams, request)
                stats = merge_stats(answers)
                stats["node"] = {
                    "pid": os.getpid(),
                    "workers": len(self._workers.worker_numbers),
                    "workers_up": len(answers),
                    "debug": {"connections": self._listener.connection_count},
                }
                return _reply(stats, extra_fields(down, answers))
            case "threads":
                answers, down = await self._fan_out(upstreams, request)
                return _reply(merge_threads(answers), extra_fields(down, answers))
            case "every":
                answers, down = await self._fan_out(upstreams, request)
                return _reply(merge_every(answers), extra_fields(down, []))

    # -- asking workers ---------------------------------------------------------------------------

    def _upstreams_of(self, connection: DebugConnection) -> WorkerConnections:
        upstreams = self._upstreams.get(connection)
        if upstreams is None:
            upstreams = self._upstreams[connection] = WorkerConnections(self._workers)

            def closed() -> None:
                self._upstreams.pop(connection).close()

            connection.at_close(closed)
        return upstreams

    def _check_worker(self, worker: int | None) -> int:
        numbers = self._workers.worker_numbers
        if worker not in numbers:
            msg = f"no worker {worker}: this node runs workers {numbers[0]} to {numbers[-1]}"
            raise CommandFailed("bad_argument", msg)
        assert worker is not None
        return worker

    async def _fan_out(
        self, upstreams: WorkerConnections, request: Request
    ) -> tuple[list[WorkerAnswer], list[int]]:
        """Every worker's answer at once; the workers that are down are skipped and listed."""
        numbers = self._workers.worker_numbers
        up = [worker for worker in numbers if self._workers.worker_up(worker)]
        down = [worker for worker in numbers if worker not in up]
        outcomes = await asyncio.gather(*(upstreams.ask(worker, request) for worker in up))
        answers = []
        for worker, outcome in zip(up, outcomes, strict=True):
            if isinstance(outcome.error, WorkerUnavailable):
                down.append(worker)
            else:
                answers.append(outcome)
        if down:
            logger.debug("> debug %s: skipped %s", request.cmd, describe_down(down))
        return answers, sorted(down)

    async def _owner(self, upstreams: WorkerConnections, request: Request) -> Reply:
        """Ask every worker; the answer of the one that has the call."""
        answers, down = await self._fan_out(upstreams, request)
        owner = owner_answer(answers)
        if owner is None:
            if not answers:
                raise CommandFailed("unavailable", f"no worker answered: {describe_down(down)}")
            note = f" ({describe_down(down)}: its calls cannot be reached)" if down else ""
            raise CommandFailed("not_found", f"no live call {call_of(request)!r}{note}")
        if owner.error is not None:
            raise CommandFailed(owner.error.code, owner.error.message)
        return Reply(owner.result, {"worker": owner.worker})

    # -- watches ----------------------------------------------------------------------------------

    async def _watch(
        self, connection: DebugConnection, upstreams: WorkerConnections, request: Request
    ) -> Reply:
        call = request.args.get("call")
        call_id = None if call is None else str(call)
        rate = int(request.args.get("rate", DEFAULT_RATE_PER_S))
        if request.worker is not None:
            targets = [self._check_worker(request.worker)]
        else:
            targets = list(self._workers.worker_numbers)
        relay = WatchRelay(upstreams, self._workers, call_id=call_id, rate=rate, targets=targets)
        down: list[int] = []

        async def start() -> tuple[Watcher, Release]:
            down.extend(await relay.attach_first(single=request.worker is not None))
            return relay.watcher, relay.release

        await connection.open_watch(request.id, start)
        upstreams.watches[str(request.id)] = relay
        attached = sorted(relay.attached)
        logger.info(
            "< debug %s watch %s on workers %s (rate %d/s)",
            connection.peer,
            call_id or "all calls",
            attached,
            rate,
        )
        result = {"watch": request.id, "call": call_id, "rate": rate, "workers": attached}
        return Reply(result, {"workers_down": down} if down else {})

    async def _unwatch(
        self, connection: DebugConnection, upstreams: WorkerConnections, request: Request
    ) -> dict[str, Any]:
        key = str(request.args["watch"])
        request_id, watcher, _ = connection.take_watch(key)
        relay = upstreams.watches.pop(key, None)
        if relay is not None:
            await relay.detach()
        return {
            "watch": request_id,
            "delivered": watcher.delivered_total,
            "dropped": watcher.dropped_total,
        }


def _reply(result: Any, extra: dict[str, Any]) -> Any:
    return Reply(result, extra) if extra else result
