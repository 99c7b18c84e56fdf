"""Who owns calls, who is dead, and what becomes of a dead owner's calls (decision 0080).

Every process that runs calls has an owner row in the store (`OwnerHeartbeat`: registered on
start, `last_seen` written every `HEARTBEAT_S`, retired on a clean exit) and stamps its calls
with its id. Whoever finds an owner dead ends its open calls, with their `call.ended` webhooks,
in one store transaction (`end_dead_owners`):

    the node            at start and every SWEEP_EVERY_S: its workers and a previous run's
    a single process    at start and every SWEEP_EVERY_S: a previous run's owners

An owner is dead when it is on this host and its pid is gone, or when it has not beaten for
`STALE_AFTER_S` (another host, or a pid reused since). Its calls end `worker_crash` when it was
a worker of the caller's own node, `server_crash` otherwise, at its `last_seen`. A live owner is
never touched: a process that starts next to live siblings leaves their calls alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from actors.messages import CrashReason
from mediaserver.periodic import Every
from mediaserver.store import Call, NotFound, Owner, Store, StoreError
from mediaserver.webhook_bodies import call_ended_body

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# Three busy timeouts (`store.busy_timeout_ms`, 5 s by default) without one heartbeat written:
# past that the owner is hung or cut off from the file, not just waiting for a lock.
STALE_AFTER_S = 15.0
SWEEP_EVERY_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EndedCalls:
    """Calls one sweep ended together, for the caller to log once."""

    owner: Owner | None  # None: calls written before owners existed (schema v4)
    reason: CrashReason
    calls: tuple[Call, ...]

    def __str__(self) -> str:
        if self.owner is None:
            return f"{len(self.calls)} calls without an owner ended {self.reason}"
        owner = self.owner
        return (
            f"owner {owner.id} (node {owner.node_id}, worker {owner.worker_id}, pid {owner.pid}"
            f" on {owner.host}) found dead: {len(self.calls)} calls ended {self.reason}"
            f" at its last heartbeat"
        )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (`os.kill(pid, 0)`, no signal sent).

    A zombie (exited, not yet reaped by its parent) counts as alive: the node reaps its
    workers, and a process of another run has long been reaped.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists and belongs to another user
        return True
    return True


def is_dead(owner: Owner, *, host: str, now: float, stale_after_s: float = STALE_AFTER_S) -> bool:
    """The policy: gone from this host, or silent for longer than `stale_after_s`."""
    if owner.host == host and not pid_alive(owner.pid):
        return True
    return now - owner.last_seen > stale_after_s


async def end_dead_owners(
    store: Store,
    *,
    node_id: str,
    host: str | None = None,
    alive: Collection[str] = (),
    at_start: bool = False,
    stale_after_s: float = STALE_AFTER_S,
    clock: Callable[[], float] = time.time,
) -> list[EndedCalls]:
    """End the open calls of every dead owner, with their webhooks; return what was ended.

    Args:
        node_id: the caller's node (a single process is its own node): a dead owner of this
            node was one of its workers (`worker_crash`); any other, a whole server
            (`server_crash`).
        host: this host's name, as owners record it; by default `socket.gethostname()`.
        alive: owner ids the caller knows are alive (its own), never ended whatever their row.
        at_start: also end the calls with no owner at all (written before schema v4). Only
            before this host takes calls: nothing else can tell such a call is dead.

    Raises:
        StoreError: the store could not be read or written; what was ended before stays
            ended, the rest is found again by the next sweep.
    """
    host = host or socket.gethostname()
    ended: list[EndedCalls] = []
    if at_start:
        calls = await store.end_unowned_calls(call_ended_body=call_ended_body)
        if calls:
            ended.append(EndedCalls(owner=None, reason="server_crash", calls=tuple(calls)))
    now = clock()
    for owner in await store.list_owners():
        if owner.id in alive or not is_dead(owner, host=host, now=now, stale_after_s=stale_after_s):
            continue
        reason: CrashReason = "worker_crash" if owner.node_id == node_id else "server_crash"
        try:
            calls = await store.end_owner_calls(
                owner.id, reason, call_ended_body=call_ended_body, if_last_seen=owner.last_seen
            )
        except NotFound:
            # Another process ended it first, or it beat since we read it: not ours to end.
            logger.debug("= owner %s left alone: gone or seen since", owner.id)
            continue
        ended.append(EndedCalls(owner=owner, reason=reason, calls=tuple(calls)))
    return ended


class OwnerHeartbeat:
    """This process's owner row: registered by `start`, beaten every second, retired by `close`.

    Loop only. The beating task logs store errors and keeps going; it never raises into the
    server. If another process found this owner dead (its row is gone: a beat was missed for
    longer than `STALE_AFTER_S`), the row is registered again, so calls started from then on are
    accounted for, and `on_lost` is called: the calls that were open have been ended.

    Args:
        owner_id: unique per run (for example `f"{node_id}.{worker_id}"` with a fresh node id).
        host, pid: recorded for the dead-owner policy; this host and process by default.
    """

    def __init__(
        self,
        store: Store,
        owner_id: str,
        *,
        node_id: str,
        worker_id: int = 0,
        host: str | None = None,
        pid: int | None = None,
        interval_s: float = HEARTBEAT_S,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.owner_id = owner_id
        self._store = store
        self._node_id = node_id
        self._worker_id = worker_id
        self._host = host or socket.gethostname()
        self._pid = os.getpid() if pid is None else pid
        self._interval_s = interval_s
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Owner:
        """Register the row and start beating; call before this process starts any call.

        Raises:
            StoreError: the row could not be written (also `Conflict` for a taken id); the
                process must not take calls then.
        """
        owner = await self._register()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"owner-heartbeat-{self.owner_id}"
            )
        return owner

    async def close(self) -> list[Call]:
        """Stop beating and retire the row; return the calls that were still open (`shutdown`).

        A store error is logged, not raised: the row then goes stale and the next sweep ends
        what is left, at the last beat.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            ended = await self._store.retire_owner(self.owner_id, call_ended_body=call_ended_body)
        except StoreError as exc:
            logger.error("= owner %s not retired: %s", self.owner_id, exc)
            return []
        if ended:
            logger.warning(
                "= owner %s retired with %d calls still open (ended shutdown)",
                self.owner_id,
                len(ended),
            )
        return ended

    async def _register(self) -> Owner:
        return await self._store.register_owner(
            self.owner_id,
            node_id=self._node_id,
            worker_id=self._worker_id,
            host=self._host,
            pid=self._pid,
        )

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                if not await self._store.heartbeat(self.owner_id):
                    await self._lost()
            except StoreError as exc:
                if not failing:
                    logger.warning("= owner %s heartbeat not written: %s", self.owner_id, exc)
                failing = True
                continue
            except Exception:
                logger.exception("= owner %s heartbeat", self.owner_id)
                continue
            if failing:
                logger.info("= owner %s heartbeat written again", self.owner_id)
                failing = False

    async def _lost(self) -> None:
        logger.error(
            "= owner %s was found dead by another process (its heartbeat went stale): its open"
            " calls were ended; registering again",
            self.owner_id,
        )
        await self._register()
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                logger.exception("= owner %s on_lost", self.owner_id)


