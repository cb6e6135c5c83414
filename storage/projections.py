"""The projections as a pure fold: an event becomes the SQL that applies it.

The same statements serve the live path (one transaction per command) and
the rebuild (batched in a thread), so the two cannot drift apart. Every
statement tolerates a missing memory: after a forget, later events about it
simply match no row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage import tokens
from storage.events import (
    Event,
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceFailed,
    MemorySignificanceSet,
    MemoryWritten,
)
from storage.scope import Scope

Statement = tuple[str, tuple[Any, ...]]

INSERT_MEMORY = (
    "INSERT INTO memories (id, written_seq, bot_id, scope_kind, scope_id, channel_id, author_id,"
    " author_name, bot_name, user_text, reply_text, user_message_id, created_at, search_text)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INDEX_MEMORY = "INSERT INTO memories_fts (rowid, search_text) SELECT id, search_text FROM memories WHERE id = ?"
UNINDEX_MEMORY = (
    "INSERT INTO memories_fts (memories_fts, rowid, search_text)"
    " SELECT 'delete', id, search_text FROM memories WHERE id = ?"
)
SET_SIGNIFICANCE = "UPDATE memories SET significance = ? WHERE id = ? AND significance IS NULL"
COUNT_SCORING_FAILURE = "UPDATE memories SET scoring_failures = scoring_failures + 1 WHERE id = ?"
PIN = "UPDATE memories SET pinned = 1, pin_auto = ?, pinned_seq = ? WHERE id = ?"
UNPIN = "UPDATE memories SET pinned = 0, pin_auto = NULL, pinned_seq = NULL WHERE id = ?"
DELETE_MEMORY = "DELETE FROM memories WHERE id = ?"
ADVANCE = "UPDATE projection_state SET last_seq = ? WHERE name = 'memories' AND last_seq < ?"


def statements_for(seq: int, event: Event, *, index_text: bool = True) -> list[Statement]:
    """The SQL that applies `event`, recorded at `seq`, to the projections.

    `index_text=False` leaves the full-text index alone; a rebuild refills
    it in one pass at the end, which is much faster than row by row.
    """
    match event:
        case MemoryWritten(redacted=True):
            # A forgotten memory: its text is gone, and a later
            # memory_forgotten removes nothing because nothing is inserted.
            return []
        case MemoryWritten():
            scope = Scope(event.bot_id, event.scope_kind, event.scope_id)  # type: ignore[arg-type]
            row = (
                seq,
                seq,
                event.bot_id,
                event.scope_kind,
                event.scope_id,
                event.channel_id,
                event.author_id,
                event.author_name,
                event.bot_name,
                event.user_text,
                event.reply_text,
                event.user_message_id,
                event.created_at,
                tokens.index_text(scope, event.author_name, event.user_text, event.reply_text),
            )
            statements: list[Statement] = [(INSERT_MEMORY, row)]
            if index_text:
                statements.append((INDEX_MEMORY, (seq,)))
            return statements
        case MemorySignificanceSet():
            return [(SET_SIGNIFICANCE, (event.score, event.memory_id))]
        case MemorySignificanceFailed():
            return [(COUNT_SCORING_FAILURE, (event.memory_id,))]
        case MemoryPinChanged(pinned=True):
            return [(PIN, (int(event.auto), seq, event.memory_id))]
        case MemoryPinChanged():
            return [(UNPIN, (event.memory_id,))]
        case MemoryForgotten():
            statements = [(UNINDEX_MEMORY, (event.memory_id,))] if index_text else []
            statements.append((DELETE_MEMORY, (event.memory_id,)))
            return statements
    raise TypeError(f"no projection for {type(event).__name__}")


def advance_to(seq: int) -> Statement:
    """Record that the projections include every event up to `seq`."""
    return (ADVANCE, (seq, seq))


def batched(statements: Iterable[Statement]) -> Iterable[tuple[str, list[tuple[Any, ...]]]]:
    """Group consecutive runs of the same SQL so they can go through executemany."""
    current_sql: str | None = None
    rows: list[tuple[Any, ...]] = []
    for sql, params in statements:
        if sql != current_sql and rows:
            yield current_sql, rows  # type: ignore[misc]
            rows = []
        current_sql = sql
        rows.append(params)
    if rows:
        yield current_sql, rows  # type: ignore[misc]
