"""Snapshots: snapshot plus tail equals a full replay, they honour forgets, and unfit ones are never used."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage import backups, snapshots, sqlite
from storage.commands import (
    TurnRecord,
    forget_memory,
    pin_memory,
    record_scoring_failure,
    record_significance,
    unpin_memory,
    write_memory,
)
from storage.database import Database
from storage.rebuild import rebuild_projections, rebuild_with_snapshots, stale_projections
from storage.scope import Scope
from tests.projection_check import projection_state

SCOPE_A = Scope.for_guild(1000, 10)
SCOPE_B = Scope.for_guild(1000, 20)
DM = Scope.for_dm(1000, 7)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def remember(db: Database, scope: Scope, text: str) -> int:
    return await write_memory(db, TurnRecord(scope, 5, 7, "alice", "Mnemo", text, f"reply to {text}"))


async def mixed_history(db: Database, start: int, count: int) -> list[int]:
    """Writes in three scopes, scores, pivotal auto-pins over the cap, manual pins, failures, forgets."""
    written: list[tuple[int, Scope]] = []
    for i in range(start, start + count):
        scope = (SCOPE_A, SCOPE_B, DM)[i % 3]
        memory_id = await remember(db, scope, f"memory number {i} about topic{i % 5}")
        written.append((memory_id, scope))
        if i % 4 == 0:
            await record_significance(db, memory_id, 3, model="m", pin_cap=2)
        elif i % 4 == 1:
            await record_significance(db, memory_id, i % 3, model="m", pin_cap=2)
        elif i % 7 == 0:
            await record_scoring_failure(db, memory_id, "no answer")
        if i % 6 == 2:
            await pin_memory(db, scope, memory_id, actor_id=7, pin_cap=2)
        if i % 9 == 5:
            await unpin_memory(db, *reversed(written[len(written) // 2]), actor_id=7)
        if i % 8 == 3 and len(written) >= 2:
            forgotten_id, forgotten_scope = written.pop(-2)
            await forget_memory(db, forgotten_scope, forgotten_id, actor_id=7)
    return [memory_id for memory_id, _ in written]


def state_of(path: Path) -> dict:
    conn = sqlite.connect(path)
    try:
        return projection_state(conn)
    finally:
        conn.close()


def snapshot_files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


async def test_snapshot_plus_tail_equals_full_replay(db, tmp_path):
    snapshots_dir = tmp_path / "snapshots"
    await mixed_history(db, 0, 40)
    info = await asyncio.to_thread(snapshots.write_snapshot, db.path, snapshots_dir, kind="periodic", now=T0)
    await mixed_history(db, 40, 40)
    live = state_of(db.path)

    from_snapshot = rebuild_projections(db.path, snapshots_dir)
    assert from_snapshot.snapshot == info.name
    assert from_snapshot.events < from_snapshot.last_seq  # only the tail was replayed
    assert state_of(db.path) == live

    full = rebuild_projections(db.path, snapshots_dir, full=True)
    assert full.snapshot is None and full.events == full.last_seq
    assert state_of(db.path) == live


async def test_forgetting_leaves_no_byte_of_the_text_in_any_snapshot(db, tmp_path):
    snapshots_dir = tmp_path / "snapshots"
    secret = "quixotic-marmalade-lighthouse"
    keep_id = await remember(db, SCOPE_A, "an ordinary memory")
    secret_id = await remember(db, SCOPE_A, f"my secret is {secret}")
    other_id = await remember(db, SCOPE_B, "elsewhere, a memory that stays")
    for i, kind in enumerate(("periodic", "periodic", "manual", "pre-restore")):
        await remember(db, SCOPE_A, f"filler {i}")
        snapshots.write_snapshot(db.path, snapshots_dir, kind=kind, now=T0 + timedelta(minutes=i))

    await forget_memory(db, SCOPE_A, secret_id, actor_id=7)
    assert snapshots.scrub_memory(snapshots_dir, secret_id) == 4
    assert snapshots.scrub_memory(snapshots_dir, secret_id) == 0  # nothing left to do

    for path in snapshot_files(snapshots_dir):
        assert not path.name.endswith(("-journal", "-wal", "-shm"))
        assert secret.encode() not in path.read_bytes(), path.name
    for info in snapshots.list_snapshots(snapshots_dir):
        assert info.scrubbed == (secret_id,)
    # The scrubbed snapshots still fit the log, and still rebuild to the same state.
    live = state_of(db.path)
    report = rebuild_projections(db.path, snapshots_dir)
    assert report.snapshot is not None
    assert state_of(db.path) == live
    assert {row[0] for row in live["memories"]} >= {keep_id, other_id}


async def test_a_forget_racing_a_snapshot_is_scrubbed_before_the_file_is_published(db, tmp_path, monkeypatch):
    snapshots_dir = tmp_path / "snapshots"
    secret = "velociraptor-teaspoon"
    secret_id = await remember(db, SCOPE_A, f"remember {secret}")
    loop = asyncio.get_running_loop()
    copy = snapshots._copy_projections

    def copy_then_forget(*args, **kwargs):
        seq = copy(*args, **kwargs)
        # The forget commits after the rows were read, and its scrub finds no file yet.
        asyncio.run_coroutine_threadsafe(forget_memory(db, SCOPE_A, secret_id, actor_id=7), loop).result()
        assert snapshots.scrub_memory(snapshots_dir, secret_id) == 0
        return seq

    monkeypatch.setattr(snapshots, "_copy_projections", copy_then_forget)
    info = await asyncio.to_thread(snapshots.write_snapshot, db.path, snapshots_dir, kind="periodic")
    assert secret.encode() not in info.path.read_bytes()
    assert info.memories == 0 and info.scrubbed == (secret_id,)


async def test_start_up_sweep_scrubs_memories_forgotten_before_a_crash(db, tmp_path):
    snapshots_dir = tmp_path / "snapshots"
    secret_id = await remember(db, SCOPE_A, "the crash ate my scrub: pomegranate")
    snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic")
    await forget_memory(db, SCOPE_A, secret_id, actor_id=7)  # and no scrub_memory: a crash
    assert snapshots.scrub_forgotten(db.path, snapshots_dir) == 1
    assert all(b"pomegranate" not in p.read_bytes() for p in snapshot_files(snapshots_dir))


async def test_snapshots_that_do_not_fit_the_log_are_never_used(db, tmp_path, caplog):
    snapshots_dir = tmp_path / "snapshots"
    await mixed_history(db, 0, 12)
    info = backups.take_backup(db.path, tmp_path / "backups", kind="manual")
    await mixed_history(db, 12, 12)
    ahead = snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic", now=T0)
    # Restoring the older backup starts another timeline: the snapshot is past its end...
    await db.run_exclusively(lambda: backups.restore_into(info.path, db.path))
    conn = sqlite.connect(db.path)
    assert "past the end of the log" in snapshots.unusable_reason(conn, ahead)
    # ...and stays unfit once the new timeline grows past it (other events at that seq).
    conn.close()
    await mixed_history(db, 100, 14)
    conn = sqlite.connect(db.path)
    try:
        assert "is not the one the snapshot was taken at" in snapshots.unusable_reason(conn, ahead)
        live = projection_state(conn)
        with caplog.at_level(logging.INFO, logger="storage"):
            report = rebuild_with_snapshots(conn, snapshots_dir)
        assert report.snapshot is None
        assert projection_state(conn) == live
    finally:
        conn.close()


async def test_a_snapshot_missing_a_memory_this_log_still_has_is_not_used(db, tmp_path):
    snapshots_dir = tmp_path / "snapshots"
    memory_id = await remember(db, SCOPE_A, "forgotten later, then restored")
    info = backups.take_backup(db.path, tmp_path / "backups", kind="manual")
    snapshot = snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic")
    await forget_memory(db, SCOPE_A, memory_id, actor_id=7)
    snapshots.scrub_memory(snapshots_dir, memory_id)
    # The backup from before the forget brings the memory back: the scrubbed snapshot no longer fits.
    await db.run_exclusively(lambda: backups.restore_into(info.path, db.path))
    conn = sqlite.connect(db.path)
    try:
        [scrubbed] = [i for i in snapshots.list_snapshots(snapshots_dir) if i.name == snapshot.name]
        assert "not forgotten in this log" in snapshots.unusable_reason(conn, scrubbed)
    finally:
        conn.close()


async def test_a_damaged_snapshot_falls_back_to_an_older_one(db, tmp_path):
    snapshots_dir = tmp_path / "snapshots"
    await mixed_history(db, 0, 10)
    older = snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic", now=T0)
    await mixed_history(db, 10, 10)
    newer = snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic", now=T0 + timedelta(hours=1))
    data = bytearray(newer.path.read_bytes())
    data[-4096:-4000] = b"\xff" * 96
    newer.path.write_bytes(bytes(data))
    live = state_of(db.path)
    report = rebuild_projections(db.path, snapshots_dir)
    assert report.snapshot == older.name
    assert state_of(db.path) == live


async def test_start_up_rebuilds_stale_projections_from_snapshot_plus_tail(tmp_path, caplog):
    path = tmp_path / "memory.db"
    snapshots_dir = tmp_path / "snapshots"
    db = await Database.open(path, snapshots_dir=snapshots_dir)
    await mixed_history(db, 0, 20)
    snapshots.write_snapshot(path, snapshots_dir, kind="periodic")
    await mixed_history(db, 20, 10)
    live = state_of(path)
    # Projections behind the log, as if written by a bot that lost them.
    async with db.transaction() as tx:
        await tx.execute("UPDATE projection_state SET last_seq = 3")
        await tx.execute("DELETE FROM memories WHERE id > 3")
    await db.close()
    conn = sqlite.connect(path)
    assert "the log ends at" in stale_projections(conn)
    conn.close()

    with caplog.at_level(logging.INFO, logger="storage.rebuild"):
        db = await Database.open(path, snapshots_dir=snapshots_dir)
    await db.close()
    assert "rebuilt projections from snapshot" in caplog.text
    assert state_of(path) == live


async def test_projections_of_another_version_are_rebuilt_at_start(tmp_path):
    path = tmp_path / "memory.db"
    db = await Database.open(path)
    await mixed_history(db, 0, 6)
    live = state_of(path)
    async with db.transaction() as tx:
        await tx.execute("DROP INDEX memories_unscored")
        await tx.execute("CREATE INDEX memories_unscored ON memories (id, significance)")
    await db.close()
    db = await Database.open(path, snapshots_dir=tmp_path / "snapshots")
    await db.close()
    conn = sqlite.connect(path)
    try:
        assert stale_projections(conn) is None
        assert projection_state(conn) == live
    finally:
        conn.close()


async def test_each_kind_of_snapshot_is_pruned_to_keep(db, tmp_path):
    snapshots_dir = tmp_path / "snapshots"
    manual = snapshots.write_snapshot(db.path, snapshots_dir, kind="manual", now=T0 - timedelta(days=1), keep=2)
    for minute in range(7):
        await remember(db, SCOPE_A, f"turn {minute}")
        snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic", now=T0 + timedelta(minutes=minute), keep=5)
    (snapshots_dir / "snapshot-20260101T000000Z-periodic.db").write_bytes(b"garbage")
    snapshots.prune_snapshots(snapshots_dir, kind="periodic", keep=5)
    kinds = [(i.kind, i.seq) for i in snapshots.list_snapshots(snapshots_dir)]
    assert kinds == [("manual", 0), *[("periodic", seq) for seq in range(3, 8)]]
    assert manual.path.exists()


@pytest.mark.parametrize("kind", ["weekly", ""])
def test_unknown_snapshot_kinds_are_refused(tmp_path, kind):
    with pytest.raises(ValueError):
        snapshots.write_snapshot(tmp_path / "memory.db", tmp_path / "snapshots", kind=kind)
