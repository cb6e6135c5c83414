"""The append-only event log, the single source of truth.

`append` writes an event and applies it to the projections inside the
caller's transaction, so the log and the projections never disagree.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from storage.connection_thread import Connection
from storage.events import Event, MemorySignificanceFailed, MemoryWritten, decode, dump_payload, encode, payload_of
from storage.projections import advance_to, fold
from storage.sqlite import sqlite3

INSERT_EVENT = "INSERT INTO events (kind, version, payload, recorded_at) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True)
class RecordedEvent:
    seq: int
    recorded_at: float
    event: Event


def append(conn: sqlite3.Connection, event: Event) -> int:
    """Append `event` and apply it to the projections; returns its sequence number.

    Runs on the writer's thread, inside the transaction of `Database.write`.
    """
    return appender(event)(conn)


def appender(event: Event) -> Callable[[sqlite3.Connection], int]:
    """`append` of `event` as a function of the connection, with the event encoded now: a command of
    one event passes it to `Database.write` as it is."""
    kind, version, data = event.KIND, event.VERSION, payload_of(event)
    payload = dump_payload(data)
    recorded_at = time.time()

    def write(conn: sqlite3.Connection) -> int:
        seq = conn.execute(INSERT_EVENT, (kind, version, payload, recorded_at)).lastrowid
        assert seq is not None
        for sql, params in fold(seq, kind, data):
            conn.execute(sql, params)
        conn.execute(*advance_to(seq))
        return seq

    return write


def append_many(conn: sqlite3.Connection, events: Sequence[Event]) -> list[int]:
    """Append `events` in order and apply them to the projections; returns their sequence numbers.

    For a caller on the connection's thread, inside its transaction, with
    many events at once (an import): each statement runs once for all of
    them, which is what makes tens of thousands a second possible. Only
    events independent of each other may come together (new memories are,
    and forgets of different memories).
    """
    if not events:
        return []
    recorded_at = time.time()
    encoded = [(event.KIND, event.VERSION, payload_of(event)) for event in events]
    first = _next_seq(conn)
    conn.executemany(
        INSERT_EVENT, [(kind, version, dump_payload(data), recorded_at) for kind, version, data in encoded]
    )
    seqs = list(range(first, first + len(events)))
    if _next_seq(conn) != seqs[-1] + 1:
        raise RuntimeError("events were numbered out of order")
    by_statement: dict[str, list[tuple]] = {}
    for seq, (kind, _, data) in zip(seqs, encoded, strict=True):
        for sql, params in fold(seq, kind, data):
            by_statement.setdefault(sql, []).append(params)
    for sql, rows in by_statement.items():
        conn.executemany(sql, rows)
    conn.execute(*advance_to(seqs[-1]))
    return seqs


def _next_seq(conn: sqlite3.Connection) -> int:
    # AUTOINCREMENT numbers past the highest ever handed out, which sqlite_sequence keeps.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return (row[0] if row else 0) + 1


def redact_forgotten(conn: sqlite3.Connection, memory_ids: Sequence[int]) -> None:
    """Take the text of forgotten memories out of the log, where events carried it.

    Each memory_written event keeps its row, ids and kind, and loses its text.
    The reasons recorded for the memories' scoring failures go too: one an
    older version wrote may quote a provider's error, which may quote the text.
    """
    ids = json.dumps([int(memory_id) for memory_id in memory_ids])
    rows = conn.execute(
        "SELECT seq, version, payload FROM events WHERE seq IN (SELECT value FROM json_each(?)) AND kind = ?",
        (ids, MemoryWritten.KIND),
    ).fetchall()
    redacted = []
    for seq, version, payload in rows:
        event = decode(MemoryWritten.KIND, version, payload)
        assert isinstance(event, MemoryWritten)
        redacted.append((encode(event.redact())[2], seq))
    conn.executemany("UPDATE events SET payload = ? WHERE seq = ?", redacted)
    # The kind is written out, so the partial index `events_scoring_failures` applies.
    conn.execute(
        "UPDATE events SET payload = json_set(payload, '$.reason', '', '$.redacted', json('true'))"
        f" WHERE kind = '{MemorySignificanceFailed.KIND}'"
        " AND json_extract(payload, '$.memory_id') IN (SELECT value FROM json_each(?))",
        (ids,),
    )


async def read_events(conn: Connection, *, after_seq: int = 0) -> AsyncIterator[RecordedEvent]:
    """Every event after `after_seq`, oldest first."""
    async with conn.execute(
        "SELECT seq, kind, version, payload, recorded_at FROM events WHERE seq > ? ORDER BY seq",
        (after_seq,),
    ) as cursor:
        async for seq, kind, version, payload, recorded_at in cursor:
            yield RecordedEvent(seq, recorded_at, decode(kind, version, payload))


async def last_seq(conn: Connection) -> int:
    async with conn.execute("SELECT coalesce(max(seq), 0) FROM events") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
