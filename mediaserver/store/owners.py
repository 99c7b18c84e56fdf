"""Processes that own calls, and the end of a dead one's calls (decision 0080).

    register_owner -> owners row --heartbeat (last_seen = now, every second)--> ...
        clean exit:   retire_owner     its calls left open end `shutdown` now; the row goes
        found dead:   end_owner_calls  its open calls end at its last_seen; the row goes
    end_unowned_calls: open calls written before owners existed (v4) end `server_crash` now

Ending calls here is one transaction with their `call.ended` outbox rows and the owner's row:
all of it happens or none, so a crash of whoever ends them leaves the owner to be found dead
again, never a call ended without its webhook. The body of each `call.ended` is built by the
caller's `CallEndedBody` (the webhooks module: the store does not import it). Who is dead is
not decided here: that policy is `mediaserver/owners.py`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

from actors.messages import CRASH_REASONS, CrashReason, EndReason
from mediaserver.store.calls import CALL_COLUMNS, call_from_row, read_turns, read_usage
from mediaserver.store.db import Database, Session
from mediaserver.store.errors import InvalidValue, NotFound
from mediaserver.store.models import Call, Owner, TurnRecord, Usage
from mediaserver.store.validation import check_choice, check_count, check_name
from mediaserver.store.webhooks import queue_delivery

logger = logging.getLogger(__name__)

_OWNER_COLUMNS = "id, node_id, worker_id, host, pid, started_at, last_seen"


class CallEndedBody(Protocol):
    """Builds the JSON body of a `call.ended` webhook (`webhook_bodies.call_ended_body`).

    Called inside the store's write transaction, on the event loop: it must be pure and quick.
    If it raises, the transaction rolls back and nothing is ended.
    """

    def __call__(
        self,
        call: Call,
        turns: Sequence[TurnRecord],
        usage: Sequence[Usage],
        *,
        event_id: str,
        created_at: float,
    ) -> str: ...


def _owner(row: sqlite3.Row) -> Owner:
    return Owner(**dict(row))


async def register_owner(
    db: Database, owner_id: str, *, node_id: str, worker_id: int, host: str, pid: int
) -> Owner:
    """Add the row of a process that is about to own calls, seen now.

    Raises:
        Conflict: `owner_id` is taken (ids are per run: a reused one would hide a crash).
    """
    owner_id = check_name("owner_id", owner_id)
    check_count("worker_id", worker_id)
    check_count("pid", pid)
    if pid == 0:
        raise InvalidValue("pid", "must be positive")
    now = time.time()
    owner = Owner(
        id=owner_id,
        node_id=check_name("node_id", node_id),
        worker_id=worker_id,
        host=check_name("host", host),
        pid=pid,
        started_at=now,
        last_seen=now,
    )
    async with db.transaction() as tx:
        await tx.execute(
            f"INSERT INTO owners ({_OWNER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (owner.id, owner.node_id, worker_id, owner.host, pid, now, now),
        )
    logger.info(
        "= owner %s registered (node %s, worker %d, pid %d)", owner_id, node_id, worker_id, pid
    )
    return owner


async def heartbeat(db: Database, owner_id: str) -> bool:
    """Set the owner's `last_seen` to now; False when its row is gone (it was found dead)."""
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE owners SET last_seen = ? WHERE id = ?", (time.time(), owner_id)
        )
    return changed == 1


async def list_owners(db: Database) -> list[Owner]:
    rows = await db.fetchall(
        f"SELECT {_OWNER_COLUMNS} FROM owners ORDER BY node_id, worker_id, started_at, id"
    )
    return [_owner(row) for row in rows]


