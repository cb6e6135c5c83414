"""PostgreSQL's side of `BackupTarget`: pg_dump archives in the same backups folder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import asyncpg

from storage import backups as sqlite_backups
from storage.backups import BackupCheck, BackupError, BackupInfo
from storage.database import outlasting_cancellation
from storage.postgres import backups
from storage.postgres.schema import WRITE_LOCK

T = TypeVar("T")


class PostgresBackups:
    """Backups of a PostgreSQL database: `pg_dump -Fc` archives, checked by restoring them aside."""

    label = "PostgreSQL"

    def __init__(self, dsn: str, backups_dir: Path) -> None:
        self.dsn = dsn
        self.backups_dir = backups_dir

    def take(
        self, *, kind: str, now: datetime | None = None, keep: int | None = None, protect: Collection[str] = ()
    ) -> BackupInfo:
        return backups.take_backup(self.dsn, self.backups_dir, kind=kind, now=now, keep=keep, protect=protect)

    def verify(self, path: Path) -> BackupCheck:
        return backups.verify_backup(path, self.dsn)

    def list(self) -> list[BackupInfo]:
        return backups.list_backups(self.backups_dir)

    def find(self, name: str) -> BackupInfo:
        return backups.find_backup(self.backups_dir, name)

    def newest(self, kind: str | None = None) -> BackupInfo | None:
        return backups.newest_backup(self.backups_dir, kind)

    def restore(self, path: Path) -> None:
        backups.restore_into(path, self.dsn)

    def remove_temp_files(self) -> list[str]:
        return sqlite_backups.remove_temp_files(self.backups_dir)

    async def exclusively(self, work: Callable[[], T]) -> T:
        # Every process's writes take the write lock shared (PostgresStore._writing): holding it
        # exclusively here makes them all wait, then land in whatever `work` leaves.
        try:
            conn = await asyncpg.connect(self.dsn)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise BackupError(f"cannot reach PostgreSQL to hold writes: {exc}") from exc
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", WRITE_LOCK)
            return await outlasting_cancellation(asyncio.to_thread(work))
        finally:
            # Closing the session releases the lock, even if the unlock could not be sent.
            await conn.close()
