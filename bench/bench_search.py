"""/memory search latency over a large store.

1,000,000 memories in 100 scopes, one of them holding 200,000. Each query is
a fresh chat-like message, run exactly as the command runs it: the
whole-history search on the reader connection, then the boosted ranking. Reported
for the heavy scope, a small scope, and queries spread over every scope.

    python -m bench.bench_search [--quick]
"""

from __future__ import annotations

import asyncio
import random
import time

from bench.common import Result, main, median, percentile
from bench.dataset import DatasetSpec, load_dataset
from cogs.memory import SEARCH_RESULTS
from companion import recall
from storage import sqlite
from storage.connection_thread import Connection
from storage.database import Database
from storage.sqlite_store import SQLiteStore

TARGET_P99_MS = 20.0
WARMUP_QUERIES = 50


async def _measure(store: SQLiteStore, queries: list[tuple]) -> tuple[list[float], float]:
    latencies = []
    hits = 0
    for scope, text in queries:
        started = time.perf_counter()
        ranked = await recall.recall(store, scope, text, limit=SEARCH_RESULTS, follow_ups=False)
        latencies.append((time.perf_counter() - started) * 1000)
        hits += bool(ranked)
    return latencies, hits / max(1, len(queries))


async def _run(quick: bool) -> Result:
    spec = DatasetSpec(memories=100_000) if quick else DatasetSpec(memories=1_000_000)
    dataset = load_dataset(spec)
    per_case = 200 if quick else 1000
    text = dataset.chat_text("search-bench")
    rng = random.Random(7)
    cases = {
        f"heavy scope ({dataset.heavy.memories:,} memories)": [dataset.heavy] * per_case,
        f"small scope ({dataset.small.memories:,} memories)": [dataset.small] * per_case,
        "any scope": [rng.choice(dataset.layout.scopes) for _ in range(per_case)],
    }
    result = Result("memory search")
    result.extra["dataset"] = {"memories": spec.memories, "scopes": spec.scopes, "heavy": spec.heavy}
    # A query_only connection like the bot's reader: the cached file is never written.
    reader = await Connection.open(lambda: sqlite.connect(dataset.path, query_only=True))
    store = SQLiteStore(Database(dataset.path, None, reader))
    try:
        await _measure(store, [(dataset.heavy.scope, text.user_message(dataset.heavy)) for _ in range(WARMUP_QUERIES)])
        for label, layouts in cases.items():
            queries = [(layout.scope, text.user_message(layout)) for layout in layouts]
            latencies, hit_rate = await _measure(store, queries)
            p99 = percentile(latencies, 99)
            result.add(f"{label} p50", median(latencies), "ms")
            result.add(f"{label} p99", p99, "ms", f"<= {TARGET_P99_MS:g} ms", p99 <= TARGET_P99_MS)
            result.add(f"{label} queries with a match", hit_rate * 100, "%")
    finally:
        await reader.close()
    return result


def run(quick: bool = False) -> Result:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    main(run)
