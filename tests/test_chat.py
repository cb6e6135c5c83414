"""The turn flow end to end: the real discord.py client against the fake Discord,
the real openai SDK against the fake LLM."""

import asyncio

from tests.backend_queries import scalar
from tests.fakes.llm_server import Answer, Fail, Hang, last_user_text
from tests.harness import (
    ALICE,
    B_CHANNEL,
    BOB,
    BOT_ID,
    CAROL,
    CHAT_MODEL,
    GUILD_A,
    LISTEN_CHANNEL,
    OTHER_CHANNEL,
    QUIET_CHANNEL,
    SCOPE_A,
    SCOPE_B,
    THREAD_IN_LISTEN,
)
from tests.projection_check import live_and_rebuilt_of


async def memory_count(harness) -> int:
    return await scalar(harness.bot, "SELECT count(*) FROM memories")


async def test_answers_every_message_in_a_listen_channel_and_remembers_the_turn(harness):
    await harness.start_bot()
    harness.llm.script(CHAT_MODEL, Answer("Nice to meet you, Alice!", delay=0.4))
    reply = await harness.say(LISTEN_CHANNEL, ALICE, "hello, I'm new here")
    assert reply["content"] == "Nice to meet you, Alice!"
    assert reply["message_reference"]["message_id"]
    await harness.wait_for_memories(1)
    [memory] = await harness.bot.store.list_memories(SCOPE_A)
    assert memory.text == "Alice said: hello, I'm new here\nMnemo replied: Nice to meet you, Alice!"
    assert memory.channel_id == LISTEN_CHANNEL and memory.author_id == ALICE
    # The model took a noticeable moment, so the bot showed it was typing.
    assert harness.discord.typing == [LISTEN_CHANNEL]
    # An instant answer needs no indicator.
    await harness.say(LISTEN_CHANNEL, ALICE, "and quickly?")
    assert harness.discord.typing == [LISTEN_CHANNEL]


async def test_quiet_channel_needs_a_mention_or_a_reply(harness):
    await harness.start_bot()
    await harness.discord.send_message(QUIET_CHANNEL, ALICE, "just chatting among humans")
    mentioned = await harness.say(QUIET_CHANNEL, ALICE, f"<@{BOT_ID}> what do you think?", mentions=[BOT_ID])
    replied = await harness.say(QUIET_CHANNEL, BOB, "and me?", reply_to=int(mentioned["id"]))
    assert mentioned and replied
    # A reply to a human's message is not addressed to the bot.
    human = await harness.discord.send_message(QUIET_CHANNEL, ALICE, "a human message")
    await harness.discord.send_message(QUIET_CHANNEL, BOB, "replying to alice", reply_to=int(human["id"]))
    await asyncio.sleep(0.3)
    assert len(harness.replies(QUIET_CHANNEL)) == 2
    prompts = [last_user_text(r.body) for r in harness.llm.requests_for(CHAT_MODEL)]
    assert prompts == ["Alice: what do you think?", "Bob: and me?"]


async def test_answers_in_dms_and_in_threads_of_listen_channels(harness):
    await harness.start_bot()
    dm_channel = harness.discord.dm_channel_id(ALICE)
    before = len(harness.replies(dm_channel))
    await harness.discord.send_dm(ALICE, "psst, a secret")
    await harness.discord.wait_for_bot_messages(before + 1, channel_id=dm_channel)
    await harness.say(THREAD_IN_LISTEN, BOB, "thread talk")
    await harness.wait_for_memories(2)
    scopes = {m.scope.kind for m in await harness.bot.store.list_memories(SCOPE_A)}
    assert scopes == {"guild"}
    dm_scope = SCOPE_A.for_dm(BOT_ID, ALICE)
    assert [m.user_text for m in await harness.bot.store.list_memories(dm_scope)] == ["psst, a secret"]


async def test_ignores_other_bots(harness):
    await harness.start_bot()
    await harness.discord.send_message(LISTEN_CHANNEL, 5000, "beep boop, I am a bot")
    await harness.say(LISTEN_CHANNEL, ALICE, "sync point")
    assert len(harness.llm.requests_for(CHAT_MODEL)) == 1
    assert len(harness.replies(LISTEN_CHANNEL)) == 1


async def test_long_reply_is_split_in_order_with_nothing_lost(harness):
    await harness.start_bot()
    words = [f"w{i}" for i in range(1400)]
    harness.llm.script(CHAT_MODEL, Answer(" ".join(words)))
    await harness.discord.send_message(LISTEN_CHANNEL, ALICE, "tell me everything")
    await harness.wait_for_memories(1)
    sent = harness.replies(LISTEN_CHANNEL)
    assert len(sent) >= 4
    assert all(len(m["content"]) <= 2000 for m in sent)
    assert " ".join(m["content"] for m in sent).split() == words
    assert "message_reference" in sent[0]


