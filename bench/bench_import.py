"""History import speed: `bot.py import` of DiscordChatExporter exports, and that it loses nothing.

Four channel exports of a busy server (chat in the style of bench.dataset:
people's messages, most of them answered by the bot in one or two chunks,
some by other bots, and join notices) are written as DiscordChatExporter
JSON, then imported into a fresh data folder exactly as the command does it
(`memory_tools.import_command`: streaming parse and checks, then batched
transactions). Reported: messages per second over the files' messages,
memories per second, and, as the quality partner, whether every person's
message became one memory with its reply paired, and whether importing the
same files again added nothing (and how fast it skipped them).

    python -m bench.bench_import [--quick]
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Result, main
from bench.dataset import BOT_ID, BOT_NAME, ChatText, DatasetSpec, Layout, ScopeLayout, Vocabulary
from companion.config import Config, StorageConfig
from memory_tools import import_command
from storage import sqlite
from storage.scope import Scope

TARGET_MESSAGES_PER_SECOND = 10_000
FILES, QUICK_FILES = 4, 2
PEOPLE_MESSAGES, QUICK_PEOPLE_MESSAGES = 50_000, 10_000  # per file
GUILD_ID = 920_000_000_000_000_000
USER_ID_BASE = 720_000_000_000_000_000
OTHER_BOT_ID = 5000
START = 1_700_000_000.0


@dataclass
class Expected:
    messages: int = 0
    people: int = 0
    answered: int = 0


def write_exports(folder: Path, files: int, people_messages: int) -> Expected:
    vocabulary = Vocabulary.build(7)
    members = tuple(USER_ID_BASE + i for i in range(300))
    names = {uid: f"member{i}" for i, uid in enumerate(members)}
    scope = ScopeLayout(0, Scope.for_guild(BOT_ID, GUILD_ID), "Import Hall", 0, (), members, ("raids", "pizza"))
    chat = ChatText(vocabulary, Layout(DatasetSpec(memories=200, scopes=2), (scope,), names), random.Random(11))
    rng = random.Random(12)
    expected = Expected()
    for index in range(files):
        channel_id = GUILD_ID + 1 + index
        export = _Channel(rng, first_id=10**17 + index * 10**8)
        for _ in range(people_messages):
            author = rng.choice(members)
            asked = export.add(author, names[author], chat.user_message(scope))
            expected.people += 1
            roll = rng.random()
            if roll < 0.7:
                expected.answered += 1
                reference = {"messageId": str(asked), "channelId": str(channel_id), "guildId": str(GUILD_ID)}
                export.add(BOT_ID, BOT_NAME, chat.reply(scope), is_bot=True, kind="Reply", reference=reference)
                if rng.random() < 0.1:
                    export.add(BOT_ID, BOT_NAME, chat.reply(scope), is_bot=True)  # a second chunk
            elif roll < 0.73:
                export.add(OTHER_BOT_ID, "otherbot", "beep", is_bot=True)
            elif roll < 0.75:
                export.add(author, names[author], "", kind="GuildMemberJoin")
        messages = export.messages
        document = {
            "guild": {"id": str(GUILD_ID), "name": "Import Hall", "iconUrl": "https://cdn.example/g.png"},
            "channel": {"id": str(channel_id), "type": "GuildTextChat", "categoryId": "1", "name": f"ch{index}"},
            "dateRange": {"after": None, "before": None},
            "exportedAt": "2026-11-01T00:00:00+00:00",
            "messages": messages,
            "messageCount": len(messages),
        }
        (folder / f"channel-{index}.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
        expected.messages += len(messages)
    return expected


class _Channel:
    """The messages of one channel's export, a few seconds to two minutes apart."""

    def __init__(self, rng: random.Random, first_id: int) -> None:
        self.rng = rng
        self.messages: list[dict] = []
        self.at = START
        self.next_id = first_id

    def add(
        self, author_id: int, name: str, content: str, *, is_bot: bool = False, kind: str = "Default", **extra
    ) -> int:
        self.next_id += 1
        self.at += self.rng.uniform(5, 120)
        stamp = datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds")
        author = {"id": str(author_id), "name": name, "discriminator": "0000", "nickname": name, "isBot": is_bot}
        self.messages.append(
            {
                "id": str(self.next_id),
                "type": kind,
                "timestamp": stamp,
                "timestampEdited": None,
                "callEndedTimestamp": None,
                "isPinned": False,
                "content": content,
                "author": {**author, "color": None, "roles": [], "avatarUrl": "https://cdn.example/a.png"},
                "attachments": [],
                "embeds": [],
                "stickers": [],
                "reactions": [],
                "mentions": [],
                **extra,
            }
        )
        return self.next_id


async def timed_import(config: Config, paths: list[Path]) -> tuple[float, str]:
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    code = await import_command(config, paths, bot_id=BOT_ID, score=False, out=out, err=err)
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"import failed: {err.getvalue()}")
    return seconds, out.getvalue()


def run(quick: bool = False) -> Result:
    files = QUICK_FILES if quick else FILES
    people = QUICK_PEOPLE_MESSAGES if quick else PEOPLE_MESSAGES
    result = Result("import")
    workdir = Path(tempfile.mkdtemp(prefix="bench-import-"))
    try:
        exports = workdir / "exports"
        exports.mkdir()
        expected = write_exports(exports, files, people)
        paths = sorted(exports.glob("*.json"))
        size = sum(p.stat().st_size for p in paths)
        print(f"{len(paths)} exports, {expected.messages:,} messages, {size / 2**20:,.0f} MiB", flush=True)
        config = Config(storage=StorageConfig(data_dir=workdir / "data"))
        seconds, _ = asyncio.run(timed_import(config, paths))
        again_seconds, again_out = asyncio.run(timed_import(config, paths))
        conn = sqlite.connect(config.storage.database_path, query_only=True)
        try:
            memories, answered = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE reply_text != '') FROM memories"
            ).fetchone()
            (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        finally:
            conn.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rate = expected.messages / seconds
    result.add(
        "files' messages imported per second",
        rate,
        "/s",
        f">= {TARGET_MESSAGES_PER_SECOND:,}",
        rate >= TARGET_MESSAGES_PER_SECOND,
    )
    result.add("memories written per second", memories / seconds, "/s")
    result.add("import wall time", seconds, "s")
    result.add(
        "people's messages that became a memory", memories / expected.people, "", "= 1", memories == expected.people
    )
    result.add(
        "bot replies paired with their message", answered / expected.answered, "", "= 1", answered == expected.answered
    )
    added_again = events - memories
    result.add(
        "events added by importing the same files again",
        added_again,
        "",
        "= 0",
        added_again == 0 and "0 new" in again_out,
    )
    result.add("re-import (all skipped): files' messages per second", expected.messages / again_seconds, "/s")
    result.extra.update(files=len(paths), messages=expected.messages, megabytes=round(size / 2**20, 1))
    return result


if __name__ == "__main__":
    main(run)
