"""Backups: consistent hot copies, verification, pruning, disk-full, restore and crashes during it."""

import asyncio
import json
import logging
import os
import random
import signal
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage import backups, sqlite
from storage.backups import BackupError, InvalidBackup, UnknownBackup
from storage.commands import TurnRecord, write_memory
from storage.database import Database
from storage.rebuild import stale_projections
from storage.schema import LATEST_VERSION
from storage.scope import Scope
from tests.projection_check import live_and_rebuilt

REPO = Path(__file__).resolve().parent.parent
SCOPE = Scope.for_guild(1000, 10)
T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


async def fill(db: Database, count: int, *, text: str = "a turn worth remembering", size: int = 0) -> list[int]:
    padding = " " + "x" * size if size else ""
    return [
        await write_memory(db, TurnRecord(SCOPE, 5, 7, "alice", "Mnemo", f"{text} {i}{padding}", "noted"))
        for i in range(count)
    ]


def count_memories(path: Path) -> int:
    conn = sqlite.connect(path, query_only=True)
    try:
        return conn.execute("SELECT count(*) FROM memories").fetchone()[0]
    finally:
        conn.close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-") or p.suffix in ("-wal", "-shm"))


async def test_a_backup_is_one_verified_file_named_by_time_and_kind(db, tmp_path):
    await fill(db, 5)
    backups_dir = tmp_path / "backups"
    info = await asyncio.to_thread(backups.take_backup, db.path, backups_dir, kind="nightly", now=T0)
    assert info.name == "memory-20260301T030000Z-nightly.db"
    assert sorted(p.name for p in backups_dir.iterdir()) == [info.name, f"{info.name}.json"]
    # A rollback-journal database: one self-contained file.
    assert info.path.read_bytes()[18:20] == b"\x01\x01"
    sidecar = json.loads((backups_dir / f"{info.name}.json").read_text())
    assert (sidecar["last_event_id"], sidecar["schema_version"], sidecar["size_bytes"]) == (
        5,
        LATEST_VERSION,
        info.size_bytes,
    )
    [listed] = backups.list_backups(backups_dir)
    assert (listed.kind, listed.taken_at, listed.last_event_id, listed.verified) == ("nightly", T0, 5, True)
    check = backups.verify_backup(info.path)
    assert (check.last_event_id, check.checksum_checked) == (5, True)
    # Verifying reads the file without changing a byte or leaving -wal/-shm files.
    before = info.path.read_bytes()
    backups.verify_backup(info.path)
    assert info.path.read_bytes() == before
    assert sorted(p.name for p in backups_dir.iterdir()) == [info.name, f"{info.name}.json"]


async def test_two_backups_in_the_same_second_get_distinct_names(db, tmp_path):
    await fill(db, 1)
    first = backups.take_backup(db.path, tmp_path / "b", kind="manual", now=T0)
    second = backups.take_backup(db.path, tmp_path / "b", kind="manual", now=T0)
    assert (first.name, second.name) == ("memory-20260301T030000Z-manual.db", "memory-20260301T030000Z-manual-2.db")
    assert [b.name for b in backups.list_backups(tmp_path / "b")] == [first.name, second.name]


async def test_backup_under_concurrent_writes_is_consistent_and_verified(db, tmp_path):
    await fill(db, 200, size=2000)
    stop = asyncio.Event()
    written: list[int] = []

    async def keep_writing() -> None:
        while not stop.is_set():
            written.extend(await fill(db, 1, text="written during the backup"))

    writer = asyncio.create_task(keep_writing())
    await asyncio.sleep(0.05)
    try:
        before = len(written)
        info = await asyncio.to_thread(backups.take_backup, db.path, tmp_path / "backups", kind="manual")
        during = len(written) - before
    finally:
        stop.set()
        await writer
    assert during > 0, "turns were blocked while the backup ran"
    check = backups.verify_backup(info.path)
    assert 200 <= check.last_event_id < 200 + len(written)
    # The copy is one consistent moment: its projections are exactly its log replayed.
    live, rebuilt = live_and_rebuilt(info.path, tmp_path)
    assert live == rebuilt and live["last_seq"] == check.last_event_id


def corrupt_flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0:16] = bytes(b ^ 0xFF for b in data[0:16])
    path.write_bytes(bytes(data))


