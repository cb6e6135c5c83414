"""The LLM endpoint misbehaves: timeouts, hangs, 429 storms, 5xx, broken bodies.

The real bot runs in-process against the fake Discord and a fake endpoint
that fails in every way we know of, for the chat model and the classifier
at once. Each failing turn must get the polite reply for its kind of
failure (companion/turns.py FAILURE_REPLIES) and no memory; other channels
keep being answered meanwhile; once the endpoint recovers, scoring catches
up and every memory is scored exactly once; and the event loop never
stalls, measured by a ticker on the bot's own loop the whole time.

The short run is one outage; `-m soak` runs several, with a bigger storm.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass

import pytest

from companion.llm import LLMError
from companion.turns import FAILURE_REPLIES
from companion.worker import BACKOFF_START_SECONDS, SignificanceWorker
from storage.commands import TurnRecord, write_memory
from storage.sqlite_store import SQLiteStore
from tests.backend_queries import check_every_memory_scored_once_of, check_store_of, memories_by_message_of
from tests.fakes.llm_server import Action, Answer, Cut, Fail, Hang, Raw, Stall, last_user_text
from tests.harness import (
    ALICE,
    B_CHANNEL,
    BOB,
    BOT_ID,
    CAROL,
    CHAT_MODEL,
    CLASSIFIER_MODEL,
    LISTEN_CHANNEL,
    SCOPE_A,
)
from tests.invariants import check_every_memory_scored_once, check_store, memories_by_message
from tests.loop_lag import LoopLagProbe

LLM_TIMEOUT_SECONDS = 0.5
FAULT_GUILD = 300
FAULT_CHANNELS = list(range(301, 341))
# Generous bounds: a stall (a blocking call on the loop) shows up as hundreds of milliseconds.
MAX_LAG_P99_SECONDS = 0.1
MAX_LAG_SECONDS = 0.5
# Once the classifier answers again, scoring resumes within about as long as
# the outage lasted (its exponential backoff), plus this for the work itself.
CATCH_UP_SLACK_SECONDS = 3.0
# Every failing turn hears why within this long: the attempts time out after
# LLM_TIMEOUT_SECONDS each, with the SDK's short pauses between them.
MAX_FAILURE_REPLY_SECONDS = 6.0

TRUNCATED_JSON = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"rol'
NO_CHOICES = json.dumps(
    {"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "fake-chat", "choices": []}
).encode()

# What the chat model does for a turn tagged "fault <name>", and the kind of failure the user must hear about.
CHAT_FAULTS: dict[str, tuple[Action, str]] = {
    "late": (Answer("too late", delay=3.0), "timeout"),
    "hang": (Hang(), "timeout"),
    "stall": (Stall(), "timeout"),
    "ratelimit": (Fail(429, "slow down", retry_after=0.2), "rate_limited"),
    # Asked to wait a minute, a turn must not make its user wait that long.
    "ratelimitlong": (Fail(429, "slow down", retry_after=60), "rate_limited"),
    "error500": (Fail(500), "server"),
    "error503": (Fail(503), "server"),
    "truncated": (Raw(TRUNCATED_JSON), "server"),
    "invalid": (Raw(b"this is not json"), "server"),
    "html": (Raw(b"<html><body>upstream error</body></html>", content_type="text/html"), "server"),
    "shape": (Raw(b'{"object": "chat.completion", "choices": "none"}'), "server"),
    "cut": (Cut(), "connection"),
    "nochoices": (Raw(NO_CHOICES), "empty"),
    "blank": (Answer("   "), "empty"),
    "refused": (Fail(400, "bad request"), "rejected"),
}
# While the endpoint is down the classifier meets only transient faults, which
# pause scoring rather than record failures: when it recovers, every memory gets its score.
CLASSIFIER_FAULTS: list[Action] = [
    Fail(429, "slow down", retry_after=0.2),
    Fail(500),
    Raw(TRUNCATED_JSON),
    Raw(b"this is not json"),
    Cut(),
    Hang(),
]
FAULT_TAG = re.compile(r"\bfault (\w+)")


@dataclass(frozen=True)
class Size:
    outages: int
    storm_turns: int  # turns answered by a 429 storm in each outage


SHORT = Size(outages=1, storm_turns=20)
LONG = Size(outages=6, storm_turns=120)


class MisbehavingEndpoint:
    """The fake models' behaviour: chat faults by tag, the classifier down or up."""

    def __init__(self) -> None:
        self.classifier_down = False
        self._classifier_faults = itertools.cycle(CLASSIFIER_FAULTS)

    def chat(self, body: dict) -> Action:
        text = last_user_text(body)
        match = FAULT_TAG.search(text)
        if match:
            return CHAT_FAULTS[match[1]][0] if match[1] in CHAT_FAULTS else Fail(429, "storm", retry_after=0.2)
        return Answer(f"gladly: {text.split(': ', 1)[-1]}")

    def classify(self, body: dict) -> Action:
        if self.classifier_down:
            return next(self._classifier_faults)
        return Answer('{"significance": 2}')


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(SHORT, id="one-outage"),
        pytest.param(LONG, id="six-outages", marks=[pytest.mark.soak, pytest.mark.timeout(1200)]),
    ],
)
async def test_llm_faults_get_polite_replies_and_scoring_catches_up(size, harness, tmp_path):
    began = time.monotonic()
    discord = harness.discord
    discord.add_guild(FAULT_GUILD, "Fault guild", owner_id=ALICE, channel_ids=FAULT_CHANNELS, member_ids=[ALICE, BOB])
    endpoint = MisbehavingEndpoint()
    harness.llm.responders[CHAT_MODEL] = endpoint.chat
    harness.llm.responders[CLASSIFIER_MODEL] = endpoint.classify
    bot = await harness.start_bot(
        discord={"listen_channel_ids": [LISTEN_CHANNEL, *FAULT_CHANNELS]},
        llm={"timeout_seconds": LLM_TIMEOUT_SECONDS, "max_retries": 1},
        memory={"scoring_rescan_seconds": 1.0},
    )
    probe = LoopLagProbe()
    probe.start()
    healthy_channels = [
        (LISTEN_CHANNEL, ALICE, ""),
        (B_CHANNEL, CAROL, f"<@{BOT_ID}> "),
        (discord.dm_channel_id(BOB), BOB, ""),
    ]
    expected_failures: dict[int, str] = {}  # message id -> failure kind
    healthy: list[int] = []
    catch_ups: list[float] = []
    outages: list[float] = []
    sent_at: dict[int, float] = {}
    try:
        healthy += await send_all(
            discord, [(c, a, f"{p}hello before the outage {i}") for i, (c, a, p) in enumerate(healthy_channels)]
        )
        for outage in range(size.outages):
            endpoint.classifier_down = True
            outage_started = time.monotonic()
            # Turns that succeed during the outage: their memories cannot be scored yet.
            healthy += await send_all(
                discord,
                [(c, a, f"{p}still here, outage {outage} turn {i}") for i, (c, a, p) in enumerate(healthy_channels)],
            )
            # Every kind of chat failure at once, each in its own channel.
            faults = [
                (FAULT_CHANNELS[i], ALICE, f"fault {name} in outage {outage}") for i, name in enumerate(CHAT_FAULTS)
            ]
            # A 429 storm: many turns at once, several per channel, all rate-limited.
            storm_channels = FAULT_CHANNELS[len(CHAT_FAULTS) :]
            storm = [
                (storm_channels[i % len(storm_channels)], BOB, f"fault storm {i} in outage {outage}")
                for i in range(size.storm_turns)
            ]
            fault_sent_at = time.monotonic()
            for message_id, (_, _, text) in zip(await send_all(discord, faults + storm), faults + storm, strict=True):
                sent_at[message_id] = fault_sent_at
                name = FAULT_TAG.search(text)[1]
                expected_failures[message_id] = CHAT_FAULTS[name][1] if name in CHAT_FAULTS else "rate_limited"
            await wait_for_answers(discord, [*healthy, *expected_failures], timeout=60)
            # The endpoint recovers; scoring must catch up with everything the outage held back.
            endpoint.classifier_down = False
            recovered_at = time.monotonic()
            outages.append(recovered_at - outage_started)
            healthy += await send_all(
                discord,
                [
                    (c, a, f"{p}recovered after outage {outage}, turn {i}")
                    for i, (c, a, p) in enumerate(healthy_channels)
                ],
            )
            await wait_for_answers(discord, healthy, timeout=30)
            await harness.wait_for_memories(len(healthy))
            await harness.wait_until_scored(timeout=180)
            catch_ups.append(time.monotonic() - recovered_at)
    finally:
        await probe.stop()

    answers = answers_by_message(discord.bot_messages)
    for message_id, kind in expected_failures.items():
        assert answers[message_id] == [FAILURE_REPLIES[kind]], f"message {message_id} ({kind})"
    answered_at = {
        int(m["message_reference"]["message_id"]): m["time"] for m in discord.bot_messages if m.get("message_reference")
    }
    slowest_failure = max(answered_at[m] - sent_at[m] for m in expected_failures)
    for message_id in healthy:
        assert len(answers[message_id]) == 1 and answers[message_id][0].startswith("gladly: ")
    remembered = await memories_by_message_of(bot)
    assert set(remembered) == set(healthy), "exactly the answered turns are remembered"
    counts = await check_store_of(bot, pin_cap=8, tmp_dir=tmp_path)
    await check_every_memory_scored_once_of(bot)
    db_path = bot.db.path if bot.db is not None else None
    await harness.stop_bot()
    if db_path is not None:
        # And SQLite's own checks too, of its file with the bot stopped.
        assert set(memories_by_message(db_path)) == set(healthy)
        counts = check_store(db_path, pin_cap=8, tmp_dir=tmp_path)
        check_every_memory_scored_once(db_path)
    assert counts.events.get("memory_significance_failed", 0) == 0, "a transient outage recorded scoring failures"
    print(
        f"LLM faults ({size.outages} outages): {len(CHAT_FAULTS)} fault kinds"
        f" ({', '.join(f'{n}->{k}' for n, (_, k) in CHAT_FAULTS.items())}),"
        f" {len(expected_failures)} polite failure replies ({size.storm_turns} per 429 storm),"
        f" {len(healthy)} turns answered and remembered, 0 memories for failed turns;"
        f" {len(harness.llm.requests_for(CLASSIFIER_MODEL))} classifier calls for {counts.scored} scores;"
        f" slowest polite reply {slowest_failure:.1f}s after the message;"
        f" scoring caught up in {', '.join(f'{c:.1f}s' for c in catch_ups)} after outages of"
        f" {', '.join(f'{o:.1f}s' for o in outages)};"
        f" {probe.summary()}; {time.monotonic() - began:.1f}s in all"
    )
    assert slowest_failure <= MAX_FAILURE_REPLY_SECONDS
    for outage_seconds, catch_up in zip(outages, catch_ups, strict=True):
        assert catch_up <= outage_seconds + CATCH_UP_SLACK_SECONDS
    assert probe.percentile(0.99) <= MAX_LAG_P99_SECONDS, probe.summary()
    assert probe.worst <= MAX_LAG_SECONDS, probe.summary()


