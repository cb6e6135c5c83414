"""Run `bot.py` as a real subprocess against the in-process fakes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from storage import sqlite
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import FakeLLM
from tests.harness import CHAT_MODEL, CLASSIFIER_MODEL, LISTEN_CHANNEL

REPO = Path(__file__).resolve().parent.parent
TOKEN_ENV = "COMPANION_TEST_TOKEN"


def write_config(
    tmp_path: Path,
    discord_fake: FakeDiscord,
    llm_fake: FakeLLM,
    extra: str = "",
    *,
    chat: str = "",
    discord: str = "",
    storage: str = 'data_dir = "data"',
    listen_channel_ids: Sequence[int] = (LISTEN_CHANNEL,),
) -> Path:
    """A config for the fakes; `extra` goes on in [memory] (or opens its own sections), `chat` in
    [chat], `discord` in [discord]; `storage` is the [storage] section's body."""
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[discord]
token_env = "{TOKEN_ENV}"
api_base = "{discord_fake.api_base}"
gateway_url = "{discord_fake.gateway_url}"
listen_channel_ids = {list(listen_channel_ids)}
{discord}

[llm]
base_url = "{llm_fake.base_url}"
api_key_env = ""
chat_model = "{CHAT_MODEL}"
classifier_model = "{CLASSIFIER_MODEL}"
timeout_seconds = 10.0

[storage]
{storage}

[chat]
# Tests drive many turns from one person; the tests of the per-person limit turn it on.
user_turns_per_minute = 0
{chat}

[memory]
scoring_rescan_seconds = 2
{extra}
""",
        encoding="utf-8",
    )
    return path


class BotProcess:
    """One `python bot.py` process; always stopped by `kill()` or `stop()`."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = config_path.parent / "bot.log"

    async def start(self, discord_fake: FakeDiscord, timeout: float = 30, *, umask: int | None = None) -> None:
        connections = discord_fake.connections
        env = {**os.environ, TOKEN_ENV: "fake-token", "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(REPO / "bot.py"),
                "--config",
                str(self.config_path),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=log,
                preexec_fn=None if umask is None else (lambda: os.umask(umask)),
            )
        finally:
            log.close()
        async with asyncio.timeout(timeout):
            while discord_fake.connections <= connections:
                if self.process.returncode is not None:
                    raise RuntimeError(f"bot exited with {self.process.returncode}: {self.log_tail()}")
                await asyncio.sleep(0.05)
        await discord_fake.wait_until_ready()

    def kill(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.process is None or self.process.returncode is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                return await self.process.wait()
        except TimeoutError:
            self.kill()
            await self.process.wait()
            return None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def query(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """A quick read of the bot's database from the test process."""
    conn = sqlite.connect(db_path, query_only=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
