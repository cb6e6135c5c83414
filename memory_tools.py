"""The command-line memory tools: `recall` shows what a prompt would hold, `import` loads a server's history.

Both run beside a running bot: `recall` only reads, and `import` only
appends, in short transactions. Neither needs the Discord token or the
model's key. Memories belong to the bot's own user id, which the running
bot records at login; `--bot-id` gives it where the database does not
know it yet.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from companion.backend import open_store
from companion.config import Config
from companion.history_import import Export, ExportError, read_export
from companion.recall import Recalled
from companion.records import memory_record
from companion.turns import IncomingTurn, PreparedPrompt, prepare_prompt
from storage.commands import TurnRecord, memory_written
from storage.events import SOURCE_IMPORT
from storage.memories import Memory
from storage.scope import Scope
from storage.store import MemoryStore

# Imported turns written per transaction: long enough to be fast, short enough that a
# running bot's own writes never wait long behind one.
IMPORT_BATCH = 2000
LISTING_TEXT_CHARS = 300
# Without a terminal, progress is a line per this many messages.
PROGRESS_LINE_EVERY = 100_000


class ToolError(Exception):
    """A problem for the person at the command line; printed as one `error:` line."""


async def resolve_bot_id(config: Config, given: int | None) -> int:
    """`--bot-id` if given, else the bot that last logged in with this database."""
    if given is not None:
        return given
    known = None
    # A SQLite file that does not exist yet knows no bot, and opening it would create it.
    if config.storage.backend != "sqlite" or config.storage.database_path.is_file():
        store = await open_store(config, reading=True)
        try:
            known = await store.last_bot_id()
        finally:
            await store.close()
    if known is None:
        raise ToolError(
            "the database doesn't know the bot's user id yet (the bot has never logged in with it);"
            " give it with --bot-id ID"
        )
    return known


# recall


async def recall_command(
    config: Config,
    scope: Scope,
    channel_id: int,
    texts: str | Iterable[str],
    *,
    as_json: bool,
    out: TextIO | None = None,
) -> int:
    """Print what the prompt for each message would hold: a listing or a JSON object for one
    message (`texts` a str), one JSON line per message for many."""
    store = await open_store(config, reading=True)
    try:
        if isinstance(texts, str):
            prepared = await _prepare(config, store, scope, channel_id, texts)
            if as_json:
                print(json.dumps(prompt_contents(prepared), ensure_ascii=False), file=out)
            else:
                print(listing(prepared, scope, channel_id, texts), file=out)
            return 0
        for text in texts:
            prepared = await _prepare(config, store, scope, channel_id, text.rstrip("\n"))
            print(json.dumps(prompt_contents(prepared), ensure_ascii=False), file=out, flush=True)
        return 0
    finally:
        await store.close()


async def _prepare(config: Config, store: MemoryStore, scope: Scope, channel_id: int, text: str) -> PreparedPrompt:
    # Who asks changes nothing recalled; in DMs it can only be the scope's person.
    parent = await store.thread_parent(scope, channel_id) if scope.kind == "guild" else None
    turn = IncomingTurn(
        scope=scope,
        channel_id=channel_id,
        parent_channel_id=parent,
        author_id=scope.id if scope.kind == "dm" else 0,
        author_name="someone",
        text=text,
    )
    return await prepare_prompt(config, store, turn, now=time.time())


def prompt_contents(prepared: PreparedPrompt) -> dict[str, list[dict[str, Any]]]:
    """The memories in a prompt, as `recall --json` prints them."""
    return {
        "pinned": [memory_record(m) for m in prepared.pinned],
        "recent": [memory_record(m) for m in prepared.recent],
        "recalled": [recalled_item(r) for r in prepared.recalled],
    }


def recalled_item(recalled: Recalled) -> dict[str, Any]:
    return {**memory_record(recalled.memory), "score": round(recalled.score, 6), "follows": recalled.follows}


def listing(prepared: PreparedPrompt, scope: Scope, channel_id: int, text: str) -> str:
    lines = [f"What the prompt holds for {_one_line(text, 80)!r} in {scope}, channel {channel_id}:"]
    sections: list[tuple[str, Sequence[tuple[Memory, str]]]] = [
        ("Pinned", [(m, "") for m in prepared.pinned]),
        ("Recent turns in the channel", [(m, "") for m in prepared.recent]),
        (
            "Recalled",
            [
                (r.memory, f"score {r.score:.3f}" + (f", the turn after #{r.follows}" if r.follows else ""))
                for r in prepared.recalled
            ],
        ),
    ]
    for title, items in sections:
        lines.append(f"\n{title} ({len(items)}):")
        if not items:
            lines.append("  (none)")
        for memory, note in items:
            day = datetime.fromtimestamp(memory.created_at, UTC).strftime("%Y-%m-%d %H:%M")
            lines.append(f"  #{memory.id}  {day}  {note + '  ' if note else ''}{_one_line(memory.text)}")
    return "\n".join(lines)


def _one_line(text: str, limit: int = LISTING_TEXT_CHARS) -> str:
    flat = " / ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# forget


FORGOTTEN_BY_OWNER = "forgotten by an owner at the command line"


async def forget_user_command(
    config: Config, *, bot_id: int, user_id: int, guild_id: int | None, out: TextIO | None = None
) -> int:
    """Forget every memory of what `user_id` said: in one server, or in every server and their DMs."""
    out = out or sys.stdout
    store = await open_store(config)
    try:
        if guild_id is not None:
            scopes = [Scope.for_guild(bot_id, guild_id)]
        else:
            scopes = [Scope.for_guild(bot_id, g) for g in await store.remembered_guilds(bot_id)]
            scopes.append(Scope.for_dm(bot_id, user_id))
        forgotten: list[int] = []
        for scope in scopes:
            ids = await store.memory_ids(scope, author_id=user_id)
            done = await store.forget_many(scope, ids, actor_id=None, reason=FORGOTTEN_BY_OWNER)
            if done:
                print(f"{scope}: forgot {len(done):,} memories of user {user_id}", file=out)
            forgotten += done
        if forgotten:
            # As after /memory forget: out of the snapshots, and out of the WAL's pages.
            await store.scrub_copies(forgotten)
            if not await store.checkpoint():
                print("note: a reader held up the checkpoint; the running bot's next one finishes it", file=out)
        where = f"server {guild_id}" if guild_id is not None else "any server or their DMs"
        print(f"forgot {len(forgotten):,} memories of user {user_id} in {where}", file=out)
        return 0
    finally:
        await store.close()


# import


async def import_command(
    config: Config,
    paths: Sequence[Path],
    *,
    bot_id: int,
    score: bool,
    dm_user_id: int | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Import each export; a bad file is reported and imports nothing, the others go ahead."""
    out, err = out or sys.stdout, err or sys.stderr
    progress = Progress(err)
    store = await open_store(config)
    failed = 0
    try:
        for path in paths:
            try:
                export = await asyncio.to_thread(
                    read_export, path, bot_id=bot_id, dm_user_id=dm_user_id, progress=progress.reading(path)
                )
            except ExportError as exc:
                progress.clear()
                print(f"error: {exc}", file=err, flush=True)
                failed += 1
                continue
            started = time.perf_counter()
            new = await _write(store, export, bot_name=config.persona.name, score=score, progress=progress)
            progress.clear()
            seconds = time.perf_counter() - started
            print(_summary(export, new, seconds), file=out, flush=True)
    finally:
        await store.close()
    return 1 if failed else 0


