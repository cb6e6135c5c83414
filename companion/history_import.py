"""Read a server's history from a DiscordChatExporter JSON export, as turns to remember.

An export is one channel (or thread): `guild{id,name}`, `channel{id,type,name,...}`
and `messages[...]`, each message with `id`, `type`, `timestamp`, `content`,
`author{id,name,nickname,isBot}`, `reference`, `attachments` and `stickers`.
Each person's message becomes a turn; where one of this bot's own messages
answers it (a reply to it, or the bot's messages right after it), that is
the turn's reply. Other bots' messages and system messages (joins, pins,
calls...) are not turns. An export of a thread names its channel in
`channel.categoryId`. An export of direct messages (guild id 0) belongs
to the DM scope of the person the bot talked with.

The file is streamed, and checked whole before anything is written: a bad
or truncated file raises `ExportError`, naming the file and where it went
wrong, and yields nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ijson

from storage.scope import Scope

# Message types that are a person talking; the rest are Discord's own notices.
PERSON_MESSAGE_TYPES = frozenset({"Default", "Reply"})
DM_GUILD_ID = 0
GROUP_DM_TYPES = frozenset({"DirectGroupTextChat"})
THREAD_TYPES = frozenset({"GuildPublicThread", "GuildPrivateThread", "GuildNewsThread"})
PRIVATE_THREAD_TYPE = "GuildPrivateThread"
MAX_SNOWFLAKE = 2**63 - 1
# C0 control characters other than tab and newline, as the chat cog drops them.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class ExportError(Exception):
    """The file is not a usable export; the message names the file and the place."""


@dataclass
class ExportedTurn:
    message_id: int
    channel_id: int
    author_id: int
    author_name: str
    text: str
    created_at: float
    reply_parts: list[str] = field(default_factory=list)
    reply_message_ids: list[int] = field(default_factory=list)

    @property
    def reply_text(self) -> str:
        return "\n".join(self.reply_parts)


@dataclass
class Export:
    path: Path
    scope: Scope
    scope_name: str
    channel_id: int
    turns: list[ExportedTurn]
    messages: int  # every message in the file
    skipped: int  # system messages, other bots' messages, empty ones
    # For a thread: its channel, and whether it is private.
    parent_channel_id: int | None = None
    private_thread: bool = False


def read_export(
    path: Path, *, bot_id: int, dm_user_id: int | None = None, progress: Callable[[int], None] | None = None
) -> Export:
    """Parse and check a whole export; `progress` is told how many messages were read, now and then."""
    try:
        with path.open("rb") as file:
            if path.stat().st_size == 0:
                raise ExportError(f"{path}: the file is empty")
            guild = _head(file, path, "guild")
            file.seek(0)
            channel = _head(file, path, "channel")
            file.seek(0)
            guild_id = _snowflake(guild.get("id"), path, "guild.id", allow_zero=True)
            channel_id = _snowflake(channel.get("id"), path, "channel.id")
            reader = _ExportReader(path, bot_id, channel_id)
            try:
                for message in ijson.items(file, "messages.item", use_float=True):
                    reader.add(message)
                    if progress is not None and reader.messages % 10_000 == 0:
                        progress(reader.messages)
            except ijson.JSONError as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unexpected end"
                raise ExportError(
                    f"{path}: not valid JSON after message {reader.messages:,} (near byte {file.tell():,}):"
                    f" {reason}; is the file truncated?"
                ) from None
    except OSError as exc:
        raise ExportError(f"{path}: {exc.strerror or exc}") from None
    if guild_id == DM_GUILD_ID:
        if channel.get("type") in GROUP_DM_TYPES:
            raise ExportError(f"{path}: a group DM; the bot keeps memories per server and per one-to-one DM only")
        user_id = dm_user_id if dm_user_id is not None else reader.dm_partner(str(channel.get("name") or ""))
        if user_id is None:
            raise ExportError(f"{path}: a DM with nobody but the bot in it")
        scope = Scope.for_dm(bot_id, user_id)
        scope_name = f"DMs with {reader.names.get(user_id, user_id)}"
    else:
        scope = Scope.for_guild(bot_id, guild_id)
        scope_name = str(guild.get("name") or guild_id)
    parent_channel_id = None
    if channel.get("type") in THREAD_TYPES:
        parent_channel_id = _snowflake(channel.get("categoryId"), path, "channel.categoryId (the thread's channel)")
    return Export(
        path,
        scope,
        scope_name,
        channel_id,
        reader.turns,
        reader.messages,
        reader.skipped,
        parent_channel_id=parent_channel_id,
        private_thread=channel.get("type") == PRIVATE_THREAD_TYPE,
    )


def _head(file: Any, path: Path, key: str) -> dict[str, Any]:
    try:
        value = next(ijson.items(file, key), None)
    except ijson.JSONError as exc:
        raise ExportError(f"{path}: not valid JSON near byte {file.tell():,}: {str(exc).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise ExportError(f"{path}: no `{key}` object; is this a DiscordChatExporter JSON export?")
    return value


def _snowflake(value: Any, path: Path, where: str, *, allow_zero: bool = False) -> int:
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not text.isdigit() or int(text) > MAX_SNOWFLAKE or (int(text) == 0 and not allow_zero):
        raise ExportError(f"{path}: {where} is not a Discord id: {value!r}")
    return int(text)


class _ExportReader:
    """Turns the messages of one export into turns, pairing the bot's replies, as they stream by."""

    def __init__(self, path: Path, bot_id: int, channel_id: int) -> None:
        self.path = path
        self.bot_id = bot_id
        self.channel_id = channel_id
        self.turns: list[ExportedTurn] = []
        self.by_id: dict[int, ExportedTurn] = {}
        self.names: dict[int, str] = {}
        self.messages = 0
        self.skipped = 0
        # The turn the previous message belongs to: a bot message right after it continues its reply.
        self.previous: ExportedTurn | None = None

    def add(self, message: Any) -> None:
        self.messages += 1
        where = f"message {self.messages:,}"
        if not isinstance(message, dict):
            raise ExportError(f"{self.path}: {where} is not an object")
        message_id = self._id(message.get("id"), f"{where}: id")
        where = f"message {self.messages:,} (id {message_id})"
        author = message.get("author")
        if not isinstance(author, dict):
            raise ExportError(f"{self.path}: {where}: no author")
        author_id = self._id(author.get("id"), f"{where}: author.id")
        created_at = self._timestamp(message.get("timestamp"), where)
        text = self._text(message, where)
        kind = message.get("type", "Default")
        if author_id == self.bot_id:
            self._bot_message(message, text)
            return
        if author.get("isBot") is True or kind not in PERSON_MESSAGE_TYPES or not text or message_id in self.by_id:
            self.skipped += 1
            self.previous = None
            return
        name = author.get("nickname") or author.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ExportError(f"{self.path}: {where}: the author has no name")
        self.names[author_id] = name
        turn = ExportedTurn(message_id, self.channel_id, author_id, name, text, created_at)
        self.turns.append(turn)
        self.by_id[message_id] = turn
        self.previous = turn

    def _bot_message(self, message: dict[str, Any], text: str) -> None:
        reference = message.get("reference")
        target = None
        if isinstance(reference, dict) and reference.get("messageId") is not None:
            target = self.by_id.get(_int_or_none(reference.get("messageId")))
        if target is None:
            target = self.previous  # a later chunk of the same reply, or a plain answer
        if target is None:
            self.skipped += 1
            return
        # Even a reply without text (an embed) counts: deleting it forgets the memory.
        target.reply_message_ids.append(self._id(message.get("id"), "a reply's id"))
        if text:
            target.reply_parts.append(text)
        self.previous = target

    def dm_partner(self, channel_name: str) -> int | None:
        """The person in a DM export: the one the channel is named after, else the first to speak."""
        for user_id, name in self.names.items():
            if name == channel_name:
                return user_id
        return next(iter(self.names), None)

    def _id(self, value: Any, where: str) -> int:
        return _snowflake(value, self.path, where)

    def _timestamp(self, value: Any, where: str) -> float:
        if not isinstance(value, str):
            raise ExportError(f"{self.path}: {where}: no timestamp")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ExportError(f"{self.path}: {where}: the timestamp is not ISO 8601: {value!r}") from None
        if moment.tzinfo is None:
            raise ExportError(f"{self.path}: {where}: the timestamp has no time zone: {value!r}")
        return moment.timestamp()

    def _text(self, message: dict[str, Any], where: str) -> str:
        content = message.get("content", "")
        if not isinstance(content, str):
            raise ExportError(f"{self.path}: {where}: content is not text")
        parts = [_CONTROL_CHARS.sub("", content).strip()]
        for key, label, name_key in (("attachments", "attachment", "fileName"), ("stickers", "sticker", "name")):
            items = message.get(key) or []
            if not isinstance(items, list):
                raise ExportError(f"{self.path}: {where}: {key} is not a list")
            parts += [f"[{label}: {item.get(name_key)}]" for item in items if isinstance(item, dict)]
        return "\n".join(part for part in parts if part)


def _int_or_none(value: Any) -> int | None:
    text = str(value)
    return int(text) if text.isdigit() else None
