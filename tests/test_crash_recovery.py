"""A SIGKILL in the middle of scoring loses nothing."""

import asyncio

import pytest

from tests.botprocess import BotProcess, query, write_config
from tests.fakes.llm_server import Answer
from tests.harness import ALICE, CLASSIFIER_MODEL, LISTEN_CHANNEL


@pytest.fixture
async def bot_process(tmp_path, discord_fake, llm_fake):
    process = BotProcess(write_config(tmp_path, discord_fake, llm_fake))
    yield process
    process.kill()
    if process.process is not None:
        await process.wait()


async def test_sigkill_while_scoring_then_restart_scores_every_memory_exactly_once(
    tmp_path, discord_fake, llm_fake, bot_process
):
    db_path = tmp_path / "data" / "memory.db"
    # Scoring hangs long enough for the kill to land mid-call.
    llm_fake.responders[CLASSIFIER_MODEL] = lambda body: Answer("2", delay=30)
    await bot_process.start(discord_fake)
    for i in range(6):
        await discord_fake.send_message(LISTEN_CHANNEL, ALICE, f"turn number {i}")
    await discord_fake.wait_for_bot_messages(6, channel_id=LISTEN_CHANNEL, timeout=20)
    async with asyncio.timeout(10):
        while len(query(db_path, "SELECT id FROM memories")) < 6:
            await asyncio.sleep(0.05)
    await llm_fake.wait_for_requests(4, model=CLASSIFIER_MODEL)

    bot_process.kill()
    assert await bot_process.wait() == -9
    assert query(db_path, "SELECT count(*) FROM events WHERE kind = 'memory_significance_set'") == [(0,)]

    llm_fake.responders[CLASSIFIER_MODEL] = lambda body: Answer("2")
    await bot_process.start(discord_fake)
    async with asyncio.timeout(20):
        while query(db_path, "SELECT count(*) FROM memories WHERE significance IS NULL") != [(0,)]:
            await asyncio.sleep(0.1)
    assert await bot_process.stop() == 0, bot_process.log_tail()

    scored = query(
        db_path,
        "SELECT json_extract(payload, '$.memory_id'), count(*) FROM events"
        " WHERE kind = 'memory_significance_set' GROUP BY 1 ORDER BY 1",
    )
    memory_ids = [row[0] for row in query(db_path, "SELECT id FROM memories ORDER BY id")]
    assert scored == [(memory_id, 1) for memory_id in memory_ids]
    assert query(db_path, "PRAGMA integrity_check") == [("ok",)]
