"""The rebuild equals folding the log event by event, however it batches and holds rows back,
from the whole log or from a snapshot plus the tail."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest

from storage import rebuild, snapshots, sqlite
from storage.events import (
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceFailed,
    MemorySignificanceSet,
    MemoryWritten,
    encode,
    read_payload,
)
from storage.projections import fold
from storage.schema import PROJECTION_DDL, PROJECTION_TABLES, migrate, split_script
from tests.projection_check import projection_state

INSERT_EVENT = "INSERT INTO events (kind, version, payload, recorded_at) VALUES (?, ?, ?, ?)"


def random_log(path: Path, seed: int, size: int = 400) -> None:
    """A log with every kind of event in odd orders: scores twice, events about memories that are
    forgotten, long gone, not written yet or never written, pins and unpins far apart."""
    rng = random.Random(seed)
    conn = sqlite.connect(path)
    migrate(conn)
    written: list[int] = []
    seq = 0

    def add(event) -> int:
        nonlocal seq
        kind, version, payload = encode(event)
        seq = conn.execute(INSERT_EVENT, (kind, version, payload, time.time())).lastrowid
        return seq

    def some_memory() -> int:
        roll = rng.random()
        if roll < 0.05:
            return seq + rng.randrange(1, 5)  # not written yet
        if roll < 0.08 or not written:
            return rng.randrange(1, seq + 2)  # whatever that event is
        if roll < 0.3:
            return rng.choice(written)  # any age
        return written[-rng.randrange(1, min(len(written), 6) + 1)]  # a recent one

    conn.execute("BEGIN")
    for _ in range(size):
        roll = rng.random()
        if roll < 0.35:
            scope_kind, scope_id = rng.choice([("guild", 1), ("guild", 2), ("dm", 3)])
            text = " ".join(rng.choice(["kumquat", "Café", "straße", "x" * 70, "42", "ß!"]) for _ in range(3))
            written.append(
                add(MemoryWritten(1000, scope_kind, scope_id, 5, 7, "ålice", "Mnemo", text, "noted", None, 1.5))
            )
        elif roll < 0.6:
            add(MemorySignificanceSet(some_memory(), score=rng.randrange(4), model="m"))
        elif roll < 0.7:
            add(MemorySignificanceFailed(some_memory(), reason="garbled"))
        elif roll < 0.9:
            add(MemoryPinChanged(some_memory(), pinned=rng.random() < 0.6, auto=rng.random() < 0.5, reason="r"))
        else:
            memory_id = some_memory()
            # Forgetting redacts the memory_written event (when there is one) and appends the event.
            row = conn.execute("SELECT kind, payload FROM events WHERE seq = ?", (memory_id,)).fetchone()
            if row is not None and row[0] == MemoryWritten.KIND and rng.random() < 0.8:
                data = read_payload(row[0], 1, row[1])
                _, _, payload = encode(MemoryWritten(**data).redact())
                conn.execute("UPDATE events SET payload = ? WHERE seq = ?", (payload, memory_id))
            add(MemoryForgotten(memory_id, actor_id=7))
    conn.execute("COMMIT")
    conn.close()


def fold_one_by_one(path: Path, until: int | None = None) -> None:
    """The reference: fresh projections, then each event's statements in log order (up to `until`),
    FTS included, as the live path applies them."""
    conn = sqlite.connect(path)
    conn.execute("BEGIN")
    for table in PROJECTION_TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    for statement in split_script(PROJECTION_DDL):
        conn.execute(statement)
    last = 0
    events = conn.execute(
        "SELECT seq, kind, version, payload FROM events WHERE seq <= ? ORDER BY seq", (until or 2**62,)
    ).fetchall()
    for seq, kind, version, payload in events:
        for sql, params in fold(seq, kind, read_payload(kind, version, payload)):
            conn.execute(sql, params)
        last = seq
    conn.execute("UPDATE projection_state SET last_seq = ?", (last,))
    conn.execute("COMMIT")
    conn.close()


def state_of(path: Path) -> dict:
    conn = sqlite.connect(path)
    try:
        return projection_state(conn)
    finally:
        conn.close()


@pytest.mark.parametrize("seed", range(6))
def test_rebuild_equals_the_event_by_event_fold(tmp_path, monkeypatch, seed):
    log = tmp_path / "log.db"
    random_log(log, seed)
    reference = tmp_path / "reference.db"
    shutil.copyfile(log, reference)
    fold_one_by_one(reference)
    expected = state_of(reference)
    assert expected["memories"], "the log should leave some memories"

    for hold, fetch in [(0, 1000), (1, 7), (3, 1), (25, 10), (10_000, 64)]:
        monkeypatch.setattr(rebuild, "HOLD_EVENTS", hold)
        monkeypatch.setattr(rebuild, "FETCH_ROWS", fetch)
        copy = tmp_path / f"rebuilt-{hold}-{fetch}.db"
        shutil.copyfile(log, copy)
        conn = sqlite.connect(copy)
        try:
            report = rebuild.rebuild_on(conn)
        finally:
            conn.close()
        assert report.last_seq == expected["last_seq"]
        assert state_of(copy) == expected, f"hold {hold}, fetch {fetch}"


@pytest.mark.parametrize("seed", range(3))
def test_snapshot_plus_tail_equals_the_event_by_event_fold(tmp_path, monkeypatch, seed):
    """The tail is indexed incrementally on top of the snapshot's copied index, whether its rows
    are inserted (and forgotten) early or held to the end."""
    log = tmp_path / "log.db"
    random_log(log, seed)
    reference = tmp_path / "reference.db"
    shutil.copyfile(log, reference)
    fold_one_by_one(reference)
    expected = state_of(reference)

    # A snapshot of the projections at a point in the middle of the same log.
    at_middle = tmp_path / "middle.db"
    shutil.copyfile(log, at_middle)
    fold_one_by_one(at_middle, until=expected["last_seq"] // 2)
    snapshot = snapshots.write_snapshot(at_middle, tmp_path / "snapshots", kind="manual")
    assert snapshot.indexed and snapshot.seq == expected["last_seq"] // 2

    for hold, fetch in [(0, 1000), (1, 7), (25, 10), (10_000, 64)]:
        monkeypatch.setattr(rebuild, "HOLD_EVENTS", hold)
        monkeypatch.setattr(rebuild, "FETCH_ROWS", fetch)
        copy = tmp_path / f"from-snapshot-{hold}-{fetch}.db"
        shutil.copyfile(log, copy)
        conn = sqlite.connect(copy)
        try:
            report = rebuild.rebuild_on(conn, snapshot=snapshot)
        finally:
            conn.close()
        assert report.events == expected["last_seq"] - snapshot.seq
        assert state_of(copy) == expected, f"hold {hold}, fetch {fetch}"


def test_rebuild_leaves_the_cache_size_and_fts_settings_as_they_were(tmp_path):
    log = tmp_path / "log.db"
    random_log(log, seed=99, size=50)
    conn = sqlite.connect(log)
    try:
        before = [conn.execute(f"PRAGMA {p}").fetchone() for p in ("cache_size",)]
        rebuild.rebuild_on(conn)
        after = [conn.execute(f"PRAGMA {p}").fetchone() for p in ("cache_size",)]
        config = dict(conn.execute("SELECT k, v FROM memories_fts_config").fetchall())
    finally:
        conn.close()
    assert after == before
    assert config.get("hashsize", rebuild.FTS_DEFAULT_HASH_BYTES) == rebuild.FTS_DEFAULT_HASH_BYTES
    assert config["secure-delete"] == 1
