"""`mediaserver inspect ...`: the debug socket's command-line client.

It reads `debug.socket_path` (or, with `--tcp`, `debug.tcp_port` and `debug.token`) from the same
settings as `serve`, sends one request (see `docs/debug-socket.md`) and prints the answer as a
table, or with `--json` as exactly one JSON document on stdout (`watch --json` prints the list of
events it received when it stops). Exit codes: 0 ok, 1 the server answered with an error or could
not be reached, 2 bad usage. `DebugClient` is a small blocking client that tests reuse.

With `serve --workers N` the socket is the node's: `calls`, `stack` and `watch` show a WORKER
column, `stats` the host's totals and each worker's, and `--worker N` sends a request to worker N
only. Workers the node skipped (down, restarting) are named on stderr, so `--json` stays the
result alone.
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
from mediaserver.debug.protocol import (
    ADMISSION_MODES,
    CRASH_KINDS,
    LOG_LEVELS,
    MAX_LINE_BYTES,
    STOP_REASONS,
)

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
        self.last_response: dict[str, Any] = {}
        """The whole response to the last `request`: with workers, `workers_down` and the like."""
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
            self.last_response = document
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
    connection.add_argument(
        "--worker",
        type=_worker_number,
        metavar="N",
        help="with serve --workers: ask worker N only (a single process is worker 1)",
    )
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
    admission = actions.add_parser(
        "admission", parents=parents, help="the load gate; off/on force it, auto follows load"
    )
    admission.add_argument("mode", nargs="?", choices=ADMISSION_MODES)
    hog = actions.add_parser("hog", parents=parents, help="block the event loop (if enabled)")
    hog.add_argument("--loop-ms", type=float, required=True, help="each block, in ms")
    hog.add_argument("--every-ms", type=float, help="one block starts this often (2 x loop-ms)")
    hog.add_argument("--for-s", type=float, default=5.0, help="for this long")


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
                return _watch(client, args, out, err)
            document, render = _request(client, args)
            notes = skipped_workers(client.last_response)
    except InspectError as exc:
        err.write(f"mediaserver: {exc}\n")
        return 1
    out.write((json.dumps(document, indent=2) if args.json else render(document)) + "\n")
    for note in notes:
        err.write(f"mediaserver: {note}\n")
    return 0


def skipped_workers(response: dict[str, Any]) -> list[str]:
    """What a node's response says it left out: workers down, workers that answered an error."""
    notes = []
    down = response.get("workers_down") or []
    if down:
        names = ", ".join(str(worker) for worker in down)
        notes.append(
            f"worker{'s' if len(down) > 1 else ''} {names} down (restarting?): not included"
        )
    for worker, error in (response.get("worker_errors") or {}).items():
        notes.append(f"worker {worker}: {error.get('message')} ({error.get('code')})")
    return notes


def _worker_number(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"a worker number is 1 or more, not {text!r}")
    return number


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
    worker = {"worker": args.worker} if args.worker is not None else {}

    def request(cmd: str, **arguments: Any) -> Any:
        return client.request(cmd, **arguments, **worker)

    match args.action:
        case "calls":
            return request("calls"), render_calls
        case "tree":
            return request("tree", call=args.call), render_tree
        case "state":
            return request("state", actor=args.actor), render_state
        case "stats":
            return request("stats"), render_stats
        case "stack":
            extra = {"actor": args.actor} if args.actor else {}
            return request("stack", **extra), render_stack
        case "restart":
            return request("restart", actor=args.actor), render_nested
        case "stop":
            return request("stop", call=args.call, reason=args.reason), render_nested
        case "crash":
            result = request("crash", actor=args.actor, kind=args.kind, hang_s=args.hang_s)
            return result, render_nested
        case "loglevel":
            return request("loglevel", logger=args.logger, level=args.level), render_nested
        case "reload":
            return request("reload"), render_nested
        case "admission":
            extra = {"mode": args.mode} if args.mode else {}
            return request("admission", **extra), render_nested
        case "hog":
            hog: dict[str, Any] = {"loop_ms": args.loop_ms, "for_s": args.for_s}
            if args.every_ms is not None:
                hog["every_ms"] = args.every_ms
            return request("hog", **hog), render_nested
    raise InspectError(f"unknown action {args.action}")


def _watch(client: DebugClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    extra: dict[str, Any] = {}
    if args.call:
        extra["call"] = args.call
    if args.rate:
        extra["rate"] = args.rate
    if args.worker is not None:
        extra["worker"] = args.worker
    client.request("watch", **extra)
    for note in skipped_workers(client.last_response):
        err.write(f"mediaserver: {note}\n")
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


STATS_COLUMNS = ["worker", "live", "admitted", "refused", "threads", "rss_mb", "cpu_pct"]
STATS_COLUMNS += ["lag_ms", "lag_max_ms", "uptime_s"]


def render_calls(rows: list[dict[str, Any]]) -> str:
    with_workers = any("worker" in row for row in rows)
    return table(rows, ["worker", *CALL_COLUMNS] if with_workers else CALL_COLUMNS)


def render_stats(stats: dict[str, Any]) -> str:
    """One server's stats as fields; a node's as the host's totals and a row per worker."""
    if "workers" not in stats:
        return render_nested(stats)
    calls = stats.get("calls", {})
    node = stats.get("node", {})
    refused = sum((calls.get("refused") or {}).values())
    head = (
        f"host: {calls.get('live')} live calls, {calls.get('admitted')} admitted, {refused} "
        f"refused; workers up {node.get('workers_up')} of {node.get('workers')}"
    )
    rows = []
    for worker, own in stats["workers"].items():
        own_calls = own.get("calls", {})
        lag = own.get("loop_lag_ms") or {}
        rss = own.get("rss_bytes")
        rows.append(
            {
                "worker": worker,
                "live": own_calls.get("live"),
                "admitted": own_calls.get("admitted"),
                "refused": sum((own_calls.get("refused") or {}).values()),
                "threads": own.get("threads"),
                "rss_mb": round(rss / 1e6, 1) if isinstance(rss, int) else None,
                "cpu_pct": own.get("cpu_pct"),
                "lag_ms": lag.get("last"),
                "lag_max_ms": lag.get("max_10s"),
                "uptime_s": own.get("uptime_s"),
            }
        )
    return head + "\n\n" + table(rows, STATS_COLUMNS)


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
            f"--- {_worker_prefix(thread)}{thread['thread']} ({thread['ident']})\n"
            + "\n".join(thread["stack"])
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
    if event.get("event") == "worker":
        return f"{stamp} worker {data.get('worker')} {data.get('state')}"
    details = " ".join(
        f"{key}={value}" for key, value in data.items() if key != "traceback" and value is not None
    )
    source = f"{_worker_prefix(event)}{event.get('call')}"
    return f"{stamp} {source} {event.get('event')} {details}".rstrip()


def _worker_prefix(document: dict[str, Any]) -> str:
    return f"w{document['worker']} " if "worker" in document else ""


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat
