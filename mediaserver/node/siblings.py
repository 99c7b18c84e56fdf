"""Siblings: a worker's HTTP client to the node's other workers, on their private sockets.

    worker I --GET /metrics, a forwarded request--> RUN_DIR/wJ.sock (worker J's own server)

Every request carries `X-Mediaserver-Internal: TOKEN` (the node's secret for this run): the
sibling answers it for itself (its own metrics; a forwarded call request is served, never
forwarded again). Strangers cannot forge the header, and the sockets live in the node's 0700
folder. Loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Mapping

import httpx

from mediaserver.node.run_dir import private_http_path

logger = logging.getLogger(__name__)

INTERNAL_HEADER = "x-mediaserver-internal"
TIMEOUT_S = 5.0


class Siblings:
    """Clients to workers `1..workers` but `index`, made when first used."""

    def __init__(self, *, index: int, workers: int, run_dir: str, token: str) -> None:
        self.index = index
        self.workers = workers
        self._run_dir = run_dir
        self._token = token
        self._clients: dict[int, httpx.AsyncClient] = {}

    @property
    def others(self) -> list[int]:
        return [i for i in range(1, self.workers + 1) if i != self.index]

    def is_internal(self, headers: Mapping[str, str]) -> bool:
        """True for a request one of the node's own processes made."""
        given = headers.get(INTERNAL_HEADER, "")
        return bool(given) and hmac.compare_digest(given.encode(), self._token.encode())

    async def request(
        self,
        worker: int,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes = b"",
        timeout_s: float = TIMEOUT_S,
    ) -> httpx.Response:
        """One request to `worker`, marked internal; the whole answer, read.

        Raises:
            httpx.HTTPError: the worker is down or did not answer in time.
        """
        client = self._client(worker)
        sent = {k: v for k, v in (headers or {}).items() if k.lower() != INTERNAL_HEADER}
        sent[INTERNAL_HEADER] = self._token
        return await client.request(method, path, headers=sent, content=content,
                                    timeout=timeout_s)  # fmt: skip

    async def metrics(self) -> dict[int, str]:
        """Each reachable sibling's own exposition; a sibling that is down is left out."""
        others = self.others

        async def one(worker: int) -> str | None:
            try:
                response = await self.request(worker, "GET", "/metrics")
            except httpx.HTTPError as exc:
                logger.info("= worker %d's metrics not read: %s", worker, type(exc).__name__)
                return None
            return response.text if response.status_code == 200 else None

        texts = await asyncio.gather(*(one(worker) for worker in others))
        return {w: text for w, text in zip(others, texts, strict=True) if text is not None}

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()

    def _client(self, worker: int) -> httpx.AsyncClient:
        client = self._clients.get(worker)
        if client is None:
            transport = httpx.AsyncHTTPTransport(uds=private_http_path(self._run_dir, worker))
            client = httpx.AsyncClient(transport=transport, base_url="http://worker")
            self._clients[worker] = client
        return client
