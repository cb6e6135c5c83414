"""The significance worker: scores memories in the background, on the bot's loop.

The database is the source of truth and the worker keeps almost nothing in
memory. It claims the oldest unscored memories, a small batch at a time, and
scores them with at most `concurrency` classifier calls in flight. Several
processes may share one store: a claim is one process's at a time, renewed
while the process holds it, and one whose process died runs out with its
lease and is claimed by another. A new memory only wakes the worker up; when
idle it looks again at least once a lease, for claims run out.

A memory whose call failed for a passing reason (an outage, a busy database)
goes back to the front of the queue, still claimed, and is tried again as
soon as the backoff ends. One that failed for its own reason (an unusable
answer, a refusal) keeps its claim for a rescan period and is then anyone's
again. Recording a score is idempotent, so a memory is scored once however
often it is found.

Each memory has a budget of MAX_SCORING_FAILURES classifier calls that give
no usable answer, over all its rounds; each such call is one event in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Sequence
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
# How long a claim lasts without renewal: how soon another process scores what a dead one held.
CLAIM_LEASE_SECONDS = 60.0
# Claims are renewed this many times a lease, so one late renewal does not lose them.
RENEWALS_PER_LEASE = 3
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
        lease_seconds: float = CLAIM_LEASE_SECONDS,
    ) -> None:
        self.store = store
        self.classifier = classifier
        self.concurrency = concurrency
        self.pin_cap = pin_cap
        self.rescan_seconds = rescan_seconds
        self.backoff_start_seconds = backoff_start_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.lease_seconds = lease_seconds
        # Unique per worker: a restarted process must not mistake a dead one's claims for its own.
        self.claimant = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._queue: deque[int] = deque()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        # Memories that failed for their own reason, and when their rest ends (monotonic): still
        # claimed, and left alone until the claim runs out.
        self._resting: dict[int, float] = {}
        self._renewer: asyncio.Task[None] | None = None
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
            self._renewer = asyncio.create_task(self._renew_claims(), name="significance-claims")

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Stop taking work; give in-flight jobs a moment, then cancel them.

        Anything not finished stays unscored in the database, and its claim
        is given back: another process, or the next start, picks it up.
        """
        feeder, self._feeder = self._feeder, None
        renewer, self._renewer = self._renewer, None
        for task in (feeder, renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        jobs = list(self._in_flight.values())
        cancelled: list[int] = []
        if jobs:
            await asyncio.wait(jobs, timeout=grace_seconds)
            cancelled = list(self._in_flight)
            unfinished = await self.cancel_in_flight()
            if unfinished:
                log.info(
                    "significance worker stopped with %d jobs unfinished; they resume at next start",
                    unfinished,
                )
        await self._give_back_claims(cancelled)

    def pause(self) -> None:
        """Start no new jobs until `resume` (used while a restore runs)."""
        self._paused = True
        self._resumed.clear()

    async def resume(self) -> None:
        """Carry on, claiming afresh: the memories queued before may no longer be the same ones."""
        await self._give_back_claims()
        self._paused = False
        self._resumed.set()
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
            ids = await self.store.claim_unscored(self.claimant, limit=BATCH_SIZE, lease_seconds=self.lease_seconds)
            if not ids:
                # Look again within a lease: a process that died leaves its claims to run out.
                await self._sleep_until_wake(min(self._seconds_to_rescan(), self.lease_seconds))
                return
            self._queue.extend(ids)
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
        settled = False
        try:
            await self._score(memory_id)
            settled = True
        finally:
            self._in_flight.pop(memory_id, None)
            self._slot_free.set()
        if settled:
            await self._settle_claim(memory_id)

    async def _settle_claim(self, memory_id: int) -> None:
        """Keep the claim of a memory queued again; hold a resting one's for its rest; give back any other."""
        try:
            if memory_id in self._queue:
                self._resting.pop(memory_id, None)
            elif memory_id in self._resting:
                await self.store.renew_claims(self.claimant, [memory_id], lease_seconds=self.rescan_seconds)
            else:
                await self.store.release_claims(self.claimant, [memory_id])
        except StoreError as exc:
            # The claim runs out by itself; nothing is lost.
            log.warning("could not settle the scoring claim on memory #%s: %s", memory_id, exc)

    async def _renew_claims(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / RENEWALS_PER_LEASE)
            now = time.monotonic()
            self._resting = {i: until for i, until in self._resting.items() if until > now}
            held = [*self._queue, *self._in_flight]
            if not held:
                continue
            try:
                still = set(await self.store.renew_claims(self.claimant, held, lease_seconds=self.lease_seconds))
            except StoreError as exc:
                log.warning("could not renew %d scoring claims: %s", len(held), exc)
                continue
            # Only of those asked about: ids claimed while the renewal ran are not in `still`.
            asked = set(held)
            lost = [memory_id for memory_id in self._queue if memory_id in asked and memory_id not in still]
            for memory_id in lost:
                # Another process holds it now; an in-flight one finishes, and its score counts once.
                self._queue.remove(memory_id)
            if lost:
                log.warning("lost the scoring claims on %d queued memories to another process", len(lost))

    async def _give_back_claims(self, cancelled: Sequence[int] = ()) -> None:
        """Give back the claims on everything queued or resting (stopping, pausing): best effort, as
        they run out anyway."""
        # Not those in flight: their jobs settle their own claims when they end.
        held = [*self._queue, *self._resting, *cancelled]
        self._queue.clear()
        self._resting.clear()
        if not held:
            return
        try:
            await self.store.release_claims(self.claimant, held)
        except StoreError as exc:
            log.warning("could not give back %d scoring claims: %s", len(held), exc)

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
        if recorded and spent + len(reasons) < MAX_SCORING_FAILURES:
            self._resting[memory_id] = time.monotonic() + self.rescan_seconds
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
