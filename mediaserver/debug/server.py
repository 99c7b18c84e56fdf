"""DebugServer: the debug socket of a process that runs calls; `commands.py` answers its requests.

The sockets, connections, limits and watch streaming are `DebugListener`'s (`listener.py`); this
is the `CommandExecutor` that runs every command here: `hello`, `watch` and `unwatch` on the
connection (a watch subscribes to `DebugEvents`), the rest through `DebugCommands`. While anyone
watches, a poller publishes what changed in the call trees every `POLL_S`.

A `worker` argument is accepted as 1 (a single process is worker 1, so a script written for
`serve --workers N` runs here too); any other number is `bad_argument`.

Runs on the server's event loop; see `commands.py` for what each command reads and does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from mediaserver.debug.commands import DebugCommands
from mediaserver.debug.listener import DebugConnection, DebugListener, hello_info
from mediaserver.debug.monitor import LoopMonitor
from mediaserver.debug.poller import POLL_S, TreePoller, read_trees
from mediaserver.debug.protocol import CommandFailed, Request
from mediaserver.debug.watch import DEFAULT_RATE_PER_S, DebugEvents, Watcher

if TYPE_CHECKING:
    from actors.call_registry import CallRegistry
    from actors.runtime import Dispatcher
    from config.settings import DebugSettings
    from mediaserver.admission.load_gate import LoadGate
    from mediaserver.debug.listener import Release
    from mediaserver.store import Store

logger = logging.getLogger(__name__)


def debug_server(
    settings: DebugSettings,
    registry: CallRegistry,
    dispatcher: Dispatcher | None = None,
    store: Store | None = None,
    *,
    gate: LoadGate | None = None,
) -> DebugServer:
    """Build the debug server and its parts (not started; `await server.start()`)."""
    events = DebugEvents()
    commands = DebugCommands(
        settings,
        registry,
        events=events,
        monitor=LoopMonitor(),
        dispatcher=dispatcher,
        store=store,
        gate=gate,
    )
    return DebugServer(settings, commands)


class DebugServer:
    """The debug socket with the commands of this process: a `CommandExecutor`."""

    def __init__(self, settings: DebugSettings, commands: DebugCommands) -> None:
        self._settings = settings
        self.commands = commands
        self.events: DebugEvents = commands.events
        """Give it to the call edge: `outbox = events.tap(outbox)`, `events.publish(...)`."""
        self._listener = DebugListener(settings, self)
        self.path = settings.socket_path
        self._poller = TreePoller()
        self._poll_lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        return self._listener.tcp_address

    @property
    def connection_count(self) -> int:
        return self._listener.connection_count

    async def start(self) -> None:
        """Listen on the Unix socket (and TCP if configured).

        Raises:
            StartupError: a live server owns the socket, the path is not a socket or cannot be
                created, or TCP is asked for without a token.
        """
        await self._listener.start()
        self.commands.monitor.start()
        self._poll_task = asyncio.get_running_loop().create_task(self._poll(), name="debug-poll")

    async def close(self) -> None:
        """Stop listening, drop every connection, remove our socket file. Idempotent."""
        await self._listener.close()
        task, self._poll_task = self._poll_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.commands.monitor.stop()
        await self.commands.close()

    async def execute(self, connection: DebugConnection, request: Request) -> Any:
        """Run one authenticated request for `connection`."""
        if request.worker not in (None, 1):
            msg = f"no worker {request.worker}: this server is one process (worker 1)"
            raise CommandFailed("bad_argument", msg)
        match request.cmd:
            case "hello":
                return hello_info(self._settings)
            case "watch":
                result = await self._watch(connection, request)
                if self._poller.needs_baseline:
                    await self._poll_now()  # changes from now on are reported, not folded in
                return result
            case "unwatch":
                request_id, watcher, release = connection.take_watch(str(request.args["watch"]))
                release()
                return {
                    "watch": request_id,
                    "delivered": watcher.delivered_total,
                    "dropped": watcher.dropped_total,
                }
        result = await self.commands.run(request)
        if request.cmd == "stats":
            result["debug"]["connections"] = self._listener.connection_count
        return result

    async def _watch(self, connection: DebugConnection, request: Request) -> dict[str, Any]:
        call_id = request.args.get("call")
        rate = int(request.args.get("rate", DEFAULT_RATE_PER_S))

        async def start() -> tuple[Watcher, Release]:
            if call_id is not None and self.commands.registry.handle(str(call_id)) is None:
                raise CommandFailed("not_found", f"no live call {call_id!r}")
            watcher = self.events.subscribe(
                None if call_id is None else str(call_id), rate_per_s=rate
            )
            return watcher, lambda: self.events.unsubscribe(watcher)

        await connection.open_watch(request.id, start)
        what = call_id or "all calls"
        logger.info("< debug %s watch %s (rate %d/s)", connection.peer, what, rate)
        return {"watch": request.id, "call": call_id, "rate": rate}

    # -- the snapshot poller --------------------------------------------------------------------

    async def _poll(self) -> None:
        """While anyone watches, publish what changed in the call trees every `POLL_S`."""
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._poll_now()
            except Exception:  # a loop task: log and keep polling
                logger.exception("debug poll failed")

    async def _poll_now(self) -> None:
        async with self._poll_lock:
            if self.events.watching:
                await asyncio.to_thread(self._poll_once)
            else:
                self._poller.reset()

    def _poll_once(self) -> None:
        for call_id, kind, data in self._poller.poll(read_trees(self.commands.registry)):
            self.events.publish(call_id, kind, data)
