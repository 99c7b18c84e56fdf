"""The node: one process that owns the public socket and N worker processes, and nothing else.

    mediaserver serve --workers N        (N > 1; with 1 there is no node, `app.run_server` runs)

    node: settings -> store (migrations, calls a crashed run left open, the demo tenant)
          -> the public socket (port 0 resolved here) -> a private run folder (mode 0700)
          -> N workers: `python -m mediaserver.node.worker`, each today's whole server
          -> the debug socket on debug.socket_path: one for every worker (`debug_proxy.py`)
          -> every worker ready -> the key (first run), the URLs, `listening on http://HOST:PORT`
          -> accept -> each connection handed to a worker with room (decision 0081)
          -> a worker that dies: its calls end `worker_crash`; it is restarted, within
             `server.worker_max_restarts` per `server.worker_restart_window_s`; beyond that every
             worker is stopped and the node exits 1 with one line saying why
          -> SIGTERM (drain) and SIGINT (stop) passed to every worker; exit 0 once all have exited

The node runs no media, no actors and no engines: it imports none of them, so it stays small and
a bug in a call can never take it down. Workers run in sessions of their own, so a terminal's
Ctrl-C reaches only the node, which passes it on once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from config.settings import Settings
from mediaserver.admission.ledger import LedgerState
from mediaserver.errors import ServerFailed, StartupError
from mediaserver.node.control import ControlChannel, ControlError, Message, channel_pair
from mediaserver.node.debug_proxy import DebugProxy
from mediaserver.node.handoff import Acceptor
from mediaserver.node.ledger import LedgerService
from mediaserver.node.run_dir import private_debug_path
from mediaserver.node.worker import WorkerIdentity, start_message
from mediaserver.owners import DeadOwnerSweep
from mediaserver.startup import announce, bind_socket, check_engines, prepare_store
from mediaserver.store import NotFound, Store, StoreError
from mediaserver.webhook_bodies import call_ended_body

logger = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # after the drain: a worker still running then is killed


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_count(settings: Settings) -> int:
    """`server.workers`, with 0 meaning one per usable CPU."""
    return settings.server.workers or usable_cpus()


def describe_exit(code: int) -> str:
    """`exited with code 3` or `killed by SIGKILL`."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with code {code}"


