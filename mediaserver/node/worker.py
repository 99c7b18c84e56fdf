"""One of a node's workers: today's whole server in a process of its own, fed by the node.

    node --start (settings, who it is)-->        worker: run_server(settings, worker=WorkerLink)
    node --conn (an accepted TCP connection)-->  WorkerLink: uvicorn's protocol on our loop
    node --host (whether any worker admits)-->   WorkerLink.host
    worker --ready, state (every second)-->      node

The node starts it as `python -m mediaserver.node.worker --control-fd N` (never people). It
serves what the node hands it plus its private socket `RUN_DIR/wI.sock` (siblings forward
requests for its calls there), runs its own debug socket at `RUN_DIR/wI.debug.sock` (the node's
debug socket reaches it there), and when the node is gone (the control channel closes: the
node exited, however) it drains like on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.loading import SettingsError, settings_document, settings_from_document
from config.settings import Settings
from mediaserver.errors import StartupError
from mediaserver.node.control import (
    MAX_MESSAGE_BYTES,
    ControlChannel,
    ControlClosed,
    ControlError,
    Message,
    decode,
)
from mediaserver.node.host_metrics import merge_expositions
from mediaserver.node.ledger import NodeLedger
from mediaserver.node.run_dir import private_debug_path, private_http_path
from mediaserver.node.siblings import Siblings
from mediaserver.periodic import Every

if TYPE_CHECKING:
    import uvicorn

    from mediaserver.admission.load_gate import LoadGate

logger = logging.getLogger("mediaserver.node.worker")  # also when run as __main__

STATE_EVERY_S = 1.0
START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerIdentity:
    """Who a worker is, as the node told it in `start`."""

    index: int  # 1..workers
    workers: int
    node_id: str
    owner_id: str  # its owner row in the store (new for every start)
    run_dir: str  # the node's private folder (mode 0700) for the workers' sockets
    token: str  # marks requests between the node's processes (`X-Mediaserver-Internal`)


def start_message(identity: WorkerIdentity, settings: Settings) -> Message:
    """The node's first message to a worker."""
    return {
        "t": "start",
        "index": identity.index,
        "workers": identity.workers,
        "node_id": identity.node_id,
        "owner_id": identity.owner_id,
        "run_dir": identity.run_dir,
        "token": identity.token,
        "settings": settings_document(settings),
    }


def read_start(message: Mapping[str, Any]) -> tuple[WorkerIdentity, Settings]:
    """The identity and the worker's own settings from a `start` message.

    The worker's debug socket moves to its private path, and TCP debugging stays with the node.

    Raises:
        ControlError: not a well-formed `start` message.
    """
    try:
        if message["t"] != "start":
            raise ControlError(f"expected start, got {message['t']!r}")
        identity = WorkerIdentity(
            index=int(message["index"]),
            workers=int(message["workers"]),
            node_id=str(message["node_id"]),
            owner_id=str(message["owner_id"]),
            run_dir=str(message["run_dir"]),
            token=str(message["token"]),
        )
        settings = settings_from_document(message["settings"])
    except (KeyError, TypeError, ValueError, SettingsError) as exc:
        raise ControlError(f"bad start message: {exc}") from None
    debug = settings.debug.model_copy(
        update={
            "socket_path": private_debug_path(identity.run_dir, identity.index),
            "tcp_port": 0,
        }
    )
    return identity, settings.model_copy(update={"debug": debug})


