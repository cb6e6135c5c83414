"""The bot: the Discord client, its lifecycle, and its one slash-command error handler.

Still the entry point: `python bot.py [COMMAND] ...` runs `cli.main()`, which
parses the command line (run the bot, or manage its data) and calls
`run_bot` here for the bot itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from cogs.replies import UserFacingError, send_ephemeral, storage_error_text
from companion.backend import Backend, open_backend
from companion.config import Config
from companion.forgetting import Forgetting
from companion.llm import EndpointProbe, LLMClient
from companion.operations import Operations
from companion.significance import Classifier
from companion.turns import TurnService
from companion.worker import SignificanceWorker
from storage import sqlite
from storage.datadir_lock import DataDirLock
from storage.files import make_private
from storage.sqlite_store import store_error
from storage.store import StoreError

log = logging.getLogger("companion")

INITIAL_EXTENSIONS = ("cogs.chat", "cogs.memory", "cogs.admin", "cogs.privacy")
# The database connections run on threads that must take the GIL back to
# hand over each result; Python's default of 5 ms per hand-over would add up
# to milliseconds to every read of a turn.
GIL_SWITCH_INTERVAL_SECONDS = 0.0005

# No reply may ever ping @everyone, @here or a role, whatever the model
# writes; users are not pinged either, except where a cog asks for it.
ALLOWED_MENTIONS = discord.AllowedMentions(everyone=False, roles=False, users=False, replied_user=False)
# The gateway's close code for a token it does not accept.
GATEWAY_AUTHENTICATION_FAILED = 4004
# The application's owners (its team) change in the developer portal, not through the gateway:
# they are fetched again this often, and before every owner check.
OWNERS_REFRESH_SECONDS = 600
# An owner check runs before a command answers, within Discord's 3 s: a slow fetch falls back.
OWNERS_FETCH_TIMEOUT_SECONDS = 2.0


class CompanionTree(app_commands.CommandTree):
    """The command tree with the bot's one error handler for every slash command."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError, /) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, UserFacingError):
            text = str(original)
        elif isinstance(error, app_commands.CheckFailure):
            text = str(error) or "You're not permitted to use this command."
        elif isinstance(error, app_commands.TransformerError):
            text = f"That isn't a valid value for this option: {error.value!r}."
        elif isinstance(original, StoreError | sqlite.Error):
            # A full disk or an I/O error: the write rolled back, and it is the storage, not the command.
            # (The backups and snapshots, SQLite's own, may raise its errors as they are.)
            name = interaction.command.qualified_name if interaction.command else "?"
            log.error("slash command /%s failed: database error: %s", name, original)
            text = storage_error_text(original if isinstance(original, StoreError) else store_error(original))
        else:
            name = interaction.command.qualified_name if interaction.command else "?"
            log.error("slash command /%s failed", name, exc_info=original)
            text = "Sorry, something went wrong running that command. The details are in the bot's log."
        try:
            await send_ephemeral(interaction, text)
        except discord.HTTPException as exc:
            log.warning("could not report a command error to the user: %s", exc)


