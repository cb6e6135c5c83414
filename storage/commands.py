"""State changes of the memory store. Each one checks its invariants, then
appends its events and their projection updates in a single transaction.

Each command is a synchronous function of the writer's connection, handed
whole to `Database.write`: one hop to the writer's thread, however many
statements it runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from storage import memories, pin_rules
from storage.database import Database
from storage.eventlog import append, append_many, appender, redact_forgotten
from storage.events import (
    SOURCE_CHAT,
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceFailed,
    MemorySignificanceSet,
    MemoryWritten,
)
from storage.pin_rules import Pin
from storage.scope import Scope
from storage.sqlite import sqlite3

PIVOTAL = 3
# Memories forgotten per transaction when many go at once (a server's, a person's).
FORGET_BATCH = 1000


class MemoryNotFound(Exception):
    """No such memory in this scope: unknown, forgotten, or another scope's."""


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
    reply_message_ids: tuple[int, ...] = ()
    drew_on: tuple[int, ...] = ()
    parent_channel_id: int | None = None
    private_thread: bool = False


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
        reply_message_ids=turn.reply_message_ids,
        drew_on=turn.drew_on,
        parent_channel_id=turn.parent_channel_id,
        private_thread=turn.private_thread,
    )


async def write_memory(db: Database, turn: TurnRecord) -> int:
    """Remember an answered turn; returns the new memory's id."""
    # The event is encoded here, on the loop, so the writer's thread has only the statements to run.
    return await db.write(appender(memory_written(turn)))


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

    return await db.write(write)


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

    def record(conn: sqlite3.Connection) -> ScoringOutcome:
        if not _awaits_score(conn, memory_id):
            return ScoringOutcome(recorded=False)
        append(conn, MemorySignificanceSet(memory_id=memory_id, score=score, model=model))
        if score != PIVOTAL:
            return ScoringOutcome(recorded=True)
        pinned, unpinned = _auto_pin(conn, memory_id, pin_cap)
        return ScoringOutcome(recorded=True, pinned=pinned, unpinned=unpinned)

    return await db.write(record)


async def record_scoring_failure(db: Database, memory_id: int, *reasons: str) -> bool:
    """Note classifier calls that gave no usable answer, one event (and reason) per call; never
    invents a score."""

    def record(conn: sqlite3.Connection) -> bool:
        if not _awaits_score(conn, memory_id):
            return False
        for reason in reasons:
            append(conn, MemorySignificanceFailed(memory_id=memory_id, reason=reason[:500]))
        return True

    return await db.write(record)


async def pin_memory(
    db: Database, scope: Scope, memory_id: int, *, actor_id: int, pin_cap: int, member_quota: int | None = None
) -> PinOutcome:
    """Pin by hand. A manual pin is never evicted; it may push out the oldest auto-pin.

    With `member_quota` (a member, not a moderator), refuse (ManualPinLimit)
    when the actor already holds that many manual pins in the scope, or when
    manual pins already fill its cap.
    """

    def pin_by_hand(conn: sqlite3.Connection) -> PinOutcome:
        memory = _scoped_memory(conn, scope, memory_id)
        if memory.pinned and not memory.pin_auto:
            return PinOutcome(changed=False, memory=memory)
        if member_quota is not None:
            pin_rules.check_manual_pin(_pin_census(conn, scope), actor_id, member_quota=member_quota, pin_cap=pin_cap)
        append(conn, MemoryPinChanged(memory_id, pinned=True, auto=False, actor_id=actor_id, reason="manual"))
        unpinned = pin_rules.over_cap(_pin_census(conn, scope), pin_cap, protect=memory_id)
        _unpin_evicted(conn, unpinned)
        return PinOutcome(changed=True, memory=_scoped_memory(conn, scope, memory_id), unpinned=unpinned)

    return await db.write(pin_by_hand)


async def unpin_memory(db: Database, scope: Scope, memory_id: int, *, actor_id: int) -> PinOutcome:
    def unpin(conn: sqlite3.Connection) -> PinOutcome:
        memory = _scoped_memory(conn, scope, memory_id)
        if not memory.pinned:
            return PinOutcome(changed=False, memory=memory)
        append(conn, MemoryPinChanged(memory_id, pinned=False, auto=False, actor_id=actor_id, reason="manual"))
        return PinOutcome(changed=True, memory=_scoped_memory(conn, scope, memory_id))

    return await db.write(unpin)


async def forget_memory(
    db: Database, scope: Scope, memory_id: int, *, actor_id: int | None, reason: str = ""
) -> memories.Memory:
    """Forget a memory: the event, the projection row and the index entry lose its text.

    `actor_id` is who asked; None with a `reason` when nobody did (a message deleted in Discord).
    """

    def forget(conn: sqlite3.Connection) -> memories.Memory:
        memory = _scoped_memory(conn, scope, memory_id)
        append(conn, MemoryForgotten(memory_id=memory_id, actor_id=actor_id, reason=reason))
        redact_forgotten(conn, [memory_id])
        return memory

    return await db.write(forget)