class DeadOwnerSweep:
    """`end_dead_owners` every `SWEEP_EVERY_S` on the loop, each finding logged once.

    Args:
        alive: the owner ids the caller knows are alive now (its own, or its workers'), read at
            each sweep.
    """

    def __init__(
        self,
        store: Store,
        *,
        node_id: str,
        alive: Callable[[], Collection[str]],
        every_s: float = SWEEP_EVERY_S,
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._alive = alive
        self._every = Every(every_s, self._sweep, name="owner-sweep")

    def start(self) -> None:
        self._every.start()

    async def close(self) -> None:
        await self._every.close()

    async def _sweep(self) -> None:
        try:
            found = await end_dead_owners(self._store, node_id=self._node_id, alive=self._alive())
        except StoreError as exc:  # the next sweep tries again
            logger.warning("= dead owners not swept: %s", exc)
            return
        for ended in found:
            logger.warning("= %s", ended)


class Ownership:
    """This process as an owner of calls: its heartbeat, and for a server that is its own node
    (a single process) the sweep that ends a dead server's calls. Loop only."""

    def __init__(
        self, store: Store, *, owner_id: str, node_id: str, worker_id: int = 0, sweep: bool
    ) -> None:
        self.owner_id = owner_id
        self._heartbeat = OwnerHeartbeat(store, owner_id, node_id=node_id, worker_id=worker_id)
        self._sweep = (
            DeadOwnerSweep(store, node_id=node_id, alive=lambda: (owner_id,)) if sweep else None
        )

    async def start(self) -> None:
        """Register before the first call (`StoreError` if the row cannot be written)."""
        await self._heartbeat.start()
        if self._sweep is not None:
            self._sweep.start()

    async def close(self) -> None:
        """After the last call: stop sweeping, retire the row."""
        if self._sweep is not None:
            await self._sweep.close()
        await self._heartbeat.close()