class CompanionBot(commands.Bot):
    """The bot: owns the turn service and, through its cogs, the Discord side."""

    def __init__(self, config: Config, backend: Backend, llm: LLMClient, **client_options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=intents,
            allowed_mentions=ALLOWED_MENTIONS,
            tree_cls=CompanionTree,
            **client_options,
        )
        self.config = config
        self.backend = backend
        # SQLite's database itself, only for what is SQLite's alone (snapshots); None with
        # PostgreSQL. Everything else goes through the store.
        self.db = backend.db
        self.store = backend.store
        self.llm = llm
        self.scoring = SignificanceWorker(
            self.store,
            Classifier(llm, config.llm.classifier_model),
            concurrency=config.memory.scoring_concurrency,
            pin_cap=config.memory.pin_cap,
            rescan_seconds=config.memory.scoring_rescan_seconds,
            lease_seconds=config.memory.scoring_lease_seconds,
        )
        self.turns = TurnService(config, self.store, llm, memory_written=lambda _: self.scoring.notify())
        self.forgetting = Forgetting(self.store, self.scoring, lambda: self.user.id if self.user else None)
        self.started_at = time.time()
        self.app_owner_ids: frozenset[int] = frozenset()
        # What the start-up request to the model endpoint found; None until it is back.
        self.llm_probe: EndpointProbe | None = None
        self._background: list[asyncio.Task[None]] = []
        # Set while a restore runs: messages get this answer instead of a turn.
        self.paused_reason: str | None = None
        self.operations = Operations(
            config,
            backend.backups,
            backend.db,
            self.scoring,
            pause_turns=self._pause_turns,
            turns_in_flight=self._turns_in_flight,
            leadership=backend.leadership(),
            election_seconds=config.backup.takeover_seconds,
        )

    async def setup_hook(self) -> None:
        self.app_owner_ids = await self._fetch_app_owner_ids()
        # In the background: neither may delay the gateway connection.
        self._background += [
            asyncio.create_task(self._probe_llm(), name="llm-probe"),
            asyncio.create_task(self._refresh_owners_periodically(), name="owners-refresh"),
        ]
        await self._record_identity()
        for extension in INITIAL_EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands_if_changed()
        self.scoring.start()
        await self.operations.start()

    async def _probe_llm(self) -> None:
        """Say once, at start, whether the model endpoint answers; the bot runs either way."""
        probe = await self.llm.probe()
        self.llm_probe = probe
        base_url = self.config.llm.base_url
        if probe.kind == "reachable":
            log.info("model endpoint %s is reachable (%s)", base_url, probe.summary)
        elif probe.kind == "rejected":
            log.warning("model endpoint %s rejected the API key (%s); replies will fail", base_url, probe.summary)
        else:
            log.warning(
                "model endpoint %s is unreachable (%s); replies will fail until it answers", base_url, probe.summary
            )

    async def _record_identity(self) -> None:
        """Note the bot's user id in the database, for `recall` and `import` at the command line."""
        if self.user is None:
            return
        try:
            await self.store.record_login(self.user.id, str(self.user))
        except StoreError as exc:
            log.warning("could not record the bot's user id in the database: %s", exc)

    async def sync_commands_if_changed(self) -> None:
        """Register the slash commands with Discord, but only when they changed.

        Discord rate-limits command registration, so the last registered set
        is remembered (as a hash) in the data folder.
        """
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        stamp = self.config.storage.data_dir / "registered-commands.sha256"
        stamp_key = f"{self.application_id}:{digest}"
        if stamp.exists() and stamp.read_text().strip() == stamp_key:
            return
        await self.tree.sync()
        stamp.write_text(stamp_key + "\n")
        log.info("registered %d slash commands with Discord", len(payload))

    async def _fetch_app_owner_ids(self) -> frozenset[int]:
        app = await self.application_info()
        if app.team:
            return frozenset(
                m.id
                for m in app.team.members
                if m.role in (discord.TeamMemberRole.admin, discord.TeamMemberRole.developer)
            )
        return frozenset({app.owner.id})

    async def refresh_app_owner_ids(self) -> frozenset[int]:
        """The application's owners, fetched afresh; if Discord does not answer, the last known ones."""
        try:
            async with asyncio.timeout(OWNERS_FETCH_TIMEOUT_SECONDS):
                self.app_owner_ids = await self._fetch_app_owner_ids()
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            problem = "no answer in time" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            log.warning("could not fetch the application's owners (%s); using the ones known before", problem)
        return self.app_owner_ids

    async def _refresh_owners_periodically(self) -> None:
        while True:
            await asyncio.sleep(OWNERS_REFRESH_SECONDS)
            await self.refresh_app_owner_ids()

    async def is_owner_id(self, user_id: int) -> bool:
        """Whether the user is one of the bot's owners: `[discord] owner_ids` or the application's owner.

        The application's owners are fetched before deciding, so someone
        removed from its team loses access at once, without a restart.
        """
        if user_id in self.config.discord.owner_ids:
            return True
        return user_id in await self.refresh_app_owner_ids()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.operations.stop()
        await self.scoring.stop()
        self.forgetting.close()
        await super().close()

    async def release_resources(self) -> None:
        """Close the LLM client and the database; call once the bot is closed."""
        await self.llm.close()
        await self.store.close()

    async def on_ready(self) -> None:
        # Everything alive now (modules, the guild cache) stays alive: exempt it from the
        # collector, so its full passes stop pausing the loop to walk it again. On a later
        # READY (a new session rebuilds the cache), the old cache's cycles are freed first.
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    async def on_message(self, message: discord.Message, /) -> None:
        # There are no prefix commands; the chat cog handles every message.
        return

    def _pause_turns(self, reason: str | None) -> None:
        self.paused_reason = reason

    def _turns_in_flight(self) -> int:
        chat = self.get_cog("Chat")
        return chat.lanes.pending() if chat is not None else 0  # type: ignore[attr-defined]


