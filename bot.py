"""Entry point: run the companion bot, or manage its data from the command line.

python bot.py [--config PATH]                  run the bot
python bot.py rebuild [--full] [--config PATH] rebuild the projections (snapshot + tail, or the whole log)
python bot.py backup now|list [--config PATH]  take a backup now, or list them
python bot.py backup verify|restore NAME       check a backup, or restore it (bot stopped)
python bot.py recall (--guild ID | --dm USER_ID) --channel ID [--json] TEXT
                                               what the prompt for a message would hold
python bot.py import FILE... [--score]         load history from DiscordChatExporter JSON exports
python bot.py forget --user ID [--guild ID]    forget what a person said (all servers and DMs by default)
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from cogs.replies import UserFacingError, send_ephemeral, storage_error_text
from companion.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from companion.llm import EndpointProbe, LLMClient
from companion.operations import Operations
from companion.significance import Classifier
from companion.turns import TurnService
from companion.worker import SignificanceWorker
from memory_tools import ToolError, forget_user_command, import_command, recall_command, resolve_bot_id
from storage import backups, identity, memories, sqlite
from storage.backups import BackupError, UnknownBackup
from storage.commands import MemoryNotFound, forget_memories, forget_memory, rewrite_memory
from storage.database import Database, DatabaseNotReady
from storage.datadir_lock import DataDirInUse, DataDirLock
from storage.files import PRIVATE_UMASK, make_private
from storage.rebuild import rebuild_projections
from storage.schema import SchemaTooNew
from storage.scope import Scope
from storage.snapshots import SnapshotError, remove_unusable, scrub_memories, write_snapshot

log = logging.getLogger("companion")

INITIAL_EXTENSIONS = ("cogs.chat", "cogs.memory", "cogs.admin", "cogs.privacy")
# The database connections run on threads that must take the GIL back to
# hand over each result; Python's default of 5 ms per hand-over would add up
# to milliseconds to every read of a turn.
GIL_SWITCH_INTERVAL_SECONDS = 0.0005

# No reply may ever ping @everyone, @here or a role, whatever the model
# writes; users are not pinged either, except where a cog asks for it.
ALLOWED_MENTIONS = discord.AllowedMentions(everyone=False, roles=False, users=False, replied_user=False)
# After a forget, a checkpoint held up by a reader (a backup copying) is tried again this often.
CHECKPOINT_RETRY_SECONDS = 5
CHECKPOINT_RETRIES = 120
# Message ids Discord deleted lately, remembered so a turn answered meanwhile is not kept.
RECENTLY_DELETED_MESSAGES = 10_000
# The gateway's close code for a token it does not accept.
GATEWAY_AUTHENTICATION_FAILED = 4004
# The application's owners (its team) change in the developer portal, not through the gateway:
# they are fetched again this often, and before every owner check.
OWNERS_REFRESH_SECONDS = 600
# An owner check runs before a command answers, within Discord's 3 s: a slow fetch falls back.
OWNERS_FETCH_TIMEOUT_SECONDS = 2.0


@dataclass
class ForgetCleanup:
    """What happened to a forgotten memory's other copies."""

    problems: list[str] = field(default_factory=list)
    # A reader held up the checkpoint: the old pages leave the database files shortly, on a retry.
    checkpoint_pending: bool = False


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
        elif isinstance(original, sqlite.Error):
            # A full disk or an I/O error: the write rolled back, and it is the storage, not the command.
            name = interaction.command.qualified_name if interaction.command else "?"
            log.error("slash command /%s failed: database error: %s", name, original)
            text = storage_error_text(original)
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

    def __init__(self, config: Config, db: Database, llm: LLMClient, **client_options: Any) -> None:
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
        self.db = db
        self.llm = llm
        self.turns = TurnService(config, db, llm)
        self.scoring = SignificanceWorker(
            db,
            Classifier(llm, config.llm.classifier_model),
            concurrency=config.memory.scoring_concurrency,
            pin_cap=config.memory.pin_cap,
            rescan_seconds=config.memory.scoring_rescan_seconds,
        )
        self.started_at = time.time()
        self.app_owner_ids: frozenset[int] = frozenset()
        # What the start-up request to the model endpoint found; None until it is back.
        self.llm_probe: EndpointProbe | None = None
        self._background: list[asyncio.Task[None]] = []
        # Set while a restore runs: messages get this answer instead of a turn.
        self.paused_reason: str | None = None
        self._checkpoint_retry: asyncio.Task[None] | None = None
        self._deleted_messages: OrderedDict[int, None] = OrderedDict()
        self.operations = Operations(
            config, db, self.scoring, pause_turns=self._pause_turns, turns_in_flight=self._turns_in_flight
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
            await identity.record_login(self.db, self.user.id, str(self.user))
        except sqlite.Error as exc:
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
        if self._checkpoint_retry is not None:
            # Closing the database checkpoints it anyway.
            self._checkpoint_retry.cancel()
        await super().close()

    async def release_resources(self) -> None:
        """Close the LLM client and the database; call once the bot is closed."""
        await self.llm.close()
        await self.db.close()

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

    async def after_forget(self, memory_ids: Sequence[int]) -> ForgetCleanup:
        """Scrub just-forgotten memories from everywhere else the running bot keeps them.

        The forget itself has already committed, so a problem here is
        reported, never raised.
        """
        cleanup = ForgetCleanup()
        named = ", ".join(f"#{memory_id}" for memory_id in memory_ids)
        for memory_id in memory_ids:
            self.scoring.discard(memory_id)
        try:
            rewritten = await asyncio.to_thread(scrub_memories, self.config.storage.snapshots_dir, memory_ids)
            log.info("forgot memory %s; scrubbed %d snapshot files", named, rewritten)
        except Exception:
            log.exception("could not scrub forgotten memory %s from the snapshots", named)
            cleanup.problems.append("scrubbing the snapshots failed")
        try:
            # Fold the WAL into the main file now, so the pages that held the
            # text leave the -wal file too.
            if not await self.db.checkpoint():
                log.info("a reader held up the checkpoint after forgetting memory %s; retrying", named)
                cleanup.checkpoint_pending = True
                self._retry_checkpoint()
        except sqlite.Error:
            log.exception("checkpoint after forgetting memory %s failed", named)
            cleanup.problems.append("the database checkpoint failed")
        return cleanup

    async def forget_messages(self, message_ids: Sequence[int], *, reason: str) -> list[int]:
        """Forget the memories these Discord messages came from (a person's, or a reply's); their ids."""
        self._deleted_messages.update(dict.fromkeys(message_ids))
        while len(self._deleted_messages) > RECENTLY_DELETED_MESSAGES:
            self._deleted_messages.popitem(last=False)
        if self.user is None:
            return []
        forgotten = []
        for memory_id, scope in await memories.memories_of_messages(self.db.reader, self.user.id, message_ids):
            try:
                await forget_memory(self.db, scope, memory_id, actor_id=None, reason=reason)
            except MemoryNotFound:
                continue  # forgotten meanwhile
            forgotten.append(memory_id)
        if forgotten:
            await self.after_forget(forgotten)
        return forgotten

    async def follow_edit(self, message_id: int, text: str, *, reason: str) -> int | None:
        """A person edited a message: its memory (if any) takes the new text; the new memory's id."""
        if self.user is None:
            return None
        found = await memories.memories_of_messages(self.db.reader, self.user.id, [message_id], replies=False)
        for memory_id, scope in found:
            memory = await memories.get_memory(self.db.reader, scope, memory_id)
            if memory is None or memory.user_text == text:
                continue  # forgotten meanwhile, or the text did not change (an embed appeared)
            try:
                new_id = await rewrite_memory(self.db, scope, memory_id, text, reason=reason)
            except MemoryNotFound:
                continue
            await self.after_forget([memory_id])
            self.memory_written(new_id)
            return new_id
        return None

    async def forget_scope(self, scope: Scope, *, reason: str, channel_id: int | None = None) -> int:
        """Forget every memory of a scope (a server the bot left), or of one of its channels with its
        threads (a deleted channel); how many there were."""
        memory_ids = await memories.memory_ids(self.db.reader, scope, channel_id=channel_id)
        forgotten = await forget_memories(self.db, scope, memory_ids, actor_id=None, reason=reason)
        if forgotten:
            await self.after_forget(forgotten)
        return len(forgotten)

    def was_deleted(self, message_id: int) -> bool:
        """Whether Discord deleted this message lately (a turn answered meanwhile is then not remembered)."""
        return message_id in self._deleted_messages

    def _retry_checkpoint(self) -> None:
        if self._checkpoint_retry is None or self._checkpoint_retry.done():
            self._checkpoint_retry = asyncio.create_task(self._checkpoint_when_free(), name="checkpoint-retry")

    async def _checkpoint_when_free(self) -> None:
        """Try the checkpoint again until the reader holding it up (a backup, a snapshot) is done."""
        for _ in range(CHECKPOINT_RETRIES):
            await asyncio.sleep(CHECKPOINT_RETRY_SECONDS)
            try:
                if await self.db.checkpoint():
                    log.info("checkpoint done: forgotten text has left the database's WAL")
                    return
            except sqlite.Error as exc:
                log.warning("checkpoint retry failed: %s", exc)
        log.error(
            "the WAL could not be checkpointed for %d minutes", CHECKPOINT_RETRIES * CHECKPOINT_RETRY_SECONDS // 60
        )

    def _pause_turns(self, reason: str | None) -> None:
        self.paused_reason = reason

    def _turns_in_flight(self) -> int:
        chat = self.get_cog("Chat")
        return chat.lanes.pending() if chat is not None else 0  # type: ignore[attr-defined]

    def memory_written(self, memory_id: int) -> None:
        """Called after each new memory, so background work can pick it up."""
        self.scoring.notify()


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
        db = await Database.open(config.storage.database_path, snapshots_dir=config.storage.snapshots_dir)
    except BaseException:
        await llm.close()
        raise
    return CompanionBot(config, db, llm, **client_options)


async def run_bot(config: Config) -> int:
    token = config.discord_token()
    with DataDirLock(config.storage.data_dir).acquire("the bot"):
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


def cmd_rebuild(config: Config, *, full: bool) -> int:
    storage = config.storage
    _require_database(config)
    report = rebuild_projections(storage.database_path, storage.snapshots_dir, full=full)
    origin = f"snapshot {report.snapshot} plus {report.events}" if report.snapshot else f"all {report.events}"
    print(f"rebuilt projections from {origin} events (up to #{report.last_seq}) in {report.seconds:.2f}s")
    # Snapshots that no longer fit the log can never help; a fresh one replaces them.
    removed = remove_unusable(storage.database_path, storage.snapshots_dir)
    snapshot = write_snapshot(storage.database_path, storage.snapshots_dir, kind="manual", keep=config.snapshot.keep)
    print(
        f"wrote snapshot {snapshot.name} at event #{snapshot.seq}"
        + (f"; removed {len(removed)} that did not fit the log" if removed else "")
    )
    return 0


def cmd_backup(config: Config, action: str, name: str | None) -> int:
    storage = config.storage
    if action == "list":
        return _print_backup_list(backups.list_backups(storage.backups_dir))
    if action == "verify":
        assert name is not None
        path = _backup_path(config, name)
        check = backups.verify_backup(path)
        checksum = "checksum matches" if check.checksum_checked else "no checksum recorded"
        print(f"{path.name}: ok (schema v{check.schema_version}, events up to #{check.last_event_id}, {checksum})")
        return 0
    _require_database(config)
    if action == "now":
        info = backups.take_backup(storage.database_path, storage.backups_dir, kind="manual", keep=config.backup.keep)
        print(f"backup {info.name} taken: {info.size_bytes:,} bytes, events up to #{info.last_event_id}, verified")
        return 0
    assert action == "restore" and name is not None
    info = backups.find_backup(storage.backups_dir, name)
    check = backups.verify_backup(info.path)
    print(f"{info.name} is sound: events up to #{check.last_event_id}")
    safety = backups.take_backup(
        storage.database_path,
        storage.backups_dir,
        kind="pre-restore",
        keep=config.backup.keep,
        protect=(info.name,),  # it may be an old safety copy itself
    )
    print(f"safety backup {safety.name} taken")
    backups.restore_into(info.path, storage.database_path, storage.snapshots_dir)
    print(f"restored {info.name}: the memory is back to event #{check.last_event_id}")
    return 0


def _backup_path(config: Config, name: str) -> Path:
    """A backup by name, or any file given by path (to check a copy kept elsewhere)."""
    try:
        return backups.find_backup(config.storage.backups_dir, name).path
    except UnknownBackup:
        if Path(name).is_file():
            return Path(name)
        raise


def _print_backup_list(found: list[backups.BackupInfo]) -> int:
    if not found:
        print("no backups yet")
        return 0
    print(f"{'name':<44} {'taken (UTC)':<20} {'bytes':>14} {'last event':>10}  verified")
    for info in reversed(found):
        last = f"#{info.last_event_id}" if info.last_event_id is not None else "?"
        taken = info.taken_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{info.name:<44} {taken:<20} {info.size_bytes:>14,} {last:>10}  {'✓' if info.verified else '✗'}")
    return 0


def _require_database(config: Config) -> None:
    # Opening a missing database would create an empty one.
    if not config.storage.database_path.is_file():
        raise BackupError(f"no database at {config.storage.database_path}")


def build_parser() -> argparse.ArgumentParser:
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help=f"config file (default: {DEFAULT_CONFIG_PATH})"
    )
    parser = argparse.ArgumentParser(
        prog="bot.py", description="A Discord companion bot with a long-term memory.", parents=[config_option]
    )
    commands_ = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands_.add_parser("run", parents=[config_option], help="run the bot (the default)")
    rebuild = commands_.add_parser(
        "rebuild",
        parents=[config_option],
        help="rebuild the projections from the newest fitting snapshot and the log, then snapshot (bot stopped)",
    )
    rebuild.add_argument("--full", action="store_true", help="replay the whole log, ignoring snapshots")
    backup = commands_.add_parser("backup", parents=[config_option], help="take, list, verify or restore backups")
    actions = backup.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("now", parents=[config_option], help="take a backup now")
    actions.add_parser("list", parents=[config_option], help="list the backups, newest first")
    verify = actions.add_parser("verify", parents=[config_option], help="check a backup; exits 1 if it is bad")
    verify.add_argument("name", help="a backup's name, as `backup list` shows it, or a file's path")
    restore = actions.add_parser(
        "restore", parents=[config_option], help="restore a backup over the live database (bot stopped)"
    )
    restore.add_argument("name", help="a backup's name, as `backup list` shows it")
    recall = commands_.add_parser(
        "recall",
        parents=[config_option],
        help="show what the prompt for a message would hold, without calling the model (fine beside a running bot)",
    )
    where = recall.add_mutually_exclusive_group(required=True)
    where.add_argument("--guild", type=discord_id, metavar="ID", help="the server the message is in")
    where.add_argument("--dm", type=discord_id, metavar="USER_ID", help="the person whose DMs the message is in")
    recall.add_argument("--channel", type=discord_id, required=True, metavar="ID", help="the channel (or thread)")
    recall.add_argument("--json", action="store_true", help="print one JSON object: pinned, recent, recalled")
    recall.add_argument("--bot-id", type=discord_id, metavar="ID", help="the bot's user id, if the database lacks it")
    recall.add_argument(
        "text", nargs="+", metavar="TEXT", help="the message; - reads one per line from stdin, a JSON line for each"
    )
    import_ = commands_.add_parser(
        "import",
        parents=[config_option],
        help="load history from DiscordChatExporter JSON exports (fine beside a running bot)",
    )
    import_.add_argument("files", nargs="+", type=Path, metavar="FILE", help="JSON exports, one channel each")
    import_.add_argument(
        "--score", action="store_true", help="queue every imported memory for significance scoring (a model call each)"
    )
    import_.add_argument("--bot-id", type=discord_id, metavar="ID", help="the bot's user id, if the database lacks it")
    import_.add_argument(
        "--dm-user",
        type=discord_id,
        metavar="USER_ID",
        help="for an export of DMs: whose DMs they are (default: the person the DM channel is named after)",
    )
    forget = commands_.add_parser(
        "forget",
        parents=[config_option],
        help="forget every memory of what a person said, say someone who has left (fine beside a running bot)",
    )
    forget.add_argument("--user", type=discord_id, required=True, metavar="ID", help="the person's user id")
    forget.add_argument(
        "--guild", type=discord_id, metavar="ID", help="only in this server (default: every server and their DMs)"
    )
    forget.add_argument("--bot-id", type=discord_id, metavar="ID", help="the bot's user id, if the database lacks it")
    return parser


