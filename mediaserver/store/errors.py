"""Errors of the tenant store.

    StoreError                  root: anything the store refuses or cannot do
    ├── NotFound                the row does not exist *for this company*
    ├── Conflict                a uniqueness rule would break (duplicate number, name, seq)
    ├── InvalidValue            bad input; `field` names the offending field
    ├── SchemaTooNew            the file was migrated by a newer mediaserver
    └── StoreBusy               another writer held the file past the busy timeout

`sqlite3` exceptions never leave the store: `Database` translates them at the seam.
"""

from __future__ import annotations

# N818 wants an "Error" suffix; like websockets' ConnectionClosed and InvalidURI, these are named
# for the condition they report, and the root `StoreError` already says what they are.


class StoreError(Exception):
    """Root of every error the store raises."""


class NotFound(StoreError):
    """The row does not exist, or belongs to another company (the two are indistinguishable)."""


class Conflict(StoreError):
    """The write would break a uniqueness rule."""


class InvalidValue(StoreError):
    """A value failed validation; `field` says which one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class SchemaTooNew(StoreError):
    """The database was written by a newer mediaserver; refusing to touch it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than the newest this mediaserver "
            f"knows ({known}); upgrade mediaserver or use another database file"
        )
        self.found = found
        self.known = known


class StoreBusy(StoreError):
    """Another connection kept the database locked for longer than the busy timeout."""
