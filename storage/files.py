"""Small file-system steps that backups and snapshots share, and keeping the data folder private."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

# What SQLite may leave beside a database file.
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")
# Everything in the data folder is a community's history: for the bot's own user alone.
PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private(folder: Path) -> int:
    """Give `folder` and everything in it owner-only modes (folders 0700, files 0600).

    For files an earlier version (or another umask) created readable by
    others. Returns how many modes were changed; links are left alone.
    """
    if not folder.is_dir():
        return 0
    changed = 0
    for path in [folder, *folder.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue  # removed meanwhile
        if stat.S_ISLNK(mode):
            continue
        wanted = PRIVATE_DIR_MODE if stat.S_ISDIR(mode) else PRIVATE_FILE_MODE
        if stat.S_IMODE(mode) != wanted:
            os.chmod(path, wanted)
            changed += 1
    return changed


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
