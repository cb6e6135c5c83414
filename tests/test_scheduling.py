"""The nightly schedule with a controllable clock: one backup a day, whatever the clocks and restarts do."""

import asyncio
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from zoneinfo import ZoneInfo

import pytest
from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent

from companion import operations
from companion.config import parse_config
from companion.operations import (
    CATCH_UP_JOB_ID,
    MISFIRE_GRACE_SECONDS,
    NIGHTLY_JOB_ID,
    NIGHTLY_LATE_JOB_ID,
    NIGHTLY_RETRY_JOB_ID,
    SNAPSHOT_JOB_ID,
    Operations,
    nightly_due,
    nightly_trigger,
)
from companion.worker import SignificanceWorker
from storage import backups
from storage.backup_target import SQLiteBackups
from storage.backups import BackupError
from storage.commands import TurnRecord, write_memory
from storage.database import Database
from storage.scope import Scope
from storage.sqlite_store import SQLiteStore

HELSINKI = ZoneInfo("Europe/Helsinki")
SCOPE = Scope.for_guild(1000, 10)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def local(tz: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold).astimezone(UTC)


@pytest.fixture
async def make_ops(tmp_path):
    """Build Operations over a real database in tmp_path, with a fake clock; stopped at the end."""
    made: list[Operations] = []
    dbs: list[Database] = []

    async def make(clock: FakeClock, **backup: object) -> Operations:
        config = parse_config(
            {"storage": {"data_dir": str(tmp_path / "data")}, "backup": backup}, source=tmp_path / "config.toml"
        )
        db = await Database.open(config.storage.database_path, snapshots_dir=config.storage.snapshots_dir)
        dbs.append(db)
        worker = SignificanceWorker(SQLiteStore(db), None, concurrency=1, pin_cap=8, rescan_seconds=60)  # type: ignore[arg-type]
        target = SQLiteBackups(db, db.path, config.storage.backups_dir, config.storage.snapshots_dir)
        ops = Operations(config, target, db, worker, pause_turns=lambda reason: None, clock=clock)
        made.append(ops)
        return ops

    yield make
    for ops in made:
        await ops.stop()
    for db in dbs:
        await db.close()


def nightly_days(ops: Operations, tz: ZoneInfo) -> Counter:
    return Counter(
        b.taken_at.astimezone(tz).date() for b in backups.list_backups(ops.backups_dir) if b.kind == "nightly"
    )


async def settle(ops: Operations) -> None:
    """Wait until the start-up catch-up job has run to the end."""
    async with asyncio.timeout(5):
        while ops.scheduler is not None and ops.scheduler.get_job(CATCH_UP_JOB_ID) is not None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        async with ops._lock:
            pass


def test_nightly_due_rules():
    at, tz = wall_time(3, 0), HELSINKI
    today_0300 = local(tz, 2026, 6, 10, 3, 0)
    yesterday_0300 = today_0300 - timedelta(days=1)
    cases = [
        # (now, newest nightly, due?)
        (today_0300, None, True),  # never backed up
        (today_0300 - timedelta(hours=5), None, True),  # never backed up, even before 03:00
        (today_0300, yesterday_0300, True),  # the scheduled run
        (today_0300 + timedelta(hours=5), yesterday_0300, True),  # a loop busy at 03:00: late, still today's
        (today_0300 - timedelta(minutes=1), yesterday_0300, False),  # not time yet, and yesterday's is fresh
        (today_0300 - timedelta(hours=1), yesterday_0300 - timedelta(days=1), True),  # catch-up: two days old
        (today_0300 + timedelta(minutes=1), today_0300, False),  # today's is done
        (today_0300 + timedelta(hours=20), today_0300 - timedelta(hours=2), False),  # done early today (catch-up)
    ]
    for now, newest, expected in cases:
        assert nightly_due(now, newest, at=at, tz=tz) is expected, (now, newest)


@pytest.mark.parametrize(
    ("zone", "at", "start", "change_day", "fires_that_day"),
    [
        ("Europe/Helsinki", "03:00", date(2026, 3, 20), date(2026, 3, 29), 1),  # 03:00 jumps to 04:00
        ("Europe/Helsinki", "03:30", date(2026, 10, 18), date(2026, 10, 25), 2),  # 03:30 happens twice
        ("America/New_York", "02:30", date(2026, 3, 1), date(2026, 3, 8), 1),  # 02:30 does not exist
        ("America/New_York", "01:30", date(2026, 10, 25), date(2026, 11, 1), 2),  # 01:30 happens twice
        ("UTC", "03:00", date(2026, 3, 20), date(2026, 3, 29), 1),
    ],
    ids=["helsinki-spring", "helsinki-autumn", "new-york-spring", "new-york-autumn", "utc"],
)
def test_exactly_one_nightly_backup_per_day_across_a_clock_change(zone, at, start, change_day, fires_that_day):
    tz = ZoneInfo(zone)
    config = parse_config({"backup": {"time": at, "timezone": zone}})
    trigger = nightly_trigger(config.backup)
    end = datetime.combine(start + timedelta(days=14), wall_time(0), tzinfo=tz)
    taken: list[datetime] = []
    fires: Counter = Counter()
    fire = trigger.get_next_fire_time(None, datetime.combine(start, wall_time(0), tzinfo=tz))
    while fire < end:
        fires[fire.astimezone(tz).date()] += 1
        now = fire.astimezone(UTC)
        if nightly_due(
            now, taken[-1] if taken else None, at=wall_time(config.backup.hour, config.backup.minute), tz=tz
        ):
            taken.append(now)
        fire = trigger.get_next_fire_time(fire, fire)
    days = Counter(moment.astimezone(tz).date() for moment in taken)
    assert days == Counter({start + timedelta(days=i): 1 for i in range(14)})
    # Where the trigger fired twice in a day, the guard took one backup.
    assert fires[change_day] == fires_that_day


