"""The chat cog: decides which messages to answer and runs each turn.

A turn: show typing, build the prompt, ask the model, send the reply (split
to Discord's size), then remember the turn. Turns in one channel run in
order; different channels run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from companion.limits import TurnRateLimit
from companion.ordering import ChannelLanes
from companion.splitting import split_message
from companion.turns import IncomingTurn
from storage.scope import Scope
from storage.store import StoreError

if TYPE_CHECKING:
    from bot import CompanionBot

log = logging.getLogger(__name__)

TYPING_REFRESH_SECONDS = 8.0
# Typing shows only when the answer takes longer than this: a quick answer
# needs no indicator, and the POST would only delay it.
TYPING_DELAY_SECONDS = 0.25
BUSY_REPLY = (
    "I'm still catching up on earlier messages in this channel, so I'm skipping new ones for now "
    "(marked ⏳). Please try again in a moment."
)
BUSY_REACTION = "⏳"
# One explaining reply per channel in this window; later skipped messages only get the reaction.
BUSY_NOTICE_INTERVAL_SECONDS = 30.0
OVER_USER_LIMIT_REPLY = (
    "You're sending me messages faster than I can give each one a proper answer, so I'll skip "
    "your next ones for a little while. Give me a minute and I'm all yours again."
)
INTERNAL_ERROR_REPLY = "Sorry, something went wrong on my side with that one. My owner can find it in the logs."
MEMORY_WRITE_FAILED_REPLY = "(I couldn't save this conversation to my memory just now: my storage is having trouble.)"
EMPTY_MESSAGE_TEXT = "(they mentioned you without saying anything)"
# Discord's error code for a reply sent without the Read Message History permission.
CANNOT_REPLY_WITHOUT_HISTORY = 160002
# C0 control characters other than tab and newline: they only confuse models.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Chat(commands.Cog):
    def __init__(self, bot: CompanionBot) -> None:
        self.bot = bot
        self.lanes = ChannelLanes(bot.config.chat.max_pending_per_channel)
        self.user_limit = TurnRateLimit(bot.config.chat.user_turns_per_minute, bot.config.chat.user_burst)
        self._busy_notice_at: dict[int, float] = {}

    async def cog_unload(self) -> None:
        await self.lanes.close()

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not await self.should_answer(message):
            return
        if self.bot.paused_reason:
            await self._send_quietly(message, self.bot.paused_reason)
            return
        if not await self._within_user_limit(message):
            return
        accepted = self.lanes.submit(message.channel.id, lambda: self.handle_turn(message))
        if not accepted:
            await self._tell_busy(message)

    async def should_answer(self, message: discord.Message) -> bool:
        bot_user = self.bot.user
        if bot_user is None or message.author.id == bot_user.id:
            return False
        is_from_bot = message.author.bot or message.webhook_id is not None
        is_ordinary = message.type in (discord.MessageType.default, discord.MessageType.reply)
        if is_from_bot or not is_ordinary:
            return False
        is_dm = message.guild is None
        channel = message.channel
        parent_id = getattr(channel, "parent_id", None)
        listen_ids = self.bot.config.discord.listen_channel_ids
        is_listen_channel = channel.id in listen_ids or (parent_id is not None and parent_id in listen_ids)
        is_mentioned = any(user.id == bot_user.id for user in message.mentions)
        # Discord's client often completes @BotName to the bot's own managed role.
        own_role = message.guild.self_role if message.guild is not None else None
        is_role_mentioned = own_role is not None and any(role.id == own_role.id for role in message.role_mentions)
        return is_dm or is_listen_channel or is_mentioned or is_role_mentioned or await self._is_reply_to_me(message)

    async def _is_reply_to_me(self, message: discord.Message) -> bool:
        reference = message.reference
        if reference is None or reference.message_id is None or self.bot.user is None:
            return False
        if reference.type is not discord.MessageReferenceType.reply:
            return False  # a forward of one of its messages is not a reply to it
        resolved = reference.resolved
        if isinstance(resolved, discord.Message):
            return resolved.author.id == self.bot.user.id
        if isinstance(resolved, discord.DeletedReferencedMessage):
            return False
        if reference.channel_id != message.channel.id:
            return False
        try:
            original = await message.channel.fetch_message(reference.message_id)
        except discord.HTTPException:
            return False
        return original.author.id == self.bot.user.id

    async def handle_turn(self, message: discord.Message) -> None:
        try:
            await self._run_turn(message)
        except Exception:
            log.exception("turn for message %s in channel %s failed", message.id, message.channel.id)
            await self._send_quietly(message, INTERNAL_ERROR_REPLY)

    async def _run_turn(self, message: discord.Message) -> None:
        turn = self.incoming_turn(message)
        typing = asyncio.create_task(self._keep_typing(message.channel))
        try:
            reply = await self.bot.turns.compose_reply(turn)
        finally:
            typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await typing
        delivered = await self._deliver(message, reply.text)
        if not reply.ok or not delivered:
            return
        if self.bot.forgetting.was_deleted(message.id):
            return  # deleted while the bot answered: Discord forgot it, so the bot does not remember it
        try:
            prompt = reply.prompt
            await self.bot.turns.remember(
                turn,
                "\n".join(chunk for chunk, _ in delivered),
                reply_message_ids=[i for _, i in delivered],
                drew_on=[*prompt.pinned_ids, *prompt.recalled_ids, *prompt.recent_ids] if prompt else [],
            )
        except StoreError as exc:
            # The user has their answer; say plainly that this turn won't be remembered.
            log.error("could not write the memory of message %s: %s", message.id, exc)
            await self._send_quietly(message, MEMORY_WRITE_FAILED_REPLY)

    def incoming_turn(self, message: discord.Message) -> IncomingTurn:
        bot_id = self.bot.user.id if self.bot.user else 0
        if message.guild is None:
            scope = Scope.for_dm(bot_id, message.author.id)
            where = f"in a direct message with {message.author.display_name}"
        else:
            scope = Scope.for_guild(bot_id, message.guild.id)
            channel_name = getattr(message.channel, "name", "a channel")
            where = f"in #{channel_name} on the server {message.guild.name}"
        thread = message.channel if isinstance(message.channel, discord.Thread) else None
        return IncomingTurn(
            scope=scope,
            channel_id=message.channel.id,
            author_id=message.author.id,
            author_name=message.author.display_name,
            text=self.message_text(message),
            message_id=message.id,
            where=where,
            parent_channel_id=thread.parent_id if thread else None,
            private_thread=thread is not None and thread.type is discord.ChannelType.private_thread,
        )

    def message_text(self, message: discord.Message) -> str:
        """What the user said, with mentions as names and attachments described."""
        text = message.content
        if self.bot.user is not None:
            text = re.sub(rf"<@!?{self.bot.user.id}>", "", text)
        own_role = message.guild.self_role if message.guild is not None else None
        if own_role is not None:
            text = text.replace(f"<@&{own_role.id}>", "")
        for user in message.mentions:
            # A function, not a template: names may hold backslashes.
            name = f"@{user.display_name}"
            text = re.sub(rf"<@!?{user.id}>", lambda _, name=name: name, text)
        for role in message.role_mentions:
            text = text.replace(f"<@&{role.id}>", f"@{role.name}")
        for channel in message.channel_mentions:
            text = text.replace(f"<#{channel.id}>", f"#{getattr(channel, 'name', 'channel')}")
        text = _CONTROL_CHARS.sub("", text).strip()
        extras = [f"[attachment: {a.filename}]" for a in message.attachments]
        extras += [f"[sticker: {s.name}]" for s in message.stickers]
        for forwarded in message.message_snapshots:
            # A forward's own content is empty; what was forwarded is the message.
            forwarded_text = _CONTROL_CHARS.sub("", forwarded.content).strip()
            attached = "".join(f" [attachment: {a.filename}]" for a in forwarded.attachments)
            extras.append(f"[forwarded message: {forwarded_text}{attached}]")
        text = "\n".join(part for part in [text, *extras] if part)
        return text or EMPTY_MESSAGE_TEXT

    async def _deliver(self, message: discord.Message, text: str) -> list[tuple[str, int]]:
        """Send the reply in chunks; returns the chunks Discord accepted, with their message ids."""
        delivered: list[tuple[str, int]] = []
        for index, chunk in enumerate(split_message(text)):
            try:
                if index == 0:
                    sent = await self._reply(message, chunk)
                else:
                    sent = await message.channel.send(chunk)
            except discord.HTTPException as exc:
                log.error("could not send reply chunk %d in channel %s: %s", index + 1, message.channel.id, exc)
                break
            delivered.append((chunk, sent.id))
        return delivered

    @staticmethod
    async def _reply(message: discord.Message, text: str) -> discord.Message:
        # Still answer if the user deleted their message meanwhile.
        reference = message.to_reference(fail_if_not_exists=False)
        try:
            return await message.channel.send(text, reference=reference, mention_author=False)
        except discord.Forbidden as exc:
            if exc.code != CANNOT_REPLY_WITHOUT_HISTORY:
                raise
            # Without Read Message History a bot may post but not reply: answer plainly instead.
            return await message.channel.send(text)

    async def _keep_typing(self, channel: discord.abc.Messageable) -> None:
        await asyncio.sleep(TYPING_DELAY_SECONDS)
        while True:
            try:
                await channel.typing()
            except discord.HTTPException as exc:
                log.debug("typing indicator failed: %s", exc)
                return
            await asyncio.sleep(TYPING_REFRESH_SECONDS)

    async def _within_user_limit(self, message: discord.Message) -> bool:
        """Whether the author may have another turn now in this scope; tells them once when not."""
        scope_id = message.guild.id if message.guild is not None else None
        verdict = self.user_limit.check((scope_id, message.author.id))
        if verdict.allowed:
            return True
        if verdict.tell:
            log.info(
                "%s (%s) is over [chat] user_turns_per_minute in %s; skipping their messages for now",
                message.author,
                message.author.id,
                f"guild {scope_id}" if scope_id else "DMs",
            )
            await self._send_quietly(message, OVER_USER_LIMIT_REPLY)
        return False

    async def _tell_busy(self, message: discord.Message) -> None:
        """Say the channel is busy: one explaining reply per burst, then a ⏳ reaction on each shed message."""
        log.warning("channel %s is over its pending limit; not answering message %s", message.channel.id, message.id)
        now = time.monotonic()
        last = self._busy_notice_at.get(message.channel.id, -BUSY_NOTICE_INTERVAL_SECONDS)
        if now - last >= BUSY_NOTICE_INTERVAL_SECONDS:
            self._busy_notice_at[message.channel.id] = now
            await self._send_quietly(message, BUSY_REPLY)
            return
        try:
            await message.add_reaction(BUSY_REACTION)
        except discord.HTTPException as exc:
            log.warning("could not mark message %s as not answered: %s", message.id, exc)

    async def _send_quietly(self, message: discord.Message, text: str) -> None:
        try:
            await self._reply(message, text)
        except discord.HTTPException as exc:
            log.warning("could not tell channel %s: %s", message.channel.id, exc)


async def setup(bot: CompanionBot) -> None:
    await bot.add_cog(Chat(bot))
