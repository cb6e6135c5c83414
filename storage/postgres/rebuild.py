"""Rebuild the PostgreSQL projections by replaying the event log.

The whole rebuild is one transaction, so a crash halfway leaves the old
projections in place. It starts with `LOCK TABLE events IN EXCLUSIVE MODE`:
appends (INSERT, and the redaction's UPDATE) wait until it commits, while
plain reads of the log and of the projections go on, seeing the old rows
(the rebuild empties the projections with DELETE, not TRUNCATE, whose lock
would stop the readers too).

Why the lock cannot deadlock: it is the rebuild's first statement, so while
it waits it holds nothing anyone else waits for. A writer touches the
projections only through `eventlog.append`, after inserting an event, and
keeps the events lock that insert took until it commits; the rebuild waits
for those writers and they never wait for it. The writers that come later
queue on `events` holding at most advisory scope locks (which the rebuild
never takes) and plain reads (which nothing here conflicts with). Scoring
claims lock memories rows but never touch `events`, and commit at once.

The replay reads the log through a server-side cursor, in batches, and
decodes each event as `storage.events.decode` does (older versions upcast),
so its projections are those of `eventlog.apply` event after event. As on
SQLite (storage/rebuild.py), a new memory is held in memory while later
events change it, and inserted once in its final state, many rows per
round trip; events about rows already inserted become the same UPDATEs the
live path runs. `scoring_claims` and the Discord mirrors are not
projections of the log and are left alone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg

from storage.events import Event, MemoryForgotten, MemoryWritten, decode, payload_of
from storage.postgres.eventlog import LIST_REPLY_MESSAGES, search_texts, update_statement, written_columns
from storage.projections import ADD, SET, SET_IF_NULL, Change, Statement, batched, row_changes
from storage.rebuild import RebuildReport

log = logging.getLogger(__name__)

# Events per cursor fetch.
FETCH_EVENTS = 5_000
# Held rows (or queued statements) that trigger a flush: bounds memory, and most scores
# arrive a few events after their memory, so they still find it held.
FLUSH_ROWS = 5_000

LOCK_LOG = "LOCK TABLE events IN EXCLUSIVE MODE"
# A memories row with every column, in its final state; `search` as eventlog.INSERT_MEMORY makes it.
INSERT_ROW = """
INSERT INTO memories (
    id, written_seq, bot_id, scope_kind, scope_id, channel_id, parent_channel_id, private_thread,
    author_id, author_name, bot_name, user_text, reply_text, user_message_id, created_at, source,
    wants_score, reply_message_ids, drew_on,
    significance, scoring_failures, pinned, pin_auto, pinned_seq, pinned_by, search
) VALUES (
    $1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
    $19, $20, $21, $22, $23, $24,
    setweight(to_tsvector('english', $25), 'A') || setweight(to_tsvector('english', $26), 'B')
    || setweight(to_tsvector('english', $27), 'C')
)
"""
UNLIST_REPLY_MESSAGES = "DELETE FROM reply_messages WHERE memory_id = $1"
DELETE_MEMORY = "DELETE FROM memories WHERE id = $1"
SET_POSITION = (
    "INSERT INTO projection_state (name, last_seq) VALUES ('memories', $1)"
    " ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq"
)
# The columns later events change (storage.projections.row_changes), as a new row has them.
MUTABLE_DEFAULTS: dict[str, Any] = {
    "significance": None,
    "scoring_failures": 0,
    "pinned": False,
    "pin_auto": None,
    "pinned_seq": None,
    "pinned_by": None,
}
# The fold gives these as 0/1 (SQLite's booleans); here they are booleans, as eventlog.update_statement makes them.
_BOOLEAN_COLUMNS = frozenset({"pinned", "pin_auto"})


async def rebuild_projections(
    conn_or_pool: asyncpg.Connection | asyncpg.Pool,
    *,
    fetch_events: int = FETCH_EVENTS,
    flush_rows: int = FLUSH_ROWS,
) -> RebuildReport:
    """Empty the projections and replay the whole log into them, in one transaction that keeps appends out.

    Takes a connection (or a pool to borrow one from); on a connection
    already in a transaction, the rebuild runs in a savepoint and the lock
    lasts until the caller's commit. `fetch_events` and `flush_rows` size
    the batches (tests make them tiny to cross every boundary).
    """
    if isinstance(conn_or_pool, asyncpg.Pool):
        async with conn_or_pool.acquire() as conn:
            return await _rebuild(conn, fetch_events, flush_rows)
    return await _rebuild(conn_or_pool, fetch_events, flush_rows)


async def _rebuild(conn: asyncpg.Connection, fetch_events: int, flush_rows: int) -> RebuildReport:
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute(LOCK_LOG)
        await conn.execute("DELETE FROM reply_messages")
        await conn.execute("DELETE FROM memories")
        await conn.execute(SET_POSITION, 0)
        replay = _Replay(conn)
        count = 0
        last = 0
        cursor = await conn.cursor("SELECT seq, kind, version, payload FROM events ORDER BY seq")
        while rows := await cursor.fetch(fetch_events):
            for seq, kind, version, payload in rows:
                await replay.apply(seq, decode(kind, version, payload))
            count += len(rows)
            last = rows[-1][0]
            if len(replay.held) >= flush_rows or len(replay.pending) >= flush_rows:
                await replay.flush()
        await replay.flush()
        await conn.execute(SET_POSITION, last)
    report = RebuildReport(events=count, last_seq=last, seconds=time.perf_counter() - started)
    log.info("rebuilt the PostgreSQL projections from %d events in %.2fs", report.events, report.seconds)
    return report


class _Held:
    """A memory written during the replay and not inserted yet, with what later events did to it."""

    __slots__ = ("event", "mutable", "seq")

    def __init__(self, seq: int, event: MemoryWritten) -> None:
        self.seq = seq
        self.event = event
        self.mutable = dict(MUTABLE_DEFAULTS)

    def change(self, changes: list[Change]) -> None:
        """What eventlog.update_statement's UPDATE would do to the row."""
        for column, how, value in changes:
            if column not in self.mutable:
                raise TypeError(f"the rebuild does not know the column {column!r}")
            if column in _BOOLEAN_COLUMNS and value is not None:
                value = bool(value)
            if how == SET:
                self.mutable[column] = value
            elif how == SET_IF_NULL:
                if self.mutable[column] is None:
                    self.mutable[column] = value
            elif how == ADD:
                self.mutable[column] += value
            else:
                raise ValueError(f"unknown change {how!r}")

    def params(self) -> tuple[Any, ...]:
        event, mutable = self.event, self.mutable
        return (
            self.seq,
            *written_columns(event),
            mutable["significance"],
            mutable["scoring_failures"],
            mutable["pinned"],
            mutable["pin_auto"],
            mutable["pinned_seq"],
            mutable["pinned_by"],
            *search_texts(event),
        )


