"""Significance scoring and auto-pins, end to end through the fakes."""

import asyncio
import json
import logging
import time

from tests.backend_queries import event_kinds, event_payloads
from tests.fakes.llm_server import Answer, Fail, Hang, scored_turn
from tests.harness import ALICE, BOB, CAROL, CHAT_MODEL, CLASSIFIER_MODEL, LISTEN_CHANNEL, SCOPE_A
from tests.projection_check import live_and_rebuilt_of


def pivotal_when_marked(body):
    """Score 3 for turns that say 'milestone', 0 otherwise."""
    turn = scored_turn(body)
    return Answer(json.dumps({"significance": 3 if "milestone" in turn else 0}))


async def pinned_memories(bot) -> list:
    """Every pin of guild A, oldest first."""
    pinned, _ = await bot.store.pinned_and_recent(SCOPE_A, LISTEN_CHANNEL, 0)
    return pinned


async def pinned_ids(bot) -> list[int]:
    return [m.id for m in await pinned_memories(bot)]


async def test_pivotal_turn_is_pinned_and_reaches_every_later_prompt(harness):
    harness.llm.responders[CLASSIFIER_MODEL] = pivotal_when_marked
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "big milestone: I passed my driving test today")
    await harness.wait_for_memories(1)
    await harness.wait_until_scored()
    assert len(await pinned_ids(bot)) == 1
    # The classifier saw the turn and was asked for structured output.
    request = harness.llm.requests_for(CLASSIFIER_MODEL)[0].body
    assert "passed my driving test" in request["messages"][-1]["content"]
    assert request["response_format"]["type"] == "json_schema"

    await harness.say(LISTEN_CHANNEL, ALICE, "what's for dinner")
    system, records = harness.llm.requests_for(CHAT_MODEL)[-1].body["messages"][:2]
    assert "passed my driving test" not in system["content"]
    assert "Pinned (always keep these in mind):" in records["content"]
    assert "passed my driving test" in records["content"]


async def test_ten_pivotal_turns_leave_eight_pins_and_the_oldest_go(harness):
    harness.llm.responders[CLASSIFIER_MODEL] = pivotal_when_marked
    bot = await harness.start_bot()
    for i in range(10):
        # Three people's news: one person's alone may hold only half the auto-pins.
        await harness.say(LISTEN_CHANNEL, (ALICE, BOB, CAROL)[i % 3], f"milestone number {i}")
    await harness.wait_for_memories(10)
    await harness.wait_until_scored()
    all_ids = [m.id for m in reversed(await bot.store.list_memories(SCOPE_A, limit=20))]
    assert await pinned_ids(bot) == all_ids[2:]
    kinds = await event_kinds(bot)
    assert kinds.count("memory_significance_set") == 10


async def test_manual_pin_survives_auto_pin_pressure(harness):
    harness.llm.responders[CLASSIFIER_MODEL] = lambda body: Answer("0")
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "remember my allergy to peanuts")
    await harness.wait_for_memories(1)
    await harness.wait_until_scored()
    [memory] = await bot.store.list_memories(SCOPE_A)
    await bot.store.pin(SCOPE_A, memory.id, actor_id=ALICE, pin_cap=8)

    harness.llm.responders[CLASSIFIER_MODEL] = pivotal_when_marked
    for i in range(10):
        await harness.say(LISTEN_CHANNEL, (ALICE, BOB, CAROL)[i % 3], f"milestone {i}")
    await harness.wait_for_memories(11)
    await harness.wait_until_scored()
    pinned = await pinned_memories(bot)
    assert len(pinned) == 8
    assert pinned[0].id == memory.id and pinned[0].pin_auto is False


async def test_classifier_500_then_success_scores_once(harness):
    harness.llm.script(CLASSIFIER_MODEL, Fail(500), Answer('{"significance": 2}'))
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "hello")
    await harness.wait_for_memories(1)
    await harness.wait_until_scored()
    [memory] = await bot.store.list_memories(SCOPE_A)
    assert memory.significance == 2
    assert len(harness.llm.requests_for(CLASSIFIER_MODEL)) == 2


