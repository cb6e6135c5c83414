"""Rebuild the projections by replaying the event log, from a snapshot when one fits.

This is synchronous code meant for a worker thread (or the CLI, with the
bot stopped): it runs on its own connection, inside one transaction, so a
crash halfway leaves the old projections untouched.

A rebuild starts from the newest snapshot that fits the log (see
`storage.snapshots.unusable_reason`) and replays only the events after it;
with no usable snapshot, or when asked for a full replay, it replays the
whole log. Both give the same projections.

A snapshot carries the full-text index too: loading it copies the index,
and the tail's memories are indexed as they are replayed, the way the live
path indexes them. Only a full replay builds the index from scratch.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage import sqlite
from storage.events import read_payload
from storage.projections import (
    INDEX_MEMORY,
    INSERT_MEMORY,
    MEMORY_FORGOTTEN,
    MEMORY_WRITTEN,
    RECOUNT_SCOPES,
    RELIST_REPLY_MESSAGES,
    Statement,
    advance_to,
    apply_changes,
    batched,
    fold,
    index_entry,
    new_memory,
    row_changes,
)
from storage.schema import PROJECTION_DDL, PROJECTION_TABLES, split_script
from storage.snapshots import SnapshotError, SnapshotInfo, load_into, usable_snapshots

log = logging.getLogger(__name__)

FETCH_ROWS = 10_000
SNAPSHOT_ALIAS = "snapshot"
# See `replay`: how long a new memory's row stays in memory, collecting its score, before it is inserted.
HOLD_EVENTS = 10_000
# For the rebuild's transaction only: a page cache big enough to keep the new tables'
# pages (and the index builds' sorting) in memory until the commit writes them once.
REBUILD_CACHE_KIB = 512 * 1024
# See `fill_fts`.
REBUILD_FTS_HASH_BYTES = 256 << 20
FTS_DEFAULT_HASH_BYTES = 1 << 20

_CREATE_INDEX = re.compile(r"^CREATE\s+INDEX\s", re.IGNORECASE)
_CREATE = re.compile(r"^CREATE\s+(?:VIRTUAL\s+)?(?:TABLE|INDEX)\s+(\w+)", re.IGNORECASE)
# The projection objects and the exact SQL this code creates them with; the
# database keeps that text, so any other text means other projection tables.
EXPECTED_PROJECTION_SQL = {
    match[1]: statement.rstrip(";").strip()
    for statement in split_script(PROJECTION_DDL)
    if (match := _CREATE.match(statement))
}


@dataclass(frozen=True)
class RebuildReport:
    events: int  # events replayed (after the snapshot, if one was used)
    last_seq: int
    seconds: float
    snapshot: str | None = None  # the snapshot the rebuild started from


def rebuild_projections(path: Path | str, snapshots_dir: Path | None = None, *, full: bool = False) -> RebuildReport:
    """Rebuild the projections of the database at `path`: newest fitting snapshot plus the tail,
    or the whole log when `full` or no snapshot fits."""
    conn = sqlite.connect(path)
    try:
        return rebuild_with_snapshots(conn, None if full else snapshots_dir)
    finally:
        conn.close()


def rebuild_with_snapshots(conn: sqlite.sqlite3.Connection, snapshots_dir: Path | None) -> RebuildReport:
    if snapshots_dir is not None:
        for snapshot in usable_snapshots(conn, snapshots_dir):
            try:
                return rebuild_on(conn, snapshot=snapshot)
            except (SnapshotError, sqlite.Error) as exc:
                log.warning("could not rebuild from snapshot %s (%s); trying an older one", snapshot.name, exc)
    return rebuild_on(conn)


def rebuild_on(conn: sqlite.sqlite3.Connection, *, snapshot: SnapshotInfo | None = None) -> RebuildReport:
    """Replay the log into fresh projections on an open connection, in one transaction.

    With `snapshot`, start from its rows and full-text index and replay only
    the events after it, indexing their memories one by one; without, index
    every row in one pass at the end.
    """
    started = time.perf_counter()
    if snapshot is not None:
        # ATTACH is not allowed inside a transaction.
        conn.execute(f"ATTACH DATABASE ? AS {SNAPSHOT_ALIAS}", (str(snapshot.path),))
    (cache_size,) = conn.execute("PRAGMA cache_size").fetchone()
    try:
        conn.execute(f"PRAGMA cache_size = -{REBUILD_CACHE_KIB}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in PROJECTION_TABLES:
                conn.execute(f"DROP TABLE IF EXISTS main.{table}")
            # The secondary indexes are built after the rows are in: sorting once beats
            # inserting row by row into five b-trees.
            deferred = [s for s in split_script(PROJECTION_DDL) if _CREATE_INDEX.match(s)]
            for statement in split_script(PROJECTION_DDL):
                if statement not in deferred:
                    conn.execute(statement)
            after_seq = load_into(conn, SNAPSHOT_ALIAS, snapshot) if snapshot is not None else 0
            # The snapshot's index is already in place: keep it up to date event by event.
            index_text = snapshot is not None
            count, last = replay(conn, after_seq=after_seq, index_text=index_text)
            for statement in deferred:
                conn.execute(statement)
            if not index_text:
                fill_fts(conn)
            # Counted and listed once the rows are in, whatever path they came by.
            conn.execute("DELETE FROM scope_stats")
            conn.execute(RECOUNT_SCOPES)
            conn.execute("DELETE FROM reply_messages")
            conn.execute(RELIST_REPLY_MESSAGES)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite.OperationalError):  # SQLite may have rolled back already
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache_size)}")
        if snapshot is not None:
            conn.execute(f"DETACH DATABASE {SNAPSHOT_ALIAS}")
    report = RebuildReport(
        events=count,
        last_seq=last,
        seconds=time.perf_counter() - started,
        snapshot=snapshot.name if snapshot is not None else None,
    )
    if snapshot is not None:
        log.info(
            "rebuilt projections from snapshot %s (event #%d) and %d later events in %.2fs",
            snapshot.name,
            after_seq,
            report.events,
            report.seconds,
        )
    else:
        log.info("rebuilt projections from %d events in %.2fs", report.events, report.seconds)
    return report


def replay(
    conn: sqlite.sqlite3.Connection, *, after_seq: int, hold_events: int | None = None, index_text: bool = False
) -> tuple[int, int]:
    """Apply every event after `after_seq` to the projections.

    Returns (events applied, last sequence number). The caller owns the
    transaction. With `index_text` the FTS index is kept up to date as rows
    are inserted and forgotten (on top of a snapshot's index); without, it
    is left alone and the caller refills it afterwards.

    A new memory's row is held back in memory until `hold_events` (default
    HOLD_EVENTS) later events have been read, and what those events do to it
    is applied there (`projections.apply_changes`): its score, which comes a
    moment after it, is in the row when it is inserted, once. Events about
    rows already inserted (or loaded from a snapshot) run their SQL
    (`projections.fold`). Each row still sees its events in log order, first
    in memory and then in SQL, so the result is that of folding event after
    event (tests/test_rebuild.py checks it against that fold).
    """
    hold = HOLD_EVENTS if hold_events is None else hold_events
    reader = conn.execute("SELECT seq, kind, version, payload FROM events WHERE seq > ? ORDER BY seq", (after_seq,))
    held: dict[int, list[Any]] = {}
    held_order: deque[int] = deque()
    count = 0
    last = after_seq
    while rows := reader.fetchmany(FETCH_ROWS):
        statements: list[Statement] = []
        for seq, kind, version, payload in rows:
            data = read_payload(kind, version, payload)
            if kind == MEMORY_WRITTEN:
                row = new_memory(seq, data)
                if row is not None:
                    held[seq] = row
                    held_order.append(seq)
                continue
            memory_id = data["memory_id"]
            row = held.get(memory_id)
            if row is None:
                statements.extend(fold(seq, kind, data, index_text=index_text))
            elif kind == MEMORY_FORGOTTEN:
                del held[memory_id]
            else:
                apply_changes(row, row_changes(seq, kind, data))
        # Before this batch's inserts: these are about rows inserted earlier (or loaded from
        # the snapshot), and one naming a memory written later in the log must find no row.
        for sql, params in batched(statements):
            conn.executemany(sql, params)
        count += len(rows)
        last = rows[-1][0]
        ready = []
        while held_order and held_order[0] <= last - hold:
            row = held.pop(held_order.popleft(), None)  # None: forgotten while held
            if row is not None:
                ready.append(row)
        insert_rows(conn, ready, index_text=index_text)
    insert_rows(conn, list(held.values()), index_text=index_text)
    conn.execute(*advance_to(last))
    return count, last


def insert_rows(conn: sqlite.sqlite3.Connection, rows: list[list[Any]], *, index_text: bool) -> None:
    """Insert finished memories rows, and index them when asked to.

    A row's search text never changes after it is written, so indexing the
    row in its final state is what indexing it when it was written would be.
    """
    conn.executemany(INSERT_MEMORY, rows)
    if index_text:
        conn.executemany(INDEX_MEMORY, [index_entry(row) for row in rows])


def fill_fts(conn: sqlite.sqlite3.Connection) -> None:
    """Index every memories row in the (empty) FTS table, in one pass.

    FTS5 collects terms in memory and writes a segment whenever they pass its
    hash size (1 MiB by default): for a whole log that is hundreds of small
    segments, merged over and over. A larger hash for this one pass writes a
    few big ones; the table's setting is put back afterwards.
    """
    set_option = "INSERT INTO memories_fts (memories_fts, rank) VALUES ('hashsize', ?)"
    conn.execute(set_option, (REBUILD_FTS_HASH_BYTES,))
    conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('rebuild')")
    conn.execute(set_option, (FTS_DEFAULT_HASH_BYTES,))


def stale_projections(conn: sqlite.sqlite3.Connection) -> str | None:
    """Why the projections cannot be used as they are, or None if they are current."""
    names = list(EXPECTED_PROJECTION_SQL)
    placeholders = ", ".join("?" * len(names))
    found = dict(conn.execute(f"SELECT name, sql FROM sqlite_master WHERE name IN ({placeholders})", names).fetchall())
    missing = [name for name in names if name not in found]
    if missing:
        return f"missing {', '.join(missing)}"
    if any(found[name] != sql for name, sql in EXPECTED_PROJECTION_SQL.items()):
        return "built by another version of the bot"
    row = conn.execute("SELECT last_seq FROM projection_state WHERE name = 'memories'").fetchone()
    if row is None:
        return "no recorded position"
    (log_end,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    if row[0] != log_end:
        return f"at event #{row[0]}, but the log ends at #{log_end}"
    return None


def ensure_projections(conn: sqlite.sqlite3.Connection, snapshots_dir: Path | None) -> RebuildReport | None:
    """Rebuild the projections (snapshot plus tail) if they are missing, foreign or behind the log."""
    reason = stale_projections(conn)
    if reason is None:
        return None
    log.warning("the projections need a rebuild: %s", reason)
    return rebuild_with_snapshots(conn, snapshots_dir)
