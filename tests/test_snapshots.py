"""Snapshots: snapshot plus tail equals a full replay (full-text index included), they honour forgets
(index terms included), and unfit ones are never used."""

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage import backups, rebuild, snapshots, sqlite, tokens
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
from tests.projection_check import fts_integrity_check, index_answers, projection_state

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


def snapshot_index(path: Path) -> dict:
    """What a snapshot file's own full-text index holds and answers, once checked against its rows."""
    conn = sqlite.connect(":memory:")
    try:
        conn.execute("ATTACH DATABASE ? AS snap", (str(path),))
        fts_integrity_check(conn, "snap")
        indexed = [row[0] for row in conn.execute("SELECT id FROM snap.memories_fts_docsize ORDER BY id")]
        return {"indexed": indexed, "answers": index_answers(conn, "snap")}
    finally:
        conn.close()


async def forget_by_id(db: Database, memory_ids: list[int]) -> None:
    """Forget memories as their author would, in whatever scope they are."""
    for memory_id in memory_ids:
        async with db.reader.execute(
            "SELECT bot_id, scope_kind, scope_id FROM memories WHERE id = ?", (memory_id,)
        ) as cursor:
            row = await cursor.fetchone()
        await forget_memory(db, Scope(*row), memory_id, actor_id=7)


def lose_projections_after_3(conn: sqlite.sqlite3.Connection) -> None:
    conn.execute("UPDATE projection_state SET last_seq = 3")
    conn.execute("DELETE FROM memories WHERE id > 3")


async def set_fts_hashsize(db: Database, size: int) -> None:
    def set_hashsize(conn: sqlite.sqlite3.Connection) -> None:
        conn.execute("INSERT INTO memories_fts (memories_fts, rank) VALUES ('hashsize', ?)", (size,))

    await db.write(set_hashsize)


@pytest.mark.parametrize("hashsize", [None, 1])
async def test_snapshot_plus_tail_equals_full_replay(db, tmp_path, monkeypatch, hashsize):
    """With hashsize 1, FTS5 writes a segment for every memory indexed, live and in the tail's
    replay (the setting travels in the snapshot), so the tail's segments are merged with the
    copied ones."""
    snapshots_dir = tmp_path / "snapshots"
    if hashsize is not None:
        await set_fts_hashsize(db, hashsize)
    early = await mixed_history(db, 0, 40)
    info = await asyncio.to_thread(snapshots.write_snapshot, db.path, snapshots_dir, kind="periodic", now=T0)
    await mixed_history(db, 40, 40)
    # The tail also forgets memories the snapshot holds: they leave the copied index.
    await forget_by_id(db, early[::7])
    live = state_of(db.path)

    def no_full_index(conn):
        raise AssertionError("a snapshot's index is copied, not rebuilt")

    with monkeypatch.context() as patched:
        patched.setattr(rebuild, "fill_fts", no_full_index)
        from_snapshot = rebuild_projections(db.path, snapshots_dir)
    assert from_snapshot.snapshot == info.name
    assert from_snapshot.events < from_snapshot.last_seq  # only the tail was replayed
    assert state_of(db.path) == live

    full = rebuild_projections(db.path, snapshots_dir, full=True)
    assert full.snapshot is None and full.events == full.last_seq
    assert state_of(db.path) == live


async def test_a_snapshot_holds_the_index_as_it_was_at_its_event(db, tmp_path):
    snapshots_dir = tmp_path / "snapshots"
    await mixed_history(db, 0, 30)
    at_snapshot = state_of(db.path)
    info = snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic", now=T0)
    await mixed_history(db, 30, 10)  # later writes are not in it
    assert info.indexed and info.seq == at_snapshot["last_seq"]
    held = snapshot_index(info.path)
    assert held["indexed"] == [row[0] for row in at_snapshot["indexed"]]
    assert held["answers"] == at_snapshot["answers"]


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
        assert secret_id not in snapshot_index(path)["indexed"]
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
    assert snapshot_index(info.path) == {"indexed": [], "answers": {}}


async def test_a_scrub_removes_the_forgotten_memorys_index_terms_from_snapshots(db, tmp_path):
    snapshots_dir = tmp_path / "snapshots"
    # No other word indexed in this scope starts with q, x or z. FTS5 stores a term as what
    # differs from the term before it, so these are stored whole, after the scope's tag.
    said = ["zymurgical", "quodlibetic", "xylophagous"]
    # The index holds their stems.
    words = [tokens.stem(word) for word in said]
    terms = [tokens.scoped_term(SCOPE_A, word) for word in words]
    keep_id = await remember(db, SCOPE_A, "an ordinary memory")
    secret_id = await remember(db, SCOPE_A, " ".join(said))
    info = snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic")
    # Before: the snapshot's index holds the terms, in its own pages and not only in the row.
    assert all(term in index_terms(info.path) for term in terms)
    assert all(word.encode() in index_pages(info.path) for word in words)
    assert snapshot_index(info.path)["answers"][terms[0]] == [secret_id]

    await forget_memory(db, SCOPE_A, secret_id, actor_id=7)
    assert snapshots.scrub_memory(snapshots_dir, secret_id) == 1

    data = info.path.read_bytes()
    for word, term in zip(words, terms, strict=True):
        assert term.encode() not in data, term
        assert word.encode() not in data, word
        assert word.encode() not in index_pages(info.path), word
    assert not set(terms) & index_terms(info.path)
    held = snapshot_index(info.path)  # the index still agrees with the rows, and still answers
    assert held["indexed"] == [keep_id]
    assert held["answers"][tokens.scoped_term(SCOPE_A, tokens.stem("ordinary"))] == [keep_id]