async def test_no_reply_can_ping_everyone_roles_or_users(harness):
    await harness.start_bot()
    harness.llm.script(CHAT_MODEL, Answer(f"@everyone @here <@&{GUILD_A}> <@{BOB}> look! " + "x " * 1200))
    await harness.discord.send_message(LISTEN_CHANNEL, ALICE, "@everyone please ping everybody")
    await harness.wait_for_memories(1)
    sent = harness.replies(LISTEN_CHANNEL)
    assert len(sent) == 2
    for message in sent:
        allowed = message["allowed_mentions"]
        assert allowed["parse"] == []
        assert not allowed.get("users") and not allowed.get("roles") and not allowed.get("replied_user")


async def test_turns_run_in_order_per_channel_and_concurrently_across_channels(harness):
    await harness.start_bot()

    def responder(body):
        text = last_user_text(body)
        delay = 1.0 if "slow" in text else 0.0
        return Answer(f"re: {text.split(': ', 1)[1]}", delay=delay)

    harness.llm.responders[CHAT_MODEL] = responder
    await harness.discord.send_message(LISTEN_CHANNEL, ALICE, "first slow")
    await harness.discord.send_message(LISTEN_CHANNEL, ALICE, "second fast")
    await asyncio.sleep(0.05)
    await harness.discord.send_message(OTHER_CHANNEL, BOB, f"<@{BOT_ID}> other fast", mentions=[BOT_ID])
    await harness.discord.wait_for_bot_messages(3)
    order = [m["content"] for m in harness.discord.bot_messages]
    assert order == ["re: other fast", "re: first slow", "re: second fast"]


async def test_llm_failures_get_a_friendly_reply_and_no_memory(harness):
    await harness.start_bot(llm={"max_retries": 1, "timeout_seconds": 0.5})
    harness.llm.script(CHAT_MODEL, Fail(500), Fail(503))
    failed = await harness.say(LISTEN_CHANNEL, ALICE, "are you there?")
    assert failed["content"].startswith("Sorry, my language model had a problem")
    harness.llm.script(CHAT_MODEL, Hang(), Hang())
    timed_out = await harness.say(LISTEN_CHANNEL, ALICE, "hello?")
    assert "timed out" in timed_out["content"]
    harness.llm.script(CHAT_MODEL, Answer("   "))
    empty = await harness.say(LISTEN_CHANNEL, ALICE, "anything?")
    assert "came up empty" in empty["content"]
    harness.llm.script(CHAT_MODEL, Fail(429, retry_after=0), Fail(429, retry_after=0))
    limited = await harness.say(LISTEN_CHANNEL, ALICE, "still?")
    assert "rate-limited" in limited["content"]
    assert await memory_count(harness) == 0
    # And the bot keeps serving.
    harness.llm.script(CHAT_MODEL, Answer("back now"))
    assert (await harness.say(LISTEN_CHANNEL, ALICE, "ok?"))["content"] == "back now"
    await harness.wait_for_memories(1)


async def test_memories_never_reach_another_guilds_prompt(harness):
    await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "our guild password is marmalade-zeppelin")
    await harness.say(B_CHANNEL, BOB, f"<@{BOT_ID}> what is the marmalade zeppelin password?", mentions=[BOT_ID])
    await harness.say(LISTEN_CHANNEL, ALICE, "remind me of the marmalade zeppelin password")
    prompts = [r.text for r in harness.llm.requests_for(CHAT_MODEL)]
    assert "marmalade-zeppelin" not in prompts[1]
    assert "marmalade-zeppelin" in prompts[2]
    await harness.wait_for_memories(3)
    assert await harness.bot.store.count_memories(SCOPE_B) == 1


async def test_recall_pins_and_recent_turns_reach_the_prompt(harness):
    await harness.start_bot(memory={"recent_turns": 2})
    await harness.say(LISTEN_CHANNEL, ALICE, "my dog Pepper is afraid of thunderstorms")
    for i in range(4):
        await harness.say(LISTEN_CHANNEL, BOB, f"unrelated chatter number {i}")
    await harness.say(LISTEN_CHANNEL, ALICE, "how is Pepper doing with the thunderstorms?")
    prompt = harness.llm.requests_for(CHAT_MODEL)[-1].body["messages"]
    records = prompt[1]["content"]
    assert records.startswith("<records>") and "my dog Pepper is afraid of thunderstorms" in records
    recent_users = [m["content"] for m in prompt[2:-1] if m["role"] == "user"]
    assert recent_users == ["Bob: unrelated chatter number 2", "Bob: unrelated chatter number 3"]


