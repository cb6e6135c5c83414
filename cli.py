"""The command line: run the bot, or manage its data without it.

python bot.py [--config PATH]                  run the bot
python bot.py rebuild [--full] [--config PATH] rebuild the projections (snapshot + tail, or the whole log)
python bot.py backup now|list [--config PATH]  take a backup now, or list them
python bot.py backup verify|restore NAME       check a backup, or restore it (with SQLite, bot stopped)
python bot.py recall (--guild ID | --dm USER_ID) --channel ID [--json] TEXT
                                               what the prompt for a message would hold
python bot.py import FILE... [--score]         load history from DiscordChatExporter JSON exports
python bot.py forget --user ID [--guild ID]    forget what a person said (all servers and DMs by default)

`bot.py` stays the entry point and hands its arguments to `main()` here; this
module is apart from it so the bot holds only the bot. Each verb's problems
end in one `error:` line and an exit status, mapped in `main()`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import bot
from companion.backend import backup_target
from companion.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from memory_tools import ToolError, forget_user_command, import_command, recall_command, resolve_bot_id
from storage import sqlite
from storage.backup_target import BackupTarget
from storage.backups import BackupError, BackupInfo, UnknownBackup
from storage.database import DatabaseNotReady
from storage.datadir_lock import DataDirInUse, DataDirLock
from storage.files import PRIVATE_UMASK
from storage.rebuild import RebuildReport, rebuild_projections
from storage.schema import SchemaTooNew
from storage.scope import Scope
from storage.snapshots import SnapshotError, remove_unusable, write_snapshot
from storage.store import StoreError


def cmd_rebuild(config: Config, *, full: bool) -> int:
    storage = config.storage
    if storage.backend == "postgresql":
        # Always the whole log (there are no snapshots); running bots' writes wait meanwhile.
        report = asyncio.run(_rebuild_postgres(config))
        print(
            f"rebuilt projections from all {report.events} events (up to #{report.last_seq}) in {report.seconds:.2f}s"
        )
        return 0
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


async def _rebuild_postgres(config: Config) -> RebuildReport:
    from storage.postgres.rebuild import rebuild_projections as rebuild_on_postgres
    from storage.postgres.store import PostgresStore

    store = await PostgresStore.open(config.postgresql_dsn(), min_size=1, max_size=1)
    try:
        return await rebuild_on_postgres(store.pool)
    finally:
        await store.close()


def cmd_backup(config: Config, action: str, name: str | None) -> int:
    target = backup_target(config)
    if action == "list":
        return _print_backup_list(target.list())
    if action == "verify":
        assert name is not None
        path = _backup_path(target, name)
        check = target.verify(path)
        checksum = "checksum matches" if check.checksum_checked else "no checksum recorded"
        print(f"{path.name}: ok (schema v{check.schema_version}, events up to #{check.last_event_id}, {checksum})")
        return 0
    if config.storage.backend == "sqlite":
        _require_database(config)
    if action == "now":
        info = target.take(kind="manual", keep=config.backup.keep)
        print(f"backup {info.name} taken: {info.size_bytes:,} bytes, events up to #{info.last_event_id}, verified")
        return 0
    assert action == "restore" and name is not None
    info = target.find(name)
    check = target.verify(info.path)
    print(f"{info.name} is sound: events up to #{check.last_event_id}")

    def back_up_then_restore() -> None:
        # it may be an old safety copy itself: protected from the safety backup's pruning
        safety = target.take(kind="pre-restore", keep=config.backup.keep, protect=(info.name,))
        print(f"safety backup {safety.name} taken", flush=True)
        target.restore(info.path)

    # With PostgreSQL, running bots' writes wait meanwhile, then land in the restored database.
    asyncio.run(target.exclusively(back_up_then_restore))
    print(f"restored {info.name}: the memory is back to event #{check.last_event_id}")
    return 0


def _backup_path(target: BackupTarget, name: str) -> Path:
    """A backup by name, or any file given by path (to check a copy kept elsewhere)."""
    try:
        return target.find(name).path
    except UnknownBackup:
        if Path(name).is_file():
            return Path(name)
        raise


def _print_backup_list(found: list[BackupInfo]) -> int:
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
        help=(
            "rebuild the projections from the newest fitting snapshot and the log, then snapshot (SQLite: bot"
            " stopped; PostgreSQL: the whole log, beside running bots)"
        ),
    )
    rebuild.add_argument("--full", action="store_true", help="replay the whole log, ignoring snapshots")
    backup = commands_.add_parser("backup", parents=[config_option], help="take, list, verify or restore backups")
    actions = backup.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("now", parents=[config_option], help="take a backup now")
    actions.add_parser("list", parents=[config_option], help="list the backups, newest first")
    verify = actions.add_parser("verify", parents=[config_option], help="check a backup; exits 1 if it is bad")
    verify.add_argument("name", help="a backup's name, as `backup list` shows it, or a file's path")
    restore = actions.add_parser(
        "restore", parents=[config_option], help="restore a backup over the live database (SQLite: bot stopped)"
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
    bot_id = asyncio.run(resolve_bot_id(config, args.bot_id))
    scope = Scope.for_guild(bot_id, args.guild) if args.guild is not None else Scope.for_dm(bot_id, args.dm)
    texts = sys.stdin if args.text == ["-"] else " ".join(args.text)
    return asyncio.run(recall_command(config, scope, args.channel, texts, as_json=args.json))


def cmd_forget(config: Config, args: argparse.Namespace) -> int:
    if config.storage.backend == "sqlite":
        _require_database(config)
    bot_id = asyncio.run(resolve_bot_id(config, args.bot_id))
    return asyncio.run(forget_user_command(config, bot_id=bot_id, user_id=args.user, guild_id=args.guild))


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    bot_id = asyncio.run(resolve_bot_id(config, args.bot_id))
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
            return asyncio.run(bot.run_bot(config))
        if args.command == "rebuild":
            if config.storage.backend == "postgresql":
                return cmd_rebuild(config, full=args.full)
            with DataDirLock(config.storage.data_dir).acquire("bot.py rebuild"):
                return cmd_rebuild(config, full=args.full)
        if args.command == "backup":
            # Taking, listing and verifying backups is safe beside a running bot; a restore of
            # SQLite's is not (PostgreSQL's holds every process's writes while it runs).
            if args.action == "restore" and config.storage.backend == "sqlite":
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
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
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