class WorkerLink:
    """The worker's side of the control channel, and what `run_server` does differently here.

    Loop only, after `attach`. It gives the server the node's ledger (`ledger`), whether any
    worker admits (`admitting`, for `/readyz` and the Twilio webhook), `/metrics` of the whole
    host, and the node the worker's state.
    """

    def __init__(self, identity: WorkerIdentity, settings: Settings, sock: socket.socket) -> None:
        self.identity = identity
        self.settings = settings
        self.host: dict[str, Any] = {"admitting": True, "workers_up": identity.workers}
        self.ledger = NodeLedger(lambda: self.channel)
        self._gate: LoadGate | None = None
        self._wake_webhooks: Callable[[], None] | None = None
        self._sock = sock
        self._channel: ControlChannel | None = None
        self._server: uvicorn.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reporter = Every(STATE_EVERY_S, self.report_now, name="report")
        self._private_path = private_http_path(identity.run_dir, identity.index)
        self.siblings = Siblings(
            index=identity.index,
            workers=identity.workers,
            run_dir=identity.run_dir,
            token=identity.token,
        )

    @classmethod
    def receive_start(cls, sock: socket.socket, timeout_s: float = START_TIMEOUT_S) -> WorkerLink:
        """Wait (blocking, before the event loop runs) for the node's `start` message.

        Raises:
            ControlError: no start message within `timeout_s`, or a bad one.
        """
        sock.settimeout(timeout_s)
        try:
            data = sock.recv(MAX_MESSAGE_BYTES)
        except TimeoutError:
            raise ControlError(f"no start message from the node within {timeout_s} s") from None
        if not data:
            raise ControlClosed("the node closed the control channel before start")
        identity, settings = read_start(decode(data))
        return cls(identity, settings, sock)

    @property
    def channel(self) -> ControlChannel:
        assert self._channel is not None, "attach() first"
        return self._channel

    def attach(self) -> None:
        """Serve the control channel on the running loop."""
        self._channel = ControlChannel(
            self._sock,
            on_message=self._on_message,
            on_closed=self._node_gone,
            name=f"worker {self.identity.index} control",
        )

    # -- what run_server asks of us ----------------------------------------------------------

    def bind_private_socket(self) -> socket.socket:
        """The worker's private Unix socket for requests from the node's other processes."""
        path = self._private_path
        Path(path).unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot bind the worker socket {path}: {exc.strerror}") from None
        sock.listen(256)
        sock.setblocking(False)
        return sock

    def serve(
        self,
        server: uvicorn.Server,
        *,
        gate: LoadGate,
        wake_webhooks: Callable[[], None],
    ) -> None:
        """Serve handed-off connections with `server` (started); tell the node we are ready.

        From then on the node hears whether our load gate admits, every second and at once when
        it opens or closes (the node places connections by it and by the ledger's slots); and
        `wake_webhooks` runs when the node has queued webhook deliveries.
        """
        self._server = server
        self._gate = gate
        self._wake_webhooks = wake_webhooks
        gate.subscribe(lambda _: self.report_now())
        self.channel.send({"t": "ready", "pid": os.getpid(), **self._status()})
        self._reporter.start()
        logger.info("= worker %d ready", self.identity.index)

    async def stop_serving(self) -> None:
        """The server has stopped: hand-offs from now on are closed at once."""
        self._server = None
        await self._reporter.close()
        await self.siblings.aclose()

    def report_now(self) -> None:
        """Send the state now (admission opened or closed), not at the next tick."""
        if self._channel is not None and not self._channel.closed:
            try:
                self._channel.send({"t": "state", **self._status()})
            except ControlError as exc:
                logger.warning("= state not sent to the node: %s", exc)

    async def whole_host_metrics(self, local: bytes, headers: Mapping[str, str]) -> bytes:
        """`/metrics`: this worker's own for a sibling, else every worker's merged."""
        if self.siblings.is_internal(headers):
            return local
        expositions = await self.siblings.metrics()
        expositions[self.identity.index] = local.decode()
        return merge_expositions(expositions, node=self.host)

    # -- the channel ---------------------------------------------------------------------------

    def _on_message(self, message: Message, sockets: list[socket.socket]) -> None:
        match message["t"]:
            case "conn" if len(sockets) == 1:
                self._accept(sockets[0])
            case "host":
                self.host = {k: v for k, v in message.items() if k != "t"}
            case "webhooks":  # the node queued deliveries (a dead worker's calls)
                if self._wake_webhooks is not None:
                    self._wake_webhooks()
            case kind:
                logger.warning(
                    "= unexpected control message %r with %d sockets", kind, len(sockets)
                )
                for sock in sockets:
                    sock.close()

    def _accept(self, sock: socket.socket) -> None:
        server = self._server
        if server is None or server.should_exit:
            sock.close()  # we are stopping: the caller sees the connection close
            return
        config = server.config

        def protocol() -> asyncio.Protocol:
            # What uvicorn's own listener makes for each connection it accepts.
            return config.http_protocol_class(  # type: ignore[call-arg]  # uvicorn's untyped factory
                config=config, server_state=server.server_state, app_state=server.lifespan.state
            )

        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect(loop, protocol, sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _connect(
        loop: asyncio.AbstractEventLoop,
        protocol: Callable[[], asyncio.Protocol],
        sock: socket.socket,
    ) -> None:
        try:
            await loop.connect_accepted_socket(protocol, sock)
        except OSError as exc:  # the caller left before we got to it
            logger.debug("< a handed-off connection failed: %s", exc)
            sock.close()

    def _node_gone(self) -> None:
        if self._server is not None and not self._server.should_exit:
            logger.error("= the node is gone: draining like on SIGTERM")
            os.kill(os.getpid(), signal.SIGTERM)

    async def owner_of(self, call_id: str) -> int | None:
        """The number of the worker whose call `call_id` is (the ledger knows), or None."""
        holder = await self.ledger.holder(call_id)
        return int(holder) if holder is not None and holder.isdigit() else None

    def admitting(self) -> bool:
        """Whether any worker of the node admits new calls (`HostAdmission`, for `/readyz`)."""
        return bool(self.host.get("admitting", True))

    def _status(self) -> dict[str, Any]:
        gate = self._gate
        return {"admitting": gate.is_open if gate is not None else False}


async def _serve(link: WorkerLink) -> int:
    from mediaserver.app import run_server  # noqa: PLC0415 - only after the start message

    link.attach()
    return await run_server(link.settings, worker=link)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process (`python -m mediaserver.node.worker`)."""
    parser = argparse.ArgumentParser(prog="mediaserver-worker", description=__doc__)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.control_fd)
    try:
        link = WorkerLink.receive_start(sock)
    except ControlError as exc:
        print(f"mediaserver worker: {exc}", file=sys.stderr)
        return 2
    from mediaserver.logs import configure_logging  # noqa: PLC0415 - after the settings arrive

    configure_logging(link.settings.log, worker=link.identity.index)
    try:
        return asyncio.run(_serve(link))
    except StartupError as exc:
        print(f"mediaserver: worker {link.identity.index}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
