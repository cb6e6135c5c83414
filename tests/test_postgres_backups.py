"""PostgreSQL backups: pg_dump archives beside SQLite's backups, verified by a scratch restore,
pruned per kind and suffix, restored in one transaction with the numbering continued."""

import asyncio
import json
import logging
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from storage import backups
from storage.backups import BackupError, BackupInfo, InvalidBackup, UnknownBackup
from storage.commands import TurnRecord
from storage.postgres import backups as pg_backups
from storage.postgres import schema
from storage.postgres.backups import PgTools, find_pg_tools
from storage.postgres.store import PostgresStore
from storage.scope import Scope

SCOPE = Scope.for_guild(1000, 10)
T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def tools(postgres_cluster) -> PgTools:
    return find_pg_tools(postgres_cluster.admin_dsn)


async def write(dsn: str, *texts: str) -> list[int]:
    store = await PostgresStore.open(dsn, max_size=1)
    try:
        return [await store.write_turn(TurnRecord(SCOPE, 5, 7, "alice", "Mnemo", text, "noted")) for text in texts]
    finally:
        await store.close()


async def fetch(dsn: str, sql: str) -> list:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def remembered(dsn: str) -> list[tuple[int, str]]:
    return await fetch(dsn, "SELECT id, user_text FROM memories ORDER BY id")


async def scratch_databases(dsn: str) -> list[str]:
    """Verification's scratch databases on the server: none once it is over."""
    rows = await fetch(dsn, f"SELECT datname FROM pg_database WHERE datname LIKE '{pg_backups.SCRATCH_PREFIX}%'")
    return [name for (name,) in rows]


async def take(dsn: str, folder: Path, tools: PgTools | None, *, kind: str = "nightly", **kwargs) -> BackupInfo:
    # In a thread, as the bot runs it: it runs event loops of its own.
    return await asyncio.to_thread(pg_backups.take_backup, dsn, folder, kind=kind, tools=tools, **kwargs)


async def test_a_backup_is_a_verified_dump_named_by_time_and_kind_with_its_sidecar(postgres_dsn, tmp_path):
    await write(postgres_dsn, "my cat is called Miso", "I moved to Lyon", "I play the cello")
    folder = tmp_path / "backups"
    info = await take(postgres_dsn, folder, None, now=T0)  # the tools found for the server
    assert info.name == "memory-20260301T030000Z-nightly.pgdump"
    assert sorted(p.name for p in folder.iterdir()) == [info.name, f"{info.name}.json"]
    assert info.path.read_bytes()[:5] == b"PGDMP"
    sidecar = json.loads((folder / f"{info.name}.json").read_text())
    assert sidecar == {
        "format": 1,
        "name": info.name,
        "kind": "nightly",
        "taken_at": "2026-03-01T03:00:00+00:00",
        "last_event_id": 3,
        "schema_version": schema.LATEST_VERSION,
        "size_bytes": info.path.stat().st_size,
        "sha256": backups.file_digest(info.path),
        "backend": "postgresql",
        "pg_dump_version": sidecar["pg_dump_version"],
    }
    assert sidecar["pg_dump_version"].split(".")[0].isdigit()

    [listed] = pg_backups.list_backups(folder)
    assert (listed.name, listed.kind, listed.last_event_id, listed.verified) == (info.name, "nightly", 3, True)
    assert pg_backups.find_backup(folder, info.name.removesuffix(".pgdump")) == listed
    assert pg_backups.newest_backup(folder, "nightly") == listed
    assert backups.list_backups(folder) == []  # SQLite's listing sees only `.db` files
    with pytest.raises(UnknownBackup):
        backups.find_backup(folder, info.name)

    check = await asyncio.to_thread(pg_backups.verify_backup, info.path, postgres_dsn)
    assert (check.schema_version, check.last_event_id, check.checksum_checked) == (schema.LATEST_VERSION, 3, True)
    assert await scratch_databases(postgres_dsn) == []


