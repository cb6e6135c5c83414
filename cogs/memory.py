"""The /memory commands: see and steer what the bot remembers in this scope.

Every reply is ephemeral. Each command sees only the scope it runs in (the
guild, or the invoker's DMs), and in a server only the memories of channels
the invoker may read (and their own turns): an id from anywhere else gets
the same answer as an id that never existed.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from cogs.replies import UserFacingError, send_ephemeral
from companion import recall
from companion.context import clip
from companion.records import memory_record
from storage.memories import Memory
from storage.scope import Scope
from storage.store import ManualPinLimit, MemoryNotFound, StoreError
from storage.visibility import ChannelFilter

if TYPE_CHECKING:
    from bot import CompanionBot

log = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SIZE = 10
SEARCH_RESULTS = 10
SNIPPET_CHARS = 110
QUERY_ECHO_CHARS = 80
AUTOCOMPLETE_CHOICES = 25
AUTOCOMPLETE_SCAN = 200
VIEW_TIMEOUT_SECONDS = 180.0
MAX_QUERY_CHARS = 300
# Discord's upload limit for a bot's message without boosts.
EXPORT_MAX_BYTES = 8 * 1024 * 1024
FORGET_ME = "forget-me"
# Discord integers stop at 2**53; ids beyond can only be mistakes.
MemoryId = app_commands.Range[int, 1, 2**53 - 1]
SearchQuery = app_commands.Range[str, 1, MAX_QUERY_CHARS]

NO_SUCH_MEMORY = "There's no such memory here."
RESTORING = "I'm restoring a backup right now, so memories can't be changed. Try again in a moment."
NOT_PERMITTED = (
    "You can't change that memory: only the person whose turn it was, members with Manage Messages "
    "and the bot's owners can."
)
BACKUP_CAVEAT = (
    "Backups taken before now still contain it until they age out of the backup rotation "
    "([backup] keep, 14 nightly backups by default)."
)


def scope_of(interaction: discord.Interaction) -> Scope:
    bot_id = interaction.client.user.id if interaction.client.user else 0
    if interaction.guild_id is None:
        return Scope.for_dm(bot_id, interaction.user.id)
    return Scope.for_guild(bot_id, interaction.guild_id)


def readable_by(interaction: discord.Interaction) -> ChannelFilter | None:
    """The memories of this server the invoker may see: those said in channels they may read
    now (and public threads of those; private threads too where they manage threads), and their
    own turns. None (all of them) in DMs and for administrators."""
    if interaction.guild_id is None:
        return None  # one person's DMs
    member, guild = interaction.user, interaction.guild
    if guild is None or not isinstance(member, discord.Member):
        # Without the server's channels at hand: what was said here, and their own.
        here = frozenset([interaction.channel_id] if interaction.channel_id else [])
        return ChannelFilter(channels=here, author_id=interaction.user.id)
    if member.guild_permissions.administrator:
        return None
    readable: set[int] = set()
    manages_threads: set[int] = set()
    for channel in guild.channels:
        permissions = channel.permissions_for(member)
        if permissions.view_channel and permissions.read_message_history:
            readable.add(channel.id)
            if permissions.manage_threads:
                manages_threads.add(channel.id)
    # Threads by their own ids too, for memories that do not know their thread's channel.
    for thread in guild.threads:
        private = thread.type is discord.ChannelType.private_thread
        if thread.parent_id in (manages_threads if private else readable):
            readable.add(thread.id)
    return ChannelFilter(
        channels=frozenset(readable),
        thread_parents=frozenset(readable),
        private_thread_parents=frozenset(manages_threads),
        author_id=member.id,
    )


def memory_line(memory: Memory) -> str:
    """`#<id> · pin state · sig · date · snippet`, on one line."""
    if memory.pinned:
        pin = "📌 pinned (auto)" if memory.pin_auto else "📌 pinned (manual)"
    else:
        pin = "not pinned"
    if memory.significance is not None:
        significance = f"sig {memory.significance}"
    elif not memory.wants_score:
        significance = "not scored (imported)"
    else:
        significance = "sig failed" if memory.scoring_gave_up else "sig pending"
    day = datetime.fromtimestamp(memory.created_at, UTC)
    snippet = escaped_snippet(f"{memory.author_name}: {memory.user_text} → {memory.reply_text}", SNIPPET_CHARS)
    return f"#{memory.id} · {pin} · {significance} · {discord.utils.format_dt(day, 'd')} · {snippet}"


def escaped_snippet(text: str, max_chars: int) -> str:
    """`text` on one line, Markdown and mentions escaped, at most `max_chars` long once escaped.

    Escaping can double a text's length, so clipping first would let ten
    lines of code-heavy chat overflow Discord's 2000 characters.
    """
    flat = " ".join(text.split())
    keep = max_chars
    while True:
        escaped = discord.utils.escape_mentions(discord.utils.escape_markdown(clip(flat, keep)))
        if len(escaped) <= max_chars or keep <= 1:
            return escaped
        keep -= max(1, len(escaped) - max_chars)


class MemoryPages(discord.ui.View):
    """Newer/older buttons over a scope's memories, newest first."""

    def __init__(
        self,
        cog: MemoryCog,
        owner_id: int,
        scope: Scope,
        *,
        pinned_only: bool,
        total: int,
        channel_filter: ChannelFilter | None,
    ) -> None:
        super().__init__(timeout=VIEW_TIMEOUT_SECONDS)
        self.cog = cog
        self.owner_id = owner_id
        self.scope = scope
        self.pinned_only = pinned_only
        self.channel_filter = channel_filter
        self.total = total
        # before_id of each page seen so far; None is the first page.
        self.page_starts: list[int | None] = [None]
        self.page: list[Memory] = []
        self.interaction: discord.Interaction | None = None

    @property
    def page_number(self) -> int:
        return len(self.page_starts)

    async def load(self) -> str:
        self.page = await self.cog.bot.store.list_memories(
            self.scope,
            pinned_only=self.pinned_only,
            before_id=self.page_starts[-1],
            limit=PAGE_SIZE,
            channel_filter=self.channel_filter,
        )
        pages = max(1, -(-self.total // PAGE_SIZE))
        self.newer.disabled = self.page_number == 1
        self.older.disabled = len(self.page) < PAGE_SIZE or self.page_number >= pages
        return self.render(pages)

    def render(self, pages: int) -> str:
        what = "pinned memories" if self.pinned_only else "memories"
        header = f"**{self.total} {what} here** · page {self.page_number}/{pages}, newest first"
        return "\n".join([header, *(memory_line(m) for m in self.page)])

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.owner_id:
            await send_ephemeral(interaction, "These buttons belong to someone else's list.")
            return False
        return True

    @discord.ui.button(label="◀ Newer", style=discord.ButtonStyle.secondary, custom_id="memory:list:newer")
    async def newer(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if len(self.page_starts) > 1:
            self.page_starts.pop()
        await interaction.response.edit_message(content=await self.load(), view=self)

    @discord.ui.button(label="Older ▶", style=discord.ButtonStyle.secondary, custom_id="memory:list:older")
    async def older(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self.page:
            self.page_starts.append(self.page[-1].id)
        await interaction.response.edit_message(content=await self.load(), view=self)

    async def on_timeout(self) -> None:
        for item in self.children:
            if isinstance(item, discord.ui.Button):
                item.disabled = True
        if self.interaction is not None:
            try:
                await self.interaction.edit_original_response(view=self)
            except discord.HTTPException:
                pass  # the ephemeral message may be gone; nothing to tidy


class ConfirmForget(discord.ui.View):
    """Forget or Cancel; `value` is True, False, or None if it timed out.

    `recheck` runs again when Forget is pressed (the moderator may have lost
    Manage Messages meanwhile, or a restore begun): it returns why the forget
    may no longer go ahead, kept in `refused`, or None.
    """

    def __init__(
        self,
        owner_id: int,
        recheck: Callable[[discord.Interaction], Awaitable[str | None]],
        *,
        later: int = 0,
    ) -> None:
        super().__init__(timeout=VIEW_TIMEOUT_SECONDS)
        self.owner_id = owner_id
        self.recheck = recheck
        self.value: bool | None = None
        self.with_later = False  # the later memories that drew on it go too
        self.refused: str | None = None
        self.pressed: discord.Interaction | None = None
        if later:
            everything = discord.ui.Button(
                label=f"Forget it and the {later} later",
                style=discord.ButtonStyle.danger,
                custom_id="memory:forget:confirm-with-later",
                row=0,
            )
            everything.callback = self._confirm_with_later
            self.add_item(everything)

    async def _confirm_with_later(self, interaction: discord.Interaction) -> None:
        self.with_later = True
        await self.confirm.callback(interaction)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.owner_id

    @discord.ui.button(label="Forget it", style=discord.ButtonStyle.danger, custom_id="memory:forget:confirm")
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.refused = await self.recheck(interaction)
        await self._finish(interaction, self.refused is None)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary, custom_id="memory:forget:cancel")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._finish(interaction, False)

    async def _finish(self, interaction: discord.Interaction, value: bool) -> None:
        self.value = value
        self.pressed = interaction
        for item in self.children:
            if isinstance(item, discord.ui.Button):
                item.disabled = True
        await interaction.response.defer()
        self.stop()


class MemoryCog(commands.GroupCog, group_name="memory", group_description="See and steer what I remember here"):
    def __init__(self, bot: CompanionBot) -> None:
        self.bot = bot
        super().__init__()

    # reading

    @app_commands.command(name="list")
    @app_commands.describe(pinned="Only pinned memories")
    async def list_(self, interaction: discord.Interaction, pinned: bool = False) -> None:
        """List what I remember here, newest first."""
        scope = scope_of(interaction)
        readable = readable_by(interaction)
        total = await self.bot.store.count_memories(scope, pinned_only=pinned, channel_filter=readable)
        if total == 0:
            what = "pinned memories" if pinned else "memories"
            await send_ephemeral(interaction, f"I have no {what} here yet.")
            return
        view = MemoryPages(self, interaction.user.id, scope, pinned_only=pinned, total=total, channel_filter=readable)
        content = await view.load()
        if total <= PAGE_SIZE:
            await send_ephemeral(interaction, content)
            return
        view.interaction = interaction
        await send_ephemeral(interaction, content, view=view)

    @app_commands.command(name="search")
    @app_commands.describe(query="Words to look for in what I remember here")
    async def search(self, interaction: discord.Interaction, query: SearchQuery) -> None:
        """Search what I remember here, best match first."""
        scope = scope_of(interaction)
        if not self.bot.store.has_search_terms(query):
            raise UserFacingError("Give me a word or two to look for (very common words like 'the' are skipped).")
        # The turn's own recall, without the turns it brings along: these are the matches themselves.
        found = await recall.recall(
            self.bot.store,
            scope,
            query,
            limit=SEARCH_RESULTS,
            follow_ups=False,
            channel_filter=readable_by(interaction),
        )
        if not found:
            await send_ephemeral(interaction, "I don't remember anything here that matches that.")
            return
        header = f"**Best matches for** “{escaped_snippet(query, QUERY_ECHO_CHARS)}”:"
        await send_ephemeral(interaction, "\n".join([header, *(memory_line(r.memory) for r in found)]))

    # changing

    @app_commands.command(name="pin")
    @app_commands.describe(id="The memory's number, as shown by /memory list")
    async def pin(self, interaction: discord.Interaction, id: MemoryId) -> None:
        """Pin a memory so it is in every prompt here. Manual pins are never evicted."""
        scope = scope_of(interaction)
        await self._modifiable(interaction, scope, id)
        # The write may wait behind a checkpoint or a backup's last step: answer within Discord's 3 s.
        await interaction.response.defer(ephemeral=True, thinking=True)
        memory_config = self.bot.config.memory
        # A pin reaches every prompt in the server: a member holds at most their quota of them.
        # Moderators and owners are not limited.
        limited = interaction.guild_id is not None and not await self._may_change_any(interaction)
        try:
            outcome = await self._change(
                self.bot.store.pin(
                    scope,
                    id,
                    actor_id=interaction.user.id,
                    pin_cap=memory_config.pin_cap,
                    member_quota=memory_config.member_pin_quota if limited else None,
                )
            )
        except ManualPinLimit as exc:
            if exc.scope_full:
                raise UserFacingError(
                    f"There are already {exc.limit} manual pins here, as many as this server keeps. "
                    "Ask someone with Manage Messages to unpin one first."
                ) from None
            raise UserFacingError(
                f"You already hold {exc.limit} pin{'s' if exc.limit != 1 else ''} here, the most a member can. "
                "Unpin yours first (/memory unpin), or ask someone with Manage Messages to pin this one."
            ) from None
        if not outcome.changed:
            await send_ephemeral(interaction, f"#{id} is already pinned.\n{memory_line(outcome.memory)}")
            return
        lines = [f"Pinned #{id}. It will be in every prompt here.", memory_line(outcome.memory)]
        if outcome.unpinned:
            evicted = ", ".join(f"#{i}" for i in outcome.unpinned)
            lines.append(f"To stay within {self.bot.config.memory.pin_cap} pins, I unpinned {evicted} (auto-pinned).")
        await send_ephemeral(interaction, "\n".join(lines))

    @app_commands.command(name="unpin")
    @app_commands.describe(id="The memory's number, as shown by /memory list")
    async def unpin(self, interaction: discord.Interaction, id: MemoryId) -> None:
        """Unpin a memory. It stays remembered and can still be recalled by search."""
        scope = scope_of(interaction)
        await self._modifiable(interaction, scope, id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        outcome = await self._change(self.bot.store.unpin(scope, id, actor_id=interaction.user.id))
        if not outcome.changed:
            await send_ephemeral(interaction, f"#{id} isn't pinned.\n{memory_line(outcome.memory)}")
            return
        await send_ephemeral(interaction, f"Unpinned #{id}.\n{memory_line(outcome.memory)}")

    @app_commands.command(name="forget")
    @app_commands.describe(id="The memory's number, as shown by /memory list")
    async def forget(self, interaction: discord.Interaction, id: MemoryId) -> None:
        """Forget a memory for good: its text is erased from my memory, search and snapshots."""
        scope = scope_of(interaction)
        memory = await self._modifiable(interaction, scope, id)
        # Later memories whose prompts held this one: their replies may repeat it.
        later = await self.bot.store.drawing_on(scope, id, channel_filter=readable_by(interaction))
        may_change_any = await self._may_change_any(interaction)
        changeable = [m for m in later if may_change_any or m.author_id == interaction.user.id]

        async def still_allowed(pressed: discord.Interaction) -> str | None:
            try:
                await self._modifiable(pressed, scope, id)
            except UserFacingError as exc:
                return str(exc)
            return None

        view = ConfirmForget(interaction.user.id, still_allowed, later=len(changeable))
        question = f"Forget this memory for good? This can't be undone.\n{memory_line(memory)}"
        if later:
            count = f"{len(later)} later {'memory' if len(later) == 1 else 'memories'}"
            question += f"\n{count} drew on it (my prompt held it when I wrote them, so they may repeat it)."
            if len(changeable) < len(later):
                question += f" {len(later) - len(changeable)} of them only their authors or a moderator can forget."
        await send_ephemeral(interaction, question, view=view)
        timed_out = await view.wait()
        if timed_out or not view.value:
            note = "Nothing was forgotten." if not timed_out else "No answer, so nothing was forgotten."
            if view.refused:
                note = f"Nothing was forgotten: {view.refused}"
            await interaction.edit_original_response(content=f"{note}\n{memory_line(memory)}", view=None)
            return
        with_later: list[int] = []
        if view.with_later and view.pressed is not None:
            for later_memory in changeable:
                # Checked again as pressed, as the memory itself was.
                with contextlib.suppress(UserFacingError):
                    with_later.append((await self._modifiable(view.pressed, scope, later_memory.id)).id)
        try:
            await self._change(self.bot.store.forget(scope, id, actor_id=interaction.user.id))
            if with_later:
                await self.bot.store.forget_many(
                    scope, with_later, actor_id=interaction.user.id, reason=f"drew on forgotten #{id}"
                )
        except StoreError:
            # The forget rolled back. Close the question here; the error handler says why.
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(
                    content=f"Nothing was forgotten.\n{memory_line(memory)}", view=None
                )
            raise
        cleanup = await self.bot.forgetting.after_forget([id, *with_later])
        if cleanup.problems:
            outcome = (
                f"Forgotten #{id}: its text is gone from my memory and my search, but "
                f"{' and '.join(cleanup.problems)}; my owner can find the details in the log and retry with "
                "`python bot.py rebuild`."
            )
        else:
            # PostgreSQL keeps no snapshots.
            copies = ", my search and my snapshots" if self.bot.db is not None else " and my search"
            outcome = f"Forgotten #{id}: its text is gone from my memory{copies}."
        if with_later:
            outcome += f" So are the {len(with_later)} later memories that drew on it."
        if cleanup.checkpoint_pending:
            outcome += (
                " A backup is reading the database right now, so the old copy of its pages leaves the "
                "database files a moment after that finishes."
            )
        await interaction.edit_original_response(content=f"{outcome} {BACKUP_CAVEAT}", view=None)

    @app_commands.command(name="forget-me")
    async def forget_me(self, interaction: discord.Interaction) -> None:
        """Forget everything I remember of what you said here (asks you to confirm first)."""
        scope = scope_of(interaction)
        if self.bot.paused_reason:
            raise UserFacingError(RESTORING)
        count = len(await self.bot.store.memory_ids(scope, author_id=interaction.user.id))
        if count == 0:
            await send_ephemeral(interaction, "I don't remember anything you said here.")
            return

        async def still_allowed(pressed: discord.Interaction) -> str | None:
            return RESTORING if self.bot.paused_reason else None

        view = ConfirmForget(interaction.user.id, still_allowed)
        noun = "memory" if count == 1 else "memories"
        await send_ephemeral(
            interaction,
            f"Forget all {count} {noun} of what you said here, for good? This can't be undone.",
            view=view,
        )
        timed_out = await view.wait()
        if timed_out or not view.value:
            note = "No answer, so nothing was forgotten." if timed_out else "Nothing was forgotten."
            if view.refused:
                note = f"Nothing was forgotten: {view.refused}"
            await interaction.edit_original_response(content=note, view=None)
            return
        await interaction.edit_original_response(content=f"Forgetting {count} {noun}…", view=None)
        # What you said since the question was asked goes too: everything of yours, as asked.
        memory_ids = await self.bot.store.memory_ids(scope, author_id=interaction.user.id)
        try:
            forgotten = await self.bot.store.forget_many(
                scope, memory_ids, actor_id=interaction.user.id, reason=FORGET_ME
            )
        except StoreError:
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(content="Nothing more was forgotten.", view=None)
            raise
        cleanup = await self.bot.forgetting.after_forget(forgotten)
        outcome = f"Forgotten {len(forgotten)} {'memory' if len(forgotten) == 1 else 'memories'} of what you said here."
        if cleanup.problems:
            outcome += f" But {' and '.join(cleanup.problems)}; my owner can find the details in the log."
        await interaction.edit_original_response(content=f"{outcome} {BACKUP_CAVEAT}", view=None)

    @app_commands.command(name="export")
    async def export(self, interaction: discord.Interaction) -> None:
        """Send you a file of everything I remember of what you said here."""
        scope = scope_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        memory_ids = await self.bot.store.memory_ids(scope, author_id=interaction.user.id)
        if not memory_ids:
            await send_ephemeral(interaction, "I don't remember anything you said here.")
            return
        found = await self.bot.store.memories_by_id(scope, memory_ids)
        document = {
            "scope": str(scope),
            "user_id": interaction.user.id,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "memories": [memory_record(memory) for memory in found],
        }
        data = json.dumps(document, ensure_ascii=False, indent=1).encode()
        filename = "memories.json"
        if len(data) > EXPORT_MAX_BYTES:
            data, filename = gzip.compress(data), "memories.json.gz"
        if len(data) > EXPORT_MAX_BYTES:
            raise UserFacingError(
                f"That is more than I can send in one file ({len(found):,} memories). "
                "The bot's owner can forget or list them from the command line."
            )
        noun = "memory" if len(found) == 1 else "memories"
        await interaction.followup.send(
            f"Everything I remember of what you said here: {len(found):,} {noun}.",
            file=discord.File(io.BytesIO(data), filename),
            ephemeral=True,
        )

    @pin.autocomplete("id")
    @unpin.autocomplete("id")
    @forget.autocomplete("id")
    async def id_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
        scope = scope_of(interaction)
        command = interaction.command.name if interaction.command else ""
        author_id = None if await self._may_change_any(interaction) else interaction.user.id
        candidates = await self.bot.store.list_memories(
            scope,
            pinned_only=command == "unpin",
            author_id=author_id,
            limit=AUTOCOMPLETE_SCAN,
            channel_filter=readable_by(interaction),
        )
        typed = current.strip().lstrip("#").casefold()
        choices = []
        for memory in candidates:
            if command == "pin" and memory.pinned and not memory.pin_auto:
                continue
            # Digits (or "#12") name an id; anything else is looked for in the text.
            if typed.isdigit() and not str(memory.id).startswith(typed):
                continue
            if typed and not typed.isdigit() and typed not in memory.text.casefold():
                continue
            label = clip(" ".join(f"#{memory.id} · {memory.author_name}: {memory.user_text}".split()), 100)
            choices.append(app_commands.Choice(name=label, value=memory.id))
            if len(choices) == AUTOCOMPLETE_CHOICES:
                break
        return choices

    # guards

    async def _modifiable(self, interaction: discord.Interaction, scope: Scope, memory_id: int) -> Memory:
        """The memory, if it exists here and the invoker may change it; else a user-facing error."""
        if self.bot.paused_reason:
            raise UserFacingError(RESTORING)
        memory = await self.bot.store.get_memory(scope, memory_id, channel_filter=readable_by(interaction))
        if memory is None:
            raise UserFacingError(NO_SUCH_MEMORY)
        if memory.author_id != interaction.user.id and not await self._may_change_any(interaction):
            raise UserFacingError(NOT_PERMITTED)
        return memory

    async def _may_change_any(self, interaction: discord.Interaction) -> bool:
        """Owners anywhere, and members with Manage Messages in this guild."""
        if await self.bot.is_owner_id(interaction.user.id):
            return True
        member = interaction.user
        return isinstance(member, discord.Member) and member.guild_permissions.manage_messages

    @staticmethod
    async def _change(operation: Awaitable[T]) -> T:
        try:
            return await operation
        except MemoryNotFound:
            # Forgotten between the check and the change.
            raise UserFacingError(NO_SUCH_MEMORY) from None


async def setup(bot: CompanionBot) -> None:
    await bot.add_cog(MemoryCog(bot))
