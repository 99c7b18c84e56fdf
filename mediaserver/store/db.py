"""One aiosqlite connection, its pragmas, its transactions, and the sqlite3-to-StoreError seam.

The connection runs in autocommit mode. Every write runs inside `Database.transaction()`, which
issues `BEGIN IMMEDIATE`: it takes SQLite's write lock up front, so two processes never both hold
a read snapshot they then try to upgrade (that fails at once with SQLITE_BUSY, busy timeout or
not). An `asyncio.Lock` keeps the coroutines sharing this connection out of each other's
transactions; a plain read takes the same lock, so it never sees another coroutine's uncommitted
rows.

Switching a file to WAL is the one step that can meet SQLITE_BUSY without the busy handler
(`_switch_to_wal` says why and retries it); WAL mode then persists in the file.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiosqlite

from mediaserver.store.errors import Conflict, StoreBusy, StoreError

logger = logging.getLogger(__name__)

Params = Iterable[object]


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn sqlite3 exceptions into our own; nothing from sqlite3 leaves the store."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise Conflict(str(exc)) from exc
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise StoreBusy(f"database stayed locked past the busy timeout: {exc}") from exc
        raise StoreError(f"sqlite: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"sqlite: {exc}") from exc


# Waits between tries of the WAL switch: short, as the other connection's switch is one small
# write; capped like SQLite's own busy handler (sqliteDefaultBusyCallback).
_WAL_RETRY_FIRST_S = 0.001
_WAL_RETRY_MAX_S = 0.05


async def _switch_to_wal(conn: aiosqlite.Connection, busy_timeout_ms: int) -> str | None:
    """`PRAGMA journal_mode = WAL`, tried again on SQLITE_BUSY until the busy timeout.

    On a file still in rollback-journal mode (every new file), the switch reads the header under
    a shared lock and then upgrades to a write lock to set it. When another connection already
    holds or wants that write lock (it is switching the same file), SQLite returns SQLITE_BUSY
    at once instead of calling the busy handler, because waiting while holding the shared lock
    could deadlock (https://www.sqlite.org/c3ref/busy_handler.html). The statement then ends
    and lets its shared lock go, so trying again succeeds once the other switch commits. A
    file already in WAL needs no write and never gets here twice.

    Returns:
        The journal mode SQLite reports after the switch ("wal", or "memory" for ":memory:").
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay, tries = _WAL_RETRY_FIRST_S, 1
    while True:
        try:
            async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
                row = await cursor.fetchone()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay, tries = min(delay * 2, _WAL_RETRY_MAX_S), tries + 1
            continue
        if tries > 1:
            logger.debug("= switched to WAL after %d tries", tries)
        return None if row is None else str(row[0])


class Session:
    """Statements on the connection, run while the caller holds its lock."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        async with self._conn.execute(sql, tuple(params)) as cursor:
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._conn.executemany(sql, [tuple(row) for row in rows])

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, tuple(params)))


class Database:
    """The store's connection. Use `transaction()` for writes, `fetchone`/`fetchall` for reads."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def connect(cls, path: str, *, busy_timeout_ms: int) -> Database:
        """Open `path` (creating it and its parent folder) in WAL mode with foreign keys on."""
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with translate_errors():
            conn = await aiosqlite.connect(path, isolation_level=None)
            try:
                conn.row_factory = sqlite3.Row
                # The busy timeout goes first: switching to WAL needs the lock too.
                await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                mode = await _switch_to_wal(conn, busy_timeout_ms)
                if mode != "wal" and path != ":memory:":
                    raise StoreError(f"{path}: could not switch to WAL journal mode (got {mode})")
                await conn.execute("PRAGMA foreign_keys = ON")
                # In WAL mode NORMAL survives a process crash; only power loss can drop the
                # last commits, never corrupt the file.
                await conn.execute("PRAGMA synchronous = NORMAL")
            except BaseException:
                await conn.close()
                raise
        logger.debug("= opened %s (busy timeout %d ms)", path, busy_timeout_ms)
        return cls(conn)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            with translate_errors():
                await self._conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        """A write transaction: committed on exit, rolled back if the body raises."""
        async with self._lock:
            self._check_open()
            with translate_errors():
                try:
                    await self._conn.execute("BEGIN IMMEDIATE")
                    yield Session(self._conn)
                    await self._conn.execute("COMMIT")
                except BaseException:
                    # Also after a failed or cancelled BEGIN or COMMIT: the worker thread runs
                    # this ROLLBACK after them, so the connection never stays mid-transaction.
                    await self._rollback()
                    raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Session]:
        """Statements outside a write transaction; each one reads its own committed snapshot."""
        async with self._lock:
            self._check_open()
            with translate_errors():
                yield Session(self._conn)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self.read() as tx:
            return await tx.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self.read() as tx:
            return await tx.fetchall(sql, params)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    async def _rollback(self) -> None:
        try:
            await self._conn.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            # SQLite already rolled back on its own (some errors do that); nothing to undo.
            logger.debug("= rollback skipped: %s", exc)
