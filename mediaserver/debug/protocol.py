"""The debug socket's wire format, version 1: JSON lines. Pure: values in, values out.

One request per line, a JSON object with an `id` (string or integer, echoed back), a `cmd` and
the command's arguments as further fields:

    {"id": 1, "cmd": "tree", "call": "c-42"}

One response per request, `{"id": 1, "ok": true, "result": ...}` or
`{"id": 1, "ok": false, "error": {"code": "not_found", "message": "..."}}`; a line that cannot be
read as a request gets an error response with `"id": null`. A `watch` streams events, one per
line, each naming its watch: `{"event": "restart", "watch": 7, "call": "c-42", "at": ..., "data":
{...}}`, and `{"event": "dropped", "watch": 7, "count": 12}` when a slow reader lost events.
`docs/debug-socket.md` is the reference; `COMMANDS` below is the argument schema. Every command
may also carry `worker` (1..`MAX_WORKERS`): with `serve --workers N` the node's debug socket sends
the request to that worker only (`Request.worker`); a single process is worker 1.

A response may carry fields beside `result` (`Reply.extra`): the node reports the workers a
fanned-out request skipped as `"workers_down": [2]`.

Lines: at most `MAX_LINE_BYTES`. A longer line is answered with `line_too_long` and discarded up
to its newline; one that runs past `MAX_DISCARD_BYTES` without a newline ends the connection.

Errors (each becomes an error response, never a dropped connection):

    EdgeError
    └── DebugError          code + message
        ├── BadRequest      the line is not a valid request (also a ProtocolViolation)
        └── CommandFailed   a valid request that cannot be carried out (unknown call, refused)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from actors.messages import LIVE_END_REASONS
from mediaserver.errors import EdgeError, ProtocolViolation

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024
MAX_DISCARD_BYTES = 1024 * 1024
MAX_ID_CHARS = 128
MAX_WORKERS = 256  # server.workers allows at most 256

ACTOR_KINDS = ("supervisor", "session", "ingest", "transcriber", "responder")
CHILD_KINDS = ACTOR_KINDS[1:]
STOP_REASONS = LIVE_END_REASONS  # `stop` hangs up a live call; crash reasons are not for it
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "NOTSET")
CRASH_KINDS = ("exception", "system_exit", "hang")
ADMISSION_MODES = ("auto", "on", "off")

ErrorCode = Literal[
    "bad_json",  # not UTF-8 JSON, or not an object
    "bad_request",  # no usable id or cmd
    "line_too_long",
    "unknown_command",
    "missing_argument",
    "bad_argument",
    "not_found",  # no such live call or actor
    "refused",  # not allowed (fault injection off, TCP client not authenticated)
    "unauthorized",
    "busy",  # too many connections or requests in flight
    "unavailable",  # the worker asked for is down (restarting) or did not answer in time
    "internal",  # a bug: the server logged the traceback
]
RequestId = str | int | None


class DebugError(EdgeError):
    """A request that gets an error response: `code` is machine-readable, `message` for people."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.request_id = request_id


class BadRequest(DebugError, ProtocolViolation):
    """The line is not a valid request (bad JSON, missing fields, wrong types, unknown command)."""


class CommandFailed(DebugError):
    """A valid request that cannot be carried out: unknown call or actor, refused, too busy."""


# --- commands and their arguments ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Arg:
    name: str
    type: type[str] | type[int] | type[float] | type[bool]
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandSpec:
    name: str
    args: tuple[Arg, ...] = ()
    summary: str = ""


