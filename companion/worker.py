"""The significance worker: scores memories in the background, on the bot's loop.

The database is the source of truth and the worker keeps almost nothing in
memory: it walks the unscored memories in id order from a cursor, a small
batch at a time, with at most `concurrency` classifier calls in flight. A
new memory only wakes it up. A memory whose call failed for a passing reason
(an outage, a busy database) goes back to the front of the queue and is
tried again as soon as the backoff ends. A periodic rescan (and every start)
walks from the beginning again, so work lost to a crash or a shutdown is
picked up without any bookkeeping. Recording a score is idempotent, so a
memory is scored once however often it is found.

Each memory has a budget of MAX_SCORING_FAILURES classifier calls that give
no usable answer, over all its rounds; each such call is one event in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

from companion.llm import LLMError
from companion.significance import MAX_CONTEXT_TURNS, Classifier, UnusableAnswer
from storage.memories import MAX_SCORING_FAILURES
from storage.store import MemoryStore, StoreError

log = logging.getLogger(__name__)

BATCH_SIZE = 32
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 120.0
STOP_GRACE_SECONDS = 5.0
# Endpoint answers that mean "not now" for every memory, not "never" for this one.
OUTAGE_STATUSES = frozenset({401, 403, 404})


@dataclass(frozen=True)
class WorkerStatus:
    running: bool
    queued: int  # ids fetched and waiting for a slot
    in_flight: int
    scored: int
    failures: int  # unusable answers recorded since start
    errors: int  # failed calls (outages) since start
    last_success_at: float | None
    last_error: str | None
    backoff_until: float | None


class SignificanceWorker:
    def __init__(
        self,
        store: MemoryStore,
        classifier: Classifier,
        *,
        concurrency: int,
        pin_cap: int,
        rescan_seconds: float,
        backoff_start_seconds: float = BACKOFF_START_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        self.store = store
        self.classifier = classifier
        self.concurrency = concurrency
        self.pin_cap = pin_cap
        self.rescan_seconds = rescan_seconds
        self.backoff_start_seconds = backoff_start_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._queue: deque[int] = deque()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._cursor = 0
        self._next_rescan = 0.0
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._resumed = asyncio.Event()
        self._feeder: asyncio.Task[None] | None = None
        self._paused = False
        self._backoff = 0.0
        self._backoff_until: float | None = None
        # When the backoff last grew (monotonic): failures of calls started
        # before then belong to a round of the outage already counted.
        self._backoff_grown_at: float | None = None
        self.scored = 0
        self.failures = 0
        self.errors = 0
        self.given_up = 0  # memories that spent their budget of calls since start
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self._last_logged: tuple[int, ...] = ()

    # lifecycle

    def start(self) -> None:
        if self._feeder is None:
            self._rescan_now()
            self._feeder = asyncio.create_task(self._feed(), name="significance-feeder")

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Stop taking work; give in-flight jobs a moment, then cancel them.

        Anything not finished stays unscored in the database and is picked
        up at the next start.
        """
        feeder, self._feeder = self._feeder, None
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        jobs = list(self._in_flight.values())
        if jobs:
            await asyncio.wait(jobs, timeout=grace_seconds)
            unfinished = await self.cancel_in_flight()
            if unfinished:
                log.info(
                    "significance worker stopped with %d jobs unfinished; they resume at next start",
                    unfinished,
                )
        self._queue.clear()

    def pause(self) -> None:
        """Start no new jobs until `resume` (used while a restore runs)."""
        self._paused = True
        self._resumed.clear()

    def resume(self) -> None:
        """Carry on, walking the unscored memories from the start again."""
        self._paused = False
        self._resumed.set()
        self._queue.clear()
        self._rescan_now()

    async def drain(self) -> None:
        """Wait for every in-flight job to finish (giving up the wait leaves them running)."""
        while self._in_flight:
            await asyncio.wait(list(self._in_flight.values()))

    async def cancel_in_flight(self) -> int:
        """Cancel the jobs still running; returns how many. Their memories stay unscored and are
        picked up again."""
        jobs = list(self._in_flight.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        return len(jobs)

    # signals from the rest of the bot

    def notify(self) -> None:
        """A new memory was written."""
        self._wake.set()

    def discard(self, memory_id: int) -> None:
        """Drop a memory from the queue (it was forgotten)."""
        with contextlib.suppress(ValueError):
            self._queue.remove(memory_id)

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            running=self._feeder is not None and not self._feeder.done(),
            queued=len(self._queue),
            in_flight=len(self._in_flight),
            scored=self.scored,
            failures=self.failures,
            errors=self.errors,
            last_success_at=self.last_success_at,
            last_error=self.last_error,
            backoff_until=self._backoff_until if self._backoff_until and self._backoff_until > time.time() else None,
        )

    async def pending_count(self) -> int:
        """Memories in the database still waiting for a score."""
        return await self.store.count_unscored()

    # the feeder

    def _log_progress(self) -> None:
        """Once a rescan period, say where scoring stands, if anything happened or waits."""
        status = self.status()
        summary = (status.queued, status.in_flight, status.scored, status.failures, status.errors)
        if summary == self._last_logged or not any(summary):
            return
        self._last_logged = summary
        since = f"{time.time() - status.last_success_at:.0f}s ago" if status.last_success_at is not None else "never"
        log.info(
            "scoring: %d queued, %d in flight, %d scored, %d failures, %d errors; last success %s",
            *summary,
            since,
        )

    def _rescan_now(self) -> None:
        self._cursor = 0
        self._next_rescan = time.monotonic() + self.rescan_seconds
        self._wake.set()

    async def _feed(self) -> None:
        while True:
            try:
                await self._feed_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database may be briefly unavailable (disk full, a
                # restore); back off and try again rather than die.
                self._note_error(f"feeder: {exc}")
                log.exception("significance feeder failed; retrying")
                await asyncio.sleep(self._grow_backoff())

    async def _feed_once(self) -> None:
        if time.monotonic() >= self._next_rescan:
            self._log_progress()
            self._rescan_now()
        if self._paused:
            await self._wait_event(self._resumed, self._seconds_to_rescan())
            return
        if self._in_backoff():
            await asyncio.sleep(self._backoff_remaining())
            return
        if len(self._in_flight) >= self.concurrency:
            self._slot_free.clear()
            await self._wait_event(self._slot_free, self._seconds_to_rescan())
            return
        if not self._queue:
            # Clear before looking, so a memory written meanwhile still wakes us.
            self._wake.clear()
            ids = await self.store.unscored_memory_ids(after_id=self._cursor, limit=BATCH_SIZE)
            ids = [i for i in ids if i not in self._in_flight]
            if not ids:
                await self._sleep_until_wake(self._seconds_to_rescan())
                # Woken by a new memory: it is past the cursor, keep walking.
                return
            self._queue.extend(ids)
            self._cursor = ids[-1]
        memory_id = self._queue.popleft()
        if memory_id not in self._in_flight:
            self._in_flight[memory_id] = asyncio.create_task(self._run(memory_id), name=f"score-{memory_id}")

    async def _sleep_until_wake(self, seconds: float) -> None:
        await self._wait_event(self._wake, seconds)

    @staticmethod
    async def _wait_event(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.01, seconds)):
                await event.wait()

    def _seconds_to_rescan(self) -> float:
        return max(0.0, self._next_rescan - time.monotonic())

    # one job

    async def _run(self, memory_id: int) -> None:
        try:
            await self._score(memory_id)
        finally:
            self._in_flight.pop(memory_id, None)
            self._slot_free.set()

    async def _score(self, memory_id: int) -> None:
        store = self.store
        started_at = time.monotonic()
        spent = 0  # calls this memory already spent without a usable answer
        try:
            scope = await store.memory_scope(memory_id)
            memory = await store.get_memory(scope, memory_id) if scope else None
            if memory is None or memory.significance is not None or memory.scoring_gave_up:
                return  # forgotten, already scored or out of calls meanwhile
            earlier = await store.memories_before(memory, MAX_CONTEXT_TURNS)
            spent = memory.scoring_failures
            score = await self.classifier.score(memory, earlier, attempts=MAX_SCORING_FAILURES - spent)
            outcome = await store.record_significance(memory_id, score.value, model=score.model, pin_cap=self.pin_cap)
        except UnusableAnswer as exc:
            self.failures += len(exc.problems)
            self.last_error = f"memory #{memory_id}: {exc}"
            log.warning("could not score memory #%s: %s", memory_id, exc)
            await self._record_failure(memory_id, spent, *exc.problems)
            if exc.interrupted_by is not None and _is_outage(exc.interrupted_by):
                self._back_off_for_outage(memory_id, exc.interrupted_by, started_at)
            return
        except LLMError as exc:
            if _is_outage(exc):
                self._back_off_for_outage(memory_id, exc, started_at)
            else:
                self.failures += 1
                self.last_error = f"memory #{memory_id}: classifier refused: {exc.summary}"
                log.warning("classifier refused memory #%s: %s", memory_id, exc.summary)
                await self._record_failure(memory_id, spent, f"classifier refused: {exc.summary}")
            return
        except StoreError as exc:
            self._note_error(f"database: {exc}")
            log.error("could not record the score of memory #%s: %s", memory_id, exc)
            self._grow_backoff()
            self._retry_after_backoff(memory_id)
            return
        self.scored += 1 if outcome.recorded else 0
        self.last_success_at = time.time()
        if self._backoff:
            # The classifier is back: retry what the outage skipped right away.
            self._backoff = 0.0
            self._backoff_until = None
            self._backoff_grown_at = None
            self._rescan_now()
        if outcome.pinned or outcome.unpinned:
            log.info(
                "memory #%s scored %d: pinned=%s, unpinned %s",
                memory_id,
                score.value,
                outcome.pinned,
                outcome.unpinned,
            )

    def _back_off_for_outage(self, memory_id: int, exc: LLMError, started_at: float) -> None:
        delay = self._grow_backoff(failed_call_started_at=started_at)
        self._note_error(f"classifier {exc.summary}")
        self._retry_after_backoff(memory_id)
        log.warning("classifier unavailable (%s); pausing scoring for %.1fs", exc.summary, delay)

    def _retry_after_backoff(self, memory_id: int) -> None:
        """Put a memory whose call failed for a passing reason first in line: the cursor has moved
        past it, and waiting for the rescan would leave it unscored long after the outage."""
        if memory_id not in self._queue and not self._paused:
            self._queue.appendleft(memory_id)
            self._wake.set()

    async def _record_failure(self, memory_id: int, spent: int, *reasons: str) -> None:
        try:
            recorded = await self.store.record_scoring_failure(memory_id, *reasons)
        except StoreError as exc:
            log.error("could not record the scoring failure of memory #%s: %s", memory_id, exc)
            return
        if recorded and spent + len(reasons) >= MAX_SCORING_FAILURES:
            self.given_up += 1
            log.warning(
                "gave up scoring memory #%s: %d classifier calls without a usable answer",
                memory_id,
                MAX_SCORING_FAILURES,
            )

    # backoff

    def _note_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

    def _grow_backoff(self, *, failed_call_started_at: float | None = None) -> float:
        """Double the pause (from the start value, up to the maximum); returns the seconds to wait.

        Calls run `concurrency` at a time, so one outage fails several at
        once. Only a call started after the backoff last grew counts as a new
        round: the others would double the pause once each and turn a short
        outage into minutes without scoring after the classifier is back.
        """
        grown_at = self._backoff_grown_at
        if failed_call_started_at is not None and grown_at is not None and failed_call_started_at < grown_at:
            return self._backoff_remaining()
        self._backoff = min(self.backoff_max_seconds, max(self.backoff_start_seconds, self._backoff * 2))
        self._backoff_until = time.time() + self._backoff
        self._backoff_grown_at = time.monotonic()
        return self._backoff

    def _in_backoff(self) -> bool:
        return self._backoff_until is not None and time.time() < self._backoff_until

    def _backoff_remaining(self) -> float:
        return max(0.0, (self._backoff_until or 0.0) - time.time())


def _is_outage(exc: LLMError) -> bool:
    """A failed call that says "not now" for every memory, not "never" for this one."""
    return exc.transient or exc.status in OUTAGE_STATUSES
