"""The MemoryStore contract: what cogs/, companion/ and the CLI rely on, checked on every backend.

Each test runs once per backend (`store` is parametrized over "sqlite" and
"postgresql") and speaks only the interface of storage/store.py: no SQL, no
connections, no backend's own tables. A memory written by `import_memories`
is found by its message id (`memories_of_messages`), as the upper layers do.
The PostgreSQL runs skip until storage/postgres/ exists.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Callable

import pytest

from storage.commands import PinOutcome, ScoringOutcome, TurnRecord
from storage.events import SOURCE_IMPORT, MemoryWritten
from storage.memories import MAX_SCORING_FAILURES, Memory
from storage.scope import Scope
from storage.sqlite_store import SQLiteStore
from storage.stats import MemoryCounts
from storage.store import ManualPinLimit, MemoryNotFound, MemoryStore
from storage.visibility import ChannelFilter, ChannelVisibility

BOT = 1000
GUILD = Scope.for_guild(BOT, 10)
OTHER_GUILD = Scope.for_guild(BOT, 20)
DM = Scope.for_dm(BOT, 7)
# The same number as GUILD's id, as a DM and as another bot's server: only the whole scope tells them apart.
DM_WITH_GUILDS_ID = Scope.for_dm(BOT, 10)
OTHER_BOT = Scope.for_guild(BOT + 1, 10)
EVERY_SCOPE = (GUILD, OTHER_GUILD, DM, DM_WITH_GUILDS_ID, OTHER_BOT)

CHANNEL = 5
OTHER_CHANNEL = 6
THREAD = 50  # a public thread of CHANNEL
PRIVATE_THREAD = 51  # a private thread of CHANNEL
ALICE = 7
BOB = 8
PIN_CAP = 8
MODEL = "classifier"
T0 = 1_700_000_000.0
UNKNOWN_ID = 987_654_321

# Every turn gets its own Discord message id and a later time than the one before.
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
    at: float | None = None,
    reply_message_ids: tuple[int, ...] = (),
    drew_on: tuple[int, ...] = (),
    parent_channel_id: int | None = None,
    private_thread: bool = False,
) -> TurnRecord:
    """A turn the bot answered."""
    return TurnRecord(
        scope=scope,
        channel_id=channel_id,
        author_id=author_id,
        author_name=author_name,
        bot_name="Mnemo",
        user_text=text,
        reply_text=reply,
        user_message_id=next(_message_ids),
        created_at=T0 + next(_seconds) if at is None else at,
        reply_message_ids=reply_message_ids,
        drew_on=drew_on,
        parent_channel_id=parent_channel_id,
        private_thread=private_thread,
    )


def imported(
    text: str,
    scope: Scope = GUILD,
    *,
    at: float,
    channel_id: int = CHANNEL,
    author_id: int = ALICE,
    author_name: str = "Alice",
    reply: str = "ok",
    message_id: int | None = None,
) -> MemoryWritten:
    """A turn of an imported history (a person's message, no score wanted)."""
    return MemoryWritten(
        bot_id=scope.bot_id,
        scope_kind=scope.kind,
        scope_id=scope.id,
        channel_id=channel_id,
        author_id=author_id,
        author_name=author_name,
        bot_name="Mnemo",
        user_text=text,
        reply_text=reply,
        user_message_id=next(_message_ids) if message_id is None else message_id,
        created_at=at,
        source=SOURCE_IMPORT,
        wants_score=False,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request, tmp_path) -> Callable[[], Awaitable[MemoryStore]]:
    """How to open an empty store of the backend under test.

    A plain fixture, so `postgres_dsn` (an async fixture) can be requested
    from here; only the PostgreSQL runs ask for it, so SQLite-only runs
    never start a cluster, and none starts while the backend is missing.
    """
    if request.param == "sqlite":
        return lambda: SQLiteStore.open(tmp_path / "memory.db", snapshots_dir=tmp_path / "snapshots")
    try:
        from storage.postgres.store import PostgresStore
    except ModuleNotFoundError as missing:
        if missing.name not in ("storage.postgres", "storage.postgres.store"):
            raise  # the backend is there but imports something missing: a failure, not a skip
        pytest.skip("the PostgreSQL backend is not built yet")
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresStore.open(dsn)


@pytest.fixture
async def store(open_store):
    opened = await open_store()
    yield opened
    await opened.close()


async def write_all(store: MemoryStore, turns: list[TurnRecord]) -> list[int]:
    return [await store.write_turn(turn) for turn in turns]


async def memory_id_of(store: MemoryStore, event: MemoryWritten) -> int:
    """The id of the memory an imported message became."""
    [(memory_id, _scope)] = await store.memories_of_messages(event.bot_id, [event.user_message_id], replies=False)
    return memory_id


async def pinned_ids(store: MemoryStore, scope: Scope = GUILD) -> list[int]:
    pinned, _recent = await store.pinned_and_recent(scope, CHANNEL, 0)
    return [memory.id for memory in pinned]


async def searched_ids(store: MemoryStore, scope: Scope, text: str, limit: int = 10, **kwargs) -> list[int]:
    return [hit.memory.id for hit in await store.search(scope, text, limit, **kwargs)]


def ids(memories: list[Memory]) -> list[int]:
    return [memory.id for memory in memories]


def operations(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


# The interface itself


async def test_the_store_offers_every_operation_of_the_interface_with_its_signature(store):
    wanted = operations(MemoryStore)
    for name, signature in wanted.items():
        offered = getattr(type(store), name, None)
        assert offered is not None, f"{type(store).__name__} lacks {name}"
        assert str(inspect.signature(offered)) == str(signature), name
        assert inspect.iscoroutinefunction(offered) == inspect.iscoroutinefunction(getattr(MemoryStore, name)), name


# 1. Writing and reading memories


async def test_a_written_turn_reads_back_whole_under_increasing_ids(store):
    turn = said("I adopted a cat named Biscuit", reply="What a lovely name!", at=T0 + 0.25)
    first = await store.write_turn(turn)
    second = await store.write_turn(said("and a dog"))
    assert second > first
    assert await store.get_memory(GUILD, first) == Memory(
        id=first,
        scope=GUILD,
        channel_id=CHANNEL,
        author_id=ALICE,
        author_name="Alice",
        bot_name="Mnemo",
        user_text="I adopted a cat named Biscuit",
        reply_text="What a lovely name!",
        user_message_id=turn.user_message_id,
        created_at=T0 + 0.25,
        significance=None,
        scoring_failures=0,
        pinned=False,
        pin_auto=None,
        source="chat",
        wants_score=True,
    )
    assert (await store.get_memory(GUILD, first)).text == (
        "Alice said: I adopted a cat named Biscuit\nMnemo replied: What a lovely name!"
    )


async def test_text_of_every_kind_reads_back_unchanged(store):
    text = "ålice 🦊 zero\u200bwidth \u202ertl 'quotes' \"double\" back\\slash %_ 中文\nsecond line"
    memory_id = await store.write_turn(said(text, reply=text))
    memory = await store.get_memory(GUILD, memory_id)
    assert (memory.user_text, memory.reply_text) == (text, text)


async def test_unknown_ids_read_as_nothing(store):
    assert await store.get_memory(GUILD, UNKNOWN_ID) is None
    assert await store.memory_scope(UNKNOWN_ID) is None
    assert await store.memories_by_id(GUILD, [UNKNOWN_ID]) == []


async def test_the_list_is_newest_first_and_pages_with_before_id(store):
    written = await write_all(store, [said(f"note {i}") for i in range(5)])
    first_page = await store.list_memories(GUILD, limit=2)
    assert ids(first_page) == written[:-3:-1]
    second_page = await store.list_memories(GUILD, limit=2, before_id=first_page[-1].id)
    assert ids(second_page) == written[2:0:-1]
    assert ids(await store.list_memories(GUILD, limit=2, before_id=second_page[-1].id)) == written[:1]
    assert await store.list_memories(GUILD, limit=2, before_id=written[0]) == []
    assert ids(await store.list_memories(GUILD)) == written[::-1]  # ten by default


async def test_the_list_keeps_to_the_pins_or_one_authors_turns_when_asked(store):
    alice = await write_all(store, [said(f"alice {i}") for i in range(3)])
    bob = await write_all(store, [said(f"bob {i}", author_id=BOB, author_name="Bob") for i in range(2)])
    await store.pin(GUILD, alice[0], actor_id=ALICE, pin_cap=PIN_CAP)
    await store.pin(GUILD, bob[1], actor_id=ALICE, pin_cap=PIN_CAP)
    assert ids(await store.list_memories(GUILD, pinned_only=True)) == [bob[1], alice[0]]
    assert ids(await store.list_memories(GUILD, author_id=BOB)) == bob[::-1]
    assert ids(await store.list_memories(GUILD, author_id=ALICE, pinned_only=True)) == [alice[0]]
    assert ids(await store.list_memories(GUILD, author_id=ALICE, before_id=alice[2], limit=1)) == [alice[1]]


async def test_count_memories_counts_the_scopes_memories_or_its_pins(store):
    assert await store.count_memories(GUILD) == 0
    written = await write_all(store, [said(f"note {i}") for i in range(4)])
    await store.write_turn(said("elsewhere", OTHER_GUILD))
    await store.pin(GUILD, written[1], actor_id=ALICE, pin_cap=PIN_CAP)
    assert await store.count_memories(GUILD) == 4
    assert await store.count_memories(GUILD, pinned_only=True) == 1


async def test_no_read_returns_another_scopes_memory(store):
    # The same channel, author and words in every scope; each memory is pinned and drawn on.
    mine: dict[Scope, int] = {}
    for scope in EVERY_SCOPE:
        turn = said("the launch code is pineapple", scope, reply_message_ids=(next(_message_ids),))
        mine[scope] = await store.write_turn(turn)
        await store.record_significance(mine[scope], 3, model=MODEL, pin_cap=PIN_CAP)
    every_id = list(mine.values())
    later_of = {scope: await store.write_turn(said("pineapple again", scope, drew_on=(mine[scope],))) for scope in mine}
    for scope in EVERY_SCOPE:
        later = later_of[scope]
        others = [memory_id for memory_id in every_id if memory_id != mine[scope]]
        for memory_id in others:
            assert await store.get_memory(scope, memory_id) is None
            assert await store.drawing_on(scope, memory_id) == []
        assert await store.memory_scope(mine[scope]) == scope
        assert {m.scope for m in await store.list_memories(scope)} == {scope}
        assert await store.count_memories(scope) == 2
        assert await store.count_memories(scope, pinned_only=True) == 1
        assert await searched_ids(store, scope, "pineapple") in ([mine[scope], later], [later, mine[scope]])
        assert ids(await store.memories_by_id(scope, every_id)) == [mine[scope]]
        assert await store.memory_ids(scope) == [mine[scope], later]
        assert await store.memory_ids(scope, author_id=ALICE, channel_id=CHANNEL) == [mine[scope], later]
        pinned, recent = await store.pinned_and_recent(scope, CHANNEL, 10)
        assert (ids(pinned), ids(recent)) == ([mine[scope]], [mine[scope], later])
        memory = await store.get_memory(scope, mine[scope])
        assert ids(await store.memories_before(memory, 10)) == []
        assert ids((await store.next_turns(scope, [memory])).values()) == [later]
        assert ids(await store.drawing_on(scope, mine[scope])) == [later]
    # A message id is one bot's: another bot's memories of it are not this bot's.
    message_ids = [(await store.get_memory(scope, mine[scope])).user_message_id for scope in EVERY_SCOPE]
    found = await store.memories_of_messages(BOT, message_ids)
    assert sorted(found) == sorted((mine[scope], scope) for scope in EVERY_SCOPE if scope.bot_id == BOT)


# 2. What every prompt holds besides recall: the pins and the channel's last turns


async def test_pins_come_oldest_first_and_the_channels_last_turns_oldest_first(store):
    here = await write_all(store, [said(f"here {i}") for i in range(6)])
    there = await store.write_turn(said("over there", channel_id=OTHER_CHANNEL))
    for memory_id in (here[3], there, here[1]):
        await store.pin(GUILD, memory_id, actor_id=ALICE, pin_cap=PIN_CAP)
    pinned, recent = await store.pinned_and_recent(GUILD, CHANNEL, 3)
    # The pins are the whole scope's; the recent turns only this channel's.
    assert ids(pinned) == [here[1], here[3], there]
    assert ids(recent) == here[3:]
    pinned, recent = await store.pinned_and_recent(GUILD, CHANNEL, 0)
    assert (ids(pinned), recent) == ([here[1], here[3], there], [])
    assert ids((await store.pinned_and_recent(GUILD, OTHER_CHANNEL, 10))[1]) == [there]


async def test_an_imported_old_turn_does_not_pass_for_the_latest(store):
    live = await write_all(store, [said(f"live {i}", at=T0 + 1000 + i) for i in range(3)])
    old = imported("from last year", at=T0)
    assert await store.import_memories([old]) == 1
    old_id = await memory_id_of(store, old)
    assert old_id > live[-1]  # remembered last, said first
    _pinned, recent = await store.pinned_and_recent(GUILD, CHANNEL, 2)
    assert ids(recent) == live[1:]
    _pinned, recent = await store.pinned_and_recent(GUILD, CHANNEL, 10)
    assert ids(recent) == [old_id, *live]


# 3. Scores and automatic pins


async def test_the_first_score_stands(store):
    memory_id = await store.write_turn(said("hello there"))
    assert await store.record_significance(memory_id, 1, model=MODEL, pin_cap=PIN_CAP) == ScoringOutcome(True)
    assert await store.record_significance(memory_id, 3, model=MODEL, pin_cap=PIN_CAP) == ScoringOutcome(False)
    memory = await store.get_memory(GUILD, memory_id)
    assert (memory.significance, memory.pinned) == (1, False)


async def test_a_pivotal_score_pins_the_memory_automatically(store):
    memory_id = await store.write_turn(said("I got the job!"))
    outcome = await store.record_significance(memory_id, 3, model=MODEL, pin_cap=PIN_CAP)
    assert outcome == ScoringOutcome(recorded=True, pinned=True, unpinned=())
    memory = await store.get_memory(GUILD, memory_id)
    assert (memory.significance, memory.pinned, memory.pin_auto) == (3, True, True)


async def test_ten_pivotal_turns_leave_eight_pins_and_the_oldest_yield(store):
    written = await write_all(store, [said(f"milestone {i}", author_id=100 + i) for i in range(10)])
    outcomes = [await store.record_significance(i, 3, model=MODEL, pin_cap=PIN_CAP) for i in written]
    assert outcomes[8] == ScoringOutcome(recorded=True, pinned=True, unpinned=(written[0],))
    assert outcomes[9] == ScoringOutcome(recorded=True, pinned=True, unpinned=(written[1],))
    assert await pinned_ids(store) == written[2:]
    assert await store.count_memories(GUILD, pinned_only=True) == PIN_CAP


async def test_auto_pins_keep_the_newest_whatever_the_scoring_order(store):
    written = await write_all(store, [said(f"milestone {i}", author_id=100 + i) for i in range(10)])
    for memory_id in reversed(written):
        await store.record_significance(memory_id, 3, model=MODEL, pin_cap=PIN_CAP)
    assert await pinned_ids(store) == written[2:]
    late = await store.get_memory(GUILD, written[0])
    assert (late.significance, late.pinned) == (3, False)


async def test_manual_pins_are_never_evicted_and_an_auto_pin_yields_when_they_fill_the_cap(store):
    written = await write_all(store, [said(f"note {i}", author_id=100 + i) for i in range(12)])
    manual = written[:3]
    for memory_id in manual:
        await store.pin(GUILD, memory_id, actor_id=ALICE, pin_cap=3)
    outcome = await store.record_significance(written[5], 3, model=MODEL, pin_cap=3)
    assert outcome == ScoringOutcome(recorded=True, pinned=False, unpinned=())
    assert await pinned_ids(store) == manual
    # With room, auto-pins come and go around the manual ones.
    for memory_id in written[6:]:
        await store.record_significance(memory_id, 3, model=MODEL, pin_cap=5)
    assert await pinned_ids(store) == [*manual, *written[-2:]]


async def test_one_authors_pivotal_turns_hold_at_most_half_the_auto_pins(store):
    others = await write_all(store, [said(f"someone's news {i}", author_id=100 + i) for i in range(4)])
    mine = await write_all(store, [said(f"my news {i}") for i in range(6)])
    for memory_id in others + mine[1:]:
        await store.record_significance(memory_id, 3, model=MODEL, pin_cap=PIN_CAP)
    # The author's own oldest auto-pin yielded to their newer ones; nobody else's did.
    assert await pinned_ids(store) == [*others, *mine[2:]]
    # Their oldest turn, scored late, pushes out none of their newer pins.
    outcome = await store.record_significance(mine[0], 3, model=MODEL, pin_cap=PIN_CAP)
    assert outcome == ScoringOutcome(recorded=True, pinned=False, unpinned=())
    assert await pinned_ids(store) == [*others, *mine[2:]]


async def test_the_pin_cap_is_each_scopes_own(store):
    a = await write_all(store, [said(f"a {i}", author_id=100 + i) for i in range(3)])
    b = await write_all(store, [said(f"b {i}", OTHER_GUILD, author_id=100 + i) for i in range(3)])
    for memory_id in a + b:
        await store.record_significance(memory_id, 3, model=MODEL, pin_cap=2)
    assert await pinned_ids(store, GUILD) == a[1:]
    assert await pinned_ids(store, OTHER_GUILD) == b[1:]


async def test_each_scoring_failure_spends_a_call_and_the_last_takes_the_memory_out_of_the_queue(store):
    memory_id = await store.write_turn(said("hmm"))
    assert await store.record_scoring_failure(memory_id, "garbage answer", "refused")
    memory = await store.get_memory(GUILD, memory_id)
    assert (memory.significance, memory.scoring_failures, memory.scoring_gave_up) == (None, 2, False)
    assert await store.unscored_memory_ids(after_id=0, limit=10) == [memory_id]
    assert await store.record_scoring_failure(memory_id, "garbage again")
    memory = await store.get_memory(GUILD, memory_id)
    assert (memory.significance, memory.scoring_failures) == (None, MAX_SCORING_FAILURES)
    assert memory.scoring_gave_up
    assert await store.unscored_memory_ids(after_id=0, limit=10) == []
    assert await store.count_unscored() == 0


async def test_the_queue_is_the_unscored_memories_oldest_first_paged_after_an_id(store):
    written = await write_all(store, [said(f"turn {i}") for i in range(5)])
    await store.record_significance(written[1], 2, model=MODEL, pin_cap=PIN_CAP)
    # An imported turn wants no score, so it does not wait for one.
    await store.import_memories([imported("from the archive", at=T0)])
    waiting = [written[0], *written[2:]]
    assert await store.count_unscored() == 4
    assert await store.unscored_memory_ids(after_id=0, limit=2) == waiting[:2]
    assert await store.unscored_memory_ids(after_id=waiting[1], limit=2) == waiting[2:]
    assert await store.unscored_memory_ids(after_id=waiting[-1], limit=2) == []


async def test_a_claim_takes_the_oldest_waiting_memories_for_one_claimant_at_a_time(store):
    written = await write_all(store, [said(f"turn {i}") for i in range(6)])
    await store.record_significance(written[0], 1, model=MODEL, pin_cap=PIN_CAP)
    first = await store.claim_unscored("process-a", limit=2, lease_seconds=60)
    assert first == written[1:3]
    # Another claimant gets the next ones, never those claimed.
    assert await store.claim_unscored("process-b", limit=10, lease_seconds=60) == written[3:]
    assert await store.claim_unscored("process-b", limit=10, lease_seconds=60) == []
    # A claim given back is claimable again; only its own claimant can give it back.
    await store.release_claims("process-b", [written[1]])
    assert await store.claim_unscored("process-b", limit=10, lease_seconds=60) == []
    await store.release_claims("process-a", [written[1]])
    assert await store.claim_unscored("process-b", limit=10, lease_seconds=60) == [written[1]]


async def test_a_claim_whose_lease_ran_out_is_claimed_again(store):
    memory_id = await store.write_turn(said("whoever gets it"))
    assert await store.claim_unscored("died", limit=5, lease_seconds=0.05) == [memory_id]
    assert await store.claim_unscored("alive", limit=5, lease_seconds=60) == []
    await asyncio.sleep(0.1)
    assert await store.claim_unscored("alive", limit=5, lease_seconds=60) == [memory_id]
    # Scored, it is no longer waiting, claimed or not.
    await store.record_significance(memory_id, 2, model=MODEL, pin_cap=PIN_CAP)
    await store.release_claims("alive", [memory_id])
    assert await store.claim_unscored("alive", limit=5, lease_seconds=60) == []


async def test_a_renewed_claim_outlives_its_first_lease_and_a_lost_one_is_not_renewed(store):
    kept, lost = await write_all(store, [said("kept"), said("lost")])
    assert await store.claim_unscored("slow", limit=5, lease_seconds=0.2) == [kept, lost]
    assert await store.renew_claims("slow", [kept], lease_seconds=60) == [kept]
    await asyncio.sleep(0.3)
    # The lapsed one goes to whoever claims next; the renewed one stays held.
    assert await store.claim_unscored("other", limit=5, lease_seconds=60) == [lost]
    assert await store.renew_claims("slow", [kept, lost], lease_seconds=60) == [kept]
    # A lapsed claim nobody took is still its claimant's to renew.
    assert await store.claim_unscored("third", limit=5, lease_seconds=0.05) == []
    await store.release_claims("other", [lost])
    assert await store.claim_unscored("third", limit=5, lease_seconds=0.05) == [lost]
    await asyncio.sleep(0.1)
    assert await store.renew_claims("third", [lost], lease_seconds=60) == [lost]
    assert await store.claim_unscored("other", limit=5, lease_seconds=60) == []


async def test_a_forgotten_or_unknown_memory_takes_no_score_and_no_failure(store):
    memory_id = await store.write_turn(said("gone soon"))
    await store.forget(GUILD, memory_id, actor_id=ALICE)
    for gone in (memory_id, UNKNOWN_ID):
        assert await store.record_significance(gone, 3, model=MODEL, pin_cap=PIN_CAP) == ScoringOutcome(False)
        assert not await store.record_scoring_failure(gone, "garbage")
    assert await store.count_memories(GUILD, pinned_only=True) == 0


# 4. Pinning by hand


async def test_pin_and_unpin_say_whether_anything_changed(store):
    memory_id = await store.write_turn(said("remember my birthday"))
    pinned = await store.pin(GUILD, memory_id, actor_id=ALICE, pin_cap=PIN_CAP)
    assert pinned == PinOutcome(changed=True, memory=await store.get_memory(GUILD, memory_id), unpinned=())
    assert (pinned.memory.pinned, pinned.memory.pin_auto) == (True, False)
    again = await store.pin(GUILD, memory_id, actor_id=BOB, pin_cap=PIN_CAP)
    assert (again.changed, again.memory) == (False, pinned.memory)
    unpinned = await store.unpin(GUILD, memory_id, actor_id=ALICE)
    assert unpinned == PinOutcome(changed=True, memory=await store.get_memory(GUILD, memory_id))
    assert (unpinned.memory.pinned, unpinned.memory.pin_auto) == (False, None)
    assert (await store.unpin(GUILD, memory_id, actor_id=ALICE)).changed is False


async def test_pinning_an_auto_pin_by_hand_makes_it_manual_and_unpin_removes_an_auto_pin(store):
    first, second = await write_all(store, [said("big news"), said("bigger news")])
    for memory_id in (first, second):
        await store.record_significance(memory_id, 3, model=MODEL, pin_cap=PIN_CAP)
    outcome = await store.pin(GUILD, first, actor_id=ALICE, pin_cap=PIN_CAP)
    assert outcome.changed and (outcome.memory.pinned, outcome.memory.pin_auto) == (True, False)
    assert (await store.unpin(GUILD, second, actor_id=ALICE)).changed
    assert await pinned_ids(store) == [first]


async def test_a_manual_pin_over_the_cap_pushes_out_the_oldest_auto_pin(store):
    written = await write_all(store, [said(f"note {i}", author_id=100 + i) for i in range(4)])
    await store.record_significance(written[0], 3, model=MODEL, pin_cap=2)
    await store.record_significance(written[1], 3, model=MODEL, pin_cap=2)
    outcome = await store.pin(GUILD, written[3], actor_id=ALICE, pin_cap=2)
    assert outcome.changed and outcome.unpinned == (written[0],)
    assert await pinned_ids(store) == [written[1], written[3]]
    assert not (await store.get_memory(GUILD, written[0])).pinned


async def test_a_member_holds_their_quota_of_manual_pins(store):
    written = await write_all(store, [said(f"note {i}") for i in range(4)])
    await store.pin(GUILD, written[0], actor_id=ALICE, pin_cap=PIN_CAP, member_quota=1)
    with pytest.raises(ManualPinLimit) as refused:
        await store.pin(GUILD, written[1], actor_id=ALICE, pin_cap=PIN_CAP, member_quota=1)
    assert (refused.value.limit, refused.value.scope_full) == (1, False)
    assert not (await store.get_memory(GUILD, written[1])).pinned
    # Someone else may, and so may a moderator (no quota).
    assert (await store.pin(GUILD, written[1], actor_id=BOB, pin_cap=PIN_CAP, member_quota=1)).changed
    assert (await store.pin(GUILD, written[2], actor_id=ALICE, pin_cap=PIN_CAP)).changed
    # The quota is the scope's: another server's pins do not count here.
    elsewhere = await store.write_turn(said("elsewhere", OTHER_GUILD))
    assert (await store.pin(OTHER_GUILD, elsewhere, actor_id=ALICE, pin_cap=PIN_CAP, member_quota=1)).changed


async def test_members_cannot_pin_past_a_cap_full_of_manual_pins(store):
    written = await write_all(store, [said(f"note {i}") for i in range(3)])
    for memory_id in written[:2]:
        await store.pin(GUILD, memory_id, actor_id=BOB, pin_cap=2)
    with pytest.raises(ManualPinLimit) as refused:
        await store.pin(GUILD, written[2], actor_id=ALICE, pin_cap=2, member_quota=1)
    assert (refused.value.limit, refused.value.scope_full) == (2, True)
    assert await pinned_ids(store) == written[:2]


async def test_commands_refuse_unknown_and_other_scopes_memories_and_change_nothing(store):
    memory_id = await store.write_turn(said("private"))
    for scope, missing in ((OTHER_GUILD, memory_id), (DM_WITH_GUILDS_ID, memory_id), (OTHER_BOT, memory_id)):
        with pytest.raises(MemoryNotFound):
            await store.pin(scope, missing, actor_id=ALICE, pin_cap=PIN_CAP)
        with pytest.raises(MemoryNotFound):
            await store.unpin(scope, missing, actor_id=ALICE)
        with pytest.raises(MemoryNotFound):
            await store.forget(scope, missing, actor_id=ALICE)
        with pytest.raises(MemoryNotFound):
            await store.rewrite(scope, missing, "edited", reason="edited in Discord")
        assert await store.forget_many(scope, [missing], actor_id=ALICE) == []
    with pytest.raises(MemoryNotFound):
        await store.pin(GUILD, UNKNOWN_ID, actor_id=ALICE, pin_cap=PIN_CAP)
    with pytest.raises(MemoryNotFound):
        await store.forget(GUILD, UNKNOWN_ID, actor_id=ALICE)
    memory = await store.get_memory(GUILD, memory_id)
    assert (memory.user_text, memory.pinned) == ("private", False)


# 5. Forgetting, rewriting, and finding memories by their messages


async def test_a_forgotten_memory_leaves_every_read(store):
    reply_id = next(_message_ids)
    turn = said("my password hint is zanzibarwombat", reply_message_ids=(reply_id,))
    memory_id = await store.write_turn(turn)
    await store.record_significance(memory_id, 3, model=MODEL, pin_cap=PIN_CAP)
    later = await store.write_turn(said("something else", drew_on=(memory_id,)))
    before = await store.counts()

    forgotten = await store.forget(GUILD, memory_id, actor_id=ALICE, reason="asked")
    assert (forgotten.id, forgotten.user_text) == (memory_id, turn.user_text)
    assert await store.get_memory(GUILD, memory_id) is None
    assert await store.memory_scope(memory_id) is None
    assert ids(await store.list_memories(GUILD)) == [later]
    assert await store.count_memories(GUILD) == 1
    assert await store.count_memories(GUILD, pinned_only=True) == 0
    assert await store.pinned_and_recent(GUILD, CHANNEL, 10) == ([], [await store.get_memory(GUILD, later)])
    assert await store.search(GUILD, "zanzibarwombat", 5) == []
    assert await store.memories_by_id(GUILD, [memory_id]) == []
    assert await store.memory_ids(GUILD) == [later]
    assert await store.memories_of_messages(BOT, [turn.user_message_id, reply_id]) == []
    assert await store.unscored_memory_ids(after_id=0, limit=10) == [later]
    after = await store.counts()
    assert (after.memories, after.pinned) == (before.memories - 1, before.pinned - 1)
    with pytest.raises(MemoryNotFound):
        await store.forget(GUILD, memory_id, actor_id=ALICE)
    # What the forgetting does next: scrub the copies beside the log, checkpoint.
    assert await store.scrub_copies([memory_id]) >= 0
    assert await store.checkpoint() in (True, False)


async def test_forget_many_forgets_the_scopes_memories_and_skips_the_rest(store):
    mine = await write_all(store, [said(f"mine {i}") for i in range(4)])
    theirs = await store.write_turn(said("theirs", OTHER_GUILD))
    await store.forget(GUILD, mine[0], actor_id=None, reason="deleted in Discord")
    asked = [mine[3], mine[0], theirs, UNKNOWN_ID, mine[1]]
    forgotten = await store.forget_many(GUILD, asked, actor_id=ALICE, reason="forget me")
    assert sorted(forgotten) == [mine[1], mine[3]]
    assert await store.memory_ids(GUILD) == [mine[2]]
    assert await store.memory_ids(OTHER_GUILD) == [theirs]
    assert await store.forget_many(GUILD, [], actor_id=ALICE) == []


async def test_an_edit_rewrites_the_memory_under_a_new_id(store):
    turn = said("we meet on Tuesday at the quarry", reply_message_ids=(next(_message_ids),))
    old_id = await store.write_turn(turn)
    await store.pin(GUILD, old_id, actor_id=BOB, pin_cap=PIN_CAP)
    await store.record_significance(old_id, 2, model=MODEL, pin_cap=PIN_CAP)
    old = await store.get_memory(GUILD, old_id)

    new_id = await store.rewrite(GUILD, old_id, "we meet on Thursday at the harbour", reason="edited in Discord")
    assert new_id > old_id
    assert await store.get_memory(GUILD, old_id) is None
    new = await store.get_memory(GUILD, new_id)
    assert new.user_text == "we meet on Thursday at the harbour"
    same = ("scope", "channel_id", "author_id", "author_name", "bot_name", "reply_text", "user_message_id")
    assert [getattr(new, name) for name in (*same, "created_at")] == [
        getattr(old, name) for name in (*same, "created_at")
    ]
    # A manual pin stays; the score does not (the new text is scored anew).
    assert (new.pinned, new.pin_auto, new.significance) == (True, False, None)
    assert await searched_ids(store, GUILD, "quarry") == []
    assert await searched_ids(store, GUILD, "harbour") == [new_id]
    assert await store.memories_of_messages(BOT, [turn.user_message_id], replies=False) == [(new_id, GUILD)]
    assert await store.memories_of_messages(BOT, list(turn.reply_message_ids)) == [(new_id, GUILD)]


async def test_a_memory_is_found_by_the_persons_message_or_the_bots_replies(store):
    replies = (next(_message_ids), next(_message_ids))
    turn = said("a split reply", reply_message_ids=replies)
    memory_id = await store.write_turn(turn)
    other = await store.write_turn(said("in a DM", DM))
    other_message = (await store.get_memory(DM, other)).user_message_id

    assert await store.memories_of_messages(BOT, [turn.user_message_id]) == [(memory_id, GUILD)]
    assert await store.memories_of_messages(BOT, [replies[1]]) == [(memory_id, GUILD)]
    assert await store.memories_of_messages(BOT, [replies[1]], replies=False) == []
    found = await store.memories_of_messages(BOT, [*replies, turn.user_message_id, other_message, UNKNOWN_ID])
    assert sorted(found) == sorted([(memory_id, GUILD), (other, DM)])
    assert await store.memories_of_messages(BOT + 1, [turn.user_message_id, *replies]) == []
    assert await store.memories_of_messages(BOT, []) == []


async def test_importing_skips_messages_already_remembered_or_forgotten(store):
    live = said("said live")
    live_id = await store.write_turn(live)
    history = [imported(f"old message {i}", at=T0 - 100 + i) for i in range(3)]
    again = imported("said live", at=live.created_at, message_id=live.user_message_id)
    # A message twice in one batch is remembered once.
    assert await store.import_memories([*history, history[0], again]) == 3
    assert await store.import_memories(history) == 0
    forgotten_id = await memory_id_of(store, history[1])
    await store.forget(GUILD, forgotten_id, actor_id=ALICE)
    assert await store.import_memories([*history, again]) == 0
    assert await store.count_memories(GUILD) == 3
    assert await store.memories_of_messages(BOT, [live.user_message_id], replies=False) == [(live_id, GUILD)]
    assert await store.import_memories([]) == 0
    # The same message id is another bot's own to remember.
    other_bots = imported("the other bot's copy", OTHER_BOT, at=T0, message_id=history[1].user_message_id)
    assert await store.import_memories([other_bots]) == 1


async def test_an_imported_memory_keeps_its_source_and_asks_for_no_score(store):
    event = imported("from the archive", at=T0 - 5, reply="")
    await store.import_memories([event])
    memory = await store.get_memory(GUILD, await memory_id_of(store, event))
    assert (memory.source, memory.wants_score, memory.created_at, memory.reply_text) == ("import", False, T0 - 5, "")
    assert memory.text == "Alice said: from the archive"


# 6. Search


async def test_a_fact_said_once_is_found_first_under_many_newer_memories_sharing_its_words(store):
    fact = imported("my sister's wedding is in Porto on the 12th, we're driving down", at=T0)
    chatter = [
        imported(
            f"wedding season again, so many weddings this year, driving everywhere {i}",
            author_name=("Bob", "Carol", "Dan")[i % 3],
            author_id=20 + i % 3,
            at=T0 + 3600 * (i + 1),
        )
        for i in range(300)
    ]
    assert await store.import_memories([fact, *chatter]) == 301
    hits = await store.search(GUILD, "when is Alice's sister's wedding in Porto?", 10)
    assert hits[0].memory.id == await memory_id_of(store, fact)
    assert len(hits) == 10
    assert [hit.relevance for hit in hits] == sorted((hit.relevance for hit in hits), reverse=True)


async def test_search_ranks_the_better_match_first(store):
    await store.write_turn(said("we talked about the weather"))
    best = await store.write_turn(said("my sister Maria is getting married to Tomas in June"))
    await store.write_turn(said("June is hot"))
    assert (await searched_ids(store, GUILD, "When is Maria's wedding with Tomas?", 5))[0] == best


async def test_search_returns_at_most_its_limit(store):
    await write_all(store, [said(f"tulip bulbs, batch {i}") for i in range(5)])
    assert len(await store.search(GUILD, "tulip bulbs", 3)) == 3
    assert len(await store.search(GUILD, "tulip bulbs", 10)) == 5


async def test_search_finds_other_forms_of_a_word_whatever_the_case(store):
    kittens = await store.write_turn(said("We ADOPTED two Kittens from the shelter"))
    for query in ("adopting a kitten?", "ADOPT KITTENS", "kitten"):
        assert await searched_ids(store, GUILD, query) == [kittens], query


async def test_search_ignores_accents(store):
    cafe = await store.write_turn(said("Wir trafen uns im Café Größenwahn"))
    for query in ("cafe", "CAFÉ", "grossenwahn", "größenwahn"):
        assert await searched_ids(store, GUILD, query) == [cafe], query


# Words every stopword list skips (storage/tokens.py's and Snowball's English one alike).
ONLY_COMMON_WORDS = "What is it that you are about to do?"


async def test_text_of_only_very_common_words_has_nothing_to_search_for(store):
    await store.write_turn(said("what is it you are about to do"))
    assert not store.has_search_terms(ONLY_COMMON_WORDS)
    assert not store.has_search_terms("")
    assert not store.has_search_terms("?! ... :)")
    assert store.has_search_terms("what about my telescope?")
    assert await store.search(GUILD, ONLY_COMMON_WORDS, 5) == []


@pytest.mark.parametrize(
    "query",
    ['"unbalanced', "NEAR(a b)", "a AND OR NOT", "col:thing", "*", "^start", "-minus", "(((", "a & b | !c <-> d",
     "thing:*", "' OR 1=1 --", "%_\\", "💥 ☃ 中文"],
)  # fmt: skip
async def test_search_treats_query_syntax_as_plain_words(store, query):
    await store.write_turn(said("thing start minus 中文 unbalanced"))
    await store.write_turn(said("thing elsewhere", OTHER_GUILD))
    hits = await store.search(GUILD, query, 5)
    assert all(hit.memory.scope == GUILD for hit in hits)


async def test_a_forgotten_memory_is_not_found_and_leaves_the_others_found(store):
    gone = await store.write_turn(said("zanzibar trip was fun"))
    kept = await store.write_turn(said("zanzibar is far away"))
    await store.forget(GUILD, gone, actor_id=ALICE)
    assert await searched_ids(store, GUILD, "zanzibar trip") == [kept]


async def test_a_channel_filter_keeps_other_channels_memories_out_of_search(store):
    # More matches elsewhere, all shorter and newer than the one here.
    elsewhere = [imported(f"tea tea {i}", channel_id=OTHER_CHANNEL, at=T0 + i + 1) for i in range(60)]
    here = imported("we talked about green tea and biscuits and the weather at length", at=T0)
    await store.import_memories([here, *elsewhere])
    here_id = await memory_id_of(store, here)
    only_here = ChannelFilter(channels=frozenset({CHANNEL}))
    assert await searched_ids(store, GUILD, "tea", channel_filter=only_here) == [here_id]
    assert here_id not in await searched_ids(store, GUILD, "tea")


async def test_a_channel_filter_applies_to_every_read_that_takes_one(store):
    here = await store.write_turn(said("tea here"))
    there = await store.write_turn(said("tea there", channel_id=OTHER_CHANNEL, drew_on=(here,)))
    drawing = await store.write_turn(said("tea again", drew_on=(here,)))
    for memory_id in (here, there):
        await store.pin(GUILD, memory_id, actor_id=ALICE, pin_cap=PIN_CAP)
    only_here = ChannelFilter(channels=frozenset({CHANNEL}))
    assert (await store.get_memory(GUILD, here, channel_filter=only_here)).id == here
    assert await store.get_memory(GUILD, there, channel_filter=only_here) is None
    assert ids(await store.list_memories(GUILD, channel_filter=only_here)) == [drawing, here]
    assert ids(await store.list_memories(GUILD, pinned_only=True, channel_filter=only_here)) == [here]
    assert await store.count_memories(GUILD, channel_filter=only_here) == 2
    assert await store.count_memories(GUILD, pinned_only=True, channel_filter=only_here) == 1
    pinned, recent = await store.pinned_and_recent(GUILD, CHANNEL, 10, channel_filter=only_here)
    assert (ids(pinned), ids(recent)) == ([here], [here, drawing])
    assert ids(await store.drawing_on(GUILD, here, channel_filter=only_here)) == [drawing]
    assert sorted(await searched_ids(store, GUILD, "tea", channel_filter=only_here)) == [here, drawing]


async def test_each_clause_of_a_channel_filter_lets_its_own_memories_through(store):
    channel = await store.write_turn(said("in the channel"))
    thread = await store.write_turn(said("in a thread", channel_id=THREAD, parent_channel_id=CHANNEL))
    private = await store.write_turn(
        said("in a private thread", channel_id=PRIVATE_THREAD, parent_channel_id=CHANNEL, private_thread=True)
    )
    bobs = await store.write_turn(said("bob elsewhere", channel_id=OTHER_CHANNEL, author_id=BOB, author_name="Bob"))

    async def passing(channel_filter: ChannelFilter) -> list[int]:
        return ids(await store.list_memories(GUILD, channel_filter=channel_filter))[::-1]

    assert await passing(ChannelFilter()) == []  # no clause, nothing passes
    assert await passing(ChannelFilter(channels=frozenset({CHANNEL, PRIVATE_THREAD}))) == [channel, private]
    assert await passing(ChannelFilter(thread_parents=frozenset({CHANNEL}))) == [thread]
    assert await passing(ChannelFilter(private_thread_parents=frozenset({CHANNEL}))) == [thread, private]
    assert await passing(ChannelFilter(author_id=BOB)) == [bobs]
    assert await passing(ChannelFilter(channels=frozenset({CHANNEL}), author_id=BOB)) == [channel, bobs]


# 7. A memory's neighbours, its scope, and memories by id


async def test_the_turn_after_each_is_the_next_said_in_its_own_channel(store):
    question = await store.write_turn(said("Bob, how was your first pottery class?", at=T0))
    elsewhere = await store.write_turn(said("a wonky bowl of soup", channel_id=OTHER_CHANNEL, at=T0 + 30))
    answer = await store.write_turn(said("so fun! a wonky bowl", author_id=BOB, author_name="Bob", at=T0 + 60))
    turns = await store.memories_by_id(GUILD, [question, elsewhere, answer])
    # The last turn of each channel has none after it.
    assert await store.next_turns(GUILD, turns) == {question: await store.get_memory(GUILD, answer)}
    # An imported turn said between them, though remembered last, comes next by time.
    between = imported("Bob? hello?", at=T0 + 45)
    await store.import_memories([between])
    between_id = await memory_id_of(store, between)
    following = await store.next_turns(GUILD, turns)
    assert following == {question: await store.get_memory(GUILD, between_id)}
    assert await store.next_turns(GUILD, []) == {}


async def test_the_turns_before_a_memory_are_its_channels_earlier_ones_oldest_first(store):
    written = await write_all(store, [said(f"turn {i}", at=T0 + 10 * i) for i in range(4)])
    await store.write_turn(said("another channel", channel_id=OTHER_CHANNEL, at=T0 + 25))
    old = imported("long before", at=T0 - 100)
    await store.import_memories([old])
    last = await store.get_memory(GUILD, written[3])
    assert ids(await store.memories_before(last, 2)) == written[1:3]
    assert ids(await store.memories_before(last, 10)) == [await memory_id_of(store, old), *written[:3]]
    assert await store.memories_before(await store.get_memory(GUILD, await memory_id_of(store, old)), 10) == []


async def test_memory_scope_names_the_scope_of_any_memory(store):
    for scope in EVERY_SCOPE:
        memory_id = await store.write_turn(said("hello", scope))
        assert await store.memory_scope(memory_id) == scope


async def test_memory_ids_are_an_authors_or_a_channels_and_its_threads_oldest_first(store):
    channel = await store.write_turn(said("in the channel"))
    thread = await store.write_turn(said("in its thread", channel_id=THREAD, parent_channel_id=CHANNEL))
    private = await store.write_turn(
        said("in its private thread", channel_id=PRIVATE_THREAD, parent_channel_id=CHANNEL, private_thread=True)
    )
    bobs = await store.write_turn(said("elsewhere", channel_id=OTHER_CHANNEL, author_id=BOB, author_name="Bob"))
    assert await store.memory_ids(GUILD) == [channel, thread, private, bobs]
    assert await store.memory_ids(GUILD, author_id=ALICE) == [channel, thread, private]
    assert await store.memory_ids(GUILD, channel_id=CHANNEL) == [channel, thread, private]
    assert await store.memory_ids(GUILD, channel_id=THREAD) == [thread]
    assert await store.memory_ids(GUILD, author_id=BOB, channel_id=CHANNEL) == []
    assert await store.memory_ids(GUILD, channel_id=OTHER_CHANNEL) == [bobs]


async def test_drawing_on_finds_the_later_memories_whose_prompt_held_it(store):
    source = await store.write_turn(said("the recipe uses cardamom"))
    drew = await store.write_turn(said("what spice again?", drew_on=(UNKNOWN_ID, source)))
    # An id that merely starts with the same digits is another memory.
    await store.write_turn(said("unrelated", drew_on=(source * 10 + 1, int(f"1{source}"))))
    also = await store.write_turn(said("and the sugar?", drew_on=(source,), channel_id=OTHER_CHANNEL))
    assert ids(await store.drawing_on(GUILD, source)) == [drew, also]
    assert await store.drawing_on(GUILD, also) == []
    only_here = ChannelFilter(channels=frozenset({CHANNEL}))
    assert ids(await store.drawing_on(GUILD, source, channel_filter=only_here)) == [drew]


async def test_memories_by_id_are_the_scopes_own_oldest_first(store):
    written = await write_all(store, [said(f"note {i}") for i in range(3)])
    theirs = await store.write_turn(said("theirs", DM))
    asked = [written[2], theirs, UNKNOWN_ID, written[0], written[1]]
    assert ids(await store.memories_by_id(GUILD, asked)) == written
    assert await store.memories_by_id(GUILD, []) == []


# 8. Channels, servers left, and who the bot is


async def test_recording_a_servers_channels_says_whether_anything_changed(store):
    channels = [
        ChannelVisibility(CHANNEL, None, True),
        ChannelVisibility(OTHER_CHANNEL, None, False),
        ChannelVisibility(THREAD, CHANNEL, True),
    ]
    assert await store.record_guild_channels(GUILD, channels)
    assert not await store.record_guild_channels(GUILD, reversed(channels))
    assert await store.record_guild_channels(GUILD, [*channels[:2], ChannelVisibility(THREAD, CHANNEL, False)])
    assert await store.record_guild_channels(GUILD, channels[:2])  # the thread is gone
    assert await store.thread_parent(GUILD, THREAD) is None
    assert await store.record_guild_channels(GUILD, channels)
    assert await store.record_guild_channels(OTHER_GUILD, channels)  # each server its own


async def test_a_threads_parent_is_the_recorded_one_of_its_server(store):
    await store.record_guild_channels(
        GUILD, [ChannelVisibility(CHANNEL, None, True), ChannelVisibility(THREAD, CHANNEL, True)]
    )
    assert await store.thread_parent(GUILD, THREAD) == CHANNEL
    assert await store.thread_parent(GUILD, CHANNEL) is None
    assert await store.thread_parent(GUILD, UNKNOWN_ID) is None
    assert await store.thread_parent(OTHER_GUILD, THREAD) is None
    assert await store.thread_parent(OTHER_BOT, THREAD) is None
    await store.forget_guild_channels(GUILD)
    assert await store.thread_parent(GUILD, THREAD) is None
    assert await store.record_guild_channels(GUILD, [ChannelVisibility(THREAD, CHANNEL, True)])


async def test_the_public_channels_of_a_server_are_those_recorded_public_now(store):
    channel = await store.write_turn(said("in a public channel"))
    thread = await store.write_turn(said("its public thread", channel_id=THREAD, parent_channel_id=CHANNEL))
    private = await store.write_turn(
        said("its private thread", channel_id=PRIVATE_THREAD, parent_channel_id=CHANNEL, private_thread=True)
    )
    hidden = await store.write_turn(said("in a private channel", channel_id=OTHER_CHANNEL))
    public_here = ChannelFilter(public_of_guild=GUILD)
    await store.record_guild_channels(
        GUILD, [ChannelVisibility(CHANNEL, None, True), ChannelVisibility(OTHER_CHANNEL, None, False)]
    )
    # Another bot's record of the same server says nothing about this bot's.
    await store.record_guild_channels(OTHER_BOT, [ChannelVisibility(OTHER_CHANNEL, None, True)])
    assert await store.memory_ids(GUILD) == [channel, thread, private, hidden]
    assert ids(await store.list_memories(GUILD, channel_filter=public_here))[::-1] == [channel, thread]
    assert sorted(await searched_ids(store, GUILD, "private", channel_filter=public_here)) == []
    await store.record_guild_channels(
        GUILD, [ChannelVisibility(CHANNEL, None, False), ChannelVisibility(OTHER_CHANNEL, None, True)]
    )
    assert ids(await store.list_memories(GUILD, channel_filter=public_here)) == [hidden]
    await store.forget_guild_channels(GUILD)
    assert await store.count_memories(GUILD, channel_filter=public_here) == 0


async def test_a_departure_keeps_its_first_time_until_it_is_cleared(store):
    assert await store.departures(BOT) == {}
    await store.note_departures(BOT, [10, 20], at=T0)
    await store.note_departures(BOT, [20, 30], at=T0 + 60)
    await store.note_departures(BOT + 1, [40], at=T0)
    assert await store.departures(BOT) == {10: T0, 20: T0, 30: T0 + 60}
    await store.clear_departures(BOT, [10, 99])
    assert await store.departures(BOT) == {20: T0, 30: T0 + 60}
    assert await store.departures(BOT + 1) == {40: T0}
    await store.note_departures(BOT, [], at=T0)
    await store.clear_departures(BOT, [])


async def test_the_remembered_servers_are_those_holding_a_memory_of_this_bot(store):
    assert await store.remembered_guilds(BOT) == []
    await store.write_turn(said("here", GUILD))
    gone = await store.write_turn(said("there", OTHER_GUILD))
    await store.write_turn(said("a DM", DM))
    await store.write_turn(said("another bot", Scope.for_guild(BOT + 1, 30)))
    assert sorted(await store.remembered_guilds(BOT)) == [GUILD.id, OTHER_GUILD.id]
    await store.forget(OTHER_GUILD, gone, actor_id=None, reason="server left")
    assert await store.remembered_guilds(BOT) == [GUILD.id]
    assert await store.remembered_guilds(BOT + 1) == [30]


async def test_a_login_may_be_recorded_again_under_a_new_name_and_the_last_one_is_known(store):
    assert await store.last_bot_id() is None
    await store.record_login(BOT, "Mnemo#0001")
    await store.record_login(BOT, "Mnemo Renamed#0001")
    assert await store.last_bot_id() == BOT
    await asyncio.sleep(0.01)
    await store.record_login(BOT + 1, "Other#0002")
    assert await store.last_bot_id() == BOT + 1


# 9. Counts for /status


async def test_counts_tally_memories_pins_and_scopes_and_the_last_event_grows(store):
    assert await store.counts() == MemoryCounts(memories=0, pinned=0, guilds=0, dms=0, last_event_id=0)
    written = await write_all(store, [said("a", GUILD), said("b", GUILD), said("c", OTHER_GUILD), said("d", DM)])
    written_counts = await store.counts()
    assert (written_counts.memories, written_counts.pinned, written_counts.guilds, written_counts.dms) == (4, 0, 2, 1)
    await store.pin(GUILD, written[0], actor_id=ALICE, pin_cap=PIN_CAP)
    pinned_counts = await store.counts()
    assert (pinned_counts.memories, pinned_counts.pinned) == (4, 1)
    await store.forget(DM, written[3], actor_id=ALICE)
    forgotten_counts = await store.counts()
    assert (forgotten_counts.memories, forgotten_counts.dms) == (3, 0)
    event_ids = [c.last_event_id for c in (written_counts, pinned_counts, forgotten_counts)]
    assert 0 < event_ids[0] < event_ids[1] < event_ids[2]