class _Replay:
    """Folds events into the projections, in batches, with the result of `eventlog.apply` one by one.

    Two queues: `held` (new rows, in log order) and `pending` (statements
    about rows already inserted, in log order). A flush runs `pending`
    first, then inserts `held`. That order is the log's for everything that
    does not commute: an UPDATE names one row, and a row still held took its
    changes in memory, so a pending UPDATE is about another row (or one
    written later, which it must not find, and does not). What a forget
    removes from reply_messages can let a later memory claim a message id,
    so a forget flushes what was held before it and then queues its DELETEs:
    everything held comes after every queued forget.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.held: dict[int, _Held] = {}
        self.pending: list[Statement] = []
        # Memories whose memory_written is redacted: never projected, so events about them change
        # nothing. Only forgotten memories are redacted, so this stays small.
        self.redacted: set[int] = set()

    async def apply(self, seq: int, event: Event) -> None:
        if isinstance(event, MemoryWritten):
            if event.redacted:
                self.redacted.add(seq)
            else:
                self.held[seq] = _Held(seq, event)
            return
        memory_id = event.memory_id
        if memory_id in self.redacted:
            return
        held = self.held.get(memory_id)
        if isinstance(event, MemoryForgotten):
            if held is not None and not held.event.reply_message_ids:
                # Listed no message: no other memory can tell it was ever there.
                del self.held[memory_id]
                return
            if self.held:
                await self.flush()
            self.pending += [(UNLIST_REPLY_MESSAGES, (memory_id,)), (DELETE_MEMORY, (memory_id,))]
            return
        changes = row_changes(seq, event.KIND, payload_of(event))
        if held is not None:
            held.change(changes)
        else:
            sql, params = update_statement(memory_id, changes)
            self.pending.append((sql, tuple(params)))

    async def flush(self) -> None:
        for sql, params in batched(self.pending):
            await self.conn.executemany(sql, params)
        self.pending.clear()
        if not self.held:
            return
        rows = list(self.held.values())
        self.held.clear()
        await self.conn.executemany(INSERT_ROW, [row.params() for row in rows])
        # In log order, one statement per memory as the live path runs them: the first memory to
        # list a message id keeps it.
        listed = [(row.seq, list(row.event.reply_message_ids)) for row in rows if row.event.reply_message_ids]
        if listed:
            await self.conn.executemany(LIST_REPLY_MESSAGES, listed)


async def projection_rows(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the projections hold, comparable with ==: every memories column (the tsvector as
    its text), reply_messages and projection_state, each ordered by its key."""
    columns = await conn.fetch(
        "SELECT quote_ident(attname) AS name, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
        " WHERE attrelid = 'memories'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    )
    # asyncpg has no codec for tsvector; its text is canonical (sorted lexemes and positions).
    selected = ", ".join(f"{c['name']}::text" if c["type"] == "tsvector" else c["name"] for c in columns)
    return {
        "memories": [tuple(row) for row in await conn.fetch(f"SELECT {selected} FROM memories ORDER BY id")],
        "reply_messages": [
            tuple(row) for row in await conn.fetch("SELECT message_id, memory_id FROM reply_messages ORDER BY 1")
        ],
        "projection_state": [
            tuple(row) for row in await conn.fetch("SELECT name, last_seq FROM projection_state ORDER BY 1")
        ],
    }
