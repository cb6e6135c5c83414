"""The owners' commands: /backup now|list|restore, /snapshot now and /status.

A restore rolls back every guild at once, so all of these are for the bot's
owners only (`[discord] owner_ids` and the application's owner), checked
here in code. A guild's admins are not owners. Every reply is ephemeral.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs.replies import UserFacingError, owner_only, send_ephemeral
from companion.llm import EndpointProbe
from companion.operations import OperationsStatus, RestoreReport
from storage.backups import BackupError, BackupInfo, InvalidBackup, UnknownBackup
from storage.snapshots import SnapshotError

if TYPE_CHECKING:
    from bot import CompanionBot

CONFIRM_TIMEOUT_SECONDS = 60.0
LIST_LIMIT = 15
AUTOCOMPLETE_LIMIT = 25
MESSAGE_LIMIT = 2000


class ConfirmRestore(discord.ui.View):
    """Restore or Cancel, answerable only by the owner who asked; `value` is None after a timeout.

    When Restore is pressed, `recheck` runs again (the presser may no longer be
    an owner, or another restore may have begun): what it returns is why the
    restore may not go ahead, or None.
    """

    def __init__(
        self, owner_id: int, backup_name: str, recheck: Callable[[discord.Interaction], Awaitable[str | None]]
    ) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT_SECONDS)
        self.owner_id = owner_id
        self.backup_name = backup_name
        self.recheck = recheck
        self.value: bool | None = None
        self.message: discord.InteractionMessage | None = None

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.user.id != self.owner_id:
            await send_ephemeral(interaction, "Only the owner who asked for this restore can answer it.")
            return False
        return True

    @discord.ui.button(label="Restore", style=discord.ButtonStyle.danger, custom_id="backup:restore:confirm")
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        refused = await self.recheck(interaction)
        if refused:
            self.value = False
            await interaction.response.edit_message(content=f"Nothing was restored: {refused}", view=None)
            self.stop()
            return
        self.value = True
        await interaction.response.edit_message(content=f"Restoring `{self.backup_name}`…", view=None)
        self.stop()

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary, custom_id="backup:restore:cancel")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.value = False
        await interaction.response.edit_message(content="Restore cancelled. Nothing was changed.", view=None)
        self.stop()

    async def on_timeout(self) -> None:
        for item in self.children:
            if isinstance(item, discord.ui.Button):
                item.disabled = True
        if self.message is not None:
            try:
                await self.message.edit(
                    content=f"No answer within {CONFIRM_TIMEOUT_SECONDS:.0f} seconds. Nothing was restored.",
                    view=self,
                )
            except discord.HTTPException:
                pass  # the message is gone or the token expired; nothing to tidy


class BackupCommands(commands.GroupCog, group_name="backup", group_description="Backups of the bot's memory"):
    def __init__(self, bot: CompanionBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="now")
    @owner_only()
    async def now(self, interaction: discord.Interaction) -> None:
        """Take a backup of the whole database now."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            info = await self.bot.operations.backup_now()
        except BackupError as exc:
            raise UserFacingError(f"Sorry, the {exc}. Earlier backups are untouched.") from exc
        await send_ephemeral(interaction, f"Backup taken: {_backup_line(info)}")

    @app_commands.command(name="list")
    @owner_only()
    async def list_(self, interaction: discord.Interaction) -> None:
        """List the backups, newest first."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await self.bot.operations.list_backups()
        if not found:
            await send_ephemeral(interaction, "There are no backups yet. Take one with /backup now.")
            return
        lines = [f"**Backups** ({len(found)}, newest first)"]
        lines += [_backup_line(info) for info in found[:LIST_LIMIT]]
        if len(found) > LIST_LIMIT:
            lines.append(f"…and {len(found) - LIST_LIMIT} older ones.")
        await send_ephemeral(interaction, _fit("\n".join(lines)))

    @app_commands.command(name="restore")
    @app_commands.describe(name="The backup's name, as /backup list shows it")
    @owner_only()
    async def restore(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        """Roll the memory of every server back to a backup (asks you to confirm first)."""
        try:
            backup = await self.bot.operations.find_backup(name)
        except UnknownBackup:
            raise UserFacingError(f"No backup named {name}. Use /backup list.") from None

        async def still_allowed(pressed: discord.Interaction) -> str | None:
            if not await self.bot.is_owner_id(pressed.user.id):
                return "you are no longer one of the bot's owners."
            if self.bot.paused_reason:
                return "a restore is already under way."
            return None

        view = ConfirmRestore(interaction.user.id, backup.name, still_allowed)
        await interaction.response.send_message(_confirm_text(backup), view=view, ephemeral=True)
        view.message = await interaction.original_response()
        await view.wait()
        if not view.value:
            return  # cancelled or timed out; the view said so

        async def progress(text: str) -> None:
            await interaction.edit_original_response(content=f"**Restoring `{backup.name}`**\n{text}", view=None)

        try:
            report = await self.bot.operations.restore(backup.name, progress)
        except InvalidBackup as exc:
            raise UserFacingError(f"That backup is not sound: {exc}. Nothing was changed.") from exc
        except UnknownBackup:
            raise UserFacingError(f"No backup named {name}. Use /backup list.") from None
        except BackupError as exc:
            raise UserFacingError(f"Sorry, the {exc}. The details are in the bot's log.") from exc
        await send_ephemeral(interaction, _restored_text(report))

    @restore.autocomplete("name")
    @owner_only()
    async def restore_name_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        typed = current.casefold()
        found = await self.bot.operations.list_backups()
        matches = [info.name for info in found if typed in info.name.casefold()]
        return [app_commands.Choice(name=n, value=n) for n in matches[:AUTOCOMPLETE_LIMIT]]


class SnapshotCommands(commands.GroupCog, group_name="snapshot", group_description="Snapshots of the memory"):
    def __init__(self, bot: CompanionBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="now")
    @owner_only()
    async def now(self, interaction: discord.Interaction) -> None:
        """Write a snapshot of the memory projections now."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            info = await self.bot.operations.snapshot_now()
        except SnapshotError as exc:
            raise UserFacingError(f"Sorry, the {exc}.") from exc
        memories = _count(info.memories or 0, "memory", "memories")
        await send_ephemeral(
            interaction,
            f"Snapshot written: `{info.name}`, {memories} at event #{info.seq:,}, {_size(info.size_bytes)}.",
        )


