"""Servers the bot was removed from, whose memories it forgets once a grace period has passed."""

from __future__ import annotations

from collections.abc import Iterable

from storage.database import Database
from storage.sqlite import sqlite3


async def note_departures(db: Database, bot_id: int, guild_ids: Iterable[int], *, at: float) -> None:
    """The bot left these servers at `at` (a departure already noted keeps its earlier time)."""
    rows = [(bot_id, guild_id, at) for guild_id in guild_ids]

    def note(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO departed_guilds (bot_id, guild_id, departed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", rows
        )

    await db.write(note)


async def clear_departures(db: Database, bot_id: int, guild_ids: Iterable[int]) -> None:
    """The bot is in these servers (again): nothing of theirs is to be forgotten."""
    rows = [(bot_id, guild_id) for guild_id in guild_ids]

    def clear(conn: sqlite3.Connection) -> None:
        conn.executemany("DELETE FROM departed_guilds WHERE bot_id = ? AND guild_id = ?", rows)

    await db.write(clear)


async def departures(db: Database, bot_id: int) -> dict[int, float]:
    """Every server the bot has left and not come back to: guild id -> when it left."""
    async with db.reader.execute(
        "SELECT guild_id, departed_at FROM departed_guilds WHERE bot_id = ?", (bot_id,)
    ) as cursor:
        return {guild_id: departed_at for guild_id, departed_at in await cursor.fetchall()}


async def remembered_guilds(db: Database, bot_id: int) -> list[int]:
    """The servers this bot holds memories of."""
    async with db.reader.execute(
        "SELECT scope_id FROM scope_stats WHERE bot_id = ? AND scope_kind = 'guild' AND memories > 0", (bot_id,)
    ) as cursor:
        return [row[0] for row in await cursor.fetchall()]
