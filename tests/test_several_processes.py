"""Two bot processes on one PostgreSQL database, one per shard, and one of them SIGKILLed mid-scoring.

Both run `bot.py` as real subprocesses against the fake Discord and the fake
LLM. 1,000 turns go through them, in three channels of each shard's server.
The process that runs the scheduled jobs is killed while its classifier
calls are in flight; the other takes over its claims and the schedule, and
the killed one comes back as a follower. In the end every memory is scored
exactly once, there is exactly one nightly backup, and a rebuild of the
projections from the log equals the live ones.
"""

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from storage.postgres.rebuild import projection_rows, rebuild_projections
from tests.botprocess import BotProcess, write_config
from tests.fakes.discord_server import FakeDiscord, shard_of
from tests.fakes.llm_server import Answer, FakeLLM
from tests.harness import (
    ALICE,
    APP_OWNER,
    BOB,
    CLASSIFIER_MODEL,
    GUILD_A,
    LISTEN_CHANNEL,
    OTHER_CHANNEL,
    QUIET_CHANNEL,
    TEST_DSN_ENV,
)

GUILD_C = (1 << 22) + 300  # on shard 1 of 2; the harness's guild A is on shard 0
C_CHANNELS = [301, 302, 303]
SHARD_CHANNELS = {0: [LISTEN_CHANNEL, QUIET_CHANNEL, OTHER_CHANNEL], 1: C_CHANNELS}
CLASSIFIER_DELAY_SECONDS = 0.05
LEASE_SECONDS = 2
REPLY_TIMEOUT_SECONDS = 20


@pytest.fixture
def world(discord_fake: FakeDiscord, llm_fake: FakeLLM) -> None:
    discord_fake.add_guild(GUILD_C, "Guild C", owner_id=BOB, channel_ids=C_CHANNELS, member_ids=[APP_OWNER, ALICE])
    assert (shard_of(GUILD_A, 2), shard_of(GUILD_C, 2)) == (0, 1)
    # Slow enough that a kill always finds calls in flight.
    llm_fake.responders[CLASSIFIER_MODEL] = lambda body: Answer('{"significance": 1}', delay=CLASSIFIER_DELAY_SECONDS)


def shard_config(folder: Path, data_dir: Path, discord_fake: FakeDiscord, llm_fake: FakeLLM, shard: int) -> Path:
    folder.mkdir()
    return write_config(
        folder,
        discord_fake,
        llm_fake,
        f"scoring_lease_seconds = {LEASE_SECONDS}\nscoring_concurrency = 4\n\n[backup]\ntakeover_seconds = 1\n",
        discord=f"shard_count = 2\nshard_ids = [{shard}]",
        storage=f'data_dir = "{data_dir}"\nbackend = "postgresql"\npostgresql_dsn_env = "{TEST_DSN_ENV}"',
        listen_channel_ids=[*SHARD_CHANNELS[0], *SHARD_CHANNELS[1]],
    )


async def drive(discord_fake: FakeDiscord, channel_id: int, turns: int, label: str) -> None:
    """`turns` turns in one channel, each waiting for its reply (as people do)."""
    for i in range(turns):
        before = len([m for m in discord_fake.bot_messages if m["channel_id"] == channel_id])
        await discord_fake.send_message(channel_id, ALICE, f"{label} turn {i} in channel {channel_id}")
        await discord_fake.wait_for_bot_messages(before + 1, channel_id=channel_id, timeout=REPLY_TIMEOUT_SECONDS)


async def drive_shard(discord_fake: FakeDiscord, shard: int, turns_per_channel: int, label: str) -> None:
    await asyncio.gather(*(drive(discord_fake, c, turns_per_channel, label) for c in SHARD_CHANNELS[shard]))


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