_ACTOR = Arg(name="actor", type=str, required=True)
COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec(
            name="hello",
            args=(Arg(name="token", type=str),),
            summary="protocol version and server info; on TCP, authenticate with the token",
        ),
        CommandSpec(name="calls", summary="every live call"),
        CommandSpec(
            name="tree",
            args=(Arg(name="call", type=str, required=True),),
            summary="a call's supervisor and children",
        ),
        CommandSpec(name="state", args=(_ACTOR,), summary="the full snapshot of one actor"),
        CommandSpec(
            name="watch",
            args=(
                Arg(name="call", type=str),
                Arg(name="rate", type=int, minimum=1, maximum=1000),
            ),
            summary="stream events of one call or all calls, at most `rate` a second",
        ),
        CommandSpec(
            name="unwatch",
            args=(Arg(name="watch", type=str, required=True),),
            summary="end the watch started by the request with this id",
        ),
        CommandSpec(name="stats", summary="admissions, threads, memory, CPU, loop lag, actors"),
        CommandSpec(
            name="stack",
            args=(Arg(name="actor", type=str),),
            summary="Python stack of the thread running an actor, or of every thread",
        ),
        CommandSpec(name="restart", args=(_ACTOR,), summary="restart a child now"),
        CommandSpec(
            name="stop",
            args=(
                Arg(name="call", type=str, required=True),
                Arg(name="reason", type=str, choices=STOP_REASONS),
            ),
            summary="hang a call up",
        ),
        CommandSpec(
            name="crash",
            args=(
                _ACTOR,
                Arg(name="kind", type=str, choices=CRASH_KINDS),
                Arg(name="hang_s", type=float, minimum=0.0, maximum=60.0),
            ),
            summary="fault injection (only with debug.fault_injection)",
        ),
        CommandSpec(
            name="loglevel",
            args=(
                Arg(name="logger", type=str, required=True),
                Arg(name="level", type=str, required=True, choices=LOG_LEVELS),
            ),
            summary="set a logger's level ('root' for the root logger)",
        ),
        CommandSpec(name="reload", summary="re-read agents from the store for new calls"),
        CommandSpec(
            name="admission",
            args=(Arg(name="mode", type=str, choices=ADMISSION_MODES),),
            summary="the load gate's state; `mode` off/on forces it closed/open, auto follows load",
        ),
        CommandSpec(
            name="hog",
            args=(
                Arg(name="loop_ms", type=float, required=True, minimum=1.0, maximum=5000.0),
                Arg(name="every_ms", type=float, minimum=1.0, maximum=60_000.0),
                Arg(name="for_s", type=float, minimum=0.0, maximum=60.0),
            ),
            summary="block the event loop on a schedule (only with debug.fault_injection)",
        ),
    )
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    id: str | int
    cmd: str
    args: Mapping[str, str | int | float | bool]
    worker: int | None = None  # the `worker` field, taken out of the arguments


@dataclass(frozen=True, slots=True)
class Reply:
    """A result and fields for the response beside it (`{"id", "ok", "result", **extra}`)."""

    result: Any
    extra: Mapping[str, Any]


def parse_request(line: bytes) -> Request:
    """Parse and validate one request line (without its newline).

    Raises:
        BadRequest: with the request's id when it could be read, else None.
    """
    try:
        document = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest("bad_json", f"not a JSON line: {_short(exc)}") from None
    if not isinstance(document, dict):
        raise BadRequest("bad_json", "a request is a JSON object")
    request_id = document.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        raise BadRequest("bad_request", "a request needs an `id` (string or integer)")
    if isinstance(request_id, str) and len(request_id) > MAX_ID_CHARS:
        raise BadRequest("bad_request", f"`id` is longer than {MAX_ID_CHARS} characters")
    cmd = document.get("cmd")
    if not isinstance(cmd, str):
        raise BadRequest("bad_request", "a request needs a `cmd` (string)", request_id)
    spec = COMMANDS.get(cmd)
    if spec is None:
        known = ", ".join(COMMANDS)
        raise BadRequest(
            "unknown_command", f"unknown command {cmd[:40]!r}; known: {known}", request_id
        )
    fields = {key: value for key, value in document.items() if key not in ("id", "cmd")}
    worker = _check_worker(fields.pop("worker", None), request_id)
    args = _check_args(spec, fields, request_id)
    return Request(id=request_id, cmd=cmd, args=args, worker=worker)


