"""Sharding (`[discord] shard_count`, `shard_ids`): the real discord.py client, one process or two,
against the fake Discord's per-shard gateway sessions."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
from discord.ext import commands

from bot import CompanionBot, ShardedCompanionBot, bot_class
from companion.config import ConfigError, load_config
from tests.fakes.discord_server import FakeDiscord, pointing_discord_py_at, running_client, shard_of
from tests.fakes.llm_server import Answer, FakeLLM, last_user_text
from tests.harness import (
    ALICE,
    APP_OWNER,
    BOB,
    BOT_ID,
    CHAT_MODEL,
    GUILD_A,
    GUILD_B,
    LISTEN_CHANNEL,
    Harness,
)

# The harness's guilds A (100) and B (200) are both on shard 0 of 2; this one is on shard 1.
GUILD_C = (1 << 22) + 300
C_CHANNEL = 301


@pytest.fixture(autouse=True)
def shard_one_guild(discord_fake: FakeDiscord) -> None:
    discord_fake.add_guild(GUILD_C, "Guild C", owner_id=ALICE, channel_ids=[C_CHANNEL], member_ids=[APP_OWNER, BOB])
    assert [shard_of(guild, 2) for guild in (GUILD_A, GUILD_B, GUILD_C, None)] == [0, 0, 1, 0]


@pytest.fixture
async def harness(tmp_path: Path, discord_fake: FakeDiscord, llm_fake: FakeLLM) -> AsyncIterator[Harness]:
    """The bot on SQLite only, in place of the shared fixture: sharding is the gateway's business."""
    first = Harness(tmp_path / "first", discord_fake, llm_fake)
    yield first
    await first.stop_bot()
    await first.restore_endpoints()


@pytest.fixture
async def second(tmp_path: Path, discord_fake: FakeDiscord, llm_fake: FakeLLM) -> AsyncIterator[Harness]:
    """A second bot process (in-process here) with its own data folder, on the same fake Discord."""
    other = Harness(tmp_path / "second", discord_fake, llm_fake)
    yield other
    await other.stop_bot()


def shards(*shard_ids: int) -> dict:
    """The [discord] keys for shards `shard_ids` of 2, with guild C's channel a listen channel too."""
    return {"shard_count": 2, "shard_ids": list(shard_ids), "listen_channel_ids": [LISTEN_CHANNEL, C_CHANNEL]}


def tagged(tag: str):
    """A chat responder whose answers say which bot (by its chat model) wrote them."""

    def respond(body: dict) -> Answer:
        return Answer(f"{tag} re: {last_user_text(body).split(': ', 1)[1]}")

    return respond


def messages_seen(bot: commands.Bot) -> list[int]:
    """The channels of every message from someone else that reaches this bot, in order."""
    channels: list[int] = []

    async def on_message(message: discord.Message) -> None:
        if message.author.id != BOT_ID:
            channels.append(message.channel.id)

    bot.add_listener(on_message)
    return channels


async def memory_channels(bot: CompanionBot) -> set[int]:
    async with bot.db.reader.execute("SELECT channel_id FROM memories") as cursor:
        return {channel_id for (channel_id,) in await cursor.fetchall()}


async def status_text(fake: FakeDiscord, guild_id: int) -> str:
    interaction = await fake.invoke(APP_OWNER, "status", guild_id=guild_id)
    await interaction.wait_for_response(2)  # deferred, then the answer
    return interaction.text()


async def test_one_process_running_both_shards_answers_in_every_guild_and_in_dms(harness):
    fake = harness.discord
    bot = await harness.start_bot(discord=shards(0, 1))
    assert isinstance(bot, ShardedCompanionBot) and isinstance(bot, discord.AutoShardedClient)
    assert (bot.shard_count, sorted(bot.shards)) == (2, [0, 1])
    assert sorted(fake.identified_shards) == [(0, 2), (1, 2)]
    assert {guild.id: guild.shard_id for guild in bot.guilds} == {GUILD_A: 0, GUILD_B: 0, GUILD_C: 1}

    dm = fake.dm_channel_id(ALICE)
    for channel, text in ((LISTEN_CHANNEL, "hello on shard 0"), (C_CHANNEL, "hello on shard 1"), (dm, "a DM")):
        reply = await harness.say(channel, ALICE, text)
        assert text in reply["content"]
    await harness.wait_for_memories(3)
    assert await memory_channels(bot) == {LISTEN_CHANNEL, C_CHANNEL, dm}
    # A slash command in guild C comes through shard 1's session; /status names the shards.
    assert "Shards 0, 1 of 2." in await status_text(fake, GUILD_C)


async def test_two_processes_each_get_and_answer_only_their_shards_guilds(harness, second):
    fake, llm = harness.discord, harness.llm
    llm.responders["chat-shard-0"] = tagged("shard 0")
    llm.responders["chat-shard-1"] = tagged("shard 1")
    bot0 = await harness.start_bot(discord=shards(0), llm={"chat_model": "chat-shard-0"})
    bot1 = await second.start_bot(discord=shards(1), llm={"chat_model": "chat-shard-1"})
    seen0, seen1 = messages_seen(bot0), messages_seen(bot1)
    assert sorted(fake.connected_shards()) == [(0, 2), (1, 2)]
    assert {guild.id for guild in bot0.guilds} == {GUILD_A, GUILD_B}
    assert {guild.id for guild in bot1.guilds} == {GUILD_C}

    dm = fake.dm_channel_id(ALICE)
    assert (await harness.say(LISTEN_CHANNEL, ALICE, "in A"))["content"] == "shard 0 re: in A"
    assert (await harness.say(C_CHANNEL, ALICE, "in C"))["content"] == "shard 1 re: in C"
    assert (await harness.say(dm, ALICE, "in a DM"))["content"] == "shard 0 re: in a DM"
    await harness.wait_for_memories(2)
    await second.wait_for_memories(1)
    await asyncio.sleep(0.2)  # room for a stray second answer to show up

    assert [len(harness.replies(channel)) for channel in (LISTEN_CHANNEL, C_CHANNEL, dm)] == [1, 1, 1]
    assert (seen0, seen1) == ([LISTEN_CHANNEL, dm], [C_CHANNEL])
    assert await memory_channels(bot0) == {LISTEN_CHANNEL, dm}
    assert await memory_channels(bot1) == {C_CHANNEL}
    assert [last_user_text(r.body) for r in llm.requests_for("chat-shard-1")] == ["Alice: in C"]
    assert "Shards 1 of 2." in await status_text(fake, GUILD_C)


