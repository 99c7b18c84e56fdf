"""Requests about one call reach the worker that owns it, whichever worker the node handed them to.

    PATCH|DELETE /whip/{call_id}           (WHIP trickle and end, RFC 9725)
    POST         /api/calls/{call_id}/hangup
        on a worker without the call --the ledger: who holds its slot--> worker J
        --the same request on J's private socket (marked internal)--> J's answer, relayed as is

A call lives where its connection was accepted, but a WHIP client's later requests are new
connections, and the node places those by load, not by call. ASGI middleware in every worker;
everything else passes straight through. A request already forwarded is never forwarded again
(it is marked internal), so a call whose owner has just died answers 404 rather than looping.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediaserver.node.siblings import Siblings

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024  # a WHIP trickle fragment or a hang-up is far smaller
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    )
)
_OWNED = (
    (frozenset(("PATCH", "DELETE")), re.compile(r"^/whip/([^/]+)$")),
    (frozenset(("POST",)), re.compile(r"^/api/calls/([^/]+)/hangup$")),
)


def owned_call(method: str, path: str) -> str | None:
    """The call a request is about when it must reach the call's owner, else None."""
    for methods, pattern in _OWNED:
        if method in methods and (found := pattern.match(path)):
            return found.group(1)
    return None


class ForwardToOwner:
    """ASGI middleware: a request about another worker's call goes to that worker.

    Args:
        local: whether the call lives in this worker.
        owner_of: the number of the worker holding the call's slot, or None.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        siblings: Siblings,
        local: Callable[[str], bool],
        owner_of: Callable[[str], Awaitable[int | None]],
    ) -> None:
        self.app = app
        self._siblings = siblings
        self._local = local
        self._owner_of = owner_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call_id = owned_call(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if call_id is None or self._local(call_id):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self._siblings.is_internal(headers):
            await self.app(scope, receive, send)  # forwarded to us: answer, never pass it on
            return
        try:
            owner = await self._owner_of(call_id)
        except Exception:  # the ledger is unreachable: let this worker answer (404)
            logger.exception("= the owner of call %s is unknown", call_id)
            owner = None
        if owner is None or owner == self._siblings.index:
            await self.app(scope, receive, send)
            return
        body = await _body(receive)
        if body is None:
            await _answer(send, 413, b"request too large\n")
            return
        target = scope["path"] + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            response = await self._siblings.request(
                owner, scope["method"], target, headers=sent, content=body
            )
        except httpx.HTTPError as exc:
            logger.warning("> %s %s to worker %d failed: %s", scope["method"], scope["path"],
                           owner, type(exc).__name__)  # fmt: skip
            await _answer(send, 503, b"the call's worker is not answering\n", retry_after=True)
            return
        logger.debug("> %s %s forwarded to worker %d", scope["method"], scope["path"], owner)
        relayed = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers.multi_items()
            if k.lower() not in HOP_BY_HOP
        ]
        relayed.append((b"content-length", str(len(response.content)).encode()))
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": relayed})  # fmt: skip
        await send({"type": "http.response.body", "body": response.content})


async def _body(receive: Receive) -> bytes | None:
    """The request's whole body; None when it is longer than `MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, text: bytes, *, retry_after: bool = False) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


WORKER_HEADER = b"x-mediaserver-worker"


class WorkerHeader:
    """ASGI middleware: every HTTP answer says which worker served it (`X-Mediaserver-Worker`).

    For operators and tests reading where the node placed a connection; an answer relayed from
    the call's owner keeps the owner's number.
    """

    def __init__(self, app: ASGIApp, *, index: int) -> None:
        self.app = app
        self._value = str(index).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == WORKER_HEADER for name, _ in headers):
                    headers.append((WORKER_HEADER, self._value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, stamped)