async def test_retention_keeps_each_kind_on_its_own_and_never_touches_sqlite_backups(postgres_dsn, tmp_path, tools):
    await write(postgres_dsn, "one turn")
    folder = tmp_path / "backups"
    folder.mkdir()
    # An SQLite backup of the same kind and second: its own suffix, numbering and rotation.
    sqlite_name = "memory-20260301T030000Z-nightly.db"
    (folder / sqlite_name).write_bytes(b"SQLite format 3\x00")
    (folder / f"{sqlite_name}.json").write_text("{}")

    manual = await take(postgres_dsn, folder, tools, kind="manual", now=T0)
    nightly = [await take(postgres_dsn, folder, tools, now=T0 + timedelta(days=d), keep=2) for d in range(3)]
    again = await take(postgres_dsn, folder, tools, kind="manual", now=T0)
    assert again.name == "memory-20260301T030000Z-manual-2.pgdump"  # the same second: a serial

    names = [b.name for b in pg_backups.list_backups(folder)]
    assert names == [manual.name, again.name, nightly[1].name, nightly[2].name]
    assert [b.name for b in backups.list_backups(folder)] == [sqlite_name]

    assert pg_backups.prune_backups(folder, kind="nightly", keep=0) == [nightly[1].name, nightly[2].name]
    assert pg_backups.prune_backups(folder, kind="manual", keep=1, protect={manual.name}) == []
    kept = [sqlite_name, manual.name, again.name]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*kept, *(f"{name}.json" for name in kept)])


async def test_a_corrupted_or_truncated_dump_fails_verification_and_leaves_no_scratch_database(
    postgres_dsn, tmp_path, tools
):
    await write(postgres_dsn, "something to keep", "and more")
    info = await take(postgres_dsn, tmp_path / "backups", tools)
    data = info.path.read_bytes()

    def verify(path: Path):
        return asyncio.to_thread(pg_backups.verify_backup, path, postgres_dsn, tools)

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    info.path.write_bytes(bytes(flipped))
    with pytest.raises(InvalidBackup, match="changed since it was taken"):
        await verify(info.path)

    # Without its sidecar only the restore can tell: a dump cut short in its data.
    (tmp_path / "backups" / f"{info.name}.json").unlink()
    info.path.write_bytes(data[:-10])
    with pytest.raises(InvalidBackup, match=r"does not restore: .*end of file"):
        await verify(info.path)
    info.path.write_bytes(data[:200])  # cut in its table of contents
    with pytest.raises(InvalidBackup, match=r"cannot be read: .*end of file"):
        await verify(info.path)
    info.path.write_bytes(b"SQLite format 3\x00" + bytes(100))
    with pytest.raises(InvalidBackup, match="is not a pg_dump archive"):
        await verify(info.path)
    info.path.write_bytes(data)
    assert (await verify(info.path)).checksum_checked is False
    assert await scratch_databases(postgres_dsn) == []


async def test_restore_brings_back_the_backup_and_ids_continue_past_the_highest_reached(postgres_dsn, tmp_path, tools):
    kept = await write(postgres_dsn, "my cat is called Miso", "I moved to Lyon")
    store = await PostgresStore.open(postgres_dsn, max_size=1)
    try:
        # A claim in the dump, one made after it: neither is work anyone is doing once restored.
        assert await store.claim_unscored("scorer-a", limit=1, lease_seconds=600) == kept[:1]
        info = await take(postgres_dsn, tmp_path / "backups", tools)
        assert await store.claim_unscored("scorer-b", limit=1, lease_seconds=600) == kept[1:]
    finally:
        await store.close()
    later = await write(postgres_dsn, "I adopted a dog", "the dog is called Pixel")
    assert later == [3, 4]

    await asyncio.to_thread(pg_backups.restore_into, info.path, postgres_dsn, tools)

    assert await remembered(postgres_dsn) == [(1, "my cat is called Miso"), (2, "I moved to Lyon")]
    assert await fetch(postgres_dsn, "SELECT * FROM scoring_claims") == []
    # #3 and #4 were seen before the restore: a new memory must not take their numbers.
    assert await write(postgres_dsn, "a new turn") == [5]
    # Restoring again onto the now-higher numbering keeps going up, never back.
    await asyncio.to_thread(pg_backups.restore_into, info.path, postgres_dsn, tools)
    assert await write(postgres_dsn, "another turn") == [6]
    assert await remembered(postgres_dsn) == [(1, "my cat is called Miso"), (2, "I moved to Lyon"), (6, "another turn")]


async def test_an_older_dump_is_migrated_after_the_restore(postgres_dsn, tmp_path, tools):
    await write(postgres_dsn, "from the old days")
    conn = await asyncpg.connect(postgres_dsn)
    try:  # make the database look like one of schema version 1
        await conn.execute("DELETE FROM schema_migrations WHERE version > 1; DROP TABLE scoring_claims")
    finally:
        await conn.close()
    old = await take(postgres_dsn, tmp_path / "backups", tools)
    assert old.schema_version == 1
    await write(postgres_dsn, "after the upgrade")  # opening migrates the live database to the latest

    await asyncio.to_thread(pg_backups.restore_into, old.path, postgres_dsn, tools)

    assert await remembered(postgres_dsn) == [(1, "from the old days")]
    assert await fetch(postgres_dsn, "SELECT max(version) FROM schema_migrations") == [(schema.LATEST_VERSION,)]
    assert await fetch(postgres_dsn, "SELECT count(*) FROM scoring_claims") == [(0,)]
    assert await write(postgres_dsn, "and now") == [3]