async def _write(store: MemoryStore, export: Export, *, bot_name: str, score: bool, progress: Progress) -> int:
    scope = export.scope
    new = 0
    for start in range(0, len(export.turns), IMPORT_BATCH):
        events = [
            memory_written(
                TurnRecord(
                    scope=scope,
                    channel_id=turn.channel_id,
                    author_id=turn.author_id,
                    author_name=turn.author_name,
                    bot_name=bot_name,
                    user_text=turn.text,
                    reply_text=turn.reply_text,
                    user_message_id=turn.message_id,
                    created_at=turn.created_at,
                    reply_message_ids=tuple(turn.reply_message_ids),
                    parent_channel_id=export.parent_channel_id,
                    private_thread=export.private_thread,
                ),
                source=SOURCE_IMPORT,
                wants_score=score,
            )
            for turn in export.turns[start : start + IMPORT_BATCH]
        ]
        new += await store.import_memories(events)
        progress.writing(export.path, start + len(events), len(export.turns))
    return new


def _summary(export: Export, new: int, seconds: float) -> str:
    known = len(export.turns) - new
    rate = f", {len(export.turns) / seconds:,.0f} messages/s" if seconds > 0 and export.turns else ""
    return (
        f"{export.path}: {new:,} new memories in {export.scope_name} ({export.scope})"
        f" from {export.messages:,} messages; {known:,} already remembered,"
        f" {export.skipped:,} not a person's message or empty{rate}"
    )


class Progress:
    """A counter on stderr: rewritten in place on a terminal, a line now and then otherwise."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.live = err.isatty()
        self.shown = False
        self.last_line = 0

    def reading(self, path: Path) -> Any:
        def report(count: int) -> None:
            self._show(f"reading {path.name}: {count:,} messages", count)

        return report

    def writing(self, path: Path, done: int, total: int) -> None:
        self._show(f"writing {path.name}: {done:,} / {total:,} turns", done)

    def _show(self, text: str, count: int) -> None:
        if self.live:
            print(f"\r{text}\033[K", end="", file=self.err, flush=True)
            self.shown = True
        elif count - self.last_line >= PROGRESS_LINE_EVERY or count < self.last_line:
            self.last_line = count
            print(text, file=self.err, flush=True)

    def clear(self) -> None:
        if self.shown:
            print("\r\033[K", end="", file=self.err, flush=True)
            self.shown = False
        self.last_line = 0
