"""Companies and their API keys."""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid

from mediaserver.store.db import Database, Session
from mediaserver.store.errors import InvalidValue, NotFound
from mediaserver.store.keys import hash_secret, new_api_key, secret_matches, split_api_key
from mediaserver.store.models import ApiKey, Company
from mediaserver.store.validation import check_name

logger = logging.getLogger(__name__)

_KEY_COLUMNS = "id, company_id, prefix, label, created_at, revoked_at"


def company_from_row(row: sqlite3.Row, prefix: str = "") -> Company:
    return Company(
        id=row[f"{prefix}id"], name=row[f"{prefix}name"], created_at=row[f"{prefix}created_at"]
    )


def _api_key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        company_id=row["company_id"],
        prefix=row["prefix"],
        label=row["label"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


async def require_company(session: Session, company_id: str) -> None:
    if await session.fetchone("SELECT 1 FROM companies WHERE id = ?", (company_id,)) is None:
        raise NotFound(f"company {company_id!r}")


async def create_company(db: Database, name: str) -> Company:
    company = Company(id=uuid.uuid4().hex, name=check_name("name", name), created_at=time.time())
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO companies (id, name, created_at) VALUES (?, ?, ?)",
            (company.id, company.name, company.created_at),
        )
    logger.info("= company %s created", company.id)
    return company


async def list_companies(db: Database) -> list[Company]:
    rows = await db.fetchall("SELECT * FROM companies ORDER BY created_at, rowid")
    return [company_from_row(row) for row in rows]


async def get_company(db: Database, company_id: str) -> Company | None:
    row = await db.fetchone("SELECT * FROM companies WHERE id = ?", (company_id,))
    return None if row is None else company_from_row(row)


async def create_api_key(db: Database, company_id: str, label: str) -> tuple[ApiKey, str]:
    if not isinstance(label, str):
        raise InvalidValue("label", "must be a string")
    async with db.transaction() as tx:
        await require_company(tx, company_id)
        # 36**8 prefixes make a clash unlikely, not impossible; we hold the write lock, so a
        # prefix found free here is still free at the INSERT.
        while True:
            prefix, plaintext = new_api_key()
            if await tx.fetchone("SELECT 1 FROM api_keys WHERE prefix = ?", (prefix,)) is None:
                break
        key = ApiKey(
            id=uuid.uuid4().hex,
            company_id=company_id,
            prefix=prefix,
            label=label,
            created_at=time.time(),
            revoked_at=None,
        )
        await tx.execute(
            "INSERT INTO api_keys (id, company_id, prefix, secret_sha256, label, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key.id, company_id, prefix, hash_secret(plaintext), label, key.created_at),
        )
    logger.info("= api key %s created for company %s", key.id, company_id)
    return key, plaintext


async def list_api_keys(db: Database, company_id: str) -> list[ApiKey]:
    rows = await db.fetchall(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE company_id = ? ORDER BY created_at, rowid",
        (company_id,),
    )
    return [_api_key(row) for row in rows]


async def revoke_api_key(db: Database, company_id: str, key_id: str) -> ApiKey:
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?)"
            " WHERE company_id = ? AND id = ?",
            (time.time(), company_id, key_id),
        )
        row = await tx.fetchone(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE company_id = ? AND id = ?",
            (company_id, key_id),
        )
    if row is None:
        raise NotFound(f"api key {key_id!r}")
    logger.info("= api key %s revoked", key_id)
    return _api_key(row)


async def authenticate_key(db: Database, plaintext: object) -> tuple[Company, ApiKey] | None:
    parts = split_api_key(plaintext)
    if parts is None:
        return None
    assert isinstance(plaintext, str)
    # No cache: a key revoked by another process (the CLI) stops working on the next request.
    row = await db.fetchone(
        "SELECT k.id, k.company_id, k.prefix, k.label, k.created_at, k.revoked_at,"
        " k.secret_sha256, c.id AS c_id, c.name AS c_name, c.created_at AS c_created_at"
        " FROM api_keys k JOIN companies c ON c.id = k.company_id WHERE k.prefix = ?",
        (parts[0],),
    )
    if row is None or not secret_matches(plaintext, row["secret_sha256"]):
        return None
    if row["revoked_at"] is not None:
        logger.debug("= revoked api key %s presented", row["id"])
        return None
    return company_from_row(row, "c_"), _api_key(row)
