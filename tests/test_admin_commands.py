"""The owners' commands through the fake Discord: /backup, /snapshot, /status, and a restore with its button."""

import asyncio
import concurrent.futures
import contextlib
import re
import sys
import threading

import pytest

from companion.operations import RESTORING_REPLY
from storage.backups import BackupError
from storage.commands import TurnRecord
from tests.fakes.discord_server import ADMINISTRATOR
from tests.harness import ALICE, APP_OWNER, BOB, CAROL, GUILD_A, GUILD_B, LISTEN_CHANNEL, SCOPE_A

REFUSED = "Only the bot's owners can use this command."
ADMIN_COMMANDS = [
    ("backup now", {}),
    ("backup list", {}),
    ("backup restore", {"name": "memory-20260101T030000Z-nightly.db"}),
    ("snapshot now", {}),
    ("status", {}),
]


async def run(harness, user_id: int, command: str, *, guild_id: int | None = GUILD_A, **options):
    """Invoke a slash command; wait for its answer (after a deferral, the followup) and return the interaction."""
    interaction = await harness.discord.invoke(user_id, command, guild_id=guild_id, options=options)
    [first] = await interaction.wait_for_response(1)
    assert first["ephemeral"], first
    if first["type"] == 5:  # deferred: the answer edits the "thinking" message
        await interaction.wait_for_response(2)
    return interaction


def answer(interaction) -> str:
    return interaction.original["content"]


async def wait_for_text(interaction, needle: str, timeout: float = 15) -> str:
    """Wait until `needle` is in a response, or in the original message as edited by a button press."""

    def seen() -> str:
        current = (interaction.original or {}).get("content") or ""
        return interaction.text() + "\n" + current

    async with asyncio.timeout(timeout):
        while needle not in seen():
            await asyncio.sleep(0.02)
    return seen()


async def memory_texts(bot) -> list[str]:
    return [m.user_text for m in await bot.store.list_memories(SCOPE_A, limit=50)]


def backup_kinds(bot) -> list[str]:
    return [b.kind for b in bot.backend.backups.list()]


def backup_suffix(bot) -> str:
    """What the bot's backend's backups are named with: SQLite's `.db` files or PostgreSQL's `.pgdump` archives."""
    return ".db" if bot.db is not None else ".pgdump"


async def take_backup(harness) -> str:
    text = answer(await run(harness, APP_OWNER, "backup now"))
    assert text.startswith("Backup taken:"), text
    name = re.search(r"`(memory-[^`]+)`", text)[1]
    assert name.endswith(backup_suffix(harness.bot)), name
    return name


async def start_restore(harness, name: str, user_id: int = APP_OWNER):
    interaction = await harness.discord.invoke(user_id, "backup restore", guild_id=GUILD_A, options={"name": name})
    [confirm] = await interaction.wait_for_response(1)
    assert confirm["ephemeral"] and "every server and DM" in confirm["content"], confirm
    return interaction


async def test_owner_backs_up_lists_and_snapshots(harness):
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "remember this")
    await harness.wait_for_memories(1)
    name = await take_backup(harness)
    assert "events ≤ #" in answer(await run(harness, APP_OWNER, "backup now"))

    listed = answer(await run(harness, APP_OWNER, "backup list", guild_id=None))  # in a DM too
    assert name in listed and "verified ✓" in listed and "<t:" in listed
    snapshot = answer(await run(harness, APP_OWNER, "snapshot now"))
    if bot.db is not None:
        assert snapshot.startswith("Snapshot written:") and "1 memory at event #" in snapshot
    else:
        assert snapshot.startswith("Sorry, the snapshot is not available: PostgreSQL keeps none"), snapshot
    assert backup_kinds(bot).count("manual") == 2


async def test_non_owners_including_guild_admins_are_refused_every_admin_command(harness):
    bot = await harness.start_bot()
    harness.discord.set_member_permissions(GUILD_A, BOB, ADMINISTRATOR)
    async with asyncio.timeout(10):  # let the start-up catch-up backup land first
        while bot.backend.backups.newest("nightly") is None:
            await asyncio.sleep(0.02)
    before = sorted(p.name for p in bot.config.storage.backups_dir.iterdir())
    # Alice owns guild A; Bob administers it; neither owns the bot.
    for user_id in (ALICE, BOB):
        for command, options in ADMIN_COMMANDS:
            interaction = await run(harness, user_id, command, **options)
            assert answer(interaction) == REFUSED, (user_id, command)
    assert sorted(p.name for p in bot.config.storage.backups_dir.iterdir()) == before
    assert not bot.config.storage.snapshots_dir.exists() or not any(bot.config.storage.snapshots_dir.iterdir())
    # Autocomplete does not leak backup names either.
    assert await harness.discord.autocomplete(BOB, "backup restore", guild_id=GUILD_A, options={}, focused="name") == []
    owner_choices = await harness.discord.autocomplete(
        APP_OWNER, "backup restore", guild_id=GUILD_A, options={}, focused="name"
    )
    assert [c["value"] for c in owner_choices] == [b for b in reversed(before) if b.endswith(backup_suffix(bot))]
    assert owner_choices