@pytest.mark.usefixtures("world")
async def test_two_processes_share_the_memory_and_survive_a_kill(
    tmp_path, discord_fake, llm_fake, postgres_dsn, monkeypatch
):
    monkeypatch.setenv(TEST_DSN_ENV, postgres_dsn)
    data_dir = tmp_path / "shared-data"
    first = BotProcess(shard_config(tmp_path / "first", data_dir, discord_fake, llm_fake, 0))
    second = BotProcess(shard_config(tmp_path / "second", data_dir, discord_fake, llm_fake, 1))
    conn = await asyncpg.connect(postgres_dsn)

    async def memories() -> int:
        return await conn.fetchval("SELECT count(*) FROM memories")

    async def unscored(shard_guild: int | None = None) -> int:
        return await conn.fetchval(
            "SELECT count(*) FROM memories WHERE significance IS NULL AND ($1::bigint IS NULL OR scope_id = $1)",
            shard_guild,
        )

    try:
        # The first to start runs the schedule (its catch-up takes the day's nightly backup).
        await asyncio.gather(first.start(discord_fake), second.start(discord_fake))
        await wait_for(lambda: _both_shards(discord_fake), 15, "both shards connected")

        # 600 turns across both processes.
        await asyncio.gather(drive_shard(discord_fake, 0, 100, "a"), drive_shard(discord_fake, 1, 100, "a"))
        await wait_for(lambda: _equals(memories(), 600), 15, "600 memories")

        # Kill the process running the schedule while its classifier calls are in flight.
        leader, follower = (first, second) if _leads(first) else (second, first)
        assert _leads(leader) and not _leads(follower), (leader.log_tail(), follower.log_tail())
        leader_shard = 0 if leader is first else 1
        leader_guild = GUILD_A if leader_shard == 0 else GUILD_C
        await wait_for(lambda: _in_flight(llm_fake), 10, "classifier calls in flight")
        assert await unscored(leader_guild) > 0
        in_flight_at_kill = llm_fake._in_flight
        leader.kill()
        await leader.wait()
        killed_at = time.monotonic()
        calls_at_kill = len(llm_fake.requests_for(CLASSIFIER_MODEL))

        # The other process takes the schedule over, and scores what the dead one had claimed.
        await wait_for(lambda: _async(_leads(follower)), 10, "the follower to take the schedule over")
        took_over_after = time.monotonic() - killed_at
        await drive_shard(discord_fake, 1 - leader_shard, 67, "b")
        await wait_for(lambda: _equals(unscored(leader_guild), 0), LEASE_SECONDS * 10, "the dead one's claims taken")

        # The killed process comes back as a follower, and the turns go on: 1,000 in all.
        restarted_at = leader.log_path.stat().st_size
        await leader.start(discord_fake)
        await wait_for(lambda: _both_shards(discord_fake), 15, "both shards connected again")
        await drive_shard(discord_fake, leader_shard, 66, "c")
        await drive(discord_fake, SHARD_CHANNELS[leader_shard][0], 1, "d")
        await wait_for(lambda: _equals(memories(), 1000), 15, "1,000 memories")
        await wait_for(lambda: _equals(unscored(), 0), 60, "every memory scored")
        assert not _leads(leader, after=restarted_at)
    finally:
        for process in (first, second):
            await process.stop()

    try:
        # Every turn remembered once, and every memory scored exactly once.
        rows = await conn.fetch("SELECT id, user_message_id FROM memories")
        assert len(rows) == 1000 and len({row["user_message_id"] for row in rows}) == 1000
        scored = Counter(
            json.loads(payload)["memory_id"]
            for (payload,) in await conn.fetch("SELECT payload FROM events WHERE kind = 'memory_significance_set'")
        )
        assert set(scored) == {row["id"] for row in rows}
        assert set(scored.values()) == {1}
        # Calls cut off by the kill were made again by the other process; nothing else twice.
        calls = len(llm_fake.requests_for(CLASSIFIER_MODEL))
        assert 1000 <= calls <= 1000 + 8, calls
        assert calls_at_kill > 0

        # Exactly one nightly backup, whoever ran the schedule.
        nightly = sorted(p.name for p in (data_dir / "backups").glob("memory-*-nightly.pgdump"))
        assert len(nightly) == 1, nightly
        print(
            f"\n1,000 turns; killed shard {leader_shard}'s process with {in_flight_at_kill} classifier calls in flight;"
            f" the other took the schedule over {took_over_after:.1f} s later (takeover_seconds = 1) and"
            f" its claims once their {LEASE_SECONDS} s lease ran out; {calls} classifier calls for 1,000"
            f" memories, each scored once; nightly backups: {nightly}"
        )

        # The projections are what the log says.
        async with conn.transaction():
            live = await projection_rows(conn)
            await rebuild_projections(conn)
            assert await projection_rows(conn) == live
    finally:
        await conn.close()


async def _equals(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def _async(value: bool) -> bool:
    return value


async def _both_shards(discord_fake: FakeDiscord) -> bool:
    return sorted(discord_fake.connected_shards()) == [(0, 2), (1, 2)]


async def _in_flight(llm_fake: FakeLLM) -> bool:
    return llm_fake._in_flight > 0


def _leads(process: BotProcess, *, after: int = 0) -> bool:
    """Whether the process's log says it took the schedule (after byte `after` of its log)."""
    text = process.log_path.read_bytes()[after:].decode(errors="replace") if process.log_path.exists() else ""
    return "this process now runs the scheduled backups" in text
