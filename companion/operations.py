"""Backups, snapshots and restores, run on the bot's loop.

APScheduler (3.x, in-memory job store) fires the nightly backup and the
periodic snapshot; the blocking work runs in threads on connections of its
own, so turns go on meanwhile. Every operation takes one asyncio lock, so a
backup, a snapshot and a restore never overlap.

The nightly schedule is a cron trigger in the configured timezone plus a
guard, `nightly_due`, that looks at the newest nightly backup on disk. The
guard makes the trigger's quirks harmless: a wall-clock time that happens
twice on the autumn clock change runs once, one skipped on the spring change
fires at the first instant after it, a run delayed by a busy loop still
counts for its day, and a restart (the in-memory store forgets missed runs)
is covered by a catch-up check at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as wall_time
from functools import partial
from typing import Protocol
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from companion.config import BackupConfig, Config
from companion.worker import SignificanceWorker
from storage import backups, snapshots
from storage.backup_target import BackupTarget
from storage.backups import BackupError, BackupInfo
from storage.database import Database
from storage.snapshots import SnapshotError, SnapshotInfo

log = logging.getLogger(__name__)

NIGHTLY_JOB_ID = "backup-nightly"
NIGHTLY_RETRY_JOB_ID = "backup-nightly-retry"
NIGHTLY_LATE_JOB_ID = "backup-nightly-late"
CATCH_UP_JOB_ID = "backup-catch-up"
ELECTION_JOB_ID = "scheduler-election"
SNAPSHOT_JOB_ID = "snapshot-periodic"
# Jobs run late rather than not at all: a busy loop, or a suspended machine.
MISFIRE_GRACE_SECONDS = 6 * 3600
JOB_DEFAULTS = {"misfire_grace_time": MISFIRE_GRACE_SECONDS, "coalesce": True, "max_instances": 1}
# The start-up catch-up: a nightly backup older than this is overdue.
CATCH_UP_AFTER = timedelta(hours=24)
NIGHTLY_RETRY_AFTER = timedelta(hours=1)
# How long stopping waits for a backup under way to finish.
STOP_WAIT_SECONDS = 10.0
# How long a restore waits for in-flight turns and scoring before copying.
RESTORE_SETTLE_SECONDS = 10.0
RESTORING_REPLY = "I'm restoring my memory from a backup, back in a moment."
RECENT_PROBLEMS = 10
# Worded to follow "the " in the command's answer.
NO_SNAPSHOTS = (
    "snapshot is not available: PostgreSQL keeps none, as its projections change in the same transaction as the log"
)

# How often a process that does not run the scheduled jobs asks whether it should now.
ELECTION_SECONDS = 60.0

Progress = Callable[[str], Awaitable[None]]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def nightly_trigger(config: BackupConfig) -> CronTrigger:
    return CronTrigger(hour=config.hour, minute=config.minute, timezone=ZoneInfo(config.timezone))


def nightly_due(now: datetime, newest_nightly: datetime | None, *, at: wall_time, tz: ZoneInfo) -> bool:
    """Whether a nightly backup should be taken now.

    Never twice on one calendar day (in `tz`). Otherwise yes once today's
    time `at` has passed, or, earlier in the day, if the newest nightly
    backup is more than about a day old (none at all counts as old).
    """
    today = now.astimezone(tz).date()
    if newest_nightly is not None and newest_nightly.astimezone(tz).date() == today:
        return False
    # A time that does not exist today (a spring clock change) maps to the instant after the gap.
    scheduled_today = datetime.combine(today, at, tzinfo=tz)
    if now >= scheduled_today:
        return True
    return newest_nightly is None or now - newest_nightly >= CATCH_UP_AFTER


class Leadership(Protocol):
    """Which process runs the scheduled jobs when several share one database."""

    shared: bool  # whether other processes may take part at all
    leading: bool  # the answer when last asked

    async def lead(self) -> bool:
        """Whether this process runs the scheduled jobs now (asking takes the lead if it is free)."""
        ...

    async def close(self) -> None: ...


class SoleLeadership:
    """One process owns a SQLite data folder (storage/datadir_lock.py): it always runs the jobs."""

    shared = False
    leading = True

    async def lead(self) -> bool:
        return True

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Outcome:
    """The last attempt at an operation."""

    at: datetime
    ok: bool
    detail: str  # the file name, or what went wrong


@dataclass(frozen=True)
class JobProblem:
    job_id: str
    at: datetime
    kind: str  # "error" or "missed"
    detail: str


@dataclass(frozen=True)
class OperationsStatus:
    running: bool
    busy: str | None  # the operation under way, if any
    newest_backup: BackupInfo | None
    last_backup: Outcome | None
    next_backup_at: datetime | None
    newest_snapshot: SnapshotInfo | None
    last_snapshot: Outcome | None
    next_snapshot_at: datetime | None
    job_errors: int
    misfires: int
    problems: tuple[JobProblem, ...]
    # None with one process alone (SQLite); else whether this one runs the scheduled jobs.
    leading: bool | None = None
    has_snapshots: bool = True  # False where the backend keeps none (PostgreSQL)


@dataclass(frozen=True)
class RestoreReport:
    backup: BackupInfo
    safety_backup: BackupInfo
    last_event_id: int
    seconds: float


class Operations:
    """Owns the scheduler and runs backups, snapshots and restores one at a time."""

    def __init__(
        self,
        config: Config,
        backup_target: BackupTarget,
        db: Database | None,
        worker: SignificanceWorker,
        *,
        pause_turns: Callable[[str | None], None],
        turns_in_flight: Callable[[], int] = lambda: 0,
        clock: Clock = utc_now,
        leadership: Leadership | None = None,
        election_seconds: float = ELECTION_SECONDS,
    ) -> None:
        self.config = config
        self.backups = backup_target
        # SQLite's database, for its snapshots; None where the backend has none (PostgreSQL).
        self.db = db
        self.worker = worker
        self.pause_turns = pause_turns
        self.turns_in_flight = turns_in_flight
        self.clock = clock
        # Several processes on one PostgreSQL: only the elected one runs the scheduled jobs.
        self.leadership: Leadership = leadership or SoleLeadership()
        self.election_seconds = election_seconds
        self.backups_dir = config.storage.backups_dir
        self.snapshots_dir = config.storage.snapshots_dir
        self.scheduler: AsyncIOScheduler | None = None
        self._lock = asyncio.Lock()
        self._busy: str | None = None
        self._last_backup: Outcome | None = None
        self._last_snapshot: Outcome | None = None
        self._job_errors = 0
        self._misfires = 0
        self._problems: deque[JobProblem] = deque(maxlen=RECENT_PROBLEMS)

    # lifecycle

    async def start(self) -> None:
        """Start the schedule; its first job tidies what a crash left behind and catches up."""
        scheduler = AsyncIOScheduler(timezone=UTC, job_defaults=JOB_DEFAULTS)
        scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        scheduler.add_job(
            self.nightly_backup, nightly_trigger(self.config.backup), id=NIGHTLY_JOB_ID, replace_existing=True
        )
        if self.db is not None:
            scheduler.add_job(
                self.periodic_snapshot,
                IntervalTrigger(minutes=self.config.snapshot.interval_minutes, timezone=UTC),
                id=SNAPSHOT_JOB_ID,
                replace_existing=True,
            )
        if self.leadership.shared:
            # A process that does not run the jobs asks again and again: if the one that did died, its
            # lock went with its connection, and this one takes over within one election period.
            scheduler.add_job(
                self._elect,
                IntervalTrigger(seconds=self.election_seconds, timezone=UTC),
                id=ELECTION_JOB_ID,
                replace_existing=True,
            )
        # No trigger: run once, now (without holding up the bot's start).
        scheduler.add_job(self._start_up, id=CATCH_UP_JOB_ID, replace_existing=True)
        scheduler.start()
        self.scheduler = scheduler

    async def stop(self) -> None:
        """Stop the schedule. A backup already copying in its thread still finishes or
        cleans up after itself: files only get their final name once verified."""
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None and scheduler.running:
            # Let a backup under way finish rather than cut it off (it would only be cleaned up).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_WAIT_SECONDS), self._lock:
                    pass
            scheduler.shutdown(wait=False)
        # Hand the scheduled jobs over to another process at once.
        await self.leadership.close()

    async def _elect(self) -> None:
        was_leading = self.leadership.leading
        if await self.leadership.lead() and not was_leading:
            # Newly in charge: tidy up and take the day's backup if the process before did not.
            await self._start_up()

    async def _start_up(self) -> BackupInfo | None:
        if not await self.leadership.lead():
            return None
        async with self._lock:
            try:
                await asyncio.to_thread(self._tidy_files)
            except Exception:
                # Leftovers are harmless until the next start; the catch-up matters more.
                log.exception("could not tidy the backup and snapshot folders")
        # The guard decides whether a backup is overdue.
        return await self.nightly_backup()

    def _tidy_files(self) -> None:
        leftovers = self.backups.remove_temp_files()
        if self.db is not None:
            leftovers += backups.remove_temp_files(self.snapshots_dir)
        for name in leftovers:
            log.info("removed %s, left by an interrupted backup or snapshot", name)
        if self.db is None:
            return
        scrubbed = snapshots.scrub_forgotten(self.db.path, self.snapshots_dir)
        if scrubbed:
            log.warning("removed forgotten memories from %d snapshots at start", scrubbed)

    # backups

    async def nightly_backup(self) -> BackupInfo | None:
        """The scheduled backup: taken only if `nightly_due` says so. Raises on failure,
        so the scheduler's error listener records it, and retries in an hour."""
        if not await self.leadership.lead():
            return None  # another process runs the scheduled jobs
        async with self._lock:
            now = self.clock()
            newest = await asyncio.to_thread(self.backups.newest, "nightly")
            backup_config = self.config.backup
            is_due = nightly_due(
                now,
                newest.taken_at if newest else None,
                at=wall_time(backup_config.hour, backup_config.minute),
                tz=ZoneInfo(backup_config.timezone),
            )
            if not is_due:
                return None
            try:
                return await self._take_backup("nightly", now)
            except BackupError:
                self._schedule_nightly_retry()
                raise

    async def backup_now(self) -> BackupInfo:
        """A manual backup, whatever the schedule."""
        async with self._lock:
            return await self._take_backup("manual", self.clock())

    async def _take_backup(self, kind: str, now: datetime) -> BackupInfo:
        self._busy = f"{kind} backup"
        try:
            info = await asyncio.to_thread(partial(self.backups.take, kind=kind, now=now, keep=self.config.backup.keep))
        except BackupError as exc:
            self._last_backup = Outcome(self.clock(), False, str(exc))
            log.error("%s backup failed: %s", kind, exc)
            raise
        finally:
            self._busy = None
        self._last_backup = Outcome(now, True, info.name)
        return info

    def _schedule_nightly_retry(self) -> None:
        if self.scheduler is None:
            return
        # The scheduler runs on the real clock, whatever clock decides what is due.
        run_at = utc_now() + NIGHTLY_RETRY_AFTER
        self.scheduler.add_job(
            self.nightly_backup, "date", run_date=run_at, id=NIGHTLY_RETRY_JOB_ID, replace_existing=True
        )
        log.info("the nightly backup will be retried at %s", run_at.isoformat(timespec="minutes"))

    async def list_backups(self) -> list[BackupInfo]:
        """Every backup, newest first."""
        return list(reversed(await asyncio.to_thread(self.backups.list)))

    async def find_backup(self, name: str) -> BackupInfo:
        return await asyncio.to_thread(self.backups.find, name)

    # snapshots

    async def periodic_snapshot(self) -> SnapshotInfo | None:
        """The scheduled snapshot: written only if events were appended since the last one."""
        async with self._lock:
            if self.db is None:
                return None
            is_current = await asyncio.to_thread(snapshots.has_current_snapshot, self.db.path, self.snapshots_dir)
            if is_current:
                return None
            return await self._write_snapshot("periodic")

    async def snapshot_now(self, kind: str = "manual") -> SnapshotInfo:
        """A snapshot now, whether or not anything changed since the last one."""
        async with self._lock:
            return await self._write_snapshot(kind)

    async def _write_snapshot(self, kind: str) -> SnapshotInfo:
        if self.db is None:
            raise SnapshotError(NO_SNAPSHOTS)
        self._busy = f"{kind} snapshot"
        now = self.clock()
        try:
            info = await asyncio.to_thread(
                snapshots.write_snapshot,
                self.db.path,
                self.snapshots_dir,
                kind=kind,
                now=now,
                keep=self.config.snapshot.keep,
            )
        except SnapshotError as exc:
            self._last_snapshot = Outcome(self.clock(), False, str(exc))
            log.error("%s snapshot failed: %s", kind, exc)
            raise
        finally:
            self._busy = None
        self._last_snapshot = Outcome(now, True, info.name)
        return info

    # restore

    async def restore(self, name: str, progress: Progress) -> RestoreReport:
        """Replace the live database with a backup, safely, while turns and scoring wait.

        Raises UnknownBackup or InvalidBackup (nothing changed) or BackupError.
        """
        started = time.monotonic()
        async with self._lock:
            info = await self.find_backup(name)
            self._busy = "restore"
            self.pause_turns(RESTORING_REPLY)
            self.worker.pause()
            try:
                await _report(progress, "New turns and scoring are paused. Checking the backup…")
                await self._settle()
                # A job still waiting for the classifier would record its score in the restored database.
                await self.worker.cancel_in_flight()
                check = await asyncio.to_thread(self.backups.verify, info.path)
                await self._pre_restore_snapshot()
                await _report(
                    progress,
                    f"The backup is sound (events up to #{check.last_event_id}). Taking a safety backup "
                    f"of the current state, then restoring `{info.name}`; new memories wait meanwhile…",
                )
                safety = await self.backups.exclusively(partial(self._back_up_then_restore, info))
            finally:
                # The worker gives back what it had claimed and claims afresh
                # from the restored database.
                await self.worker.resume()
                self.pause_turns(None)
                self._busy = None
        log.info("restored backup %s (events up to #%d)", info.name, check.last_event_id)
        return RestoreReport(info, safety, check.last_event_id, time.monotonic() - started)

    def _back_up_then_restore(self, info: BackupInfo) -> BackupInfo:
        """The safety backup and the restore, with every write held off from the first to the last:
        whatever committed before is in the safety backup, whatever comes after lands in the
        restored database. Returns the safety backup."""
        safety = self.backups.take(
            kind="pre-restore",
            now=self.clock(),
            keep=self.config.backup.keep,
            protect=(info.name,),  # it may be an old safety copy itself
        )
        self.backups.restore(info.path)
        return safety

    async def _settle(self) -> None:
        """Let in-flight turns and scoring finish, briefly, so their writes land in the safety backup."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RESTORE_SETTLE_SECONDS):
                await self.worker.drain()
                # The chat lanes expose a count, not an event to wait on.
                while self.turns_in_flight():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

    async def _pre_restore_snapshot(self) -> None:
        # Only an accelerator for a later rebuild of the replaced timeline; a
        # failure here must not stop the restore.
        if self.db is None:
            return
        try:
            await asyncio.to_thread(
                snapshots.write_snapshot,
                self.db.path,
                self.snapshots_dir,
                kind="pre-restore",
                now=self.clock(),
                keep=self.config.snapshot.keep,
            )
        except SnapshotError as exc:
            log.warning("no pre-restore snapshot: %s", exc)

    # status

    async def status(self) -> OperationsStatus:
        newest_backup = await asyncio.to_thread(self.backups.newest)
        all_snapshots = await asyncio.to_thread(snapshots.list_snapshots, self.snapshots_dir) if self.db else []
        return OperationsStatus(
            running=self.scheduler is not None and self.scheduler.running,
            busy=self._busy,
            newest_backup=newest_backup,
            last_backup=self._last_backup,
            next_backup_at=await self._next_backup_at(),
            newest_snapshot=all_snapshots[-1] if all_snapshots else None,
            last_snapshot=self._last_snapshot,
            next_snapshot_at=self._next_run(SNAPSHOT_JOB_ID),
            job_errors=self._job_errors,
            misfires=self._misfires,
            problems=tuple(self._problems),
            leading=self.leadership.leading if self.leadership.shared else None,
            has_snapshots=self.db is not None,
        )

    def _next_run(self, job_id: str) -> datetime | None:
        job = self.scheduler.get_job(job_id) if self.scheduler is not None else None
        return job.next_run_time if job is not None else None

    async def _next_backup_at(self) -> datetime | None:
        """When the next nightly backup will actually be taken (a fire on a day that has one is skipped)."""
        retry_at = self._next_run(NIGHTLY_RETRY_JOB_ID)
        if retry_at is not None:
            return retry_at
        fire_at = self._next_run(NIGHTLY_JOB_ID)
        if fire_at is None:
            return None
        newest = await asyncio.to_thread(self.backups.newest, "nightly")
        tz = ZoneInfo(self.config.backup.timezone)
        trigger = nightly_trigger(self.config.backup)
        done_day = newest.taken_at.astimezone(tz).date() if newest else None
        while done_day is not None and fire_at.astimezone(tz).date() == done_day:
            fire_at = trigger.get_next_fire_time(fire_at, fire_at)
        return fire_at

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        now = self.clock()
        if event.code == EVENT_JOB_MISSED:
            self._misfires += 1
            detail = f"run due at {event.scheduled_run_time:%Y-%m-%d %H:%M %Z} was missed"
            log.warning("scheduled job %s: %s", event.job_id, detail)
            self._problems.append(JobProblem(event.job_id, now, "missed", detail))
            if event.job_id in (NIGHTLY_JOB_ID, NIGHTLY_RETRY_JOB_ID) and self.scheduler is not None:
                # The loop or the host was held up for hours (a suspended VM): take the day's
                # backup now rather than skip a day. The guard still allows one a day.
                self.scheduler.add_job(self.nightly_backup, id=NIGHTLY_LATE_JOB_ID, replace_existing=True)
        else:
            self._job_errors += 1
            detail = str(event.exception) or type(event.exception).__name__
            log.error("scheduled job %s failed: %s", event.job_id, detail)
            self._problems.append(JobProblem(event.job_id, now, "error", detail))


async def _report(progress: Progress, text: str) -> None:
    # Progress goes to Discord; a failed message must not stop a restore halfway.
    try:
        await progress(text)
    except Exception as exc:
        log.warning("could not report restore progress: %s", exc)