async def test_configured_owner_ids_are_owners_too(harness):
    await harness.start_bot(discord={"owner_ids": [CAROL]})
    status = answer(await run(harness, CAROL, "status", guild_id=GUILD_B))
    for heading in ("**Up**", "**Memory:**", "**Scoring:**", "**Backups:**", "**Snapshots:**", "**Scheduled jobs:**"):
        assert heading in status


async def test_restore_through_the_slash_command_and_its_button(harness):
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "my cat is called Biscuit")
    await harness.wait_for_memories(1)
    [before] = await bot.store.list_memories(SCOPE_A)
    name = await take_backup(harness)
    # After the backup: the cat is forgotten and a dog remembered.
    await bot.store.forget(SCOPE_A, before.id, actor_id=ALICE)
    await harness.say(LISTEN_CHANNEL, ALICE, "my dog is called Waffles")
    async with asyncio.timeout(10):
        while await memory_texts(bot) != ["my dog is called Waffles"]:
            await asyncio.sleep(0.02)

    interaction = await start_restore(harness, name)
    click = await harness.discord.click(APP_OWNER, interaction.original, "backup:restore:confirm")
    await click.wait_for_response(1)
    text = await wait_for_text(interaction, "Restored `")
    for step in ("paused", "The backup is sound", "safety backup", f"restoring `{name}`"):
        assert step in text
    assert all(r["ephemeral"] for r in interaction.responses)

    assert await memory_texts(bot) == ["my cat is called Biscuit"]
    assert bot.paused_reason is None
    assert "pre-restore" in backup_kinds(bot)
    reply = await harness.say(LISTEN_CHANNEL, ALICE, "are you back?")
    assert reply["content"] != RESTORING_REPLY
    await harness.wait_for_memories(2)
    assert await memory_texts(bot) == ["are you back?", "my cat is called Biscuit"]


async def test_messages_during_a_restore_get_a_short_answer(harness, monkeypatch):
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "before the backup")
    await harness.wait_for_memories(1)
    name = await take_backup(harness)
    release = threading.Event()
    real_restore = bot.backend.backups.restore

    def slow_restore(*args):
        release.wait(10)
        real_restore(*args)

    monkeypatch.setattr(bot.backend.backups, "restore", slow_restore)
    interaction = await start_restore(harness, name)
    try:
        await harness.discord.click(APP_OWNER, interaction.original, "backup:restore:confirm")
        await wait_for_text(interaction, f"restoring `{name}`")
        reply = await harness.say(LISTEN_CHANNEL, BOB, "hello? anyone?")
        assert reply["content"] == RESTORING_REPLY
    finally:
        release.set()
    await wait_for_text(interaction, "Restored `")
    reply = await harness.say(LISTEN_CHANNEL, BOB, "hello again")
    assert reply["content"] != RESTORING_REPLY


async def test_a_memory_written_during_the_safety_backup_is_kept(harness, monkeypatch):
    """A turn answered while the safety backup is being taken (settling gave up on it) must end
    up in the safety backup or in the restored database, never in neither."""
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "before the backup")
    await harness.wait_for_memories(1)
    name = await take_backup(harness)
    loop = asyncio.get_running_loop()
    real_take_backup = bot.backend.backups.take
    late = TurnRecord(SCOPE_A, LISTEN_CHANNEL, BOB, "Bob", "Mnemo", "a late turn", "answered late")

    def take_backup_while_a_turn_lands(*args, **kwargs):
        info = real_take_backup(*args, **kwargs)
        if kwargs.get("kind") == "pre-restore":
            landing = asyncio.run_coroutine_threadsafe(bot.store.write_turn(late), loop)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                landing.result(timeout=1.0)  # held back until the restore is done
        return info

    monkeypatch.setattr(bot.backend.backups, "take", take_backup_while_a_turn_lands)
    interaction = await start_restore(harness, name)
    await harness.discord.click(APP_OWNER, interaction.original, "backup:restore:confirm")
    await wait_for_text(interaction, "Restored `")
    async with asyncio.timeout(5):
        while "a late turn" not in await memory_texts(bot):
            await asyncio.sleep(0.02)
    assert await memory_texts(bot) == ["a late turn", "before the backup"]


