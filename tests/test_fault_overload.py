"""Slow consumers: bursts of messages against a slow model.

Two scenarios, each short by default and full size with `-m soak`:

- A burst across many channels, each filled to exactly `[chat]
  max_pending_per_channel`, against `bot.py` as a subprocess (so its memory
  can be measured honestly, by RSS): every message is answered, in order
  per channel, nothing is shed, memory stays bounded, and the bot still
  stops cleanly afterwards.
- Channels flooded beyond the limit, against the in-process bot (so its
  internal queues can be inspected): every message gets an answer or is
  visibly skipped (one busy reply per burst, then a ⏳ reaction on each
  skipped message), the channel lanes and the scoring queue stay bounded
  and drain, and the event loop keeps ticking.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field

import psutil
import pytest

from cogs.chat import BUSY_REACTION, BUSY_REPLY
from companion.worker import BATCH_SIZE
from tests.backend_queries import check_every_memory_scored_once_of, check_store_of, memories_by_message_of
from tests.botprocess import BotProcess, query, write_config
from tests.fakes.llm_server import Answer, last_user_text
from tests.harness import ALICE, BOB, BOT_ID, CAROL, CHAT_MODEL, LISTEN_CHANNEL
from tests.invariants import check_every_memory_scored_once, check_store, memories_by_message
from tests.loop_lag import LoopLagProbe

MAX_PENDING_PER_CHANNEL = 20  # the shipped default, which a full burst exactly fills
BURST_GUILD = 400
AUTHORS = (ALICE, BOB, CAROL)
# The bot's resident memory may grow this much above its idle size while
# a burst is queued. Queued turns are small; the bound is there to catch
# anything kept per message that is never released.
MAX_RSS_GROWTH_BYTES = 80 * 1024 * 1024
MAX_LAG_P99_SECONDS = 0.1
MAX_LAG_SECONDS = 0.5


@dataclass(frozen=True)
class Burst:
    channels: int
    per_channel: int
    llm_seconds: float

    @property
    def messages(self) -> int:
        return self.channels * self.per_channel


SHORT_BURST = Burst(channels=20, per_channel=10, llm_seconds=0.2)
FULL_BURST = Burst(channels=50, per_channel=MAX_PENDING_PER_CHANNEL, llm_seconds=1.0)


def slow_chat(seconds: float):
    def answer(body: dict) -> Answer:
        return Answer(f"re: {last_user_text(body).split(': ', 1)[-1]}", delay=seconds)

    return answer


@dataclass
class RssSampler:
    """Samples a process's resident set size in the background."""

    pid: int
    interval: float = 0.05
    samples: list[int] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        process = psutil.Process(self.pid)
        while True:
            self.samples.append(process.memory_info().rss)
            await asyncio.sleep(self.interval)


@pytest.fixture
async def bot_process(tmp_path, discord_fake, llm_fake):
    process = BotProcess(
        write_config(tmp_path, discord_fake, llm_fake, chat=f"max_pending_per_channel = {MAX_PENDING_PER_CHANNEL}")
    )
    yield process
    process.kill()
    if process.process is not None:
        await process.wait()


