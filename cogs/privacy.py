"""The bot forgets what Discord forgets: deleted messages take their memories with them.

Raw events, so messages the bot never cached (from before its start, or
pushed out of its cache) count too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

if TYPE_CHECKING:
    from bot import CompanionBot

log = logging.getLogger(__name__)

DELETED_IN_DISCORD = "deleted in Discord"


class Privacy(commands.Cog):
    def __init__(self, bot: CompanionBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._forget([payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._forget(sorted(payload.message_ids))

    async def _forget(self, message_ids: list[int]) -> None:
        try:
            forgotten = await self.bot.forget_messages(message_ids, reason=DELETED_IN_DISCORD)
        except Exception:
            # The memory stays until the message is deleted again or someone forgets it by hand.
            log.exception("could not forget the memories of deleted messages %s", message_ids)
            return
        if forgotten:
            log.info("forgot memories %s: their messages were deleted in Discord", forgotten)


async def setup(bot: CompanionBot) -> None:
    await bot.add_cog(Privacy(bot))
