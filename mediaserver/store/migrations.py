"""Forward-only schema migrations, applied in order when the store opens.

Each `Migration` is a list of SQL statements that runs in one transaction together with its row
in `schema_version`, so a crash leaves the file at the old version or the new one, never between.
Never edit a released migration: append a new one. A step that rebuilds a table must follow
SQLite's twelve-step ALTER TABLE recipe (https://sqlite.org/lang_altertable.html#otheralter).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mediaserver.store.db import Database, Session
from mediaserver.store.errors import SchemaTooNew

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_TENANTS = Migration(
    version=1,
    name="tenants",
    statements=(
        """CREATE TABLE schema_version (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at REAL NOT NULL
        )""",
        """CREATE TABLE companies (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            company_id TEXT NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            prefix TEXT NOT NULL UNIQUE,
            secret_sha256 BLOB NOT NULL,
            label TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            revoked_at REAL
        )""",
        "CREATE INDEX api_keys_by_company ON api_keys (company_id)",
        """CREATE TABLE agents (
            id TEXT PRIMARY KEY,
            company_id TEXT NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            system_prompt TEXT NOT NULL,
            greeting TEXT NOT NULL,
            language TEXT NOT NULL,
            voice TEXT NOT NULL,
            stt_engine TEXT NOT NULL,
            llm_engine TEXT NOT NULL,
            tts_engine TEXT NOT NULL,
            stt_fallback TEXT,
            llm_fallback TEXT,
            tts_fallback TEXT,
            faq TEXT NOT NULL DEFAULT '[]',
            vad TEXT NOT NULL DEFAULT '{}',
            recording INTEGER NOT NULL DEFAULT 0 CHECK (recording IN (0, 1)),
            is_default INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (company_id, name),
            UNIQUE (company_id, id)
        )""",
        # At most one default agent per company, enforced by the file itself.
        "CREATE UNIQUE INDEX agents_one_default ON agents (company_id) WHERE is_default = 1",
        # The composite key makes "the agent belongs to the number's company" a constraint.
        """CREATE TABLE phone_numbers (
            number TEXT PRIMARY KEY,
            company_id TEXT NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            agent_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            FOREIGN KEY (company_id, agent_id) REFERENCES agents (company_id, id)
        )""",
        "CREATE INDEX phone_numbers_by_agent ON phone_numbers (company_id, agent_id)",
    ),
)

_CALLS = Migration(
    version=2,
    name="calls",
    statements=(
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            company_id TEXT NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            agent_id TEXT NOT NULL,
            peer_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (company_id, id)
        )""",
        # agent_id has no foreign key: call history outlives a deleted agent.
        """CREATE TABLE calls (
            id TEXT PRIMARY KEY,
            company_id TEXT NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            conversation_id TEXT,
            agent_id TEXT NOT NULL,
            transport TEXT NOT NULL
                CHECK (transport IN ('webrtc', 'whip', 'twilio', 'exotel', 'text')),
            peer_id TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            end_reason TEXT,
            recording_path TEXT,
            UNIQUE (company_id, id),
            FOREIGN KEY (company_id, conversation_id) REFERENCES conversations (company_id, id)
        )""",
        "CREATE INDEX calls_by_company ON calls (company_id, started_at)",
        "CREATE INDEX calls_by_conversation ON calls (company_id, conversation_id)",
        "CREATE INDEX calls_open ON calls (company_id) WHERE ended_at IS NULL",
        """CREATE TABLE call_events (
            id INTEGER PRIMARY KEY,
            company_id TEXT NOT NULL,
            call_id TEXT NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}',
            FOREIGN KEY (company_id, call_id) REFERENCES calls (company_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX call_events_by_call ON call_events (company_id, call_id, id)",
        """CREATE TABLE turns (
            company_id TEXT NOT NULL,
            call_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'dtmf')),
            text TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            interrupted INTEGER NOT NULL DEFAULT 0 CHECK (interrupted IN (0, 1)),
            stt_ms REAL,
            llm_first_token_ms REAL,
            tts_first_audio_ms REAL,
            voice_to_voice_ms REAL,
            PRIMARY KEY (company_id, call_id, seq),
            FOREIGN KEY (company_id, call_id) REFERENCES calls (company_id, id) ON DELETE CASCADE
        )""",
        """CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            company_id TEXT NOT NULL,
            call_id TEXT NOT NULL,
            provider TEXT NOT NULL,
            tokens_in INTEGER NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
            tokens_out INTEGER NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
            audio_in_s REAL NOT NULL DEFAULT 0 CHECK (audio_in_s >= 0),
            audio_out_s REAL NOT NULL DEFAULT 0 CHECK (audio_out_s >= 0),
            at REAL NOT NULL,
            FOREIGN KEY (company_id, call_id) REFERENCES calls (company_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX usage_by_call ON usage (company_id, call_id)",
    ),
)

