"""Rebuilding the projections from the event log, and what it costs the bot's start-up.

The log is the 1M-memory dataset's (`bench/dataset.py`: 2,065,095 events,
1,000,000 memories; quick: 100k memories, 206,020 events), plus a tail of
about 10,000 events written afterwards through the live path
(`write_memory` and `record_significance`, so pins come with pivotal
scores), after a snapshot was taken (`storage.snapshots.write_snapshot`).

Start-up runs what `Database.open(path, snapshots_dir=...)` runs in its thread
before it opens its connections: `migrate` and `storage.rebuild.ensure_projections`.
Each case starts from its own copy of a database file holding the log and
empty projection tables (as after an upgrade that changed them, or a lost
file), so the check finds the projections stale and rebuilds them:

* snapshot + tail: the newest fitting snapshot's rows and full-text index
  (copied, not rebuilt), then the tail's events, their memories indexed
  as they are replayed, then the secondary indexes;
* full replay: no snapshot, every event of the log. This is also the
  rebuild rate: events replayed / wall seconds from the call to its return,
  which covers dropping and creating the tables, the replay, the indexes,
  the FTS index and the COMMIT (with the WAL checkpoint SQLite runs in it),
  i.e. until the projections are committed and usable. Target >= 100,000
  events/s.

And with current projections, `Database.open` itself (the check finds
nothing to do), and the check alone; and the snapshot itself: the time
`write_snapshot` takes at the end of the dataset's log, and its file size.

    python -m bench.bench_rebuild [--quick]
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path

from bench.common import CACHE_DIR, Result, Stopwatch, main
from bench.dataset import BOT_NAME, CLASSIFIER_MODEL, PIN_CAP, SCORE_WEIGHTS, Dataset, DatasetSpec, load_dataset
from storage import sqlite
from storage.commands import TurnRecord, record_significance, write_memory
from storage.database import Database
from storage.rebuild import RebuildReport, ensure_projections
from storage.schema import migrate
from storage.snapshots import write_snapshot

TARGET_EVENTS_PER_SECOND = 100_000
TAIL_EVENTS = 10_000
FULL_SPEC = DatasetSpec(memories=1_000_000)
QUICK_SPEC = DatasetSpec(memories=100_000)
CURRENT_OPEN_RUNS = 5
WORK_DIR = CACHE_DIR / "rebuild-bench-out"


def run(quick: bool = False) -> Result:
    spec = QUICK_SPEC if quick else FULL_SPEC
    dataset = load_dataset(spec)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    try:
        return measure(dataset)
    finally:
        shutil.rmtree(WORK_DIR, ignore_errors=True)


def measure(dataset: Dataset) -> Result:
    result = Result("rebuild")
    snapshots_dir = WORK_DIR / "snapshots"
    no_snapshots = WORK_DIR / "no-snapshots"
    no_snapshots.mkdir()

    # The live database: the dataset's projections are current.
    live = dataset.copy_to(WORK_DIR / "live" / "memory.db")
    os.sync()
    open_seconds = [_timed_open(live, no_snapshots) for _ in range(CURRENT_OPEN_RUNS)]
    check_seconds = [_timed_check(live, no_snapshots) for _ in range(CURRENT_OPEN_RUNS)]

    with Stopwatch() as snapshot_write:
        snapshot = write_snapshot(live, snapshots_dir, kind="periodic")
    assert snapshot.seq == dataset.report.events, "the snapshot should sit at the end of the dataset's log"
    tail = asyncio.run(_write_tail(live, dataset, TAIL_EVENTS))

    # The log (the dataset's plus the tail) with empty projection tables.
    log_only = WORK_DIR / "log-only.db"
    shutil.copyfile(dataset.events_path, log_only)
    conn = sqlite.connect(log_only)
    try:
        conn.execute("ATTACH DATABASE ? AS live", (str(live),))
        conn.execute("INSERT INTO main.events SELECT * FROM live.events WHERE seq > ?", (snapshot.seq,))
        conn.execute("DETACH DATABASE live")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (log_end,) = conn.execute("SELECT max(seq) FROM events").fetchone()
    finally:
        conn.close()

    from_snapshot, from_snapshot_seconds = _timed_startup(log_only, snapshots_dir, "from-snapshot")
    full, full_seconds = _timed_startup(log_only, no_snapshots, "full")
    assert from_snapshot.snapshot == snapshot.name and from_snapshot.events == tail, from_snapshot
    assert full.snapshot is None and full.events == log_end == full.last_seq, full

    rate = full.events / full_seconds
    ok = rate >= TARGET_EVENTS_PER_SECOND
    result.add(f"rebuild rate, full replay of {full.events:,} events", rate, "ev/s", ">= 100,000 ev/s", ok)
    result.add(f"start-up: snapshot + {tail:,}-event tail", from_snapshot_seconds, "s")
    result.add("start-up: full replay of the same log", full_seconds, "s")
    result.add("start-up: snapshot + tail / full replay", from_snapshot_seconds / full_seconds, "x")
    result.add("start-up, projections current: Database.open", min(open_seconds) * 1000, "ms")
    result.add("start-up, projections current: check alone", min(check_seconds) * 1000, "ms")
    result.add(f"write_snapshot of {snapshot.memories:,} memories", snapshot_write.seconds, "s")
    result.add("snapshot file size", snapshot.size_bytes / 2**20, "MiB")
    result.extra = {
        "dataset": dataset.spec.stem,
        "log_events": log_end,
        "tail_events": tail,
        "memories": snapshot.memories,
        "current_open_ms_all": [round(s * 1000, 2) for s in open_seconds],
    }
    return result


def _timed_startup(log_only: Path, snapshots_dir: Path, label: str) -> tuple[RebuildReport, float]:
    """Database.open's projection check on a fresh copy of `log_only` (migrate, then ensure_projections)."""
    path = WORK_DIR / label / "memory.db"
    path.parent.mkdir()
    shutil.copyfile(log_only, path)
    os.sync()  # so the rebuild's fsyncs do not also write out the copy
    try:
        with Stopwatch() as clock:
            conn = sqlite.connect(path)
            try:
                migrate(conn)
                report = ensure_projections(conn, snapshots_dir)
            finally:
                conn.close()
        assert report is not None, "the projections should have needed a rebuild"
        return report, clock.seconds
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def _timed_open(path: Path, snapshots_dir: Path) -> float:
    async def open_and_close() -> float:
        with Stopwatch() as clock:
            db = await Database.open(path, snapshots_dir=snapshots_dir)
        await db.close()
        return clock.seconds

    return asyncio.run(open_and_close())