def _check_worker(value: Any, request_id: str | int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        msg = f"`worker` must be an integer from 1 to {MAX_WORKERS}"
        raise BadRequest("bad_argument", msg, request_id)
    return value


def _check_args(
    spec: CommandSpec, fields: dict[str, Any], request_id: str | int
) -> dict[str, str | int | float | bool]:
    known = {arg.name: arg for arg in spec.args}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise BadRequest(
            "bad_argument", f"{spec.name}: unknown field {unknown[0][:40]!r}", request_id
        )
    args: dict[str, str | int | float | bool] = {}
    for arg in spec.args:
        value = fields.get(arg.name)
        if value is None:
            if arg.required:
                raise BadRequest("missing_argument", f"{spec.name} needs `{arg.name}`", request_id)
            continue
        args[arg.name] = _check_value(spec.name, arg, value, request_id)
    return args


def _check_value(
    command: str, arg: Arg, value: Any, request_id: str | int
) -> str | int | float | bool:
    def bad(why: str) -> BadRequest:
        return BadRequest("bad_argument", f"{command}: `{arg.name}` {why}", request_id)

    if arg.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if arg.type is str and arg.name == "watch" and isinstance(value, int):
        value = str(value)  # a watch is named by its request id, which may be an integer
    if isinstance(value, bool) != (arg.type is bool) or not isinstance(value, arg.type):
        raise bad(f"must be a {arg.type.__name__}")
    if isinstance(value, str):
        if not value or len(value) > 256:
            raise bad("must be 1 to 256 characters")
        if arg.choices and value not in arg.choices:
            raise bad(f"must be one of {', '.join(arg.choices)}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise bad("must be a finite number")
        if arg.minimum is not None and value < arg.minimum:
            raise bad(f"must be at least {arg.minimum}")
        if arg.maximum is not None and value > arg.maximum:
            raise bad(f"must be at most {arg.maximum}")
    return value


def parse_address(address: str) -> tuple[str, str]:
    """Split `CALL_ID/KIND` into (call id, kind).

    Raises:
        BadRequest: not of that form, or an unknown kind.
    """
    call_id, slash, kind = address.rpartition("/")
    if not slash or not call_id:
        raise BadRequest("bad_argument", f"an actor is CALL_ID/KIND, not {address[:80]!r}")
    if kind not in ACTOR_KINDS:
        raise BadRequest(
            "bad_argument", f"unknown actor kind {kind[:40]!r}; kinds: {', '.join(ACTOR_KINDS)}"
        )
    return call_id, kind


# --- encoding --------------------------------------------------------------------------------


def encode(document: Mapping[str, Any]) -> bytes:
    """One JSON line, compact, UTF-8, newline-terminated."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8") + b"\n"


def result_line(
    request_id: RequestId, result: Any, extra: Mapping[str, Any] | None = None
) -> bytes:
    assert not extra or not {"id", "ok", "result", "error"} & set(extra), extra
    return encode({"id": request_id, "ok": True, "result": result, **(extra or {})})


def error_line(error: DebugError, request_id: RequestId = None) -> bytes:
    rid = error.request_id if error.request_id is not None else request_id
    return encode({"id": rid, "ok": False, "error": {"code": error.code, "message": error.message}})


def event_line(watch: str | int, event: Mapping[str, Any]) -> bytes:
    return encode({**event, "watch": watch})


def dropped_line(watch: str | int, count: int) -> bytes:
    return encode({"event": "dropped", "watch": watch, "count": count})


# --- framing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """Marker in `LineBuffer.lines()`: a line over the limit was discarded."""

    size: int


class LineBuffer:
    """Splits received bytes into lines (sans-I/O, in the manner of websockets' `Protocol`).

    `receive_data(bytes)`, then `lines()` for the complete lines so far: `bytes` without the
    newline, or `LineTooLong` as soon as a line grows past `max_line` (the rest of it is skipped
    up to its newline). `fatal` turns True when an overlong line runs past `max_discard` without
    ending: the connection should be closed.
    """

    def __init__(
        self, max_line: int = MAX_LINE_BYTES, max_discard: int = MAX_DISCARD_BYTES
    ) -> None:
        self._max_line = max_line
        self._max_discard = max_discard
        self._buffer = bytearray()
        self._ready: list[bytes | LineTooLong] = []
        self._discarding = 0  # > 0: inside an overlong line, this many bytes skipped so far
        self.fatal = False

    def receive_data(self, data: bytes) -> None:
        if self.fatal:
            return
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            chunk = data[start:end]
            if self._discarding:
                self._discarding += len(chunk)
                if newline >= 0:
                    self._discarding = 0
                elif self._discarding > self._max_discard:
                    self.fatal = True
                    return
            elif len(self._buffer) + len(chunk) > self._max_line:
                # Answer at once, not when (if ever) the line ends; then skip to its newline.
                self._ready.append(LineTooLong(len(self._buffer) + len(chunk)))
                self._discarding = 0 if newline >= 0 else len(self._buffer) + len(chunk)
                self._buffer.clear()
            else:
                self._buffer += chunk
                if newline >= 0:
                    line = bytes(self._buffer).rstrip(b"\r")
                    self._buffer.clear()
                    if line.strip():
                        self._ready.append(line)
            if newline < 0:
                break
            start = newline + 1

    def lines(self) -> list[bytes | LineTooLong]:
        ready, self._ready = self._ready, []
        return ready


def _short(exc: BaseException) -> str:
    return str(exc)[:120] or type(exc).__name__
