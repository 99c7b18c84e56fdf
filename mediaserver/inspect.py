"""`mediaserver inspect ...`: the debug socket's command-line client.

It reads `debug.socket_path` (or, with `--tcp`, `debug.tcp_port` and `debug.token`) from the same
settings as `serve`, sends one request (see `docs/debug-socket.md`) and prints the answer as a
table, or with `--json` as exactly one JSON document on stdout (`watch --json` prints the list of
events it received when it stops). Exit codes: 0 ok, 1 the server answered with an error or could
not be reached, 2 bad usage. `DebugClient` is a small blocking client that tests reuse.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from mediaserver.admin import fields_view, table
from mediaserver.debug.protocol import CRASH_KINDS, LOG_LEVELS, MAX_LINE_BYTES, STOP_REASONS

if TYPE_CHECKING:
    from config.settings import Settings


class InspectError(Exception):
    """The server could not be reached, or answered with an error (exit code 1)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class DebugClient:
    """A blocking debug-socket client: one request at a time, events read on demand."""

    def __init__(self, sock: socket.socket, *, timeout_s: float = 10.0) -> None:
        self._sock = sock
        self._timeout_s = timeout_s
        self._buffer = b""
        self._ids = itertools.count(1)
        self.pending_events: list[dict[str, Any]] = []
        sock.settimeout(timeout_s)

    @classmethod
    def unix(cls, path: str, *, timeout_s: float = 10.0) -> DebugClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            why = exc.strerror or str(exc)
            msg = f"cannot connect to the debug socket {path}: {why} (is the server running?)"
            raise InspectError(msg) from None
        return cls(sock, timeout_s=timeout_s)

    @classmethod
    def tcp(cls, port: int, token: str, *, timeout_s: float = 10.0) -> DebugClient:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise InspectError(f"cannot connect to 127.0.0.1:{port}: {why}") from None
        client = cls(sock, timeout_s=timeout_s)
        client.request("hello", token=token)
        return client

    def __enter__(self) -> DebugClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send(self, cmd: str, **args: Any) -> int:
        """Send one request; return its id."""
        request_id = next(self._ids)
        line = json.dumps({"id": request_id, "cmd": cmd, **args}).encode() + b"\n"
        try:
            self._sock.sendall(line)
        except OSError as exc:
            raise InspectError(f"the debug socket closed: {exc}") from None
        return request_id

    def read(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next line from the server as an object; None if `timeout_s` passes first.

        Raises:
            InspectError: the server closed the connection or sent something unreadable.
        """
        deadline = time.monotonic() + (self._timeout_s if timeout_s is None else timeout_s)
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise InspectError(f"the debug socket failed: {exc}") from None
            if not chunk:
                raise InspectError("the server closed the debug connection")
            self._buffer += chunk
            if len(self._buffer) > 64 * MAX_LINE_BYTES and b"\n" not in self._buffer:
                raise InspectError("the server sent an endless line")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            document = json.loads(line)
        except ValueError:
            raise InspectError(f"the server sent a line that is not JSON: {line[:80]!r}") from None
        if not isinstance(document, dict):
            raise InspectError(f"the server sent a line that is not an object: {line[:80]!r}")
        return document

    def request(self, cmd: str, **args: Any) -> Any:
        """Send a request and return its result; events that arrive meanwhile are kept.

        Raises:
            InspectError: the server answered with an error (its `code` is kept), or no answer.
        """
        request_id = self.send(cmd, **args)
        while True:
            document = self.read()
            if document is None:
                raise InspectError(f"no answer to {cmd} within {self._timeout_s:g} s")
            if "event" in document:
                self.pending_events.append(document)
                continue
            if document.get("id") not in (request_id, None):
                continue
            if document.get("ok"):
                return document.get("result")
            error = document.get("error") or {}
            code = str(error.get("code", ""))
            raise InspectError(f"{cmd}: {error.get('message', 'failed')} ({code})", code)

    def events(self, *, seconds: float | None = None) -> Iterator[dict[str, Any]]:
        """Events as they arrive, until `seconds` have passed (forever if None)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if self.pending_events:
                yield self.pending_events.pop(0)
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            document = self.read(timeout_s=min(left, 1.0) if left is not None else 1.0)
            if document is not None and "event" in document:
                yield document


# --- the command line --------------------------------------------------------------------------


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register `inspect` and its actions on the CLI's subparsers."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--debug-socket", metavar="PATH", help="debug socket (debug.socket_path)"
    )
    connection.add_argument(
        "--tcp", action="store_true", help="connect to 127.0.0.1:debug.tcp_port with debug.token"
    )
    connection.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    parents = [common, connection]

    inspect = commands.add_parser("inspect", help="live actor state of a running server")
    actions = inspect.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("calls", parents=parents, help="every live call")
    tree = actions.add_parser("tree", parents=parents, help="a call's actor tree")
    tree.add_argument("call")
    state = actions.add_parser("state", parents=parents, help="one actor's full snapshot")
    state.add_argument("actor", help="CALL_ID/supervisor|session|ingest|transcriber|responder")
    watch = actions.add_parser("watch", parents=parents, help="stream events (Ctrl-C stops)")
    watch.add_argument("call", nargs="?", help="one call (default: every call)")
    watch.add_argument("--rate", type=int, help="most events a second (server default 200)")
    watch.add_argument("--count", type=int, help="stop after this many events")
    watch.add_argument("--seconds", type=float, help="stop after this long")
    actions.add_parser("stats", parents=parents, help="admissions, threads, memory, CPU, lag")
    stack = actions.add_parser("stack", parents=parents, help="Python stacks (of one actor)")
    stack.add_argument("actor", nargs="?")
    restart = actions.add_parser("restart", parents=parents, help="restart a child actor")
    restart.add_argument("actor")
    stop = actions.add_parser("stop", parents=parents, help="hang a call up")
    stop.add_argument("call")
    stop.add_argument("reason", nargs="?", choices=STOP_REASONS, default="hangup")
    crash = actions.add_parser("crash", parents=parents, help="inject a fault (if enabled)")
    crash.add_argument("actor")
    crash.add_argument("--kind", choices=CRASH_KINDS, default="exception")
    crash.add_argument("--hang-s", type=float, default=5.0)
    loglevel = actions.add_parser("loglevel", parents=parents, help="set a logger's level")
    loglevel.add_argument("logger", help="logger name, or root")
    loglevel.add_argument("level", type=str.upper, choices=LOG_LEVELS)
    actions.add_parser("reload", parents=parents, help="re-read agents from the store")