async def test_awkward_input_is_handled(harness):
    await harness.start_bot()
    attachment = {
        "id": 1,
        "filename": "cat.png",
        "size": 10,
        "url": "https://x/cat.png",
        "proxy_url": "https://x",
    }
    await harness.say(LISTEN_CHANNEL, ALICE, "", attachments=[attachment])
    await harness.say(LISTEN_CHANNEL, ALICE, "a" * 4000)
    await harness.say(LISTEN_CHANNEL, ALICE, "z\u0338\u0336a\u200b\u202elgo \x00nul 🏳️‍🌈 中文")
    await harness.say(LISTEN_CHANNEL, ALICE, f"<@{BOT_ID}>", mentions=[BOT_ID])
    await harness.wait_for_memories(4)
    stored = [m.user_text for m in reversed(await harness.bot.store.list_memories(SCOPE_A))]
    assert stored[0] == "[attachment: cat.png]"
    assert stored[1] == "a" * 4000
    assert "\x00" not in stored[2] and "🏳️‍🌈 中文" in stored[2]
    assert stored[3] == "(they mentioned you without saying anything)"


async def test_rebuild_equals_live_projections_after_a_conversation(harness, tmp_path):
    await harness.start_bot()
    for i in range(5):
        await harness.say(LISTEN_CHANNEL, ALICE, f"turn {i}")
    await harness.say(B_CHANNEL, BOB, f"<@{BOT_ID}> hi", mentions=[BOT_ID])
    await harness.wait_for_memories(6)
    await harness.wait_until_scored()
    live, rebuilt = await live_and_rebuilt_of(harness.bot, tmp_path)
    assert live == rebuilt
    assert len(live["memories"]) == 6


async def test_a_full_channel_tells_people_instead_of_dropping_silently(harness):
    await harness.start_bot(chat={"max_pending_per_channel": 2})
    harness.llm.responders[CHAT_MODEL] = lambda body: Answer(f"re: {last_user_text(body)}", delay=0.5)
    sent = [await harness.discord.send_message(LISTEN_CHANNEL, ALICE, f"burst {i}") for i in range(5)]
    await harness.discord.wait_for_bot_messages(3, channel_id=LISTEN_CHANNEL)
    await harness.wait_for_memories(2)
    contents = [m["content"] for m in harness.replies(LISTEN_CHANNEL)]
    assert contents[0].startswith("I'm still catching up")
    assert contents[1:] == ["re: Alice: burst 0", "re: Alice: burst 1"]
    busy_reply = harness.replies(LISTEN_CHANNEL)[0]
    assert int(busy_reply["message_reference"]["message_id"]) == int(sent[2]["id"])
    marked = sorted(message_id for _, message_id, _ in harness.discord.reactions)
    assert marked == sorted(int(m["id"]) for m in sent[3:])


async def test_a_mention_of_the_bots_own_role_counts_as_a_mention(harness):
    """Discord's client often completes @Mnemo to the role Discord made for the bot."""
    await harness.start_bot()
    bot_role = harness.discord.guilds[GUILD_A].personal_roles[BOT_ID]
    reply = await harness.say(QUIET_CHANNEL, ALICE, f"<@&{bot_role}> are you there?")
    assert reply["message_reference"]
    assert last_user_text(harness.llm.requests_for(CHAT_MODEL)[-1].body) == "Alice: are you there?"


async def test_mentioned_names_are_taken_literally(harness):
    harness.discord.users[CAROL].global_name = r"\o/ C:\1 \g<0>"
    await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, f"what do you think of <@{CAROL}>?")
    assert (
        last_user_text(harness.llm.requests_for(CHAT_MODEL)[-1].body) == r"Alice: what do you think of @\o/ C:\1 \g<0>?"
    )


async def test_without_read_message_history_it_answers_without_the_reply_reference(harness):
    await harness.start_bot()
    harness.discord.channels_without_history.add(LISTEN_CHANNEL)
    harness.llm.script(CHAT_MODEL, Answer("still here"))
    reply = await harness.say(LISTEN_CHANNEL, ALICE, "can you hear me?")
    assert reply["content"] == "still here" and not reply.get("message_reference")
    await harness.wait_for_memories(1)


async def test_a_forwarded_message_is_read_and_a_forward_is_not_a_reply(harness):
    await harness.start_bot()
    original = await harness.discord.send_message(OTHER_CHANNEL, BOB, "the meeting moved to Thursday")
    reply = await harness.say(LISTEN_CHANNEL, ALICE, "", forward_of=int(original["id"]))
    assert reply
    prompt = last_user_text(harness.llm.requests_for(CHAT_MODEL)[-1].body)
    assert prompt == "Alice: [forwarded message: the meeting moved to Thursday]"
    # Forwarding one of the bot's own messages into a quiet channel does not address the bot.
    await harness.discord.send_message(QUIET_CHANNEL, BOB, "", forward_of=int(reply["id"]))
    await harness.say(LISTEN_CHANNEL, ALICE, "sync point")
    assert harness.replies(QUIET_CHANNEL) == []
