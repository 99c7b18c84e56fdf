"""A company's webhook endpoint, and the durable outbox of deliveries to it.

A delivery is a row from the moment it is queued until long after its last attempt:

    enqueue -> pending --(2xx)--> delivered
                  |  ^
        (failure) v  | next_attempt_at = now + backoff
               pending --(attempts exhausted)--> failed

Each attempt is made by exactly one process. A worker (`mediaserver.webhooks`) claims due rows
for itself with a lease (`claim_webhooks`), tries each one, and records the outcome, which also
ends the claim (`record_webhook_attempt`). A claimer that dies never records: its lease runs out
and another claims the row. So an attempt is made again after a crash between the attempt and
its record, or when a claimer stalls past its lease: delivery is at least once, and receivers
dedupe by `event_id` (decision 0080).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from urllib.parse import urlsplit

from mediaserver.store.db import Database, Session
from mediaserver.store.errors import InvalidValue, NotFound
from mediaserver.store.models import Webhook, WebhookDelivery
from mediaserver.store.tenants import require_company
from mediaserver.store.validation import check_count, check_name

logger = logging.getLogger(__name__)

_DELIVERY_COLUMNS = (
    "id, event_id, company_id, event, call_id, url, body, created_at, attempts,"
    " next_attempt_at, last_error, delivered_at, failed_at, claimed_by, claim_expires_at"
)
_PENDING = "delivered_at IS NULL AND failed_at IS NULL"
# A row a claimer may take at `now` (both parameters): pending, due, and held by nobody (never
# claimed, released, or its lease ran out).
_CLAIMABLE = (
    f"{_PENDING} AND next_attempt_at <= ? AND (claim_expires_at IS NULL OR claim_expires_at <= ?)"
)
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
    async with db.transaction() as tx:
        delivery_id = await queue_delivery(
            tx, company_id, event_id=event_id, event=event, call_id=call_id, body=body
        )
        if delivery_id is None:
            return None
        row = await tx.fetchone(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_outbox WHERE id = ?", (delivery_id,)
        )
    assert row is not None
    return _delivery(row)


async def queue_delivery(
    tx: Session, company_id: str, *, event_id: str, event: str, call_id: str | None, body: str
) -> int | None:
    """Insert an outbox row in the caller's transaction; its id, or None without a webhook."""
    hook = await tx.fetchone("SELECT url FROM webhooks WHERE company_id = ?", (company_id,))
    if hook is None:
        return None
    now = time.time()
    row = await tx.fetchone(
        "INSERT INTO webhook_outbox (event_id, company_id, event, call_id, url, body,"
        " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (event_id, company_id, event, call_id, hook["url"], body, now, now),
    )
    assert row is not None
    return int(row[0])


async def claim_webhooks(
    db: Database, claimer: str, *, now: float, limit: int, lease_s: float
) -> list[WebhookDelivery]:
    """Claim up to `limit` due deliveries nobody holds for `claimer` until `now + lease_s`.

    Oldest due first. Only the claimer's `record_webhook_attempt` (or the lease running out)
    ends a claim, so no other claimer gets these rows meanwhile.
    """
    claimer = check_name("claimer", claimer)
    check_count("limit", limit)
    if not lease_s > 0:
        raise InvalidValue("lease_s", "must be positive")
    async with db.transaction() as tx:
        # The WHERE is written twice on purpose. SQLite runs this under its one write lock, so
        # the inner SELECT alone would do. PostgreSQL at READ COMMITTED does not lock the rows
        # the subquery picks: two claimers can pick the same ids, and the second UPDATE then
        # waits for the first and re-checks only the OUTER condition against the row as the
        # first left it. Repeating the condition there makes the second skip a row the first
        # took, instead of taking it too (PostgreSQL docs, "Read Committed Isolation Level").
        rows = await tx.fetchall(
            "UPDATE webhook_outbox SET claimed_by = ?, claim_expires_at = ?"
            f" WHERE id IN (SELECT id FROM webhook_outbox WHERE {_CLAIMABLE}"
            " ORDER BY next_attempt_at, id LIMIT ?)"
            f" AND {_CLAIMABLE} RETURNING {_DELIVERY_COLUMNS}",
            (claimer, now + lease_s, now, now, limit, now, now),
        )
    # RETURNING comes in no promised order.
    return sorted(map(_delivery, rows), key=lambda d: (d.next_attempt_at, d.id))


async def release_webhooks(db: Database, claimer: str) -> int:
    """End every claim `claimer` holds without counting an attempt; return how many."""
    async with db.transaction() as tx:
        return await tx.execute(
            "UPDATE webhook_outbox SET claim_expires_at = NULL"
            " WHERE claimed_by = ? AND claim_expires_at IS NOT NULL",
            (claimer,),
        )


async def next_webhook_due_at(db: Database) -> float | None:
    """When the earliest pending delivery can next be claimed (unix seconds), or None.

    A held delivery counts from the end of its lease: only then may another claimer take it.
    """
    row = await db.fetchone(
        "SELECT MIN(CASE WHEN claim_expires_at > next_attempt_at THEN claim_expires_at"
        f" ELSE next_attempt_at END) FROM webhook_outbox WHERE {_PENDING}"
    )
    return None if row is None or row[0] is None else float(row[0])


async def webhook_secret(db: Database, company_id: str) -> str | None:
    row = await db.fetchone("SELECT secret FROM webhooks WHERE company_id = ?", (company_id,))
    return None if row is None else str(row[0])


async def record_webhook_attempt(
    db: Database,
    delivery_id: int,
    *,
    claimer: str,
    delivered: bool,
    error: str | None = None,
    retry_at: float | None = None,
) -> bool:
    """Count one attempt: delivered, retried at `retry_at`, or (neither) failed for good.

    Applies only while `claimer` still holds the delivery's claim, and ends that claim; False
    (nothing written) when it does not: its lease ran out and another claimer took the row.
    """
    now = time.time()
    params: tuple[object, ...]
    if delivered:
        sql, params = "delivered_at = ?, last_error = NULL", (now,)
    elif retry_at is not None:
        sql, params = "next_attempt_at = ?, last_error = ?", (retry_at, error)
    else:
        sql, params = "failed_at = ?, last_error = ?", (now, error)
    async with db.transaction() as tx:
        changed = await tx.execute(
            f"UPDATE webhook_outbox SET attempts = attempts + 1, claim_expires_at = NULL, {sql}"
            f" WHERE id = ? AND {_PENDING} AND claimed_by = ? AND claim_expires_at IS NOT NULL",
            (*params, delivery_id, claimer),
        )
    return changed == 1


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