_WEBHOOKS = Migration(
    version=3,
    name="webhooks",
    statements=(
        # One endpoint per company. The secret is kept in clear: signing needs it (HMAC).
        """CREATE TABLE webhooks (
            company_id TEXT PRIMARY KEY REFERENCES companies (id) ON DELETE CASCADE,
            url TEXT NOT NULL,
            secret TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        # The durable outbox: a row is written before any attempt and kept after the last, so a
        # restart loses no pending delivery. `body` is final; each attempt signs it afresh.
        """CREATE TABLE webhook_outbox (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            company_id TEXT NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            event TEXT NOT NULL,
            call_id TEXT,
            url TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            next_attempt_at REAL NOT NULL,
            last_error TEXT,
            delivered_at REAL,
            failed_at REAL
        )""",
        "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)"
        " WHERE delivered_at IS NULL AND failed_at IS NULL",
        "CREATE INDEX webhook_outbox_by_company ON webhook_outbox (company_id, id)",
    ),
)

_OWNERS = Migration(
    version=4,
    name="owners",
    statements=(
        # A process that owns calls; its row is its heartbeat. The id is the owner's own choice.
        """CREATE TABLE owners (
            id TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            worker_id INTEGER NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at REAL NOT NULL,
            last_seen REAL NOT NULL
        )""",
        # No foreign key: a dead owner's row goes, its calls keep its id as history. NULL for
        # calls written before v4.
        "ALTER TABLE calls ADD COLUMN owner_id TEXT",
        "CREATE INDEX calls_open_by_owner ON calls (owner_id) WHERE ended_at IS NULL",
        # The lease: claimed_by holds (or last held) the delivery; claim_expires_at is NULL
        # while nobody holds it.
        "ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT",
        "ALTER TABLE webhook_outbox ADD COLUMN claim_expires_at REAL",
        "CREATE INDEX webhook_outbox_claims ON webhook_outbox (claimed_by)"
        " WHERE claim_expires_at IS NOT NULL",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (_TENANTS, _CALLS, _WEBHOOKS, _OWNERS)
LATEST_VERSION = MIGRATIONS[-1].version


async def read_version(tx: Session) -> int:
    """The file's schema version; 0 for a file no migration has touched."""
    table = await tx.fetchone(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    )
    if table is None:
        return 0
    row = await tx.fetchone("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    assert row is not None
    return int(row[0])


async def migrate(db: Database, *, target: int = LATEST_VERSION) -> int:
    """Bring the file up to `target` (tests stop early); return the version it ends at.

    Raises:
        SchemaTooNew: the file is at a version newer than `LATEST_VERSION`.
    """
    assert 0 <= target <= LATEST_VERSION, target
    async with db.read() as tx:
        version = await read_version(tx)
    for migration in MIGRATIONS:
        if version > LATEST_VERSION:
            raise SchemaTooNew(version, LATEST_VERSION)
        if migration.version <= version or migration.version > target:
            continue
        async with db.transaction() as tx:
            # Read again under the write lock: another process may have migrated meanwhile.
            version = await read_version(tx)
            if migration.version <= version:
                continue
            for statement in migration.statements:
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
            version = migration.version
        logger.info("= schema migrated to v%d (%s)", version, migration.name)
    return version
