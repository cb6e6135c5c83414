"""One process at a time per data folder.

The bot holds an exclusive lock on `data_dir/bot.lock` while it runs, and the
CLI verbs that change the database take the same lock, so a restore or a
rebuild can never run under a live bot, and two bots can never share one
database. The operating system drops the lock when the process ends, even
after a SIGKILL, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; the lock is advisory anyway
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "bot.lock"


class DataDirInUse(Exception):
    """Another process holds the data folder."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._handle: IO[str] | None = None

    def acquire(self, purpose: str) -> DataDirLock:
        """Take the lock, or raise DataDirInUse naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise DataDirInUse(f"{self.path.parent} is in use by {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({purpose})\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
