"""Small file-system steps that backups and snapshots share, and keeping the data folder private."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

# What SQLite may leave beside a database file.
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")
# Everything in the data folder is a community's history: for the bot's own user alone.
PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

# Non-regular files already reported, so a link is named once and not at every listing.
_reported_irregular: set[Path] = set()


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


def is_regular_file(path: Path, *, folder: str) -> bool:
    """Whether `path` itself is a regular file: not a symlink (wherever it points), a folder or a pipe.

    Backups and snapshots are read and restored from by name, so only files
    the bot wrote there count; anything else is logged once, by name, and skipped.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISREG(mode):
        return True
    if path not in _reported_irregular:
        _reported_irregular.add(path)
        log.warning("ignoring %s in the %s folder: it is not a regular file (a link?)", path.name, folder)
    return False


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
