"""Which of a server's memories a reader may see, by the channel (or thread) they were said in.

The bot records which of its servers' channels everyone may see now
(`channel_visibility`, refreshed from Discord as channels and roles
change), and each thread's channel. A `ChannelFilter` says which memories
pass; storage reads turn it into SQL on the memories' own columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from storage.database import Database
from storage.scope import Scope
from storage.sqlite import sqlite3

_PUBLIC = "SELECT channel_id FROM channel_visibility WHERE bot_id = ? AND guild_id = ? AND public = 1"


@dataclass(frozen=True)
class ChannelFilter:
    """The memories of a server that pass: any clause may let one through.

    - `public_of_guild`: said in a channel of that server (a guild scope) everyone may see
      now, or in a public thread of one;
    - `channels`: said in one of these channels or threads;
    - `thread_parents`: said in a public thread of one of these channels;
    - `private_thread_parents`: said in any thread of these channels, private ones too;
    - `author_id`: this person's own turns, wherever they were said (they saw both sides).
    """

    public_of_guild: Scope | None = None
    channels: frozenset[int] = frozenset()
    thread_parents: frozenset[int] = frozenset()
    private_thread_parents: frozenset[int] = frozenset()
    author_id: int | None = None

    def sql(self, prefix: str = "") -> tuple[str, list[Any]]:
        """A condition on the memories table (aliased by `prefix`, as "m."), and its parameters."""
        p = prefix
        clauses: list[str] = []
        params: list[Any] = []
        if self.public_of_guild is not None:
            guild = (self.public_of_guild.bot_id, self.public_of_guild.id)
            clauses.append(f"{p}channel_id IN ({_PUBLIC})")
            clauses.append(f"({p}private_thread = 0 AND {p}parent_channel_id IN ({_PUBLIC}))")
            params += [*guild, *guild]
        if self.channels:
            clauses.append(f"{p}channel_id IN (SELECT value FROM json_each(?))")
            params.append(_ids(self.channels))
        if self.thread_parents:
            clauses.append(f"({p}private_thread = 0 AND {p}parent_channel_id IN (SELECT value FROM json_each(?)))")
            params.append(_ids(self.thread_parents))
        if self.private_thread_parents:
            clauses.append(f"{p}parent_channel_id IN (SELECT value FROM json_each(?))")
            params.append(_ids(self.private_thread_parents))
        if self.author_id is not None:
            clauses.append(f"{p}author_id = ?")
            params.append(self.author_id)
        if not clauses:
            return "0", []
        return "(" + " OR ".join(clauses) + ")", params


def condition(channel_filter: ChannelFilter | None, prefix: str = "") -> tuple[str, list[Any]]:
    """`ChannelFilter.sql`, or a condition every memory meets when there is no filter."""
    if channel_filter is None:
        return "1", []
    return channel_filter.sql(prefix)


def _ids(ids: Iterable[int]) -> str:
    return json.dumps(sorted(int(i) for i in ids))


@dataclass(frozen=True)
class ChannelVisibility:
    channel_id: int
    parent_id: int | None  # set on threads
    public: bool  # everyone may see it now


async def record_guild_channels(db: Database, guild: Scope, channels: Iterable[ChannelVisibility]) -> bool:
    """What a server's channels and threads are now, as its bot sees them, replacing what was
    recorded; False when nothing changed (and nothing was written)."""
    now = {(c.channel_id, c.parent_id, int(c.public)) for c in channels}
    async with db.reader.execute(
        "SELECT channel_id, parent_id, public FROM channel_visibility WHERE bot_id = ? AND guild_id = ?",
        (guild.bot_id, guild.id),
    ) as cursor:
        if set(await cursor.fetchall()) == now:
            return False
    rows = [(guild.bot_id, guild.id, *row) for row in now]

    def replace(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM channel_visibility WHERE bot_id = ? AND guild_id = ?", (guild.bot_id, guild.id))
        conn.executemany(
            "INSERT INTO channel_visibility (bot_id, guild_id, channel_id, parent_id, public) VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    await db.write(replace)
    return True


async def thread_parent(db: Database, guild: Scope, channel_id: int) -> int | None:
    """The channel this thread belongs to, as recorded; None for a channel (or one never recorded)."""
    async with db.reader.execute(
        "SELECT parent_id FROM channel_visibility WHERE bot_id = ? AND guild_id = ? AND channel_id = ?",
        (guild.bot_id, guild.id, channel_id),
    ) as cursor:
        row = await cursor.fetchone()
    return row[0] if row else None


async def forget_guild_channels(db: Database, guild: Scope) -> None:
    def forget(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM channel_visibility WHERE bot_id = ? AND guild_id = ?", (guild.bot_id, guild.id))

    await db.write(forget)
