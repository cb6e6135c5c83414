"""State changes of the memory store. Each one checks its invariants, then
appends its events and their projection updates in a single transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosqlite

from storage import memories
from storage.database import Database
from storage.eventlog import append, append_many, appender, redact_memory_written
from storage.events import (
    SOURCE_CHAT,
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceFailed,
    MemorySignificanceSet,
    MemoryWritten,
)
from storage.scope import Scope
from storage.sqlite import sqlite3

PIVOTAL = 3


class MemoryNotFound(Exception):
    """No such memory in this scope: unknown, forgotten, or another scope's."""


class ManualPinLimit(Exception):
    """The scope already holds as many manual pins as this person may make."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} manual pins already")
        self.limit = limit


@dataclass(frozen=True)
class TurnRecord:
    """What the chat flow knows about a turn it answered."""

    scope: Scope
    channel_id: int
    author_id: int
    author_name: str
    bot_name: str
    user_text: str
    reply_text: str
    user_message_id: int | None = None
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ScoringOutcome:
    recorded: bool
    pinned: bool = False
    unpinned: tuple[int, ...] = ()


@dataclass(frozen=True)
class PinOutcome:
    changed: bool
    memory: memories.Memory
    unpinned: tuple[int, ...] = ()


def memory_written(turn: TurnRecord, *, source: str = SOURCE_CHAT, wants_score: bool = True) -> MemoryWritten:
    """The event that remembers `turn`."""
    return MemoryWritten(
        bot_id=turn.scope.bot_id,
        scope_kind=turn.scope.kind,
        scope_id=turn.scope.id,
        channel_id=turn.channel_id,
        author_id=turn.author_id,
        author_name=turn.author_name,
        bot_name=turn.bot_name,
        user_text=turn.user_text,
        reply_text=turn.reply_text,
        user_message_id=turn.user_message_id,
        created_at=turn.created_at,
        source=source,
        wants_score=wants_score,
    )


async def write_memory(db: Database, turn: TurnRecord) -> int:
    """Remember an answered turn; returns the new memory's id."""
    # The reply path's one write: the whole transaction in one hop to the writer thread.
    return await db.write_alone(appender(memory_written(turn)))


async def import_memories(db: Database, events: Sequence[MemoryWritten]) -> int:
    """Remember imported turns in one transaction, except messages already remembered or forgotten.

    Each event names its message (`user_message_id`). Returns how many were
    new. Importing the same history twice changes nothing, and a forgotten
    message does not come back.
    """
    if not events:
        return 0

    def write(conn: sqlite3.Connection) -> int:
        seen = _remembered_messages(conn, events)
        fresh = []
        for event in events:
            key = (event.bot_id, event.user_message_id)
            if key not in seen:  # also a message twice in one batch
                seen.add(key)
                fresh.append(event)
        append_many(conn, fresh)
        return len(fresh)

    return await db.write_alone(write)


def _remembered_messages(conn: sqlite3.Connection, events: Sequence[MemoryWritten]) -> set[tuple[int, int | None]]:
    """(bot id, message id) of `events` the log already holds a memory of, live or forgotten."""
    message_ids = json.dumps(sorted({e.user_message_id for e in events if e.user_message_id is not None}))
    rows = conn.execute(
        "SELECT bot_id, user_message_id FROM memories"
        " WHERE user_message_id IN (SELECT value FROM json_each(?)) AND bot_id IN (SELECT value FROM json_each(?))"
        " UNION"
        " SELECT json_extract(payload, '$.bot_id'), json_extract(payload, '$.user_message_id') FROM events"
        " WHERE kind = 'memory_written' AND json_extract(payload, '$.redacted') IS 1"
        " AND json_extract(payload, '$.user_message_id') IN (SELECT value FROM json_each(?))",
        (message_ids, json.dumps(sorted({e.bot_id for e in events})), message_ids),
    )
    return {(bot_id, message_id) for bot_id, message_id in rows}


async def record_significance(db: Database, memory_id: int, score: int, *, model: str, pin_cap: int) -> ScoringOutcome:
    """Record a memory's score once; a pivotal score pins it within the cap.

    Scoring a memory that already has a score, or that was forgotten,
    records nothing: the first score stands.
    """
    if not 0 <= score <= 3:
        raise ValueError(f"significance must be 0-3, got {score}")
    async with db.transaction() as tx:
        row = await _fetch_one(tx, "SELECT significance FROM memories WHERE id = ?", (memory_id,))
        if row is None or row[0] is not None:
            return ScoringOutcome(recorded=False)
        await append(tx, MemorySignificanceSet(memory_id=memory_id, score=score, model=model))
        if score != PIVOTAL:
            return ScoringOutcome(recorded=True)
        pinned, unpinned = await _auto_pin(tx, memory_id, pin_cap)
        return ScoringOutcome(recorded=True, pinned=pinned, unpinned=unpinned)


async def record_scoring_failure(db: Database, memory_id: int, reason: str) -> bool:
    """Note that scoring gave no usable answer; never invents a score."""
    async with db.transaction() as tx:
        row = await _fetch_one(tx, "SELECT significance FROM memories WHERE id = ?", (memory_id,))
        if row is None or row[0] is not None:
            return False
        await append(tx, MemorySignificanceFailed(memory_id=memory_id, reason=reason[:500]))
        return True


