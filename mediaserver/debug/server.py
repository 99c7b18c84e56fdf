"""DebugServer: the debug socket. asyncio I/O around `protocol.py` and `commands.py`.

A Unix socket at `debug.socket_path`, mode 0600 (set before `listen()`, so nobody can connect
while it is wider). A socket file nobody listens on (a crashed run) is replaced; one a live
server listens on is a `StartupError`, as is a path that is not a socket. Optionally TCP on
127.0.0.1:`debug.tcp_port`, only with `debug.token`: a TCP client must send `hello` with the
token first; a wrong token closes its connection.

Never harmed by a client: requests are parsed with limits (`protocol.LineBuffer`); every bad one
gets an error response; at most `MAX_IN_FLIGHT` requests of a connection run at a time (then it
stops reading it); writes never wait: a connection whose unsent output passes `MAX_WRITE_BUFFER`
(it does not read) is closed, and `watch` events are only moved from their bounded buffers to
the socket while its output is below `WATCH_LOW_WATER`, so a slow watcher loses events, counted,
instead of growing memory. Responses to one connection may come out of order: match them by id.

Runs on the server's event loop; see `commands.py` for what each command reads and does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from mediaserver.debug.commands import DebugCommands
from mediaserver.debug.monitor import LoopMonitor
from mediaserver.debug.poller import POLL_S, TreePoller, read_trees
from mediaserver.debug.protocol import (
    COMMANDS,
    PROTOCOL_VERSION,
    BadRequest,
    CommandFailed,
    DebugError,
    LineBuffer,
    LineTooLong,
    Request,
    dropped_line,
    error_line,
    event_line,
    parse_request,
    result_line,
)
from mediaserver.debug.socket_file import bind_unix_socket
from mediaserver.debug.watch import DEFAULT_RATE_PER_S, DebugEvents, Watcher
from mediaserver.errors import StartupError

if TYPE_CHECKING:
    from actors.call_registry import CallRegistry
    from actors.runtime import Dispatcher
    from config.settings import DebugSettings
    from mediaserver.admission.load_gate import LoadGate
    from mediaserver.store import Store

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
MAX_IN_FLIGHT = 8
MAX_WATCHES = 4  # per connection
MAX_WRITE_BUFFER = 1024 * 1024
WATCH_LOW_WATER = 64 * 1024
FLUSH_S = 0.05
FLUSH_BATCH = 500
READ_CHUNK = 64 * 1024


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
    def __init__(self, settings: DebugSettings, commands: DebugCommands) -> None:
        self._settings = settings
        self.commands = commands
        self.events: DebugEvents = commands.events
        """Give it to the call edge: `outbox = events.tap(outbox)`, `events.publish(...)`."""
        self.path = settings.socket_path
        self.tcp_address: tuple[str, int] | None = None
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._inode: int | None = None
        self._poller = TreePoller()
        self._poll_lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen on the Unix socket (and TCP if configured).

        Raises:
            StartupError: a live server owns the socket, the path is not a socket or cannot be
                created, or TCP is asked for without a token.
        """
        settings = self._settings
        if settings.tcp_port and settings.token is None:
            msg = "debug.tcp_port needs debug.token (MEDIASERVER_DEBUG__TOKEN)"
            raise StartupError(msg)
        sock, self._inode = bind_unix_socket(self.path)
        try:
            self._servers.append(
                await asyncio.start_unix_server(self._serve_unix, sock=sock, limit=READ_CHUNK)
            )
            if settings.tcp_port:
                tcp = await asyncio.start_server(
                    self._serve_tcp, host="127.0.0.1", port=settings.tcp_port, limit=READ_CHUNK
                )
                self._servers.append(tcp)
                self.tcp_address = tcp.sockets[0].getsockname()[:2]
        except OSError as exc:
            await self.close()
            msg = f"cannot open the debug socket's TCP port {settings.tcp_port}: {exc.strerror}"
            raise StartupError(msg) from None
        self.commands.monitor.start()
        self._poll_task = asyncio.get_running_loop().create_task(self._poll(), name="debug-poll")
        tcp_note = (
            f" and tcp {self.tcp_address[0]}:{self.tcp_address[1]}" if self.tcp_address else ""
        )
        logger.info("= debug socket on %s (mode 0600)%s", self.path, tcp_note)

    async def close(self) -> None:
        """Stop listening, drop every connection, remove our socket file. Idempotent."""
        for server in self._servers:
            server.close()
        self._servers = []
        for connection in list(self._connections):
            connection.abort()
        task, self._poll_task = self._poll_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.commands.monitor.stop()
        await self.commands.close()
        if self._inode is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:  # still ours, not a successor's
                    os.unlink(self.path)
            self._inode = None

    # -- connections ------------------------------------------------------------------------------

    async def _serve_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, peer="unix", authenticated=True)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        await self._serve(reader, writer, peer=f"tcp {host}:{port}", authenticated=False)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: str,
        authenticated: bool,
    ) -> None:
        connection = _Connection(self, reader, writer, peer=peer, authenticated=authenticated)
        if len(self._connections) >= MAX_CONNECTIONS:
            logger.warning("< debug %s refused: %d connections open", peer, MAX_CONNECTIONS)
            connection.send(error_line(CommandFailed("busy", "too many debug connections")))
            connection.close()
            return
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    async def execute(self, connection: _Connection, request: Request) -> Any:
        """Run one request for `connection` (the connection-bound commands are here)."""
        if request.cmd == "hello":
            return connection.hello(request, self._settings)
        if not connection.authenticated:
            raise CommandFailed("unauthorized", "send `hello` with the token first")
        if request.cmd == "watch":
            result = connection.watch(request)
            if self._poller.needs_baseline:
                await self._poll_now()  # changes from now on are reported, not folded in
            return result
        if request.cmd == "unwatch":
            return connection.unwatch(request)
        result = await self.commands.run(request)
        if request.cmd == "stats":
            result["debug"]["connections"] = len(self._connections)
        return result

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


