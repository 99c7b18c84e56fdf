"""The control channel between the node and one worker: JSON messages on a Unix socket pair.

    node   --start, conn (+ the accepted socket), host, reply-->   worker
    worker --ready, state, call, reply-->                           node

The pair is `SOCK_SEQPACKET`: the kernel keeps message boundaries, so an accepted connection's
file descriptor (sent as `SCM_RIGHTS`, unix(7)) arrives with exactly the message it belongs to,
and a reader never has to frame a stream. Each message is one compact JSON object with a type
`t`. Either side may `call` the other (`{"t": "call", "id": N, "op": ..., "args": {...}}`) and
gets one `{"t": "reply", "id": N, "result": ...}` or `{"t": "reply", "id": N, "error": ...}`.

`encode`/`decode` are the pure codec. `ControlChannel` is the I/O: it reads on the event loop
with `add_reader`, never blocks on a write (a full socket buffer queues the message, owning
duplicates of its descriptors until it is sent), and reports the other side's exit as a close
(the kernel closes the pair's other end when a process dies, however it dies).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from mediaserver.errors import EdgeError

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024  # the start message carries the settings; the rest are small
MAX_FDS = 4
CALL_TIMEOUT_S = 5.0

Message = dict[str, Any]
MessageHandler = Callable[[Message, list[socket.socket]], None]
CallHandler = Callable[[str, Mapping[str, Any]], Awaitable[Any]]


class ControlError(EdgeError):
    """A control message could not be encoded, read or answered."""


class ControlClosed(ControlError):
    """The other side is gone (it exited, or closed the channel)."""


class RemoteError(ControlError):
    """The other side answered a call with an error; the message is its text."""


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as compact JSON bytes.

    Raises:
        ControlError: no string type `t`, not JSON-able, or longer than `MAX_MESSAGE_BYTES`.
    """
    if not isinstance(message.get("t"), str):
        raise ControlError(f"a control message needs a string type 't': {message!r:.80}")
    try:
        data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ControlError(f"control message {message['t']!r} is not JSON: {exc}") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise ControlError(f"control message {message['t']!r} is {len(data)} bytes, too long")
    return data