async def test_a_failing_restore_leaves_the_live_database_unchanged(postgres_dsn, tmp_path, tools):
    await write(postgres_dsn, "kept one")
    info = await take(postgres_dsn, tmp_path / "backups", tools)
    await write(postgres_dsn, "kept two")
    before = await remembered(postgres_dsn)

    # Cut short in its data: pg_restore has dropped and recreated every table when it fails.
    broken = tmp_path / "broken.pgdump"
    broken.write_bytes(info.path.read_bytes()[:-10])
    with pytest.raises(BackupError, match=r"restore failed \(.*end of file\); the database is unchanged"):
        await asyncio.to_thread(pg_backups.restore_into, broken, postgres_dsn, tools)
    garbage = tmp_path / "garbage.pgdump"
    garbage.write_bytes(b"PGDMP" + os.urandom(2000))
    with pytest.raises(InvalidBackup, match="cannot be read"):
        await asyncio.to_thread(pg_backups.restore_into, garbage, postgres_dsn, tools)

    assert await remembered(postgres_dsn) == before
    assert await write(postgres_dsn, "kept three") == [3]


async def test_the_password_reaches_the_tools_through_the_environment_only(
    postgres_dsn, tmp_path, tools, monkeypatch, caplog
):
    await write(postgres_dsn, "a secret of its own")
    # The throwaway cluster trusts every local connection, so any password will do.
    dsn = postgres_dsn.replace("postgres@", "postgres:hunter%402@", 1)
    calls: list[tuple[list[str], dict]] = []
    real_run = subprocess.run

    def spy(command, **kwargs):
        calls.append((command, kwargs.get("env") or {}))
        return real_run(command, **kwargs)

    monkeypatch.setattr(pg_backups.subprocess, "run", spy)
    caplog.set_level(logging.DEBUG)
    info = await take(dsn, tmp_path / "backups", tools)
    await asyncio.to_thread(pg_backups.restore_into, info.path, dsn, tools)

    connecting = [(command, env) for command, env in calls if any(a.startswith("--dbname=") for a in command)]
    assert len(connecting) == 3  # the dump, its scratch restore, the restore
    for command, env in connecting:
        assert not any("hunter" in arg for arg in command)
        assert env["PGPASSWORD"] == "hunter@2"
    assert "hunter" not in caplog.text


def fake_tool(folder: Path, version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pg_dump", "pg_restore"):
        path = folder / name
        path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        path.chmod(0o755)


def test_the_tools_are_chosen_by_the_server_major_version(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    for major in ("14", "16", "17"):
        fake_tool(root / major / "bin", f"{major}.2")
    on_path = tmp_path / "bin"
    fake_tool(on_path, "18.1")
    monkeypatch.setattr(pg_backups, "CLIENT_ROOT", root)
    monkeypatch.setenv("PATH", str(on_path))

    assert find_pg_tools(160004) == PgTools(root / "16/bin/pg_dump", root / "16/bin/pg_restore", "16.2")
    assert find_pg_tools(15).version == "17.2"  # no 15: the newest later one
    assert find_pg_tools(18).pg_dump == on_path / "pg_dump"  # none of its own: PATH
    with pytest.raises(BackupError, match=r"pg_dump 18\.1 .* cannot dump a PostgreSQL 19 server.*postgresql-client-19"):
        find_pg_tools(19)


async def test_missing_tools_give_a_readable_error_and_leave_nothing(postgres_dsn, tmp_path, monkeypatch):
    monkeypatch.setattr(pg_backups, "CLIENT_ROOT", tmp_path / "nowhere")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    major = int((await fetch(postgres_dsn, "SHOW server_version_num"))[0][0]) // 10000
    message = rf"^pg_dump not found; install PostgreSQL's client programs \(Debian: postgresql-client-{major}\)$"
    with pytest.raises(BackupError, match=message):
        await take(postgres_dsn, tmp_path / "backups", None)
    assert not (tmp_path / "backups").exists() or list((tmp_path / "backups").iterdir()) == []
