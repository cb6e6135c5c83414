"""Run the real bot in-process against the fake Discord and the fake LLM.

The world: guild A (two text channels, one of them a listen channel, and
a thread) and guild B, with alice, bob and carol as members, and the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import yarl

from bot import CompanionBot, create_bot
from companion.config import Config, parse_config
from storage.scope import Scope
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import FakeLLM

BOT_ID = 1000
APP_OWNER = 1
ALICE, BOB, CAROL = 11, 12, 13
GUILD_A, GUILD_B = 100, 200
LISTEN_CHANNEL, QUIET_CHANNEL, OTHER_CHANNEL = 101, 102, 103
THREAD_IN_LISTEN = 104
B_CHANNEL = 201
CHAT_MODEL = "fake-chat"
CLASSIFIER_MODEL = "fake-classifier"
BACKENDS = ("sqlite", "postgresql")
# The environment variable the bot under test reads PostgreSQL's DSN from.
TEST_DSN_ENV = "COMPANION_TEST_DATABASE_URL"
SCOPE_A = Scope.for_guild(BOT_ID, GUILD_A)
SCOPE_B = Scope.for_guild(BOT_ID, GUILD_B)


def build_world(fake: FakeDiscord) -> None:
    fake.add_user(APP_OWNER, "owner")
    fake.add_user(ALICE, "alice", global_name="Alice")
    fake.add_user(BOB, "bob", global_name="Bob")
    fake.add_user(CAROL, "carol", global_name="Carol")
    fake.add_user(5000, "otherbot", bot=True)
    fake.add_guild(
        GUILD_A,
        "Guild A",
        owner_id=ALICE,
        channel_ids=[LISTEN_CHANNEL, QUIET_CHANNEL, OTHER_CHANNEL],
        member_ids=[APP_OWNER, ALICE, BOB, CAROL, 5000],
        threads={THREAD_IN_LISTEN: LISTEN_CHANNEL},
    )
    fake.add_guild(GUILD_B, "Guild B", owner_id=BOB, channel_ids=[B_CHANNEL], member_ids=[BOB, CAROL])


def harness_config(
    tmp_path: Path, discord_fake: FakeDiscord, llm_fake: FakeLLM, *, backend: str = "sqlite", **sections: dict[str, Any]
) -> Config:
    """A config pointing at the fakes, with fast timings, on `backend`; `sections` override keys."""
    document: dict[str, dict[str, Any]] = {
        "discord": {
            "api_base": discord_fake.api_base,
            "gateway_url": discord_fake.gateway_url,
            "listen_channel_ids": [LISTEN_CHANNEL],
            "token_env": "COMPANION_TEST_TOKEN",
        },
        "llm": {
            "base_url": llm_fake.base_url,
            "api_key_env": "",
            "chat_model": CHAT_MODEL,
            "classifier_model": CLASSIFIER_MODEL,
            "timeout_seconds": 5.0,
            "max_retries": 2,
        },
        "storage": {"data_dir": str(tmp_path / "data"), "backend": backend, "postgresql_dsn_env": TEST_DSN_ENV},
        "memory": {"scoring_rescan_seconds": 2.0},
        # Tests drive many turns from one person; the tests of the per-person limit turn it on.
        "chat": {"user_turns_per_minute": 0},
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return parse_config(document, source=tmp_path / "config.toml")


async def _identify_at_once(shard_id: int | None, *, initial: bool = False) -> None:
    return None


@dataclass
class Harness:
    tmp_path: Path
    discord: FakeDiscord
    llm: FakeLLM
    backend: str = "sqlite"
    config: Config | None = None
    bot: CompanionBot | None = None
    _task: asyncio.Task[None] | None = None
    _saved_endpoints: tuple[str, yarl.URL] = field(
        default_factory=lambda: (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    )

    async def start_bot(self, **sections: dict[str, Any]) -> CompanionBot:
        self.config = harness_config(self.tmp_path, self.discord, self.llm, backend=self.backend, **sections)
        connections = self.discord.connections
        self.bot = await create_bot(self.config, guild_ready_timeout=0.05)
        if self.config.discord.sharded:
            # discord.py spaces a process's IDENTIFYs 5 s apart, Discord's rate limit; the fake has none.
            self.bot.before_identify_hook = _identify_at_once  # type: ignore[method-assign]
        self._task = asyncio.create_task(self.bot.start("fake-token"))
        await self._wait_connected(connections)
        return self.bot

    async def _wait_connected(self, connections_before: int) -> None:
        assert self.bot is not None and self._task is not None
        async with asyncio.timeout(15):
            while not self.bot.is_ready():
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)
        assert self.discord.connections > connections_before

    async def stop_bot(self) -> None:
        bot, task = self.bot, self._task
        self.bot, self._task = None, None
        if bot is None:
            return
        await bot.close()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bot.release_resources()

    async def restore_endpoints(self) -> None:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved_endpoints

    async def say(self, channel_id: int, author_id: int, content: str, **kwargs: Any) -> dict:
        """Send a message and wait for the bot's next reply in that channel."""
        before = len(self.replies(channel_id))
        await self.discord.send_message(channel_id, author_id, content, **kwargs)
        messages = await self.discord.wait_for_bot_messages(before + 1, channel_id=channel_id)
        return messages[before]

    def replies(self, channel_id: int | None = None) -> list[dict]:
        return [m for m in self.discord.bot_messages if channel_id is None or m["channel_id"] == channel_id]

    async def wait_for_memories(self, count: int, timeout: float = 10) -> None:
        assert self.bot is not None
        async with asyncio.timeout(timeout):
            while (await self.bot.store.counts()).memories < count:
                await asyncio.sleep(0.02)

    async def wait_until_scored(self, timeout: float = 15) -> None:
        """Until no memory waits for a score (scored or given up on)."""
        assert self.bot is not None
        async with asyncio.timeout(timeout):
            while await self.bot.scoring.pending_count() or self.bot.scoring.status().in_flight:
                await asyncio.sleep(0.02)
