"""The hand-off: the node accepts on the public socket and passes each connection to a worker.

    listener readable -> accept (up to ACCEPT_BATCH a wake-up)
      -> placement: ready workers whose load gate admits first, then the fewest call slots held
         in the ledger plus connections handed since the worker's last report, then the lowest
         number (decision 0081)
      -> the connection's descriptor sent on that worker's control channel (SCM_RIGHTS); the
         node closes its own copy; a worker that cannot take it (gone) -> the next one

While no worker is ready the listener is not read: connections wait in the kernel's backlog
rather than being accepted and dropped. Loop only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from mediaserver.node.control import ControlChannel, ControlError

logger = logging.getLogger(__name__)

ACCEPT_BATCH = 64  # connections accepted per wake-up before other callbacks run


class Placeable(Protocol):
    """What placement reads of a worker (the node's `WorkerProcess`)."""

    index: int
    ready: bool
    admitting: bool
    handed: int  # connections handed since its last state report
    channel: ControlChannel | None


class Acceptor:
    """Accepts on `listener` and hands each connection to the best ready worker.

    Args:
        slots: call slots each worker holds in the node's ledger, by holder (`"1"`, `"2"`...).
    """

    def __init__(
        self,
        listener: socket.socket,
        workers: Sequence[Placeable],
        *,
        slots: Callable[[], Mapping[str, int]],
    ) -> None:
        self._listener = listener
        self._workers = workers
        self._slots = slots
        self._loop = asyncio.get_running_loop()
        self._reading = False

    def resume(self) -> None:
        """Read the listener again, if some worker is ready (idempotent)."""
        if not self._reading and any(w.ready for w in self._workers):
            self._loop.add_reader(self._listener.fileno(), self._accept)
            self._reading = True

    def pause(self) -> None:
        """Stop reading the listener: new connections wait in the backlog (idempotent)."""
        if self._reading:
            self._loop.remove_reader(self._listener.fileno())
            self._reading = False

    def placement(self) -> list[Placeable]:
        """Ready workers, best first."""
        held = self._slots()
        ready = [w for w in self._workers if w.ready]
        return sorted(
            ready, key=lambda w: (not w.admitting, held.get(str(w.index), 0) + w.handed, w.index)
        )

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and the like: the backlog keeps the rest
                logger.error("= accept failed: %s", exc.strerror or exc)
                return
            with conn:
                if not self._hand(conn):
                    logger.error("= no worker can take a connection: closing it")
                    self.pause()
                    return

    def _hand(self, conn: socket.socket) -> bool:
        """Give `conn` to the worker that should take it; False when none could."""
        for worker in self.placement():
            if worker.channel is None:
                continue
            try:
                worker.channel.send({"t": "conn"}, fds=[conn.fileno()])
            except ControlError:
                continue  # it is gone: the next best takes the connection
            worker.handed += 1
            return True
        return False
