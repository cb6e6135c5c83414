"""The significance worker's claims: renewing them never drops a memory claimed meanwhile."""

import asyncio
import logging

from companion.significance import Score
from companion.worker import SignificanceWorker
from storage.sqlite_store import SQLiteStore
from tests.test_store_contract import said

MODEL = "gated-classifier"


class GatedClassifier:
    """Scores each memory only when the test opens its gate."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}
        self.started: list[int] = []

    def gate(self, memory_id: int) -> asyncio.Event:
        return self.gates.setdefault(memory_id, asyncio.Event())

    async def score(self, memory, earlier, *, attempts: int) -> Score:
        self.started.append(memory.id)
        await self.gate(memory.id).wait()
        return Score(1, MODEL)


class HeldRenewals(SQLiteStore):
    """A real store whose claim renewals wait for the test, as a slow database would."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.renewing = asyncio.Event()
        self.go_on = asyncio.Event()

    async def renew_claims(self, claimant, memory_ids, *, lease_seconds):
        self.renewing.set()
        await self.go_on.wait()
        return await super().renew_claims(claimant, memory_ids, lease_seconds=lease_seconds)


async def until(condition, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_memories_claimed_while_a_renewal_runs_stay_queued(db, caplog):
    store = HeldRenewals(db)
    first = await store.write_turn(said("the first"))
    classifier = GatedClassifier()
    worker = SignificanceWorker(
        store,
        classifier,
        concurrency=1,
        pin_cap=8,
        rescan_seconds=60,
        lease_seconds=0.3,  # type: ignore[arg-type]
    )
    worker.start()
    try:
        # The first memory is being scored when a renewal of its claim starts, and hangs.
        await until(lambda: classifier.started == [first])
        await asyncio.wait_for(store.renewing.wait(), 5)
        # Meanwhile it is scored, and the worker claims the next two: one in flight, one queued.
        second, third = [await store.write_turn(said(text)) for text in ("the second", "the third")]
        classifier.gate(first).set()
        worker.notify()
        await until(lambda: classifier.started == [first, second])
        assert worker.status().queued == 1
        # The renewal, asked only about the first, comes back without the others: they stay.
        with caplog.at_level(logging.WARNING, logger="companion.worker"):
            store.go_on.set()
            await asyncio.sleep(0.25)
        assert "lost the scoring claims" not in caplog.text
        classifier.gate(second).set()
        classifier.gate(third).set()
        await until(lambda: worker.status().scored == 3)
        assert classifier.started == [first, second, third]
    finally:
        await worker.stop()