async def pin_memory(
    db: Database, scope: Scope, memory_id: int, *, actor_id: int, pin_cap: int, manual_pin_limit: int | None = None
) -> PinOutcome:
    """Pin by hand. A manual pin is never evicted; it may push out the oldest auto-pin.

    With `manual_pin_limit`, refuse (ManualPinLimit) when the scope already
    holds that many manual pins.
    """
    async with db.transaction() as tx:
        memory = await _scoped_memory(tx, scope, memory_id)
        if memory.pinned and not memory.pin_auto:
            return PinOutcome(changed=False, memory=memory)
        if manual_pin_limit is not None:
            pinned_count, auto_ids = await _pin_census(tx, scope)
            if pinned_count - len(auto_ids) >= manual_pin_limit:
                raise ManualPinLimit(manual_pin_limit)
        await append(tx, MemoryPinChanged(memory_id, pinned=True, auto=False, actor_id=actor_id, reason="manual"))
        unpinned = await _evict_over_cap(tx, scope, pin_cap, protect=memory_id)
        return PinOutcome(changed=True, memory=await _scoped_memory(tx, scope, memory_id), unpinned=unpinned)


async def unpin_memory(db: Database, scope: Scope, memory_id: int, *, actor_id: int) -> PinOutcome:
    async with db.transaction() as tx:
        memory = await _scoped_memory(tx, scope, memory_id)
        if not memory.pinned:
            return PinOutcome(changed=False, memory=memory)
        await append(tx, MemoryPinChanged(memory_id, pinned=False, auto=False, actor_id=actor_id, reason="manual"))
        return PinOutcome(changed=True, memory=await _scoped_memory(tx, scope, memory_id))


async def forget_memory(db: Database, scope: Scope, memory_id: int, *, actor_id: int) -> memories.Memory:
    """Forget a memory: the event, the projection row and the index entry lose its text."""
    async with db.transaction() as tx:
        memory = await _scoped_memory(tx, scope, memory_id)
        await append(tx, MemoryForgotten(memory_id=memory_id, actor_id=actor_id))
        await redact_memory_written(tx, memory_id)
        return memory


async def _auto_pin(tx: aiosqlite.Connection, memory_id: int, pin_cap: int) -> tuple[bool, tuple[int, ...]]:
    row = await _fetch_one(tx, "SELECT bot_id, scope_kind, scope_id, pinned FROM memories WHERE id = ?", (memory_id,))
    if row is None or row[3]:
        return False, ()
    scope = Scope(row[0], row[1], row[2])
    pinned_count, auto_ids = await _pin_census(tx, scope)
    # The candidate competes with the existing auto-pins: while the scope
    # would be over the cap, the oldest auto-pinned memory yields, and that
    # may be the candidate itself (always so if manual pins fill the cap).
    contenders = sorted([*auto_ids, memory_id])
    excess = max(0, pinned_count + 1 - pin_cap)
    yielding = contenders[: min(excess, len(contenders))]
    if memory_id in yielding:
        evicted = tuple(i for i in yielding if i != memory_id)
        pinned = False
    else:
        evicted = tuple(yielding)
        pinned = True
    for evicted_id in evicted:
        await append(tx, MemoryPinChanged(evicted_id, pinned=False, auto=True, reason="over pin cap"))
    if pinned:
        await append(tx, MemoryPinChanged(memory_id, pinned=True, auto=True, reason="pivotal"))
    return pinned, evicted


async def _evict_over_cap(tx: aiosqlite.Connection, scope: Scope, pin_cap: int, *, protect: int) -> tuple[int, ...]:
    pinned_count, auto_ids = await _pin_census(tx, scope)
    excess = max(0, pinned_count - pin_cap)
    evicted = tuple(i for i in sorted(auto_ids) if i != protect)[:excess]
    for evicted_id in evicted:
        await append(tx, MemoryPinChanged(evicted_id, pinned=False, auto=True, reason="over pin cap"))
    return evicted


async def _pin_census(tx: aiosqlite.Connection, scope: Scope) -> tuple[int, list[int]]:
    """How many memories of the scope are pinned, and which of them automatically."""
    async with tx.execute(
        "SELECT id, pin_auto FROM memories WHERE bot_id = ? AND scope_kind = ? AND scope_id = ? AND pinned = 1",
        (scope.bot_id, scope.kind, scope.id),
    ) as cursor:
        rows = await cursor.fetchall()
    return len(rows), [row[0] for row in rows if row[1]]


async def _scoped_memory(tx: aiosqlite.Connection, scope: Scope, memory_id: int) -> memories.Memory:
    memory = await memories.get_memory(tx, scope, memory_id)
    if memory is None:
        raise MemoryNotFound(memory_id)
    return memory


async def _fetch_one(tx: aiosqlite.Connection, sql: str, params: tuple) -> tuple | None:
    async with tx.execute(sql, params) as cursor:
        return await cursor.fetchone()
