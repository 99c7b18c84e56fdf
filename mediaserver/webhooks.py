"""Webhooks: a company's call events POSTed to its URL, signed, from a durable outbox.

    call edge --call_started / call_ended--> WebhookEvents --(a background task)--> store:
    webhook_outbox row (the body, final) --> WebhookWorker (one task on the loop, a few
    attempts in flight, each row claimed first) --POST--> 2xx: delivered | other: retried
    after a backoff | `webhooks.max_attempts` used up: failed

Nothing here is on a call's path: the edge only schedules a task, and the worker runs apart
from calls. A restart loses no queued delivery: the outbox is in the store, and the next
worker picks the pending rows up. Every process runs a worker on the same outbox; each row is
claimed by one of them for `webhooks.lease_s`, so no two send it at once, and a dead
claimer's rows go to another when its lease runs out. An attempt cut short by a crash is made
again, so delivery is at least once; receivers dedupe by the body's `id` (decision 0080).

What each event says is in `webhook_bodies.py`; a call whose process died is ended by another,
which queues its `call.ended` in the same transaction, with the same `call_ended_body`.

Signature (the scheme Stripe uses): `X-Mediaserver-Signature: t=UNIX,v1=HEX` where HEX is
HMAC-SHA256 of `t + "." + body` keyed with the company's webhook secret, lowercase hex. `t` is
the time of the attempt, so a receiver can refuse replays older than a few minutes (`verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import httpx

from config.settings import WebhookSettings
from mediaserver.metrics import Metrics
from mediaserver.store import Store, StoreError, WebhookDelivery
from mediaserver.webhook_bodies import call_ended_body, call_started_data, event_body

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Mediaserver-Signature"
EVENT_HEADER = "X-Mediaserver-Event"
DELIVERY_HEADER = "X-Mediaserver-Delivery"
USER_AGENT = "mediaserver-webhooks/1"
TOLERANCE_S = 300.0
MAX_IN_FLIGHT = 16
IDLE_WAKE_S = 30.0  # look at the outbox at least this often, whatever else happens
STORE_RETRY_S = 1.0


# -- the pure part: signatures, backoff --------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret (256 random bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Mediaserver-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, body: bytes, header: str, *, now: float, tolerance_s: float = TOLERANCE_S
) -> bool:
    """True when `header` signs `body` with `secret` and its `t` is within `tolerance_s`."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


def backoff_s(attempts: int, settings: WebhookSettings) -> float:
    """Delay before the next try after `attempts` failed ones (1, 2, 4... capped)."""
    assert attempts >= 1, attempts
    return float(min(settings.backoff_max_s, settings.backoff_initial_s * 2 ** (attempts - 1)))


