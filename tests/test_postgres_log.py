"""The PostgreSQL schema and event log: migrations, the fold into the projections, append-only, redaction."""

import asyncio
import json

import asyncpg
import pytest

from storage.events import (
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceFailed,
    MemorySignificanceSet,
    MemoryWritten,
)
from storage.postgres import schema
from storage.postgres.eventlog import append, redact_forgotten


def written(
    text: str = "I'm getting married in June",
    *,
    reply: str = "Congratulations on the wedding!",
    reply_ids: tuple[int, ...] = (901,),
) -> MemoryWritten:
    return MemoryWritten(
        bot_id=1000,
        scope_kind="guild",
        scope_id=100,
        channel_id=101,
        author_id=11,
        author_name="Alice",
        bot_name="Mnemo",
        user_text=text,
        reply_text=reply,
        user_message_id=501,
        created_at=1_700_000_000.0,
        reply_message_ids=reply_ids,
    )


@pytest.fixture
async def conn(postgres_dsn):
    connection = await asyncpg.connect(postgres_dsn)
    await schema.migrate(connection)
    yield connection
    await connection.close()


async def append_all(conn, *events) -> list[int]:
    async with conn.transaction():
        return [await append(conn, event) for event in events]


async def test_migrations_run_once_even_when_processes_start_together(empty_postgres_dsn):
    connections = [await asyncpg.connect(empty_postgres_dsn) for _ in range(3)]
    try:
        assert await asyncio.gather(*(schema.migrate(c) for c in connections)) == [schema.LATEST_VERSION] * 3
        assert await connections[0].fetchval("SELECT count(*) FROM schema_migrations") == len(schema.MIGRATIONS)
        await connections[0].execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
        with pytest.raises(schema.SchemaTooNew):
            await schema.migrate(connections[1])
    finally:
        for connection in connections:
            await connection.close()


async def test_a_written_memory_is_projected_with_its_search_words_and_reply_messages(conn):
    [seq] = await append_all(conn, written())
    row = await conn.fetchrow("SELECT * FROM memories WHERE id = $1", seq)
    assert (row["written_seq"], row["user_text"], row["pinned"], row["significance"]) == (
        seq,
        "I'm getting married in June",
        False,
        None,
    )
    # Stemmed, weighted words: what the person said, their name, and the bot's reply.
    assert await conn.fetchval("SELECT search @@ plainto_tsquery('english', 'marry') FROM memories") is True
    assert await conn.fetchval("SELECT search @@ plainto_tsquery('english', 'weddings') FROM memories") is True
    assert await conn.fetch("SELECT message_id, memory_id FROM reply_messages") == [(901, seq)]
    assert await conn.fetchval("SELECT last_seq FROM projection_state") == seq


async def test_scores_failures_and_pins_change_the_memory_they_name(conn):
    [memory] = await append_all(conn, written())
    await append_all(
        conn,
        MemorySignificanceFailed(memory_id=memory, reason="no single number"),
        MemorySignificanceSet(memory_id=memory, score=3, model="m"),
        MemorySignificanceSet(memory_id=memory, score=1, model="m"),  # the first score stands
        MemoryPinChanged(memory, pinned=True, auto=True, reason="pivotal"),
    )
    row = await conn.fetchrow("SELECT significance, scoring_failures, pinned, pin_auto, pinned_by FROM memories")
    assert tuple(row) == (3, 1, True, True, None)
    await append_all(conn, MemoryPinChanged(memory, pinned=True, auto=False, actor_id=12, reason="manual"))
    assert tuple(await conn.fetchrow("SELECT pinned, pin_auto, pinned_by FROM memories")) == (True, False, 12)


async def test_a_forget_removes_the_memory_and_redaction_takes_its_text_out_of_the_log(conn):
    [memory, other] = await append_all(
        conn, written(), written("the quetzal is my favourite bird", reply="Lovely!", reply_ids=(902,))
    )
    await append_all(conn, MemorySignificanceFailed(memory_id=memory, reason="the model said: married in June"))
    async with conn.transaction():
        await append(conn, MemoryForgotten(memory_id=memory, reason="asked"))
        await redact_forgotten(conn, [memory])
    assert [r["id"] for r in await conn.fetch("SELECT id FROM memories")] == [other]
    assert await conn.fetch("SELECT message_id FROM reply_messages") == [(902,)]
    log = " ".join(r["payload"] for r in await conn.fetch("SELECT payload::text FROM events"))
    assert "married" not in log and "Congratulations" not in log and "quetzal" in log
    payload = json.loads(await conn.fetchval("SELECT payload FROM events WHERE seq = $1", memory))
    assert payload["redacted"] is True and payload["user_message_id"] == 501  # ids stay: an import skips it


async def test_the_log_is_append_only_except_for_redaction(conn):
    [seq] = await append_all(conn, written())
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("DELETE FROM events WHERE seq = $1", seq)
    with pytest.raises(asyncpg.RaiseError, match="only redaction"):
        await conn.execute("UPDATE events SET kind = 'memory_forgotten' WHERE seq = $1", seq)
    with pytest.raises(asyncpg.RaiseError, match="only redaction"):
        await conn.execute('UPDATE events SET payload = payload || \'{"user_text": "x"}\' WHERE seq = $1', seq)
    await conn.execute('UPDATE events SET payload = payload || \'{"user_text": "", "redacted": true}\'')
    assert await conn.fetchval("SELECT count(*) FROM events") == 1
