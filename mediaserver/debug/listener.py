"""DebugListener: the debug socket's sockets and connections, whatever answers the commands.

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

What answers a request is a `CommandExecutor`: `DebugServer` (`server.py`) runs the commands in
this process; the node's `DebugProxy` (`mediaserver/node/debug_proxy.py`) passes them on to its
workers. Both get the same protections, authentication and watch streaming from here. Loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from mediaserver.debug.protocol import (
    COMMANDS,
    PROTOCOL_VERSION,
    BadRequest,
    CommandFailed,
    DebugError,
    LineBuffer,
    LineTooLong,
    Reply,
    Request,
    dropped_line,
    error_line,
    event_line,
    parse_request,
    result_line,
)
from mediaserver.debug.socket_file import bind_unix_socket
from mediaserver.errors import StartupError

if TYPE_CHECKING:
    from config.settings import DebugSettings
    from mediaserver.debug.watch import Watcher

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
MAX_IN_FLIGHT = 8
MAX_WATCHES = 4  # per connection
MAX_WRITE_BUFFER = 1024 * 1024
WATCH_LOW_WATER = 64 * 1024
FLUSH_S = 0.05
FLUSH_BATCH = 500
READ_CHUNK = 64 * 1024

Release = Callable[[], None]
"""Ends a watch's feed (unsubscribes its `Watcher`); called once, on the loop."""


class CommandExecutor(Protocol):
    """Answers an authenticated connection's requests, `hello` included."""

    async def execute(self, connection: DebugConnection, request: Request) -> Any:
        """The result (or a `Reply`); a `DebugError` becomes the error response."""
        ...


def hello_info(settings: DebugSettings) -> dict[str, Any]:
    """What `hello` answers about this process and the protocol."""
    return {
        "protocol": PROTOCOL_VERSION,
        "server": "mediaserver",
        "pid": os.getpid(),
        "commands": list(COMMANDS),
        "fault_injection": settings.fault_injection,
    }


class DebugListener:
    """The Unix socket (and TCP), the connection limit and authentication; see the docstring."""

    def __init__(self, settings: DebugSettings, executor: CommandExecutor) -> None:
        self._settings = settings
        self._executor = executor
        self.path = settings.socket_path
        self.tcp_address: tuple[str, int] | None = None
        self._servers: list[asyncio.Server] = []
        self._connections: set[DebugConnection] = set()
        self._inode: int | None = None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

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
        connection = DebugConnection(self, reader, writer, peer=peer, authenticated=authenticated)
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

    async def execute(self, connection: DebugConnection, request: Request) -> Any:
        """Authenticate (`hello` on TCP), then let the executor answer."""
        if request.cmd == "hello":
            connection.authenticate(request, self._settings)
        elif not connection.authenticated:
            raise CommandFailed("unauthorized", "send `hello` with the token first")
        return await self._executor.execute(connection, request)


class _Watch:
    """One watch of a connection: its request id, and its `Watcher` once it has started."""

    def __init__(self, request_id: str | int) -> None:
        self.request_id = request_id
        self.watcher: Watcher | None = None
        self.release: Release = lambda: None


class DebugConnection:
    """One debug client: reads requests, answers each, streams its watches."""

    def __init__(
        self,
        listener: DebugListener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: str,
        authenticated: bool,
    ) -> None:
        self._listener = listener
        self._reader = reader
        self._writer = writer
        self.peer = peer
        self.authenticated = authenticated
        self._closed = False
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._watches: dict[str, _Watch] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._at_close: list[Callable[[], None]] = []

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

    def at_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop) once the connection is gone and its requests stopped."""
        self._at_close.append(callback)

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
            result = await self._listener.execute(self, request)
        except DebugError as exc:
            self.send(error_line(exc, request.id))
            if exc.code == "unauthorized" and request.cmd == "hello":
                self.close()  # a wrong token: no second guess on this connection
        except Exception:  # a bug in a command: answer, log, keep serving
            logger.exception("debug command %s failed", request.cmd)
            failed = CommandFailed("internal", f"{request.cmd} failed; see the server log")
            self.send(error_line(failed, request.id))
        else:
            if isinstance(result, Reply):
                self.send(result_line(request.id, result.result, result.extra))
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
        for watch in self._watches.values():
            watch.release()
        self._watches.clear()
        pending = [*self._tasks, *([self._flusher] if self._flusher else [])]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for callback in self._at_close:
            try:
                callback()
            except Exception:  # a boundary: one failed clean-up must not skip the rest
                logger.exception("debug %s: clean-up failed", self.peer)
        self._writer.close()
        logger.debug("< debug %s disconnected", self.peer)

    # -- authentication and watches ---------------------------------------------------------------

    def authenticate(self, request: Request, settings: DebugSettings) -> None:
        """A TCP connection's `hello`: the token must match, else `unauthorized` (and closed)."""
        if self.authenticated:
            return
        token = request.args.get("token")
        expected = settings.token.get_secret_value() if settings.token else None
        if (
            expected is None
            or not isinstance(token, str)
            or not hmac.compare_digest(token.encode(), expected.encode())
        ):
            logger.warning("< debug %s: bad token; closing", self.peer)
            raise CommandFailed("unauthorized", "wrong or missing token")
        self.authenticated = True

    async def open_watch(
        self, request_id: str | int, start: Callable[[], Awaitable[tuple[Watcher, Release]]]
    ) -> Watcher:
        """Start the watch named `request_id`: `start()` makes its `Watcher` and the function that
        ends its feed; from then on its events are streamed to this client.

        Raises:
            CommandFailed: a watch with this id runs, or `MAX_WATCHES` do (and whatever `start`
                raises: then there is no watch).
        """
        key = str(request_id)
        if key in self._watches:
            raise CommandFailed("bad_argument", f"a watch with id {request_id!r} is running")
        if len(self._watches) >= MAX_WATCHES:
            raise CommandFailed("busy", f"at most {MAX_WATCHES} watches per connection")
        watch = _Watch(request_id)
        self._watches[key] = watch  # taken while it starts: its id and its place both count
        try:
            watcher, release = await start()
        except BaseException:
            if self._watches.get(key) is watch:
                del self._watches[key]
            raise
        if self._closed or self._watches.get(key) is not watch:
            release()  # the connection went away meanwhile
            return watcher
        watch.watcher, watch.release = watcher, release
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return watcher

    def take_watch(self, key: str) -> tuple[str | int, Watcher, Release]:
        """Stop streaming the watch `key`; its request id, `Watcher` and feed's end (the caller
        releases it).

        Raises:
            CommandFailed: `not_found` when no such watch runs on this connection.
        """
        watch = self._watches.get(key)
        if watch is None or watch.watcher is None:
            raise CommandFailed("not_found", f"no watch {key!r} on this connection")
        del self._watches[key]
        return watch.request_id, watch.watcher, watch.release

    async def _flush(self) -> None:
        """Move watch events to the socket while the client keeps up; never wait on it."""
        transport = self._writer.transport
        while not self._closed:
            await asyncio.sleep(FLUSH_S)
            for watch in list(self._watches.values()):
                if watch.watcher is None:
                    continue  # still starting
                if transport.get_write_buffer_size() > WATCH_LOW_WATER:
                    break  # it is behind: leave the events to the bounded buffer, which counts
                events, dropped = watch.watcher.take(FLUSH_BATCH)
                if events:
                    self.send(b"".join(event_line(watch.request_id, e.as_json()) for e in events))
                if dropped:
                    self.send(dropped_line(watch.request_id, dropped))