def default_claimer() -> str:
    """A claimer id unique to one worker: host, pid and a random part."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


# -- queueing events -----------------------------------------------------------------------------


class WebhookEvents:
    """Queues `call.started` and `call.ended` in the outbox, each in a background task.

    `call_started` and `call_ended` return at once (loop only). The bodies are built from the
    store, so `call_ended` must be called once the call's facts are written.

    Args:
        on_queued: called after a delivery is queued (the worker's `wake`).
    """

    def __init__(self, store: Store, *, on_queued: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_queued = on_queued
        self._tasks: set[asyncio.Task[None]] = set()

    def call_started(self, company_id: str, call_id: str) -> None:
        self._spawn(self.queue_call_started(company_id, call_id), call_id)

    def call_ended(self, company_id: str, call_id: str) -> None:
        self._spawn(self.queue_call_ended(company_id, call_id), call_id)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let the events being queued reach the store (bounded), then give up on the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()

    async def queue_call_started(self, company_id: str, call_id: str) -> WebhookDelivery | None:
        call = await self._store.get_call(company_id, call_id)
        if call is None:
            return None
        return await self._queue(company_id, call_id, "call.started", call_started_data(call))

    async def queue_call_ended(self, company_id: str, call_id: str) -> WebhookDelivery | None:
        call = await self._store.get_call(company_id, call_id)
        if call is None:
            return None
        turns = await self._store.list_turns(company_id, call_id)
        usage = await self._store.list_usage(company_id, call_id)
        event_id = uuid.uuid4().hex
        body = call_ended_body(call, turns, usage, event_id=event_id, created_at=time.time())
        return await self._enqueue(company_id, call_id, "call.ended", event_id, body)

    async def _queue(
        self, company_id: str, call_id: str, event: str, data: dict[str, Any]
    ) -> WebhookDelivery | None:
        event_id = uuid.uuid4().hex
        body = event_body(event_id=event_id, event=event, data=data, created_at=time.time())
        return await self._enqueue(company_id, call_id, event, event_id, body)

    async def _enqueue(
        self, company_id: str, call_id: str, event: str, event_id: str, body: str
    ) -> WebhookDelivery | None:
        delivery = await self._store.enqueue_webhook(
            company_id, event_id=event_id, event=event, call_id=call_id, body=body
        )
        if delivery is not None:
            logger.info("= webhook %s queued (#%d)", event, delivery.id, extra={"call_id": call_id})
            if self._on_queued is not None:
                self._on_queued()
        return delivery

    def _spawn(self, work: Coroutine[Any, Any, WebhookDelivery | None], call_id: str) -> None:
        async def run() -> None:
            try:
                await work
            except StoreError as exc:
                logger.error("= webhook event not queued: %s", exc, extra={"call_id": call_id})
            except Exception:
                logger.exception("= webhook event not queued", extra={"call_id": call_id})

        task = asyncio.get_running_loop().create_task(run(), name=f"webhook-event-{call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# -- delivering them -----------------------------------------------------------------------------


class WebhookWorker:
    """Claims due outbox rows and delivers them, up to `max_in_flight` at once (loop only).

    Args:
        claimer: who claims the rows in the store; unique per worker and per run (the
            composition root passes its owner id). By default `default_claimer()`.
        client: the HTTP client (tests pass one with their own transport); by default one is
            made in `start` and closed in `close`.
        clock: unix time, for `next_attempt_at`, leases and the signature's `t`.
    """

    def __init__(
        self,
        store: Store,
        settings: WebhookSettings,
        *,
        claimer: str | None = None,
        metrics: Metrics | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._store = store
        self._settings = settings
        self.claimer = claimer or default_claimer()
        self._metrics = metrics
        self._client = client
        self._owns_client = client is None
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start delivering on the running loop (idempotent)."""
        if self._task is not None:
            return
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._settings.timeout_s, follow_redirects=False
            )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-worker")

    def wake(self) -> None:
        """Look at the outbox now (a delivery was queued). Any time, returns at once."""
        self._wake.set()

    async def close(self) -> None:
        """Stop; attempts in flight are cut short, stay pending and are released to others."""
        self._closing = True
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        for task in list(self._in_flight.values()):  # any started while we were stopping
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._release()
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _release(self) -> None:
        """Hand the rows still claimed to other workers now, not when the lease runs out."""
        try:
            released = await self._store.release_webhooks(self.claimer)
        except StoreError as exc:
            logger.warning("= webhook claims left to expire: %s", exc)
            return
        if released:
            logger.info("= %d webhook claims released", released)

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                timeout = await self._dispatch_due()
            except StoreError as exc:
                logger.error("= webhook outbox unreadable: %s", exc)
                timeout = STORE_RETRY_S
            except Exception:
                logger.exception("= webhook worker")
                timeout = STORE_RETRY_S
            # Not `wait_for`: on 3.11 it can swallow a cancel that races the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _dispatch_due(self) -> float:
        """Start attempts for the due rows; return how long to wait for the next one."""
        room = self._max_in_flight - len(self._in_flight)
        if room > 0 and not self._closing:
            claimed = await self._store.claim_webhooks(
                self.claimer, now=self._clock(), limit=room, lease_s=self._settings.lease_s
            )
            for delivery in claimed:
                task = asyncio.get_running_loop().create_task(
                    self._attempt(delivery), name=f"webhook-{delivery.id}"
                )
                self._in_flight[delivery.id] = task
                task.add_done_callback(functools.partial(self._done, delivery.id))
        # Our own rows in flight count from their lease's end: `_done` wakes us before that.
        next_at = await self._store.next_webhook_due_at()
        if next_at is None or len(self._in_flight) >= self._max_in_flight:
            return IDLE_WAKE_S
        return min(IDLE_WAKE_S, max(0.0, next_at - self._clock()))

    def _done(self, delivery_id: int, _: object) -> None:
        self._in_flight.pop(delivery_id, None)
        self._wake.set()

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        host = urlsplit(delivery.url).hostname or "?"
        secret = await self._store.webhook_secret(delivery.company_id)
        attempts = delivery.attempts + 1
        error = "the webhook was removed" if secret is None else await self._post(delivery, secret)
        retry_at: float | None = None
        if error is None:
            outcome = "delivered"
        elif secret is None or attempts >= self._settings.max_attempts:
            outcome = "failed"
        else:
            outcome = "retry"
            retry_at = self._clock() + backoff_s(attempts, self._settings)
        recorded = await self._store.record_webhook_attempt(
            delivery.id,
            claimer=self.claimer,
            delivered=error is None,
            error=error,
            retry_at=retry_at,
        )
        if not recorded:
            # Our lease ran out mid-attempt and another worker claimed the row: its attempt
            # is the one that counts (the receiver may see this event twice).
            logger.warning(
                "> webhook %s #%d to %s: claim lost to another worker, attempt not counted",
                delivery.event,
                delivery.id,
                host,
            )
            return
        log = logger.info if outcome == "delivered" else logger.warning
        log(
            "> webhook %s #%d to %s, attempt %d: %s",
            delivery.event,
            delivery.id,
            host,
            attempts,
            error or "delivered",
        )
        if self._metrics is not None:
            self._metrics.webhook_delivery(outcome)

    async def _post(self, delivery: WebhookDelivery, secret: str) -> str | None:
        """One attempt; None when the receiver answered 2xx, else what went wrong."""
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature(secret, body, int(self._clock())),
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: delivery.event_id,
        }
        assert self._client is not None
        try:
            # Streamed and never read: a receiver's answer body is none of our business.
            async with self._client.stream(
                "POST",
                delivery.url,
                content=body,
                headers=headers,
                timeout=self._settings.timeout_s,
            ) as response:
                status = response.status_code
        except httpx.TimeoutException:
            return "timed out"
        except httpx.HTTPError as exc:
            return f"request failed ({type(exc).__name__})"
        return None if 200 <= status < 300 else f"HTTP {status}"
