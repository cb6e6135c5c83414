"""Reads of the memory projection. Every function takes the scope it reads.

Reads run on the reader connection, so a long search never waits behind a
write and never holds one up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from storage import tokens
from storage.connection_thread import run_on_connection
from storage.scope import Scope
from storage.sqlite import sqlite3

MAX_SCORING_FAILURES = 3

_COLUMNS = (
    "id, bot_id, scope_kind, scope_id, channel_id, author_id, author_name, bot_name,"
    " user_text, reply_text, user_message_id, created_at, significance, scoring_failures,"
    " pinned, pin_auto"
)
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

    @property
    def text(self) -> str:
        """The memory as a short narrative of its turn."""
        return narrate(self.author_name, self.user_text, self.bot_name, self.reply_text)

    @property
    def scoring_gave_up(self) -> bool:
        return self.significance is None and self.scoring_failures >= MAX_SCORING_FAILURES


@dataclass(frozen=True)
class RecalledMemory:
    memory: Memory
    relevance: float  # bm25, negated so that higher is better


def narrate(author_name: str, user_text: str, bot_name: str, reply_text: str) -> str:
    return f"{author_name} said: {user_text}\n{bot_name} replied: {reply_text}"


def _memory(row: tuple) -> Memory:
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
    )


def _scope_params(scope: Scope) -> tuple[int, str, int]:
    return (scope.bot_id, scope.kind, scope.id)


async def _rows(conn: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> list[tuple]:
    """Every row of a query, in one hop to the connection's thread.

    aiosqlite's execute, fetch and cursor close are a hop each; on the reply
    path, with the loop and three database threads taking turns at the GIL,
    each hop costs more than the query itself.
    """

    def query(db: sqlite3.Connection) -> list[tuple]:
        cursor = db.execute(sql, params)
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    return await run_on_connection(conn, query)


async def _first_row(conn: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> tuple | None:
    rows = await _rows(conn, sql, params)
    return rows[0] if rows else None


async def get_memory(conn: aiosqlite.Connection, scope: Scope, memory_id: int) -> Memory | None:
    """The memory with this id in this scope, or None (unknown, forgotten or elsewhere)."""
    row = await _first_row(
        conn,
        f"SELECT {_COLUMNS} FROM memories WHERE id = ? AND {_SCOPE_FILTER}",
        (memory_id, *_scope_params(scope)),
    )
    return _memory(row) if row else None


async def pinned_memories(conn: aiosqlite.Connection, scope: Scope) -> list[Memory]:
    """Every pinned memory of the scope, oldest first."""
    rows = await _rows(
        conn, f"SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND pinned = 1 ORDER BY id", _scope_params(scope)
    )
    return [_memory(row) for row in rows]


async def recent_memories(conn: aiosqlite.Connection, scope: Scope, channel_id: int, limit: int) -> list[Memory]:
    """The channel's last `limit` remembered turns, oldest first."""
    if limit <= 0:
        return []
    rows = await _rows(
        conn,
        f"SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND channel_id = ? ORDER BY id DESC LIMIT ?",
        (*_scope_params(scope), channel_id, limit),
    )
    return [_memory(row) for row in reversed(rows)]


async def list_memories(
    conn: aiosqlite.Connection,
    scope: Scope,
    *,
    pinned_only: bool = False,
    author_id: int | None = None,
    before_id: int | None = None,
    limit: int = 10,
) -> list[Memory]:
    """The scope's memories, newest first, optionally only pinned or one author's, paged by id."""
    sql = f"SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER}"
    params: list = list(_scope_params(scope))
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


async def count_memories(conn: aiosqlite.Connection, scope: Scope, *, pinned_only: bool = False) -> int:
    sql = f"SELECT count(*) FROM memories WHERE {_SCOPE_FILTER}"
    if pinned_only:
        sql += " AND pinned = 1"
    row = await _first_row(conn, sql, _scope_params(scope))
    return int(row[0]) if row else 0