async def rewrite_memory(db: Database, scope: Scope, memory_id: int, user_text: str, *, reason: str) -> int:
    """The person edited the message a memory came from: remember the new text instead; the new id.

    The old memory is forgotten, its text redacted as any forget's, and the
    new text is remembered as a new memory of the same message, with the same
    reply, time and author. A manual pin stays; the score does not (the
    classifier scores the new text, when the memory wants a score).
    """

    def rewrite(conn: sqlite3.Connection) -> int:
        memory = _scoped_memory(conn, scope, memory_id)
        row = conn.execute(
            "SELECT reply_message_ids, pinned_by, parent_channel_id, private_thread FROM memories WHERE id = ?",
            (memory_id,),
        ).fetchone()
        assert row is not None
        append(conn, MemoryForgotten(memory_id=memory_id, reason=reason))
        redact_forgotten(conn, [memory_id])
        record = edited_turn(
            memory, user_text, reply_message_ids=json.loads(row[0]), parent_channel_id=row[2], private_thread=row[3]
        )
        new_id = append(conn, memory_written(record, source=memory.source, wants_score=memory.wants_score))
        if memory.pinned and not memory.pin_auto:
            pin = MemoryPinChanged(new_id, pinned=True, auto=False, actor_id=row[1], reason=f"kept from #{memory_id}")
            append(conn, pin)
        return new_id

    return await db.write(rewrite)


def edited_turn(
    memory: memories.Memory,
    user_text: str,
    *,
    reply_message_ids: Sequence[int],
    parent_channel_id: int | None,
    private_thread: bool,
) -> TurnRecord:
    """The turn a memory becomes when its message is edited: the new text, with the same reply, time,
    author and place."""
    return TurnRecord(
        scope=memory.scope,
        channel_id=memory.channel_id,
        author_id=memory.author_id,
        author_name=memory.author_name,
        bot_name=memory.bot_name,
        user_text=user_text,
        reply_text=memory.reply_text,
        user_message_id=memory.user_message_id,
        created_at=memory.created_at,
        reply_message_ids=tuple(reply_message_ids),
        parent_channel_id=parent_channel_id,
        private_thread=bool(private_thread),
    )


async def forget_memories(
    db: Database, scope: Scope, memory_ids: Sequence[int], *, actor_id: int | None, reason: str = ""
) -> list[int]:
    """Forget many memories of `scope`, FORGET_BATCH to a transaction, each as `forget_memory` does.

    Returns those forgotten; ids unknown here (another scope's, forgotten already) are skipped.
    """
    forgotten: list[int] = []
    for start in range(0, len(memory_ids), FORGET_BATCH):
        batch = [int(memory_id) for memory_id in memory_ids[start : start + FORGET_BATCH]]

        def forget(conn: sqlite3.Connection, batch: list[int] = batch) -> list[int]:
            present = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM memories WHERE id IN (SELECT value FROM json_each(?))"
                    " AND bot_id = ? AND scope_kind = ? AND scope_id = ? ORDER BY id",
                    (json.dumps(batch), scope.bot_id, scope.kind, scope.id),
                )
            ]
            append_many(conn, [MemoryForgotten(i, actor_id=actor_id, reason=reason) for i in present])
            redact_forgotten(conn, present)
            return present

        forgotten += await db.write(forget)
    return forgotten


def _awaits_score(conn: sqlite3.Connection, memory_id: int) -> bool:
    """Whether the memory is there (not forgotten) and has no score yet."""
    row = conn.execute("SELECT significance FROM memories WHERE id = ?", (memory_id,)).fetchone()
    return row is not None and row[0] is None


def _auto_pin(conn: sqlite3.Connection, memory_id: int, pin_cap: int) -> tuple[bool, tuple[int, ...]]:
    row = conn.execute(
        "SELECT bot_id, scope_kind, scope_id, pinned, author_id FROM memories WHERE id = ?", (memory_id,)
    ).fetchone()
    if row is None or row[3]:
        return False, ()
    pinned, evicted = pin_rules.auto_pin(_pin_census(conn, Scope(row[0], row[1], row[2])), memory_id, row[4], pin_cap)
    _unpin_evicted(conn, evicted)
    if pinned:
        append(conn, MemoryPinChanged(memory_id, pinned=True, auto=True, reason="pivotal"))
    return pinned, evicted


def _unpin_evicted(conn: sqlite3.Connection, memory_ids: Sequence[int]) -> None:
    for memory_id in memory_ids:
        append(conn, MemoryPinChanged(memory_id, pinned=False, auto=True, reason="over pin cap"))


def _pin_census(conn: sqlite3.Connection, scope: Scope) -> list[Pin]:
    """The scope's pinned memories."""
    rows = conn.execute(
        "SELECT id, pin_auto, pinned_by, author_id FROM memories"
        " WHERE bot_id = ? AND scope_kind = ? AND scope_id = ? AND pinned = 1",
        (scope.bot_id, scope.kind, scope.id),
    ).fetchall()
    return [Pin(row[0], bool(row[1]), row[2], row[3]) for row in rows]


def _scoped_memory(conn: sqlite3.Connection, scope: Scope, memory_id: int) -> memories.Memory:
    row = conn.execute(
        f"SELECT {memories.COLUMNS} FROM memories WHERE id = ? AND bot_id = ? AND scope_kind = ? AND scope_id = ?",
        (memory_id, scope.bot_id, scope.kind, scope.id),
    ).fetchone()
    if row is None:
        raise MemoryNotFound(memory_id)
    return memories.memory_from_row(row)
