"""The data folder is the bot user's alone: new files whatever the umask, and old ones fixed at start."""

import asyncio
import stat

from tests.botprocess import BotProcess, write_config
from tests.harness import ALICE, APP_OWNER, GUILD_A, LISTEN_CHANNEL


async def wait_for_log(bot: BotProcess, text: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while text not in bot.log_path.read_text(errors="replace"):
            await asyncio.sleep(0.05)


def modes(folder) -> dict[str, int]:
    return {str(path.relative_to(folder)): stat.S_IMODE(path.stat().st_mode) for path in [folder, *folder.rglob("*")]}


async def test_the_data_folder_is_private_under_umask_022(tmp_path, discord_fake, llm_fake):
    config = write_config(tmp_path, discord_fake, llm_fake)
    data = tmp_path / "data"
    # What an earlier version left, readable by everyone.
    (data / "snapshots").mkdir(parents=True)
    old = data / "snapshots" / "left-over.db"
    old.write_bytes(b"old")
    for path, mode in ((data, 0o755), (data / "snapshots", 0o755), (old, 0o644)):
        path.chmod(mode)

    bot = BotProcess(config)
    try:
        await bot.start(discord_fake, umask=0o022)
        await wait_for_log(bot, "-nightly.db taken")  # the start-up catch-up backup
        message = await discord_fake.send_message(LISTEN_CHANNEL, ALICE, "remember this, privately")
        await discord_fake.wait_for_bot_messages(1, channel_id=LISTEN_CHANNEL)
        interaction = await discord_fake.invoke(APP_OWNER, "snapshot now", guild_id=GUILD_A, channel_id=LISTEN_CHANNEL)
        await interaction.wait_for_response(1)
        await wait_for_log(bot, "snapshot snapshot-")
        assert message
        found = modes(data)
        names = set(found)
        # The database and its sidecars while the bot runs, a backup and its sidecar, a snapshot, the lock.
        assert {"memory.db", "memory.db-wal", "memory.db-shm", "bot.lock"} <= names
        assert any(name.startswith("backups/") and name.endswith("-nightly.db") for name in names)
        assert any(name.startswith("backups/") and name.endswith("-nightly.db.json") for name in names)
        assert any(name.startswith("snapshots/snapshot-") for name in names)
        folders = {name for name in names if (data / name).is_dir()}
        assert {name: found[name] for name in folders} == dict.fromkeys(folders, 0o700)
        files = names - folders
        assert {name: found[name] for name in files} == dict.fromkeys(files, 0o600)
    finally:
        await bot.stop()