async def test_a_corrupt_backup_is_refused_and_nothing_changes(harness):
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "keep me")
    await harness.wait_for_memories(1)
    name = await take_backup(harness)
    path = bot.config.storage.backups_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    interaction = await start_restore(harness, name)
    await harness.discord.click(APP_OWNER, interaction.original, "backup:restore:confirm")
    text = await wait_for_text(interaction, "Nothing was changed.")
    assert "That backup is not sound" in text and "checksum" in text
    assert await memory_texts(bot) == ["keep me"]
    assert bot.paused_reason is None and not bot.scoring._paused
    assert "pre-restore" not in backup_kinds(bot)


async def test_unknown_names_cancel_other_owners_and_timeouts(harness, monkeypatch):
    bot = await harness.start_bot(discord={"owner_ids": [CAROL]})
    unknown = answer(await run(harness, APP_OWNER, "backup restore", name="memory-nope"))
    assert unknown == "No backup named memory-nope. Use /backup list."
    await harness.say(LISTEN_CHANNEL, ALICE, "stays as it is")
    await harness.wait_for_memories(1)
    name = await take_backup(harness)
    count = len(bot.backend.backups.list())

    # Another owner cannot answer someone else's confirmation; the asker can cancel.
    interaction = await start_restore(harness, name)
    other = await harness.discord.click(CAROL, interaction.original, "backup:restore:confirm")
    [refusal] = await other.wait_for_response(1)
    assert refusal["ephemeral"] and "Only the owner who asked" in refusal["content"]
    await harness.discord.click(APP_OWNER, interaction.original, "backup:restore:cancel")
    await wait_for_text(interaction, "Restore cancelled. Nothing was changed.")

    # No answer at all: the buttons are disabled and nothing happens.
    # load_extension made its own module object; patch the one the bot runs.
    monkeypatch.setattr(sys.modules["cogs.admin"], "CONFIRM_TIMEOUT_SECONDS", 0.3)
    interaction = await start_restore(harness, name)
    await wait_for_text(interaction, "Nothing was restored.")
    buttons = interaction.original["components"][0]["components"]
    assert all(button.get("disabled") for button in buttons)
    assert len(bot.backend.backups.list()) == count
    assert await memory_texts(bot) == ["stays as it is"]


async def test_status_shows_failures_and_the_numbers(harness, monkeypatch):
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "one")
    await harness.wait_for_memories(1)

    def disk_full(*args, **kwargs):
        raise BackupError("backup failed: database or disk is full")

    monkeypatch.setattr(bot.backend.backups, "take", disk_full)
    failed = answer(await run(harness, APP_OWNER, "backup now"))
    assert failed == "Sorry, the backup failed: database or disk is full. Earlier backups are untouched."

    status = answer(await run(harness, APP_OWNER, "status"))
    assert "1 memory (0 pinned) in 1 server and 0 DMs" in status
    assert "Last attempt **failed**" in status and "database or disk is full" in status
    assert "Gateway latency:" in status and "Next <t:" in status
    assert "0 errors, 0 missed runs" in status
    assert len(status) <= 2000


@pytest.mark.parametrize("command", ["backup now", "snapshot now", "status"])
async def test_long_commands_defer_first(harness, command):
    await harness.start_bot()
    interaction = await run(harness, APP_OWNER, command)
    assert interaction.responses[0]["type"] == 5


async def test_a_restore_confirmation_pressed_during_another_restore_changes_nothing(harness):
    bot = await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "stays as it is")
    await harness.wait_for_memories(1)
    name = await take_backup(harness)
    interaction = await start_restore(harness, name)
    # Another restore begins while this question is open.
    bot.paused_reason = "restoring"
    try:
        click = await harness.discord.click(APP_OWNER, interaction.original, "backup:restore:confirm")
        await click.wait_for_response(1)
        await wait_for_text(interaction, "Nothing was restored: a restore is already under way.")
    finally:
        bot.paused_reason = None
    assert "pre-restore" not in backup_kinds(bot)
    assert await memory_texts(bot) == ["stays as it is"]