async def test_classifier_429_honours_retry_after(harness):
    harness.llm.script(CLASSIFIER_MODEL, Fail(429, retry_after=1), Answer("2"))
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "hello")
    await harness.wait_for_memories(1)
    await harness.wait_until_scored()
    first, second = harness.llm.requests_for(CLASSIFIER_MODEL)
    assert second.time - first.time >= 0.9
    [memory] = await bot.store.list_memories(SCOPE_A)
    assert memory.significance == 2


async def test_garbage_answers_are_recorded_as_failure_not_a_score(harness):
    harness.llm.script(CLASSIFIER_MODEL, Answer("very important!"), Answer("7"), Answer("{not json"))
    harness.llm.responders[CLASSIFIER_MODEL] = lambda body: Answer("banana")
    bot = await harness.start_bot(memory={"scoring_rescan_seconds": 600})
    await harness.say(LISTEN_CHANNEL, ALICE, "hello")
    await harness.wait_for_memories(1)
    await harness.wait_until_scored()
    [memory] = await bot.store.list_memories(SCOPE_A)
    assert memory.significance is None and memory.scoring_failures == 3 and memory.scoring_gave_up
    kinds = await event_kinds(bot)
    assert "memory_significance_set" not in kinds
    assert kinds.count("memory_significance_failed") == 3  # one per call spent
    assert bot.scoring.status().failures == 3


async def test_a_memory_spends_at_most_three_classifier_calls_over_all_its_rounds(harness):
    # One unusable answer, then an outage ends the round; the next round may spend only two more.
    harness.llm.script(CLASSIFIER_MODEL, Answer("very important!"), Fail(503))
    harness.llm.responders[CLASSIFIER_MODEL] = lambda body: Answer("banana")
    bot = await harness.start_bot(llm={"max_retries": 0}, memory={"scoring_rescan_seconds": 1})
    bot.scoring.backoff_start_seconds = 0.05
    await harness.say(LISTEN_CHANNEL, ALICE, "hello")
    await harness.wait_for_memories(1)
    await harness.wait_until_scored()
    await asyncio.sleep(2.5)  # rescans come and go: nothing more is asked
    answered = harness.llm.requests_for(CLASSIFIER_MODEL)
    assert len(answered) == 4  # three unusable answers and the 503
    [memory] = await bot.store.list_memories(SCOPE_A)
    assert memory.scoring_gave_up and memory.scoring_failures == 3
    assert (await event_kinds(bot)).count("memory_significance_failed") == 3
    assert bot.scoring.status().errors == 1


async def test_classifier_hang_beyond_timeout_is_retried_later(harness):
    harness.llm.script(CLASSIFIER_MODEL, Hang(), Hang())
    bot = await harness.start_bot(llm={"timeout_seconds": 0.3, "max_retries": 1}, memory={"scoring_rescan_seconds": 1})
    bot.scoring.backoff_start_seconds = 0.2
    await harness.say(LISTEN_CHANNEL, ALICE, "hello")
    await harness.wait_for_memories(1)
    await harness.wait_until_scored(timeout=15)
    [memory] = await bot.store.list_memories(SCOPE_A)
    assert memory.significance == 1
    assert bot.scoring.status().errors >= 1


async def test_chat_keeps_flowing_while_the_classifier_is_down(harness):
    harness.llm.responders[CLASSIFIER_MODEL] = lambda body: Fail(503)
    bot = await harness.start_bot(llm={"max_retries": 0}, memory={"scoring_rescan_seconds": 1})
    bot.scoring.backoff_start_seconds = 0.1
    bot.scoring.backoff_max_seconds = 0.3
    started = time.monotonic()
    for i in range(5):
        reply = await harness.say(LISTEN_CHANNEL, ALICE, f"message {i}")
        assert reply["content"].startswith("I hear you")
    assert time.monotonic() - started < 5
    await harness.wait_for_memories(5)
    assert await bot.scoring.pending_count() == 5
    assert bot.scoring.status().errors >= 1

    # When it comes back, everything gets scored.
    harness.llm.responders[CLASSIFIER_MODEL] = lambda body: Answer("1")
    await harness.wait_until_scored(timeout=15)
    kinds = await event_kinds(bot)
    assert kinds.count("memory_significance_set") == 5