MAX_QUERY_TERMS = 12
# Matches ranked per search: the most recent this many matches of any query
# word. Ranking every match would cost what the scope's size costs (tens
# of milliseconds in a 200,000-memory guild); a window keeps a search at
# about a millisecond, and the boosts favour recent memories anyway.
SEARCH_WINDOW = 200


def search_terms(text: str) -> list[str]:
    """The distinct content words of `text`, longest first, at most MAX_QUERY_TERMS."""
    seen: dict[str, None] = {}
    for word in tokens.words(text):
        if tokens.is_searchable(word):
            seen.setdefault(word, None)
    # Longer words tend to be rarer and more telling.
    return sorted(seen, key=len, reverse=True)[:MAX_QUERY_TERMS]


def fts_query(scope: Scope, terms: list[str]) -> str:
    """An FTS5 query for any of `terms` within the scope.

    The terms are the scope's own index terms (see storage/tokens.py), each
    quoted, so nothing a user types is parsed as FTS syntax and nothing can
    match outside the scope.
    """
    return " OR ".join(f'"{tokens.scoped_term(scope, term)}"' for term in terms)


async def search_memories(
    conn: aiosqlite.Connection, scope: Scope, text: str, limit: int, *, window: int = SEARCH_WINDOW
) -> list[RecalledMemory]:
    """Memories of the scope matching the words of `text`, best BM25 match first.

    Only the `window` most recent matches are ranked (see SEARCH_WINDOW).
    """
    terms = search_terms(text)
    if not terms or limit <= 0:
        return []
    # The projection's own scope columns are checked too: the guarantee does
    # not rest on the index alone.
    columns = ", ".join("m." + c.strip() for c in _COLUMNS.split(","))
    sql = (
        "WITH hits AS ("
        " SELECT rowid AS id, bm25(memories_fts) AS score FROM memories_fts"
        " WHERE memories_fts MATCH ? ORDER BY rowid DESC LIMIT ?)"
        f" SELECT {columns}, hits.score FROM hits JOIN memories AS m ON m.id = hits.id"
        " WHERE m.bot_id = ? AND m.scope_kind = ? AND m.scope_id = ?"
        " ORDER BY hits.score LIMIT ?"
    )
    params = (fts_query(scope, terms), max(window, limit), *_scope_params(scope), limit)
    rows = await _rows(conn, sql, params)
    return [RecalledMemory(_memory(row[:-1]), -row[-1]) for row in rows]


async def memory_scope(conn: aiosqlite.Connection, memory_id: int) -> Scope | None:
    """The scope a memory belongs to (no text), for background work that starts from an id."""
    row = await _first_row(conn, "SELECT bot_id, scope_kind, scope_id FROM memories WHERE id = ?", (memory_id,))
    return Scope(row[0], row[1], row[2]) if row else None


async def memories_before(
    conn: aiosqlite.Connection, scope: Scope, channel_id: int, before_id: int, limit: int
) -> list[Memory]:
    """The channel's turns just before memory `before_id`, oldest first."""
    rows = await _rows(
        conn,
        f"SELECT {_COLUMNS} FROM memories WHERE {_SCOPE_FILTER} AND channel_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
        (*_scope_params(scope), channel_id, before_id, limit),
    )
    return [_memory(row) for row in reversed(rows)]


async def unscored_memory_ids(conn: aiosqlite.Connection, *, after_id: int, limit: int) -> list[int]:
    """Ids of memories still waiting for a score, oldest first, past `after_id`."""
    rows = await _rows(
        conn,
        "SELECT id FROM memories WHERE significance IS NULL AND id > ? AND scoring_failures < ? ORDER BY id LIMIT ?",
        (after_id, MAX_SCORING_FAILURES, limit),
    )
    return [row[0] for row in rows]


async def count_unscored(conn: aiosqlite.Connection) -> int:
    sql = "SELECT count(*) FROM memories WHERE significance IS NULL AND scoring_failures < ?"
    row = await _first_row(conn, sql, (MAX_SCORING_FAILURES,))
    return int(row[0]) if row else 0
