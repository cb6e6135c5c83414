"""Disk full and I/O errors, for the database and for the backup folder.

The faults are real ones. The bot runs as a child process (`bot.py`, as in
production) and the test moves that process's RLIMIT_FSIZE from outside with
prlimit(2): a write past the limit fails with EFBIG (SIGXFSZ is ignored), which
SQLite reports as SQLITE_IOERR ("disk I/O error") and Python as OSError, just
as a disk that has run out of room fails mid-write. Raising the limit is "space
returns". Where the test may mount a small tmpfs, a second test fills it for
real, so the bot also meets ENOSPC (SQLite's SQLITE_FULL, "database or disk is
full"); it is skipped where mounting is not allowed.

What must hold, for the database and for the backup folder, failing once and
failing continuously: every turn gets its reply, plus a clear note when its
memory could not be saved; a slash command that writes answers with a clear
private error; the scoring worker backs off and catches up; nothing committed
is lost; no good backup is replaced or changed, none is left half-written, a
failed nightly shows in /status and is retried until it succeeds.

The long versions (`-m soak`) add many fault cycles of random length under
continuous traffic in three channels: 25 database cycles (half of them a full
disk, half an I/O error on every write), 60 backup-folder cycles, 10 rounds
of a really full tmpfs. Two quick tests cover what the backup soak found: a
backup or snapshot taken when more than `keep` of its kind share one second
used to reuse a pruned name, sort as the oldest, and be deleted at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cogs.chat import MEMORY_WRITE_FAILED_REPLY
from companion.worker import BACKOFF_MAX_SECONDS
from storage import backups, snapshots
from storage.commands import TurnRecord, record_significance, write_memory
from storage.database import Database
from tests.botprocess import TOKEN_ENV, query, write_config
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import Answer, FakeLLM
from tests.harness import (
    ALICE,
    APP_OWNER,
    BOB,
    CAROL,
    CLASSIFIER_MODEL,
    GUILD_A,
    LISTEN_CHANNEL,
    SCOPE_A,
    THREAD_IN_LISTEN,
)
from tests.projection_check import live_and_rebuilt

REPO = Path(__file__).resolve().parent.parent
GENERIC_COMMAND_ERROR = "Sorry, something went wrong running that command."
STORAGE_ERROR = re.compile(r"^Sorry, I couldn't do that: my storage is (full|not working right now)")

# bot.py, with SIGXFSZ ignored and an optional starting file-size limit, and
# (for the backup tests) a shorter wait before a failed nightly backup is retried.
CHILD = """
import os, resource, signal, sys
from datetime import timedelta
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
if os.environ.get("FAULT_STACKS"):  # `kill -USR1 <pid>` writes every thread's stack there
    import faulthandler
    faulthandler.register(signal.SIGUSR1, file=open(os.environ["FAULT_STACKS"], "w"), all_threads=True)
limit = int(os.environ.get("FAULT_FSIZE_LIMIT") or 0)
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
sys.path.insert(0, os.environ["FAULT_REPO"])
retry = os.environ.get("FAULT_NIGHTLY_RETRY_SECONDS")
if retry:
    import companion.operations
    companion.operations.NIGHTLY_RETRY_AFTER = timedelta(seconds=float(retry))