async def test_one_backup_a_day_across_a_dst_change_and_restarts_at_backup_time(make_ops):
    clock = FakeClock(local(HELSINKI, 2026, 10, 22, 12, 0))
    ops = await make_ops(clock, time="03:30", timezone="Europe/Helsinki")
    await write_memory(ops.db, TurnRecord(SCOPE, 5, 7, "alice", "Mnemo", "hello", "hi"))

    async def run_at(moment: datetime) -> None:
        clock.now = moment
        await ops.nightly_backup()

    trigger = nightly_trigger(ops.config.backup)
    fire = trigger.get_next_fire_time(None, clock.now.astimezone(HELSINKI))
    restarts = {
        # Down from 03:29 to 03:30:00 exactly: the fire was lost, the catch-up at start runs.
        date(2026, 10, 24): [local(HELSINKI, 2026, 10, 24, 3, 30, 0)],
        # Restarted half a minute after the backup: the catch-up finds today's and does nothing.
        date(2026, 10, 27): [None, local(HELSINKI, 2026, 10, 27, 3, 30, 30)],
        # Up again at 03:29:59: the catch-up is too early, the fire a second later runs.
        date(2026, 10, 28): [local(HELSINKI, 2026, 10, 28, 3, 29, 59), None],
    }
    while fire.astimezone(HELSINKI).date() < date(2026, 10, 30):
        day = fire.astimezone(HELSINKI).date()
        for moment in restarts.get(day, [None]):
            await run_at(fire.astimezone(UTC) if moment is None else moment)
        fire = trigger.get_next_fire_time(fire, fire)

    days = nightly_days(ops, HELSINKI)
    assert days == Counter({date(2026, 10, d): 1 for d in range(23, 30)})  # the 25th fired twice


async def test_start_up_tidies_and_catches_up_only_when_the_newest_backup_is_old(make_ops):
    clock = FakeClock(local(HELSINKI, 2026, 6, 10, 1, 0))
    ops = await make_ops(clock, time="03:00", timezone="Europe/Helsinki")
    backups.take_backup(ops.db.path, ops.backups_dir, kind="nightly", now=clock.now - timedelta(days=2))
    # What a crash in the middle of a backup and of a snapshot left behind.
    crashed = [ops.backups_dir / ".tmp-memory-20260609T000000Z-manual.db", ops.snapshots_dir / ".tmp-snapshot-x.db"]
    for leftover in crashed:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a file")
    await ops.start()
    await settle(ops)
    assert nightly_days(ops, HELSINKI) == Counter({date(2026, 6, 8): 1, date(2026, 6, 10): 1})
    assert not any(leftover.exists() for leftover in crashed)

    # A restart an hour later finds today's backup: nothing more.
    await ops.stop()
    clock.now += timedelta(hours=3)
    again = await make_ops(clock, time="03:00", timezone="Europe/Helsinki")
    await again.start()
    await settle(again)
    assert nightly_days(again, HELSINKI) == Counter({date(2026, 6, 8): 1, date(2026, 6, 10): 1})


async def test_jobs_have_fixed_ids_a_generous_misfire_grace_and_the_configured_zone(make_ops):
    ops = await make_ops(FakeClock(datetime.now(UTC)), time="02:30", timezone="America/New_York")
    await ops.start()
    await settle(ops)
    jobs = {job.id: job for job in ops.scheduler.get_jobs()}
    assert set(jobs) == {NIGHTLY_JOB_ID, SNAPSHOT_JOB_ID}
    nightly = jobs[NIGHTLY_JOB_ID]
    assert nightly.misfire_grace_time == MISFIRE_GRACE_SECONDS >= 3600 and nightly.coalesce
    assert str(nightly.trigger.timezone) == "America/New_York"
    next_local = nightly.next_run_time.astimezone(ZoneInfo("America/New_York"))
    assert (next_local.hour, next_local.minute) in ((2, 30), (3, 30))  # 03:30 only on the spring change day
    status = await ops.status()
    assert status.running and status.next_backup_at is not None and status.next_snapshot_at is not None


