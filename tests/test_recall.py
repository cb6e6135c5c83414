"""Recall over the whole history of a scope: what it finds, what it brings along, and what it never crosses."""

import itertools

import pytest

from companion import recall
from storage import search
from storage.commands import TurnRecord, forget_memory, import_memories, write_memory
from storage.events import MemoryWritten
from storage.scope import Scope
from storage.sqlite_store import SQLiteStore
from storage.visibility import ChannelFilter

BOT = 1000
GUILD = Scope.for_guild(BOT, 10)
OTHER_GUILD = Scope.for_guild(BOT, 20)
DM = Scope.for_dm(BOT, 7)
CHANNEL = 5
T0 = 1_700_000_000.0
_message_ids = itertools.count(10_000)


def turn(scope, text, *, reply="ok", author="Alice", author_id=7, channel=CHANNEL, at=T0):
    return MemoryWritten(
        bot_id=scope.bot_id,
        scope_kind=scope.kind,
        scope_id=scope.id,
        channel_id=channel,
        author_id=author_id,
        author_name=author,
        bot_name="Mnemo",
        user_text=text,
        reply_text=reply,
        user_message_id=next(_message_ids),
        created_at=at,
    )


async def remember_all(db, turns):
    """Write many turns at once, oldest first (as an import does)."""
    for start in range(0, len(turns), 2000):
        await import_memories(db, turns[start : start + 2000])


async def ids_recalled(db, scope, text, limit=10, **kwargs):
    return [r.memory.id for r in await recall.recall(SQLiteStore(db), scope, text, limit=limit, **kwargs)]


async def memory_id_of(db, message_id):
    async with db.reader.execute("SELECT id FROM memories WHERE user_message_id = ?", (message_id,)) as cursor:
        (memory_id,) = await cursor.fetchone()
    return memory_id


async def test_a_fact_said_once_is_recalled_under_5000_newer_memories_sharing_its_words(db):
    fact = turn(GUILD, "my sister's wedding is in Porto on the 12th, we're driving down", at=T0)
    chatter = [
        turn(
            GUILD,
            f"wedding season again, so many weddings this year, driving everywhere {i}",
            author=("Bob", "Carol", "Dan")[i % 3],
            author_id=20 + i % 3,
            at=T0 + 3600 * (i + 1),
        )
        for i in range(5000)
    ]
    await remember_all(db, [fact, *chatter])
    fact_id = await memory_id_of(db, fact.user_message_id)
    found = await ids_recalled(db, GUILD, "when is Alice's sister's wedding in Porto?", now=T0 + 3600 * 6000)
    assert found[0] == fact_id


async def test_in_a_dm_where_every_memory_names_both_people_a_question_naming_both_finds_its_topic(db):
    turns = [
        turn(DM, f"Mnemo, Mira here again, just chatting about my day number {i}", author="Mira", reply=f"Hi Mira! {i}")
        for i in range(300)
    ]
    topic = turn(DM, "Mnemo, Mira here: I finally repotted the monstera", author="Mira", reply="Nice work, Mira!")
    turns.insert(137, topic)
    await remember_all(db, turns)
    topic_id = await memory_id_of(db, topic.user_message_id)
    found = await ids_recalled(db, DM, "Mnemo, it's Mira: what did I do with my monstera?")
    assert found[0] == topic_id


async def test_stemming_finds_other_forms_of_a_word(db):
    await remember_all(db, [turn(GUILD, "we adopted two kittens from the shelter")])
    assert len(await ids_recalled(db, GUILD, "adopting a kitten?")) == 1


async def test_the_turn_after_a_hit_that_asked_comes_along_right_after_it(db):
    question = turn(GUILD, "Bob, how was your first pottery class?", reply="Ooh, tell us!", at=T0)
    answer = turn(GUILD, "so fun! I made a wonky little bowl", author="Bob", author_id=8, at=T0 + 60)
    elsewhere = turn(GUILD, "a wonky bowl of soup", channel=CHANNEL + 1, at=T0 + 30)
    await remember_all(db, [question, elsewhere, answer])
    question_id, answer_id = (
        await memory_id_of(db, question.user_message_id),
        await memory_id_of(db, answer.user_message_id),
    )
    found = await recall.recall(SQLiteStore(db), GUILD, "what did Bob make in pottery class?", limit=5)
    assert [r.memory.id for r in found[:2]] == [question_id, answer_id]
    assert found[1].follows == question_id
    # /memory search lists the matches themselves, without the turns that follow them.
    plain = await recall.recall(
        SQLiteStore(db), GUILD, "what did Bob make in pottery class?", limit=5, follow_ups=False
    )
    assert plain[0].memory.id == question_id and all(r.follows is None for r in plain)


