"""Reads of the memory projection. Every function takes the scope it reads.

Reads run on the reader connection, so a long search never waits behind a
write and never holds one up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.connection_thread import Connection
from storage.scope import Scope
from storage.visibility import ChannelFilter, condition

# Classifier calls a memory may spend without a usable answer, over all its scoring rounds.
MAX_SCORING_FAILURES = 3

# The columns every read of whole memories selects, in `memory_from_row`'s order.
COLUMNS = (
    "id, bot_id, scope_kind, scope_id, channel_id, author_id, author_name, bot_name,"
    " user_text, reply_text, user_message_id, created_at, significance, scoring_failures,"
    " pinned, pin_auto, source, wants_score"
)
_COLUMNS = COLUMNS
_SCOPE_FILTER = "bot_id = ? AND scope_kind = ? AND scope_id = ?"


@dataclass(frozen=True)
class Memory:
    id: int
    scope: Scope
    channel_id: int
    author_id: int
    author_name: str
    bot_name: str
    user_text: str
    reply_text: str
    user_message_id: int | None
    created_at: float
    significance: int | None
    scoring_failures: int
    pinned: bool
    pin_auto: bool | None
    source: str = "chat"
    wants_score: bool = True

    @property
    def text(self) -> str:
        """The memory as a short narrative of its turn."""
        return narrate(self.author_name, self.user_text, self.bot_name, self.reply_text)

    @property
    def scoring_gave_up(self) -> bool:
        return self.significance is None and self.scoring_failures >= MAX_SCORING_FAILURES


def narrate(author_name: str, user_text: str, bot_name: str, reply_text: str) -> str:
    if not reply_text:
        return f"{author_name} said: {user_text}"  # an imported message the bot did not answer
    return f"{author_name} said: {user_text}\n{bot_name} replied: {reply_text}"


def memory_from_row(row: Sequence[Any]) -> Memory:
    """A Memory from a row of COLUMNS."""
    return Memory(
        id=row[0],
        scope=Scope(row[1], row[2], row[3]),
        channel_id=row[4],
        author_id=row[5],
        author_name=row[6],
        bot_name=row[7],
        user_text=row[8],
        reply_text=row[9],
        user_message_id=row[10],
        created_at=row[11],
        significance=row[12],
        scoring_failures=row[13],
        pinned=bool(row[14]),
        pin_auto=None if row[15] is None else bool(row[15]),
        source=row[16],
        wants_score=bool(row[17]),
    )


_memory = memory_from_row


def _scope_params(scope: Scope) -> tuple[int, str, int]:
    return (scope.bot_id, scope.kind, scope.id)


async def _rows(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple]:
    """Every row of a query, in one hop to the connection's thread.

    A cursor's execute, fetch and close would be a hop each; on the reply
    path, with the loop and three database threads taking turns at the GIL,
    each hop costs more than the query itself.
    """
    return await conn.execute_fetchall(sql, params)


async def _first_row(conn: Connection, sql: str, params: Sequence[Any]) -> tuple | None:
    rows = await _rows(conn, sql, params)
    return rows[0] if rows else None


async def get_memory(
    conn: Connection, scope: Scope, memory_id: int, *, channel_filter: ChannelFilter | None = None
) -> Memory | None:
    """The memory with this id in this scope (that `channel_filter` lets through), or None
    (unknown, forgotten, elsewhere, or from a channel hidden from the reader)."""
    visible, params = condition(channel_filter)
    row = await _first_row(
        conn,
        f"SELECT {_COLUMNS} FROM memories WHERE id = ? AND {_SCOPE_FILTER} AND {visible}",
        (memory_id, *_scope_params(scope), *params),
    )
    return _memory(row) if row else None


async def pinned_memories(
    conn: Connection, scope: Scope, *, channel_filter: ChannelFilter | None = None
) -> list[Memory]:
    """Every pinned memory of the scope (that `channel_filter` lets through), oldest first."""
    visible, params = condition(channel_filter)
    rows = await _rows(
        conn,
        f"SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND pinned = 1 AND {visible} ORDER BY id",
        (*_scope_params(scope), *params),
    )
    return [_memory(row) for row in rows]


async def pinned_and_recent(
    conn: Connection,
    scope: Scope,
    channel_id: int,
    recent: int,
    *,
    channel_filter: ChannelFilter | None = None,
) -> tuple[list[Memory], list[Memory]]:
    """`pinned_memories` and `recent_memories` in one query: what every prompt holds besides recall."""
    if recent <= 0:
        return await pinned_memories(conn, scope, channel_filter=channel_filter), []
    visible, params = condition(channel_filter)
    rows = await _rows(
        conn,
        f"SELECT *, 1 FROM (SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND pinned = 1 AND {visible}"
        " ORDER BY id)"
        f" UNION ALL SELECT *, 0 FROM (SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND channel_id = ?"
        " ORDER BY created_at DESC, id DESC LIMIT ?)",
        (*_scope_params(scope), *params, *_scope_params(scope), channel_id, recent),
    )
    pinned = [_memory(row[:-1]) for row in rows if row[-1]]
    newest_first = [_memory(row[:-1]) for row in rows if not row[-1]]
    return pinned, newest_first[::-1]


async def recent_memories(conn: Connection, scope: Scope, channel_id: int, limit: int) -> list[Memory]:
    """The channel's last `limit` remembered turns, oldest first.

    By when they were said, not by when they were remembered: an imported
    history comes after the live turns in the log, but before them in time.
    """
    if limit <= 0:
        return []
    rows = await _rows(
        conn,
        f"SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND channel_id = ?"
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        (*_scope_params(scope), channel_id, limit),
    )
    return [_memory(row) for row in reversed(rows)]


async def list_memories(
    conn: Connection,
    scope: Scope,
    *,
    pinned_only: bool = False,
    author_id: int | None = None,
    before_id: int | None = None,
    limit: int = 10,
    channel_filter: ChannelFilter | None = None,
) -> list[Memory]:
    """The scope's memories, newest first, optionally only pinned or one author's, paged by id;
    only those `channel_filter` lets through, when there is one."""
    visible, visible_params = condition(channel_filter)
    sql = f"SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND {visible}"
    params: list = [*_scope_params(scope), *visible_params]
    if pinned_only:
        sql += " AND pinned = 1"
    if author_id is not None:
        sql += " AND author_id = ?"
        params.append(author_id)
    if before_id is not None:
        sql += " AND id < ?"
        params.append(before_id)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    return [_memory(row) for row in await _rows(conn, sql, params)]


async def count_memories(
    conn: Connection,
    scope: Scope,
    *,
    pinned_only: bool = False,
    channel_filter: ChannelFilter | None = None,
) -> int:
    visible, params = condition(channel_filter)
    sql = f"SELECT count(*) FROM memories WHERE {_SCOPE_FILTER} AND {visible}"
    if pinned_only:
        sql += " AND pinned = 1"
    row = await _first_row(conn, sql, (*_scope_params(scope), *params))
    return int(row[0]) if row else 0


async def next_turns(conn: Connection, scope: Scope, turns: Sequence[Memory]) -> dict[int, Memory]:
    """The turn said after each of `turns` in its own channel (or thread), by the id of the turn before it."""
    if not turns:
        return {}
    one = (
        f"SELECT * FROM (SELECT {_COLUMNS}, ? FROM memories"
        f" WHERE {_SCOPE_FILTER} AND channel_id = ? AND (created_at, id) > (?, ?) ORDER BY created_at, id LIMIT 1)"
    )
    params: list[Any] = []
    for turn in turns:
        params += [turn.id, *_scope_params(scope), turn.channel_id, turn.created_at, turn.id]
    rows = await _rows(conn, " UNION ALL ".join([one] * len(turns)), params)
    return {row[-1]: _memory(row[:-1]) for row in rows}


async def memories_by_id(conn: Connection, scope: Scope, memory_ids: Sequence[int]) -> list[Memory]:
    """The memories with these ids in this scope, oldest first (others' ids are skipped)."""
    found: list[Memory] = []
    for start in range(0, len(memory_ids), 10_000):
        ids = json.dumps([int(i) for i in memory_ids[start : start + 10_000]])
        rows = await _rows(
            conn,
            f"SELECT {_COLUMNS} FROM memories WHERE id IN (SELECT value FROM json_each(?)) AND {_SCOPE_FILTER}"
            " ORDER BY id",
            (ids, *_scope_params(scope)),
        )
        found += [_memory(row) for row in rows]
    return found


async def drawing_on(
    conn: Connection, scope: Scope, memory_id: int, *, channel_filter: ChannelFilter | None = None
) -> list[Memory]:
    """The later memories of the scope whose prompts held `memory_id` (their replies may repeat it)."""
    visible, params = condition(channel_filter)
    rows = await _rows(
        conn,
        f"SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND id > ? AND instr(drew_on, ?) > 0"
        f" AND {visible} ORDER BY id",
        (*_scope_params(scope), memory_id, f",{memory_id},", *params),
    )
    return [_memory(row) for row in rows]


async def memory_ids(
    conn: Connection, scope: Scope, *, author_id: int | None = None, channel_id: int | None = None
) -> list[int]:
    """The ids of every memory of the scope, oldest first: of one author's turns, with `author_id`;
    said in a channel or its threads (or in a thread), with `channel_id`."""
    sql = f"SELECT id FROM memories WHERE {_SCOPE_FILTER}"
    params: list[Any] = list(_scope_params(scope))
    if author_id is not None:
        sql += " AND author_id = ?"
        params.append(author_id)
    if channel_id is not None:
        sql += " AND (channel_id = ? OR parent_channel_id = ?)"
        params += [channel_id, channel_id]
    return [row[0] for row in await _rows(conn, sql + " ORDER BY id", params)]


async def memories_of_messages(
    conn: Connection, bot_id: int, message_ids: Sequence[int], *, replies: bool = True
) -> list[tuple[int, Scope]]:
    """The memories (id and scope) that Discord messages came from: a person's message, or a reply's."""
    if not message_ids:
        return []
    ids = json.dumps([int(m) for m in message_ids])
    sql = (
        "SELECT id, bot_id, scope_kind, scope_id FROM memories"
        " WHERE bot_id = ? AND user_message_id IN (SELECT value FROM json_each(?))"
    )
    params: list[Any] = [bot_id, ids]
    if replies:
        sql += (
            " UNION SELECT m.id, m.bot_id, m.scope_kind, m.scope_id FROM reply_messages AS r"
            " JOIN memories AS m ON m.id = r.memory_id"
            " WHERE r.message_id IN (SELECT value FROM json_each(?)) AND m.bot_id = ?"
        )
        params += [ids, bot_id]
    rows = await _rows(conn, sql + " ORDER BY 1", params)
    return [(row[0], Scope(row[1], row[2], row[3])) for row in rows]


async def memory_scope(conn: Connection, memory_id: int) -> Scope | None:
    """The scope a memory belongs to (no text), for background work that starts from an id."""
    row = await _first_row(conn, "SELECT bot_id, scope_kind, scope_id FROM memories WHERE id = ?", (memory_id,))
    return Scope(row[0], row[1], row[2]) if row else None


async def memories_before(conn: Connection, memory: Memory, limit: int) -> list[Memory]:
    """The turns said just before `memory` in its channel, oldest first."""
    rows = await _rows(
        conn,
        f"SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND channel_id = ? AND (created_at, id) < (?, ?)"
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        (*_scope_params(memory.scope), memory.channel_id, memory.created_at, memory.id, limit),
    )
    return [_memory(row) for row in reversed(rows)]


async def unscored_memory_ids(conn: Connection, *, after_id: int, limit: int) -> list[int]:
    """Ids of memories still waiting for a score, oldest first, past `after_id`."""
    rows = await _rows(
        conn,
        "SELECT id FROM memories"
        " WHERE significance IS NULL AND wants_score = 1 AND id > ? AND scoring_failures < ? ORDER BY id LIMIT ?",
        (after_id, MAX_SCORING_FAILURES, limit),
    )
    return [row[0] for row in rows]


async def count_unscored(conn: Connection) -> int:
    sql = "SELECT count(*) FROM memories WHERE significance IS NULL AND wants_score = 1 AND scoring_failures < ?"
    row = await _first_row(conn, sql, (MAX_SCORING_FAILURES,))
    return int(row[0]) if row else 0
