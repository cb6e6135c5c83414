"""What is said where only some may read stays there: recall in other channels, and /memory,
through the real client and the fake Discord's permission overwrites and threads."""

import asyncio
import json

import discord
import pytest

from companion.config import ConfigError, load_config
from storage.commands import TurnRecord
from tests.backend_queries import query
from tests.harness import (
    BOB,
    BOT_ID,
    CAROL,
    CHAT_MODEL,
    GUILD_A,
    LISTEN_CHANNEL,
    OTHER_CHANNEL,
    QUIET_CHANNEL,
    SCOPE_A,
    THREAD_IN_LISTEN,
)
from tests.test_recall_cli import cli_config, run_cli

PRIVATE_THREAD = 105
STAFF_THREAD = 106
NO_SUCH = "There's no such memory here."
MANAGE_THREADS = discord.Permissions(
    view_channel=True, send_messages=True, read_message_history=True, manage_threads=True
).value


async def recorded_public(bot) -> dict[int, bool]:
    rows = await query(
        bot, "SELECT channel_id, public FROM channel_visibility WHERE bot_id = ? AND guild_id = ?", BOT_ID, GUILD_A
    )
    return {channel_id: bool(public) for channel_id, public in rows}


async def wait_for_recorded(bot, expected: dict[int, bool]) -> None:
    async with asyncio.timeout(10):
        while (await recorded_public(bot)).items() < expected.items():
            await asyncio.sleep(0.02)


async def start(harness, **memory):
    """A bot listening in #listen, #other (made private to Bob) and their threads."""
    bot = await harness.start_bot(
        discord={"listen_channel_ids": [LISTEN_CHANNEL, OTHER_CHANNEL]}, memory=memory or {"recall_size": 10}
    )
    await wait_for_recorded(bot, {LISTEN_CHANNEL: True, OTHER_CHANNEL: True})
    harness.discord.make_channel_private(OTHER_CHANNEL, [BOB])
    await wait_for_recorded(bot, {OTHER_CHANNEL: False})
    return bot


async def remembered(harness, channel_id: int, author_id: int, text: str) -> int:
    """Say something where the bot listens; the id of its memory."""
    bot = harness.bot
    before = await bot.store.count_memories(SCOPE_A)
    await harness.say(channel_id, author_id, text)
    await harness.wait_for_memories(before + 1)
    [memory] = await bot.store.list_memories(SCOPE_A, limit=1)
    return memory.id


async def prompt_after(harness, channel_id: int, author_id: int, text: str) -> str:
    """The prompt the bot answered `text` with."""
    await harness.say(channel_id, author_id, text)
    return json.dumps(harness.llm.requests_for(CHAT_MODEL)[-1].body["messages"])


async def answer(harness, user_id: int, command: str, channel_id: int = LISTEN_CHANNEL, **options) -> str:
    interaction = await harness.discord.invoke(
        user_id, command, guild_id=GUILD_A, channel_id=channel_id, options=options
    )
    response = await interaction.answer()
    assert response["ephemeral"], response
    return response["content"]


async def test_a_private_channels_memories_never_reach_a_prompt_elsewhere(harness, tmp_path):
    await start(harness)
    secret = await remembered(harness, OTHER_CHANNEL, BOB, "the surprise party venue is the Quokka Lounge")
    await remembered(harness, LISTEN_CHANNEL, CAROL, "the picnic is at Wombat Park on saturday")
    # Pinned too, it stays in its channel: pins reach every prompt that may hold them.
    assert (await answer(harness, BOB, "memory pin", OTHER_CHANNEL, id=secret)).startswith(f"Pinned #{secret}")

    assert "Quokka" not in await prompt_after(harness, LISTEN_CHANNEL, CAROL, "where is the surprise party venue?")
    assert "Quokka" not in await prompt_after(harness, THREAD_IN_LISTEN, CAROL, "party venue, anyone?")
    # Where it was said, it is recalled; and what was said in public flows into the private channel.
    here = await prompt_after(harness, OTHER_CHANNEL, BOB, "which venue for the surprise party? and the picnic?")
    assert "Quokka Lounge" in here and "Wombat Park" in here
    # A thread of the private channel has the same audience: each recalls the other, nothing leaves.
    harness.discord.add_thread(STAFF_THREAD, OTHER_CHANNEL)
    await wait_for_recorded(harness.bot, {STAFF_THREAD: False})
    await remembered(harness, STAFF_THREAD, BOB, "the party cake comes from Bilby Bakery")
    assert "Quokka" in await prompt_after(harness, STAFF_THREAD, BOB, "what venue did we pick for the party?")
    assert "Bilby" in await prompt_after(harness, OTHER_CHANNEL, BOB, "where is the party cake from?")
    assert "Bilby" not in await prompt_after(harness, LISTEN_CHANNEL, CAROL, "where is the party cake from?")

    # The command line shows what those prompts got.
    config = cli_config(harness, tmp_path)
    for channel_id, shown in ((LISTEN_CHANNEL, False), (THREAD_IN_LISTEN, False), (OTHER_CHANNEL, True)):
        code, out, err = await run_cli(
            "recall", "--guild", str(GUILD_A), "--channel", str(channel_id), "--config", str(config), "party venue"
        )
        assert code == 0, err
        assert ("Quokka" in out) is shown, (channel_id, out)


