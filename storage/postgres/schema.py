"""The PostgreSQL schema: the same event log and projections as SQLite's, versioned the same way.

The log is `events`; the projections are `memories` (with a `tsvector`
and its GIN index for full-text recall), `reply_messages` and
`projection_state`. Discord mirrors that are not projections of the log
(`channel_visibility`, `departed_guilds`, `bot_identity`) sit beside them.
Migrations run once each, in a transaction, under an advisory lock, so
several processes starting together apply them once.
"""

from __future__ import annotations

import time

import asyncpg

# pg_advisory_xact_lock key for migrations: "mnemo" + 1, any constant the bot alone uses.
MIGRATION_LOCK = 0x6D6E656D6F01
# Every write to the log holds this one shared, and a restore exclusively (session-level): writes
# from every process wait while a backup replaces the database's content, then land in it.
WRITE_LOCK = 0x6D6E656D6F03

_V1_LOG_AND_PROJECTIONS = """
CREATE TABLE events (
    seq bigserial PRIMARY KEY,
    kind text NOT NULL,
    version integer NOT NULL,
    payload jsonb NOT NULL,
    recorded_at double precision NOT NULL
);
-- The log is append-only. The one permitted change is a redaction, which forgetting a
-- memory needs: the row stays and its text goes.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'events are append-only';
    END IF;
    IF NEW.seq IS DISTINCT FROM OLD.seq OR NEW.kind IS DISTINCT FROM OLD.kind
        OR NEW.version IS DISTINCT FROM OLD.version OR NEW.recorded_at IS DISTINCT FROM OLD.recorded_at
        OR (NEW.payload ->> 'redacted') IS DISTINCT FROM 'true' THEN
        RAISE EXCEPTION 'events are append-only; only redaction is allowed';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE INDEX events_forgotten_messages ON events (((payload ->> 'user_message_id')::bigint))
    WHERE kind = 'memory_written' AND (payload ->> 'redacted') = 'true';
CREATE INDEX events_scoring_failures ON events (((payload ->> 'memory_id')::bigint))
    WHERE kind = 'memory_significance_failed';

CREATE TABLE memories (
    id bigint PRIMARY KEY,
    written_seq bigint NOT NULL REFERENCES events (seq),
    bot_id bigint NOT NULL,
    scope_kind text NOT NULL CHECK (scope_kind IN ('guild', 'dm')),
    scope_id bigint NOT NULL,
    channel_id bigint NOT NULL,
    parent_channel_id bigint,
    private_thread boolean NOT NULL,
    author_id bigint NOT NULL,
    author_name text NOT NULL,
    bot_name text NOT NULL,
    user_text text NOT NULL,
    reply_text text NOT NULL,
    user_message_id bigint,
    created_at double precision NOT NULL,
    source text NOT NULL,
    wants_score boolean NOT NULL,
    significance smallint CHECK (significance BETWEEN 0 AND 3),
    scoring_failures integer NOT NULL DEFAULT 0,
    pinned boolean NOT NULL DEFAULT false,
    pin_auto boolean,
    pinned_seq bigint,
    pinned_by bigint,
    reply_message_ids bigint[] NOT NULL,
    drew_on bigint[] NOT NULL,
    -- Stemmed words of what the person said (A), their name (B) and the bot's reply (C), made
    -- from their casefolded, accent-free words (storage/tokens.py) by the fold.
    search tsvector NOT NULL
);
CREATE INDEX memories_by_scope ON memories (bot_id, scope_kind, scope_id, id);
CREATE INDEX memories_by_channel ON memories (bot_id, channel_id, created_at, id);
CREATE INDEX memories_by_message ON memories (bot_id, user_message_id) WHERE user_message_id IS NOT NULL;
CREATE INDEX memories_pinned ON memories (bot_id, scope_kind, scope_id, id) WHERE pinned;
CREATE INDEX memories_unscored ON memories (id) WHERE significance IS NULL AND wants_score;
CREATE INDEX memories_search ON memories USING gin (search);
CREATE INDEX memories_drew_on ON memories USING gin (drew_on);
CREATE TABLE reply_messages (
    message_id bigint PRIMARY KEY,
    memory_id bigint NOT NULL
);
CREATE INDEX reply_messages_by_memory ON reply_messages (memory_id);
CREATE TABLE projection_state (
    name text PRIMARY KEY,
    last_seq bigint NOT NULL
);
INSERT INTO projection_state (name, last_seq) VALUES ('memories', 0);

CREATE TABLE bot_identity (
    bot_id bigint PRIMARY KEY,
    name text NOT NULL,
    logged_in_at double precision NOT NULL
);
CREATE TABLE departed_guilds (
    bot_id bigint NOT NULL,
    guild_id bigint NOT NULL,
    departed_at double precision NOT NULL,
    PRIMARY KEY (bot_id, guild_id)
);
CREATE TABLE channel_visibility (
    bot_id bigint NOT NULL,
    guild_id bigint NOT NULL,
    channel_id bigint NOT NULL,
    parent_id bigint,
    public boolean NOT NULL,
    PRIMARY KEY (bot_id, guild_id, channel_id)
);
"""

# Which process is scoring which memory, until when: work in progress, not a projection of the
# log (a rebuild leaves it alone, and a claim that runs out is simply claimed again).
_V2_SCORING_CLAIMS = """
CREATE TABLE scoring_claims (
    memory_id bigint PRIMARY KEY,
    claimant text NOT NULL,
    lease_until timestamptz NOT NULL
);
"""

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "event log, memory projections and Discord mirrors", _V1_LOG_AND_PROJECTIONS),
    (2, "scoring claims shared by several processes", _V2_SCORING_CLAIMS),
)
LATEST_VERSION = MIGRATIONS[-1][0]


class SchemaTooNew(Exception):
    """The database was written by a newer version of the bot."""


async def schema_version(conn: asyncpg.Connection) -> int:
    """The highest migration applied, 0 for an empty database."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema up to date; returns the version now in place."""
    async with conn.transaction():
        # Processes starting together wait here, and the later ones find nothing left to do.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at double precision NOT NULL)"
        )
        current = await schema_version(conn)
        if current > LATEST_VERSION:
            raise SchemaTooNew(f"the database has schema version {current}, newer than this bot's {LATEST_VERSION}")
        for version, name, ddl in MIGRATIONS:
            if version <= current:
                continue
            await conn.execute(ddl)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                version,
                name,
                time.time(),
            )
            current = version
    return current
