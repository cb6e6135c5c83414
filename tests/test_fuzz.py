"""Bad input fuzz: property tests over message contents and slash-command arguments.

One bot per test runs in-process against the fake Discord and the fake LLM;
Hypothesis sends many examples through it. Guild A and Alice's DMs hold
secrets (a pinned memory each); every example happens in guild B or in
another user's DMs. For every example:

- nothing crashes: nothing is logged at ERROR, and the bot keeps answering;
- no message the bot sends, and no command answer, would ping anyone
  (the fake Discord applies `allowed_mentions` the way Discord does), even
  though the model's replies are full of @everyone, @here, role and user
  mentions;
- nothing leaks across scopes: the secrets are in no prompt the model gets
  and in no reply, command answer or autocomplete choice;
- ids outside 1..2**53-1 are refused by the Discord client (the fake checks
  option ranges like Discord does), and an id from another scope, a
  forgotten one or an unknown one gets exactly "There's no such memory here."

Examples are derandomized (`derandomize=True`, no example database), so CI
runs the same ones every time. The default run tries a few dozen per test;
the `soak` versions try hundreds.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cogs.chat import INTERNAL_ERROR_REPLY
from storage.commands import TurnRecord
from storage.scope import Scope
from tests.backend_queries import scalar
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import Answer, last_user_text
from tests.harness import (
    ALICE,
    APP_OWNER,
    B_CHANNEL,
    BOB,
    BOT_ID,
    CAROL,
    CHAT_MODEL,
    GUILD_A,
    GUILD_B,
    LISTEN_CHANNEL,
    SCOPE_A,
    SCOPE_B,
)

SECRET_A = "zebracorn-4471"  # pinned in guild A
SECRET_DM = "quokka-9902"  # pinned in Alice's DMs
SECRETS = (SECRET_A, SECRET_DM)
NO_SUCH = "There's no such memory here."
NOT_PERMITTED = "You can't change that memory"
GENERIC_ERROR = "Sorry, something went wrong"
MAX_ID = 2**53 - 1

SHORT = 30
LONG = 400


def fuzz_settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# What people type

TOKENS = [
    "@everyone",
    "@here",
    f"<@{ALICE}>",
    f"<@!{BOB}>",
    f"<@{BOT_ID}>",
    f"<@&{GUILD_A}>",
    f"<@&{GUILD_B}>",
    "<@&1>",
    "<@0>",
    "<@99999999999999999999999>",
    f"<#{LISTEN_CHANNEL}>",
    "```",
    "```py\n",
    "**",
    "__",
    "||",
    "> ",
    "# ",
    "\n",
    "\r\n",
    "\t",
    "\x00",
    "\x1b[31m",
    "\u200b",
    "\u200d",
    "\u202e",
    "\u2066",
    "\ufeff",
    "\uffff",
    "e\u0301\u0301\u0301",
    "👩\u200d👩\u200d👧\u200d👦",
    "🏳️\u200d🌈",
    "𝕳𝖊𝖑𝖑𝖔",
    "עברית",
    "مرحبا",
    "ﷺ",
    '"',
    "'",
    "NEAR(a b)",
    "a* OR b",
    "user_text:secret",
    "^x",
    "AND",
    "NOT",
    "(",
    ")",
    "'; DROP TABLE memories; --",
    "%",
    "_",
    "\\",
    SECRET_A[:6],
]
weird_characters = st.characters(categories=["Cc", "Cf", "Mn", "Zs", "Zl", "Zp", "So", "Co"])
pieces = st.one_of(
    st.text(max_size=30),
    st.sampled_from(TOKENS),
    st.text(alphabet=weird_characters, max_size=10),
)
contents = st.one_of(
    st.lists(pieces, max_size=25).map("".join),
    # Huge, or many of one thing: mass mentions, a wall of emoji, 4000 NULs.
    st.builds(
        lambda piece, times: (piece * times)[:4000], st.sampled_from([*TOKENS, "a", "word "]), st.integers(1, 4000)
    ),
)


def mass_mention_reply(body: dict) -> Answer:
    """The model answers with every ping it can think of, and echoes the user."""
    pings = f"@everyone @here <@&{GUILD_A}> <@&{GUILD_B}> <@{ALICE}> <@!{BOB}> <@{CAROL}>"
    return Answer(f"{pings} {last_user_text(body)}")


# The world


@dataclass
class World:
    harness: object
    fake: FakeDiscord
    ids: dict[str, int]  # named memories
    scopes: dict[int, Scope]
    authors: dict[int, int]
    llm_mark: int  # requests before this were about the seeds
    checked: dict[str, int] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)

    def scope_of(self, user_id: int, where: str) -> Scope:
        return SCOPE_B if where == "guild-b" else Scope.for_dm(BOT_ID, user_id)


@pytest.fixture
async def world(harness):
    """A running bot whose guild A and Alice's DMs hold pinned secrets."""
    harness.llm.responders[CHAT_MODEL] = mass_mention_reply
    bot = await harness.start_bot(discord={"listen_channel_ids": [LISTEN_CHANNEL, B_CHANNEL]})
    bot.scoring.pause()  # the seeds are scored by hand below
    seeds = {
        "a-secret": (SCOPE_A, ALICE, f"the vault code is {SECRET_A}"),
        "alice-dm": (Scope.for_dm(BOT_ID, ALICE), ALICE, f"my diary password is {SECRET_DM}"),
        "b-bob": (SCOPE_B, BOB, "bob likes green tea"),
        "b-carol": (SCOPE_B, CAROL, "carol plays chess on sundays"),
        "dm-carol": (Scope.for_dm(BOT_ID, CAROL), CAROL, "carol's cat is called Pixel"),
        "dm-bob": (Scope.for_dm(BOT_ID, BOB), BOB, "bob's train leaves at six"),
        "dm-owner": (Scope.for_dm(BOT_ID, APP_OWNER), APP_OWNER, "the owner's own note"),
        "forgotten": (SCOPE_B, BOB, "something bob wanted forgotten"),
    }
    ids, scopes, authors = {}, {}, {}
    for name, (scope, author, text) in seeds.items():
        channel = B_CHANNEL if scope == SCOPE_B else LISTEN_CHANNEL  # DMs' channel is no matter here
        record = TurnRecord(scope, channel, author, f"user{author}", "Mnemo", text, "noted")
        memory_id = await bot.store.write_turn(record)
        ids[name], scopes[memory_id], authors[memory_id] = memory_id, scope, author
        score = 3 if name in ("a-secret", "alice-dm") else 1
        await bot.store.record_significance(memory_id, score, model="m", pin_cap=8)
    await bot.store.forget(SCOPE_B, ids["forgotten"], actor_id=BOB)
    del scopes[ids["forgotten"]]
    await bot.scoring.resume()
    world = World(harness, harness.discord, ids, scopes, authors, llm_mark=len(harness.llm.requests))
    yield world
    print(f"\nfuzz outcomes: {dict(sorted(world.stats.items()))}")