def discord_id(text: str) -> int:
    """An argparse type: a Discord id (a positive 64-bit integer)."""
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"not a Discord id: {text!r}")
    return int(text)


def cmd_recall(config: Config, args: argparse.Namespace) -> int:
    bot_id = resolve_bot_id(config, args.bot_id)
    scope = Scope.for_guild(bot_id, args.guild) if args.guild is not None else Scope.for_dm(bot_id, args.dm)
    texts = sys.stdin if args.text == ["-"] else " ".join(args.text)
    return asyncio.run(recall_command(config, scope, args.channel, texts, as_json=args.json))


def cmd_forget(config: Config, args: argparse.Namespace) -> int:
    _require_database(config)
    bot_id = resolve_bot_id(config, args.bot_id)
    return asyncio.run(forget_user_command(config, bot_id=bot_id, user_id=args.user, guild_id=args.guild))


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    bot_id = resolve_bot_id(config, args.bot_id)
    return asyncio.run(import_command(config, args.files, bot_id=bot_id, score=args.score, dm_user_id=args.dm_user))


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever this process creates (the database, its WAL, backups, snapshots) is the bot user's alone.
    os.umask(PRIVATE_UMASK)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    config_path = getattr(args, "config", DEFAULT_CONFIG_PATH)
    try:
        config = load_config(config_path)
        if args.command in (None, "run"):
            return asyncio.run(run_bot(config))
        if args.command == "rebuild":
            with DataDirLock(config.storage.data_dir).acquire("bot.py rebuild"):
                return cmd_rebuild(config, full=args.full)
        if args.command == "backup":
            # Taking, listing and verifying backups is safe beside a running bot; a restore is not.
            if args.action == "restore":
                with DataDirLock(config.storage.data_dir).acquire("bot.py backup restore"):
                    return cmd_backup(config, args.action, args.name)
            return cmd_backup(config, args.action, getattr(args, "name", None))
        if args.command == "recall":
            return cmd_recall(config, args)
        if args.command == "import":
            return cmd_import(config, args)
        if args.command == "forget":
            return cmd_forget(config, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SchemaTooNew as exc:
        print(f"error: {exc}; upgrade the bot before using this data", file=sys.stderr)
        return 2
    except DataDirInUse as exc:
        print(f"error: {exc}; stop the bot first (or use the slash commands while it runs)", file=sys.stderr)
        return 1
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DatabaseNotReady as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output piped into something that stopped reading (`| head`): nothing more to say.
        return 0
    except UnknownBackup as exc:
        print(f"error: {exc} See `bot.py backup list`.", file=sys.stderr)
        return 1
    except (BackupError, SnapshotError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except sqlite.DatabaseError as exc:
        print(f"error: database problem: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