async def test_memory_commands_show_each_member_only_what_they_may_read(harness):
    await start(harness)
    secret = await remembered(harness, OTHER_CHANNEL, BOB, "my locker combination is 4-8-15")
    public = await remembered(harness, LISTEN_CHANNEL, BOB, "the locker room opens at nine")

    listed = await answer(harness, CAROL, "memory list")
    assert f"#{public}" in listed and "4-8-15" not in listed and f"#{secret} " not in listed
    searched = await answer(harness, CAROL, "memory search", query="locker combination")
    assert "4-8-15" not in searched and f"#{public}" in searched
    # An id from a channel they may not read is answered like one that never existed, even for
    # a moderator (Manage Messages lets one change memories, not read channels).
    for command in ("memory pin", "memory forget"):
        assert await answer(harness, CAROL, command, id=secret) == NO_SUCH
    # Those who may read the channel see it, wherever they ask from.
    assert "4-8-15" in await answer(harness, BOB, "memory list")
    assert "4-8-15" in await answer(harness, BOB, "memory search", query="locker combination")
    # A channel opened to someone later opens its memories to them too.
    harness.discord.make_channel_private(OTHER_CHANNEL, [BOB, CAROL])
    async with asyncio.timeout(10):
        while "4-8-15" not in await answer(harness, CAROL, "memory list"):
            await asyncio.sleep(0.05)


async def test_a_private_threads_memories_stay_with_its_people(harness):
    bot = await start(harness)
    harness.discord.add_thread(PRIVATE_THREAD, LISTEN_CHANNEL, private=True, member_ids=[BOB])
    await wait_for_recorded(bot, {PRIVATE_THREAD: False})
    said = await remembered(harness, PRIVATE_THREAD, BOB, "my new job starts at Platypus Corp in March")
    await remembered(harness, LISTEN_CHANNEL, CAROL, "the channel's rule: no spoilers for the film")

    assert "Platypus" not in await prompt_after(harness, LISTEN_CHANNEL, CAROL, "where does someone start a new job?")
    assert "Platypus" not in await prompt_after(harness, THREAD_IN_LISTEN, CAROL, "who has a new job?")
    # In the thread: what was said there, and in its channel.
    there = await prompt_after(harness, PRIVATE_THREAD, BOB, "remind me about my new job and the film rule")
    assert "Platypus" in there and "spoilers" in there

    # /memory: its author sees it, and members who manage the channel's threads; nobody else.
    assert "Platypus" in await answer(harness, BOB, "memory list")
    assert "Platypus" not in await answer(harness, CAROL, "memory list")
    harness.discord.set_member_permissions(GUILD_A, CAROL, MANAGE_THREADS)
    async with asyncio.timeout(10):
        while "Platypus" not in await answer(harness, CAROL, "memory list"):
            await asyncio.sleep(0.05)
    assert (await answer(harness, CAROL, "memory forget", id=said)).startswith("You can't change that memory")


async def test_share_across_channels_all_and_none(harness, tmp_path):
    writer = await harness.start_bot()
    for channel_id, text in (
        (OTHER_CHANNEL, "the treasure is under the Kookaburra bridge"),
        (QUIET_CHANNEL, "the treasure map was drawn by Numbat Ned"),
    ):
        await writer.store.write_turn(TurnRecord(SCOPE_A, channel_id, BOB, "Bob", "Mnemo", text, "noted"))
    await harness.stop_bot()

    # "all": anything said in the server, private channels included.
    await start(harness, share_across_channels="all")
    prompt = await prompt_after(harness, LISTEN_CHANNEL, CAROL, "where is the treasure? who drew the map?")
    assert "Kookaburra" in prompt and "Numbat" in prompt
    await harness.stop_bot()

    # "none": only what was said in this channel (and a thread's channel), public ones or not.
    await start(harness, share_across_channels="none")
    prompt = await prompt_after(harness, LISTEN_CHANNEL, CAROL, "where is the treasure? who drew the map?")
    assert "Kookaburra" not in prompt and "Numbat" not in prompt
    await harness.stop_bot()

    # "public" (the default): public channels only.
    await start(harness)
    prompt = await prompt_after(harness, LISTEN_CHANNEL, CAROL, "where is the treasure? who drew the map?")
    assert "Kookaburra" not in prompt and "Numbat" in prompt

    bad = tmp_path / "bad.toml"
    bad.write_text('[memory]\nshare_across_channels = "everyone"\n')
    with pytest.raises(ConfigError, match='share_across_channels must be one of "public", "all", "none"'):
        load_config(bad)
