"""The bot forgets what Discord forgets: deleted messages, through the real client and the fake Discord."""

import asyncio
import json

from storage import memories, search
from tests.fakes.llm_server import Answer
from tests.harness import ALICE, BOB, CHAT_MODEL, LISTEN_CHANNEL, SCOPE_A
from tests.projection_check import live_and_rebuilt


async def wait_until(predicate, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def memory_texts(bot) -> list[str]:
    return [m.user_text for m in reversed(await memories.list_memories(bot.db.reader, SCOPE_A, limit=100))]


async def forgotten_reasons(bot) -> list[str]:
    async with bot.db.reader.execute(
        "SELECT json_extract(payload, '$.reason') FROM events WHERE kind = 'memory_forgotten' ORDER BY seq"
    ) as cursor:
        return [row[0] for row in await cursor.fetchall()]


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
    await bot.operations.snapshot_now(kind="manual")

    harness.discord.delete_message(int(address["id"]))
    await wait_until(lambda: _gone(bot, "Quokkaflange"))
    assert await memory_texts(bot) == ["nice weather today"]
    assert await forgotten_reasons(bot) == ["deleted in Discord"]
    assert await search.search(bot.db.reader, SCOPE_A, "Quokkaflange address", 10) == []
    # Not in the next prompt.
    await harness.say(LISTEN_CHANNEL, BOB, "where does Alice live again? her address?")
    assert "Quokkaflange" not in json.dumps(harness.llm.requests_for(CHAT_MODEL)[-1].body["messages"])
    # Nor in a byte of the checkpointed database or the snapshot.
    await bot.db.checkpoint()
    for path in [bot.db.path, *bot.config.storage.snapshots_dir.glob("*.db")]:
        assert b"Quokkaflange" not in path.read_bytes(), path.name
        assert b"quokkaflang" not in path.read_bytes(), path.name  # its stem in the index
    live, rebuilt = live_and_rebuilt(bot.db.path, tmp_path)
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
    return await memories.count_memories(bot.db.reader, SCOPE_A) == count
