"""Where the node's debug socket sends a request, and how its workers' answers become one. Pure.

    route(request)      which workers a request goes to and how their answers come back
    call_of(request)    the call a request names: `call`, or the CALL_ID of an `actor` address
    merge_*, tagged     the workers' answers as one result
    relayed_event       a worker's event line as an event of the node's watch

Routes (`docs/debug-socket.md`, "With workers"); they depend on the arguments, not on the
command's name, so a command added to `protocol.COMMANDS` is routed without changes here:

    watch     `watch` and `unwatch`: the proxy relays the workers' events (`debug_proxy.py`)
    worker    a `worker` argument: that worker only, its answer as it is (`calls` rows and
              `stack` threads tagged with `worker`)
    node      `hello`: the node answers
    owner     a `call` or an `actor` (`CALL_ID/KIND`): every worker is asked, the one that has
              the call answers and the others say `not_found` (a call lives on one worker, so
              an action has no effect elsewhere)
    calls     every worker's rows tagged with `worker`, oldest call first
    stats     every worker's stats, and the host's call totals
    threads   `stack` without an actor: every worker's threads tagged with `worker`
    every     anything else: `{"workers": {"1": result or {"error": {...}}, ...}}`
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mediaserver.debug.protocol import DebugError, Request
from mediaserver.debug.watch import DebugEvent

Route = Literal["watch", "worker", "node", "owner", "calls", "stats", "threads", "every"]

_MERGED: dict[str, Route] = {"calls": "calls", "stats": "stats", "stack": "threads"}


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerAnswer:
    """One worker's answer: its result, or the error it answered with."""

    worker: int
    result: Any = None
    error: DebugError | None = None
    received_at: float = 0.0  # monotonic seconds, when the node had the answer


def route(request: Request) -> Route:
    """How the node answers `request`; see the module docstring."""
    if request.cmd in ("watch", "unwatch"):
        return "watch"
    if request.worker is not None:
        return "worker"
    if request.cmd == "hello":
        return "node"
    if "call" in request.args or "actor" in request.args:
        return "owner"  # a malformed address too: every worker refuses it alike
    return _MERGED.get(request.cmd, "every")


def call_of(request: Request) -> str | None:
    """The call `request` names: its `call`, or the call of its `actor` (`CALL_ID/KIND`)."""
    call = request.args.get("call")
    if isinstance(call, str):
        return call
    actor = request.args.get("actor")
    if isinstance(actor, str):
        call_id, slash, _ = actor.rpartition("/")
        if slash and call_id:
            return call_id
    return None


def tagged(cmd: str, result: Any, worker: int) -> Any:
    """One worker's `result` with its rows (`calls`) or threads (`stack`) tagged `worker`."""
    if cmd == "calls" and isinstance(result, list):
        return [_tag(row, worker) for row in result]
    if cmd == "stack" and isinstance(result, dict) and isinstance(result.get("threads"), list):
        return {**result, "threads": [_tag(thread, worker) for thread in result["threads"]]}
    return result


def owner_answer(answers: Iterable[WorkerAnswer]) -> WorkerAnswer | None:
    """The answer of the worker that has the call: a result, else an error other than
    `not_found` (a refusal every worker gives alike); None when every worker said `not_found`."""
    answers = list(answers)
    for answer in answers:
        if answer.error is None:
            return answer
    for answer in answers:
        if answer.error is not None and answer.error.code != "not_found":
            return answer
    return None


def merge_calls(answers: Iterable[WorkerAnswer]) -> list[dict[str, Any]]:
    """Every worker's `calls` rows tagged with `worker`, the oldest call first (as one server).

    Each worker measured its ages when it answered; they are compared as of the last answer.
    """
    ok = _ok(answers)
    last = max((answer.received_at for answer in ok), default=0.0)
    keyed = [
        (float(row.get("age_s") or 0.0) + last - answer.received_at, answer.worker, row)
        for answer in ok
        for row in tagged("calls", answer.result, answer.worker)
    ]
    keyed.sort(key=lambda item: (-item[0], item[1]))
    return [row for _, _, row in keyed]


def merge_stats(answers: Iterable[WorkerAnswer]) -> dict[str, Any]:
    """`{"calls": {live, admitted, refused: {reason: n}}, "workers": {"1": stats, ...}}`: the
    host's totals (summed over the workers that answered) and each worker's own stats."""
    live = admitted = 0
    refused: dict[str, int] = {}
    workers: dict[str, Any] = {}
    for answer in _ok(answers):
        workers[str(answer.worker)] = answer.result
        calls = answer.result.get("calls", {}) if isinstance(answer.result, dict) else {}
        live += int(calls.get("live", 0))
        admitted += int(calls.get("admitted", 0))
        for reason, count in (calls.get("refused") or {}).items():
            refused[reason] = refused.get(reason, 0) + int(count)
    return {"calls": {"live": live, "admitted": admitted, "refused": refused}, "workers": workers}


def merge_threads(answers: Iterable[WorkerAnswer]) -> dict[str, Any]:
    """`stack` without an actor: every worker's threads, each tagged with its `worker`."""
    threads = [
        thread
        for answer in _ok(answers)
        for thread in tagged("stack", answer.result, answer.worker).get("threads", [])
    ]
    return {"threads": threads}


def merge_every(answers: Iterable[WorkerAnswer]) -> dict[str, Any]:
    """`{"workers": {"1": result, "2": {"error": {"code", "message"}}}}`, by worker number."""
    workers: dict[str, Any] = {}
    for answer in sorted(answers, key=lambda a: a.worker):
        if answer.error is None:
            workers[str(answer.worker)] = answer.result
        else:
            workers[str(answer.worker)] = {"error": _error(answer.error)}
    return {"workers": workers}


def extra_fields(down: Sequence[int], answers: Iterable[WorkerAnswer]) -> dict[str, Any]:
    """The response's fields beside a merged result: `workers_down` (skipped: down, restarting,
    or no answer in time) and `worker_errors` (answered with an error), when there are any."""
    extra: dict[str, Any] = {}
    if down:
        extra["workers_down"] = sorted(down)
    errors = {str(a.worker): _error(a.error) for a in answers if a.error is not None}
    if errors:
        extra["worker_errors"] = errors
    return extra


def relayed_event(worker: int, document: Mapping[str, Any]) -> DebugEvent:
    """A worker's event line (`{"event", "call", "at", "data", "watch"}`) as the node's event,
    tagged with the worker it came from; the worker's watch id is dropped."""
    at = document.get("at")
    call = document.get("call")
    data = document.get("data")
    return DebugEvent(
        at=float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0,
        call_id=call if isinstance(call, str) else None,
        kind=str(document.get("event")),
        data=data if isinstance(data, dict) else {},
        worker=worker,
    )


def describe_down(down: Sequence[int]) -> str:
    """`worker 2 is down` or `workers 1, 3 are down`."""
    if len(down) == 1:
        return f"worker {down[0]} is down"
    return f"workers {', '.join(str(w) for w in sorted(down))} are down"


def _ok(answers: Iterable[WorkerAnswer]) -> list[WorkerAnswer]:
    return sorted((a for a in answers if a.error is None), key=lambda a: a.worker)


def _tag(row: Any, worker: int) -> Any:
    return {"worker": worker, **row} if isinstance(row, dict) else row


def _error(error: DebugError) -> dict[str, str]:
    return {"code": error.code, "message": error.message}
