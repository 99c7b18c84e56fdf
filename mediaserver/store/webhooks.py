"""A company's webhook endpoint, and the durable outbox of deliveries to it.

A delivery is a row from the moment it is queued until long after its last attempt:

    enqueue -> pending --(2xx)--> delivered
                  |  ^
        (failure) v  | next_attempt_at = now + backoff
               pending --(attempts exhausted)--> failed

The worker (`mediaserver.webhooks`) asks for the rows that are due, tries each one, and records
the outcome. A crash between an attempt and its record means the attempt is made again: delivery
is at least once, and receivers dedupe by `event_id`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Collection
from urllib.parse import urlsplit

from mediaserver.store.db import Database
from mediaserver.store.errors import InvalidValue, NotFound
from mediaserver.store.models import Webhook, WebhookDelivery
from mediaserver.store.tenants import require_company
from mediaserver.store.validation import check_count, check_name

logger = logging.getLogger(__name__)

_DELIVERY_COLUMNS = (
    "id, event_id, company_id, event, call_id, url, body, created_at, attempts,"
    " next_attempt_at, last_error, delivered_at, failed_at"
)
_PENDING = "delivered_at IS NULL AND failed_at IS NULL"
MAX_URL_LENGTH = 2048
MIN_SECRET_LENGTH = 16


def check_url(url: object) -> str:
    """An absolute http(s) URL with a host, at most `MAX_URL_LENGTH` characters."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise InvalidValue("url", f"must be a string of at most {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValue("url", "must be an absolute http:// or https:// URL")
    return url


def check_secret(secret: object) -> str:
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        raise InvalidValue("secret", f"must be a string of at least {MIN_SECRET_LENGTH} characters")
    return secret


def _webhook(row: sqlite3.Row) -> Webhook:
    return Webhook(**dict(row))


def _delivery(row: sqlite3.Row) -> WebhookDelivery:
    return WebhookDelivery(**dict(row))


async def set_webhook(db: Database, company_id: str, url: str, secret: str) -> Webhook:
    url, secret, now = check_url(url), check_secret(secret), time.time()
    async with db.transaction() as tx:
        await require_company(tx, company_id)
        await tx.execute(
            "INSERT INTO webhooks (company_id, url, secret, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (company_id)"
            " DO UPDATE SET url = excluded.url, secret = excluded.secret,"
            " updated_at = excluded.updated_at",
            (company_id, url, secret, now, now),
        )
        row = await tx.fetchone("SELECT * FROM webhooks WHERE company_id = ?", (company_id,))
    assert row is not None
    logger.info("= webhook of company %s set", company_id)
    return _webhook(row)


async def get_webhook(db: Database, company_id: str) -> Webhook | None:
    row = await db.fetchone("SELECT * FROM webhooks WHERE company_id = ?", (company_id,))
    return None if row is None else _webhook(row)


async def delete_webhook(db: Database, company_id: str) -> None:
    async with db.transaction() as tx:
        removed = await tx.execute("DELETE FROM webhooks WHERE company_id = ?", (company_id,))
    if not removed:
        raise NotFound("webhook")
    logger.info("= webhook of company %s removed", company_id)


async def enqueue_webhook(
    db: Database, company_id: str, *, event_id: str, event: str, call_id: str | None, body: str
) -> WebhookDelivery | None:
    """Queue `body` for the company's webhook; None (nothing queued) when it has none.

    Raises:
        Conflict: `event_id` was queued before.
    """
    check_name("event_id", event_id)
    check_name("event", event)
    now = time.time()
    async with db.transaction() as tx:
        hook = await tx.fetchone("SELECT url FROM webhooks WHERE company_id = ?", (company_id,))
        if hook is None:
            return None
        cursor_id = await tx.fetchone(
            "INSERT INTO webhook_outbox (event_id, company_id, event, call_id, url, body,"
            " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (event_id, company_id, event, call_id, hook["url"], body, now, now),
        )
        assert cursor_id is not None
        row = await tx.fetchone(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_outbox WHERE id = ?", (cursor_id[0],)
        )
    assert row is not None
    return _delivery(row)


def _not_in(ids: Collection[int]) -> str:
    assert all(isinstance(i, int) for i in ids)
    return f" AND id NOT IN ({', '.join(str(int(i)) for i in ids)})" if ids else ""


async def due_webhooks(
    db: Database, now: float, limit: int, *, exclude: Collection[int] = ()
) -> list[WebhookDelivery]:
    """Pending deliveries due at `now` but not in `exclude` (being tried), oldest due first."""
    check_count("limit", limit)
    rows = await db.fetchall(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_outbox WHERE {_PENDING}{_not_in(exclude)}"
        " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
        (now, limit),
    )
    return [_delivery(row) for row in rows]


async def next_webhook_due_at(db: Database, *, exclude: Collection[int] = ()) -> float | None:
    """When the earliest pending delivery not in `exclude` is due (unix seconds), or None."""
    row = await db.fetchone(
        f"SELECT MIN(next_attempt_at) FROM webhook_outbox WHERE {_PENDING}{_not_in(exclude)}"
    )
    return None if row is None or row[0] is None else float(row[0])


async def webhook_secret(db: Database, company_id: str) -> str | None:
    row = await db.fetchone("SELECT secret FROM webhooks WHERE company_id = ?", (company_id,))
    return None if row is None else str(row[0])


async def record_webhook_attempt(
    db: Database,
    delivery_id: int,
    *,
    delivered: bool,
    error: str | None = None,
    retry_at: float | None = None,
) -> None:
    """Count one attempt: delivered, retried at `retry_at`, or (neither) failed for good."""
    now = time.time()
    params: tuple[object, ...]
    if delivered:
        sql, params = "delivered_at = ?, last_error = NULL", (now,)
    elif retry_at is not None:
        sql, params = "next_attempt_at = ?, last_error = ?", (retry_at, error)
    else:
        sql, params = "failed_at = ?, last_error = ?", (now, error)
    async with db.transaction() as tx:
        await tx.execute(
            f"UPDATE webhook_outbox SET attempts = attempts + 1, {sql} WHERE id = ? AND {_PENDING}",
            (*params, delivery_id),
        )


async def list_webhook_deliveries(
    db: Database, company_id: str, *, limit: int
) -> list[WebhookDelivery]:
    """The company's deliveries, newest first."""
    check_count("limit", limit)
    rows = await db.fetchall(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_outbox WHERE company_id = ?"
        " ORDER BY id DESC LIMIT ?",
        (company_id, limit),
    )
    return [_delivery(row) for row in rows]
