import asyncio
import json
from dataclasses import replace

import pytest

from storage import events as events_module
from storage import memories, search, sqlite
from storage.commands import (
    MemoryNotFound,
    TurnRecord,
    forget_memory,
    pin_memory,
    record_scoring_failure,
    record_significance,
    unpin_memory,
    write_memory,
)
from storage.eventlog import append, read_events
from storage.events import (
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceSet,
    MemoryWritten,
    decode,
    encode,
)
from storage.schema import LATEST_VERSION, SchemaTooNew, migrate
from storage.scope import Scope
from tests.projection_check import live_and_rebuilt

BOT = 1000
GUILD_A = Scope.for_guild(BOT, 10)
GUILD_B = Scope.for_guild(BOT, 20)
DM_ALICE = Scope.for_dm(BOT, 7)


def turn(scope: Scope, text: str, *, channel_id: int = 5, author_id: int = 7, reply: str = "noted") -> TurnRecord:
    return TurnRecord(scope, channel_id, author_id, "alice", "Mnemo", text, reply, user_message_id=99)


async def kinds(db) -> list[str]:
    return [recorded.event.KIND async for recorded in read_events(db.reader)]


async def test_writing_a_memory_appends_one_event_and_one_row(db):
    memory_id = await write_memory(db, turn(GUILD_A, "I adopted a cat named Biscuit"))
    assert await kinds(db) == ["memory_written"]
    memory = await memories.get_memory(db.reader, GUILD_A, memory_id)
    assert memory is not None
    assert memory.text == "alice said: I adopted a cat named Biscuit\nMnemo replied: noted"
    assert memory.significance is None and not memory.pinned


async def test_event_payload_round_trips_with_unicode():
    event = MemoryWritten(BOT, "guild", 10, 5, 7, "ålice 🦊", "Mnemo", "zero\u200bwidth ‮rtl", "ok", None, 1.5)
    kind, version, payload = encode(event)
    assert "🦊" in payload
    assert decode(kind, version, payload) == event


def test_old_payload_versions_are_upcast(monkeypatch):
    monkeypatch.setattr(MemoryForgotten, "VERSION", 2)

    def v1_to_v2(data):
        return {**data, "actor_id": data.get("actor_id") or 0}

    monkeypatch.setitem(events_module.UPCASTERS, ("memory_forgotten", 1), v1_to_v2)
    assert decode("memory_forgotten", 1, '{"memory_id": 4, "actor_id": null}') == MemoryForgotten(4, 0)
    with pytest.raises(events_module.UnknownEvent):
        decode("memory_forgotten", 3, '{"memory_id": 4}')
    with pytest.raises(events_module.UnknownEvent):
        decode("memory_teleported", 1, "{}")


def test_every_stored_version_of_a_written_memory_reads_as_the_current_one():
    base = {
        "bot_id": BOT, "scope_kind": "guild", "scope_id": 10, "channel_id": 5, "author_id": 7,
        "author_name": "alice", "bot_name": "Mnemo", "user_text": "hi", "reply_text": "hello",
        "user_message_id": 99, "created_at": 1.5, "redacted": False,
    }  # fmt: skip
    expected = MemoryWritten(BOT, "guild", 10, 5, 7, "alice", "Mnemo", "hi", "hello", 99, 1.5)
    v2_first = {**base, "source": "chat", "wants_score": True}
    v2_later = {**v2_first, "reply_message_ids": [12], "drew_on": [3]}  # what version 2 grew to hold
    assert decode("memory_written", 1, json.dumps(base)) == expected
    assert decode("memory_written", 2, json.dumps(v2_first)) == expected
    assert decode("memory_written", 2, json.dumps(v2_later)) == replace(expected, reply_message_ids=(12,), drew_on=(3,))