async def test_structured_output_falls_back_to_a_bare_integer(harness):
    def picky(body):
        if "response_format" in body:
            return Fail(400, message="response_format is not supported")
        return Answer("2")

    harness.llm.responders[CLASSIFIER_MODEL] = picky
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "hello")
    await harness.say(LISTEN_CHANNEL, ALICE, "again")
    await harness.wait_for_memories(2)
    await harness.wait_until_scored()
    assert [m.significance for m in await bot.store.list_memories(SCOPE_A)] == [2, 2]
    with_format = [r for r in harness.llm.requests_for(CLASSIFIER_MODEL) if "response_format" in r.body]
    assert len(with_format) == 1


async def test_scoring_runs_concurrently_up_to_the_limit(harness):
    harness.llm.responders[CLASSIFIER_MODEL] = lambda body: Answer("1", delay=0.3)
    bot = await harness.start_bot(memory={"scoring_concurrency": 3})
    bot.scoring.pause()
    for i in range(9):
        await harness.say(LISTEN_CHANNEL, ALICE, f"message {i}")
    await harness.wait_for_memories(9)
    started = time.monotonic()
    await bot.scoring.resume()
    await harness.wait_until_scored()
    assert harness.llm.max_in_flight == 3
    assert time.monotonic() - started < 2.0


async def test_rebuild_after_scoring_and_pins_equals_live(harness, tmp_path):
    harness.llm.responders[CLASSIFIER_MODEL] = pivotal_when_marked
    bot = await harness.start_bot(memory={"pin_cap": 3})
    for i in range(6):
        await harness.say(LISTEN_CHANNEL, ALICE, f"milestone {i}" if i % 2 else f"small talk {i}")
    await harness.wait_for_memories(6)
    await harness.wait_until_scored()
    live, rebuilt = await live_and_rebuilt_of(bot, tmp_path)
    assert live == rebuilt


async def test_the_worker_logs_where_scoring_stands_once_a_rescan_period(harness, caplog):
    caplog.set_level(logging.INFO, logger="companion.worker")

    def classify(body: dict) -> Answer:
        # "first" never gets a usable answer (it is given up after three tries); "second" a score.
        turn = scored_turn(body)
        return Answer("nonsense" if "Alice said: first" in turn else '{"significance": 1}')

    harness.llm.responders[CLASSIFIER_MODEL] = classify
    bot = await harness.start_bot(memory={"scoring_rescan_seconds": 1.0})
    await harness.say(LISTEN_CHANNEL, ALICE, "first")
    await harness.say(LISTEN_CHANNEL, ALICE, "second")
    await harness.wait_for_memories(2)

    def progress() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring: ")]

    settled = "0 queued, 0 in flight, 1 scored, 3 failures, 0 errors"
    async with asyncio.timeout(10):
        while not any(settled in line for line in progress()):
            await asyncio.sleep(0.05)
    assert bot.scoring.status().last_success_at is not None
    [line] = [line for line in progress() if settled in line]
    assert "last success" in line and "never" not in line
    # Nothing new happened since: no repeated line.
    await asyncio.sleep(1.5)
    assert len([line for line in progress() if settled in line]) == 1


async def test_a_provider_error_that_quotes_the_turn_is_not_stored(harness):
    def refuse(body: dict) -> Fail:
        # Some endpoints quote the request in their error.
        return Fail(400, message=f"content policy: {scored_turn(body)}")

    harness.llm.responders[CLASSIFIER_MODEL] = refuse
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "my locker code is zyxwvu4321")
    await harness.wait_for_memories(1)
    await harness.wait_until_scored()
    reasons = [payload["reason"] for payload in await event_payloads(bot, "memory_significance_failed")]
    assert reasons and set(reasons) == {"classifier refused: rejected (HTTP 400)"}