def _timed_check(path: Path, snapshots_dir: Path) -> float:
    conn = sqlite.connect(path)
    try:
        with Stopwatch() as clock:
            migrate(conn)
            report = ensure_projections(conn, snapshots_dir)
        assert report is None, "the projections should be current"
        return clock.seconds
    finally:
        conn.close()


async def _write_tail(path: Path, dataset: Dataset, events: int) -> int:
    """Chat turns and their scores through the live path until `events` events were appended."""
    rng = random.Random("rebuild-bench-tail")
    text = dataset.chat_text("rebuild-bench-tail")
    db = await Database.open(path)
    try:
        start = end = await _last_seq(db)
        while end - start < events:
            layout = dataset.heavy if rng.random() < 0.3 else rng.choice(dataset.layout.scopes)
            author_id = rng.choice(layout.member_ids)
            turn = TurnRecord(
                scope=layout.scope,
                channel_id=rng.choice(layout.channel_ids),
                author_id=author_id,
                author_name=dataset.layout.user_names[author_id],
                bot_name=BOT_NAME,
                user_text=text.user_message(layout),
                reply_text=text.reply(layout),
                user_message_id=rng.getrandbits(60),
            )
            memory_id = await write_memory(db, turn)
            if end - start + 1 < events:
                score = rng.choices((0, 1, 2, 3), weights=SCORE_WEIGHTS)[0]
                await record_significance(db, memory_id, score, model=CLASSIFIER_MODEL, pin_cap=PIN_CAP)
            end = await _last_seq(db)
    finally:
        await db.close()
    return end - start


async def _last_seq(db: Database) -> int:
    async with db.reader.execute("SELECT coalesce(max(seq), 0) FROM events") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    main(run)