def decode(data: bytes) -> Message:
    """The message in `data`.

    Raises:
        ControlError: not UTF-8 JSON, not an object, or without a string type `t`.
    """
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError(f"unreadable control message ({len(data)} bytes): {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ControlError(f"a control message must be an object with a type 't': {data!r:.80}")
    return message


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected `SOCK_SEQPACKET` pair: the node keeps the first, the worker inherits the second.

    Both ends are close-on-exec; the node passes the worker's end explicitly (`pass_fds`).
    """
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class ControlChannel:
    """One end of a control pair, served on the running event loop.

    Args:
        on_message: every message that is not a call or a reply, with the sockets that came with
            it (the handler owns them: it must use or close each).
        on_call: answers the other side's calls; what it returns is the result, what it raises
            (a `ControlError` or any other exception) is sent as the error's text.
        on_closed: called once when the channel closes (the other side exited, or `close`).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        on_message: MessageHandler,
        on_call: CallHandler | None = None,
        on_closed: Callable[[], None] | None = None,
        name: str = "control",
    ) -> None:
        self.name = name
        self._sock = sock
        self._on_message = on_message
        self._on_call = on_call
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._outgoing: deque[tuple[bytes, list[int]]] = deque()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._readable)

    # -- sending ---------------------------------------------------------------------------------

    def send(self, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        """Send one message (and `fds`, which stay the caller's); returns at once.

        Raises:
            ControlClosed: the channel is closed, or the other side is gone.
            ControlError: the message cannot be encoded.
        """
        if self.closed:
            raise ControlClosed(f"{self.name}: closed")
        data = encode(message)
        if not self._outgoing and self._try_send(data, fds):
            return
        # Queued: keep our own duplicates, so the caller may close its descriptors right away.
        self._outgoing.append((data, [os.dup(fd) for fd in fds]))
        if len(self._outgoing) == 1:
            self._loop.add_writer(self._sock.fileno(), self._writable)

    async def call(self, op: str, timeout_s: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        """Ask the other side to do `op`; its result.

        Raises:
            RemoteError: it answered with an error.
            ControlClosed: the channel closed before the answer.
            ControlError: no answer within `timeout_s`.
        """
        call_id = next(self._ids)
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._waiting[call_id] = waiter
        try:
            self.send({"t": "call", "id": call_id, "op": op, "args": args})
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            raise ControlError(f"{self.name}: no answer to {op} within {timeout_s} s") from None
        finally:
            self._waiting.pop(call_id, None)

    def close(self) -> None:
        """Stop reading and writing and close our end; idempotent."""
        if self.closed:
            return
        self.closed = True
        fileno = self._sock.fileno()
        if fileno >= 0:
            self._loop.remove_reader(fileno)
            self._loop.remove_writer(fileno)
        for _, fds in self._outgoing:
            for fd in fds:
                os.close(fd)
        self._outgoing.clear()
        self._sock.close()
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ControlClosed(f"{self.name}: closed"))
        if self._on_closed is not None:
            self._on_closed()

    def _try_send(self, data: bytes, fds: Sequence[int]) -> bool:
        """True when sent; False when the socket buffer is full. Closes the channel on errors."""
        ancillary = (
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        )
        try:
            self._sock.sendmsg([data], ancillary)
        except BlockingIOError:
            return False
        except OSError as exc:
            logger.warning("= %s: send failed (%s): closing", self.name, exc.strerror or exc)
            self._loop.call_soon(self.close)
            raise ControlClosed(f"{self.name}: {exc.strerror or exc}") from None
        return True

    def _writable(self) -> None:
        while self._outgoing:
            data, fds = self._outgoing[0]
            try:
                if not self._try_send(data, fds):
                    return
            except ControlClosed:
                return  # closing: `close` releases what is queued
            self._outgoing.popleft()
            for fd in fds:
                os.close(fd)
        if not self.closed:
            self._loop.remove_writer(self._sock.fileno())

    # -- receiving -------------------------------------------------------------------------------

    def _readable(self) -> None:
        for _ in range(64):  # then let the loop run other callbacks; the reader fires again
            if self.closed:
                return
            try:
                data, ancillary, flags, _ = self._sock.recvmsg(
                    MAX_MESSAGE_BYTES, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
                )
            except BlockingIOError:
                return
            except OSError as exc:
                logger.info("= %s: read failed (%s): closing", self.name, exc.strerror or exc)
                self.close()
                return
            sockets = _received_sockets(ancillary)
            if not data:
                for sock in sockets:
                    sock.close()
                self.close()
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                logger.error("= %s: a truncated message was dropped", self.name)
                for sock in sockets:
                    sock.close()
                continue
            try:
                message = decode(data)
            except ControlError as exc:
                logger.error("= %s: %s", self.name, exc)
                for sock in sockets:
                    sock.close()
                continue
            self._dispatch(message, sockets)

    def _dispatch(self, message: Message, sockets: list[socket.socket]) -> None:
        kind = message["t"]
        if kind == "reply":
            for sock in sockets:
                sock.close()
            waiter = self._waiting.get(message.get("id", -1))
            if waiter is None or waiter.done():
                return  # answered after its caller gave up
            if "error" in message:
                waiter.set_exception(RemoteError(str(message["error"])))
            else:
                waiter.set_result(message.get("result"))
        elif kind == "call":
            for sock in sockets:
                sock.close()
            task = self._loop.create_task(self._answer(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            try:
                self._on_message(message, sockets)
            except Exception:  # a boundary: one bad message must not stop the channel
                logger.exception("= %s: handling %r failed", self.name, kind)

    async def _answer(self, message: Message) -> None:
        reply: Message = {"t": "reply", "id": message.get("id")}
        args = message.get("args")
        try:
            if self._on_call is None:
                raise ControlError("this side takes no calls")
            if not isinstance(args, dict):
                raise ControlError("call arguments must be an object")
            reply["result"] = await self._on_call(str(message.get("op")), args)
        except Exception as exc:  # a boundary: the caller gets the error, we keep serving
            if not isinstance(exc, ControlError):
                logger.exception("= %s: call %r failed", self.name, message.get("op"))
            reply["error"] = str(exc) or type(exc).__name__
        with contextlib.suppress(ControlClosed):
            self.send(reply)


def _received_sockets(ancillary: list[tuple[int, int, bytes]]) -> list[socket.socket]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return [socket.socket(fileno=fd) for fd in fds]