class _Connection:
    """One debug client: reads requests, answers each, streams its watches."""

    def __init__(
        self,
        server: DebugServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: str,
        authenticated: bool,
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self.peer = peer
        self.authenticated = authenticated
        self._closed = False
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._watches: dict[str, tuple[str | int, Watcher]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def run(self) -> None:
        logger.debug("< debug %s connected", self.peer)
        lines = LineBuffer()
        try:
            while not self._closed:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    break
                lines.receive_data(data)
                for line in lines.lines():
                    if isinstance(line, LineTooLong):
                        self._refuse_long_line(line)
                    else:
                        await self._dispatch(line)
                if lines.fatal:
                    logger.warning("< debug %s: endless line; closing", self.peer)
                    msg = "a line without an end: closing the connection"
                    self.send(error_line(BadRequest("line_too_long", msg)))
                    break
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        finally:
            await self._cleanup()

    def _refuse_long_line(self, line: LineTooLong) -> None:
        logger.warning("< debug %s: line over %d bytes discarded", self.peer, line.size)
        msg = f"line longer than the limit (over {line.size} bytes): discarded"
        self.send(error_line(BadRequest("line_too_long", msg)))

    async def _dispatch(self, line: bytes) -> None:
        try:
            request = parse_request(line)
        except BadRequest as exc:
            logger.debug("< debug %s: bad request (%s)", self.peer, exc.code)
            self.send(error_line(exc))
            return
        logger.debug("< debug %s %s id=%r", self.peer, request.cmd, request.id)
        await self._in_flight.acquire()  # at the limit, stop reading: the client waits, not us
        task = asyncio.get_running_loop().create_task(self._answer(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: Request) -> None:
        started = time.monotonic()
        try:
            result = await self._server.execute(self, request)
        except DebugError as exc:
            self.send(error_line(exc, request.id))
            if exc.code == "unauthorized" and request.cmd == "hello":
                self.close()  # a wrong token: no second guess on this connection
        except Exception:  # a bug in a command: answer, log, keep serving
            logger.exception("debug command %s failed", request.cmd)
            failed = CommandFailed("internal", f"{request.cmd} failed; see the server log")
            self.send(error_line(failed, request.id))
        else:
            self.send(result_line(request.id, result))
            logger.debug(
                "> debug %s %s id=%r in %.1f ms",
                self.peer,
                request.cmd,
                request.id,
                (time.monotonic() - started) * 1000,
            )
        finally:
            self._in_flight.release()

    # -- writing ----------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue `data` for the client; never waits. A client that does not read is closed."""
        transport = self._writer.transport
        if self._closed or transport.is_closing():
            return
        if transport.get_write_buffer_size() + len(data) > MAX_WRITE_BUFFER:
            logger.warning(
                "> debug %s is not reading (%d bytes unsent): closing it",
                self.peer,
                transport.get_write_buffer_size(),
            )
            self.abort()
            return
        self._writer.write(data)

    def close(self) -> None:
        self._closed = True
        self._writer.close()
        self._reader.feed_eof()  # wake `run` so it cleans up

    def abort(self) -> None:
        self._closed = True
        self._writer.transport.abort()
        self._reader.feed_eof()

    async def _cleanup(self) -> None:
        self._closed = True
        for _, watcher in self._watches.values():
            self._server.events.unsubscribe(watcher)
        self._watches.clear()
        pending = [*self._tasks, *([self._flusher] if self._flusher else [])]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._writer.close()
        logger.debug("< debug %s disconnected", self.peer)

    # -- connection-bound commands -------------------------------------------------------------

    def hello(self, request: Request, settings: DebugSettings) -> dict[str, Any]:
        token = request.args.get("token")
        if not self.authenticated:
            expected = settings.token.get_secret_value() if settings.token else None
            if (
                expected is None
                or not isinstance(token, str)
                or not hmac.compare_digest(token.encode(), expected.encode())
            ):
                logger.warning("< debug %s: bad token; closing", self.peer)
                raise CommandFailed("unauthorized", "wrong or missing token")
            self.authenticated = True
        return {
            "protocol": PROTOCOL_VERSION,
            "server": "mediaserver",
            "pid": os.getpid(),
            "commands": list(COMMANDS),
            "fault_injection": settings.fault_injection,
        }

    def watch(self, request: Request) -> dict[str, Any]:
        key = str(request.id)
        if key in self._watches:
            raise CommandFailed("bad_argument", f"a watch with id {request.id!r} is running")
        if len(self._watches) >= MAX_WATCHES:
            raise CommandFailed("busy", f"at most {MAX_WATCHES} watches per connection")
        call_id = request.args.get("call")
        if call_id is not None and self._server.commands.registry.handle(str(call_id)) is None:
            raise CommandFailed("not_found", f"no live call {call_id!r}")
        rate = int(request.args.get("rate", DEFAULT_RATE_PER_S))
        watcher = self._server.events.subscribe(
            None if call_id is None else str(call_id), rate_per_s=rate
        )
        self._watches[key] = (request.id, watcher)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        logger.info("< debug %s watch %s (rate %d/s)", self.peer, call_id or "all calls", rate)
        return {"watch": request.id, "call": call_id, "rate": rate}

    def unwatch(self, request: Request) -> dict[str, Any]:
        key = str(request.args["watch"])
        found = self._watches.pop(key, None)
        if found is None:
            raise CommandFailed("not_found", f"no watch {key!r} on this connection")
        self._server.events.unsubscribe(found[1])
        return {
            "watch": found[0],
            "delivered": found[1].delivered_total,
            "dropped": found[1].dropped_total,
        }

    async def _flush(self) -> None:
        """Move watch events to the socket while the client keeps up; never wait on it."""
        transport = self._writer.transport
        while not self._closed:
            await asyncio.sleep(FLUSH_S)
            for watch_id, watcher in list(self._watches.values()):
                if transport.get_write_buffer_size() > WATCH_LOW_WATER:
                    break  # it is behind: leave the events to the bounded buffer, which counts
                events, dropped = watcher.take(FLUSH_BATCH)
                if events:
                    self.send(b"".join(event_line(watch_id, e.as_json()) for e in events))
                if dropped:
                    self.send(dropped_line(watch_id, dropped))
