"""Answering interactions: one way to reply privately, and errors users may see."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from storage.store import StoreError


class UserFacingError(app_commands.AppCommandError):
    """An error whose message is safe and useful to show to the person who ran the command."""


class NotOwner(app_commands.CheckFailure):
    """The command is for the bot's owners only."""


def storage_error_text(error: StoreError) -> str:
    """What to tell someone whose command met a storage error (a full disk, an I/O error).

    Writes are all-or-nothing, so nothing was changed, and the condition is
    usually temporary: say so, and which of the two it is when the store knows.
    """
    if error.full:
        problem = "my storage is full"
    else:
        problem = "my storage is not working right now"
    return f"Sorry, I couldn't do that: {problem}, so nothing was changed. Please try again later."


async def send_ephemeral(interaction: discord.Interaction, content: str | None = None, **kwargs: Any) -> None:
    """Reply only the invoker can see, whether or not the interaction was answered or deferred."""
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=True, **kwargs)
    else:
        await interaction.response.send_message(content, ephemeral=True, **kwargs)


def owner_only() -> Any:
    """An app-command check that only the bot's owners pass, enforced here and not by Discord."""

    async def predicate(interaction: discord.Interaction) -> bool:
        is_owner = getattr(interaction.client, "is_owner_id", None)
        if is_owner is None or not await is_owner(interaction.user.id):
            raise NotOwner("Only the bot's owners can use this command.")
        return True

    return app_commands.check(predicate)
