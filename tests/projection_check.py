"""Compare live projections with a rebuild from the log."""

from __future__ import annotations

from pathlib import Path

from bot import CompanionBot
from storage import sqlite
from storage.postgres.rebuild import projection_rows, rebuild_projections
from storage.projections import MEMORY_COLUMNS as ALL_COLUMNS
from storage.rebuild import rebuild_on
from storage.schema import FTS_COLUMNS

MEMORY_COLUMNS = ", ".join(ALL_COLUMNS)
SEARCH_COLUMNS = " || ' ' || ".join(FTS_COLUMNS)


def projection_state(conn: sqlite.sqlite3.Connection) -> dict:
    """Everything the projections hold, in a comparable form."""
    memories = conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories ORDER BY id").fetchall()
    # The documents the full-text index holds, what it answers, and a check that it agrees with its content.
    indexed = conn.execute("SELECT id FROM memories_fts_docsize ORDER BY id").fetchall()
    (last_seq,) = conn.execute("SELECT last_seq FROM projection_state WHERE name = 'memories'").fetchone()
    scopes = conn.execute("SELECT * FROM scope_stats ORDER BY bot_id, scope_kind, scope_id").fetchall()
    replies = conn.execute("SELECT * FROM reply_messages ORDER BY message_id").fetchall()
    fts_integrity_check(conn)
    return {
        "memories": memories,
        "indexed": indexed,
        "last_seq": last_seq,
        "answers": index_answers(conn),
        "scopes": scopes,
        "replies": replies,
    }


def fts_integrity_check(conn: sqlite.sqlite3.Connection, schema: str = "main") -> None:
    """Raises unless the full-text index agrees with the rows it indexes."""
    conn.execute(f"INSERT INTO {schema}.memories_fts (memories_fts, rank) VALUES ('integrity-check', 1)")


def index_answers(conn: sqlite.sqlite3.Connection, schema: str = "main") -> dict[str, list[int]]:
    """What the full-text index answers for every scoped term of every memory: term -> ids, ascending.

    Two indexes built differently (segments, merges) answer the same when
    they index the same words; each memory is found by each of its terms.
    """
    rows = conn.execute(f"SELECT id, {SEARCH_COLUMNS} FROM {schema}.memories").fetchall()
    terms = {term for _, text in rows for term in text.split()}
    answers = {
        term: [
            row[0]
            for row in conn.execute(
                f"SELECT rowid FROM {schema}.memories_fts WHERE memories_fts MATCH ? ORDER BY rowid", (f'"{term}"',)
            )
        ]
        for term in sorted(terms)
    }
    for memory_id, text in rows:
        for term in text.split():
            assert memory_id in answers[term], f"memory #{memory_id} is not found by its term {term}"
    return answers


def live_and_rebuilt(path: Path, tmp_dir: Path) -> tuple[dict, dict]:
    """(live projections, projections rebuilt from the log of a copy of the database)."""
    live = sqlite.connect(path)
    copy_path = tmp_dir / "rebuilt-copy.db"
    copy = sqlite.connect(copy_path)
    try:
        live.backup(copy)
        live_state = projection_state(live)
        rebuild_on(copy)
        rebuilt_state = projection_state(copy)
    finally:
        live.close()
        copy.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy_path}{suffix}").unlink(missing_ok=True)
    return live_state, rebuilt_state


async def live_and_rebuilt_of(bot: CompanionBot, tmp_dir: Path) -> tuple[dict, dict]:
    """(live projections, projections rebuilt from the log) of a running bot, on either backend.

    PostgreSQL's rebuild runs in a transaction that is rolled back: the live projections stay as they were.
    """
    if bot.db is not None:
        return live_and_rebuilt(bot.db.path, tmp_dir)
    pool = bot.store.pool  # type: ignore[attr-defined]
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            # Appends wait until the rollback: the live rows read are those the rebuild replays.
            await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            live = await projection_rows(conn)
            await rebuild_projections(conn)
            rebuilt = await projection_rows(conn)
        finally:
            await transaction.rollback()
    return live, rebuilt