async def test_messages_sent_quickly_in_one_channel_are_answered_in_order(harness):
    def responder(body: dict) -> Answer:
        text = last_user_text(body).split(": ", 1)[1]
        # The earlier a message, the slower its answer: only the per-channel lane keeps the order.
        return Answer(f"re: {text}", delay=0.05 * (4 - int(text.rsplit(" ", 1)[1])))

    harness.llm.responders[CHAT_MODEL] = responder
    await harness.start_bot(discord=shards(0, 1))
    sent: dict[int, list[int]] = {LISTEN_CHANNEL: [], C_CHANNEL: []}
    for n in range(5):
        for channel, ids in sent.items():
            ids.append(int((await harness.discord.send_message(channel, ALICE, f"message {n}"))["id"]))
    await harness.discord.wait_for_bot_messages(10)
    for channel, ids in sent.items():
        replies = harness.replies(channel)
        assert [reply["content"] for reply in replies] == [f"re: message {n}" for n in range(5)]
        assert [int(reply["message_reference"]["message_id"]) for reply in replies] == ids


async def test_a_shard_that_identifies_afresh_gets_its_guilds_back_and_the_other_carries_on(harness):
    fake = harness.discord
    bot = await harness.start_bot(discord=shards(0, 1))
    await fake.disconnect(shard_id=1, resumable=False)
    await fake.wait_for_connections(3)
    assert fake.identified_shards[-1] == (1, 2) and fake.resumes == 0
    assert {guild.id for guild in bot.guilds} == {GUILD_A, GUILD_B, GUILD_C}
    assert "shard 1" in (await harness.say(C_CHANNEL, ALICE, "back on shard 1"))["content"]
    assert "shard 0" in (await harness.say(LISTEN_CHANNEL, ALICE, "still on shard 0"))["content"]


async def _identify_at_once(shard_id: int | None, *, initial: bool = False) -> None:
    return None


async def test_a_sharded_client_without_a_count_takes_discords_recommendation(discord_fake):
    discord_fake.recommended_shards = 2
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.AutoShardedBot(
        command_prefix=commands.when_mentioned, intents=intents, help_command=None, guild_ready_timeout=0.05
    )
    bot.before_identify_hook = _identify_at_once  # type: ignore[method-assign]
    seen = messages_seen(bot)
    with pointing_discord_py_at(discord_fake):
        async with running_client(discord_fake, bot):
            assert ("GET", "/gateway/bot") in discord_fake.requests
            assert bot.shard_count == 2 and sorted(discord_fake.connected_shards()) == [(0, 2), (1, 2)]
            assert {guild.id for guild in bot.guilds} == {GUILD_A, GUILD_B, GUILD_C}
            await discord_fake.send_message(C_CHANNEL, ALICE, "one")
            await discord_fake.send_message(LISTEN_CHANNEL, ALICE, "two")
            async with asyncio.timeout(5):
                while len(seen) < 2:
                    await asyncio.sleep(0.01)
    assert sorted(seen) == sorted([C_CHANNEL, LISTEN_CHANNEL])


# configuration


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sharding_is_off_unless_shard_count_is_set(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert (config.discord.shard_count, config.discord.shard_ids, config.discord.sharded) == (0, (), False)
    assert bot_class(config) is CompanionBot

    config = load_config(write(tmp_path, "[discord]\nshard_count = 4\nshard_ids = [3, 0]\n"))
    assert (config.discord.shard_count, config.discord.shard_ids, config.discord.sharded) == (4, (3, 0), True)
    assert bot_class(config) is ShardedCompanionBot
    assert load_config(write(tmp_path, "[discord]\nshard_count = 2\n")).discord.shard_ids == ()


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("shard_ids = [0]", "[discord] shard_ids needs shard_count, the total number of shards across every process"),
        ("shard_count = 0\nshard_ids = [0]", "[discord] shard_ids needs shard_count"),
        (
            "shard_count = 2\nshard_ids = [0, 2]",
            "[discord] shard_ids must be below shard_count (2): shards are numbered 0 to 1, got 2",
        ),
        ("shard_count = 3\nshard_ids = [1, 2, 1]", "[discord] shard_ids lists shard 1 more than once"),
        ("shard_count = -1", "[discord] shard_count must be between 0 and 100000, got -1"),
        ("shard_count = '2'", "[discord] shard_count must be an integer, got a string ('2')"),
        ("shard_count = 2\nshard_ids = [-1]", "[discord] shard_ids must hold integers from 0 up, got an integer (-1)"),
        ("shard_count = 2\nshard_ids = [true]", "[discord] shard_ids must hold integers from 0 up, got a boolean"),
        ("shard_count = 2\nshard_ids = 1", "[discord] shard_ids must be a list of integers, got an integer (1)"),
    ],
)
def test_bad_shard_settings_give_one_readable_error(tmp_path, keys, expected):
    path = write(tmp_path, f"[discord]\n{keys}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
