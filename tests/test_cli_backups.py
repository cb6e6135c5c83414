"""The command line, with the bot stopped: backup now|list|verify|restore and rebuild."""

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main
from storage import backups, snapshots, sqlite
from storage.commands import TurnRecord, write_memory
from storage.database import Database
from storage.schema import LATEST_VERSION
from storage.scope import Scope

REPO = Path(__file__).resolve().parent.parent
SCOPE = Scope.for_guild(1000, 10)


async def remember(path: Path, *texts: str) -> None:
    db = await Database.open(path)
    try:
        for text in texts:
            await write_memory(db, TurnRecord(SCOPE, 5, 7, "alice", "Mnemo", text, "noted"))
    finally:
        await db.close()


def memory_texts(path: Path) -> list[str]:
    conn = sqlite.connect(path, query_only=True)
    try:
        return [row[0] for row in conn.execute("SELECT user_text FROM memories ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture
def setup(tmp_path):
    """A config file and a database holding two memories."""
    config = tmp_path / "config.toml"
    config.write_text('[storage]\ndata_dir = "data"\n\n[backup]\nkeep = 3\n', encoding="utf-8")
    data = tmp_path / "data"
    asyncio.run(remember(data / "memory.db", "the first thing", "the second thing"))
    return config, data


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_bot_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "bot.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_backup_now_list_and_verify(setup, capsys):
    config, data = setup
    code, out, _ = cli(capsys, "backup", "now", "--config", str(config))
    assert code == 0 and "events up to #2, verified" in out
    [info] = backups.list_backups(data / "backups")
    assert info.kind == "manual" and info.name in out

    code, out, _ = cli(capsys, "--config", str(config), "backup", "list")
    assert code == 0 and info.name in out and "✓" in out and "#2" in out

    code, out, _ = cli(capsys, "backup", "verify", info.name, "--config", str(config))
    assert code == 0 and out.strip() == f"{info.name}: ok (schema v{LATEST_VERSION}, events up to #2, checksum matches)"
    # A file kept elsewhere can be checked by its path.
    code, out, _ = cli(capsys, "backup", "verify", str(info.path), "--config", str(config))
    assert code == 0 and "ok" in out


def test_restore_from_the_command_line(setup):
    config, data = setup
    [_, info] = [backups.take_backup(data / "memory.db", data / "backups", kind="manual") for _ in range(2)]
    asyncio.run(remember(data / "memory.db", "after the backup"))
    assert len(memory_texts(data / "memory.db")) == 3

    result = run_bot_py("backup", "restore", info.name, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{info.name} is sound: events up to #2",
        f"safety backup {backups.newest_backup(data / 'backups', 'pre-restore').name} taken",
        f"restored {info.name}: the memory is back to event #2",
    ]
    assert memory_texts(data / "memory.db") == ["the first thing", "the second thing"]
    assert sorted(p.name for p in data.iterdir()) == ["backups", "bot.lock", "memory.db"]  # no -wal or -shm left
    # The safety backup holds what the restore replaced.
    safety = backups.newest_backup(data / "backups", "pre-restore")
    assert backups.verify_backup(safety.path).last_event_id == 3


def flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:16] = b"\x00" * 16
    path.write_bytes(bytes(data))


def flip_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "flipped-header-bytes": flip_header,
    "flipped-page-byte": flip_page,
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:5000]),
    "empty": lambda path: path.write_bytes(b""),
    "not-a-database": lambda path: path.write_text("just some notes\n" * 300),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_verify_and_restore_reject_corrupt_backups(setup, capsys, corruption):
    config, data = setup
    info = backups.take_backup(data / "memory.db", data / "backups", kind="manual")
    asyncio.run(remember(data / "memory.db", "after the backup"))
    CORRUPTIONS[corruption](info.path)

    code, out, err = cli(capsys, "backup", "verify", info.name, "--config", str(config))
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {info.name}") and err.count("\n") == 1
    code, out, err = cli(capsys, "backup", "restore", info.name, "--config", str(config))
    assert (code, out) == (1, "") and err.startswith("error: ")
    assert len(memory_texts(data / "memory.db")) == 3
    assert [b.kind for b in backups.list_backups(data / "backups")] == ["manual"]


def test_errors_are_one_line_and_never_a_traceback(setup, capsys, tmp_path):
    config, _ = setup
    result = run_bot_py("backup", "restore", "memory-nope", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr == "error: No backup named memory-nope. See `bot.py backup list`.\n"

    empty = tmp_path / "empty.toml"
    empty.write_text('[storage]\ndata_dir = "nothing-here"\n', encoding="utf-8")
    code, _, err = cli(capsys, "backup", "now", "--config", str(empty))
    assert code == 1 and err.startswith("error: no database at ") and err.count("\n") == 1
    assert not (tmp_path / "nothing-here" / "memory.db").exists()
    code, out, _ = cli(capsys, "backup", "list", "--config", str(empty))
    assert (code, out) == (0, "no backups yet\n")
    with pytest.raises(SystemExit) as usage:
        main(["backup", "verify", "--config", str(config)])
    assert usage.value.code == 2


def test_rebuild_starts_from_the_newest_snapshot_and_refreshes_them(setup, capsys):
    config, data = setup
    snapshots.write_snapshot(data / "memory.db", data / "snapshots", kind="periodic")
    asyncio.run(remember(data / "memory.db", "a third thing"))

    code, out, _ = cli(capsys, "rebuild", "--config", str(config))
    assert code == 0
    first, second = out.splitlines()
    assert first.startswith("rebuilt projections from snapshot snapshot-") and "plus 1 events (up to #3)" in first
    assert second.startswith("wrote snapshot snapshot-") and second.endswith("at event #3")

    code, out, _ = cli(capsys, "rebuild", "--full", "--config", str(config))
    assert code == 0 and out.startswith("rebuilt projections from all 3 events (up to #3)")
    assert memory_texts(data / "memory.db") == ["the first thing", "the second thing", "a third thing"]
    assert {i.seq for i in snapshots.list_snapshots(data / "snapshots")} == {2, 3}


def test_a_link_named_like_a_backup_is_neither_listed_nor_restored(setup, tmp_path):
    config, data = setup
    real = backups.take_backup(data / "memory.db", data / "backups", kind="manual")
    outside = backups.take_backup(data / "memory.db", tmp_path / "elsewhere", kind="manual")
    asyncio.run(remember(data / "memory.db", "after the backups"))
    link = data / "backups" / "memory-20990101T000000Z-nightly.db"
    link.symlink_to(outside.path)
    Path(f"{link}.json").symlink_to(f"{outside.path}.json")
    skipped = f"ignoring {link.name} in the backups folder: it is not a regular file (a link?)"

    listed = run_bot_py("backup", "list", "--config", str(config))
    assert listed.returncode == 0 and real.name in listed.stdout and link.name not in listed.stdout
    assert [line for line in listed.stderr.splitlines() if "ignoring" in line] == [listed.stderr.strip()]
    assert listed.stderr.strip().endswith(skipped)

    restored = run_bot_py("backup", "restore", link.name, "--config", str(config))
    assert restored.returncode == 1 and restored.stdout == ""
    assert [line for line in restored.stderr.splitlines() if line.startswith("error:")] == [
        f"error: No backup named {link.name}. See `bot.py backup list`."
    ]
    assert len(memory_texts(data / "memory.db")) == 3
    assert [b.name for b in backups.list_backups(data / "backups")] == [real.name]  # no safety backup either
