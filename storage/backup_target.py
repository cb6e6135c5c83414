"""Where backups come from and go back to: one interface for each backend's own backups.

The operations (the schedule, `/backup`, the CLI) take, list, verify and
restore backups through `BackupTarget` and never see whether a backup is a
SQLite file or a `pg_dump` archive. The methods block (copying, checking);
callers on the bot's loop run them in a thread. `exclusively` is the one
async method: it runs such blocking work while no memory can be written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

from storage import backups
from storage.backups import BackupCheck, BackupInfo
from storage.database import Database

T = TypeVar("T")


class BackupTarget(Protocol):
    backups_dir: Path
    # What the backend's backups are, for people: "SQLite" or "PostgreSQL".
    label: str

    def take(
        self, *, kind: str, now: datetime | None = None, keep: int | None = None, protect: Collection[str] = ()
    ) -> BackupInfo:
        """A new verified backup of `kind`; then that kind pruned to `keep`, sparing `protect`."""
        ...

    def verify(self, path: Path) -> BackupCheck:
        """Check a backup file (InvalidBackup with the reason if it is not sound)."""
        ...

    def list(self) -> list[BackupInfo]:
        """This backend's backups, oldest first."""
        ...

    def find(self, name: str) -> BackupInfo:
        """A backup by name; UnknownBackup if there is none."""
        ...

    def newest(self, kind: str | None = None) -> BackupInfo | None: ...

    def restore(self, path: Path) -> None:
        """Put a verified backup in place of the live memory; BackupError if it could not."""
        ...

    def remove_temp_files(self) -> list[str]:
        """Delete what an interrupted backup left; call only when none is running."""
        ...

    async def exclusively(self, work: Callable[[], T]) -> T:
        """Run blocking `work` in a thread while no memory can be written (a safety backup and a restore)."""
        ...


class SQLiteBackups:
    """Backups of the SQLite database: self-contained copies made with SQLite's backup API."""

    label = "SQLite"

    def __init__(self, db: Database | None, db_path: Path, backups_dir: Path, snapshots_dir: Path | None) -> None:
        # `db` is the bot's open database, whose write lock `exclusively` holds; the CLI has none.
        self.db = db
        self.db_path = db_path
        self.backups_dir = backups_dir
        self.snapshots_dir = snapshots_dir

    def take(
        self, *, kind: str, now: datetime | None = None, keep: int | None = None, protect: Collection[str] = ()
    ) -> BackupInfo:
        return backups.take_backup(self.db_path, self.backups_dir, kind=kind, now=now, keep=keep, protect=protect)

    def verify(self, path: Path) -> BackupCheck:
        return backups.verify_backup(path)

    def list(self) -> list[BackupInfo]:
        return backups.list_backups(self.backups_dir)

    def find(self, name: str) -> BackupInfo:
        return backups.find_backup(self.backups_dir, name)

    def newest(self, kind: str | None = None) -> BackupInfo | None:
        return backups.newest_backup(self.backups_dir, kind)

    def restore(self, path: Path) -> None:
        backups.restore_into(path, self.db_path, self.snapshots_dir)

    def remove_temp_files(self) -> list[str]:
        return backups.remove_temp_files(self.backups_dir)

    async def exclusively(self, work: Callable[[], T]) -> T:
        if self.db is None:
            # The command line: it holds the data folder's lock, so no bot writes meanwhile.
            return await asyncio.to_thread(work)
        return await self.db.run_exclusively(work)
