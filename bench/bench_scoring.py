"""The significance worker: jobs/s against a 200 ms classifier, and its memory with a big backlog.

Jobs/s: `companion.worker.SignificanceWorker` runs on its own, with a real
`Database` behind its store (a copy of a dataset whose newest memories are unscored) and a
real `Classifier`/`LLMClient` (openai SDK) pointed at the fake LLM, which
answers every classifier call after 200 ms. For concurrency 1, 4 and 8 it
scores about ten seconds' worth of memories (quick: three); jobs/s is the
memories recorded divided by the time from `start()` to the last of them
(after one warm-up call, so the SDK's one-off set-up is not counted).
The target is 0.9 x concurrency / latency.

Memory: the same worker over databases with 10,000 and with 100,000 memories
waiting for a score, with the 200 ms classifier at concurrency 8. While it
runs, every 0.5 s (after gc.collect(), so only reachable memory counts)
tracemalloc reports the bytes held that a line of `companion/worker.py`
allocated (its queue, its in-flight map, the job tasks and coroutines), and
all traced bytes of the process since tracing began (whatever the jobs hold:
the memories being scored, SDK requests, database results). The lengths of
the queue and of the in-flight map are sampled every 10 ms. Then a hanging
classifier fills every slot, to show the bound when nothing ever finishes.
A worker keeping per-memory state would grow with the backlog; this one
should hold the same at 10k and at 100k pending.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Result, main
from bench.dataset import CLASSIFIER_MODEL, Dataset, DatasetSpec, describe, load_dataset

LATENCY_SECONDS = 0.2
CONCURRENCIES = (1, 4, 8)
TARGET_RATIO = 0.9
FULL_WORK_SECONDS, QUICK_WORK_SECONDS = 10.0, 3.0
# 20k memories in 20 scopes, the newest 1,000 unscored: more than any run scores.
JOBS_SPEC = DatasetSpec(memories=20_000, scopes=20, unscored=1_000)
MEMORY_SPECS = (
    DatasetSpec(memories=10_000, scopes=20, unscored=10_000),
    DatasetSpec(memories=100_000, scopes=20, unscored=100_000),
)
MEMORY_CONCURRENCY = 8
FULL_MEMORY_SECONDS, QUICK_MEMORY_SECONDS = 5.0, 2.0
MEMORY_WARMUP_SECONDS = 1.0
SNAPSHOT_EVERY_SECONDS = 0.5
SAMPLE_EVERY_SECONDS = 0.01
HANG_SECONDS = 1.0
TRACE_FRAMES = 1  # enough to attribute by file, and cheap enough not to starve the loop
# Bytes the 100k run may hold beyond the 10k run and still count as "not growing with the backlog".
SAME_MEMORY_SLACK_BYTES = 64 * 1024


def _score_answer(delay: float) -> Any:
    from tests.fakes.llm_server import Answer

    def respond(body: dict[str, Any]) -> Any:
        # Deterministic per turn, mostly ordinary, sometimes pivotal (which pins and may evict).
        bucket = zlib.crc32(body["messages"][-1]["content"].encode()) % 100
        score = 3 if bucket < 3 else 2 if bucket < 22 else 1 if bucket < 70 else 0
        return Answer(json.dumps({"significance": score}), delay=delay)

    return respond


@dataclass
class Rig:
    """A worker over a private copy of a dataset, with a classifier pointed at the fake LLM."""

    workdir: Path
    db: Any
    llm_client: Any
    worker: Any

    @classmethod
    async def open(cls, dataset: Dataset, fake_llm: Any, concurrency: int) -> Rig:
        from companion.config import LLMConfig
        from companion.llm import LLMClient
        from companion.significance import Classifier
        from companion.worker import SignificanceWorker
        from storage.database import Database
        from storage.sqlite_store import SQLiteStore

        workdir = Path(tempfile.mkdtemp(prefix=f"bench-scoring-{dataset.spec.label}-"))
        path = dataset.copy_to(workdir / "memory.db")
        db = await Database.open(path)
        config = LLMConfig(
            base_url=fake_llm.base_url,
            api_key_env="",
            classifier_model=CLASSIFIER_MODEL,
            timeout_seconds=30.0,
            max_retries=0,
        )
        llm_client = LLMClient(config, "unused")
        worker = SignificanceWorker(
            SQLiteStore(db),
            Classifier(llm_client, CLASSIFIER_MODEL),
            concurrency=concurrency,
            pin_cap=8,
            rescan_seconds=60.0,
        )
        return cls(workdir, db, llm_client, worker)

    async def close(self) -> None:
        try:
            await self.worker.stop(grace_seconds=0)
            await self.llm_client.close()
            await self.db.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def _start_fake(delay: float) -> Any:
    from tests.fakes.llm_server import FakeLLM

    fake = FakeLLM()
    fake.responders[CLASSIFIER_MODEL] = _score_answer(delay)
    await fake.start()
    return fake


# --------------------------------------------------------------------------------------------------
# Jobs per second
# --------------------------------------------------------------------------------------------------


async def _jobs_per_second(dataset: Dataset, concurrency: int, work_seconds: float) -> dict[str, Any]:
    jobs = max(concurrency * 2, round(work_seconds * concurrency / LATENCY_SECONDS))
    if jobs > dataset.spec.unscored:
        raise ValueError(f"{dataset.spec.unscored} unscored memories are too few for {jobs} jobs")
    fake = await _start_fake(LATENCY_SECONDS)
    rig = await Rig.open(dataset, fake, concurrency)
    progress: list[tuple[float, int]] = []
    try:
        # One call first, so the SDK's one-off set-up (connection, lazy imports) is not billed to the jobs.
        await rig.llm_client.complete([{"role": "user", "content": "warm-up"}], model=CLASSIFIER_MODEL, max_tokens=5)
        started = time.monotonic()
        rig.worker.start()
        while rig.worker.scored < jobs:
            if rig.worker.errors or rig.worker.failures:
                raise RuntimeError(f"scoring failed: {rig.worker.last_error}")
            if not progress or progress[-1][1] != rig.worker.scored:
                progress.append((time.monotonic(), rig.worker.scored))
            await asyncio.sleep(0.002)
        elapsed = time.monotonic() - started
    finally:
        await rig.close()
        await fake.stop()
    rate = jobs / elapsed
    ideal = concurrency / LATENCY_SECONDS
    # Steady state: from the end of the first wave of `concurrency` jobs to the last job.
    first_wave = next((t for t, done in progress if done >= concurrency), started)
    steady = (jobs - concurrency) / (started + elapsed - first_wave) if started + elapsed > first_wave else rate
    return {
        "steady_jobs_per_second": steady,
        "concurrency": concurrency,
        "jobs": jobs,
        "seconds": elapsed,
        "jobs_per_second": rate,
        "ideal_jobs_per_second": ideal,
        "ratio": rate / ideal,
        "max_in_flight_at_fake": fake.max_in_flight,
    }


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def _worker_own_bytes(snapshot: tracemalloc.Snapshot, worker_file: str) -> int:
    """Bytes still held that were allocated by a line of companion/worker.py itself."""
    filtered = snapshot.filter_traces([tracemalloc.Filter(True, worker_file)])
    return sum(stat.size for stat in filtered.statistics("filename"))


async def _memory_run(dataset: Dataset, observe_seconds: float) -> dict[str, Any]:
    import companion.worker
    from storage import memories

    worker_file = companion.worker.__file__
    fake = await _start_fake(LATENCY_SECONDS)
    fake.requests = deque(maxlen=16)  # the fake keeps every request body otherwise
    rig = await Rig.open(dataset, fake, MEMORY_CONCURRENCY)
    worker = rig.worker
    queue_lengths: list[int] = []
    in_flight_counts: list[int] = []
    own: list[int] = []
    traced: list[int] = []
    try:
        pending_before = await memories.count_unscored(rig.db.reader)
        tracemalloc.start(TRACE_FRAMES)
        worker.start()
        await asyncio.sleep(MEMORY_WARMUP_SECONDS)
        scored_before = worker.scored
        observe_until = time.monotonic() + observe_seconds
        next_snapshot = time.monotonic()
        while (now := time.monotonic()) < observe_until:
            queue_lengths.append(len(worker._queue))
            in_flight_counts.append(len(worker._in_flight))
            if now >= next_snapshot:
                gc.collect()  # count what is reachable, not cycles waiting for the collector
                traced.append(tracemalloc.get_traced_memory()[0])
                own.append(_worker_own_bytes(tracemalloc.take_snapshot(), worker_file))
                next_snapshot += SNAPSHOT_EVERY_SECONDS
            await asyncio.sleep(SAMPLE_EVERY_SECONDS)
        scored = worker.scored - scored_before
        container_bytes = sys.getsizeof(worker._queue) + sys.getsizeof(worker._in_flight)

        # Now a classifier that never answers: every slot fills and the feeder must stop fetching.
        fake.responders[CLASSIFIER_MODEL] = _hang(HANG_SECONDS * 10)
        await asyncio.sleep(LATENCY_SECONDS * 2)  # the jobs already asked finish; new ones hang
        hang_queue: list[int] = []
        hang_in_flight: list[int] = []
        hang_until = time.monotonic() + HANG_SECONDS
        while time.monotonic() < hang_until:
            hang_queue.append(len(worker._queue))
            hang_in_flight.append(len(worker._in_flight))
            await asyncio.sleep(SAMPLE_EVERY_SECONDS)
        gc.collect()
        hang_own = _worker_own_bytes(tracemalloc.take_snapshot(), worker_file)
    finally:
        tracemalloc.stop()
        await rig.close()
        await fake.stop()
    return {
        "pending_at_start": pending_before,
        "scored_while_observed": scored,
        "own_bytes_samples": own,
        "own_bytes_median": statistics.median(own),
        "own_bytes_max": max(own),
        "traced_bytes_samples": traced,
        "traced_bytes_median": statistics.median(traced),
        "traced_spread_bytes": max(traced) - min(traced),
        "traced_last_minus_first_bytes": traced[-1] - traced[0],
        "queue_max": max(queue_lengths),
        "in_flight_max": max(in_flight_counts),
        "containers_bytes_at_end": container_bytes,
        "hang_queue_max": max(hang_queue),
        "hang_in_flight_max": max(hang_in_flight),
        "hang_own_bytes": hang_own,
    }


def _hang(seconds: float) -> Any:
    from tests.fakes.llm_server import Hang

    return lambda body: Hang(seconds)


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def run(quick: bool = False) -> Result:
    from companion.worker import BATCH_SIZE

    work_seconds = QUICK_WORK_SECONDS if quick else FULL_WORK_SECONDS
    observe_seconds = QUICK_MEMORY_SECONDS if quick else FULL_MEMORY_SECONDS
    result = Result("scoring")
    jobs_dataset = load_dataset(JOBS_SPEC)
    memory_datasets = [load_dataset(spec) for spec in MEMORY_SPECS]
    result.extra["datasets"] = [describe(d) for d in (jobs_dataset, *memory_datasets)]
    result.extra["classifier_latency_seconds"] = LATENCY_SECONDS
    # Other work on the machine skews every figure here; the load average says how much there was.
    result.extra["load_average_at_start"] = os.getloadavg()

    for concurrency in CONCURRENCIES:
        figures = asyncio.run(_jobs_per_second(jobs_dataset, concurrency, work_seconds))
        floor = TARGET_RATIO * figures["ideal_jobs_per_second"]
        result.add(
            f"concurrency {concurrency}: jobs/s ({figures['jobs']} jobs)",
            figures["jobs_per_second"],
            "/s",
            f">= {floor:g}",
            figures["jobs_per_second"] >= floor,
        )
        result.add(
            f"concurrency {concurrency}: ratio to concurrency / latency",
            figures["ratio"],
            "x",
            f">= {TARGET_RATIO:g}",
            figures["ratio"] >= TARGET_RATIO,
        )
        result.add(
            f"concurrency {concurrency}: steady state after the first wave", figures["steady_jobs_per_second"], "/s"
        )
        result.extra[f"concurrency_{concurrency}"] = figures

    runs = {}
    for dataset in memory_datasets:
        figures = asyncio.run(_memory_run(dataset, observe_seconds))
        label = dataset.spec.label
        runs[label] = figures
        result.extra[f"memory_{label}_pending"] = figures
        name = f"{label} pending (c={MEMORY_CONCURRENCY}, 200 ms)"
        result.add(f"{name}: worker.py-allocated bytes held, median", figures["own_bytes_median"] / 1024, "KiB")
        result.add(f"{name}: all traced bytes held, median", figures["traced_bytes_median"] / 1024, "KiB")
        result.add(
            f"{name}: all traced, max - min over {observe_seconds:g} s", figures["traced_spread_bytes"] / 1024, "KiB"
        )
        result.add(f"{name}: jobs done while observed", figures["scored_while_observed"], "jobs")
        result.add(
            f"{name}: max queued ids",
            figures["queue_max"],
            "ids",
            f"<= {BATCH_SIZE}",
            figures["queue_max"] <= BATCH_SIZE,
        )
        result.add(
            f"{name}: max in flight",
            figures["in_flight_max"],
            "jobs",
            f"<= {MEMORY_CONCURRENCY}",
            figures["in_flight_max"] <= MEMORY_CONCURRENCY,
        )
        held_ids = figures["hang_queue_max"] + figures["hang_in_flight_max"]
        bound = BATCH_SIZE + MEMORY_CONCURRENCY
        result.add(
            f"{label} pending, hanging classifier: ids queued + in flight",
            held_ids,
            "ids",
            f"<= {bound}",
            held_ids <= bound,
        )
    small, large = (runs[d.spec.label] for d in memory_datasets)
    for key, what in (("own_bytes_median", "worker.py-allocated"), ("traced_bytes_median", "all traced")):
        difference = large[key] - small[key]
        result.add(
            f"{what} bytes: {memory_datasets[1].spec.label} minus {memory_datasets[0].spec.label} pending",
            difference / 1024,
            "KiB",
            f"<= {SAME_MEMORY_SLACK_BYTES // 1024} KiB",
            difference <= SAME_MEMORY_SLACK_BYTES,
        )
    result.extra["load_average_at_end"] = os.getloadavg()
    return result


if __name__ == "__main__":
    main(run)
