"""Rebuild the projections by replaying the event log.

This is synchronous code meant for a worker thread (or the CLI, with the
bot stopped): it runs on its own connection, inside one transaction, so a
crash halfway leaves the old projections untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from storage import sqlite
from storage.events import decode
from storage.projections import advance_to, batched, statements_for
from storage.schema import PROJECTION_DDL, PROJECTION_TABLES, split_script

log = logging.getLogger(__name__)

FETCH_ROWS = 5000


@dataclass(frozen=True)
class RebuildReport:
    events: int
    last_seq: int
    seconds: float


def rebuild_projections(path: Path | str) -> RebuildReport:
    """Drop the projections of the database at `path` and replay the whole log into them."""
    conn = sqlite.connect(path)
    try:
        return rebuild_on(conn)
    finally:
        conn.close()


def rebuild_on(conn: sqlite.sqlite3.Connection) -> RebuildReport:
    """Replay the log into fresh projections on an open connection, in one transaction."""
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in PROJECTION_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in split_script(PROJECTION_DDL):
            conn.execute(statement)
        count, last = replay(conn, after_seq=0)
        conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('rebuild')")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    report = RebuildReport(events=count, last_seq=last, seconds=time.perf_counter() - started)
    log.info("rebuilt projections from %d events in %.2fs", report.events, report.seconds)
    return report


def replay(conn: sqlite.sqlite3.Connection, *, after_seq: int) -> tuple[int, int]:
    """Apply every event after `after_seq` to the projections, without touching the FTS index.

    Returns (events applied, last sequence number). The caller owns the
    transaction and refills the FTS index afterwards.
    """
    reader = conn.execute("SELECT seq, kind, version, payload FROM events WHERE seq > ? ORDER BY seq", (after_seq,))
    count = 0
    last = after_seq
    while rows := reader.fetchmany(FETCH_ROWS):
        statements = []
        for seq, kind, version, payload in rows:
            statements.extend(statements_for(seq, decode(kind, version, payload), index_text=False))
        for sql, params in batched(statements):
            conn.executemany(sql, params)
        count += len(rows)
        last = rows[-1][0]
    sql, params = advance_to(last)
    conn.execute(sql, params)
    return count, last
