"""The bot forgets what Discord forgets.

Deleted messages take their memories with them, and so do deleted channels
and threads; an edited message's memory follows the edit (raw events, so
messages the bot never cached count too). A server the bot is removed from has its
memories forgotten after `[privacy] removed_guild_grace_days`, unless the
bot is added back first; removals while the bot was away are caught up on
at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import discord
from discord.ext import commands, tasks

from storage.scope import Scope
from storage.store import StoreError
from storage.visibility import ChannelVisibility

if TYPE_CHECKING:
    from bot import CompanionBot

log = logging.getLogger(__name__)

DELETED_IN_DISCORD = "deleted in Discord"
EDITED_IN_DISCORD = "edited in Discord"
CHANNEL_DELETED = "its channel was deleted in Discord"
REMOVED_FROM_SERVER = "the bot was removed from the server"
DAY_SECONDS = 86_400
PURGE_CHECK_HOURS = 1.0
# A server's shard is (server id >> 22) % shard_count (Discord's rule).
DISCORD_SHARD_SHIFT = 22


class Privacy(commands.Cog):
    def __init__(self, bot: CompanionBot) -> None:
        self.bot = bot
        self._purging = asyncio.Lock()

    async def cog_load(self) -> None:
        self.purge_check.start()

    async def cog_unload(self) -> None:
        self.purge_check.cancel()

    # which channels everyone may see (what recall may carry from one channel to another)

    async def record_channels(self, guild: discord.Guild) -> None:
        """Record which of a server's channels and threads everyone may see now."""
        if self.bot.user is None:
            return
        public_channels: set[int] = set()
        seen: list[ChannelVisibility] = []
        for channel in guild.channels:
            if not isinstance(channel, discord.CategoryChannel):
                # Public: anyone in the server may read what was said there.
                everyone = channel.permissions_for(guild.default_role)
                if everyone.view_channel and everyone.read_message_history:
                    public_channels.add(channel.id)
                seen.append(ChannelVisibility(channel.id, None, channel.id in public_channels))
        for thread in guild.threads:
            public = thread.type is not discord.ChannelType.private_thread and thread.parent_id in public_channels
            seen.append(ChannelVisibility(thread.id, thread.parent_id, public))
        try:
            await self.bot.store.record_guild_channels(Scope.for_guild(self.bot.user.id, guild.id), seen)
        except StoreError as exc:
            # Recall goes by what was recorded before (a channel never recorded counts as
            # private) until the next change, or the hourly check, records it.
            log.warning("could not record which channels of server %s everyone may see: %s", guild.id, exc)

    @commands.Cog.listener()
    async def on_guild_channel_create(self, channel: discord.abc.GuildChannel) -> None:
        await self.record_channels(channel.guild)

    @commands.Cog.listener()
    async def on_guild_channel_update(self, before: discord.abc.GuildChannel, after: discord.abc.GuildChannel) -> None:
        await self.record_channels(after.guild)

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        await self.record_channels(channel.guild)
        await self._forget_channel(channel.guild.id, channel.id)

    @commands.Cog.listener()
    async def on_guild_role_update(self, before: discord.Role, after: discord.Role) -> None:
        if after.is_default():  # @everyone's rights decide what is public
            await self.record_channels(after.guild)

    @commands.Cog.listener()
    async def on_thread_create(self, thread: discord.Thread) -> None:
        await self.record_channels(thread.guild)

    @commands.Cog.listener()
    async def on_thread_update(self, before: discord.Thread, after: discord.Thread) -> None:
        await self.record_channels(after.guild)

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        # Raw: a thread the bot never cached (an archived one) takes its memories with it too.
        guild = self.bot.get_guild(payload.guild_id)
        if guild is not None:
            await self.record_channels(guild)
        await self._forget_channel(payload.guild_id, payload.thread_id)

    async def _forget_channel(self, guild_id: int, channel_id: int) -> None:
        """A deleted channel's messages are gone from Discord, and so are their memories."""
        if self.bot.user is None:
            return
        scope = Scope.for_guild(self.bot.user.id, guild_id)
        try:
            count = await self.bot.forgetting.forget_scope(scope, reason=CHANNEL_DELETED, channel_id=channel_id)
        except Exception:
            # The memories stay until someone forgets them by hand (or the server removes the bot).
            log.exception("could not forget the memories of deleted channel %s", channel_id)
            return
        if count:
            log.info("forgot the %d memories of channel %s: it was deleted in Discord", count, channel_id)

    # servers

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        if self.bot.user is None:
            return
        with contextlib.suppress(StoreError):
            await self.bot.store.forget_guild_channels(Scope.for_guild(self.bot.user.id, guild.id))
        await self.bot.store.note_departures(self.bot.user.id, [guild.id], at=time.time())
        log.info("removed from server %s; its memories go after the grace period unless it adds me back", guild.id)
        await self.purge_due()

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.record_channels(guild)
        await self._back_in([guild.id])

    @commands.Cog.listener()
    async def on_guild_available(self, guild: discord.Guild) -> None:
        await self.record_channels(guild)
        await self._back_in([guild.id])

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        # Catch up on what happened while the bot was away: servers it was removed from
        # (it holds their memories, but is not in them) and servers it is back in.
        if self.bot.user is None:
            return
        for guild in self.bot.guilds:
            await self.record_channels(guild)
        bot_id = self.bot.user.id
        present = {guild.id for guild in self.bot.guilds}
        # A server on another process's shard is not here, and has not removed the bot either.
        remembered = [g for g in await self.bot.store.remembered_guilds(bot_id) if self._on_my_shards(g)]
        gone = [g for g in remembered if g not in present]
        if gone:
            await self.bot.store.note_departures(bot_id, gone, at=time.time())
        await self._back_in([g for g in await self.bot.store.departures(bot_id) if g in present])
        await self.purge_due()

    @tasks.loop(hours=PURGE_CHECK_HOURS)
    async def purge_check(self) -> None:
        await self.purge_due()
        for guild in self.bot.guilds:  # written only where something changed unseen
            await self.record_channels(guild)

    @purge_check.before_loop
    async def _wait_until_ready(self) -> None:
        await self.bot.wait_until_ready()

    async def purge_due(self) -> None:
        """Forget the memories of every server left longer ago than the grace period."""
        if self.bot.user is None:
            return
        bot_id = self.bot.user.id
        grace = self.bot.config.privacy.removed_guild_grace_days * DAY_SECONDS
        async with self._purging:
            try:
                for guild_id, left_at in (await self.bot.store.departures(bot_id)).items():
                    if time.time() - left_at < grace:
                        continue
                    count = await self.bot.forgetting.forget_scope(
                        Scope.for_guild(bot_id, guild_id), reason=REMOVED_FROM_SERVER
                    )
                    await self.bot.store.clear_departures(bot_id, [guild_id])
                    log.info("forgot the %d memories of server %s, which removed me", count, guild_id)
            except Exception:
                # Tried again at the next check.
                log.exception("could not forget the memories of servers that removed me")

    def _on_my_shards(self, guild_id: int) -> bool:
        """Whether this process runs the shard a server is on: each process sees only its shards' servers."""
        shard_count = self.bot.shard_count
        shard_ids = getattr(self.bot, "shard_ids", None)
        if not shard_count or shard_ids is None:
            return True  # not sharded, or this process runs every shard
        return (guild_id >> DISCORD_SHARD_SHIFT) % shard_count in shard_ids

    async def _back_in(self, guild_ids: list[int]) -> None:
        if self.bot.user is None or not guild_ids:
            return
        # A read first: every server is "available" at each start, and almost none had left.
        left = await self.bot.store.departures(self.bot.user.id)
        returned = [guild_id for guild_id in guild_ids if guild_id in left]
        if returned:
            await self.bot.store.clear_departures(self.bot.user.id, returned)
            log.info("back in servers %s: their memories stay", returned)

    # messages

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._forget([payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._forget(sorted(payload.message_ids))

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        chat = self.bot.get_cog("Chat")
        if "content" not in payload.data or chat is None:
            return  # not a change of the text (an embed unfurling, a pin)
        text = chat.message_text(payload.message)  # type: ignore[attr-defined]
        try:
            new_id = await self.bot.forgetting.follow_edit(payload.message_id, text, reason=EDITED_IN_DISCORD)
        except Exception:
            log.exception("could not follow the edit of message %s", payload.message_id)
            return
        if new_id is not None:
            log.info("message %s was edited; its memory is now #%s", payload.message_id, new_id)

    async def _forget(self, message_ids: list[int]) -> None:
        try:
            forgotten = await self.bot.forgetting.forget_messages(message_ids, reason=DELETED_IN_DISCORD)
        except Exception:
            # The memory stays until the message is deleted again or someone forgets it by hand.
            log.exception("could not forget the memories of deleted messages %s", message_ids)
            return
        if forgotten:
            log.info("forgot memories %s: their messages were deleted in Discord", forgotten)


async def setup(bot: CompanionBot) -> None:
    await bot.add_cog(Privacy(bot))
