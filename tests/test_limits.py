"""No one person can flood the bot, and the whole bot keeps a cap on the model calls in flight."""

from __future__ import annotations

import asyncio

from companion.limits import TurnRateLimit
from tests.backend_queries import query
from tests.fakes.llm_server import Answer
from tests.harness import (
    ALICE,
    APP_OWNER,
    B_CHANNEL,
    BOB,
    CAROL,
    CHAT_MODEL,
    LISTEN_CHANNEL,
    OTHER_CHANNEL,
    QUIET_CHANNEL,
)
from tests.test_admin_commands import answer, run

OVER_LIMIT = "You're sending me messages faster than I can give each one a proper answer"


async def settle(harness, seconds: float = 0.4) -> None:
    """Give the bot time to answer anything it is going to answer."""
    await asyncio.sleep(seconds)


async def test_one_person_over_the_limit_is_told_once_and_the_rest_is_skipped(harness):
    bot = await harness.start_bot(chat={"user_turns_per_minute": 60, "user_burst": 3})
    dm = harness.discord.dm_channel_id(ALICE)
    for i in range(6):
        await harness.discord.send_message(LISTEN_CHANNEL, ALICE, f"flood {i}")
    await harness.discord.wait_for_bot_messages(4, channel_id=LISTEN_CHANNEL)
    await settle(harness)
    replies = [m["content"] for m in harness.replies(LISTEN_CHANNEL)]
    assert len(replies) == 4, replies  # the burst of 3, and one notice for the 3 skipped
    assert [r for r in replies if r.startswith("I hear you")] == [f"I hear you: Alice: flood {i}" for i in range(3)]
    assert sum(r.startswith(OVER_LIMIT) for r in replies) == 1
    stored = await query(bot, "SELECT user_text FROM memories ORDER BY id")
    assert [text for (text,) in stored] == ["flood 0", "flood 1", "flood 2"]

    # Someone else in the same server, and the same person in their DMs, are not held back.
    reply = await harness.say(LISTEN_CHANNEL, BOB, "my turn")
    assert reply["content"] == "I hear you: Bob: my turn"
    reply = await harness.say(dm, ALICE, "hello in private")
    assert reply["content"].startswith("I hear you")

    # A second past the limit, one more turn has come back; going over again is not told twice.
    await asyncio.sleep(1.1)
    reply = await harness.say(LISTEN_CHANNEL, ALICE, "back again")
    assert reply["content"] == "I hear you: Alice: back again"
    before = len(harness.replies(LISTEN_CHANNEL))
    for i in range(3):
        await harness.discord.send_message(LISTEN_CHANNEL, ALICE, f"again {i}")
    await settle(harness, 0.6)
    assert len(harness.replies(LISTEN_CHANNEL)) == before

    status = answer(await run(harness, APP_OWNER, "status"))
    assert "per person (60/min, burst 3): 6 messages skipped, 1 people told" in status


async def test_the_limit_is_off_at_zero(harness):
    await harness.start_bot(chat={"user_turns_per_minute": 0, "user_burst": 1})
    for i in range(5):
        reply = await harness.say(LISTEN_CHANNEL, ALICE, f"message {i}")
        assert reply["content"] == f"I hear you: Alice: message {i}"
    status = answer(await run(harness, APP_OWNER, "status"))
    assert "per person: off" in status


async def test_model_calls_in_flight_stay_under_the_global_cap_and_each_channel_keeps_its_order(harness):
    harness.llm.responders[CHAT_MODEL] = lambda body: Answer("ok", delay=0.3)
    channels = [LISTEN_CHANNEL, QUIET_CHANNEL, OTHER_CHANNEL, B_CHANNEL]
    bot = await harness.start_bot(
        discord={"listen_channel_ids": channels},
        llm={"max_concurrent_requests": 2},
    )
    authors = {LISTEN_CHANNEL: ALICE, QUIET_CHANNEL: ALICE, OTHER_CHANNEL: CAROL, B_CHANNEL: BOB}
    for round_ in range(2):
        for channel in channels:
            await harness.discord.send_message(channel, authors[channel], f"{channel} turn {round_}")
    await harness.discord.wait_for_bot_messages(8, timeout=15)
    await harness.wait_for_memories(8)
    await harness.wait_until_scored()
    assert harness.llm.max_in_flight == 2  # chat and classifier together
    assert bot.llm.requests.waited >= 4
    for channel in channels:
        # Each reply answers its own message: the second turn of a channel came second.
        replied_to = [str(m["message_reference"]["message_id"]) for m in harness.replies(channel)]
        sent = [m["id"] for m in harness.discord.channel_messages(channel) if m["author"]["id"] != str(bot.user.id)]
        assert replied_to == sent
    status = answer(await run(harness, APP_OWNER, "status"))
    assert "model requests (2): 0 in flight" in status


def test_the_bucket_refills_at_its_rate_and_holds_no_more_than_the_burst():
    limit = TurnRateLimit(per_minute=12, burst=6)
    assert all(limit.check("alice", now=0.0).allowed for _ in range(6))
    first_refusal = limit.check("alice", now=0.0)
    assert not first_refusal.allowed and first_refusal.tell
    assert limit.check("alice", now=4.9) == type(first_refusal)(allowed=False, tell=False)
    assert limit.check("alice", now=5.0).allowed  # one turn every 5 s at 12 a minute
    assert not limit.check("alice", now=5.1).allowed
    # A long quiet spell refills only up to the burst.
    assert sum(limit.check("alice", now=3600.0).allowed for _ in range(10)) == 6
    assert limit.check("bob", now=0.0).allowed
