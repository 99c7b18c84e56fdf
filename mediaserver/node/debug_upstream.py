"""WorkerDebugClient: the node's connection to one worker's debug socket (`RUN_DIR/wI.debug.sock`);
WorkerConnections: one client connection's connections to every worker, opened when first needed.

It speaks the debug socket's JSON lines v1 like any client: requests carry its own ids and are
matched to their responses; the events of a `watch` go to the `EventSink` registered for it. Every
wait is bounded: connecting (`CONNECT_TIMEOUT_S`) and each answer (`ANSWER_TIMEOUT_S`, longer than
the 5 s an action such as `stop` waits on the worker). A worker that cannot be reached, closes the
connection (it exited), sends a line past `MAX_ANSWER_BYTES` or does not answer in time raises
`WorkerUnavailable`; an error the worker answered with is raised as a `CommandFailed` with its
code. The node reads every line as it comes, so a worker's watch never waits on the node: its
events are dropped, counted, by the node's own bounded `Watcher`s instead. Loop only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast, get_args

from mediaserver.debug.commands import ACTION_WAIT_S
from mediaserver.debug.protocol import CommandFailed, ErrorCode, Request, encode
from mediaserver.node.debug_routing import WorkerAnswer

if TYPE_CHECKING:
    from mediaserver.node.debug_relay import WatchRelay

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = ACTION_WAIT_S + 3.0
UNWATCH_TIMEOUT_S = 2.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # `calls` of a full worker, or every thread's stack

_ERROR_CODES: frozenset[str] = frozenset(get_args(ErrorCode))


class WorkerUnavailable(CommandFailed):
    """A worker is down, restarting, gone from the connection, or did not answer in time."""

    def __init__(self, worker: int, why: str) -> None:
        super().__init__("unavailable", f"worker {worker} {why}")
        self.worker = worker


class EventSink(Protocol):
    """Takes the events of one watch on a worker."""

    def event(self, worker: int, document: dict[str, Any]) -> None:
        """One event line from `worker`, as sent (`dropped` included)."""
        ...

    def lost(self, worker: int) -> None:
        """The connection to `worker` closed: no more events will come."""
        ...


class WorkerSockets(Protocol):
    """What the proxy needs of the node: its workers, where their debug sockets are, which run."""

    @property
    def worker_numbers(self) -> Sequence[int]: ...

    def worker_debug_path(self, worker: int) -> str: ...

    def worker_up(self, worker: int) -> bool:
        """True once the worker said it is ready (its debug socket listens), until it exits."""
        ...


class WorkerDebugClient:
    """One connection to worker `worker`'s debug socket; see the module docstring."""

    def __init__(
        self, worker: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.worker = worker
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._sinks: dict[int, EventSink] = {}
        self.closed = False
        self._reading = asyncio.get_running_loop().create_task(
            self._read(), name=f"worker {worker} debug"
        )

    @classmethod
    async def connect(
        cls, worker: int, path: str, timeout_s: float = CONNECT_TIMEOUT_S
    ) -> WorkerDebugClient:
        """Connect to `path`, the debug socket of worker `worker`.

        Raises:
            WorkerUnavailable: nothing listens there, or it did not accept within `timeout_s`.
        """
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_unix_connection(path, limit=MAX_ANSWER_BYTES)
        except TimeoutError:
            why = f"did not accept a debug connection within {timeout_s:g} s"
            raise WorkerUnavailable(worker, why) from None
        except OSError as exc:
            why = f"is down (its debug socket: {exc.strerror or exc})"
            raise WorkerUnavailable(worker, why) from None
        return cls(worker, reader, writer)

    async def request(
        self, cmd: str, args: Mapping[str, Any], *, timeout_s: float = ANSWER_TIMEOUT_S
    ) -> Any:
        """Send `cmd` with `args`; the worker's result.

        Raises:
            CommandFailed: the worker answered with an error (its code and message).
            WorkerUnavailable: the connection closed, or no answer within `timeout_s`.
        """
        _, result = await self._request(cmd, args, timeout_s=timeout_s)
        return result

    async def watch(self, args: Mapping[str, Any], sink: EventSink) -> int:
        """Start a watch on the worker (`call`, `rate`); its events go to `sink`. Its id there.

        Raises:
            CommandFailed, WorkerUnavailable: as `request`.
        """
        request_id, _ = await self._request("watch", args, sink=sink)
        return request_id

    async def unwatch(self, watch_id: int) -> None:
        """End the worker's watch `watch_id`; an error or no answer is only logged."""
        self._sinks.pop(watch_id, None)
        try:
            await self._request("unwatch", {"watch": str(watch_id)}, timeout_s=UNWATCH_TIMEOUT_S)
        except CommandFailed as exc:
            logger.debug("> worker %d unwatch %d: %s", self.worker, watch_id, exc.message)

    def forget(self, watch_id: int) -> None:
        """Drop the events of watch `watch_id` from now on (its connection is about to close)."""
        self._sinks.pop(watch_id, None)

    def close(self) -> None:
        """Close the connection; pending requests fail, sinks hear `lost`. Idempotent."""
        self._reading.cancel()
        self._closed()

    async def _request(
        self,
        cmd: str,
        args: Mapping[str, Any],
        *,
        timeout_s: float = ANSWER_TIMEOUT_S,
        sink: EventSink | None = None,
    ) -> tuple[int, Any]:
        if self.closed:
            raise WorkerUnavailable(self.worker, "closed its debug connection")
        request_id = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        if sink is not None:
            self._sinks[request_id] = sink  # before sending: its first events may come first
        answered = False
        try:
            self._writer.write(encode({**args, "id": request_id, "cmd": cmd}))
            async with asyncio.timeout(timeout_s):
                document = await waiter
            answered = bool(document.get("ok"))
        except TimeoutError:
            why = f"did not answer {cmd} within {timeout_s:g} s"
            raise WorkerUnavailable(self.worker, why) from None
        finally:
            self._waiting.pop(request_id, None)
            if not answered:
                self._sinks.pop(request_id, None)
        if answered:
            return request_id, document.get("result")
        error = document.get("error")
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code"))
        message = str(error.get("message", f"{cmd} failed on worker {self.worker}"))
        known = cast("ErrorCode", code) if code in _ERROR_CODES else "internal"
        raise CommandFailed(known, message)

    async def _read(self) -> None:
        try:
            while line := await self._reader.readline():
                self._receive(line)
        except ValueError:  # a line past MAX_ANSWER_BYTES (StreamReader's limit)
            logger.error("< worker %d debug: a line over %d bytes", self.worker, MAX_ANSWER_BYTES)
        except (ConnectionError, OSError):
            pass  # the worker went away: as at the end of the stream
        finally:
            self._closed()

    def _receive(self, line: bytes) -> None:
        try:
            document = json.loads(line)
        except ValueError:
            logger.error("< worker %d debug: not JSON: %r", self.worker, line[:80])
            return
        if not isinstance(document, dict):
            return
        if "event" in document:
            sink = self._sinks.get(_int(document.get("watch")))
            if sink is not None:
                sink.event(self.worker, document)
            return
        waiter = self._waiting.get(_int(document.get("id")))
        if waiter is not None and not waiter.done():
            waiter.set_result(document)

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(
                    WorkerUnavailable(self.worker, "closed its debug connection (exited?)")
                )
        sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            try:
                sink.lost(self.worker)
            except Exception:  # a boundary: one sink's failure must not keep the others waiting
                logger.exception(
                    "< worker %d debug: a watch failed on the lost connection", self.worker
                )


class WorkerConnections:
    """One client connection's connections to the workers, each opened when first needed."""

    def __init__(self, workers: WorkerSockets) -> None:
        self._workers = workers
        self._clients: dict[int, WorkerDebugClient] = {}
        self._connecting: dict[int, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.watches: dict[str, WatchRelay] = {}  # by the id of the client's watch request

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

    def unwatch_later(self, client: WorkerDebugClient, watch_id: int) -> None:
        """End a worker's watch that started after its client watch had ended."""
        task = asyncio.get_running_loop().create_task(client.unwatch(watch_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Close every connection (the client's watches were released before)."""
        self.watches.clear()
        for task in self._tasks:
            task.cancel()
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _int(value: Any) -> int:
    """An id we sent (an integer), or -1 for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