class Status(commands.Cog):
    def __init__(self, bot: CompanionBot) -> None:
        self.bot = bot

    @app_commands.command(name="status")
    @owner_only()
    async def status(self, interaction: discord.Interaction) -> None:
        """How the bot is doing: uptime, memory, scoring, backups, snapshots and scheduled jobs."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        await send_ephemeral(interaction, _fit(await self._status_text()))

    async def _status_text(self) -> str:
        bot = self.bot
        counts = await bot.store.counts()
        worker = bot.scoring.status()
        pending = await bot.scoring.pending_count()
        ops = await bot.operations.status()
        lines = [
            f"**Up** for {_duration(time.time() - bot.started_at)} "
            f"(since {_when(datetime.fromtimestamp(bot.started_at, UTC), 'f')}). "
            f"Gateway latency: {_latency(bot.latency)}.{_shards(bot)}",
            f"**Memory:** {_count(counts.memories, 'memory', 'memories')} ({counts.pinned:,} pinned) in "
            f"{_count(counts.guilds, 'server', 'servers')} and {_count(counts.dms, 'DM', 'DMs')}; "
            f"the log is at event #{counts.last_event_id:,}.",
            f"**Scoring:** {'running' if worker.running else 'stopped'}; {worker.queued} queued, "
            f"{worker.in_flight} in flight, {pending:,} waiting in the database; since start {worker.scored:,} "
            f"scored, {worker.failures} failures, {worker.errors} errors."
            + (f" Last error: {worker.last_error}" if worker.last_error else ""),
            _backup_status(ops),
            _snapshot_status(ops),
            _jobs_status(ops),
            _limits_status(bot),
            _llm_probe_status(bot.llm_probe, bot.config.llm.base_url),
        ]
        if ops.busy:
            lines.insert(1, f"**Now:** {ops.busy} under way.")
        return "\n".join(lines)


# wording


def _backup_line(info: BackupInfo) -> str:
    events = f"events ≤ #{info.last_event_id:,}" if info.last_event_id is not None else "events unknown"
    verified = "verified ✓" if info.verified else "not verified ✗"
    return f"`{info.name}` · {_when(info.taken_at, 'f')} · {_size(info.size_bytes)} · {events} · {verified}"


def _confirm_text(backup: BackupInfo) -> str:
    events = f" (events up to #{backup.last_event_id:,})" if backup.last_event_id is not None else ""
    return (
        f"Restore `{backup.name}`, taken {_when(backup.taken_at, 'f')}{events}?\n"
        "This rolls back the memory of **every server and DM** to that moment. Anything remembered since "
        "is dropped from the live memory; a safety backup of the current state is taken first."
    )


def _restored_text(report: RestoreReport) -> str:
    return (
        f"Restored `{report.backup.name}` in {report.seconds:.1f} s: the memory is back to event "
        f"#{report.last_event_id:,}. The state before the restore is saved as `{report.safety_backup.name}`. "
        "I'm answering again."
    )


def _backup_status(ops: OperationsStatus) -> str:
    parts = ["**Backups:**"]
    newest = ops.newest_backup
    parts.append(
        f"newest `{newest.name}` {_when(newest.taken_at, 'R')}{' ✓' if newest.verified else ' ✗'}."
        if newest
        else "none yet."
    )
    parts.append(f"Next {_when(ops.next_backup_at, 'f')}." if ops.next_backup_at else "None scheduled.")
    if ops.last_backup is not None and not ops.last_backup.ok:
        parts.append(f"Last attempt **failed** {_when(ops.last_backup.at, 'R')}: {ops.last_backup.detail}")
    return " ".join(parts)


def _snapshot_status(ops: OperationsStatus) -> str:
    parts = ["**Snapshots:**"]
    if not ops.has_snapshots:
        return "**Snapshots:** none with PostgreSQL (its projections change in the same transaction as the log)."
    newest = ops.newest_snapshot
    if newest is not None:
        at_event = f" at event #{newest.seq:,}" if newest.seq is not None else " (unreadable)"
        parts.append(f"newest `{newest.name}`{at_event} {_when(newest.taken_at, 'R')}.")
    else:
        parts.append("none yet.")
    parts.append(f"Next check {_when(ops.next_snapshot_at, 'f')}." if ops.next_snapshot_at else "None scheduled.")
    if ops.last_snapshot is not None and not ops.last_snapshot.ok:
        parts.append(f"Last attempt **failed** {_when(ops.last_snapshot.at, 'R')}: {ops.last_snapshot.detail}")
    return " ".join(parts)


def _jobs_status(ops: OperationsStatus) -> str:
    state = "running" if ops.running else "stopped"
    if ops.leading is not None:
        state += ", run by this process" if ops.leading else ", run by another process sharing the database"
    text = f"**Scheduled jobs:** {state}; {ops.job_errors} errors, {ops.misfires} missed runs."
    for problem in ops.problems[-3:]:
        text += f"\n- `{problem.job_id}` {problem.kind} {_when(problem.at, 'R')}: {problem.detail}"
    return text


def _limits_status(bot: CompanionBot) -> str:
    """How often the limits held something back since start."""
    config = bot.config
    chat = bot.get_cog("Chat")
    per_person = getattr(chat, "user_limit", None)
    if per_person is None or not per_person.enabled:
        person = "per person: off"
    else:
        person = (
            f"per person ({config.chat.user_turns_per_minute:g}/min, burst {config.chat.user_burst}): "
            f"{per_person.refused:,} messages skipped, {per_person.told:,} people told"
        )
    requests = bot.llm.requests
    cap = f"{requests.limit}" if requests.limit else "no cap"
    return (
        f"**Limits** since start: {person}; model requests ({cap}): {requests.in_flight} in flight, "
        f"{requests.waited:,} waited for a slot; classifier calls used up by {bot.scoring.given_up:,} memories."
    )


def _llm_probe_status(probe: EndpointProbe | None, base_url: str) -> str:
    if probe is None:
        return "**Model endpoint:** not checked yet."
    if probe.kind == "reachable":
        return "**Model endpoint:** reachable at start."
    if probe.kind == "rejected":
        return f"**Model endpoint:** rejected the API key at start ({probe.summary}) at {base_url}."
    return f"**Model endpoint:** unreachable at start ({probe.summary}) at {base_url}."


def _count(number: int, one: str, many: str) -> str:
    return f"{number:,} {one if number == 1 else many}"


def _when(moment: datetime, style: str) -> str:
    return discord.utils.format_dt(moment, style)  # type: ignore[arg-type]


def _size(size_bytes: int) -> str:
    if size_bytes < 1024:
        return f"{size_bytes} B"
    size = size_bytes / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GB"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{int(seconds)} s"


def _latency(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if math.isfinite(seconds) else "not measured yet"


def _shards(bot: CompanionBot) -> str:
    """The shards this process runs, when sharded ([discord] shard_count)."""
    if not isinstance(bot, discord.AutoShardedClient):
        return ""
    return f" Shards {', '.join(str(shard_id) for shard_id in sorted(bot.shards))} of {bot.shard_count}."


def _fit(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


async def setup(bot: CompanionBot) -> None:
    await bot.add_cog(BackupCommands(bot))
    await bot.add_cog(SnapshotCommands(bot))
    await bot.add_cog(Status(bot))