async def test_failed_transaction_leaves_neither_event_nor_row(db):
    def crash(conn):
        append(conn, MemoryWritten(BOT, "guild", 10, 5, 7, "a", "b", "c", "d", None, 1.0))
        raise RuntimeError("crash between append and commit")

    with pytest.raises(RuntimeError):
        await db.write(crash)
    assert await kinds(db) == []
    assert await memories.count_memories(db.reader, GUILD_A) == 0


async def test_event_log_refuses_deletes_and_edits(db):
    memory_id = await write_memory(db, turn(GUILD_A, "keep me"))
    with pytest.raises(sqlite.IntegrityError, match="append-only"):
        await db.writer.execute("DELETE FROM events")
    with pytest.raises(sqlite.IntegrityError, match="append-only"):
        await db.writer.execute("UPDATE events SET payload = '{}' WHERE seq = ?", (memory_id,))
    with pytest.raises(sqlite.IntegrityError, match="append-only"):
        await db.writer.execute("UPDATE events SET kind = 'x' WHERE seq = ?", (memory_id,))


async def test_newer_schema_is_refused(tmp_path):
    conn = sqlite.connect(tmp_path / "new.db")
    migrate(conn)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", (LATEST_VERSION + 1,))
    with pytest.raises(SchemaTooNew):
        migrate(conn)
    conn.close()


async def test_migration_is_idempotent(tmp_path):
    conn = sqlite.connect(tmp_path / "m.db")
    assert migrate(conn) == LATEST_VERSION
    assert migrate(conn) == LATEST_VERSION
    conn.close()


async def test_reads_never_cross_scopes(db):
    a = await write_memory(db, turn(GUILD_A, "the launch code is pineapple"))
    await write_memory(db, turn(GUILD_B, "pineapple pizza debate"))
    await write_memory(db, turn(DM_ALICE, "my secret pineapple stash"))
    other_bot = Scope.for_guild(BOT + 1, 10)

    assert await memories.get_memory(db.reader, GUILD_B, a) is None
    assert await memories.get_memory(db.reader, other_bot, a) is None
    for scope in (GUILD_A, GUILD_B, DM_ALICE):
        found = await search.search(db.reader, scope, "pineapple", 10)
        assert [r.memory.scope for r in found] == [scope]
        listed = await memories.list_memories(db.reader, scope)
        assert [m.scope for m in listed] == [scope]
    assert await search.search(db.reader, other_bot, "pineapple", 10) == []


@pytest.mark.parametrize(
    "query",
    ['"unbalanced', "NEAR(a b)", "a AND OR NOT", "col:thing", "*", "^start", "-minus", "(((", "💥 ☃ 中文"],
)
async def test_search_treats_fts_syntax_as_plain_words(db, query):
    await write_memory(db, turn(GUILD_A, "thing start minus 中文 unbalanced"))
    results = await search.search(db.reader, GUILD_A, query, 5)
    assert all(r.memory.scope == GUILD_A for r in results)


async def test_search_ranks_the_better_match_first(db):
    await write_memory(db, turn(GUILD_A, "we talked about the weather"))
    best = await write_memory(db, turn(GUILD_A, "my sister Maria is getting married to Tomas in June"))
    await write_memory(db, turn(GUILD_A, "June is hot"))
    results = await search.search(db.reader, GUILD_A, "When is Maria's wedding with Tomas?", 5)
    assert results[0].memory.id == best


async def test_scoring_is_recorded_once(db):
    memory_id = await write_memory(db, turn(GUILD_A, "hello"))
    first = await record_significance(db, memory_id, 1, model="m", pin_cap=8)
    second = await record_significance(db, memory_id, 2, model="m", pin_cap=8)
    assert first.recorded and not second.recorded
    assert (await memories.get_memory(db.reader, GUILD_A, memory_id)).significance == 1
    assert await kinds(db) == ["memory_written", "memory_significance_set"]


async def test_scoring_failure_never_invents_a_score(db):
    memory_id = await write_memory(db, turn(GUILD_A, "hello"))
    assert await record_scoring_failure(db, memory_id, "garbage answer")
    memory = await memories.get_memory(db.reader, GUILD_A, memory_id)
    assert memory.significance is None and memory.scoring_failures == 1