@pytest.mark.parametrize(
    "burst",
    [
        pytest.param(SHORT_BURST, id="200-messages-20-channels"),
        pytest.param(FULL_BURST, id="1000-messages-50-channels", marks=[pytest.mark.soak, pytest.mark.timeout(900)]),
    ],
)
async def test_a_burst_across_channels_is_answered_in_order_with_bounded_memory(
    burst, tmp_path, discord_fake, llm_fake, bot_process
):
    channels = [BURST_GUILD + 1 + i for i in range(burst.channels)]
    discord_fake.add_guild(BURST_GUILD, "Busy guild", owner_id=ALICE, channel_ids=channels, member_ids=AUTHORS)
    llm_fake.responders[CHAT_MODEL] = slow_chat(burst.llm_seconds)
    await bot_process.start(discord_fake)
    # One turn first, so what every turn needs (imports, caches, connections) is in the baseline.
    await discord_fake.send_message(channels[0], ALICE, f"<@{BOT_ID}> warming up")
    await discord_fake.wait_for_bot_messages(1, timeout=30)
    rss = RssSampler(bot_process.process.pid)
    rss.start()
    await asyncio.sleep(0.3)
    idle_rss = max(rss.samples)

    # The burst: round-robin over the channels, as fast as the fake can post.
    sent: dict[int, list[int]] = {channel: [] for channel in channels}
    sent_at: dict[int, float] = {}
    started = time.monotonic()
    for n in range(burst.messages):
        channel = channels[n % burst.channels]
        sent_at_n = time.monotonic()
        message = await discord_fake.send_message(channel, AUTHORS[n % 3], f"<@{BOT_ID}> message {n} in {channel}")
        sent[channel].append(int(message["id"]))
        sent_at[int(message["id"])] = sent_at_n
    posted_in = time.monotonic() - started
    await discord_fake.wait_for_bot_messages(burst.messages + 1, timeout=120 + burst.messages * burst.llm_seconds)
    answered_in = time.monotonic() - started
    peak_rss = max(rss.samples)

    db_path = tmp_path / "data" / "memory.db"
    async with asyncio.timeout(120):
        while query(db_path, "SELECT count(*) FROM memories WHERE significance IS NULL") != [(0,)]:
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    settled_rss = rss.samples[-1]
    await rss.stop()
    assert await bot_process.stop() == 0, bot_process.log_tail()

    replies = [m for m in discord_fake.bot_messages if m["channel_id"] in sent and m["content"] != "re: warming up"]
    assert not [m for m in replies if m["content"] == BUSY_REPLY], "a full (not overfull) channel shed a message"
    assert not discord_fake.reactions, "a full (not overfull) channel shed a message"
    latencies = []
    for channel, message_ids in sent.items():
        in_channel = [m for m in replies if m["channel_id"] == channel]
        answered = [int(m["message_reference"]["message_id"]) for m in in_channel]
        assert answered == message_ids, f"channel {channel} was answered out of order or incompletely"
        times = [m["time"] for m in in_channel]
        assert times == sorted(times)
        latencies += [m["time"] - sent_at[int(m["message_reference"]["message_id"])] for m in in_channel]
    remembered = memories_by_message(db_path)
    assert {m for ids in sent.values() for m in ids} <= remembered.keys(), "an answered turn was not remembered"
    counts = check_store(db_path, pin_cap=8, tmp_dir=tmp_path)
    check_every_memory_scored_once(db_path)

    latencies.sort()
    mib = 1024 * 1024
    print(
        f"overload burst: {burst.messages} messages over {burst.channels} channels with a {burst.llm_seconds:g}s model;"
        f" posted in {posted_in:.1f}s, all answered in {answered_in:.1f}s"
        f" ({burst.messages / answered_in:.1f} turns/s; ideal {burst.channels / burst.llm_seconds:.0f});"
        f" reply latency p50 {statistics.median(latencies):.2f}s, p99 {latencies[int(0.99 * len(latencies))]:.2f}s,"
        f" max {latencies[-1]:.2f}s; 0 busy notices; bot RSS idle {idle_rss / mib:.0f} MiB,"
        f" peak {peak_rss / mib:.0f} MiB, after scoring {settled_rss / mib:.0f} MiB; {counts}"
    )
    assert peak_rss - idle_rss <= MAX_RSS_GROWTH_BYTES


@dataclass(frozen=True)
class Flood:
    channels: int
    per_channel: int
    llm_seconds: float


SHORT_FLOOD = Flood(channels=1, per_channel=30, llm_seconds=0.05)
FULL_FLOOD = Flood(channels=10, per_channel=100, llm_seconds=0.2)