def corrupt_flip_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def corrupt_flip_btree_header(path: Path) -> None:
    # Page 2's b-tree header: structural damage that SQLite itself notices.
    data = bytearray(path.read_bytes())
    data[4096 : 4096 + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


def corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


def corrupt_not_a_database(path: Path) -> None:
    path.write_bytes(b"this is a grocery list, not a database\n" * 500)


def drop_sidecar(path: Path) -> None:
    Path(f"{path}.json").unlink()


CORRUPTIONS = {
    "flipped-header-bytes": corrupt_flip_header,
    "flipped-page-bytes": corrupt_flip_page,
    "flipped-btree-header": corrupt_flip_btree_header,
    "truncated": corrupt_truncate,
    "empty": corrupt_empty,
    "not-a-database": corrupt_not_a_database,
}


# Bytes flipped inside a text value pass SQLite's own checks: only the checksum catches those.
VERIFY_CASES = [(name, True) for name in CORRUPTIONS] + [
    (name, False) for name in CORRUPTIONS if name != "flipped-page-bytes"
]


@pytest.mark.parametrize(
    ("corruption", "with_sidecar"),
    VERIFY_CASES,
    ids=[f"{name}-{'with' if sidecar else 'without'}-checksum" for name, sidecar in VERIFY_CASES],
)
async def test_verify_rejects_corrupt_backups(db, tmp_path, corruption, with_sidecar):
    await fill(db, 60, size=200)
    info = backups.take_backup(db.path, tmp_path / "backups", kind="manual")
    if not with_sidecar:
        drop_sidecar(info.path)
    CORRUPTIONS[corruption](info.path)
    with pytest.raises(InvalidBackup):
        backups.verify_backup(info.path)


async def test_verify_rejects_a_database_of_something_else(tmp_path):
    other = tmp_path / "other.db"
    conn = sqlite.connect(other)
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    with pytest.raises(InvalidBackup, match="not a database of this bot"):
        backups.verify_file(other)
    with pytest.raises(InvalidBackup, match="does not exist"):
        backups.verify_backup(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


async def test_a_failed_backup_keeps_the_previous_ones_and_leaves_no_temp_file(db, tmp_path, monkeypatch):
    await fill(db, 10)
    backups_dir = tmp_path / "backups"
    good = [backups.take_backup(db.path, backups_dir, kind="nightly", now=T0 + timedelta(days=d)) for d in range(3)]
    before = {p.name: p.read_bytes() for p in backups_dir.iterdir()}

    def broken_verify(path: Path) -> backups.BackupCheck:
        raise InvalidBackup(f"{path.name} failed the integrity check: simulated")

    monkeypatch.setattr(backups, "verify_file", broken_verify)
    with pytest.raises(BackupError):
        backups.take_backup(db.path, backups_dir, kind="nightly", now=T0 + timedelta(days=3), keep=2)
    assert {p.name: p.read_bytes() for p in backups_dir.iterdir()} == before
    assert [b.name for b in backups.list_backups(backups_dir)] == [b.name for b in good]


async def test_disk_full_during_a_backup_keeps_the_previous_ones(db, tmp_path):
    await fill(db, 300, size=3000)
    backups_dir = tmp_path / "backups"
    previous = backups.take_backup(db.path, backups_dir, kind="nightly", now=T0)
    before = {p.name: p.read_bytes() for p in backups_dir.iterdir()}
    limit_bytes = 256 * 1024
    assert db.path.stat().st_size > 2 * limit_bytes
    # A child process whose files may not grow past the limit: writes then
    # fail with EFBIG (SIGXFSZ ignored), like a full disk.
    child = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from storage.backups import BackupError, take_backup
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))
        try:
            take_backup(Path({str(db.path)!r}), Path({str(backups_dir)!r}), kind="nightly", keep=1)
        except BackupError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", child, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 3, stderr.decode()
    assert "backup failed" in stdout.decode()
    assert {p.name: p.read_bytes() for p in backups_dir.iterdir()} == before
    assert backups.verify_backup(previous.path).last_event_id == 300


async def test_each_kind_is_pruned_to_keep_on_its_own(db, tmp_path):
    await fill(db, 2)
    backups_dir = tmp_path / "backups"
    manual = backups.take_backup(db.path, backups_dir, kind="manual", now=T0 - timedelta(days=30), keep=2)
    for day in range(5):
        backups.take_backup(db.path, backups_dir, kind="nightly", now=T0 + timedelta(days=day), keep=3)
    names = [b.name for b in backups.list_backups(backups_dir)]
    assert names == [
        manual.name,
        "memory-20260303T030000Z-nightly.db",
        "memory-20260304T030000Z-nightly.db",
        "memory-20260305T030000Z-nightly.db",
    ]
    assert sorted(p.name for p in backups_dir.glob("*.json")) == sorted(f"{n}.json" for n in names)


