"""Counts across every scope, for the owners' /status. Nothing here reaches a user's prompt."""

from __future__ import annotations

from dataclasses import dataclass

from storage.connection_thread import Connection


@dataclass(frozen=True)
class MemoryCounts:
    memories: int
    pinned: int
    guilds: int  # guild scopes holding at least one memory
    dms: int  # DM scopes holding at least one memory
    last_event_id: int


async def memory_counts(conn: Connection) -> MemoryCounts:
    async with conn.execute(
        "SELECT count(*), coalesce(sum(pinned), 0),"
        " count(DISTINCT CASE WHEN scope_kind = 'guild' THEN scope_id END),"
        " count(DISTINCT CASE WHEN scope_kind = 'dm' THEN scope_id END)"
        " FROM memories"
    ) as cursor:
        memories, pinned, guilds, dms = await cursor.fetchone() or (0, 0, 0, 0)
    async with conn.execute("SELECT coalesce(max(seq), 0) FROM events") as cursor:
        (last_event_id,) = await cursor.fetchone() or (0,)
    return MemoryCounts(int(memories), int(pinned), int(guilds), int(dms), int(last_event_id))
