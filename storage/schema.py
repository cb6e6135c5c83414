"""Versioned schema migrations, recorded in the database itself.

Each migration runs once, in its own transaction, and appends a row to
`schema_migrations`. A database whose version is newer than this code knows
is refused rather than guessed at.
"""

from __future__ import annotations

import time

from storage.sqlite import sqlite3

# The projection tables, separate from the log so a rebuild can drop and
# recreate them.
#
# The full-text index covers three fields of a memory: the author's name,
# what the person said and what the bot replied, each as `search_*` text
# (its stemmed words, prefixed with the scope's tag: see storage/tokens.py)
# through external content. Recall ranks with statistics of the scope alone:
# `memories_vocab` counts the scope's memories holding each term,
# `scope_stats` keeps each scope's number of memories and of indexed terms,
# and `memories_lengths` gives a memory's number of indexed terms, and where it was
# said, without reading its row. `reply_messages` finds a memory by a message of the bot's
# reply (a memory is forgotten when Discord deletes one). `drew_on` lists the memories
# a memory's prompt held, as ",12,34," for a quick search of those drawing on one.
# The index keeps no positions (`detail = none`): recall needs which
# memories hold a term, nothing more. `secure-delete` makes FTS deletes
# remove the words physically.
PROJECTION_DDL = """
CREATE TABLE memories (
    id INTEGER PRIMARY KEY,
    written_seq INTEGER NOT NULL REFERENCES events(seq),
    bot_id INTEGER NOT NULL,
    scope_kind TEXT NOT NULL CHECK (scope_kind IN ('guild', 'dm')),
    scope_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    parent_channel_id INTEGER,
    private_thread INTEGER NOT NULL,
    author_id INTEGER NOT NULL,
    author_name TEXT NOT NULL,
    bot_name TEXT NOT NULL,
    user_text TEXT NOT NULL,
    reply_text TEXT NOT NULL,
    user_message_id INTEGER,
    created_at REAL NOT NULL,
    source TEXT NOT NULL,
    wants_score INTEGER NOT NULL,
    significance INTEGER CHECK (significance BETWEEN 0 AND 3),
    scoring_failures INTEGER NOT NULL DEFAULT 0,
    pinned INTEGER NOT NULL DEFAULT 0,
    pin_auto INTEGER,
    pinned_seq INTEGER,
    pinned_by INTEGER,
    search_name TEXT NOT NULL,
    search_user TEXT NOT NULL,
    search_reply TEXT NOT NULL,
    search_terms INTEGER NOT NULL,
    reply_message_ids TEXT NOT NULL,
    drew_on TEXT NOT NULL
);
CREATE INDEX memories_by_scope ON memories (bot_id, scope_kind, scope_id, id);
CREATE INDEX memories_by_channel ON memories (bot_id, channel_id, created_at, id);
CREATE INDEX memories_by_message ON memories (bot_id, user_message_id) WHERE user_message_id IS NOT NULL;
CREATE INDEX memories_lengths ON memories (id, search_terms, channel_id, parent_channel_id, private_thread, author_id);
CREATE INDEX memories_pinned ON memories (bot_id, scope_kind, scope_id, id) WHERE pinned = 1;
CREATE INDEX memories_unscored ON memories (id) WHERE significance IS NULL AND wants_score = 1;
CREATE VIRTUAL TABLE memories_fts USING fts5 (
    search_name, search_user, search_reply,
    content = 'memories', content_rowid = 'id', detail = none,
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO memories_fts (memories_fts, rank) VALUES ('secure-delete', 1);
CREATE VIRTUAL TABLE memories_vocab USING fts5vocab (memories_fts, 'row');
CREATE TABLE reply_messages (
    message_id INTEGER PRIMARY KEY,
    memory_id INTEGER NOT NULL
);
CREATE INDEX reply_messages_by_memory ON reply_messages (memory_id);
CREATE TABLE scope_stats (
    bot_id INTEGER NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_id INTEGER NOT NULL,
    memories INTEGER NOT NULL,
    terms INTEGER NOT NULL,
    PRIMARY KEY (bot_id, scope_kind, scope_id)
) WITHOUT ROWID;
CREATE TABLE projection_state (
    name TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
INSERT INTO projection_state (name, last_seq) VALUES ('memories', 0);
"""