def no_pings(message: dict) -> None:
    """Nobody would be pinged by this message, as Discord computes it."""
    assert message["mentions"] == [], message["content"][:200]
    assert message["mention_roles"] == [], message["content"][:200]
    assert not message["mention_everyone"], message["content"][:200]


def no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret from another scope leaked: {text[:300]!r}"


def check_everything_since(world: World, caplog) -> None:
    """No ERROR logged, no ping sent, no secret in any prompt or anything the bot said, since last time."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    fake = world.fake
    for record in fake.bot_messages[world.checked.get("messages", 0) :]:
        no_pings(fake.get_message(record["id"]))
        no_secrets(record["content"])
    world.checked["messages"] = len(fake.bot_messages)
    for interaction in fake.interactions[world.checked.get("interactions", 0) :]:
        no_secrets(interaction.text())
        no_secrets(repr(interaction.choices))
        for response in interaction.responses:
            if response["message"] is not None:
                no_pings(fake.get_message(response["message"]["id"]))
    world.checked["interactions"] = len(fake.interactions)
    for request in world.harness.llm.requests[max(world.llm_mark, world.checked.get("requests", 0)) :]:
        no_secrets(request.text)
    world.checked["requests"] = len(world.harness.llm.requests)


# Messages


async def send_and_wait(world: World, content: str, author: int, where: str, everyone: bool) -> None:
    fake = world.fake
    channel_id = B_CHANNEL if where == "guild-b" else fake.dm_channel_id(author)
    message = await fake.send_message(channel_id, author, content, mention_everyone=everyone)
    message_id = int(message["id"])
    bot = world.harness.bot
    async with asyncio.timeout(15):
        while True:
            replies = [
                m
                for m in fake.bot_messages
                if int((m.get("message_reference") or {}).get("message_id") or 0) == message_id
            ]
            if replies:
                assert replies[0]["content"] != INTERNAL_ERROR_REPLY
                if await scalar(bot, "SELECT count(*) FROM memories WHERE user_message_id = ?", message_id):
                    return
            await asyncio.sleep(0.01)


async def check_message(world: World, caplog, content: str, author: int, where: str, everyone: bool) -> None:
    before = len(world.fake.bot_messages)
    await send_and_wait(world, content, author, where, everyone)
    check_everything_since(world, caplog)
    world.stats["messages answered"] += 1
    world.stats["reply messages"] += len(world.fake.bot_messages) - before
    world.stats["messages over 2000 chars"] += len(content) > 2000
    world.stats["messages with mention syntax"] += bool(re.search(r"@everyone|@here|<@", content))


message_examples = dict(
    content=contents,
    author=st.sampled_from([BOB, CAROL]),
    where=st.sampled_from(["guild-b", "dm"]),
    everyone=st.booleans(),
)


@fuzz_settings(SHORT)
@given(**message_examples)
async def test_fuzzed_messages(world, caplog, content, author, where, everyone):
    await check_message(world, caplog, content, author, where, everyone)


@pytest.mark.soak
@pytest.mark.timeout(900)
@fuzz_settings(LONG)
@given(**message_examples)
async def test_fuzzed_messages_soak(world, caplog, content, author, where, everyone):
    await check_message(world, caplog, content, author, where, everyone)


# /memory pin, unpin and forget, with any id


NAMED_IDS = ["a-secret", "alice-dm", "forgotten", "b-bob", "b-carol", "dm-carol", "dm-bob", "dm-owner"]
id_values = st.one_of(
    st.sampled_from(NAMED_IDS),
    st.sampled_from([0, -1, 1, MAX_ID, MAX_ID + 1, 2**63 - 1, 2**63, 2**64, -(2**63), 10**6]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=1, max_value=40),
)
invokers = st.sampled_from([(BOB, "guild-b"), (CAROL, "guild-b"), (CAROL, "dm"), (BOB, "dm"), (APP_OWNER, "dm")])


async def check_id_command(world: World, caplog, command: str, value: int | str, invoker: tuple[int, str]) -> None:
    user, where = invoker
    fake = world.fake
    memory_id = world.ids[value] if isinstance(value, str) else value
    guild_id, channel_id = (GUILD_B, B_CHANNEL) if where == "guild-b" else (None, None)
    options = {"id": memory_id}
    if not 1 <= memory_id <= MAX_ID:
        # Discord's client refuses the value; the bot never sees it.
        with pytest.raises(ValueError, match="out of range"):
            await fake.invoke(user, f"memory {command}", guild_id=guild_id, channel_id=channel_id, options=options)
        world.stats["ids refused by the client"] += 1
        return
    interaction = await fake.invoke(
        user, f"memory {command}", guild_id=guild_id, channel_id=channel_id, options=options
    )
    answer = await interaction.answer()
    assert answer["ephemeral"], answer
    text = answer["content"]
    scope = world.scope_of(user, where)
    if world.scopes.get(memory_id) != scope:
        assert text == NO_SUCH, (command, value, text)
        world.stats["ids: no such memory here"] += 1
        world.stats["ids: from another scope or forgotten"] += isinstance(value, str)
    elif world.authors[memory_id] != user and not (user == APP_OWNER or (where == "guild-b" and user == BOB)):
        assert text.startswith(NOT_PERMITTED), text
        world.stats["ids: not permitted"] += 1
    elif command == "pin":
        assert text.startswith((f"Pinned #{memory_id}.", f"#{memory_id} is already pinned.")), text
    elif command == "unpin":
        assert text.startswith((f"Unpinned #{memory_id}.", f"#{memory_id} isn't pinned.")), text
    else:
        assert text.startswith("Forget this memory for good?"), text
        await fake.click(user, interaction.original, "memory:forget:cancel")
        async with asyncio.timeout(10):
            while not interaction.original["content"].startswith("Nothing was forgotten."):
                await asyncio.sleep(0.01)
    if world.scopes.get(memory_id) == scope:
        world.stats["ids: changed or confirmed"] += 1
    check_everything_since(world, caplog)


id_examples = dict(command=st.sampled_from(["pin", "unpin", "forget"]), value=id_values, invoker=invokers)


@fuzz_settings(SHORT * 2)
@given(**id_examples)
async def test_fuzzed_memory_ids(world, caplog, command, value, invoker):
    await check_id_command(world, caplog, command, value, invoker)


@pytest.mark.soak
@pytest.mark.timeout(900)
@fuzz_settings(LONG * 2)
@given(**id_examples)
async def test_fuzzed_memory_ids_soak(world, caplog, command, value, invoker):
    await check_id_command(world, caplog, command, value, invoker)


# /memory search, and autocomplete with anything typed

SEARCH_WORDS = [" tea ", " chess ", " pixel ", " train ", " vault ", " diary ", " bob ", " something "]
queries = st.one_of(
    st.lists(pieces, max_size=12).map("".join),
    st.lists(st.one_of(pieces, st.sampled_from(SEARCH_WORDS)), min_size=1, max_size=8).map("".join),
    st.builds(lambda piece, times: piece * times, st.sampled_from([*TOKENS, "tea ", "x"]), st.integers(1, 120)),
)
LINE_ID = re.compile(r"^#(\d+) · ", re.MULTILINE)


async def check_search_and_autocomplete(world: World, caplog, query: str, typed: str, invoker, command: str) -> None:
    user, where = invoker
    fake = world.fake
    guild_id, channel_id = (GUILD_B, B_CHANNEL) if where == "guild-b" else (None, None)
    scope = world.scope_of(user, where)
    if not 1 <= len(query) <= 300:
        with pytest.raises(ValueError, match="out of range"):
            await fake.invoke(user, "memory search", guild_id=guild_id, channel_id=channel_id, options={"query": query})
        world.stats["searches refused by the client"] += 1
    else:
        interaction = await fake.invoke(
            user, "memory search", guild_id=guild_id, channel_id=channel_id, options={"query": query}
        )
        [answer] = await interaction.wait_for_response(1)
        text = answer["content"]
        assert answer["ephemeral"] and not text.startswith(GENERIC_ERROR), text
        assert text.startswith(("**Best matches for**", "I don't remember anything here", "Give me a word or two")), (
            text
        )
        for found in LINE_ID.findall(text):
            assert world.scopes.get(int(found)) == scope, f"search showed memory #{found} from another scope"
        world.stats["searches: " + text.split(" ")[0].strip("*")] += 1
    # Discord sends whatever was typed so far as a string, whatever the option's type.
    choices = await fake.autocomplete(
        user, f"memory {command}", guild_id=guild_id, channel_id=channel_id, options={"id": typed}, focused="id"
    )
    world.stats["autocompletes"] += 1
    world.stats["autocomplete choices"] += len(choices)
    for choice in choices:
        assert world.scopes.get(choice["value"]) == scope, f"autocomplete offered #{choice['value']} from elsewhere"
        assert 1 <= len(choice["name"]) <= 100
    backup_names = await fake.autocomplete(
        user, "backup restore", guild_id=guild_id, channel_id=channel_id, options={"name": typed}, focused="name"
    )
    if user != APP_OWNER:
        assert backup_names == [], "a non-owner was shown backup names"
    elif 1 <= len(typed) <= 100:
        # The owner names a backup that does not exist: a plain answer, nothing restored.
        interaction = await fake.invoke(user, "backup restore", guild_id=guild_id, options={"name": typed})
        [answer] = await interaction.wait_for_response(1)
        assert answer["ephemeral"] and answer["content"] == f"No backup named {typed}. Use /backup list.", answer
        world.stats["restores of unknown backups"] += 1
    check_everything_since(world, caplog)


search_examples = dict(
    query=queries,
    typed=st.one_of(st.text(max_size=100), st.sampled_from(TOKENS), st.integers(-(2**64), 2**64).map(str)),
    invoker=invokers,
    command=st.sampled_from(["pin", "unpin", "forget"]),
)


@fuzz_settings(SHORT)
@given(**search_examples)
async def test_fuzzed_search_and_autocomplete(world, caplog, query, typed, invoker, command):
    await check_search_and_autocomplete(world, caplog, query, typed, invoker, command)


@pytest.mark.soak
@pytest.mark.timeout(900)
@fuzz_settings(LONG)
@given(**search_examples)
async def test_fuzzed_search_and_autocomplete_soak(world, caplog, query, typed, invoker, command):
    await check_search_and_autocomplete(world, caplog, query, typed, invoker, command)