async def test_job_errors_and_missed_runs_are_recorded_for_status(make_ops):
    ops = await make_ops(FakeClock(datetime.now(UTC)))
    await ops.start()
    await settle(ops)

    async def broken() -> None:
        raise RuntimeError("the disk caught fire")

    async def never_mind() -> None:
        return None

    ops.scheduler.add_job(broken, id="broken")
    ops.scheduler.add_job(
        never_mind, "date", run_date=datetime.now(UTC) - timedelta(minutes=5), id="late", misfire_grace_time=1
    )
    async with asyncio.timeout(5):
        while (await ops.status()).job_errors < 1 or (await ops.status()).misfires < 1:
            await asyncio.sleep(0.02)
    status = await ops.status()
    assert (status.job_errors, status.misfires) == (1, 1)
    assert sorted((p.job_id, p.kind) for p in status.problems) == [("broken", "error"), ("late", "missed")]
    assert "the disk caught fire" in next(p.detail for p in status.problems if p.kind == "error")


async def test_a_failed_nightly_backup_is_shown_and_retried_and_keeps_the_good_one(make_ops, monkeypatch):
    clock = FakeClock(local(HELSINKI, 2026, 6, 10, 3, 0))
    ops = await make_ops(clock, time="03:00", timezone="Europe/Helsinki")
    good = backups.take_backup(ops.db.path, ops.backups_dir, kind="nightly", now=clock.now - timedelta(days=1))
    real_take = backups.take_backup

    def disk_full(*args, **kwargs):
        raise BackupError("backup failed: database or disk is full")

    monkeypatch.setattr(operations.backups, "take_backup", disk_full)
    await ops.start()
    await settle(ops)  # the catch-up at 03:00 is today's backup, and it fails
    status = await ops.status()
    assert status.last_backup is not None and not status.last_backup.ok
    assert "disk is full" in status.last_backup.detail
    assert status.job_errors == 1 and status.problems[-1].job_id == CATCH_UP_JOB_ID
    assert status.newest_backup is not None and status.newest_backup.name == good.name
    retry = ops.scheduler.get_job(NIGHTLY_RETRY_JOB_ID)
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    assert retry is not None and abs(retry.next_run_time - in_an_hour) < timedelta(minutes=1)
    assert status.next_backup_at == retry.next_run_time
    with pytest.raises(BackupError):
        await ops.nightly_backup()

    # An hour later the disk has room again: the retry takes today's backup.
    monkeypatch.setattr(operations.backups, "take_backup", real_take)
    clock.now += timedelta(hours=1)
    taken = await ops.nightly_backup()
    assert taken is not None and (await ops.status()).last_backup.ok
    assert nightly_days(ops, HELSINKI) == Counter({date(2026, 6, 9): 1, date(2026, 6, 10): 1})


async def test_periodic_snapshot_only_when_events_were_appended(make_ops):
    ops = await make_ops(FakeClock(datetime(2026, 6, 10, 12, tzinfo=UTC)))
    await write_memory(ops.db, TurnRecord(SCOPE, 5, 7, "alice", "Mnemo", "hello", "hi"))
    first = await ops.periodic_snapshot()
    assert first is not None and first.seq == 1
    ops.clock.now += timedelta(hours=1)
    assert await ops.periodic_snapshot() is None
    await write_memory(ops.db, TurnRecord(SCOPE, 5, 7, "alice", "Mnemo", "again", "hi"))
    ops.clock.now += timedelta(hours=1)
    second = await ops.periodic_snapshot()
    assert second is not None and second.seq == 2


async def test_a_missed_nightly_run_is_taken_late_rather_than_skipped(make_ops):
    clock = FakeClock(local(HELSINKI, 2026, 6, 10, 3, 0))
    ops = await make_ops(clock, time="03:00", timezone="Europe/Helsinki")
    await ops.start()
    await settle(ops)
    assert nightly_days(ops, HELSINKI) == Counter({date(2026, 6, 10): 1})
    # The host slept through the next night's 03:00 and past the misfire grace.
    clock.now = local(HELSINKI, 2026, 6, 11, 10, 30)
    missed_at = local(HELSINKI, 2026, 6, 11, 3, 0)
    ops._on_job_event(JobExecutionEvent(EVENT_JOB_MISSED, NIGHTLY_JOB_ID, "default", missed_at))
    async with asyncio.timeout(5):
        while nightly_days(ops, HELSINKI) != Counter({date(2026, 6, 10): 1, date(2026, 6, 11): 1}):
            await asyncio.sleep(0.02)
    assert ops.scheduler.get_job(NIGHTLY_LATE_JOB_ID) is None  # it ran once
    # Another missed event the same day takes nothing more.
    ops._on_job_event(JobExecutionEvent(EVENT_JOB_MISSED, NIGHTLY_JOB_ID, "default", missed_at))
    await asyncio.sleep(0.3)
    async with ops._lock:
        pass
    assert nightly_days(ops, HELSINKI) == Counter({date(2026, 6, 10): 1, date(2026, 6, 11): 1})
