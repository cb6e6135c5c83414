"""The SQLite driver and the settings every connection gets.

We use sqlean-py, a drop-in `sqlite3` built against a current SQLite, instead
of the interpreter's bundled library (3.40 on Python 3.11). Forgetting a
memory needs FTS5's `secure-delete` option (SQLite 3.42+), without which
deleted words stay in the full-text index's pages on disk.
"""

from __future__ import annotations

from pathlib import Path

import sqlean
import sqlean.extensions

# The bundled loadable extensions (fileio among them) stay off: the bot has
# no use for them and they widen what a crafted query could do.
sqlean.extensions.disable_all()

sqlite3 = sqlean.dbapi2
sqlite_version: str = sqlean.sqlite_version

Error = sqlite3.Error
OperationalError = sqlite3.OperationalError
DatabaseError = sqlite3.DatabaseError
IntegrityError = sqlite3.IntegrityError

BUSY_TIMEOUT_MS = 5000
# After a checkpoint has emptied it, the WAL file is cut back to this size: a burst of
# writes (a rebuild, a restore, a busy evening) does not keep its disk space for good.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

# WAL lets readers (recall, lists, backups) run beside the single writer.
# synchronous=FULL adds one fsync per commit: a turn the user saw answered
# survives a power cut, and at chat volumes the cost is negligible.
# secure_delete overwrites deleted content, so a forgotten memory's text
# does not linger in free pages of the file.
CONNECTION_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys = ON",
    "PRAGMA secure_delete = ON",
    f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}",
)


def connect(path: Path | str, *, query_only: bool = False, check_same_thread: bool = True) -> sqlean.Connection:
    """Open a connection in autocommit mode (we issue BEGIN ourselves) with our PRAGMAs."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=check_same_thread)
    for pragma in CONNECTION_PRAGMAS:
        conn.execute(pragma)
    if query_only:
        conn.execute("PRAGMA query_only = ON")
    return conn
