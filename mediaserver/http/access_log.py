"""Request lines, logged by us with secrets redacted (uvicorn's access log is off).

`RequestLog` is ASGI middleware: one line per HTTP request when it completes (method, path,
status, milliseconds), and for a websocket one line when it is accepted or refused and one when
it closes. API keys never reach the log: the key segment of `/signal/{peer_id}/{api_key}` and
query parameters that may carry a secret are replaced by `***`, and headers are never logged.
uvicorn's own per-websocket lines, which print the raw path, are dropped by a filter.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

REDACTED = "***"
SECRET_PARAMS = frozenset(("key", "api_key", "apikey", "token", "access_token", "secret"))
_SIGNAL_KEY = re.compile(r"^(/signal/[^/]+/)[^/]+")


def redact(path: str, query: str = "") -> str:
    """The request target with any API key in it replaced by `***`."""
    path = _SIGNAL_KEY.sub(rf"\g<1>{REDACTED}", path)
    if not query:
        return path
    pairs = [
        (name, REDACTED if name.lower() in SECRET_PARAMS else value)
        for name, value in parse_qsl(query, keep_blank_values=True)
    ]
    return f"{path}?{urlencode(pairs, safe='*')}"


class _UvicornRequestLines(logging.Filter):
    """Drops uvicorn's `"WebSocket /path" [accepted]` lines: their path is not redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith('%s - "WebSocket ')


_UVICORN_FILTER = _UvicornRequestLines()


class RequestLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        logging.getLogger("uvicorn.error").addFilter(_UVICORN_FILTER)  # idempotent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "-"
        target = redact(scope.get("path", ""), scope.get("query_string", b"").decode("latin-1"))
        websocket = scope["type"] == "websocket"
        method = "WS" if websocket else scope.get("method", "-")
        status: list[int] = []

        async def send_logged(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                status.append(message["status"])
            elif kind == "websocket.accept" and not status:
                status.append(101)
                logger.info('< %s "%s %s" 101', peer, method, target)
            elif kind == "websocket.close" and not status:
                status.append(403)
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            code = status[0] if status else 500
            if websocket:
                logger.info('= %s "%s %s" closed after %.0f ms', peer, method, target, elapsed_ms)
            else:
                logger.info('< %s "%s %s" %d %.1f ms', peer, method, target, code, elapsed_ms)
