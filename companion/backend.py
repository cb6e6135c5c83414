"""Opening the configured storage backend: the memory store, its backups, and what is SQLite's alone.

`[storage] backend` picks SQLite (a file in the data folder, one process)
or PostgreSQL (a server several processes share, its connection string
in the environment variable `[storage] postgresql_dsn_env` names).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from companion.config import Config
from companion.operations import Leadership, SoleLeadership
from storage.backup_target import BackupTarget, SQLiteBackups
from storage.database import Database
from storage.sqlite_store import SQLiteStore
from storage.store import MemoryStore

log = logging.getLogger(__name__)


@dataclass
class Backend:
    name: str  # "sqlite" or "postgresql"
    store: MemoryStore
    backups: BackupTarget
    # SQLite's database itself, for its snapshots and operations; None with PostgreSQL.
    db: Database | None = None
    # PostgreSQL's connection string, for what needs a connection of its own (the scheduler's election).
    dsn: str | None = None

    @property
    def shared(self) -> bool:
        """Whether several bot processes may use this backend at once."""
        return self.name == "postgresql"

    def leadership(self) -> Leadership:
        """Who runs the scheduled jobs: this process alone, or the one elected among those sharing PostgreSQL."""
        if self.dsn is None:
            return SoleLeadership()
        from storage.postgres.leadership import PostgresLeadership

        return PostgresLeadership(self.dsn)


async def open_backend(config: Config) -> Backend:
    """Open the configured backend, creating or migrating its schema; ConfigError if its DSN is missing."""
    storage = config.storage
    if storage.backend == "postgresql":
        # Imported here: the SQLite default must not need the PostgreSQL driver to start.
        from storage.postgres.backup_target import PostgresBackups
        from storage.postgres.store import PostgresStore

        dsn = config.postgresql_dsn()
        # The data folder still holds the backups and the registered commands' stamp.
        storage.data_dir.mkdir(parents=True, exist_ok=True)
        store = await PostgresStore.open(dsn)
        return Backend("postgresql", store, PostgresBackups(dsn, storage.backups_dir), dsn=dsn)
    db = await Database.open(storage.database_path, snapshots_dir=storage.snapshots_dir)
    store = SQLiteStore(db, snapshots_dir=storage.snapshots_dir)
    backups = SQLiteBackups(db, storage.database_path, storage.backups_dir, storage.snapshots_dir)
    return Backend("sqlite", store, backups, db=db)


async def open_store(config: Config, *, reading: bool = False) -> MemoryStore:
    """The configured store alone, for the command-line tools; `reading` for those that only read
    (beside a running bot, SQLite's then takes no write connection)."""
    storage = config.storage
    if storage.backend == "postgresql":
        from storage.postgres.store import PostgresStore

        return await PostgresStore.open(config.postgresql_dsn(), max_size=2)
    if reading:
        return await SQLiteStore.open_for_reading(storage.database_path)
    return await SQLiteStore.open(storage.database_path, snapshots_dir=storage.snapshots_dir)


def backup_target(config: Config) -> BackupTarget:
    """The configured backend's backups, without opening its store (the command line)."""
    storage = config.storage
    if storage.backend == "postgresql":
        from storage.postgres.backup_target import PostgresBackups

        return PostgresBackups(config.postgresql_dsn(), storage.backups_dir)
    return SQLiteBackups(None, storage.database_path, storage.backups_dir, storage.snapshots_dir)
