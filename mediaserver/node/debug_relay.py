"""WatchRelay: one client's `watch` on the node, relayed from the same watch on its workers.

The node starts the watch on each target worker (with a call, only the worker that has it keeps
one) and puts their events, tagged with `worker`, through one local `Watcher` with the client's
rate: the client's rate limit, buffer and `dropped` count work as on one server, and events a
worker dropped are added to that count. A watch of every call attaches to a target worker that
comes back after a restart (`_keep_attached`) and tells the client with `worker` events (`down`
when a worker's connection closes, `up` when it is watched again). Loop only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from mediaserver.debug.protocol import CommandFailed
from mediaserver.debug.watch import DebugEvent, Watcher
from mediaserver.node.debug_routing import (
    WorkerAnswer,
    describe_down,
    owner_answer,
    relayed_event,
)
from mediaserver.node.debug_upstream import WorkerUnavailable

if TYPE_CHECKING:
    from mediaserver.node.debug_upstream import WorkerConnections, WorkerDebugClient, WorkerSockets

logger = logging.getLogger(__name__)

REATTACH_S = 0.5  # how often a watch of every call looks for a worker that came back


class WatchRelay:
    """One client watch: the workers' watches relayed into one local `Watcher`; an `EventSink`
    of each worker's connection."""

    def __init__(
        self,
        upstreams: WorkerConnections,
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
        if self._stopped:  # unwatched meanwhile
            client.forget(watch_id)
            self._upstreams.unwatch_later(client, watch_id)
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
        self._stop()
        if self._keeper is not None:
            self._keeper.cancel()

    async def detach(self) -> None:
        """`unwatch`: stop relaying and end the watch on every worker (each wait bounded).

        The keeper is left to end at its next round: a watch it is starting on a worker right
        now is ended as soon as it has started (`_attach`), not left running there.
        """
        attached = self._stop()
        await asyncio.gather(*(client.unwatch(watch_id) for client, watch_id in attached))

    def _stop(self) -> list[tuple[WorkerDebugClient, int]]:
        self._stopped = True
        attached = list(self.attached.values())
        self.attached.clear()
        for client, watch_id in attached:
            client.forget(watch_id)
        return attached
