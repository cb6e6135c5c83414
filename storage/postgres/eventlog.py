"""The event log on PostgreSQL: append an event and apply it to the projections, in the caller's transaction.

The projections follow the same fold as SQLite's (storage/projections.py):
a memory_written event inserts its memory, a memory_forgotten event
deletes it, and every other event changes the columns `row_changes` names.
Only the SQL differs, and the full-text index: PostgreSQL's English
stemming, over the same casefolded, accent-free words.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from storage import tokens
from storage.events import (
    Event,
    MemoryForgotten,
    MemorySignificanceFailed,
    MemoryWritten,
    decode,
    encode,
    payload_of,
)
from storage.projections import ADD, SET, SET_IF_NULL, Change, row_changes

INSERT_EVENT = "INSERT INTO events (kind, version, payload, recorded_at) VALUES ($1, $2, $3::jsonb, $4) RETURNING seq"
INSERT_MEMORY = """
INSERT INTO memories (
    id, written_seq, bot_id, scope_kind, scope_id, channel_id, parent_channel_id, private_thread,
    author_id, author_name, bot_name, user_text, reply_text, user_message_id, created_at, source,
    wants_score, reply_message_ids, drew_on, search
) VALUES (
    $1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
    setweight(to_tsvector('english', $19), 'A') || setweight(to_tsvector('english', $20), 'B')
    || setweight(to_tsvector('english', $21), 'C')
)
"""
LIST_REPLY_MESSAGES = (
    "INSERT INTO reply_messages (message_id, memory_id) SELECT unnest($2::bigint[]), $1 ON CONFLICT DO NOTHING"
)
ADVANCE = "UPDATE projection_state SET last_seq = $1 WHERE name = 'memories' AND last_seq < $1"
# Columns the fold gives as 0/1 (SQLite's booleans) that are booleans here.
_BOOLEAN_COLUMNS = frozenset({"pinned", "pin_auto"})


async def append(conn: asyncpg.Connection, event: Event) -> int:
    """Append `event` and apply it to the projections; its sequence number. Run inside a transaction."""
    kind, version, payload = encode(event)
    seq = await conn.fetchval(INSERT_EVENT, kind, version, payload, time.time())
    await apply(conn, seq, event)
    await conn.execute(ADVANCE, seq)
    return int(seq)


async def apply(conn: asyncpg.Connection, seq: int, event: Event) -> None:
    """Apply one event, recorded at `seq`, to the projections."""
    if isinstance(event, MemoryWritten):
        if event.redacted:
            return  # its text is gone: nothing to remember
        await conn.execute(INSERT_MEMORY, seq, *written_columns(event), *search_texts(event))
        if event.reply_message_ids:
            await conn.execute(LIST_REPLY_MESSAGES, seq, list(event.reply_message_ids))
        return
    if isinstance(event, MemoryForgotten):
        await conn.execute("DELETE FROM reply_messages WHERE memory_id = $1", event.memory_id)
        await conn.execute("DELETE FROM memories WHERE id = $1", event.memory_id)
        return
    sql, params = update_statement(event.memory_id, row_changes(seq, event.KIND, payload_of(event)))
    await conn.execute(sql, *params)


def written_columns(event: MemoryWritten) -> tuple[Any, ...]:
    """A new memory's columns from `bot_id` to `drew_on`, in INSERT_MEMORY's order."""
    return (
        event.bot_id,
        event.scope_kind,
        event.scope_id,
        event.channel_id,
        event.parent_channel_id,
        event.private_thread,
        event.author_id,
        event.author_name,
        event.bot_name,
        event.user_text,
        event.reply_text,
        event.user_message_id,
        event.created_at,
        event.source,
        event.wants_score,
        list(event.reply_message_ids),
        list(event.drew_on),
    )


def search_texts(event: MemoryWritten) -> tuple[str, str, str]:
    """What the search vector weighs A, B and C: what was said, who said it, the bot's reply."""
    return search_text(event.user_text), search_text(event.author_name), search_text(event.reply_text)


def search_text(text: str) -> str:
    """What the full-text index reads of `text`: its casefolded, accent-free words, as on SQLite."""
    return " ".join(tokens.words(text))


def update_statement(memory_id: int, changes: Sequence[Change]) -> tuple[str, list[Any]]:
    """The UPDATE that applies `changes` to one memory (a forgotten one matches no row)."""
    assignments = []
    params: list[Any] = []
    for column, how, value in changes:
        if column in _BOOLEAN_COLUMNS and value is not None:
            value = bool(value)
        params.append(value)
        placeholder = f"${len(params)}"
        if how == SET:
            assignments.append(f"{column} = {placeholder}")
        elif how == SET_IF_NULL:
            assignments.append(f"{column} = coalesce({column}, {placeholder})")
        elif how == ADD:
            assignments.append(f"{column} = {column} + {placeholder}")
        else:
            raise ValueError(f"unknown change {how!r}")
    params.append(memory_id)
    return f"UPDATE memories SET {', '.join(assignments)} WHERE id = ${len(params)}", params


async def redact_forgotten(conn: asyncpg.Connection, memory_ids: Sequence[int]) -> None:
    """Take the text of forgotten memories out of the log, where events carried it (see SQLite's)."""
    ids = [int(memory_id) for memory_id in memory_ids]
    rows = await conn.fetch(
        "SELECT seq, version, payload FROM events WHERE seq = ANY($1::bigint[]) AND kind = $2", ids, MemoryWritten.KIND
    )
    for seq, version, payload in rows:
        event = decode(MemoryWritten.KIND, version, payload)
        assert isinstance(event, MemoryWritten)
        await conn.execute("UPDATE events SET payload = $1::jsonb WHERE seq = $2", encode(event.redact())[2], seq)
    await conn.execute(
        'UPDATE events SET payload = payload || \'{"reason": "", "redacted": true}\'::jsonb'
        " WHERE kind = $1 AND (payload ->> 'memory_id')::bigint = ANY($2::bigint[])",
        MemorySignificanceFailed.KIND,
        ids,
    )