async def test_restore_into_brings_back_the_backup_while_other_connections_stay_open(db, tmp_path):
    await fill(db, 3)
    info = backups.take_backup(db.path, tmp_path / "backups", kind="manual")
    await fill(db, 4, text="after the backup")
    assert count_memories(db.path) == 7
    await db.run_exclusively(lambda: backups.restore_into(info.path, db.path, tmp_path / "snapshots"))
    async with db.reader.execute("SELECT count(*) FROM memories") as cursor:
        assert (await cursor.fetchone())[0] == 3
    # The live database is still WAL, and new writes carry on after the restored log, numbered
    # past every id the replaced database had shown (#4 to #7 were seen and are gone).
    [new_id] = await fill(db, 1, text="after the restore")
    assert new_id == 8
    conn = sqlite.connect(db.path, query_only=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stale_projections(conn) is None
    conn.close()


CRASH_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from storage.backups import restore_into
print("copying", flush=True)
restore_into(Path({backup!r}), Path({live!r}))
print("done", flush=True)
"""


async def crash_restores(tmp_path: Path, rounds: int) -> set[int]:
    """Kill a restoring process at random moments; return the states the database was found in."""
    db = await Database.open(tmp_path / "pristine" / "memory.db")
    await fill(db, 300, size=3000)
    info = backups.take_backup(db.path, tmp_path / "backups", kind="manual")
    await fill(db, 300, size=3000)
    await db.close()
    pristine = backups.take_backup(tmp_path / "pristine" / "memory.db", tmp_path / "pristine-copy", kind="manual")
    seen: set[int] = set()
    rng = random.Random(1234)
    for _ in range(rounds):
        live_dir = tmp_path / "live"
        for path in live_dir.glob("*"):
            path.unlink()
        live_dir.mkdir(exist_ok=True)
        live = live_dir / "memory.db"
        live.write_bytes(pristine.path.read_bytes())
        code = CRASH_CHILD.format(repo=str(REPO), backup=str(info.path), live=str(live))
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        await process.stdout.readline()
        await asyncio.sleep(rng.uniform(0, 0.08))
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        conn = sqlite.connect(live)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert stale_projections(conn) is None
            seen.add(conn.execute("SELECT count(*) FROM memories").fetchone()[0])
        finally:
            conn.close()
    assert seen <= {300, 600}, f"a crash left a half-restored database: {seen}"
    return seen


async def test_a_crash_during_restore_leaves_the_old_or_the_restored_database(tmp_path):
    assert await crash_restores(tmp_path, rounds=4)


@pytest.mark.soak
async def test_many_crashes_during_restore_never_leave_a_mix(tmp_path):
    seen = await crash_restores(tmp_path, rounds=60)
    assert seen == {300, 600}, "the kills never landed on both sides of the commit"


def test_names_parse_and_sort_by_time():
    assert backups.parse_name("memory-20261129T030000Z-pre-restore-3.db") == (
        "pre-restore",
        datetime(2026, 11, 29, 3, tzinfo=UTC),
        3,
    )
    assert backups.parse_name("memory-20261129T030000Z-weekly.db") is None
    assert backups.parse_name("notes.txt") is None
    assert os.path.basename(backups.backup_name("nightly", T0)) == "memory-20260301T030000Z-nightly.db"


async def test_a_restore_says_whether_it_failed_before_or_after_the_copy(db, tmp_path, monkeypatch):
    await fill(db, 3)
    info = backups.take_backup(db.path, tmp_path / "backups", kind="manual")
    await fill(db, 2, text="after the backup")

    def broken(*args):
        raise sqlite.OperationalError("database or disk is full")

    with monkeypatch.context() as patched:
        patched.setattr(backups, "attached", broken)
        with pytest.raises(BackupError, match=r"restore failed: .*; the database is unchanged"):
            await db.run_exclusively(lambda: backups.restore_into(info.path, db.path))
    assert count_memories(db.path) == 5

    with monkeypatch.context() as patched:
        patched.setattr(backups, "ensure_projections", broken)
        with pytest.raises(BackupError, match="copied the backup in, but could not finish"):
            await db.run_exclusively(lambda: backups.restore_into(info.path, db.path))
    assert count_memories(db.path) == 3


async def test_only_regular_files_are_backups(db, tmp_path, caplog):
    await fill(db, 3)
    backups_dir = tmp_path / "backups"
    real = backups.take_backup(db.path, backups_dir, kind="manual", now=T0)
    # A sound backup kept elsewhere, linked in under a backup's name with its sidecar; and a pipe.
    outside = backups.take_backup(db.path, tmp_path / "elsewhere", kind="manual", now=T0)
    link = backups_dir / "memory-20260302T030000Z-nightly.db"
    os.symlink(outside.path, link)
    os.symlink(f"{outside.path}.json", f"{link}.json")
    os.mkfifo(backups_dir / "memory-20260303T030000Z-nightly.db")
    await fill(db, 2, text="after the backups")

    with caplog.at_level(logging.WARNING, logger="storage"):
        assert [b.name for b in backups.list_backups(backups_dir)] == [real.name]
        assert backups.newest_backup(backups_dir).name == real.name  # though the link's name is newer
        with pytest.raises(UnknownBackup):
            backups.find_backup(backups_dir, link.name)
    # Each is named once, however often the folder is listed.
    skipped = [r.getMessage() for r in caplog.records if r.name == "storage.files"]
    assert sorted(skipped) == [
        f"ignoring {name} in the backups folder: it is not a regular file (a link?)"
        for name in ("memory-20260302T030000Z-nightly.db", "memory-20260303T030000Z-nightly.db")
    ]
    # Restoring from the link's path itself (say it replaced the file after it was listed) is refused too.
    with pytest.raises(InvalidBackup, match="not a regular file"):
        await db.run_exclusively(lambda: backups.restore_into(link, db.path))
    assert count_memories(db.path) == 5
    # Pruning leaves what is not the bot's alone.
    backups.prune_backups(backups_dir, kind="nightly", keep=0)
    assert link.is_symlink() and outside.path.exists()
