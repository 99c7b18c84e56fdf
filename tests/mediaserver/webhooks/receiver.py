"""A webhook receiver on 127.0.0.1: a real HTTP server in a thread that answers from a script."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.timing import MS


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered


class Receiver:
    """Answers each POST with the next status of `statuses` (then 200), and records it.

    With `delay_s`, each answer comes that long after the request is recorded (requests run in
    parallel).
    """

    def __init__(self, statuses: list[int] | None = None, delay_s: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.received: list[Received] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._changed:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.received.append(
                        Received(self.path, dict(self.headers.items()), body, status)
                    )
                    receiver._changed.notify_all()
                if delay_s:  # recorded on arrival, answered late
                    threading.Event().wait(delay_s)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/mediaserver"

    def wait_count(self, n: int, timeout: float = 5000 * MS) -> list[Received]:
        """Block until `n` requests arrived (call it off the event loop, or via to_thread)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= n, timeout):
                raise AssertionError(f"{len(self.received)} requests, expected {n}")
            return list(self.received)


@contextmanager
def running_receiver(statuses: list[int] | None = None, delay_s: float = 0.0) -> Iterator[Receiver]:
    receiver = Receiver(statuses, delay_s)
    thread = threading.Thread(
        target=receiver.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(timeout=5)


def free_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}/gone"
