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

A `watch` is relayed: the node starts the same watch on each worker (with a call, only on the
worker that has it) and puts their events, tagged with `worker`, through one local `Watcher` per
client watch, so the client's rate limit, buffer and `dropped` count work as on one server
(events a worker dropped are added to that count). A watch of every call attaches to a worker
that comes back after a restart, with `worker` events (`down`, `up`) in between. Loop only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mediaserver.debug.listener import DebugConnection, DebugListener, hello_info
from mediaserver.debug.protocol import CommandFailed, Reply, Request
from mediaserver.debug.watch import DEFAULT_RATE_PER_S, DebugEvent, Watcher
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
    relayed_event,
    route,
    tagged,
)
from mediaserver.node.debug_upstream import WorkerDebugClient, WorkerUnavailable

if TYPE_CHECKING:
    from config.settings import DebugSettings
    from mediaserver.debug.listener import Release

logger = logging.getLogger(__name__)

REATTACH_S = 0.5  # how often a watch of every call looks for a worker that came back


class WorkerSockets(Protocol):
    """What the proxy needs of the node: its workers, where their debug sockets are, which run."""

    @property
    def worker_numbers(self) -> Sequence[int]: ...

    def worker_debug_path(self, worker: int) -> str: ...

    def worker_up(self, worker: int) -> bool:
        """True once the worker said it is ready (its debug socket listens), until it exits."""
        ...


class DebugProxy:
    """The node's debug socket: a `CommandExecutor` that asks the workers; see the docstring."""

    def __init__(self, settings: DebugSettings, workers: WorkerSockets) -> None:
        self._settings = settings
        self._workers = workers
        self._listener = DebugListener(settings, self)
        self._upstreams: dict[DebugConnection, _Upstreams] = {}

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

    def _upstreams_of(self, connection: DebugConnection) -> _Upstreams:
        upstreams = self._upstreams.get(connection)
        if upstreams is None:
            upstreams = self._upstreams[connection] = _Upstreams(self._workers)

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
        self, upstreams: _Upstreams, request: Request
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

    async def _owner(self, upstreams: _Upstreams, request: Request) -> Reply:
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
        self, connection: DebugConnection, upstreams: _Upstreams, request: Request
    ) -> Reply:
        call = request.args.get("call")
        call_id = None if call is None else str(call)
        rate = int(request.args.get("rate", DEFAULT_RATE_PER_S))
        if request.worker is not None:
            targets = [self._check_worker(request.worker)]
        else:
            targets = list(self._workers.worker_numbers)
        relay = _RelayedWatch(upstreams, self._workers, call_id=call_id, rate=rate, targets=targets)
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
        self, connection: DebugConnection, upstreams: _Upstreams, request: Request
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