async def retire_owner(
    db: Database, owner_id: str, *, call_ended_body: CallEndedBody
) -> list[Call]:
    """A clean exit: end the owner's calls still open (`shutdown`, now) and delete its row.

    Returns the calls it ended (normally none: the edge ends its calls first). Also ends them
    when the row is already gone.
    """
    shutdown: EndReason = "shutdown"
    async with db.transaction() as tx:
        ended = await _end_calls(
            tx, "owner_id = ?", (owner_id,), shutdown, at=time.time(), body=call_ended_body
        )
        await tx.execute("DELETE FROM owners WHERE id = ?", (owner_id,))
    logger.info("= owner %s retired (%d calls were still open)", owner_id, len(ended))
    return ended


async def end_owner_calls(
    db: Database,
    owner_id: str,
    reason: CrashReason,
    *,
    call_ended_body: CallEndedBody,
    if_last_seen: float | None = None,
) -> list[Call]:
    """End a dead owner's open calls at its `last_seen`, queue their webhooks, delete its row.

    Each call's `ended_at` is `max(started_at, last_seen)`: the last moment the owner was known
    alive, so the time it lay dead is not billed. One transaction.

    Args:
        if_last_seen: the `last_seen` the caller judged the owner dead by; if the row has
            another one now (it beat since), nothing is ended. None: end it whatever it says.

    Raises:
        NotFound: no such owner (someone else ended it first), or it beat since `if_last_seen`.
    """
    check_choice("reason", reason, CRASH_REASONS)
    async with db.transaction() as tx:
        row = await tx.fetchone("SELECT last_seen FROM owners WHERE id = ?", (owner_id,))
        if row is None:
            raise NotFound(f"owner {owner_id!r}")
        last_seen = float(row[0])
        if if_last_seen is not None and last_seen != if_last_seen:
            raise NotFound(f"owner {owner_id!r} as last seen at {if_last_seen} (it beat since)")
        ended = await _end_calls(
            tx, "owner_id = ?", (owner_id,), reason, at=last_seen, body=call_ended_body
        )
        await tx.execute("DELETE FROM owners WHERE id = ?", (owner_id,))
    logger.debug("= owner %s ended: %d open calls ended %s", owner_id, len(ended), reason)
    return ended


async def end_unowned_calls(db: Database, *, call_ended_body: CallEndedBody) -> list[Call]:
    """End open calls that have no owner (written before v4) as `server_crash`, now.

    Nothing better than now is known for them. Call it only at start, before this process
    starts calls of its own.
    """
    crashed: CrashReason = "server_crash"
    async with db.transaction() as tx:
        ended = await _end_calls(
            tx, "owner_id IS NULL", (), crashed, at=time.time(), body=call_ended_body
        )
    logger.debug("= %d calls without an owner ended %s", len(ended), crashed)
    return ended


async def _end_calls(
    tx: Session,
    where: str,
    params: tuple[object, ...],
    reason: EndReason | CrashReason,
    *,
    at: float,
    body: CallEndedBody,
) -> list[Call]:
    """End the open calls matching `where` at `max(started_at, at)`, each with its webhook."""
    # CASE, not SQLite's two-argument MAX: the same SQL then runs on PostgreSQL.
    rows = await tx.fetchall(
        "UPDATE calls SET end_reason = ?,"
        " ended_at = CASE WHEN started_at > ? THEN started_at ELSE ? END"
        f" WHERE ended_at IS NULL AND {where} RETURNING {CALL_COLUMNS}",
        (reason, at, at, *params),
    )
    ended = sorted(map(call_from_row, rows), key=lambda call: (call.started_at, call.id))
    now = time.time()
    for call in ended:
        if not await tx.fetchone("SELECT 1 FROM webhooks WHERE company_id = ?", (call.company_id,)):
            continue
        event_id = uuid.uuid4().hex
        text = body(
            call,
            await read_turns(tx, call.company_id, call.id),
            await read_usage(tx, call.company_id, call.id),
            event_id=event_id,
            created_at=now,
        )
        await queue_delivery(
            tx, call.company_id, event_id=event_id, event="call.ended", call_id=call.id, body=text
        )
    return ended