async def test_pivotal_score_pins_and_the_oldest_auto_pin_yields(db):
    ids = [await write_memory(db, turn(GUILD_A, f"milestone {i}", author_id=i)) for i in range(10)]
    for memory_id in ids:
        await record_significance(db, memory_id, 3, model="m", pin_cap=8)
    pinned = await memories.pinned_memories(db.reader, GUILD_A)
    assert [m.id for m in pinned] == ids[2:]
    assert all(m.pin_auto for m in pinned)


async def test_auto_pins_keep_the_newest_whatever_the_scoring_order(db):
    ids = [await write_memory(db, turn(GUILD_A, f"milestone {i}", author_id=i)) for i in range(10)]
    for memory_id in reversed(ids):
        await record_significance(db, memory_id, 3, model="m", pin_cap=8)
    assert [m.id for m in await memories.pinned_memories(db.reader, GUILD_A)] == ids[2:]


async def test_manual_pins_are_never_evicted_and_new_auto_pin_yields_when_they_fill_the_cap(db):
    ids = [await write_memory(db, turn(GUILD_A, f"note {i}", author_id=i)) for i in range(12)]
    manual = ids[:3]
    for memory_id in manual:
        await pin_memory(db, GUILD_A, memory_id, actor_id=7, pin_cap=3)
    outcome = await record_significance(db, ids[5], 3, model="m", pin_cap=3)
    assert not outcome.pinned
    assert [m.id for m in await memories.pinned_memories(db.reader, GUILD_A)] == manual

    # With room, autos come and go around the manual pins.
    for memory_id in ids[6:]:
        await record_significance(db, memory_id, 3, model="m", pin_cap=5)
    pinned = await memories.pinned_memories(db.reader, GUILD_A)
    assert [m.id for m in pinned] == [*manual, *ids[-2:]]


async def test_manual_pin_over_the_cap_pushes_out_the_oldest_auto_pin(db):
    ids = [await write_memory(db, turn(GUILD_A, f"note {i}", author_id=i)) for i in range(4)]
    await record_significance(db, ids[0], 3, model="m", pin_cap=2)
    await record_significance(db, ids[1], 3, model="m", pin_cap=2)
    outcome = await pin_memory(db, GUILD_A, ids[3], actor_id=7, pin_cap=2)
    assert outcome.unpinned == (ids[0],)
    assert [m.id for m in await memories.pinned_memories(db.reader, GUILD_A)] == [ids[1], ids[3]]


async def test_one_authors_pivotal_turns_hold_at_most_half_the_auto_pins(db):
    others = [await write_memory(db, turn(GUILD_A, f"someone's news {i}", author_id=100 + i)) for i in range(4)]
    mine = [await write_memory(db, turn(GUILD_A, f"my news {i}", author_id=7)) for i in range(6)]
    for memory_id in others + mine[1:]:
        await record_significance(db, memory_id, 3, model="m", pin_cap=8)
    pinned = [m.id for m in await memories.pinned_memories(db.reader, GUILD_A)]
    # The author's own oldest auto-pin yielded to their newer ones; nobody else's did.
    assert pinned == [*others, *mine[2:]]
    # Their oldest turn, scored late, does not push out any of their newer pins.
    outcome = await record_significance(db, mine[0], 3, model="m", pin_cap=8)
    assert outcome.recorded and not outcome.pinned and outcome.unpinned == ()
    assert [m.id for m in await memories.pinned_memories(db.reader, GUILD_A)] == pinned


async def test_pins_are_per_scope(db):
    a = [await write_memory(db, turn(GUILD_A, f"a {i}", author_id=i)) for i in range(3)]
    b = [await write_memory(db, turn(GUILD_B, f"b {i}", author_id=i)) for i in range(3)]
    for memory_id in a + b:
        await record_significance(db, memory_id, 3, model="m", pin_cap=2)
    assert [m.id for m in await memories.pinned_memories(db.reader, GUILD_A)] == a[1:]
    assert [m.id for m in await memories.pinned_memories(db.reader, GUILD_B)] == b[1:]


