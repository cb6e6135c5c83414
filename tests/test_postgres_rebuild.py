"""Rebuilding the PostgreSQL projections from the log: the live projections again, every column of them.

The histories go through PostgresStore where a test is about what the bot
does, and straight into `events` where it needs a long log fast, an old
payload version, or what the store never writes (a differential check
against applying the events one by one with `eventlog.apply`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
from typing import Any

import asyncpg
import pytest

from storage.commands import TurnRecord
from storage.events import (
    SOURCE_IMPORT,
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceFailed,
    MemorySignificanceSet,
    MemoryWritten,
    decode,
    encode,
)
from storage.postgres.eventlog import append, apply
from storage.postgres.rebuild import projection_rows, rebuild_projections
from storage.postgres.store import PostgresStore
from storage.scope import Scope

BOT = 1000
GUILD = Scope.for_guild(BOT, 10)
OTHER_GUILD = Scope.for_guild(BOT, 20)
DM = Scope.for_dm(BOT, 7)
OTHER_BOT = Scope.for_guild(BOT + 1, 10)
SCOPES = (GUILD, OTHER_GUILD, DM, OTHER_BOT)
CHANNEL = 5
THREAD = 50
ALICE = 7
BOB = 8
PIN_CAP = 2
MODEL = "classifier"
T0 = 1_700_000_000.0
# Tiny batches: every fetch, flush and hold boundary falls somewhere in a short history.
TINY = {"fetch_events": 3, "flush_rows": 2}

_message_ids = itertools.count(10_000)
_seconds = itertools.count(1)


def said(
    text: str,
    scope: Scope = GUILD,
    *,
    channel_id: int = CHANNEL,
    author_id: int = ALICE,
    author_name: str = "Alice",
    reply: str = "noted",
    reply_message_ids: tuple[int, ...] = (),
    drew_on: tuple[int, ...] = (),
    parent_channel_id: int | None = None,
    private_thread: bool = False,
) -> TurnRecord:
    return TurnRecord(
        scope=scope,
        channel_id=channel_id,
        author_id=author_id,
        author_name=author_name,
        bot_name="Mnemo",
        user_text=text,
        reply_text=reply,
        user_message_id=next(_message_ids),
        created_at=T0 + next(_seconds),
        reply_message_ids=reply_message_ids,
        drew_on=drew_on,
        parent_channel_id=parent_channel_id,
        private_thread=private_thread,
    )


def imported(text: str, scope: Scope = GUILD, *, message_id: int | None = None) -> MemoryWritten:
    return MemoryWritten(
        bot_id=scope.bot_id,
        scope_kind=scope.kind,
        scope_id=scope.id,
        channel_id=CHANNEL,
        author_id=BOB,
        author_name="Bob",
        bot_name="Mnemo",
        user_text=text,
        reply_text="ok",
        user_message_id=next(_message_ids) if message_id is None else message_id,
        created_at=T0 + next(_seconds),
        source=SOURCE_IMPORT,
        wants_score=False,
    )


@pytest.fixture
async def store(postgres_dsn):
    opened = await PostgresStore.open(postgres_dsn)
    yield opened
    await opened.close()


async def rows_of(store: PostgresStore) -> dict[str, list[tuple[Any, ...]]]:
    async with store.pool.acquire() as conn:
        return await projection_rows(conn)


async def answers(store: PostgresStore) -> dict[str, Any]:
    """What the bot reads from the projections, for every scope."""
    found: dict[str, Any] = {}
    for scope in SCOPES:
        found[f"{scope} search"] = await store.search(scope, "wedding quetzal Zoë café pizza edited", 20)
        found[f"{scope} list"] = await store.list_memories(scope, limit=100)
        found[f"{scope} pinned"] = await store.list_memories(scope, pinned_only=True, limit=100)
        found[f"{scope} pinned and recent"] = await store.pinned_and_recent(scope, CHANNEL, 5)
        found[f"{scope} count"] = await store.count_memories(scope)
    found["unscored"] = await store.unscored_memory_ids(after_id=0, limit=1000)
    found["counts"] = await store.counts()
    return found


async def make_mixed_history(store: PostgresStore) -> dict[str, int]:
    """Every kind of command the bot runs, in several scopes; the ids a test may look at."""
    g = [
        await store.write_turn(said("I'm getting married in June", reply="Congratulations on the wedding!",
                                    reply_message_ids=(901, 902))),
        await store.write_turn(said("the quetzal is my favourite bird", author_id=BOB, author_name="Bob",
                                    reply_message_ids=(903,))),
        await store.write_turn(said("Zoë opened a café", reply="Lovely, Zoë!", drew_on=(1,))),
        await store.write_turn(said("pizza in the thread", channel_id=THREAD, parent_channel_id=CHANNEL,
                                    reply_message_ids=(904,))),
        await store.write_turn(said("a secret in a private thread", channel_id=THREAD + 1, parent_channel_id=CHANNEL,
                                    private_thread=True)),
        await store.write_turn(said("we moved to Lisbon", reply_message_ids=(905,))),
    ]  # fmt: skip
    other = [await store.write_turn(said(f"other server turn {i} pizza", OTHER_GUILD)) for i in range(3)]
    dm = [await store.write_turn(said(f"just between us {i}, wedding plans", DM, reply_message_ids=(950 + i,)))
          for i in range(3)]  # fmt: skip
    other_bot = await store.write_turn(said("another bot's wedding", OTHER_BOT))
    assert await store.import_memories([imported("imported pizza history"), imported("imported quetzal note")]) == 2
    repeat = imported("imported again", message_id=7_777)
    assert await store.import_memories([repeat, repeat]) == 1

    # Scores: a pivotal one auto-pins, and over the cap the oldest auto-pin goes.
    await store.record_significance(g[0], 3, model=MODEL, pin_cap=PIN_CAP)
    await store.record_significance(g[1], 3, model=MODEL, pin_cap=PIN_CAP)
    evicting = await store.record_significance(g[2], 3, model=MODEL, pin_cap=PIN_CAP)
    assert evicting.pinned and evicting.unpinned == (g[0],)
    await store.record_significance(g[3], 1, model=MODEL, pin_cap=PIN_CAP)
    await store.record_significance(dm[0], 3, model=MODEL, pin_cap=PIN_CAP)
    await store.record_significance(other[0], 0, model=MODEL, pin_cap=PIN_CAP)
    assert await store.record_scoring_failure(g[4], "no single number", "refused")
    assert await store.record_scoring_failure(other[1], "garbage")

    # By hand: a pin (pushing an auto-pin out), an unpin, forgets, and an edit of a pinned memory.
    await store.pin(GUILD, g[5], actor_id=ALICE, pin_cap=PIN_CAP)
    await store.pin(OTHER_GUILD, other[2], actor_id=BOB, pin_cap=PIN_CAP)
    await store.unpin(OTHER_GUILD, other[2], actor_id=BOB)
    await store.pin(DM, dm[1], actor_id=ALICE, pin_cap=PIN_CAP)
    await store.forget(GUILD, g[1], actor_id=BOB)
    assert await store.forget_many(DM, [dm[2], 999_999], actor_id=None, reason="deleted in Discord") == [dm[2]]
    edited = await store.rewrite(GUILD, g[5], "we moved to Porto (edited)", reason="edited in Discord")
    await store.record_significance(edited, 2, model=MODEL, pin_cap=PIN_CAP)
    await store.write_turn(said("and one more about the wedding", drew_on=(g[0], edited)))
    return {"forgotten": g[1], "edited_from": g[5], "edited": edited, "other_bot": other_bot}


async def test_a_rebuild_gives_the_live_projections_and_the_same_answers(store):
    ids = await make_mixed_history(store)
    live = await rows_of(store)
    read = await answers(store)
    assert any(row[0] == ids["edited"] for row in live["memories"])
    assert (905, ids["edited"]) in live["reply_messages"], "the edit took over the reply's message"

    report = await rebuild_projections(store.pool)
    async with store.pool.acquire() as conn:
        assert (report.events, report.last_seq) == tuple(await conn.fetchrow("SELECT count(*), max(seq) FROM events"))
    assert await rows_of(store) == live
    assert await answers(store) == read

    # Projections gone wrong (a lost row, a changed column, a stray message) come back as the log says.
    async with store.pool.acquire() as conn:
        await conn.execute("DELETE FROM memories WHERE id = $1", ids["other_bot"])
        await conn.execute("UPDATE memories SET significance = 0, pinned = NOT pinned")
        await conn.execute("INSERT INTO reply_messages VALUES (12345, 1)")
        await conn.execute("UPDATE projection_state SET last_seq = 1")
        await rebuild_projections(conn, **TINY)
    assert await rows_of(store) == live
    assert await answers(store) == read


async def test_a_forgotten_memory_stays_gone_after_a_rebuild(store):
    kept = await store.write_turn(said("the quetzal is my favourite bird"))
    turn = said("my passport number is 12345", reply="I'll keep it safe", reply_message_ids=(777,))
    gone = await store.write_turn(turn)
    await store.record_scoring_failure(gone, "the model quoted: passport number is 12345")
    await store.forget(GUILD, gone, actor_id=ALICE)

    await rebuild_projections(store.pool)
    assert await store.get_memory(GUILD, gone) is None
    assert await store.memories_of_messages(BOT, [turn.user_message_id, 777]) == []
    assert await store.search(GUILD, "passport", 10) == []
    assert await store.memory_ids(GUILD) == [kept]
    async with store.pool.acquire() as conn:
        payload = json.loads(await conn.fetchval("SELECT payload FROM events WHERE seq = $1", gone))
    assert payload["redacted"] is True and payload["user_text"] == ""  # its event is still in the log, textless
    # And importing the message again still finds it forgotten.
    again = dataclasses.replace(imported("my passport number is 12345"), user_message_id=turn.user_message_id)
    assert await store.import_memories([again]) == 0


async def test_appends_wait_for_a_rebuild_while_reads_go_on_and_none_is_lost(store):
    async with store.pool.acquire() as conn:
        await insert_events(conn, random_log(4_000, seed=3))
        await rebuild_projections(conn)
        before = await conn.fetchval("SELECT count(*) FROM events WHERE kind = 'memory_written'")
        projected = await conn.fetchval("SELECT count(*) FROM memories")
    rebuilding = asyncio.create_task(rebuild_projections(store.pool))
    written: list[int] = []

    async def keep_writing() -> None:
        while not rebuilding.done():
            written.append(await store.write_turn(said(f"written during the rebuild {len(written)}")))
        for i in range(3):
            written.append(await store.write_turn(said(f"written after the rebuild {i}")))

    async def watch() -> tuple[int, int | None]:
        """The most appends seen waiting on the log's lock at once, and the fewest memories a read
        found while the rebuild ran (the old projections stay readable)."""
        most_waiting, fewest_read = 0, None
        async with store.pool.acquire() as watcher:
            while not rebuilding.done():
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'events'::regclass AND NOT granted"
                )
                read = await watcher.fetchval("SELECT count(*) FROM memories")
                if not rebuilding.done():
                    most_waiting = max(most_waiting, waiting)
                    fewest_read = read if fewest_read is None else min(fewest_read, read)
                await asyncio.sleep(0.005)
        return most_waiting, fewest_read

    _, (most_waiting, fewest_read), _ = await asyncio.gather(rebuilding, watch(), keep_writing())
    assert most_waiting >= 1, "no append ever waited for the rebuild"
    assert fewest_read is not None and fewest_read >= projected, "reads during the rebuild did not see the old rows"
    assert len(written) > 3
    live = await rows_of(store)
    memory_ids = {row[0] for row in live["memories"]}
    assert set(written) <= memory_ids, "a turn written during the rebuild is missing"
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE kind = 'memory_written'") == before + len(written)
        assert live["projection_state"] == [("memories", await conn.fetchval("SELECT max(seq) FROM events"))]
        await rebuild_projections(conn)
    assert await rows_of(store) == live


async def test_an_older_stored_version_rebuilds_to_the_current_shape(store):
    base = {
        "bot_id": BOT, "scope_kind": "guild", "scope_id": GUILD.id, "channel_id": CHANNEL, "author_id": ALICE,
        "author_name": "alice", "bot_name": "Mnemo", "user_text": "the quetzal sings", "reply_text": "hello",
        "user_message_id": 99, "created_at": 1.5, "redacted": False,
    }  # fmt: skip
    v2_first = {**base, "source": "chat", "wants_score": True}
    v2_later = {**v2_first, "reply_message_ids": [12], "drew_on": [3]}  # what version 2 grew to hold
    stored = [(1, base), (2, v2_first), (2, v2_later)]
    async with store.pool.acquire() as conn:
        old = [
            await conn.fetchval(
                "INSERT INTO events (kind, version, payload, recorded_at) VALUES ('memory_written', $1, $2::jsonb, 0)"
                " RETURNING seq",
                version,
                json.dumps(payload),
            )
            for version, payload in stored
        ]
        # The same memories written as the current version, listing no messages so the old ones keep theirs.
        async with conn.transaction():
            current = []
            for version, payload in stored:
                event = decode("memory_written", version, json.dumps(payload))
                current.append(await append(conn, dataclasses.replace(event, reply_message_ids=())))
        await rebuild_projections(conn)
        found = await conn.fetch("SELECT id, to_jsonb(m) - 'search' AS row, search::text AS words FROM memories AS m")
        rows = {row["id"]: {**json.loads(row["row"]), "words": row["words"]} for row in found}
        assert await conn.fetch("SELECT message_id, memory_id FROM reply_messages") == [(12, old[2])]

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in row.items() if key not in ("id", "written_seq", "reply_message_ids")}

    for old_id, current_id in zip(old, current, strict=True):
        assert shape(rows[old_id]) == shape(rows[current_id])
    first = rows[old[0]]
    assert (first["source"], first["wants_score"], first["reply_message_ids"]) == ("chat", True, [])
    assert (first["drew_on"], first["parent_channel_id"], first["private_thread"]) == ([], None, False)
    assert (rows[old[2]]["reply_message_ids"], rows[old[2]]["drew_on"]) == ([12], [3])
    assert "'hello':" in first["words"]
    assert {hit.memory.id for hit in await store.search(GUILD, "quetzal", 10)} == {*old, *current}


@pytest.mark.parametrize("sizes", [{}, TINY, {"fetch_events": 50, "flush_rows": 17}], ids=["default", "tiny", "odd"])
async def test_a_batched_rebuild_equals_applying_the_log_event_by_event(store, sizes):
    # Also what the store never writes: memories sharing message ids, forgets left unredacted,
    # events naming a memory written later.
    async with store.pool.acquire() as conn:
        await insert_events(conn, random_log(1_500, seed=11, adversarial=True))
        await fold_one_by_one(conn)
        expected = await projection_rows(conn)
        assert len(expected["memories"]) > 100 and len(expected["reply_messages"]) > 50
        await rebuild_projections(conn, **sizes)
        assert await projection_rows(conn) == expected


# A log written straight into `events`.

WORDS = "the quick brown fox wedding married june cat biscuit garden pizza music café naïve Zoë running runs".split()


def random_log(n: int, *, seed: int, adversarial: bool = False) -> list[tuple[str, int, dict[str, Any]]]:
    """(kind, version, payload) of a random history of `n` events.

    As the store writes it, a forgotten memory's memory_written is redacted;
    `adversarial` adds what it never writes.
    """
    rng = random.Random(seed)
    log: list[tuple[str, int, dict[str, Any]]] = []
    live: list[int] = []

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))

    while len(log) < n:
        seq = len(log) + 1
        roll = rng.random()
        event: Any
        if roll < 0.45 or not live:
            shared = tuple(rng.randint(1, 200) for _ in range(rng.randint(0, 2)))
            event = MemoryWritten(
                BOT, rng.choice(["guild", "dm"]), rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 20),
                rng.choice(["Alice", "Bob", "Zoë"]), "Mnemo", text(), text(), 10_000 + seq, T0 + seq,
                wants_score=rng.random() < 0.9,
                reply_message_ids=shared if adversarial else (900_000 + seq,),
                drew_on=tuple(rng.sample(live, min(len(live), rng.randint(0, 2)))),
                parent_channel_id=rng.choice([None, CHANNEL]), private_thread=rng.random() < 0.1,
            )  # fmt: skip
            live.append(seq)
        else:
            target = rng.choice(live[-40:])
            if adversarial and rng.random() < 0.05:
                target = seq + rng.randint(1, 5)
            if roll < 0.78:
                event = MemorySignificanceSet(target, rng.randint(0, 3), MODEL)
            elif roll < 0.84:
                event = MemorySignificanceFailed(target, "no number")
            elif roll < 0.93:
                pinned, auto = rng.random() < 0.6, rng.random() < 0.5
                event = MemoryPinChanged(target, pinned=pinned, auto=auto, actor_id=None if auto else ALICE)
            else:
                event = MemoryForgotten(target, actor_id=ALICE)
                if target in live:
                    live.remove(target)
                    if not adversarial or rng.random() < 0.5:
                        kind, version, payload = log[target - 1]
                        redacted = {**payload, "author_name": "", "bot_name": "", "user_text": "", "reply_text": ""}
                        log[target - 1] = (kind, version, {**redacted, "redacted": True})
        kind, version, payload = encode(event)
        log.append((kind, version, json.loads(payload)))
    return log


async def insert_events(conn: asyncpg.Connection, log: list[tuple[str, int, dict[str, Any]]]) -> None:
    await conn.executemany(
        "INSERT INTO events (kind, version, payload, recorded_at) VALUES ($1, $2, $3::jsonb, 0)",
        [(kind, version, json.dumps(payload)) for kind, version, payload in log],
    )


async def fold_one_by_one(conn: asyncpg.Connection) -> None:
    """The projections of the whole log, each event through `eventlog.apply`: what a rebuild must give."""
    async with conn.transaction():
        await conn.execute("DELETE FROM reply_messages")
        await conn.execute("DELETE FROM memories")
        events = await conn.fetch("SELECT seq, kind, version, payload FROM events ORDER BY seq")
        for seq, kind, version, payload in events:
            await apply(conn, seq, decode(kind, version, payload))
        await conn.execute("UPDATE projection_state SET last_seq = $1", events[-1]["seq"])
