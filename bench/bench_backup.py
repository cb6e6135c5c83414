"""Backing up a ~1 GB database while the bot's loop keeps serving.

The database (quick: ~32 MB) is generated once and cached under
`bench/.cache/`: the events with bulk SQL, then the projections (memories and
their FTS index) by the bot's own replay, so the file matches whatever the
projection tables are (the cache key includes their DDL). Then, in one run:

1. Loop lag: the bot's `Database` is open and a writer appends a memory
   every 50 ms through the real write path, while a ticker on the loop
   sleeps 5 ms at a time and records how late it wakes. A full backup
   (`storage.backups.take_backup`: copy, verify, checksum, fsync, rename)
   runs in a thread meanwhile, as the bot runs it. The idle loop is
   measured first, as the noise floor.
2. Wall time: the backup's total, its copy phase alone (the backup API, the
   part comparable to the CLI) and its verify phase alone, against
   `/usr/bin/sqlite3 FILE ".backup OUT"` on the same file. The page cache
   is warmed first so every contender reads from memory.

Target: loop lag p99 ≤ 50 ms while backing up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import CACHE_DIR, Result, Stopwatch, main, median, percentile
from storage import backups, sqlite
from storage.commands import TurnRecord, write_memory
from storage.database import Database
from storage.rebuild import rebuild_on
from storage.schema import migrate
from storage.scope import Scope
from storage.snapshots import PROJECTION_DIGEST

FULL_SIZE_BYTES = 1 << 30
QUICK_SIZE_BYTES = 32 << 20
BATCH_EVENTS = 5_000
# The log's share of the finished file: the projections repeat the text and index it.
EVENTS_SHARE = 0.265
TEXT_CHARS = 280
SCOPES = 50
BOT_ID = 1000
TICK_SECONDS = 0.005
WRITE_EVERY_SECONDS = 0.05
IDLE_SECONDS = 1.0
TARGET_P99_MS = 50.0
SQLITE3_CLI = "/usr/bin/sqlite3"
READ_CHUNK_BYTES = 8 << 20


def run(quick: bool = False) -> Result:
    size = QUICK_SIZE_BYTES if quick else FULL_SIZE_BYTES
    db_path = ensure_database(size)
    work_dir = CACHE_DIR / "backup-bench-out"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        return measure(db_path, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def measure(db_path: Path, work_dir: Path) -> Result:
    result = Result("backup")
    result.add("database size", db_path.stat().st_size / 1e6, "MB")
    _warm_page_cache(db_path)

    # 1. Loop lag and turns, idle and then during a full backup.
    idle_lags, lags, writes, total_seconds = asyncio.run(_loop_while_backing_up(db_path, work_dir / "ours"))
    p99 = percentile(lags, 99) * 1000
    result.add("loop lag p50 while backing up", percentile(lags, 50) * 1000, "ms")
    result.add("loop lag p99 while backing up", p99, "ms", f"≤ {TARGET_P99_MS:.0f} ms", p99 <= TARGET_P99_MS)
    result.add("loop lag max while backing up", max(lags) * 1000, "ms")
    result.add("loop lag p99 idle (noise floor)", percentile(idle_lags, 99) * 1000, "ms")
    result.add("turns written during the backup", len(writes), "")
    result.add("turn write latency p50 during the backup", median(writes) * 1000, "ms")
    result.add("turn write latency max during the backup", max(writes, default=0.0) * 1000, "ms")
    result.add("backup total (copy+verify+checksum+fsync)", total_seconds, "s")

    # 2. The phases alone, and the sqlite3 CLI, on the same file.
    copy_path = work_dir / "copy-only.db"
    with Stopwatch() as copy:
        backups.copy_database(db_path, copy_path)
    with Stopwatch() as verify:
        backups.verify_file(copy_path)
    with Stopwatch() as digest:
        backups.file_digest(copy_path)
    cli_path = work_dir / "sqlite3-cli.db"
    with Stopwatch() as cli:
        subprocess.run([SQLITE3_CLI, str(db_path), f".backup '{cli_path}'"], check=True, capture_output=True)
    result.add("  copy phase alone (backup API, one step)", copy.seconds, "s")
    result.add("  verify phase alone (integrity + foreign keys)", verify.seconds, "s")
    result.add("  checksum phase alone (SHA-256)", digest.seconds, "s")
    result.add("sqlite3 CLI .backup of the same file", cli.seconds, "s")
    result.add("copy phase / sqlite3 .backup", copy.seconds / cli.seconds, "x")
    result.add("backup total / sqlite3 .backup", total_seconds / cli.seconds, "x")
    cli_version = subprocess.run([SQLITE3_CLI, "--version"], capture_output=True, text=True).stdout.split()[0]
    result.extra = {
        "database": str(db_path),
        "sqlite": sqlite.sqlite_version,
        "sqlite3_cli": cli_version,
        "tick_seconds": TICK_SECONDS,
        "lag_samples": len(lags),
    }
    return result


async def _loop_while_backing_up(
    db_path: Path, backups_dir: Path
) -> tuple[list[float], list[float], list[float], float]:
    """(idle lags, lags during the backup, turn write latencies during it, the backup's wall time)."""
    db = await Database.open(db_path)
    try:
        idle_lags, _ = await _while_running(db, asyncio.sleep(IDLE_SECONDS))
        with Stopwatch() as total:
            lags, writes = await _while_running(
                db, asyncio.to_thread(backups.take_backup, db_path, backups_dir, kind="manual")
            )
    finally:
        await db.close()
    return idle_lags, lags, writes, total.seconds


async def _while_running(db: Database, work: object) -> tuple[list[float], list[float]]:
    """Run `work` (an awaitable) with the ticker and the turn writer going; their samples."""
    lags: list[float] = []
    writes: list[float] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    scope = Scope.for_guild(BOT_ID, 1)

    async def ticker() -> None:
        while not done.is_set():
            started = loop.time()
            await asyncio.sleep(TICK_SECONDS)
            lags.append(max(0.0, loop.time() - started - TICK_SECONDS))

    async def writer() -> None:
        turn = 0
        while not done.is_set():
            turn += 1
            record = TurnRecord(scope, 10, 11, "bench", "Mnemo", f"a turn during the benchmark {turn}", "noted")
            started = time.perf_counter()
            await write_memory(db, record)
            writes.append(time.perf_counter() - started)
            await asyncio.sleep(WRITE_EVERY_SECONDS)

    tasks = [asyncio.create_task(ticker()), asyncio.create_task(writer())]
    try:
        await work  # type: ignore[misc]
    finally:
        done.set()
        await asyncio.gather(*tasks)
    return lags, writes


# the cached database


def ensure_database(size_bytes: int) -> Path:
    """A database of about `size_bytes`, generated once and kept in the cache folder."""
    prefix = f"backup-bench-{size_bytes >> 20}mb"
    path = CACHE_DIR / f"{prefix}-{PROJECTION_DIGEST}.db"
    ready = path.with_suffix(".ready")
    if path.exists() and ready.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in CACHE_DIR.glob(f"{prefix}-*"):  # older projection tables, or an interrupted run
        stale.unlink()
    print(f"generating a {size_bytes >> 20} MB database in {path} (once)…", flush=True)
    with Stopwatch() as generation:
        _generate(path, size_bytes)
    ready.write_text(f"{generation.seconds:.1f} s\n")
    print(f"generated in {generation.seconds:.0f} s", flush=True)
    return path


def _generate(path: Path, size_bytes: int) -> None:
    conn = sqlite.connect(path)
    try:
        migrate(conn)
        conn.execute("PRAGMA synchronous = OFF")  # generation only; the bot's own settings apply later
        conn.execute("CREATE TEMP TABLE bench_scopes (n INTEGER PRIMARY KEY, scope_id INTEGER)")
        conn.executemany("INSERT INTO temp.bench_scopes VALUES (?, ?)", [(n, 100 + n) for n in range(SCOPES)])
        corpus = _corpus()
        span = len(corpus) - TEXT_CHARS
        # The projections (the text again, and its index) come on top of the log.
        written = 0
        while _file_bytes(conn) < size_bytes * EVENTS_SHARE:
            conn.execute("BEGIN")
            conn.execute(
                _INSERT_EVENTS, {"start": written + 1, "end": written + BATCH_EVENTS, "corpus": corpus, "span": span}
            )
            conn.execute("COMMIT")
            written += BATCH_EVENTS
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rebuild_on(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _file_bytes(conn: sqlite.sqlite3.Connection) -> int:
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    return int(pages) * int(page_size)


def _corpus() -> str:
    rng = random.Random(7)
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(6000)]
    return " ".join(rng.choices(words, k=60_000))


_INSERT_EVENTS = f"""
WITH RECURSIVE c(x) AS (SELECT :start UNION ALL SELECT x + 1 FROM c WHERE x < :end)
INSERT INTO events (kind, version, payload, recorded_at)
SELECT 'memory_written', 1, json_object(
    'bot_id', {BOT_ID}, 'scope_kind', 'guild', 'scope_id', s.scope_id,
    'channel_id', s.scope_id * 10 + x % 3, 'author_id', 5000 + x % 211,
    'author_name', 'user' || (x % 211), 'bot_name', 'Mnemo',
    'user_text', substr(:corpus, 1 + (x * 7919) % :span, {TEXT_CHARS}),
    'reply_text', substr(:corpus, 1 + (x * 104729) % :span, {TEXT_CHARS}),
    'user_message_id', x, 'created_at', 1700000000.0 + x, 'redacted', json('false')),
    1700000000.0 + x
FROM c JOIN temp.bench_scopes AS s ON s.n = x % {SCOPES}
"""


def _warm_page_cache(path: Path) -> None:
    with path.open("rb") as handle:
        while handle.read(READ_CHUNK_BYTES):
            pass
    with contextlib.suppress(FileNotFoundError):
        Path(f"{path}-wal").read_bytes()


if __name__ == "__main__":
    main(run)
