"""The bot forgets what Discord forgets: deleted messages, through the real client and the fake Discord."""

import asyncio
import json

from storage.scope import Scope
from tests.backend_queries import event_payloads, execute, tables_holding
from tests.fakes.llm_server import Answer
from tests.harness import (
    ALICE,
    B_CHANNEL,
    BOB,
    BOT_ID,
    CAROL,
    CHAT_MODEL,
    GUILD_A,
    GUILD_B,
    LISTEN_CHANNEL,
    OTHER_CHANNEL,
    SCOPE_A,
    SCOPE_B,
    THREAD_IN_LISTEN,
)
from tests.projection_check import live_and_rebuilt_of
from tests.test_recall_cli import cli_config, run_cli

OTHER_THREAD = 107


async def wait_until(predicate, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def memory_texts(bot) -> list[str]:
    return [m.user_text for m in reversed(await bot.store.list_memories(SCOPE_A, limit=100))]


async def forgotten_reasons(bot) -> list[str]:
    return [payload.get("reason") for payload in await event_payloads(bot, "memory_forgotten")]


async def assert_stored_nowhere(bot, *words: str, snapshots: bool = False) -> None:
    """No byte of the checkpointed SQLite database (and, with `snapshots`, of any snapshot) holds any of
    `words`; on PostgreSQL, no row of any table. Give the index's stems too."""
    await bot.store.checkpoint()
    if bot.db is None:
        assert await tables_holding(bot, *words) == []
        return
    paths = [bot.db.path, *(bot.config.storage.snapshots_dir.glob("*.db") if snapshots else [])]
    for path in paths:
        data = path.read_bytes()
        for word in words:
            assert word.encode() not in data, (word, path.name)


async def chat(harness, author_id: int, text: str) -> tuple[dict, dict]:
    """A message in the listen channel and the bot's reply to it, once remembered."""
    count = len(await memory_texts(harness.bot))
    sent = await harness.discord.send_message(LISTEN_CHANNEL, author_id, text)
    reply = (await harness.discord.wait_for_bot_messages(len(harness.replies()) + 1))[-1]
    await harness.wait_for_memories(count + 1)
    return sent, reply


async def test_a_deleted_message_takes_its_memory_with_it_everywhere(harness, tmp_path):
    bot = await harness.start_bot()
    address, _ = await chat(harness, ALICE, "my home address is 12 Quokkaflange Lane")
    await chat(harness, BOB, "nice weather today")
    await harness.wait_until_scored()
    if bot.db is not None:  # PostgreSQL keeps no snapshots
        await bot.operations.snapshot_now(kind="manual")

    harness.discord.delete_message(int(address["id"]))
    await wait_until(lambda: _gone(bot, "Quokkaflange"))
    assert await memory_texts(bot) == ["nice weather today"]
    assert await forgotten_reasons(bot) == ["deleted in Discord"]
    assert await bot.store.search(SCOPE_A, "Quokkaflange address", 10) == []
    # Not in the next prompt.
    await harness.say(LISTEN_CHANNEL, BOB, "where does Alice live again? her address?")
    assert "Quokkaflange" not in json.dumps(harness.llm.requests_for(CHAT_MODEL)[-1].body["messages"])
    # Once that turn is remembered and scored: on PostgreSQL the rebuild below reads the live log as it goes.
    await harness.wait_for_memories(2)
    await harness.wait_until_scored()
    # Nor in a byte of the checkpointed database or the snapshot (on PostgreSQL, in a row); nor its stem.
    await assert_stored_nowhere(bot, "Quokkaflange", "quokkaflang", snapshots=True)
    live, rebuilt = await live_and_rebuilt_of(bot, tmp_path)
    assert live == rebuilt


async def test_a_bulk_delete_and_a_deleted_reply_forget_their_memories(harness):
    bot = await harness.start_bot()
    first, _ = await chat(harness, ALICE, "first secret: zebrafish")
    second, _ = await chat(harness, BOB, "second secret: axolotl")
    _, reply = await chat(harness, ALICE, "third: the bot answers this one")
    await chat(harness, BOB, "this one stays")
    harness.discord.bulk_delete_messages(LISTEN_CHANNEL, [int(first["id"]), int(second["id"])])
    await wait_until(lambda: _count_is(bot, 2))
    # A moderator deletes one of the bot's replies: that turn goes too.
    harness.discord.delete_message(int(reply["id"]))
    await wait_until(lambda: _count_is(bot, 1))
    assert await memory_texts(bot) == ["this one stays"]
    assert await forgotten_reasons(bot) == ["deleted in Discord"] * 3


async def test_messages_the_bot_never_cached_are_forgotten_too(harness):
    bot = await harness.start_bot()
    old, _ = await chat(harness, ALICE, "from before a restart: the pelican plan")
    await harness.stop_bot()
    bot = await harness.start_bot()
    assert bot.get_partial_messageable(LISTEN_CHANNEL)  # a fresh client: the message is not in its cache
    assert not any(m.id == int(old["id"]) for m in bot.cached_messages)
    harness.discord.delete_message(int(old["id"]))
    await wait_until(lambda: _count_is(bot, 0))


async def test_a_message_deleted_while_the_bot_answers_is_not_remembered(harness):
    bot = await harness.start_bot()
    harness.llm.script(CHAT_MODEL, Answer("thinking about it...", delay=0.5))
    sent = await harness.discord.send_message(LISTEN_CHANNEL, ALICE, "oops, posted my password hunter2")
    await asyncio.sleep(0.2)
    harness.discord.delete_message(int(sent["id"]))
    await harness.discord.wait_for_bot_messages(1)
    await chat(harness, BOB, "a later turn, remembered")
    assert await memory_texts(bot) == ["a later turn, remembered"]


async def _gone(bot, word: str) -> bool:
    return all(word not in text for text in await memory_texts(bot))


async def _count_is(bot, count: int) -> bool:
    return await bot.store.count_memories(SCOPE_A) == count


async def test_a_deleted_channel_or_thread_takes_its_memories_with_it(harness):
    bot = await harness.start_bot(discord={"listen_channel_ids": [LISTEN_CHANNEL, OTHER_CHANNEL]})
    harness.discord.add_thread(OTHER_THREAD, OTHER_CHANNEL)
    for channel_id, text in (
        (OTHER_CHANNEL, "the old channel's plan: meet at the pier"),
        (OTHER_THREAD, "the old thread's detail: bring a lantern"),
        (THREAD_IN_LISTEN, "the listen thread's aside: the ferry is late"),
        (LISTEN_CHANNEL, "the listen channel stays"),
    ):
        await harness.say(channel_id, ALICE, text)
    await harness.wait_for_memories(4)

    harness.discord.delete_channel(OTHER_CHANNEL)  # its thread goes with it
    await wait_until(lambda: _count_is(bot, 2))
    assert await memory_texts(bot) == ["the listen thread's aside: the ferry is late", "the listen channel stays"]
    harness.discord.delete_channel(THREAD_IN_LISTEN)
    await wait_until(lambda: _count_is(bot, 1))
    assert await memory_texts(bot) == ["the listen channel stays"]
    assert await forgotten_reasons(bot) == ["its channel was deleted in Discord"] * 3
    await assert_stored_nowhere(bot, "pier", "lantern", "ferry")


async def test_a_server_that_removes_the_bot_is_forgotten_after_the_grace_period(harness):
    bot = await harness.start_bot(privacy={"removed_guild_grace_days": 0})
    await harness.say(B_CHANNEL, BOB, f"<@{BOT_ID}> guild B's secret: the heron", mentions=[BOT_ID])
    await chat(harness, ALICE, "guild A stays")
    await harness.wait_for_memories(2)
    harness.discord.remove_bot_from_guild(GUILD_B)
    await wait_until(lambda: _scope_count_is(bot, SCOPE_B, 0))
    assert await bot.store.count_memories(SCOPE_A) == 1
    assert await forgotten_reasons(bot) == ["the bot was removed from the server"]


async def test_a_server_that_adds_the_bot_back_within_the_grace_period_keeps_its_memories(harness):
    bot = await harness.start_bot()
    await harness.say(B_CHANNEL, BOB, f"<@{BOT_ID}> the heron nests here", mentions=[BOT_ID])
    await harness.wait_for_memories(1)
    harness.discord.remove_bot_from_guild(GUILD_B)
    await wait_until(lambda: _departed(bot, [GUILD_B]))
    harness.discord.add_guild(GUILD_B, "Guild B", owner_id=BOB, channel_ids=[B_CHANNEL], member_ids=[BOB, CAROL])
    await wait_until(lambda: _departed(bot, []))
    assert await bot.store.count_memories(SCOPE_B) == 1


async def test_a_removal_while_the_bot_was_away_is_caught_up_on_at_start(harness):
    bot = await harness.start_bot()
    await harness.say(B_CHANNEL, BOB, f"<@{BOT_ID}> remember the heron", mentions=[BOT_ID])
    await harness.wait_for_memories(1)
    await harness.stop_bot()
    # Removed while the bot was offline.
    guild = harness.discord.guilds.pop(GUILD_B)
    for channel_id in guild.channel_ids:
        harness.discord.channels.pop(channel_id, None)
    bot = await harness.start_bot()
    await wait_until(lambda: _departed(bot, [GUILD_B]))
    assert await bot.store.count_memories(SCOPE_B) == 1  # within the grace period
    # Eight days on, the next start forgets them.
    await harness.stop_bot()
    bot = await harness.start_bot(privacy={"removed_guild_grace_days": 7})
    await execute(bot, "UPDATE departed_guilds SET departed_at = departed_at - 8 * 86400")
    await bot.get_cog("Privacy").purge_due()
    assert await bot.store.count_memories(SCOPE_B) == 0


async def _scope_count_is(bot, scope, count: int) -> bool:
    return await bot.store.count_memories(scope) == count


async def _departed(bot, guild_ids: list[int]) -> bool:
    return sorted(await bot.store.departures(BOT_ID)) == guild_ids


async def test_forget_me_forgets_what_the_invoker_said_here_after_showing_the_count(harness):
    bot = await harness.start_bot()
    for text in ("bob one: my bank is Quokkabank", "bob two"):
        await chat(harness, BOB, text)
    await chat(harness, ALICE, "alice's own")
    await harness.say(B_CHANNEL, BOB, f"<@{BOT_ID}> bob in guild B", mentions=[BOT_ID])
    await harness.wait_for_memories(4)
    interaction = await harness.discord.invoke(BOB, "memory forget-me", guild_id=GUILD_A, channel_id=LISTEN_CHANNEL)
    [question] = await interaction.wait_for_response(1)
    assert question["ephemeral"] and "Forget all 2 memories of what you said here" in question["content"]
    click = await harness.discord.click(BOB, interaction.original, "memory:forget:confirm")
    await click.wait_for_response(1)
    async with asyncio.timeout(10):
        while "Forgotten 2 memories" not in interaction.original["content"]:
            await asyncio.sleep(0.02)
    assert await memory_texts(bot) == ["alice's own"]
    assert await bot.store.count_memories(SCOPE_B) == 1  # another server's are not "here"
    assert await forgotten_reasons(bot) == ["forget-me", "forget-me"]
    await assert_stored_nowhere(bot, "Quokkabank")


async def test_export_sends_the_invoker_only_their_own_memories_here(harness):
    bot = await harness.start_bot()
    await chat(harness, ALICE, "alice: I collect teapots")
    await chat(harness, BOB, "bob: not in alice's file")
    await chat(harness, ALICE, "alice again")
    interaction = await harness.discord.invoke(ALICE, "memory export", guild_id=GUILD_A, channel_id=LISTEN_CHANNEL)
    await interaction.wait_for_response(2)
    message = interaction.original
    assert message["flags"] & 64  # ephemeral
    [attachment] = message["attachments"]
    assert attachment["filename"] == "memories.json"
    document = json.loads(harness.discord.attachment_bytes(int(attachment["id"])))
    assert document["scope"] == str(SCOPE_A) and document["user_id"] == ALICE
    assert [m["user_text"] for m in document["memories"]] == ["alice: I collect teapots", "alice again"]
    assert all(m["author_id"] == ALICE and m["reply_text"] for m in document["memories"])
    assert len(await memory_texts(bot)) == 3  # nothing changed


async def test_owners_forget_a_person_who_left_from_the_command_line(harness, tmp_path):
    bot = await harness.start_bot()
    await chat(harness, BOB, "bob in A")
    await chat(harness, ALICE, "alice in A")
    await harness.say(B_CHANNEL, BOB, f"<@{BOT_ID}> bob in B", mentions=[BOT_ID])
    await harness.discord.send_message(harness.discord.dm_channel_id(BOB), BOB, "bob in his DMs")
    await harness.wait_for_memories(4)
    config = cli_config(harness, tmp_path)

    code, out, err = await run_cli("forget", "--user", str(BOB), "--guild", str(GUILD_B), "--config", str(config))
    assert code == 0, err
    assert out.strip().endswith(f"forgot 1 memories of user {BOB} in server {GUILD_B}")
    assert await bot.store.count_memories(SCOPE_B) == 0
    code, out, err = await run_cli("forget", "--user", str(BOB), "--config", str(config))
    assert code == 0, err
    assert out.strip().endswith(f"forgot 2 memories of user {BOB} in any server or their DMs")
    assert await memory_texts(bot) == ["alice in A"]
    assert await bot.store.count_memories(Scope.for_dm(BOT_ID, BOB)) == 0


async def test_an_edit_replaces_the_text_everywhere(harness, tmp_path):
    bot = await harness.start_bot()
    # The reply stays as Discord keeps showing it: here it does not repeat the address.
    harness.llm.script(CHAT_MODEL, Answer("Congratulations on the new flat!"))
    sent, _ = await chat(harness, ALICE, "my new flat is at 7 Wombatwhistle Road")
    await harness.wait_until_scored()
    [old] = await bot.store.list_memories(SCOPE_A)
    await run_command(harness, ALICE, "memory pin", id=old.id)
    if bot.db is not None:  # PostgreSQL keeps no snapshots
        await bot.operations.snapshot_now(kind="manual")

    harness.discord.edit_message(int(sent["id"]), "my new flat is somewhere in the north, never mind")
    await wait_until(lambda: _gone(bot, "Wombatwhistle"))
    [new] = await bot.store.list_memories(SCOPE_A)
    assert new.user_text == "my new flat is somewhere in the north, never mind"
    assert (new.user_message_id, new.created_at, new.reply_text) == (
        old.user_message_id,
        old.created_at,
        old.reply_text,
    )
    assert new.pinned and new.pin_auto is False  # the manual pin stays with the memory
    assert await forgotten_reasons(bot) == ["edited in Discord"]
    assert [h.memory.id for h in await bot.store.search(SCOPE_A, "north flat", 5)] == [new.id]
    assert await bot.store.search(SCOPE_A, "Wombatwhistle", 5) == []
    await assert_stored_nowhere(bot, "Wombatwhistle", "wombatwhistl", snapshots=True)
    await harness.wait_until_scored()  # quiet: on PostgreSQL the rebuild reads the live log as it goes
    live, rebuilt = await live_and_rebuilt_of(bot, tmp_path)
    assert live == rebuilt
    # Deleting the edited message still forgets its memory.
    harness.discord.delete_message(int(sent["id"]))
    await wait_until(lambda: _count_is(bot, 0))


async def run_command(harness, user_id: int, name: str, **options) -> str:
    interaction = await harness.discord.invoke(
        user_id, name, guild_id=GUILD_A, channel_id=LISTEN_CHANNEL, options=options
    )
    await interaction.wait_for_response(1)
    async with asyncio.timeout(10):
        while interaction.original["flags"] & 128:  # still "thinking"
            await asyncio.sleep(0.02)
    return interaction.original["content"]


async def test_forgetting_a_memory_offers_the_later_ones_that_drew_on_it(harness):
    bot = await harness.start_bot()
    await chat(harness, ALICE, "my locker code is 4-8-15-16")
    # The bot repeats it in the next turn: that memory's prompt held the first one.
    harness.llm.script(CHAT_MODEL, Answer("Sure: your locker code is 4-8-15-16."))
    await chat(harness, ALICE, "what was my locker code again?")
    first, second = [m.id for m in reversed(await bot.store.list_memories(SCOPE_A))]
    assert [m.id for m in await bot.store.drawing_on(SCOPE_A, first)] == [second]

    interaction = await harness.discord.invoke(
        ALICE, "memory forget", guild_id=GUILD_A, channel_id=LISTEN_CHANNEL, options={"id": first}
    )
    [question] = await interaction.wait_for_response(1)
    assert "1 later memory drew on it" in question["content"]
    click = await harness.discord.click(ALICE, interaction.original, "memory:forget:confirm-with-later")
    await click.wait_for_response(1)
    async with asyncio.timeout(10):
        while not interaction.original["content"].startswith("Forgotten"):
            await asyncio.sleep(0.02)
    assert "So are the 1 later memories that drew on it." in interaction.original["content"]
    assert await bot.store.count_memories(SCOPE_A) == 0
    assert await forgotten_reasons(bot) == ["", f"drew on forgotten #{first}"]