async def test_commands_refuse_other_scopes_memories(db):
    memory_id = await write_memory(db, turn(GUILD_A, "private"))
    with pytest.raises(MemoryNotFound):
        await pin_memory(db, GUILD_B, memory_id, actor_id=1, pin_cap=8)
    with pytest.raises(MemoryNotFound):
        await unpin_memory(db, GUILD_B, memory_id, actor_id=1)
    with pytest.raises(MemoryNotFound):
        await forget_memory(db, GUILD_B, memory_id, actor_id=1)
    assert await kinds(db) == ["memory_written"]


async def test_forget_redacts_the_event_and_removes_the_row(db):
    memory_id = await write_memory(db, turn(GUILD_A, "my password hint is zanzibarwombat"))
    await record_significance(db, memory_id, 3, model="m", pin_cap=8)
    await forget_memory(db, GUILD_A, memory_id, actor_id=7)
    assert await memories.get_memory(db.reader, GUILD_A, memory_id) is None
    assert await search.search(db.reader, GUILD_A, "zanzibarwombat", 5) == []
    async with db.reader.execute("SELECT kind, payload FROM events WHERE seq = ?", (memory_id,)) as cursor:
        kind, payload = await cursor.fetchone()
    assert kind == "memory_written"
    assert json.loads(payload)["redacted"] is True
    assert "zanzibarwombat" not in payload
    with pytest.raises(MemoryNotFound):
        await forget_memory(db, GUILD_A, memory_id, actor_id=7)


async def test_forget_redacts_the_reasons_of_the_memorys_scoring_failures(db):
    memory_id = await write_memory(db, turn(GUILD_A, "my pin is quetzalwobble"))
    other = await write_memory(db, turn(GUILD_A, "something else"))
    # As an older version recorded them: a provider's error quoting the text.
    for memory in (memory_id, memory_id, other):
        await record_scoring_failure(db, memory, f"classifier refused: bad request: {memory} quetzalwobble")
    await forget_memory(db, GUILD_A, memory_id, actor_id=7)
    async with db.reader.execute(
        "SELECT json_extract(payload, '$.memory_id'), json_extract(payload, '$.reason'),"
        " json_extract(payload, '$.redacted') FROM events WHERE kind = 'memory_significance_failed' ORDER BY seq"
    ) as cursor:
        rows = await cursor.fetchall()
    assert rows == [
        (memory_id, "", 1),
        (memory_id, "", 1),
        (other, f"classifier refused: bad request: {other} quetzalwobble", 0),
    ]
    # The redacted events still read back as events.
    assert [type(r.event).__name__ for r in [e async for e in read_events(db.reader)]].count(
        "MemorySignificanceFailed"
    ) == 3


async def test_forgotten_words_leave_no_byte_in_the_checkpointed_file(db):
    for i in range(300):
        await write_memory(db, turn(GUILD_A, f"filler memory number {i} about gardening"))
    memory_id = await write_memory(db, turn(GUILD_A, "quixotic flamingo", reply="xylophonic answer"))
    for i in range(50):
        await write_memory(db, turn(GUILD_A, f"later memory {i}"))
    await forget_memory(db, GUILD_A, memory_id, actor_id=7)
    await db.checkpoint()
    data = db.path.read_bytes()
    for word in (b"quixotic", b"flamingo", b"xylophonic"):
        assert word not in data
    assert b"gardening" in data


async def test_rebuild_equals_live_projections_after_mixed_history(db, tmp_path):
    ids = []
    for i in range(30):
        scope = (GUILD_A, GUILD_B, DM_ALICE)[i % 3]
        ids.append(await write_memory(db, turn(scope, f"event {i} with words like harbour{i}")))
    for i, memory_id in enumerate(ids):
        if i % 4 == 0:
            await record_scoring_failure(db, memory_id, "garbage")
        await record_significance(db, memory_id, 3 if i % 2 else i % 3, model="m", pin_cap=3)
    await pin_memory(db, GUILD_A, ids[0], actor_id=7, pin_cap=3)
    await unpin_memory(db, GUILD_A, ids[0], actor_id=7)
    await pin_memory(db, GUILD_B, ids[1], actor_id=7, pin_cap=3)
    await forget_memory(db, GUILD_A, ids[3], actor_id=7)
    await forget_memory(db, GUILD_B, ids[1], actor_id=7)

    live, rebuilt = live_and_rebuilt(db.path, tmp_path)
    assert live == rebuilt
    assert len(live["memories"]) == 28
    assert live["last_seq"] > 30


async def test_append_records_event_kinds_in_order(db):
    memory_id = await write_memory(db, turn(GUILD_A, "x"))
    await record_significance(db, memory_id, 3, model="m", pin_cap=8)
    await unpin_memory(db, GUILD_A, memory_id, actor_id=7)
    await forget_memory(db, GUILD_A, memory_id, actor_id=7)
    recorded = [r.event async for r in read_events(db.reader)]
    assert [type(e) for e in recorded] == [
        MemoryWritten,
        MemorySignificanceSet,
        MemoryPinChanged,
        MemoryPinChanged,
        MemoryForgotten,
    ]
    assert recorded[2] == MemoryPinChanged(memory_id, pinned=True, auto=True, reason="pivotal")


async def test_search_ignores_case_and_accents(db):
    memory_id = await write_memory(db, turn(GUILD_A, "Wir trafen uns im Café Größenwahn"))
    for query in ("cafe", "CAFÉ", "grossenwahn", "größenwahn"):
        found = await search.search(db.reader, GUILD_A, query, 5)
        assert [r.memory.id for r in found] == [memory_id]


async def test_index_terms_of_one_scope_cannot_match_another(db):
    await write_memory(db, turn(GUILD_B, "kumquat"))
    # Even typing another scope's raw index term finds nothing here.
    raw_term = f"{GUILD_B.token}kumquat"
    assert await search.search(db.reader, GUILD_A, raw_term, 5) == []
    assert await search.search(db.reader, GUILD_A, "kumquat", 5) == []
    assert len(await search.search(db.reader, GUILD_B, "kumquat", 5)) == 1


def test_query_terms_drop_filler_and_keep_stemmed_content_words():
    assert search.query_terms("Hey, what do you think about my new Telescopes?") == ["new", "telescop"]


@pytest.mark.parametrize("steps", range(5))
async def test_a_write_cancelled_while_it_begins_leaves_the_writer_usable(db, steps):
    """Shutdown and restores cancel scoring jobs wherever they are, even inside BEGIN."""

    async def touch() -> None:
        await db.write(lambda conn: conn.execute("SELECT 1").fetchall())

    for _ in range(3):
        task = asyncio.create_task(touch())
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await write_memory(db, turn(GUILD_A, "still writable"))
        await touch()
    assert not db.writer.in_transaction


async def test_a_failed_commit_leaves_no_transaction_open(db, monkeypatch):
    original = db.writer.run
    failures = iter([sqlite.OperationalError("disk I/O error")])

    class FailingCommit:
        """The writer's connection, but its first COMMIT fails."""

        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if sql == "COMMIT" and (error := next(failures, None)):
                raise error
            return self.conn.execute(sql, *args)

    monkeypatch.setattr(db.writer, "run", lambda work: original(lambda conn: work(FailingCommit(conn))))
    with pytest.raises(sqlite.OperationalError):
        await db.write(lambda conn: conn.execute("SELECT 1").fetchall())
    assert not db.writer.in_transaction
    await write_memory(db, turn(GUILD_A, "next write works"))