class _Upstreams:
    """One client connection's connections to the workers, each opened when first needed."""

    def __init__(self, workers: WorkerSockets) -> None:
        self._workers = workers
        self._clients: dict[int, WorkerDebugClient] = {}
        self._connecting: dict[int, asyncio.Lock] = {}
        self.watches: dict[str, _RelayedWatch] = {}

    async def client(self, worker: int) -> WorkerDebugClient:
        """The open connection to `worker`, connecting (again) if needed.

        Raises:
            WorkerUnavailable: it is down, or does not accept the connection in time.
        """
        if not self._workers.worker_up(worker):
            raise WorkerUnavailable(worker, "is down (restarting?)")
        lock = self._connecting.setdefault(worker, asyncio.Lock())
        async with lock:  # one connection per worker, even when requests ask at once
            client = self._clients.get(worker)
            if client is None or client.closed:
                path = self._workers.worker_debug_path(worker)
                client = self._clients[worker] = await WorkerDebugClient.connect(worker, path)
        return client

    async def ask(self, worker: int, request: Request) -> WorkerAnswer:
        """`request` (without its `worker`) to `worker`: its result, or the error it caused."""
        try:
            client = await self.client(worker)
            result = await client.request(request.cmd, request.args)
        except CommandFailed as exc:
            return WorkerAnswer(worker=worker, error=exc, received_at=time.monotonic())
        return WorkerAnswer(worker=worker, result=result, received_at=time.monotonic())

    def close(self) -> None:
        for relay in self.watches.values():
            relay.release()
        self.watches.clear()
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class _RelayedWatch:
    """One client watch: the workers' watches relayed into one local `Watcher`; an `EventSink`."""

    def __init__(
        self,
        upstreams: _Upstreams,
        workers: WorkerSockets,
        *,
        call_id: str | None,
        rate: int,
        targets: list[int],
    ) -> None:
        self._upstreams = upstreams
        self._workers = workers
        self.call_id = call_id
        self._args: dict[str, Any] = {"rate": rate} | ({"call": call_id} if call_id else {})
        self._targets = targets
        self.watcher = Watcher(call_id, rate_per_s=rate)
        self.attached: dict[int, tuple[WorkerDebugClient, int]] = {}
        self._stopped = False
        self._keeper: asyncio.Task[None] | None = None

    async def attach_first(self, *, single: bool) -> list[int]:
        """Start the watch on the target workers; the workers that are down.

        With a call, only the worker that has it keeps the watch (the others say `not_found`).
        A watch of every call goes on without the workers that are down, and attaches to them
        once they are up (`_keep_attached`).

        Raises:
            CommandFailed: the one target worker is down or answered with an error (`single`);
                no worker has the call (`not_found`); every worker answered with an error.
        """
        up = [w for w in self._targets if self._workers.worker_up(w)]
        down = [w for w in self._targets if w not in up]
        if single and down:
            raise WorkerUnavailable(down[0], "is down (restarting?)")
        answers = await asyncio.gather(*(self._attach(worker) for worker in up))
        down += [a.worker for a in answers if isinstance(a.error, WorkerUnavailable)]
        answered = [a for a in answers if not isinstance(a.error, WorkerUnavailable)]
        first_error = next((a.error for a in answers if a.error is not None), None)
        if single and first_error is not None:
            raise CommandFailed(first_error.code, first_error.message)
        if self.call_id is not None:
            owner = owner_answer(answered)
            if owner is None:
                note = f" ({describe_down(down)})" if down else ""
                raise CommandFailed("not_found", f"no live call {self.call_id!r}{note}")
            if owner.error is not None:
                raise CommandFailed(owner.error.code, owner.error.message)
        else:
            failed = [a.error for a in answered if a.error is not None]
            if failed and len(failed) == len(answered):
                raise CommandFailed(failed[0].code, failed[0].message)  # e.g. `busy` everywhere
            self._keeper = asyncio.get_running_loop().create_task(self._keep_attached())
        return sorted(down)

    async def _attach(self, worker: int) -> WorkerAnswer:
        try:
            client = await self._upstreams.client(worker)
            watch_id = await client.watch(self._args, self)
        except CommandFailed as exc:
            return WorkerAnswer(worker=worker, error=exc)
        if self._stopped:
            client.forget(watch_id)
        else:
            self.attached[worker] = (client, watch_id)
        return WorkerAnswer(worker=worker, result=watch_id)

    async def _keep_attached(self) -> None:
        """A watch of every call: attach to each target worker that is up and not attached."""
        while not self._stopped:
            await asyncio.sleep(REATTACH_S)
            for worker in self._targets:
                if worker in self.attached or not self._workers.worker_up(worker):
                    continue
                try:
                    answer = await self._attach(worker)
                except Exception:  # a loop task: log, and try again at the next round
                    logger.exception("debug watch: attaching to worker %d failed", worker)
                    continue
                if answer.error is None and not self._stopped:
                    self._offer_worker_state(worker, "up")

    # -- EventSink ------------------------------------------------------------------------------

    def event(self, worker: int, document: dict[str, Any]) -> None:
        if document.get("event") == "dropped":
            count = document.get("count")
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                self.watcher.count_dropped(count)
            return
        self.watcher.offer(relayed_event(worker, document))

    def lost(self, worker: int) -> None:
        if self.attached.pop(worker, None) is not None and not self._stopped:
            self._offer_worker_state(worker, "down")

    def _offer_worker_state(self, worker: int, state: str) -> None:
        logger.info("= debug watch: worker %d %s", worker, state)
        event = DebugEvent(
            at=time.time(),
            call_id=self.call_id,
            kind="worker",
            data={"worker": worker, "state": state},
            worker=worker,
        )
        self.watcher.offer(event)

    # -- ending ---------------------------------------------------------------------------------

    def release(self) -> None:
        """Stop relaying, without a word to the workers (their connections are closing)."""
        self._stopped = True
        if self._keeper is not None:
            self._keeper.cancel()
        for client, watch_id in self.attached.values():
            client.forget(watch_id)
        self.attached.clear()

    async def detach(self) -> None:
        """`unwatch`: stop relaying and end the watch on every worker (each wait bounded)."""
        attached = list(self.attached.values())
        self.release()
        await asyncio.gather(*(client.unwatch(watch_id) for client, watch_id in attached))