def run(
    args: argparse.Namespace,
    settings: Settings,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Carry out `mediaserver inspect ACTION`; errors go to stderr with exit code 1."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        with _connect(args, settings) as client:
            if args.action == "watch":
                return _watch(client, args, out)
            document, render = _request(client, args)
    except InspectError as exc:
        err.write(f"mediaserver: {exc}\n")
        return 1
    out.write((json.dumps(document, indent=2) if args.json else render(document)) + "\n")
    return 0


def _connect(args: argparse.Namespace, settings: Settings) -> DebugClient:
    debug = settings.debug
    if args.tcp:
        if not debug.tcp_port or debug.token is None:
            raise InspectError("--tcp needs debug.tcp_port and debug.token set")
        return DebugClient.tcp(
            debug.tcp_port, debug.token.get_secret_value(), timeout_s=args.timeout
        )
    return DebugClient.unix(debug.socket_path, timeout_s=args.timeout)


Render = Callable[[Any], str]


def _request(client: DebugClient, args: argparse.Namespace) -> tuple[Any, Render]:
    match args.action:
        case "calls":
            return client.request("calls"), render_calls
        case "tree":
            return client.request("tree", call=args.call), render_tree
        case "state":
            return client.request("state", actor=args.actor), render_state
        case "stats":
            return client.request("stats"), render_nested
        case "stack":
            extra = {"actor": args.actor} if args.actor else {}
            return client.request("stack", **extra), render_stack
        case "restart":
            return client.request("restart", actor=args.actor), render_nested
        case "stop":
            return client.request("stop", call=args.call, reason=args.reason), render_nested
        case "crash":
            result = client.request("crash", actor=args.actor, kind=args.kind, hang_s=args.hang_s)
            return result, render_nested
        case "loglevel":
            return client.request("loglevel", logger=args.logger, level=args.level), render_nested
        case "reload":
            return client.request("reload"), render_nested
    raise InspectError(f"unknown action {args.action}")


def _watch(client: DebugClient, args: argparse.Namespace, out: TextIO) -> int:
    extra: dict[str, Any] = {}
    if args.call:
        extra["call"] = args.call
    if args.rate:
        extra["rate"] = args.rate
    client.request("watch", **extra)
    received: list[dict[str, Any]] = []
    with contextlib.suppress(KeyboardInterrupt):
        for event in client.events(seconds=args.seconds):
            received.append(event)
            if not args.json:
                out.write(render_event(event) + "\n")
                out.flush()
            if args.count is not None and len(received) >= args.count:
                break
    if args.json:
        out.write(json.dumps(received, indent=2) + "\n")
    return 0


# --- rendering -----------------------------------------------------------------------------------

CALL_COLUMNS = ["id", "company", "agent", "transport", "age_s", "state", "turns", "last_v2v_ms"]
CALL_COLUMNS += ["restarts", "mailbox"]
ACTOR_COLUMNS = ["kind", "state", "generation", "restarts", "mailbox_depth"]
ACTOR_COLUMNS += ["oldest_message_age_s", "handled", "dropped", "handler_running_s", "last_error"]


def render_calls(rows: list[dict[str, Any]]) -> str:
    return table(rows, CALL_COLUMNS)


def render_tree(tree: dict[str, Any]) -> str:
    head = f"call {tree['id']}  {tree['state']}  company {tree['company']}  agent {tree['agent']}"
    head += f"  {tree['transport']}  age {tree['age_s']:.1f} s"
    actors = [tree["supervisor"], *tree["children"].values()]
    lines = [head, "", table(actors, ACTOR_COLUMNS)]
    for actor in actors:
        if actor.get("last_traceback"):
            lines += ["", f"last error of {actor['kind']}:", actor["last_traceback"].rstrip()]
    return "\n".join(lines)


def render_state(snapshot: dict[str, Any]) -> str:
    fields = {key: value for key, value in snapshot.items() if key != "last_traceback"}
    text = fields_view(fields)
    if snapshot.get("last_traceback"):
        text += "\n\n" + snapshot["last_traceback"].rstrip()
    return text


def render_nested(document: dict[str, Any]) -> str:
    return fields_view(_flatten(document)) if document else "(nothing)"


def render_stack(document: dict[str, Any]) -> str:
    if "threads" in document:
        blocks = [
            f"--- {thread['thread']} ({thread['ident']})\n" + "\n".join(thread["stack"])
            for thread in document["threads"]
        ]
        return "\n\n".join(blocks)
    if not document["running"]:
        return f"{document['actor']} is {document['state']}: no thread is running it now"
    head = f"--- {document['actor']} on {document['thread']}, {document['state']}"
    head += f" for {document['handler_running_s']:.3f} s"
    return head + "\n" + "\n".join(document["stack"])


def render_event(event: dict[str, Any]) -> str:
    if event.get("event") == "dropped":
        return f"({event.get('count')} events dropped: this reader was too slow)"
    at = event.get("at") or time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
    data = event.get("data") or {}
    details = " ".join(
        f"{key}={value}" for key, value in data.items() if key != "traceback" and value is not None
    )
    return f"{stamp} {event.get('call')} {event.get('event')} {details}".rstrip()


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat
