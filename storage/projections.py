"""The projections as a pure fold: an event becomes the SQL that applies it.

The fold reads an event as stored: its kind and its payload as a dict (see
`storage.events.read_payload`). The same statements serve the live path
(one transaction per command) and the rebuild, so the two cannot drift
apart. Every statement tolerates a missing memory: after a forget, later
events about it simply match no row.

What an event does to an existing memory is written once, as data: a list
of column changes (`row_changes`). The live path turns it into an UPDATE;
a rebuild also applies it in memory to rows it has not inserted yet
(`apply_changes`), so most rows are written once, in their final state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from storage import tokens
from storage.events import (
    EVENT_TYPES,
    Event,
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceFailed,
    MemorySignificanceSet,
    MemoryWritten,
    payload_of,
)
from storage.schema import FTS_COLUMNS
from storage.scope import Scope

Statement = tuple[str, tuple[Any, ...]]

MEMORY_WRITTEN = MemoryWritten.KIND
MEMORY_FORGOTTEN = MemoryForgotten.KIND

# Every column of a memories row, in table order; `new_memory` makes rows in this shape.
MEMORY_COLUMNS = (
    "id",
    "written_seq",
    "bot_id",
    "scope_kind",
    "scope_id",
    "channel_id",
    "parent_channel_id",
    "private_thread",
    "author_id",
    "author_name",
    "bot_name",
    "user_text",
    "reply_text",
    "user_message_id",
    "created_at",
    "source",
    "wants_score",
    "significance",
    "scoring_failures",
    "pinned",
    "pin_auto",
    "pinned_seq",
    "pinned_by",
    *FTS_COLUMNS,
    "search_terms",
    "reply_message_ids",
    "drew_on",
)
COLUMN_INDEX = {name: i for i, name in enumerate(MEMORY_COLUMNS)}
FIRST_SEARCH_COLUMN = COLUMN_INDEX[FTS_COLUMNS[0]]
SEARCH_TERMS = COLUMN_INDEX["search_terms"]
_SEARCH_COLUMNS = ", ".join(FTS_COLUMNS)

INSERT_MEMORY = f"INSERT INTO memories ({', '.join(MEMORY_COLUMNS)}) VALUES ({', '.join('?' * len(MEMORY_COLUMNS))})"
INDEX_MEMORY = f"INSERT INTO memories_fts (rowid, {_SEARCH_COLUMNS}) VALUES (?{', ?' * len(FTS_COLUMNS)})"
UNINDEX_MEMORY = (
    f"INSERT INTO memories_fts (memories_fts, rowid, {_SEARCH_COLUMNS})"
    f" SELECT 'delete', id, {_SEARCH_COLUMNS} FROM memories WHERE id = ?"
)
DELETE_MEMORY = "DELETE FROM memories WHERE id = ?"
COUNT_IN_SCOPE = (
    "INSERT INTO scope_stats (bot_id, scope_kind, scope_id, memories, terms) VALUES (?, ?, ?, 1, ?)"
    " ON CONFLICT DO UPDATE SET memories = memories + 1, terms = terms + excluded.terms"
)
UNCOUNT_IN_SCOPE = (
    "UPDATE scope_stats SET memories = memories - 1, terms = terms - m.search_terms"
    " FROM (SELECT bot_id, scope_kind, scope_id, search_terms FROM memories WHERE id = ?) AS m"
    " WHERE (scope_stats.bot_id, scope_stats.scope_kind, scope_stats.scope_id) = (m.bot_id, m.scope_kind, m.scope_id)"
)
LIST_REPLY_MESSAGES = (
    "INSERT INTO reply_messages (message_id, memory_id)"
    " SELECT j.value, m.id FROM memories AS m, json_each(m.reply_message_ids) AS j WHERE m.id = ?"
)
UNLIST_REPLY_MESSAGES = "DELETE FROM reply_messages WHERE memory_id = ?"
# What a rebuild fills reply_messages with, once the memories are in.
RELIST_REPLY_MESSAGES = (
    "INSERT INTO reply_messages (message_id, memory_id)"
    " SELECT j.value, m.id FROM memories AS m, json_each(m.reply_message_ids) AS j"
)
# What a rebuild fills scope_stats with, once the memories are in.
RECOUNT_SCOPES = (
    "INSERT INTO scope_stats (bot_id, scope_kind, scope_id, memories, terms)"
    " SELECT bot_id, scope_kind, scope_id, count(*), sum(search_terms) FROM memories"
    " GROUP BY bot_id, scope_kind, scope_id"
)
ADVANCE = "UPDATE projection_state SET last_seq = ? WHERE name = 'memories' AND last_seq < ?"

# How a column changes: SET assigns; SET_IF_NULL assigns only while the
# column is still NULL (the first score stands); ADD increments.
SET, SET_IF_NULL, ADD = "set", "set_if_null", "add"
Change = tuple[str, str, Any]  # (column, how, value)


def new_memory(seq: int, data: dict[str, Any]) -> list[Any] | None:
    """The memories row a memory_written payload creates, or None for a redacted (forgotten) one."""
    if data.get("redacted", False):
        # Its text is gone, and a later memory_forgotten removes nothing because nothing is inserted.
        return None
    scope = _scope(data["bot_id"], data["scope_kind"], data["scope_id"])
    name_terms = tokens.terms(data["author_name"])
    user_terms = tokens.terms(data["user_text"])
    reply_terms = tokens.terms(data["reply_text"])
    prefix = scope.token
    return [
        seq,
        seq,
        data["bot_id"],
        data["scope_kind"],
        data["scope_id"],
        data["channel_id"],
        data["parent_channel_id"],
        int(data["private_thread"]),
        data["author_id"],
        data["author_name"],
        data["bot_name"],
        data["user_text"],
        data["reply_text"],
        data["user_message_id"],
        data["created_at"],
        data["source"],
        int(data["wants_score"]),
        None,  # significance: not scored yet
        0,  # scoring_failures
        0,  # pinned
        None,  # pin_auto
        None,  # pinned_seq
        None,  # pinned_by
        " ".join(prefix + term for term in name_terms),
        " ".join(prefix + term for term in user_terms),
        " ".join(prefix + term for term in reply_terms),
        len(name_terms) + len(user_terms) + len(reply_terms),
        json.dumps([int(message_id) for message_id in data["reply_message_ids"]]),
        "".join(f",{int(memory_id)}" for memory_id in data["drew_on"]) + ("," if data["drew_on"] else ""),
    ]


def row_changes(seq: int, kind: str, data: dict[str, Any]) -> list[Change]:
    """What an event other than memory_written and memory_forgotten does to the memory it names."""
    if kind == MemorySignificanceSet.KIND:
        return [("significance", SET_IF_NULL, data["score"])]
    if kind == MemorySignificanceFailed.KIND:
        return [("scoring_failures", ADD, 1)]
    if kind == MemoryPinChanged.KIND:
        if data["pinned"]:
            by = None if data["auto"] else data["actor_id"]
            return [
                ("pinned", SET, 1),
                ("pin_auto", SET, int(data["auto"])),
                ("pinned_seq", SET, seq),
                ("pinned_by", SET, by),
            ]
        return [("pinned", SET, 0), ("pin_auto", SET, None), ("pinned_seq", SET, None), ("pinned_by", SET, None)]
    raise TypeError(f"no projection for {kind}")


def apply_changes(row: list[Any], changes: list[Change]) -> None:
    """Apply `changes` to a row held in memory, exactly as their UPDATE would."""
    for column, how, value in changes:
        i = COLUMN_INDEX[column]
        if how == SET:
            row[i] = value
        elif how == SET_IF_NULL:
            if row[i] is None:
                row[i] = value
        else:
            row[i] += value


@lru_cache(maxsize=64)
def _update_sql(shape: tuple[tuple[str, str], ...]) -> str:
    """The UPDATE applying changes of this (column, how) shape to the memory `id = ?`."""
    assignments = {
        SET: "{0} = ?",
        SET_IF_NULL: "{0} = coalesce({0}, ?)",
        ADD: "{0} = {0} + ?",
    }
    sets = ", ".join(assignments[how].format(column) for column, how in shape)
    return f"UPDATE memories SET {sets} WHERE id = ?"


def update_statement(memory_id: int, changes: list[Change]) -> Statement:
    shape = tuple((column, how) for column, how, _ in changes)
    return _update_sql(shape), (*(value for _, _, value in changes), memory_id)


def index_entry(row: Sequence[Any]) -> tuple[Any, ...]:
    """The INDEX_MEMORY parameters that put a memories row in the full-text index."""
    return (row[0], *row[FIRST_SEARCH_COLUMN : FIRST_SEARCH_COLUMN + len(FTS_COLUMNS)])


def scope_count_entry(row: Sequence[Any]) -> tuple[Any, ...]:
    """The COUNT_IN_SCOPE parameters for a new memories row."""
    return (row[2], row[3], row[4], row[SEARCH_TERMS])


def fold(seq: int, kind: str, data: dict[str, Any], *, index_text: bool = True) -> list[Statement]:
    """The SQL that applies the event `kind` with payload `data`, recorded at `seq`, to the projections.

    `index_text=False` leaves the full-text index alone; a full rebuild
    refills it in one pass at the end, which is much faster than row by row.
    """
    if kind not in EVENT_TYPES:
        raise TypeError(f"no projection for {kind}")
    if kind == MEMORY_WRITTEN:
        row = new_memory(seq, data)
        if row is None:
            return []
        statements: list[Statement] = [
            (INSERT_MEMORY, tuple(row)),
            (COUNT_IN_SCOPE, scope_count_entry(row)),
            (LIST_REPLY_MESSAGES, (seq,)),
        ]
        if index_text:
            statements.append((INDEX_MEMORY, index_entry(row)))
        return statements
    memory_id = data["memory_id"]
    if kind == MEMORY_FORGOTTEN:
        statements = [(UNINDEX_MEMORY, (memory_id,))] if index_text else []
        statements.append((UNCOUNT_IN_SCOPE, (memory_id,)))
        statements.append((UNLIST_REPLY_MESSAGES, (memory_id,)))
        statements.append((DELETE_MEMORY, (memory_id,)))
        return statements
    return [update_statement(memory_id, row_changes(seq, kind, data))]


def statements_for(seq: int, event: Event, *, index_text: bool = True) -> list[Statement]:
    """`fold` for an event object (what the live path holds)."""
    return fold(seq, event.KIND, payload_of(event), index_text=index_text)


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


@lru_cache(maxsize=4096)
def _scope(bot_id: int, kind: str, scope_id: int) -> Scope:
    """Scopes are few and their index tag costs a hash: build each once."""
    return Scope(bot_id, kind, scope_id)  # type: ignore[arg-type]
