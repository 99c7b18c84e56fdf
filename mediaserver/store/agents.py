"""Agents of a company, its default agent, and the phone numbers that route to them."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
import uuid

from mediaserver.store.db import Database, Session
from mediaserver.store.errors import Conflict, InvalidValue, NotFound
from mediaserver.store.models import Agent, AgentChanges, AgentSpec, Company, PhoneNumber
from mediaserver.store.tenants import company_from_row, require_company
from mediaserver.store.validation import (
    check_agent_spec,
    check_number,
    faq_to_json,
    is_e164,
    parse_faq,
    parse_vad,
    vad_to_json,
)

logger = logging.getLogger(__name__)

SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(AgentSpec))
_ASSIGNMENTS = ", ".join(f"{name} = ?" for name in SPEC_FIELDS)
# The oldest agent left becomes the default when the default is deleted.
_OLDEST = "SELECT id FROM agents WHERE company_id = ? ORDER BY created_at, rowid LIMIT 1"


def _spec_values(spec: AgentSpec) -> tuple[object, ...]:
    values = {name: getattr(spec, name) for name in SPEC_FIELDS}
    values.update(
        faq=faq_to_json(spec.faq), vad=vad_to_json(spec.vad), recording=int(spec.recording)
    )
    return tuple(values[name] for name in SPEC_FIELDS)


def agent_from_row(row: sqlite3.Row) -> Agent:
    fields = {name: row[name] for name in SPEC_FIELDS}
    fields.update(
        faq=parse_faq(json.loads(row["faq"])),
        vad=parse_vad(json.loads(row["vad"])),
        recording=bool(row["recording"]),
    )
    return Agent(
        id=row["id"],
        company_id=row["company_id"],
        spec=AgentSpec(**fields),
        is_default=bool(row["is_default"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def _fetch_agent(session: Session, company_id: str, agent_id: str) -> Agent:
    row = await session.fetchone(
        "SELECT * FROM agents WHERE company_id = ? AND id = ?", (company_id, agent_id)
    )
    if row is None:
        raise NotFound(f"agent {agent_id!r}")
    return agent_from_row(row)


async def require_agent(session: Session, company_id: str, agent_id: str) -> None:
    row = await session.fetchone(
        "SELECT 1 FROM agents WHERE company_id = ? AND id = ?", (company_id, agent_id)
    )
    if row is None:
        raise NotFound(f"agent {agent_id!r}")


async def _check_name_free(session: Session, company_id: str, name: str, agent_id: str) -> None:
    row = await session.fetchone(
        "SELECT 1 FROM agents WHERE company_id = ? AND name = ? AND id != ?",
        (company_id, name, agent_id),
    )
    if row is not None:
        raise Conflict(f"the company already has an agent named {name!r}")


async def create_agent(db: Database, company_id: str, spec: AgentSpec, *, default: bool) -> Agent:
    spec = check_agent_spec(spec)
    agent_id, now = uuid.uuid4().hex, time.time()
    async with db.transaction() as tx:
        await require_company(tx, company_id)
        await _check_name_free(tx, company_id, spec.name, agent_id)
        if default:
            await tx.execute("UPDATE agents SET is_default = 0 WHERE company_id = ?", (company_id,))
        first = await tx.fetchone(_OLDEST, (company_id,)) is None
        await tx.execute(
            f"INSERT INTO agents (id, company_id, is_default, created_at, updated_at,"
            f" {', '.join(SPEC_FIELDS)}) VALUES (?, ?, ?, ?, ?{', ?' * len(SPEC_FIELDS)})",
            (agent_id, company_id, int(default or first), now, now, *_spec_values(spec)),
        )
        agent = await _fetch_agent(tx, company_id, agent_id)
    logger.info("= agent %s created for company %s", agent_id, company_id)
    return agent


async def list_agents(db: Database, company_id: str) -> list[Agent]:
    rows = await db.fetchall(
        "SELECT * FROM agents WHERE company_id = ? ORDER BY created_at, rowid", (company_id,)
    )
    return [agent_from_row(row) for row in rows]


async def get_agent(db: Database, company_id: str, agent_id: str) -> Agent | None:
    row = await db.fetchone(
        "SELECT * FROM agents WHERE company_id = ? AND id = ?", (company_id, agent_id)
    )
    return None if row is None else agent_from_row(row)


async def get_default_agent(db: Database, company_id: str) -> Agent | None:
    row = await db.fetchone(
        "SELECT * FROM agents WHERE company_id = ? AND is_default = 1", (company_id,)
    )
    return None if row is None else agent_from_row(row)


async def update_agent(
    db: Database, company_id: str, agent_id: str, changes: AgentChanges
) -> Agent:
    unknown = set(changes) - set(SPEC_FIELDS)
    if unknown:
        raise InvalidValue(sorted(unknown)[0], "is not an editable agent field")
    async with db.transaction() as tx:
        current = await _fetch_agent(tx, company_id, agent_id)
        spec = check_agent_spec(dataclasses.replace(current.spec, **changes))
        await _check_name_free(tx, company_id, spec.name, agent_id)
        await tx.execute(
            f"UPDATE agents SET {_ASSIGNMENTS}, updated_at = ? WHERE company_id = ? AND id = ?",
            (*_spec_values(spec), time.time(), company_id, agent_id),
        )
        agent = await _fetch_agent(tx, company_id, agent_id)
    logger.info("= agent %s updated (%s)", agent_id, ", ".join(sorted(changes)))
    return agent


async def set_default_agent(db: Database, company_id: str, agent_id: str) -> Agent:
    async with db.transaction() as tx:
        await require_agent(tx, company_id, agent_id)
        # Unset first: the partial unique index allows one default per company at any moment.
        await tx.execute("UPDATE agents SET is_default = 0 WHERE company_id = ?", (company_id,))
        await tx.execute(
            "UPDATE agents SET is_default = 1 WHERE company_id = ? AND id = ?",
            (company_id, agent_id),
        )
        agent = await _fetch_agent(tx, company_id, agent_id)
    logger.info("= agent %s is now the default of company %s", agent_id, company_id)
    return agent


async def delete_agent(db: Database, company_id: str, agent_id: str) -> None:
    async with db.transaction() as tx:
        agent = await _fetch_agent(tx, company_id, agent_id)
        numbers = await tx.fetchall(
            "SELECT number FROM phone_numbers WHERE company_id = ? AND agent_id = ?",
            (company_id, agent_id),
        )
        if numbers:
            raise Conflict(
                f"agent {agent_id!r} still answers {', '.join(r[0] for r in numbers)};"
                " remove those numbers first"
            )
        await tx.execute(
            "DELETE FROM agents WHERE company_id = ? AND id = ?", (company_id, agent_id)
        )
        if agent.is_default:
            await tx.execute(
                f"UPDATE agents SET is_default = 1 WHERE id = ({_OLDEST})", (company_id,)
            )
    logger.info("= agent %s deleted from company %s", agent_id, company_id)


def _number(row: sqlite3.Row) -> PhoneNumber:
    return PhoneNumber(
        number=row["number"],
        company_id=row["company_id"],
        agent_id=row["agent_id"],
        created_at=row["created_at"],
    )


async def add_number(db: Database, company_id: str, number: str, agent_id: str) -> PhoneNumber:
    phone = PhoneNumber(
        number=check_number(number),
        company_id=company_id,
        agent_id=agent_id,
        created_at=time.time(),
    )
    async with db.transaction() as tx:
        await require_agent(tx, company_id, agent_id)
        if await tx.fetchone("SELECT 1 FROM phone_numbers WHERE number = ?", (number,)):
            # Says nothing about which company holds it.
            raise Conflict(f"{number} is already assigned")
        await tx.execute(
            "INSERT INTO phone_numbers (number, company_id, agent_id, created_at)"
            " VALUES (?, ?, ?, ?)",
            (number, company_id, agent_id, phone.created_at),
        )
    logger.info("= number %s routed to agent %s", number, agent_id)
    return phone


async def list_numbers(db: Database, company_id: str) -> list[PhoneNumber]:
    rows = await db.fetchall(
        "SELECT * FROM phone_numbers WHERE company_id = ? ORDER BY number", (company_id,)
    )
    return [_number(row) for row in rows]


async def remove_number(db: Database, company_id: str, number: str) -> None:
    async with db.transaction() as tx:
        removed = await tx.execute(
            "DELETE FROM phone_numbers WHERE company_id = ? AND number = ?", (company_id, number)
        )
    if not removed:
        raise NotFound(f"number {number!r}")
    logger.info("= number %s removed", number)


async def route_number(db: Database, number: object) -> tuple[Company, Agent] | None:
    if not is_e164(number):
        return None
    row = await db.fetchone(
        "SELECT a.*, c.id AS c_id, c.name AS c_name, c.created_at AS c_created_at"
        " FROM phone_numbers p"
        " JOIN agents a ON a.company_id = p.company_id AND a.id = p.agent_id"
        " JOIN companies c ON c.id = p.company_id"
        " WHERE p.number = ?",
        (number,),
    )
    return None if row is None else (company_from_row(row, "c_"), agent_from_row(row))