class WorkerProcess:
    """Worker number `index` across its restarts: its process, control channel and last state."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.owner_id = ""
        self.process: asyncio.subprocess.Process | None = None
        self.channel: ControlChannel | None = None
        self.ready = False
        self.admitting = False
        self.handed = 0  # connections handed since its last state report

    def describe(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return f"worker {self.index} (pid {pid})"


class Node:
    """The node's workers, its public socket and its supervision. Loop only."""

    def __init__(self, settings: Settings, *, workers: int, store: Store) -> None:
        self._settings = settings
        self._store = store
        self.node_id = uuid.uuid4().hex
        self._token = secrets.token_urlsafe(32)
        self._run_dir = tempfile.mkdtemp(prefix="mediaserver-node-")  # mode 0700
        self.workers = [WorkerProcess(index) for index in range(1, workers + 1)]
        self.ledger = LedgerService(LedgerState(settings.limits))
        self._restarts: deque[float] = deque()  # within the intensity window
        self._restart_count = 0  # since the node started
        self._acceptor: Acceptor | None = None
        self._stopping: signal.Signals | None = None
        self._gave_up: str | None = None
        self._listening = False
        self._changed = asyncio.Event()  # a worker became ready or exited
        self._all_exited = asyncio.Event()
        self._watchers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._sweep = DeadOwnerSweep(
            store,
            node_id=self.node_id,
            alive=lambda: [w.owner_id for w in self.workers if w.process is not None],
        )

    @property
    def run_dir(self) -> str:
        return self._run_dir

    # -- what the debug socket needs (`debug_proxy.WorkerSockets`) --------------------------------

    @property
    def worker_numbers(self) -> Sequence[int]:
        return [worker.index for worker in self.workers]

    def worker_debug_path(self, worker: int) -> str:
        return private_debug_path(self._run_dir, worker)

    def worker_up(self, worker: int) -> bool:
        """Ready (its debug socket listens by then) and not known to have exited."""
        slot = self.workers[worker - 1]
        return slot.ready and slot.channel is not None

    # -- start and run -------------------------------------------------------------------------

    async def start(self, listener: socket.socket) -> bool:
        """Start every worker and wait until each accepts connections; False when a signal came
        first (the node is stopping, not listening).

        Raises:
            StartupError: a worker exited while starting (its own stderr said why).
        """
        self._acceptor = Acceptor(listener, self.workers, slots=self.ledger.state.holders)
        for worker in self.workers:
            await self._spawn(worker)
        while not all(w.ready for w in self.workers) and self._stopping is None:
            self._changed.clear()
            await self._changed.wait()
        if self._gave_up is not None:
            await self._all_exited.wait()
            raise StartupError(self._gave_up)
        if self._stopping is not None:
            return False
        self._listening = True
        self._sweep.start()
        self._resume_accepting()
        return True

    def _resume_accepting(self) -> None:
        if self._acceptor is not None and self._listening and self._gave_up is None:
            self._acceptor.resume()

    def _pause_accepting(self) -> None:
        if self._acceptor is not None:
            self._acceptor.pause()

    async def run(self) -> int:
        """Serve until every worker has exited after a stop; 0.

        Raises:
            ServerFailed: workers died faster than the restart intensity allows.
        """
        await self._all_exited.wait()
        self._pause_accepting()
        if self._gave_up is not None:
            raise ServerFailed(self._gave_up)
        return 0

    def stop(self, sig: signal.Signals) -> None:
        """SIGTERM drains, SIGINT stops: passed to every worker (a second one as well)."""
        again = self._stopping is not None
        self._stopping = sig
        logger.info("< %s%s: passing it to %d workers", sig.name, " again" if again else "",
                    sum(w.process is not None for w in self.workers))  # fmt: skip
        for worker in self.workers:
            self._signal(worker, sig)
        if not again:
            deadline = self._settings.limits.drain_s + STOP_GRACE_S
            self._loop.call_later(deadline, self._kill_stragglers)
        self._check_all_exited()

    async def close(self) -> None:
        """After `run`: release the socket, the channels and the run folder."""
        await self._sweep.close()
        self._pause_accepting()
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.close()
        for task in list(self._watchers):
            task.cancel()
        shutil.rmtree(self._run_dir, ignore_errors=True)

    # -- workers -------------------------------------------------------------------------------

    async def _spawn(self, worker: WorkerProcess) -> None:
        worker.owner_id = uuid.uuid4().hex
        worker.ready = worker.admitting = False
        worker.handed = 0
        ours, theirs = channel_pair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mediaserver.node.worker",
                "--control-fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),  # stdout is the node's: one listening line, no more
                start_new_session=True,  # a terminal's Ctrl-C goes to the node alone
            )
        finally:
            theirs.close()
        holder = str(worker.index)
        worker.channel = ControlChannel(
            ours,
            on_message=lambda message, sockets: self._on_message(worker, message, sockets),
            on_call=lambda op, args: self.ledger.answer(holder, op, args),
            name=f"worker {worker.index} control",
        )
        identity = WorkerIdentity(
            index=worker.index,
            workers=len(self.workers),
            node_id=self.node_id,
            owner_id=worker.owner_id,
            run_dir=self._run_dir,
            token=self._token,
        )
        worker.channel.send(start_message(identity, self._settings))
        task = self._loop.create_task(self._watch(worker, worker.process))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        logger.info("= %s started", worker.describe())

    async def _watch(self, worker: WorkerProcess, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        await self._exited(worker, code)

    async def _exited(self, worker: WorkerProcess, code: int) -> None:
        worker.process = None
        worker.ready = worker.admitting = False
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        if not any(w.ready for w in self.workers):
            self._pause_accepting()  # until one is ready again: the backlog holds them
        freed = self.ledger.state.free_holder(str(worker.index))
        await self._end_calls_of(worker)
        self._changed.set()
        self._host_changed()
        how = describe_exit(code)
        if self._stopping is not None:
            log = logger.info if code == 0 else logger.warning
            log("= worker %d %s", worker.index, how)
            self._check_all_exited()
            return
        logger.error("= worker %d %s; %d calls were live on it", worker.index, how, len(freed))
        if not self._listening:
            # Dying while the node starts is a configuration problem, not a crash to retry.
            self._give_up(f"worker {worker.index} {how} while starting")
            return
        if self._over_intensity():
            settings = self._settings.server
            self._give_up(
                f"worker {worker.index} {how}; more than {settings.worker_max_restarts} worker "
                f"restarts within {settings.worker_restart_window_s:g} s: stopping every worker"
            )
            return
        await self._spawn(worker)

    async def _end_calls_of(self, worker: WorkerProcess) -> None:
        """End a dead worker's open calls `worker_crash` at its last heartbeat, with their
        `call.ended` webhooks (one store transaction, decision 0080); then the live workers
        look at the webhook outbox at once. A worker that exited cleanly retired its row and
        ended its own calls: nothing is left to do."""
        try:
            ended = await self._store.end_owner_calls(
                worker.owner_id, "worker_crash", call_ended_body=call_ended_body
            )
        except NotFound:
            return
        except StoreError as exc:  # the sweep finds the dead owner again
            logger.error("= worker %d's calls not ended yet: %s", worker.index, exc)
            return
        if ended:
            logger.warning(
                "= worker %d: %d calls ended worker_crash at its last heartbeat",
                worker.index,
                len(ended),
            )
            self._broadcast({"t": "webhooks"})

    def _over_intensity(self) -> bool:
        now = time.monotonic()
        window = self._settings.server.worker_restart_window_s
        while self._restarts and self._restarts[0] <= now - window:
            self._restarts.popleft()
        if len(self._restarts) >= self._settings.server.worker_max_restarts:
            return True
        self._restarts.append(now)
        self._restart_count += 1
        return False

    def _give_up(self, why: str) -> None:
        self._gave_up = why
        logger.error("= %s", why)
        self._stopping = signal.SIGINT
        for worker in self.workers:
            self._signal(worker, signal.SIGINT)
        self._check_all_exited()

    def _signal(self, worker: WorkerProcess, sig: signal.Signals) -> None:
        if worker.process is not None and worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(sig)

    def _kill_stragglers(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                logger.error("= %s still running after the drain: killing it", worker.describe())
                self._signal(worker, signal.SIGKILL)

    def _check_all_exited(self) -> None:
        if self._stopping is not None and all(w.process is None for w in self.workers):
            self._all_exited.set()

    # -- the control channels ------------------------------------------------------------------

    def _on_message(
        self, worker: WorkerProcess, message: Message, sockets: list[socket.socket]
    ) -> None:
        for sock in sockets:
            sock.close()  # workers never send us descriptors
        match message["t"]:
            case "ready":
                worker.ready = True
                self._state(worker, message)
                self._changed.set()
                logger.info("= worker %d ready (pid %s)", worker.index, message.get("pid"))
                self._resume_accepting()
            case "state":
                self._state(worker, message)
            case kind:
                logger.warning("= worker %d sent an unexpected %r", worker.index, kind)

    def _state(self, worker: WorkerProcess, message: Message) -> None:
        admitting = bool(message.get("admitting", False))
        worker.handed = 0
        if admitting != worker.admitting:
            worker.admitting = admitting
            self._host_changed()

    def _host_changed(self) -> None:
        """Tell every worker whether any of them admits new calls (their `/readyz`)."""
        up = [w for w in self.workers if w.ready]
        host: dict[str, Any] = {
            "t": "host",
            "admitting": any(w.admitting for w in up),
            "workers_up": len(up),
            "restarts": self._restart_count,
        }
        self._broadcast(host)

    def _broadcast(self, message: Message) -> None:
        """Send `message` to every ready worker."""
        for worker in self.workers:
            if worker.ready and worker.channel is not None:
                with contextlib.suppress(ControlError):
                    worker.channel.send(message)


async def run_node(settings: Settings, *, workers: int, out: TextIO | None = None) -> int:
    """`serve` with `workers` > 1: run the node until it stops; its exit code.

    Raises:
        StartupError: the configuration cannot run, or a worker died while starting.
        ServerFailed: workers died faster than the restart intensity allows.
    """
    out = out or sys.stdout
    check_engines(settings)
    store = await Store.open(settings.store.path, busy_timeout_ms=settings.store.busy_timeout_ms)
    try:
        node = Node(settings, workers=workers, store=store)
        debug = DebugProxy(settings.debug, node)
        try:
            # First: a second node started on the same settings stops here, before it ends the
            # running node's calls in the store as if a crash had left them open.
            await debug.start()
            key = await prepare_store(store, node_id=node.node_id)
            listener = bind_socket(settings.server.host, settings.server.port)
            try:
                with _signals_passed(node):
                    if await node.start(listener):
                        announce(out, key, listener, settings)
                    return await node.run()
            finally:
                listener.close()
        finally:
            await debug.close()
            await node.close()
    finally:
        await store.close()


@contextlib.contextmanager
def _signals_passed(node: Node) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop, sig)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
