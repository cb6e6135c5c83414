"""Smoke tests: the real discord.py client (commands.Bot) against the in-process fake Discord."""

# isort: off
# The fake must be imported before discord: it silences the one DeprecationWarning discord.py's
# import of the stdlib `audioop` raises on Python 3.11, which `-W error` would turn into a failure.
from tests.fakes.discord_server import (
    FakeDiscord,
    FakeInteraction,
    pointing_discord_py_at,
    running_client,
)

# isort: on
import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

OWNER, ALICE, BOB = 1, 2, 3
GUILD, GENERAL, RANDOM, THREAD = 100, 101, 102, 103


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------


def make_bot(*, message_content: bool = True) -> commands.Bot:
    intents = discord.Intents.default()
    intents.message_content = message_content
    return commands.Bot(
        command_prefix=commands.when_mentioned,
        intents=intents,
        guild_ready_timeout=0.1,  # the default waits 2 s for GUILD_CREATEs before on_ready
        allowed_mentions=discord.AllowedMentions.none(),
        help_command=None,
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    fake.add_user(ALICE, "alice", global_name="Alice")
    fake.add_user(BOB, "bob")
    fake.add_guild(
        GUILD,
        "test guild",
        owner_id=OWNER,
        channel_ids=[GENERAL, RANDOM],
        member_ids=[ALICE, BOB],
        threads={THREAD: GENERAL},
    )
    await fake.start()
    try:
        with pointing_discord_py_at(fake):
            yield fake
    finally:
        await fake.stop()
    assert fake.unhandled == [], "the bot called REST routes the fake does not serve"


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        # Logged once per process by the first Client(); voice is not used here.
        if "voice will NOT be supported" not in record.getMessage():
            self.records.append(record)


@pytest.fixture
def discord_log() -> Iterator[list[logging.LogRecord]]:
    """Warnings and errors from discord.py (swallowed handler exceptions) and asyncio (destroyed
    pending tasks). Tests that provoke warnings on purpose clear the list."""
    records: list[logging.LogRecord] = []
    handler = _Collect(records)
    loggers = [logging.getLogger("discord"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
async def bot(fake: FakeDiscord, discord_log: list[logging.LogRecord]) -> AsyncIterator[commands.Bot]:
    bot = make_bot()
    async with running_client(fake, bot):
        yield bot
    gc.collect()  # surface "Task was destroyed but it is pending" while we still listen
    assert [r.getMessage() for r in discord_log] == []


# ---------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------


async def test_login_and_gateway_handshake(fake: FakeDiscord, bot: commands.Bot) -> None:
    assert ("GET", "/users/@me") in fake.requests
    assert ("GET", "/oauth2/applications/@me") in fake.requests
    assert fake.connections == 1
    assert bot.user is not None and bot.user.id == fake.bot_user_id
    assert bot.application is not None and bot.application.owner.id == OWNER
    guild = bot.get_guild(GUILD)
    assert guild is not None and guild.member_count == 4  # alice, bob, owner and the bot
    assert {c.id for c in guild.text_channels} == {GENERAL, RANDOM}
    thread = guild.get_thread(THREAD)
    assert thread is not None and thread.parent_id == GENERAL
    assert guild.default_role.id == GUILD


async def test_mention_command_gets_reply(fake: FakeDiscord, bot: commands.Bot) -> None:
    seen: dict[str, Any] = {}

    @bot.command()
    async def remember(ctx: commands.Context, *, text: str) -> None:
        seen["author"] = ctx.author
        async with ctx.typing():
            await ctx.reply(f"remembered {text!r}")

    sent = await fake.send_message(GENERAL, ALICE, f"<@{fake.bot_user_id}> remember tea")
    [reply] = await fake.wait_for_bot_messages(channel_id=GENERAL)

    assert reply["content"] == "remembered 'tea'"
    assert int(reply["message_reference"]["message_id"]) == int(sent["id"])
    assert reply["allowed_mentions"] == {"parse": []}  # the bot-wide AllowedMentions.none()
    assert reply["mentions"] == []  # AllowedMentions.none(): the reply pings nobody
    assert fake.typing == [GENERAL]
    author = seen["author"]
    assert isinstance(author, discord.Member)
    assert author.display_name == "Alice"
    assert author.guild_permissions.send_messages
    assert not author.guild_permissions.manage_messages


async def test_message_content_needs_the_intent(fake: FakeDiscord, discord_log: list[logging.LogRecord]) -> None:
    bot = make_bot(message_content=False)
    contents: list[str] = []
    all_seen = asyncio.Event()

    async def on_message(message: discord.Message) -> None:
        contents.append(message.content)
        if len(contents) == 3:
            all_seen.set()

    bot.add_listener(on_message)
    async with running_client(fake, bot):
        await fake.send_message(GENERAL, ALICE, "secret plans")
        await fake.send_message(GENERAL, ALICE, f"hello <@{fake.bot_user_id}>")
        await fake.send_dm(ALICE, "dm text")
        await asyncio.wait_for(all_seen.wait(), 5)
    # Without the intent, Discord blanks guild messages unless they mention the bot.
    assert contents == ["", f"hello <@{fake.bot_user_id}>", "dm text"]
    assert discord_log == []


async def test_dm_message_and_dm_slash_command(fake: FakeDiscord, bot: commands.Bot) -> None:
    seen: dict[str, Any] = {}

    async def on_message(message: discord.Message) -> None:
        if message.guild is None and message.author != bot.user:
            seen["channel"] = message.channel
            dm = await message.author.create_dm()
            await dm.send(f"hi {message.author.name}")

    bot.add_listener(on_message)

    @bot.tree.command(name="whoami", description="Who am I?")
    async def whoami(interaction: discord.Interaction) -> None:
        seen["user"], seen["interaction_channel"] = interaction.user, interaction.channel
        await interaction.response.send_message(f"you are {interaction.user.name}")

    await bot.tree.sync()

    await fake.send_dm(ALICE, "hello")
    dm_channel = fake.dm_channel_id(ALICE)
    [reply] = await fake.wait_for_bot_messages(channel_id=dm_channel)
    assert reply["content"] == "hi alice"
    assert reply["guild_id"] is None
    assert isinstance(seen["channel"], discord.DMChannel) and seen["channel"].id == dm_channel

    interaction = await fake.invoke(ALICE, "whoami", guild_id=None)
    await interaction.wait_for_response()
    assert interaction.text() == "you are alice"
    assert type(seen["user"]) is discord.User  # DMs carry `user`, not `member`
    assert isinstance(seen["interaction_channel"], discord.DMChannel)
    assert seen["interaction_channel"].id == dm_channel


async def test_reply_to_bot_message_carries_referenced_message(fake: FakeDiscord, bot: commands.Bot) -> None:
    seen: dict[str, Any] = {}

    async def on_message(message: discord.Message) -> None:
        if message.author.bot or message.reference is None:
            return
        replied_to = message.reference.resolved
        assert isinstance(replied_to, discord.Message)
        seen["mentions"] = message.mentions
        if replied_to.author == bot.user:
            await message.channel.send(f"you replied to: {replied_to.content}")

    bot.add_listener(on_message)
    channel = bot.get_channel(GENERAL)
    assert isinstance(channel, discord.TextChannel)
    await channel.send("I remember tea")
    [mine] = await fake.wait_for_bot_messages()

    user_reply = await fake.send_message(GENERAL, ALICE, "and coffee", reply_to=mine["id"])
    assert user_reply["type"] == 19 and user_reply["referenced_message"]["id"] == str(mine["id"])
    messages = await fake.wait_for_bot_messages(2)
    assert messages[1]["content"] == "you replied to: I remember tea"
    assert [m.id for m in seen["mentions"]] == [fake.bot_user_id]  # replies ping the author by default


async def test_rest_failures_and_latency(
    fake: FakeDiscord, bot: commands.Bot, discord_log: list[logging.LogRecord]
) -> None:
    channel = bot.get_channel(RANDOM)
    assert isinstance(channel, discord.TextChannel)

    fake.fail_message_posts(403)
    with pytest.raises(discord.Forbidden) as forbidden:
        await channel.send("nope")
    assert forbidden.value.code == 50013

    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    assert too_long.value.status == 400 and too_long.value.code == 50035

    fake.fail_message_posts(429, retry_after=0.05)  # discord.py waits and retries by itself
    await channel.send("after the rate limit")
    assert [m["content"] for m in fake.bot_messages] == ["after the rate limit"]
    assert "rate limited" in discord_log[0].getMessage()
    discord_log.clear()

    fake.delay_message_posts(0.2)
    started = time.monotonic()
    await channel.send("slow")
    assert time.monotonic() - started >= 0.2


# ---------------------------------------------------------------------------------------------------
# Application commands
# ---------------------------------------------------------------------------------------------------


def memory_commands() -> app_commands.Group:
    memory = app_commands.Group(name="memory", description="Long-term memory")
    tag = app_commands.Group(name="tag", description="Tag memories", parent=memory)

    @memory.command(name="list", description="List memories")
    async def list_memories(interaction: discord.Interaction, limit: int = 3) -> None:
        await interaction.response.send_message(f"listing {limit}")

    @tag.command(name="add", description="Tag a memory")
    async def add_tag(interaction: discord.Interaction, memory_id: int, label: str) -> None:
        await interaction.response.send_message(f"tagged {memory_id} as {label}")

    @add_tag.autocomplete("memory_id")
    async def memory_ids(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
        return [app_commands.Choice(name=f"memory {i}", value=i) for i in (1, 12, 123, 7) if str(i).startswith(current)]

    return memory


async def test_slash_subcommand_group_with_integer_option_and_autocomplete(
    fake: FakeDiscord, bot: commands.Bot
) -> None:
    bot.tree.add_command(memory_commands())
    await bot.tree.sync()

    [memory] = fake.registered_commands
    assert sorted((o["name"], o["type"]) for o in memory["options"]) == [("list", 1), ("tag", 2)]

    tagged = await fake.invoke(ALICE, "memory tag add", guild_id=GUILD, options={"memory_id": 12, "label": "food"})
    [response] = await tagged.wait_for_response()
    assert (response["kind"], response["type"], response["ephemeral"]) == ("callback", 4, False)
    assert response["content"] == "tagged 12 as food"
    options = tagged.payload["data"]["options"]
    assert options[0]["type"] == 2 and options[0]["options"][0]["type"] == 1
    assert options[0]["options"][0]["options"][0] == {"name": "memory_id", "type": 4, "value": 12}

    listed = await fake.invoke(ALICE, "memory list", guild_id=GUILD, options={})
    await listed.wait_for_response()
    assert listed.text() == "listing 3"

    choices = await fake.autocomplete(
        ALICE, "memory tag add", guild_id=GUILD, options={"memory_id": "1"}, focused="memory_id"
    )
    assert choices == [
        {"name": "memory 1", "value": 1},
        {"name": "memory 12", "value": 12},
        {"name": "memory 123", "value": 123},
    ]

    with pytest.raises(TypeError):  # the Discord client would not let a user type this
        await fake.invoke(ALICE, "memory tag add", guild_id=GUILD, options={"memory_id": "x", "label": "y"})


async def test_ephemeral_response_and_member_permissions(fake: FakeDiscord, bot: commands.Bot) -> None:
    seen: dict[int, discord.Permissions] = {}

    @bot.tree.command(name="status", description="Bot status")
    async def status(interaction: discord.Interaction) -> None:
        seen[interaction.user.id] = interaction.permissions
        await interaction.response.send_message("all good", ephemeral=True)

    await bot.tree.sync()
    fake.set_member_permissions(GUILD, BOB, discord.Permissions(manage_messages=True, send_messages=True).value)

    interaction = await fake.invoke(ALICE, "status", guild_id=GUILD, channel_id=RANDOM)
    [response] = await interaction.wait_for_response()
    assert response["ephemeral"] and response["flags"] & 64
    assert interaction.original is not None and interaction.original["content"] == "all good"
    assert fake.channel_messages(RANDOM) == []  # ephemeral messages are not in the channel

    await (await fake.invoke(BOB, "status", guild_id=GUILD)).wait_for_response()
    assert not seen[ALICE].manage_messages and seen[ALICE].send_messages
    assert seen[BOB].manage_messages
    member = bot.get_guild(GUILD).get_member(fake.bot_user_id)  # type: ignore[union-attr]
    assert member is not None and not member.guild_permissions.manage_messages


async def test_deferred_response_followups_and_edit(fake: FakeDiscord, bot: commands.Bot) -> None:
    fetched: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @bot.tree.command(name="recall", description="Recall memories")
    async def recall(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("found 2 memories")
        await interaction.followup.send("second page")
        await interaction.edit_original_response(content="found 2 memories (done)")
        fetched.set_result((await interaction.original_response()).content)

    await bot.tree.sync()
    interaction = await fake.invoke(BOB, "recall", guild_id=GUILD)
    responses = await interaction.wait_for_response(4)

    assert [r["kind"] for r in responses] == ["callback", "followup", "followup", "edit_original"]
    assert responses[0]["type"] == 5
    # Like Discord: the first followup after a deferral replaces the "thinking" message.
    assert responses[1]["message"]["id"] == responses[0]["message"]["id"]
    assert responses[2]["message"]["id"] != responses[0]["message"]["id"]
    assert interaction.original is not None
    assert interaction.original["content"] == "found 2 memories (done)"
    assert interaction.original["flags"] == 0  # no longer loading
    assert "second page" in interaction.text()
    assert await asyncio.wait_for(fetched, 5) == "found 2 memories (done)"  # GET @original


async def test_interaction_must_be_answered_within_the_deadline(
    fake: FakeDiscord, bot: commands.Bot, discord_log: list[logging.LogRecord]
) -> None:
    failure: asyncio.Future[discord.NotFound] = asyncio.get_running_loop().create_future()

    @bot.tree.command(name="slow", description="Too slow")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.2)
        try:
            await interaction.response.send_message("late")
        except discord.NotFound as exc:
            failure.set_result(exc)

    await bot.tree.sync()
    fake.interaction_deadline = 0.1  # Discord's is 3 s
    interaction = await fake.invoke(ALICE, "slow", guild_id=GUILD)
    assert (await asyncio.wait_for(failure, 5)).code == 10062  # Unknown interaction
    assert interaction.responses == []


# ---------------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------------


class ForgetView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Forget", style=discord.ButtonStyle.danger, custom_id="forget")
    async def forget(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content=f"forgotten by {interaction.user.name}", view=None)

    @discord.ui.button(label="Keep", custom_id="keep")
    async def keep(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()  # type 6 on a component: update the message later
        await interaction.edit_original_response(content="kept")


async def test_button_on_channel_message(fake: FakeDiscord, bot: commands.Bot) -> None:
    @bot.command()
    async def forget(ctx: commands.Context) -> None:
        await ctx.send("Forget this memory?", view=ForgetView())

    await fake.send_message(GENERAL, ALICE, f"<@{fake.bot_user_id}> forget")
    [prompt] = await fake.wait_for_bot_messages()
    buttons = [c["custom_id"] for row in prompt["components"] for c in row["components"]]
    assert buttons == ["forget", "keep"]

    keep = await fake.click(BOB, prompt, "keep")
    responses = await keep.wait_for_response(2)
    assert [(r["kind"], r["type"]) for r in responses] == [("callback", 6), ("edit_original", None)]
    assert fake.get_message(prompt["id"])["content"] == "kept"

    forget_click = await fake.click(ALICE, prompt, "forget")
    [update] = await forget_click.wait_for_response()
    assert update["type"] == 7
    message = fake.get_message(prompt["id"])
    assert message["content"] == "forgotten by alice" and message["components"] == []
    with pytest.raises(ValueError):  # the buttons are gone
        await fake.click(ALICE, prompt, "forget")


async def test_button_on_ephemeral_interaction_response(fake: FakeDiscord, bot: commands.Bot) -> None:
    @bot.tree.command(name="forget", description="Forget a memory")
    async def forget(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("Forget it?", view=ForgetView(), ephemeral=True)

    await bot.tree.sync()
    command: FakeInteraction = await fake.invoke(ALICE, "forget", guild_id=GUILD)
    await command.wait_for_response()
    assert command.original is not None

    click = await fake.click(ALICE, command.original, "forget")
    await click.wait_for_response()
    assert command.original["content"] == "forgotten by alice"
    assert command.original["flags"] & 64 and command.original["components"] == []


# ---------------------------------------------------------------------------------------------------
# Connection lifecycle
# ---------------------------------------------------------------------------------------------------


async def test_bot_reconnects_after_server_drop(fake: FakeDiscord, bot: commands.Bot) -> None:
    @bot.command()
    async def ping(ctx: commands.Context) -> None:
        await ctx.send("pong")

    await fake.disconnect()
    # Sent while the bot is away: kept in the session and replayed when the client RESUMEs.
    await fake.send_message(GENERAL, ALICE, f"<@{fake.bot_user_id}> ping")
    [pong] = await fake.wait_for_bot_messages()
    assert pong["content"] == "pong"
    assert (fake.connections, fake.resumes) == (1, 1)


async def test_restarted_bot_gets_a_fresh_session(fake: FakeDiscord, discord_log: list[logging.LogRecord]) -> None:
    for run in (1, 2):
        bot = make_bot()

        @bot.command()
        async def ping(ctx: commands.Context) -> None:
            await ctx.send(f"pong {run}")  # noqa: B023 -- each bot runs inside its own iteration

        async with running_client(fake, bot):
            assert fake.connections == run
            await fake.send_message(GENERAL, ALICE, f"<@{fake.bot_user_id}> ping")
            await fake.wait_for_bot_messages(run)
    assert [m["content"] for m in fake.bot_messages] == ["pong 1", "pong 2"]
    assert discord_log == []
