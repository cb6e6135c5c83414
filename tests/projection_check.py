"""Compare live projections with a rebuild from the log."""

from __future__ import annotations

from pathlib import Path

from storage import sqlite
from storage.rebuild import rebuild_on

MEMORY_COLUMNS = (
    "id, written_seq, bot_id, scope_kind, scope_id, channel_id, author_id, author_name,"
    " bot_name, user_text, reply_text, user_message_id, created_at, significance, scoring_failures,"
    " pinned, pin_auto, pinned_seq, search_text"
)


def projection_state(conn: sqlite.sqlite3.Connection) -> dict:
    """Everything the projections hold, in a comparable form."""
    memories = conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories ORDER BY id").fetchall()
    # The documents the full-text index holds, and a check that it agrees with its content.
    indexed = conn.execute("SELECT id FROM memories_fts_docsize ORDER BY id").fetchall()
    (last_seq,) = conn.execute("SELECT last_seq FROM projection_state WHERE name = 'memories'").fetchone()
    conn.execute("INSERT INTO memories_fts (memories_fts, rank) VALUES ('integrity-check', 1)")
    return {"memories": memories, "indexed": indexed, "last_seq": last_seq}


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