class ShardedCompanionBot(CompanionBot, commands.AutoShardedBot):
    """The bot on some of Discord's shards: `[discord] shard_count`, running `shard_ids` (or all).

    One gateway session per shard. A guild's events all come through its shard,
    (guild_id >> 22) % shard_count, and DMs through shard 0, so each channel's
    messages still arrive in order.
    """

    def __init__(self, config: Config, backend: Backend, llm: LLMClient, **client_options: Any) -> None:
        super().__init__(
            config,
            backend,
            llm,
            shard_count=config.discord.shard_count,
            shard_ids=list(config.discord.shard_ids) or None,  # None: every shard
            **client_options,
        )

    async def on_shard_ready(self, shard_id: int) -> None:
        # The sharded client says READY once, for all its shards; a shard that identifies
        # afresh later rebuilds its part of the cache, which on_ready's collector pass must see.
        if self.is_ready():
            await self.on_ready()


def bot_class(config: Config) -> type[CompanionBot]:
    """The client for this config: discord.py's sharded one only when `[discord] shard_count` is set."""
    return ShardedCompanionBot if config.discord.sharded else CompanionBot


def point_discord_at(config: Config) -> None:
    """Use the configured REST and gateway endpoints (a fake one in tests)."""
    discord.http.Route.BASE = config.discord.api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.discord.gateway_url)


async def create_bot(config: Config, **client_options: Any) -> CompanionBot:
    """Open the database and the LLM client and build a bot that owns them."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    llm = LLMClient(config.llm, config.llm_api_key())
    point_discord_at(config)
    try:
        backend = await open_backend(config)
    except BaseException:
        await llm.close()
        raise
    return bot_class(config)(config, backend, llm, **client_options)


async def run_bot(config: Config) -> int:
    token = config.discord_token()
    data_dir = config.storage.data_dir
    if config.storage.backend == "postgresql":
        config.postgresql_dsn()  # a missing connection string stops the start before anything else
        data_dir.mkdir(parents=True, exist_ok=True)
        # Several processes share PostgreSQL, and on one host they may share a data folder (its backups).
        one_process_only: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    else:
        one_process_only = DataDirLock(data_dir).acquire("the bot")
    with one_process_only:
        fixed = make_private(config.storage.data_dir)
        if fixed:
            log.info("made %d files and folders in %s private to this user", fixed, config.storage.data_dir)
        return await _run_bot(config, token)


async def _run_bot(config: Config, token: str) -> int:
    bot = await create_bot(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(bot.close()))
    discord_config = config.discord
    try:
        async with bot:
            await bot.start(token)
    except discord.LoginFailure as exc:
        status = exc.__cause__.status if isinstance(exc.__cause__, discord.HTTPException) else 401
        print(f"error: Discord rejected the token in {discord_config.token_env} ({status})", file=sys.stderr)
        return 1
    except aiohttp.ClientConnectionError as exc:
        # Unreachable at login (or while setting up): discord.py gives up on these at once.
        print(f"error: cannot reach Discord at {discord_config.api_base} ({_connection_problem(exc)})", file=sys.stderr)
        return 1
    except discord.PrivilegedIntentsRequired:
        print(
            "error: enable the Message Content intent for this bot in the Discord developer portal",
            file=sys.stderr,
        )
        return 1
    except discord.ConnectionClosed as exc:
        # An unreachable gateway is retried for ever; what ends start() is a close code meaning "do not retry".
        if exc.code == GATEWAY_AUTHENTICATION_FAILED:
            print(
                f"error: Discord rejected the token in {discord_config.token_env} (gateway close code {exc.code})",
                file=sys.stderr,
            )
        else:
            print(f"error: Discord's gateway closed the connection with code {exc.code}", file=sys.stderr)
        return 1
    finally:
        await bot.release_resources()
    return 0


def _connection_problem(exc: aiohttp.ClientConnectionError) -> str:
    """Why a connection failed, in the system's words: "Name or service not known", "Connection refused"."""
    if not isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc) or type(exc).__name__
    os_error = exc.os_error
    if not isinstance(os_error, socket.gaierror) and os_error.errno in errno.errorcode:
        # asyncio's own text names the address ("Connect call failed ('127.0.0.1', 9)"); the base is named already.
        return os.strerror(os_error.errno)
    return os_error.strerror or str(os_error)


if __name__ == "__main__":
    # Imported here, not at the top: cli imports this module for run_bot.
    import cli

    sys.exit(cli.main())