@pytest.mark.parametrize(
    "flood",
    [
        pytest.param(SHORT_FLOOD, id="30-in-one-channel"),
        pytest.param(FULL_FLOOD, id="100-in-each-of-10-channels", marks=[pytest.mark.soak, pytest.mark.timeout(600)]),
    ],
)
async def test_flooded_channels_tell_every_skipped_user_and_drain(flood, harness, tmp_path):
    discord = harness.discord
    channels = [BURST_GUILD + 1 + i for i in range(flood.channels)]
    discord.add_guild(BURST_GUILD, "Busy guild", owner_id=ALICE, channel_ids=channels, member_ids=AUTHORS)
    harness.llm.responders[CHAT_MODEL] = slow_chat(flood.llm_seconds)
    bot = await harness.start_bot(
        discord={"listen_channel_ids": [LISTEN_CHANNEL, *channels]},
        chat={"max_pending_per_channel": MAX_PENDING_PER_CHANNEL},
    )
    lanes = bot.get_cog("Chat").lanes
    probe = LoopLagProbe()
    probe.start()
    peaks = {"pending": 0, "queued": 0, "in_flight": 0}

    async def watch_queues() -> None:
        while True:
            status = bot.scoring.status()
            peaks["pending"] = max(peaks["pending"], lanes.pending())
            peaks["queued"] = max(peaks["queued"], status.queued)
            peaks["in_flight"] = max(peaks["in_flight"], status.in_flight)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch_queues())
    sent: dict[int, list[int]] = {channel: [] for channel in channels}
    try:
        for n in range(flood.channels * flood.per_channel):
            channel = channels[n % flood.channels]
            message = await discord.send_message(channel, AUTHORS[n % 3], f"flood message {n}")
            sent[channel].append(int(message["id"]))
            # The fake shares the bot's loop and posting never suspends: without
            # this, the flood itself would stall the loop the probe measures.
            await asyncio.sleep(0)
        all_ids = {m for ids in sent.values() for m in ids}
        async with asyncio.timeout(60 + flood.per_channel * flood.llm_seconds):
            while all_ids - told_or_answered(discord):
                await asyncio.sleep(0.05)
            while lanes.pending():
                await asyncio.sleep(0.05)
        await harness.wait_until_scored(timeout=60)
    finally:
        watcher.cancel()
        await probe.stop()

    answered_total = skipped_total = notices = 0
    for channel, message_ids in sent.items():
        replies = [m for m in discord.bot_messages if m["channel_id"] == channel]
        answers = [int(m["message_reference"]["message_id"]) for m in replies if m["content"] != BUSY_REPLY]
        busy = [int(m["message_reference"]["message_id"]) for m in replies if m["content"] == BUSY_REPLY]
        marked = [message_id for c, message_id, emoji in discord.reactions if c == channel and emoji == BUSY_REACTION]
        # Nothing silently dropped: each message answered, or told it was skipped, exactly once.
        accounted = sorted(answers + busy + marked)
        assert accounted == sorted(message_ids), f"channel {channel}: some messages were dropped or told twice"
        assert answers == [m for m in message_ids if m in answers], f"channel {channel} answered out of order"
        assert len(answers) >= MAX_PENDING_PER_CHANNEL
        # One explaining reply per burst, then reactions only.
        assert len(busy) == 1
        answered_total += len(answers)
        skipped_total += len(busy) + len(marked)
        notices += len(busy)
    assert set(await memories_by_message_of(bot)) == {
        int(m["message_reference"]["message_id"]) for m in discord.bot_messages if m["content"] != BUSY_REPLY
    }
    assert lanes.pending() == 0
    assert peaks["pending"] <= flood.channels * MAX_PENDING_PER_CHANNEL
    assert peaks["queued"] <= BATCH_SIZE
    assert peaks["in_flight"] <= bot.config.memory.scoring_concurrency
    counts = await check_store_of(bot, pin_cap=8, tmp_dir=tmp_path)
    await check_every_memory_scored_once_of(bot)
    await harness.stop_bot()
    if bot.db is not None:
        # And SQLite's own checks too, of its file with the bot stopped.
        counts = check_store(bot.db.path, pin_cap=8, tmp_dir=tmp_path)
        check_every_memory_scored_once(bot.db.path)
    print(
        f"overload flood: {flood.per_channel} messages into each of {flood.channels} channels"
        f" (limit {MAX_PENDING_PER_CHANNEL}) with a {flood.llm_seconds:g}s model: {answered_total} answered,"
        f" {skipped_total} skipped and told ({notices} busy replies, {skipped_total - notices} ⏳ reactions),"
        f" 0 dropped;"
        f" peak turns pending {peaks['pending']}, peak scoring queue {peaks['queued']}"
        f" (in flight {peaks['in_flight']}); {probe.summary()}; {counts}"
    )
    assert probe.percentile(0.99) <= MAX_LAG_P99_SECONDS, probe.summary()
    assert probe.worst <= MAX_LAG_SECONDS, probe.summary()


def told_or_answered(discord) -> set[int]:
    """Messages the bot replied to (an answer or the busy notice) or marked as skipped."""
    replied = {int(m["message_reference"]["message_id"]) for m in discord.bot_messages if m.get("message_reference")}
    return replied | {message_id for _, message_id, _ in discord.reactions}