async def send_all(discord, turns: list[tuple[int, int, str]]) -> list[int]:
    """Post every (channel, author, content) in a quick burst; returns the message ids."""
    ids = []
    for channel_id, author_id, content in turns:
        ids.append(int((await discord.send_message(channel_id, author_id, content))["id"]))
        # The fake shares the bot's loop and posting never suspends: without
        # this, the burst itself would stall the loop the probe measures.
        await asyncio.sleep(0)
    return ids


async def wait_for_answers(discord, message_ids, timeout: float) -> None:
    wanted = set(message_ids)
    async with asyncio.timeout(timeout):
        while wanted - answers_by_message(discord.bot_messages).keys():
            await asyncio.sleep(0.05)


def answers_by_message(bot_messages: list[dict]) -> dict[int, list[str]]:
    answers: dict[int, list[str]] = {}
    for message in bot_messages:
        if reference := message.get("message_reference"):
            answers.setdefault(int(reference["message_id"]), []).append(message["content"])
    return answers


async def test_an_outage_failing_several_calls_at_once_pauses_scoring_once(db):
    """Concurrent calls failing in the same outage grow the backoff once, not once each: else a
    short outage would stop scoring for minutes after the classifier is back."""
    for i in range(8):
        await write_memory(db, TurnRecord(SCOPE_A, LISTEN_CHANNEL, ALICE, "Alice", "Mnemo", f"turn {i}", "ok"))
    failing_together = asyncio.Barrier(4)

    class DownClassifier:
        async def score(self, memory, earlier, *, attempts):
            await failing_together.wait()
            raise LLMError("server", "HTTP 500")

    worker = SignificanceWorker(SQLiteStore(db), DownClassifier(), concurrency=4, pin_cap=8, rescan_seconds=60)
    worker.start()
    try:
        async with asyncio.timeout(5):
            while worker.status().errors < 4:
                await asyncio.sleep(0.01)
        status = worker.status()
        assert status.backoff_until is not None
        assert status.backoff_until - time.time() <= BACKOFF_START_SECONDS + 0.1
    finally:
        await worker.stop()