async def test_memories_already_in_the_prompt_leave_their_slot_to_the_next_best(db):
    await remember_all(db, [turn(GUILD, f"tulip bulbs, batch {i}") for i in range(5)])
    everything = await ids_recalled(db, GUILD, "tulip bulbs", limit=5)
    shown = set(everything[:2])
    rest = await ids_recalled(db, GUILD, "tulip bulbs", limit=3, exclude=shown)
    assert rest == everything[2:5]


async def test_recall_never_crosses_scopes(db):
    await remember_all(
        db,
        [
            turn(GUILD, "the launch code is pineapple"),
            turn(OTHER_GUILD, "pineapple pizza debate"),
            turn(DM, "my secret pineapple stash"),
            turn(Scope.for_guild(BOT + 1, 10), "another bot's pineapple"),
        ],
    )
    for scope in (GUILD, OTHER_GUILD, DM):
        found = await recall.recall(SQLiteStore(db), scope, "pineapple", limit=10)
        assert [r.memory.scope for r in found] == [scope]
    # Even another scope's raw index term finds nothing here.
    assert await ids_recalled(db, GUILD, f"{OTHER_GUILD.token}pineappl") == []


async def test_a_channel_filter_sets_others_aside_before_they_can_crowd_out_the_channels_own(db):
    # More matches elsewhere than the shortlist holds, all better (shorter, newer) than the one here.
    elsewhere = [turn(GUILD, f"tea tea {i}", channel=CHANNEL + 1, at=T0 + i + 1) for i in range(search.SHORTLIST * 2)]
    here = turn(GUILD, "we talked about green tea and biscuits and the weather at length", channel=CHANNEL, at=T0)
    await remember_all(db, [here, *elsewhere])
    here_id = await memory_id_of(db, here.user_message_id)
    only_here = ChannelFilter(channels=frozenset({CHANNEL}))
    assert await ids_recalled(db, GUILD, "tea", channel_filter=only_here) == [here_id]
    assert here_id not in await ids_recalled(db, GUILD, "tea")


async def test_forgotten_memories_are_not_recalled_and_leave_the_scope_statistics(db):
    memory_id = await write_memory(db, TurnRecord(GUILD, CHANNEL, 7, "Alice", "Mnemo", "zanzibar trip", "fun!"))
    await write_memory(db, TurnRecord(GUILD, CHANNEL, 7, "Alice", "Mnemo", "something else", "ok"))
    await forget_memory(db, GUILD, memory_id, actor_id=7)
    assert await ids_recalled(db, GUILD, "zanzibar") == []
    async with db.reader.execute("SELECT memories FROM scope_stats WHERE scope_id = ?", (GUILD.id,)) as cursor:
        assert await cursor.fetchone() == (1,)


@pytest.mark.parametrize("budget", [1, 50])
async def test_a_fact_under_common_words_is_found_when_few_postings_may_be_read(db, monkeypatch, budget):
    # Every word is "common" under a tiny budget: memories holding two of them at once still surface.
    monkeypatch.setattr(search, "POSTINGS_BUDGET", budget)
    fact = turn(GUILD, "the garden party is at the lake", at=T0)
    chatter = [turn(GUILD, f"party at the lake {i}", at=T0 + i + 1) for i in range(200)]
    chatter += [turn(GUILD, f"garden stuff {i}", at=T0 + 300 + i) for i in range(200)]
    await remember_all(db, [fact, *chatter])
    fact_id = await memory_id_of(db, fact.user_message_id)
    assert fact_id in await ids_recalled(db, GUILD, "garden party at the lake", limit=3)