def index_terms(path: Path) -> set[str]:
    """Every term a snapshot's full-text index lists (FTS5's own view of its pages)."""
    conn = sqlite.connect(":memory:")
    try:
        conn.execute("ATTACH DATABASE ? AS snap", (str(path),))
        conn.execute("CREATE VIRTUAL TABLE temp.terms USING fts5vocab(snap, memories_fts, row)")
        return {row[0] for row in conn.execute("SELECT term FROM temp.terms")}
    finally:
        conn.close()


def index_pages(path: Path) -> bytes:
    """The raw content of a snapshot's full-text index: its data pages and its term index."""
    conn = sqlite.connect(":memory:")
    try:
        conn.execute("ATTACH DATABASE ? AS snap", (str(path),))
        blocks = [row[0] for row in conn.execute("SELECT block FROM snap.memories_fts_data")]
        blocks += [row[0] for row in conn.execute("SELECT term FROM snap.memories_fts_idx")]
        return b"".join(bytes(block) for block in blocks if block)
    finally:
        conn.close()


async def test_snapshots_without_an_index_are_not_used_but_are_still_scrubbed(db, tmp_path):
    """Snapshots written before they carried the full-text index hold only the rows."""
    snapshots_dir = tmp_path / "snapshots"
    secret_id = await remember(db, SCOPE_A, "an old snapshot remembers gooseberry")
    await mixed_history(db, 0, 10)
    old = snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic", now=T0)
    strip = sqlite.connect(":memory:")
    strip.execute("ATTACH DATABASE ? AS snap", (str(old.path),))
    strip.execute("DROP TABLE snap.memories_fts")
    strip.execute("VACUUM snap")
    strip.close()
    await mixed_history(db, 10, 5)

    [info] = snapshots.list_snapshots(snapshots_dir)
    assert info.readable and not info.indexed
    conn = sqlite.connect(db.path)
    try:
        assert "without the full-text index" in snapshots.unusable_reason(conn, info)
    finally:
        conn.close()
    live = state_of(db.path)
    report = rebuild_projections(db.path, snapshots_dir)
    assert report.snapshot is None
    assert state_of(db.path) == live

    await forget_memory(db, SCOPE_A, secret_id, actor_id=7)
    assert snapshots.scrub_memory(snapshots_dir, secret_id) == 1
    assert b"gooseberry" not in old.path.read_bytes()


async def test_a_snapshot_whose_index_cannot_be_scrubbed_is_deleted(db, tmp_path):
    snapshots_dir = tmp_path / "snapshots"
    secret_id = await remember(db, SCOPE_A, "the broken index still knows kohlrabi")
    info = snapshots.write_snapshot(db.path, snapshots_dir, kind="periodic")
    damage = sqlite.connect(":memory:")
    damage.execute("ATTACH DATABASE ? AS snap", (str(info.path),))
    damage.execute("DROP TABLE snap.memories_fts_docsize")  # the rest of the index still holds the words
    damage.close()
    await forget_memory(db, SCOPE_A, secret_id, actor_id=7)
    assert snapshots.scrub_memory(snapshots_dir, secret_id) == 1
    assert not info.path.exists()


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
    await db.write(lose_projections_after_3)
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

    def index_otherwise(conn: sqlite.sqlite3.Connection) -> None:
        conn.execute("DROP INDEX memories_unscored")
        conn.execute("CREATE INDEX memories_unscored ON memories (id, significance)")

    await db.write(index_otherwise)
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


async def test_a_link_named_like_a_snapshot_is_ignored_at_start(tmp_path, caplog):
    path = tmp_path / "memory.db"
    snapshots_dir = tmp_path / "snapshots"
    db = await Database.open(path, snapshots_dir=snapshots_dir)
    await mixed_history(db, 0, 20)
    # A snapshot that fits the log, kept elsewhere and linked in under a snapshot's name.
    outside = snapshots.write_snapshot(path, tmp_path / "elsewhere", kind="periodic")
    os.makedirs(snapshots_dir, exist_ok=True)
    os.symlink(outside.path, snapshots_dir / outside.name)
    live = state_of(path)
    await db.write(lose_projections_after_3)  # projections behind the log: a start would rebuild them
    await db.close()

    with caplog.at_level(logging.INFO, logger="storage"):
        db = await Database.open(path, snapshots_dir=snapshots_dir)
    try:
        assert "rebuilt projections from snapshot" not in caplog.text  # a full replay instead
        assert f"ignoring {outside.name} in the snapshots folder: it is not a regular file (a link?)" in caplog.text
        assert state_of(path) == live
        assert snapshots.list_snapshots(snapshots_dir) == []
        # Forgetting never writes through the link either.
        before = outside.path.read_bytes()
        assert snapshots.scrub_memories(snapshots_dir, range(1, 30)) == 0
        assert outside.path.read_bytes() == before
    finally:
        await db.close()