import cli
sys.exit(cli.main(sys.argv[1:]))
"""


class LimitedBot:
    """`bot.py` in a child process whose files may not grow past a limit the test moves.

    Its output goes through a pipe (a log file would be capped too) into
    `lines` and `bot.log`, drained by a thread of its own: the bot must never
    wait on its log because the test's loop is busy.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        limit: int | None = None,
        nightly_retry_seconds: float | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.config_path = config_path
        self.initial_limit = limit
        self.nightly_retry_seconds = nightly_retry_seconds
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.log_path = log_path or config_path.parent / "bot.log"
        self._pump: threading.Thread | None = None

    async def start(self, discord_fake: FakeDiscord, timeout: float = 30) -> None:
        connections = discord_fake.connections
        env = {
            **os.environ,
            TOKEN_ENV: "fake-token",
            "PYTHONUNBUFFERED": "1",
            "FAULT_REPO": str(REPO),
            "FAULT_FSIZE_LIMIT": str(self.initial_limit or ""),
            "FAULT_NIGHTLY_RETRY_SECONDS": str(self.nightly_retry_seconds or ""),
            "FAULT_STACKS": str(self.log_path.with_suffix(".stacks")),
        }
        read_end, write_end = os.pipe()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            "--config",
            str(self.config_path),
            cwd=REPO,
            env=env,
            stdout=write_end,
            stderr=write_end,
        )
        os.close(write_end)
        self._pump = threading.Thread(target=self._read_output, args=(read_end,), name="bot-output", daemon=True)
        self._pump.start()
        async with asyncio.timeout(timeout):
            while discord_fake.connections <= connections:
                if self.process.returncode is not None:
                    raise RuntimeError(f"bot exited with {self.process.returncode}: {self.log_tail()}")
                await asyncio.sleep(0.05)
        await discord_fake.wait_until_ready()

    def _read_output(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb") as pipe, self.log_path.open("a", encoding="utf-8") as log:
            for raw in pipe:
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                log.write(line + "\n")

    def set_limit(self, nbytes: int | None) -> None:
        """Cap every file the bot writes at `nbytes` (None: no cap), from outside."""
        assert self.process is not None and self.process.returncode is None
        soft = resource.RLIM_INFINITY if nbytes is None else nbytes
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for_log(self, text: str, count: int = 1, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while self.count(text) < count:
                await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit status."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(timeout):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._pump is not None:
            await asyncio.to_thread(self._pump.join, 5)
        return process.returncode

    def dump_stacks(self) -> None:
        """Write every thread's stack of the running bot to `bot.stacks`, for a test that timed out."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.lines[-lines:])


@pytest.fixture
async def bots():
    """Every LimitedBot a test starts is stopped at the end, whatever happens."""
    started: list[LimitedBot] = []
    yield started
    for bot in started:
        await bot.stop(timeout=10)


# Turns, and what became of them


@dataclass
class Lane:
    channel_id: int
    author_id: int
    name: str


@dataclass
class Ledger:
    """Every turn sent, and what became of it."""

    stored: list[int] = field(default_factory=list)  # user message ids whose memory was saved
    noted: list[int] = field(default_factory=list)  # answered, with the "couldn't save" note
    texts: dict[int, str] = field(default_factory=dict)


def lanes_for(fake: FakeDiscord) -> list[Lane]:
    return [
        Lane(LISTEN_CHANNEL, ALICE, "channel"),
        Lane(THREAD_IN_LISTEN, BOB, "thread"),
        Lane(fake.dm_channel_id(CAROL), CAROL, "dm"),
    ]


def answers_to(fake: FakeDiscord, message_id: int) -> list[str]:
    return [
        m["content"]
        for m in fake.bot_messages
        if int((m.get("message_reference") or {}).get("message_id") or 0) == message_id
    ]


def memory_of(db_path: Path, message_id: int) -> bool:
    return bool(query(db_path, "SELECT 1 FROM memories WHERE user_message_id = ?", (message_id,)))


async def turn(fake: FakeDiscord, db_path: Path, lane: Lane, text: str, ledger: Ledger, timeout: float = 20) -> str:
    """Send one message and wait until it is answered and either remembered or noted as not saved."""
    message = await fake.send_message(lane.channel_id, lane.author_id, text)
    message_id = int(message["id"])
    ledger.texts[message_id] = text
    async with asyncio.timeout(timeout):
        while True:
            answers = answers_to(fake, message_id)
            if MEMORY_WRITE_FAILED_REPLY in answers:
                assert answers[0] != MEMORY_WRITE_FAILED_REPLY, "the note came before the reply"
                ledger.noted.append(message_id)
                return "noted"
            if answers and memory_of(db_path, message_id):
                ledger.stored.append(message_id)
                return "stored"
            await asyncio.sleep(0.03)


async def command(fake: FakeDiscord, user_id: int, name: str, **options) -> str:
    """A slash command in guild A; returns its private answer (after a deferral, the followup)."""
    interaction = await fake.invoke(user_id, name, guild_id=GUILD_A, channel_id=LISTEN_CHANNEL, options=options)
    [first] = await interaction.wait_for_response(1)
    assert first["ephemeral"], first
    if first["type"] == 5:
        await interaction.wait_for_response(2)
        return interaction.original["content"]
    return first["content"]


async def failed_forget(fake: FakeDiscord, user_id: int, memory_id: int) -> tuple[str, str]:
    """/memory forget, confirmed, when it cannot be written; returns (the private error, the question as it ends)."""
    interaction = await fake.invoke(
        user_id, "memory forget", guild_id=GUILD_A, channel_id=LISTEN_CHANNEL, options={"id": memory_id}
    )
    [prompt] = await interaction.wait_for_response(1)
    assert "Forget this memory for good?" in prompt["content"], prompt
    await fake.click(user_id, interaction.original, "memory:forget:confirm")

    def error() -> str | None:
        followups = [r["content"] for r in interaction.responses if r["kind"] != "callback" and r["ephemeral"]]
        return next((text for text in followups if text.startswith("Sorry")), None)

    async with asyncio.timeout(10):
        while error() is None or "Forget this memory for good?" in interaction.original["content"]:
            await asyncio.sleep(0.03)
    return error() or "", interaction.original["content"]


def wal_size(db_path: Path) -> int:
    return Path(f"{db_path}-wal").stat().st_size


def memory_ids(db_path: Path) -> set[int]:
    return {row[0] for row in query(db_path, "SELECT user_message_id FROM memories WHERE user_message_id IS NOT NULL")}


def significance_events(db_path: Path) -> dict[int, int]:
    rows = query(
        db_path,
        "SELECT json_extract(payload, '$.memory_id'), count(*) FROM events"
        " WHERE kind = 'memory_significance_set' GROUP BY 1",
    )
    return dict(rows)


async def wait_until_scored(db_path: Path, bot: LimitedBot, timeout: float = 30) -> float:
    """Until no memory waits for a score; returns how long that took.

    After a long fault the worker may be in its longest back-off (two minutes), so
    the long runs allow for that.
    """
    started = time.monotonic()
    unscored = "SELECT count(*) FROM memories WHERE significance IS NULL AND scoring_failures < 3"
    try:
        async with asyncio.timeout(timeout):
            while query(db_path, unscored) != [(0,)]:
                await asyncio.sleep(0.1)
    except TimeoutError:
        bot.dump_stacks()
        raise
    return time.monotonic() - started


def check_database(db_path: Path, tmp_path: Path, ledger: Ledger, *, seeded: int = 0) -> None:
    """After the bot stopped: sound, consistent, and exactly the stored turns remembered, each scored once."""
    assert query(db_path, "PRAGMA integrity_check") == [("ok",)]
    assert query(db_path, "PRAGMA foreign_key_check") == []
    live, rebuilt = live_and_rebuilt(db_path, tmp_path)
    assert live == rebuilt, "the projections disagree with the event log"
    remembered = memory_ids(db_path)
    assert set(ledger.stored) <= remembered, f"committed memories were lost: {set(ledger.stored) - remembered}"
    assert not set(ledger.noted) & remembered, "a turn noted as not saved was saved after all"
    assert remembered == set(ledger.stored)
    assert query(db_path, "SELECT count(*) FROM memories WHERE user_message_id IS NULL") == [(seeded,)]
    ids = [row[0] for row in query(db_path, "SELECT id FROM memories")]
    scored = significance_events(db_path)
    assert {i: scored.get(i, 0) for i in ids} == dict.fromkeys(ids, 1), "a memory was scored twice, or never"


# The database


async def test_database_write_errors_once_and_continuously(tmp_path, discord_fake, llm_fake, bots):
    report = await database_faults(tmp_path, discord_fake, llm_fake, bots, random_cycles=0)
    print(f"\ndatabase faults (short): {report}")


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_database_write_errors_soak(tmp_path, discord_fake, llm_fake, bots):
    report = await database_faults(tmp_path, discord_fake, llm_fake, bots, random_cycles=25)
    print(f"\ndatabase faults (soak): {report}")


async def database_faults(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLM, bots: list[LimitedBot], *, random_cycles: int
) -> dict:
    config = write_config(tmp_path, fake, llm, extra="scoring_concurrency = 2\n")
    db_path = tmp_path / "data" / "memory.db"
    bot = LimitedBot(config)
    bots.append(bot)
    await bot.start(fake)
    lanes = lanes_for(fake)
    ledger = Ledger()
    counter = iter(range(1, 1_000_000))

    def text(what: str) -> str:
        return f"{what} turn {next(counter)}: " + "a fact worth keeping " * 20

    def choke(hard: bool = False) -> None:
        if hard:
            # Every write past the first kilobyte of any file fails: an I/O error on every write.
            bot.set_limit(1000)
        else:
            # A full disk: what is already allocated can be rewritten, nothing can grow. Writes
            # appended to the write-ahead log fail (those into a log that SQLite restarts from
            # its beginning after a checkpoint would not, as on a real disk).
            bot.set_limit(max(wal_size(db_path), db_path.stat().st_size) + 1000)

    for lane in lanes:
        for _ in range(2):
            assert await turn(fake, db_path, lane, text("warm-up"), ledger) == "stored"
    await wait_until_scored(db_path, bot)
    alices = sorted(query(db_path, "SELECT id FROM memories WHERE author_id = ?", (ALICE,)))
    assert len(alices) >= 2

    # Failing once: the first write fails, then there is room again.
    choke()
    assert await turn(fake, db_path, lanes[0], text("fail-once"), ledger) == "noted"
    bot.set_limit(None)
    assert await turn(fake, db_path, lanes[0], text("after-once"), ledger) == "stored"

    # Failing continuously, while memories wait for their (slow) scores.
    llm.responders[CLASSIFIER_MODEL] = lambda body: Answer('{"significance": 2}', delay=1.0)
    for lane in lanes:
        assert await turn(fake, db_path, lane, text("before-full"), ledger) == "stored"
    errors_before = bot.count("could not record the score of memory")
    choke()
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(turn(fake, db_path, lane, text(f"full-{i}"), ledger) for lane in lanes for i in range(2))
    )
    assert outcomes == ["noted"] * len(outcomes)
    # Slash commands that write answer with a clear private error; reading still works.
    pin_answer = await command(fake, ALICE, "memory pin", id=alices[0][0])
    assert STORAGE_ERROR.match(pin_answer), pin_answer
    forget_error, forget_prompt = await failed_forget(fake, ALICE, alices[1][0])
    assert STORAGE_ERROR.match(forget_error), forget_error
    assert forget_prompt.startswith("Nothing was forgotten"), forget_prompt
    listed = await command(fake, ALICE, "memory list")
    assert listed.startswith("**") and f"#{alices[0][0]}" in listed
    # The worker could not record the scores it got: it backs off, and says so in /status.
    await bot.wait_for_log("could not record the score of memory", errors_before + 1)
    status = await command(fake, APP_OWNER, "status")
    match = re.search(r"(\d+) errors\.", status)
    assert match and int(match[1]) >= 1, status
    assert "Last error: database:" in status, status
    # Make sure the full phase spans at least two seconds, so the worker retries into it.
    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
    full_seconds = time.monotonic() - started
    worker_errors = bot.count("could not record the score of memory") - errors_before

    # Space returns: everything works again, and the worker catches up.
    bot.set_limit(None)
    llm.responders[CLASSIFIER_MODEL] = lambda body: Answer('{"significance": 1}')
    for lane in lanes:
        assert await turn(fake, db_path, lane, text("recovered"), ledger) == "stored"
    pinned = await command(fake, ALICE, "memory pin", id=alices[0][0])
    assert pinned.startswith(f"Pinned #{alices[0][0]}"), pinned

    cycles = await random_fault_cycles(bot, fake, db_path, lanes, ledger, text, choke, random_cycles)

    catch_up = await wait_until_scored(db_path, bot, timeout=30 + (BACKOFF_MAX_SECONDS if random_cycles else 0))
    assert await bot.stop() == 0, bot.log_tail()
    assert bot.count("Traceback") == 0, bot.log_tail(80)
    assert GENERIC_COMMAND_ERROR not in "\n".join(i.text() for i in fake.interactions)
    check_database(db_path, tmp_path, ledger)
    return {
        "faults": 2 + cycles["faults"],
        "turns": len(ledger.texts),
        "stored": len(ledger.stored),
        "noted": len(ledger.noted),
        "lost": 0,
        "worker_write_errors": worker_errors + cycles["worker_errors"],
        "full_seconds": round(full_seconds + cycles["full_seconds"], 1),
        "command_errors": 2 + cycles["command_errors"],
        "random_cycles": random_cycles,
        "hard_io_error_cycles": cycles["hard_io_error_cycles"],
        "cycles_with_failed_turns": cycles["cycles_with_failed_turns"],
        "scoring_caught_up_seconds": round(catch_up, 1),
    }


@contextlib.asynccontextmanager
async def background_traffic(fake, db_path, lanes, ledger, text, rng):
    """Messages in every lane, one after another, until the block ends; each is stored or noted."""
    stop = asyncio.Event()

    async def traffic(lane: Lane) -> None:
        while not stop.is_set():
            await turn(fake, db_path, lane, text(f"soak-{lane.name}"), ledger)
            await asyncio.sleep(rng.uniform(0, 0.1))

    workers = [asyncio.create_task(traffic(lane)) for lane in lanes]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*workers)


async def random_fault_cycles(bot, fake, db_path, lanes, ledger, text, choke, cycles: int) -> dict:
    """Continuous traffic in every lane while the disk fills and empties `cycles` times."""
    stats = Counter(faults=0, worker_errors=0, full_seconds=0.0, command_errors=0)
    if not cycles:
        return stats
    rng = random.Random(20260301)
    errors_before = bot.count("could not record the score of memory")
    async with background_traffic(fake, db_path, lanes, ledger, text, rng):
        for _ in range(cycles):
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            noted_before = len(ledger.noted)
            hard = rng.random() < 0.5
            choke(hard)
            stats["faults"] += 1
            stats["hard_io_error_cycles"] += hard
            started = time.monotonic()
            if rng.random() < 0.4:
                own = query(db_path, "SELECT id FROM memories WHERE author_id = ? ORDER BY random() LIMIT 1", (ALICE,))
                answer = await command(
                    fake, ALICE, "memory unpin" if rng.random() < 0.5 else "memory pin", id=own[0][0]
                )
                assert STORAGE_ERROR.match(answer) or answer.startswith(("Pinned", "Unpinned", "#")), answer
                stats["command_errors"] += bool(STORAGE_ERROR.match(answer))
            await asyncio.sleep(rng.uniform(0.1, 2.5))
            stats["full_seconds"] += time.monotonic() - started
            bot.set_limit(None)
            stats["cycles_with_failed_turns"] += len(ledger.noted) > noted_before
    stats["worker_errors"] = bot.count("could not record the score of memory") - errors_before
    return stats


# The backup folder


async def fill_database(db_path: Path, count: int, size: int) -> None:
    """A database of `count` scored memories of about `size` bytes each, written by the storage layer."""
    db = await Database.open(db_path)
    try:
        for i in range(count):
            record = TurnRecord(SCOPE_A, LISTEN_CHANNEL, ALICE, "Alice", "Mnemo", f"old {i} " + "x" * size, "ok")
            memory_id = await write_memory(db, record)
            await record_significance(db, memory_id, 1, model="seed", pin_cap=8)
    finally:
        await db.close()


def backup_files(backups_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(backups_dir.iterdir())}


def stray_files(backups_dir: Path) -> list[str]:
    """Temporary files, and journals, that a failed backup must not leave behind."""
    return sorted(
        p.name
        for p in backups_dir.iterdir()
        if p.name.startswith(backups.TEMP_PREFIX) or p.name.endswith(("-journal", "-wal", "-shm"))
    )


async def test_backup_folder_write_errors_keep_the_good_backups(tmp_path, discord_fake, llm_fake, bots):
    report = await backup_faults(tmp_path, discord_fake, llm_fake, bots, cycles=1)
    print(f"\nbackup faults (short): {report}")


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_backup_folder_write_errors_soak(tmp_path, discord_fake, llm_fake, bots):
    report = await backup_faults(tmp_path, discord_fake, llm_fake, bots, cycles=60)
    print(f"\nbackup faults (soak): {report}")


async def backup_faults(tmp_path: Path, fake: FakeDiscord, llm: FakeLLM, bots: list[LimitedBot], *, cycles: int):
    config = write_config(tmp_path, fake, llm, extra="[backup]\nkeep = 3\n")
    data = tmp_path / "data"
    db_path = data / "memory.db"
    backups_dir = data / "backups"
    await fill_database(db_path, count=60, size=20_000)
    now = datetime.now(UTC)
    good = [
        backups.take_backup(db_path, backups_dir, kind="nightly", now=now - timedelta(days=2)),
        backups.take_backup(db_path, backups_dir, kind="manual", now=now - timedelta(days=1)),
    ]
    originals = backup_files(backups_dir)
    database_bytes = db_path.stat().st_size
    # The live database only ever appends to its small write-ahead log here, far
    # below the cap, but a backup must write the whole database: it cannot fit.
    limit = database_bytes // 2
    assert limit > 256 * 1024
    bot = LimitedBot(config, limit=limit, nightly_retry_seconds=1.5)
    bots.append(bot)
    await bot.start(fake)
    lanes = lanes_for(fake)
    ledger = Ledger()

    # Failing continuously: the start-up catch-up nightly fails, and so does every retry.
    await bot.wait_for_log("nightly backup failed", 2)
    assert await turn(fake, db_path, lanes[0], "the disk is full but I still talk", ledger) == "stored"
    manual = await command(fake, APP_OWNER, "backup now")
    assert manual.startswith("Sorry, the backup failed: disk I/O error") and "Earlier backups are untouched" in manual
    status = await command(fake, APP_OWNER, "status")
    assert "Last attempt **failed**" in status and "disk I/O error" in status, status
    assert re.search(r"Next <t:\d+:f>", status), status
    assert backup_files(backups_dir) == originals, "a failed backup changed the backup folder"
    assert stray_files(backups_dir) == []
    nightly_failures = bot.count("nightly backup failed")

    # Space returns: the next retry takes the nightly backup.
    bot.set_limit(None)
    await bot.wait_for_log("-nightly.db taken")
    nightly = backups.newest_backup(backups_dir, "nightly")
    assert nightly is not None and nightly.taken_at.date() == datetime.now(UTC).date()
    assert backups.verify_backup(nightly.path).last_event_id >= query(db_path, "SELECT max(seq) FROM events")[0][0] - 1
    status = await command(fake, APP_OWNER, "status")
    assert "**failed**" not in status and nightly.name in status, status
    retries = bot.count("the nightly backup will be retried")

    # Then, `cycles` times: the folder fills up, one to three backups fail (the first
    # round fails once), space returns and the next one works. The long run keeps
    # turns coming meanwhile.
    rng = random.Random(1729)
    counter = iter(range(1, 1_000_000))

    def text(what: str) -> str:
        return f"{what} turn {next(counter)}: " + "a fact worth keeping " * 5

    stats = Counter(manual_failures=1, manual_taken=0)
    traffic = background_traffic(fake, db_path, lanes, ledger, text, rng) if cycles > 1 else contextlib.nullcontext()
    async with traffic:
        for cycle in range(cycles):
            if cycles == 1:
                assert await turn(fake, db_path, lanes[0], "between backups", ledger) == "stored"
            kept = backup_files(backups_dir)
            bot.set_limit(limit)
            for _ in range(1 if cycle == 0 else rng.randint(1, 3)):
                failed = await command(fake, APP_OWNER, "backup now")
                assert failed.startswith("Sorry, the backup failed:"), failed
                stats["manual_failures"] += 1
                assert backup_files(backups_dir) == kept and stray_files(backups_dir) == []
            bot.set_limit(None)
            ok = await command(fake, APP_OWNER, "backup now")
            assert ok.startswith("Backup taken:"), ok
            name = re.search(r"`(memory-[^`]+\.db)`", ok)[1]
            assert (backups_dir / name).exists(), f"{name} was reported taken but is not there"
            backups.verify_backup(backups_dir / name)
            stats["manual_taken"] += 1
            await asyncio.sleep(rng.uniform(0, 0.3))

    catch_up = await wait_until_scored(db_path, bot, timeout=30 + (BACKOFF_MAX_SECONDS if cycles > 1 else 0))
    assert await bot.stop() == 0, bot.log_tail()
    listed = backups.list_backups(backups_dir)
    for info in listed:
        assert info.verified, info.name
        backups.verify_backup(info.path)
    # The backups taken before the faults are byte for byte as they were (keep = 3 may
    # rotate the manual one out in the long run, never change it).
    for name, data in originals.items():
        if (backups_dir / name).exists():
            assert (backups_dir / name).read_bytes() == data
    assert good[0].name in {i.name for i in listed}
    assert stray_files(backups_dir) == []
    check_database(db_path, tmp_path, ledger, seeded=60)
    return {
        "limit_bytes": limit,
        "database_bytes": database_bytes,
        "nightly_failures": nightly_failures,
        "nightly_retries_scheduled": retries,
        "manual_failures": stats["manual_failures"],
        "manual_taken": stats["manual_taken"],
        "backups_kept_verified": len(listed),
        "turns": len(ledger.texts),
        "noted": len(ledger.noted),
        "lost": 0,
        "scoring_caught_up_seconds": round(catch_up, 1),
    }


async def test_a_backup_just_taken_is_never_pruned_even_many_in_one_second(tmp_path):
    """Found by the backup soak: with more than `keep` backups of a kind in one second, a new
    backup reused a pruned name, sorted as the oldest, and was deleted as soon as it was taken."""
    db_path = tmp_path / "data" / "memory.db"
    await fill_database(db_path, count=3, size=10)
    backups_dir = tmp_path / "data" / "backups"
    moment = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    taken = []
    for _ in range(5):
        info = await asyncio.to_thread(backups.take_backup, db_path, backups_dir, kind="manual", now=moment, keep=2)
        assert info.path.exists(), f"{info.name} was pruned as soon as it was taken"
        taken.append(info.name)
    assert len(set(taken)) == 5
    assert [b.name for b in backups.list_backups(backups_dir)] == taken[-2:]


async def test_a_snapshot_just_written_is_never_pruned_even_many_in_one_second(tmp_path):
    """The same for snapshots, whose serial numbers also sorted by name (-2 before the first)."""
    db_path = tmp_path / "data" / "memory.db"
    await fill_database(db_path, count=3, size=10)
    snapshots_dir = tmp_path / "data" / "snapshots"
    moment = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    written = []
    for _ in range(12):
        info = await asyncio.to_thread(
            snapshots.write_snapshot, db_path, snapshots_dir, kind="manual", now=moment, keep=2
        )
        assert info.path.exists(), f"{info.name} was pruned as soon as it was written"
        written.append(info.name)
    assert [s.name for s in snapshots.list_snapshots(snapshots_dir)] == written[-2:]


# A disk that is really full


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs, unmounted afterwards; the test is skipped where mounting is not allowed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


# Turns sent to a full disk before one must fail to be saved: the WAL file can hold a few.
MAX_TURNS_UNTIL_FULL = 60


def fill_up(directory: Path) -> Path:
    """Write a ballast file until the filesystem has no room left; returns it."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return ballast


async def test_a_full_disk_for_real(tmp_path, small_disk, discord_fake, llm_fake, bots):
    report = await full_disk(tmp_path, small_disk, discord_fake, llm_fake, bots, rounds=1)
    print(f"\nfull disk (short): {report}")


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_a_full_disk_for_real_soak(tmp_path, small_disk, discord_fake, llm_fake, bots):
    report = await full_disk(tmp_path, small_disk, discord_fake, llm_fake, bots, rounds=10)
    print(f"\nfull disk (soak): {report}")


async def full_disk(
    tmp_path: Path, disk: Path, fake: FakeDiscord, llm: FakeLLM, bots: list[LimitedBot], *, rounds: int
):
    """The data folder on a small tmpfs that fills up (ENOSPC: SQLite's "database or disk is full")."""
    config = write_config(disk, fake, llm)
    db_path = disk / "data" / "memory.db"
    backups_dir = disk / "data" / "backups"
    bot = LimitedBot(config, log_path=tmp_path / "bot.log")
    bots.append(bot)
    await bot.start(fake)
    await bot.wait_for_log("-nightly.db taken")  # the start-up catch-up
    lanes = lanes_for(fake)
    ledger = Ledger()
    counter = iter(range(1, 1_000_000))
    stats = {"rounds": rounds, "noted": 0, "full_answers": 0, "backup_failures": 0}

    for round_ in range(rounds):
        for lane in lanes:
            text = f"round {round_} turn {next(counter)}: " + "something to keep " * 30
            assert await turn(fake, db_path, lane, text, ledger) == "stored"
        kept = backup_files(backups_dir)
        ballast = fill_up(disk)
        # Full: turns are answered, and noted as not saved once the log cannot grow. Until then
        # they may still fit in the room SQLite's files already hold (a WAL reused after a checkpoint).
        outcomes: list[str] = []
        while "noted" not in outcomes and len(outcomes) < MAX_TURNS_UNTIL_FULL:
            for lane in lanes:
                text = f"full {round_} {next(counter)}: " + "lost words " * 40
                outcomes.append(await turn(fake, db_path, lane, text, ledger))
        assert "noted" in outcomes, outcomes
        stats["noted"] += outcomes.count("noted")
        own = query(db_path, "SELECT id FROM memories WHERE author_id = ? ORDER BY id DESC LIMIT 1", (ALICE,))[0][0]
        if round_ % 2 == 0:
            # A pin appends to the log, which cannot grow: SQLITE_FULL, in plain words.
            answer = await command(fake, ALICE, "memory pin", id=own)
            assert answer.startswith("Sorry, I couldn't do that: my storage is full, so nothing was changed"), answer
            stats["full_answers"] += 1
        else:
            # Unpinning what is not pinned writes nothing, so it still works.
            answer = await command(fake, ALICE, "memory unpin", id=own)
            assert answer.startswith(f"#{own} isn't pinned."), answer
        failed = await command(fake, APP_OWNER, "backup now")
        assert failed.startswith("Sorry, the backup failed: database or disk is full"), failed
        stats["backup_failures"] += 1
        assert backup_files(backups_dir) == kept and stray_files(backups_dir) == []
        status = await command(fake, APP_OWNER, "status")
        assert "Last attempt **failed**" in status and "database or disk is full" in status, status

        # Space returns.
        ballast.unlink()
        for lane in lanes:
            assert await turn(fake, db_path, lane, f"room again {round_} {next(counter)}", ledger) == "stored"
        taken = await command(fake, APP_OWNER, "backup now")
        assert taken.startswith("Backup taken:"), taken

    stats["scoring_caught_up_seconds"] = round(
        await wait_until_scored(db_path, bot, timeout=30 + (BACKOFF_MAX_SECONDS if rounds > 1 else 0)), 1
    )
    assert await bot.stop() == 0, bot.log_tail()
    for info in backups.list_backups(backups_dir):
        backups.verify_backup(info.path)
    assert stray_files(backups_dir) == []
    check_database(db_path, tmp_path, ledger)
    stats.update(turns=len(ledger.texts), stored=len(ledger.stored), lost=0)
    return stats
