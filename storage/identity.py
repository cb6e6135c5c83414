"""Which bot a database's memories belong to.

Memories are keyed by the bot's own Discord user id. The running bot
records it at every login, so the command-line tools (`recall`, `import`)
can find it without a token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.database import Database
from storage.sqlite import sqlite3


@dataclass(frozen=True)
class KnownBot:
    bot_id: int
    name: str
    logged_in_at: float


async def record_login(db: Database, bot_id: int, name: str, *, at: float | None = None) -> None:
    """Note that this bot logged in (its name may have changed since)."""
    row = (bot_id, name, time.time() if at is None else at)

    def record(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO bot_identity (bot_id, name, logged_in_at) VALUES (?, ?, ?)"
            " ON CONFLICT (bot_id) DO UPDATE SET name = excluded.name, logged_in_at = excluded.logged_in_at",
            row,
        )

    await db.write(record)


def last_logged_in(conn: sqlite3.Connection) -> KnownBot | None:
    """The bot that logged in last with this database, or None if none ever did."""
    row = conn.execute(
        "SELECT bot_id, name, logged_in_at FROM bot_identity ORDER BY logged_in_at DESC LIMIT 1"
    ).fetchone()
    return KnownBot(*row) if row else None
