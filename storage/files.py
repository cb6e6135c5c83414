"""Small file-system steps that backups and snapshots share."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# What SQLite may leave beside a database file.
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename is durable only once its folder is), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_database_files(*paths: Path) -> None:
    """Delete database files and their SQLite sidecars, whichever exist."""
    for path in paths:
        for suffix in ("", *SQLITE_SIDECARS):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").unlink()