# Dropped and recreated by a rebuild, in this order.
PROJECTION_TABLES = ("memories_vocab", "memories_fts", "reply_messages", "scope_stats", "memories", "projection_state")
# The full-text index's fields: columns of `memories`, and of `memories_fts` in the same order.
FTS_COLUMNS = ("search_name", "search_user", "search_reply")
# FTS5 keeps the index itself in these ordinary tables (there is no `_content`: the content is
# `memories`). A snapshot carries copies of them, so loading one need not re-index every memory.
FTS_SHADOW_TABLES = ("memories_fts_data", "memories_fts_idx", "memories_fts_docsize", "memories_fts_config")

_V1_LOG = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    payload TEXT NOT NULL CHECK (json_valid(payload)),
    recorded_at REAL NOT NULL
);
-- The log is append-only. The one permitted change is a redaction, which
-- forgetting a memory needs: the row stays and its text goes.
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
CREATE TRIGGER events_only_redact BEFORE UPDATE ON events
WHEN NEW.seq IS NOT OLD.seq OR NEW.kind IS NOT OLD.kind OR NEW.version IS NOT OLD.version
    OR NEW.recorded_at IS NOT OLD.recorded_at
    OR json_extract(NEW.payload, '$.redacted') IS NOT 1
BEGIN
    SELECT RAISE(ABORT, 'events are append-only; only redaction is allowed');
END;
"""

# Import skips messages already remembered, forgotten ones too: a forgotten memory's event
# keeps its message id (its text is gone), and the first index finds those few quickly; a
# forget redacts a memory's scoring failures, which the second finds. The bot records its
# own user id at login, for the command-line tools that need to know it, and the servers it
# was removed from, whose memories it forgets after a grace period.
_V2_IMPORT_AND_IDENTITY = """
CREATE INDEX events_forgotten_messages ON events (json_extract(payload, '$.user_message_id'))
WHERE kind = 'memory_written' AND json_extract(payload, '$.redacted') IS 1;
CREATE INDEX events_scoring_failures ON events (json_extract(payload, '$.memory_id'))
WHERE kind = 'memory_significance_failed';
CREATE TABLE bot_identity (
    bot_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    logged_in_at REAL NOT NULL
);
CREATE TABLE departed_guilds (
    bot_id INTEGER NOT NULL,
    guild_id INTEGER NOT NULL,
    departed_at REAL NOT NULL,
    PRIMARY KEY (bot_id, guild_id)
) WITHOUT ROWID;
"""

# Which channels of its servers each bot sees everyone may see now, and each thread's channel:
# what recall may bring from one channel into another. A mirror of Discord, refreshed as
# channels and roles change, not a projection of the log.
_V3_CHANNEL_VISIBILITY = """
CREATE TABLE channel_visibility (
    bot_id INTEGER NOT NULL,
    guild_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    parent_id INTEGER,
    public INTEGER NOT NULL,
    PRIMARY KEY (bot_id, guild_id, channel_id)
) WITHOUT ROWID;
"""

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "event log and memory projections", _V1_LOG + PROJECTION_DDL),
    (2, "forgotten message ids and the bot's identity", _V2_IMPORT_AND_IDENTITY),
    (3, "which channels everyone may see", _V3_CHANNEL_VISIBILITY),
)

LATEST_VERSION = MIGRATIONS[-1][0]


class SchemaTooNew(Exception):
    """The database was written by a newer version of the bot."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest migration applied, 0 for an empty database."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
    if not exists:
        return 0
    (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(version)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version now in place."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    current = schema_version(conn)
    if current > LATEST_VERSION:
        raise SchemaTooNew(f"the database has schema version {current}, newer than this bot's {LATEST_VERSION}")
    for version, name, ddl in MIGRATIONS:
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in split_script(ddl):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = version
    return current


def split_script(script: str) -> list[str]:
    """Split DDL into statements, keeping trigger bodies whole."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--") and not buffer.strip():
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def fts_ddl() -> list[str]:
    """The statements of PROJECTION_DDL that create and configure the full-text index."""
    return [statement for statement in split_script(PROJECTION_DDL) if "memories_fts" in statement]
