"""SQLite and PostgreSQL side by side, in the same run: turns, appends, search and scoring.

One dataset for both backends: the `memory_written` events of bench/dataset.py's
20,000 memories in 20 scopes (quick: 5,000), oldest first, imported through
each store's own `import_memories`, IMPORT_BATCH to a transaction as `import`
writes them (SQLite: a fresh file, opened as the bot opens it: WAL,
synchronous=FULL; PostgreSQL: a fresh database on a throwaway cluster, the
tests' own from tests/postgres.py, but started with PostgreSQL's durable
defaults, fsync and synchronous commit on, where the tests turn them off: both
backends flush every commit, so writes compare like with like). The history is
imported without asking for scores, as `import` does by default; the newest
SCORING_JOBS memories ask for one (they are the scoring queue). The pins the
dataset's history ends with are pinned by hand through `store.pin`, and every
server's channels are recorded as public. Both backends number the memories
alike, which the benchmark checks. Then, per backend:

1. Turn latency, store side (not the bot against the fake Discord): what one
   turn does against storage, through the real code: `prepare_prompt` (pins,
   the channel's recent turns, recall over the scope, fitted to the prompt)
   and `store.write_turn` of the answered turn with the memories its prompt
   held, for chat-like messages over every scope (30% in the heavy one). The
   backends take each turn in turn, so background load hits them alike.
   Quality: overlap@10 of the memories each backend's prompt recalled for the
   same message, and the share of turns whose pins and recent turns are the
   same on both.
2. Append rate: `store.write_turn`, one writer in sequence and 8 concurrent
   writers (asyncio tasks on one store), rounds alternating which backend goes
   first; the median rate over rounds. Quality: every turn appended is read
   back (by id, with its text) and the store's count grew by exactly as many.
3. Search latency: `/memory search` as the command runs it (the turn's recall
   without follow-ups, 10 results, kept to what a member who may read every
   channel may see) for chat-like messages over every scope. Quality: overlap
   of the top 10 with SQLite's for the same query, the share of queries with a
   match, and recall@10 of the turn's recall on bench/recall_data.py's
   questions (quick: its 0.35 scale), loaded into both as bench_recall does.
4. Scoring throughput: SCORING_JOBS memories waiting for a score (a copy of
   the loaded database made before anything else ran on it), a FakeLLM
   classifier served by this process answering after 200 ms, worker
   concurrency 4. Each worker runs in its own OS process (`python -m
   bench.bench_backends --score-worker ...`) with its own store, as a bot
   process would: 1 process on SQLite and on PostgreSQL, 2 processes on
   PostgreSQL sharing one database. jobs/s = memories scored / time from the
   "go" (the workers are started and warmed up before) to the last score
   recorded in the log. Ideal: 4 / 0.2 s = 20/s per process. SQLite has no
   2-process figure: one process owns a SQLite database (the bot holds the
   data folder's lock, and claims live in that process's memory). Quality:
   `memory_significance_set` events per memory (exactly 1 for all, none
   missed), classifier calls per memory.

The table prints SQLite | PostgreSQL | PostgreSQL / SQLite for every figure.
Without PostgreSQL's server binaries, its column is skipped with the reason.

    python -m bench.bench_backends [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import BENCH_DIR, Result, main, median, percentile
from bench.dataset import BOT_NAME, CLASSIFIER_MODEL, PIN_CAP, Dataset, DatasetSpec, ScopeLayout, load_dataset
from storage import sqlite
from storage.events import SOURCE_CHAT, SOURCE_IMPORT, MemoryWritten, decode
from storage.scope import Scope
from storage.store import MemoryStore
from storage.visibility import ChannelFilter, ChannelVisibility

if TYPE_CHECKING:
    from companion.config import Config
    from tests.postgres import PostgresCluster

REPO = BENCH_DIR.parent
# The same 20k dataset as bench_scoring's jobs (its log is cached once for both).
FULL_SPEC = DatasetSpec(memories=20_000, scopes=20, unscored=1_000)
QUICK_SPEC = DatasetSpec(memories=5_000, scopes=20)
HEAVY_SHARE = 0.3  # of turns and queries in the heavy scope
FULL_TURNS, QUICK_TURNS = 300, 100
FULL_QUERIES, QUICK_QUERIES = 300, 100
WARMUP = 30
FULL_APPENDS, QUICK_APPENDS = 1000, 200  # turns per mode, round and backend
FULL_APPEND_ROUNDS, QUICK_APPEND_ROUNDS = 3, 2
WRITERS = 8
FULL_RECALL_SCALE, QUICK_RECALL_SCALE = 1.0, 0.35
FULL_SCORING_JOBS, QUICK_SCORING_JOBS = 600, 200
SCORING_CONCURRENCY = 4
CLASSIFIER_SECONDS = 0.2
SCORING_TARGET_RATIO = 0.9  # bench_scoring's: jobs/s >= 0.9 x processes x concurrency / latency
SCORING_TIMEOUT_SECONDS = 240.0
SEARCH_RESULTS = 10
# Message ids of the turns this benchmark writes: far above the dataset's snowflakes, within bigint.
MESSAGE_ID_BASE = 8_000_000_000_000_000_000
TOP = 10
# PostgreSQL's own defaults, said out loud: the tests' cluster turns all three off.
DURABLE_SERVER_OPTIONS = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"


# --------------------------------------------------------------------------------------------------
# The dataset, as events both stores import
# --------------------------------------------------------------------------------------------------


def history_events(dataset: Dataset, unscored: int) -> list[MemoryWritten]:
    """The dataset's remembered turns, oldest first: imported without a score, but the newest `unscored`."""
    conn = sqlite.connect(dataset.events_path, query_only=True)
    try:
        rows = conn.execute(
            "SELECT kind, version, payload FROM events WHERE kind = ? ORDER BY seq", (MemoryWritten.KIND,)
        ).fetchall()
    finally:
        conn.close()
    written = [event for event in (decode(*row) for row in rows) if not event.redacted]
    cut = len(written) - unscored
    return [
        replace(event, source=SOURCE_IMPORT, wants_score=False)
        if i < cut
        else replace(event, source=SOURCE_CHAT, wants_score=True)
        for i, event in enumerate(written)
    ]


def history_pins(dataset: Dataset) -> list[tuple[Scope, int, int]]:
    """(scope, message id, author id) of the memories pinned at the end of the dataset's history, oldest first."""
    conn = sqlite.connect(dataset.path, query_only=True)
    try:
        rows = conn.execute(
            "SELECT bot_id, scope_kind, scope_id, user_message_id, author_id FROM memories WHERE pinned ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [(Scope(bot_id, kind, scope_id), message_id, author) for bot_id, kind, scope_id, message_id, author in rows]


@dataclass(frozen=True)
class Turn:
    """A message to answer, the reply the bot gave, and when."""

    scope: Scope
    channel_id: int
    author_id: int
    author_name: str
    text: str
    reply: str
    message_id: int
    created_at: float
    readable: ChannelFilter | None  # what /memory search lets this member see


def make_turns(dataset: Dataset, count: int, seed: str, first_message_id: int, start_at: float) -> list[Turn]:
    """Chat-like turns over every scope, HEAVY_SHARE of them in the heavy one, 20 s apart."""
    chat = dataset.chat_text(seed)
    rng = random.Random(seed)
    turns = []
    for i in range(count):
        layout = dataset.heavy if rng.random() < HEAVY_SHARE else rng.choice(dataset.layout.scopes)
        author_id = rng.choice(layout.member_ids)
        turns.append(
            Turn(
                scope=layout.scope,
                channel_id=rng.choice(layout.channel_ids),
                author_id=author_id,
                author_name=dataset.layout.user_names[author_id],
                text=chat.user_message(layout),
                reply=chat.reply(layout),
                message_id=first_message_id + i,
                created_at=start_at + 20.0 * i,
                readable=readable_by(layout, author_id),
            )
        )
    return turns


def readable_by(layout: ScopeLayout, member_id: int) -> ChannelFilter | None:
    """cogs.memory.readable_by for a member (not an administrator) who may read every channel."""
    if layout.scope.kind == "dm":
        return None
    channels = frozenset(layout.channel_ids)
    return ChannelFilter(channels=channels, thread_parents=channels, author_id=member_id)


def incoming(turn: Turn) -> Any:
    from companion.turns import IncomingTurn

    return IncomingTurn(turn.scope, turn.channel_id, turn.author_id, turn.author_name, turn.text, turn.message_id)


def record(turn: Turn, drew_on: Sequence[int] = ()) -> Any:
    from storage.commands import TurnRecord

    return TurnRecord(
        scope=turn.scope,
        channel_id=turn.channel_id,
        author_id=turn.author_id,
        author_name=turn.author_name,
        bot_name=BOT_NAME,
        user_text=turn.text,
        reply_text=turn.reply,
        user_message_id=turn.message_id,
        created_at=turn.created_at,
        drew_on=tuple(drew_on),
    )


# --------------------------------------------------------------------------------------------------
# The two stores
# --------------------------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str  # "sqlite" or "postgresql"
    store: MemoryStore
    load_seconds: float
    memories: int
    # Copies of the database as loaded, for the scoring runs: a file path (SQLite) or DSNs (PostgreSQL).
    score_targets: list[str]
    numbering: dict[int, int] = field(default_factory=dict)  # message id -> memory id, as loaded


async def load_store(
    store: MemoryStore, events: Sequence[MemoryWritten], pins: Sequence[tuple[Scope, int, int]], dataset: Dataset
) -> tuple[float, dict[int, int]]:
    """Import the events as `import` does, record the servers' channels, pin the history's pins; the
    seconds the import took and message id -> memory id."""
    from memory_tools import IMPORT_BATCH

    started = time.perf_counter()
    for start in range(0, len(events), IMPORT_BATCH):
        await store.import_memories(events[start : start + IMPORT_BATCH])
    seconds = time.perf_counter() - started
    for layout in dataset.layout.scopes:
        if layout.scope.kind == "guild":
            channels = [ChannelVisibility(c, None, public=True) for c in layout.channel_ids]
            await store.record_guild_channels(layout.scope, channels)
    numbering: dict[int, int] = {}
    for layout in dataset.layout.scopes:
        ids = await store.memory_ids(layout.scope)
        for start in range(0, len(ids), 1000):
            for memory in await store.memories_by_id(layout.scope, ids[start : start + 1000]):
                if memory.user_message_id is not None:
                    numbering[memory.user_message_id] = memory.id
    for scope, message_id, author_id in pins:
        await store.pin(scope, numbering[message_id], actor_id=author_id, pin_cap=PIN_CAP)
    return seconds, numbering


async def open_sqlite(
    workdir: Path, events: Sequence[MemoryWritten], pins: Sequence[tuple[Scope, int, int]], dataset: Dataset
) -> Backend:
    from storage.sqlite_store import SQLiteStore

    path = workdir / "sqlite" / "memory.db"
    path.parent.mkdir(parents=True)
    store = await SQLiteStore.open(path)
    try:
        seconds, numbering = await load_store(store, events, pins, dataset)
    finally:
        await store.close()
    # The scoring run's copy, as loaded; then the store reopened, as a restarted bot finds it.
    copy = copy_database(path, workdir / "sqlite-score" / "memory.db")
    store = await SQLiteStore.open(path)
    return Backend("sqlite", store, seconds, (await store.counts()).memories, [str(copy)], numbering)


def copy_database(path: Path, copy: Path) -> Path:
    """A copy of a closed SQLite database (its write-ahead log too, if one is left)."""
    copy.parent.mkdir(parents=True)
    for suffix in ("", "-wal"):
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
    return copy


async def open_postgres(
    stack: contextlib.AsyncExitStack,
    cluster: PostgresCluster,
    events: Sequence[MemoryWritten],
    pins: Sequence[tuple[Scope, int, int]],
    dataset: Dataset,
) -> Backend:
    from storage.postgres.store import PostgresStore
    from tests.postgres import fresh_database

    dsn = await stack.enter_async_context(fresh_database(cluster))
    store = await PostgresStore.open(dsn)
    try:
        seconds, numbering = await load_store(store, events, pins, dataset)
        # The planner's statistics and the GIN index's pending list, as autovacuum would leave them after a load.
        await store.pool.execute("VACUUM ANALYZE memories")
    finally:
        await store.close()
    # Two copies as loaded, for the scoring runs (a template needs no one connected to it).
    copies = await stack.enter_async_context(database_copies(cluster, dsn, 2))
    store = await PostgresStore.open(dsn)
    stack.push_async_callback(store.close)
    return Backend("postgresql", store, seconds, (await store.counts()).memories, copies, numbering)


@contextlib.contextmanager
def durable_postgres() -> Iterator[None]:
    """Start the tests' throwaway cluster with PostgreSQL's durable defaults (fsync, synchronous commit,
    full-page writes), this process only: SQLite commits with an fsync (synchronous=FULL), and a
    comparison of writes against a server that never flushes would compare durability, not backends."""
    try:
        from tests import postgres
    except ImportError:  # postgres_cluster says why it skips
        yield
        return
    saved = postgres.SERVER_OPTIONS
    postgres.SERVER_OPTIONS = DURABLE_SERVER_OPTIONS
    try:
        yield
    finally:
        postgres.SERVER_OPTIONS = saved


@contextlib.asynccontextmanager
async def database_copies(cluster: PostgresCluster, template_dsn: str, count: int) -> AsyncIterator[list[str]]:
    """`count` copies of the database at `template_dsn` (CREATE DATABASE ... TEMPLATE), dropped afterwards."""
    import asyncpg

    template = template_dsn.rsplit("/", 1)[1]
    names = [f"{template}_copy{i}" for i in range(count)]
    admin = await asyncpg.connect(cluster.admin_dsn)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        yield [cluster.dsn(name) for name in names]
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --------------------------------------------------------------------------------------------------
# 1. Turns
# --------------------------------------------------------------------------------------------------


@dataclass
class TurnFigures:
    turn_ms: list[float] = field(default_factory=list)
    prepare_ms: list[float] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)
    recalled: list[list[int]] = field(default_factory=list)  # message ids recalled into each prompt
    context: list[tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # pins, recent


async def one_turn(config: Config, store: MemoryStore, turn: Turn, figures: TurnFigures | None) -> None:
    from companion.turns import prepare_prompt

    started = time.perf_counter()
    prepared = await prepare_prompt(config, store, incoming(turn), now=turn.created_at)
    prepared_at = time.perf_counter()
    prompt = prepared.prompt
    await store.write_turn(record(turn, (*prompt.pinned_ids, *prompt.recalled_ids, *prompt.recent_ids)))
    done = time.perf_counter()
    if figures is None:
        return
    figures.turn_ms.append((done - started) * 1000)
    figures.prepare_ms.append((prepared_at - started) * 1000)
    figures.write_ms.append((done - prepared_at) * 1000)
    figures.recalled.append([r.memory.user_message_id for r in prepared.recalled])
    figures.context.append(
        (tuple(m.user_message_id for m in prepared.pinned), tuple(m.user_message_id for m in prepared.recent))
    )


async def run_turns(config: Config, backends: list[Backend], warmup: list[Turn], turns: list[Turn]) -> dict[str, Any]:
    """Every turn on each backend in turn (the first to go alternates)."""
    figures = {b.name: TurnFigures() for b in backends}
    for i, turn in enumerate([*warmup, *turns]):
        order = backends if i % 2 == 0 else backends[::-1]
        for backend in order:
            await one_turn(config, backend.store, turn, figures[backend.name] if i >= len(warmup) else None)
    return figures


def overlap(a: Sequence[int], b: Sequence[int], k: int = TOP) -> float | None:
    """|top k of a & top k of b| / the longer of the two; None when both are empty."""
    first, second = set(a[:k]), set(b[:k])
    longest = max(len(first), len(second))
    return len(first & second) / longest if longest else None


def mean_overlap(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> float:
    values = [v for v in (overlap(x, y) for x, y in zip(a, b, strict=True)) if v is not None]
    return sum(values) / len(values) if values else float("nan")


# --------------------------------------------------------------------------------------------------
# 2. Appends
# --------------------------------------------------------------------------------------------------


async def append(store: MemoryStore, turns: Sequence[Turn], writers: int) -> tuple[float, list[int]]:
    """turns/s of write_turn with `writers` concurrent tasks (each writing one after another), and the
    ids written, in the order of `turns`."""

    async def writer(share: Sequence[Turn]) -> list[int]:
        return [await store.write_turn(record(turn)) for turn in share]

    started = time.perf_counter()
    shares = await asyncio.gather(*(writer(turns[w::writers]) for w in range(writers)))
    seconds = time.perf_counter() - started
    ids = [0] * len(turns)
    for w, share in enumerate(shares):
        ids[w::writers] = share  # each id beside its turn
    return len(turns) / seconds, ids


async def read_back(store: MemoryStore, turns: Sequence[Turn], ids: Sequence[int]) -> int:
    """How many of the appended turns are read back by id, in their scope, with their text."""
    by_scope: dict[Scope, list[tuple[int, Turn]]] = {}
    for memory_id, turn in zip(ids, turns, strict=True):
        by_scope.setdefault(turn.scope, []).append((memory_id, turn))
    found = 0
    for scope, pairs in by_scope.items():
        memories = {m.id: m for m in await store.memories_by_id(scope, [i for i, _ in pairs])}
        found += sum(
            1
            for memory_id, turn in pairs
            if memory_id in memories
            and memories[memory_id].user_text == turn.text
            and memories[memory_id].user_message_id == turn.message_id
        )
    return found


async def run_appends(
    backends: list[Backend], dataset: Dataset, appends: int, rounds: int, start_at: float
) -> tuple[dict[tuple[str, int], list[float]], dict[str, dict[str, int]]]:
    """Rounds of `appends` turns with 1 writer, then WRITERS, each backend in turn (who goes first
    alternates); the rates, and per backend what was written, read back and counted."""
    rates: dict[tuple[str, int], list[float]] = {}
    checks = {b.name: {"written": 0, "read_back": 0, "distinct_ids": 0} for b in backends}
    counts_before = {b.name: (await b.store.counts()).memories for b in backends}
    next_id = MESSAGE_ID_BASE + 1_000_000
    for r in range(rounds):
        for writers in (1, WRITERS):
            batch = make_turns(dataset, appends, f"backends-append-{r}-{writers}", next_id, start_at)
            next_id += appends
            for backend in backends if r % 2 == 0 else backends[::-1]:
                rate, ids = await append(backend.store, batch, writers)
                rates.setdefault((backend.name, writers), []).append(rate)
                check = checks[backend.name]
                check["written"] += len(batch)
                check["read_back"] += await read_back(backend.store, batch, ids)
                check["distinct_ids"] += len(set(ids))
    for backend in backends:
        checks[backend.name]["count_grew_by"] = (await backend.store.counts()).memories - counts_before[backend.name]
    return rates, checks


# --------------------------------------------------------------------------------------------------
# 3. Search
# --------------------------------------------------------------------------------------------------


async def one_search(store: MemoryStore, query: Turn) -> tuple[float, list[int]]:
    """/memory search as the command runs it: ms, and the message ids of the results."""
    from companion import recall

    started = time.perf_counter()
    found = await recall.recall(
        store, query.scope, query.text, limit=SEARCH_RESULTS, follow_ups=False, channel_filter=query.readable
    )
    return (time.perf_counter() - started) * 1000, [r.memory.user_message_id for r in found]


async def run_searches(backends: list[Backend], warmup: list[Turn], queries: list[Turn]) -> dict[str, Any]:
    results: dict[str, dict[str, list[Any]]] = {b.name: {"ms": [], "ids": []} for b in backends}
    for i, query in enumerate([*warmup, *queries]):
        order = backends if i % 2 == 0 else backends[::-1]
        for backend in order:
            ms, ids = await one_search(backend.store, query)
            if i >= len(warmup):
                results[backend.name]["ms"].append(ms)
                results[backend.name]["ids"].append(ids)
    return results


async def recall_set_scores(cluster: PostgresCluster | None, scale: float, workdir: Path) -> dict[str, Any]:
    """recall@10 of the turn's recall on the recall set's questions, on each backend (bench_recall's loads)."""
    from bench import recall_data
    from bench.bench_recall import KS, load_postgres, timed_recall, write_recall_set
    from storage.postgres.store import PostgresStore
    from storage.sqlite_store import SQLiteStore
    from tests.postgres import fresh_database

    recall_set = recall_data.generate(scale=scale)
    path = workdir / "recall" / "memory.db"
    path.parent.mkdir(parents=True)
    memory_ids = write_recall_set(recall_set, path)
    out: dict[str, Any] = {"questions": len(recall_set.questions), "turns": recall_set.turns}
    store = await SQLiteStore.open(path)
    try:
        scores, latencies = await timed_recall(store, recall_set, memory_ids)
        out["sqlite"] = {"recall_at_10": scores.at(max(KS)), "p50_ms": median(latencies)}
    finally:
        await store.close()
    if cluster is not None:
        async with fresh_database(cluster) as dsn:
            pg = await PostgresStore.open(dsn)
            try:
                await load_postgres(pg, recall_set, memory_ids)
                scores, latencies = await timed_recall(pg, recall_set, memory_ids)
                out["postgresql"] = {"recall_at_10": scores.at(max(KS)), "p50_ms": median(latencies)}
            finally:
                await pg.close()
    return out


# --------------------------------------------------------------------------------------------------
# 4. Scoring, in worker processes
# --------------------------------------------------------------------------------------------------


async def score_worker(backend: str, target: str, llm_url: str, concurrency: str) -> None:
    """One bot process's scoring: a SignificanceWorker on its own store, until nothing waits for a score.

    Says "ready" once warmed up, starts on a line on stdin, and ends with a JSON line of its counts.
    """
    from companion.config import LLMConfig
    from companion.llm import LLMClient
    from companion.significance import Classifier
    from companion.worker import SignificanceWorker

    store: MemoryStore
    if backend == "sqlite":
        from storage.sqlite_store import SQLiteStore

        store = await SQLiteStore.open(Path(target))
    else:
        from storage.postgres.store import PostgresStore

        store = await PostgresStore.open(target)
    config = LLMConfig(
        base_url=llm_url, api_key_env="", classifier_model=CLASSIFIER_MODEL, timeout_seconds=30.0, max_retries=0
    )
    llm_client = LLMClient(config, "unused")
    worker = SignificanceWorker(
        store,
        Classifier(llm_client, CLASSIFIER_MODEL),
        concurrency=int(concurrency),
        pin_cap=PIN_CAP,
        rescan_seconds=60,
    )
    try:
        # The SDK's one-off set-up and the first queries are not billed to the jobs.
        await llm_client.complete([{"role": "user", "content": "warm-up"}], model=CLASSIFIER_MODEL, max_tokens=5)
        await store.count_unscored()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        worker.start()
        deadline = time.monotonic() + SCORING_TIMEOUT_SECONDS
        while True:
            await asyncio.sleep(0.05)
            if time.monotonic() > deadline:
                raise TimeoutError(f"scoring not done in {SCORING_TIMEOUT_SECONDS:g} s: {worker.status()}")
            if worker.status().in_flight == 0 and await store.count_unscored() == 0:
                break
        await worker.stop(grace_seconds=5)
        status = worker.status()
        print(
            json.dumps(
                {
                    "scored": status.scored,
                    "failures": status.failures,
                    "errors": status.errors,
                    "last_error": status.last_error,
                }
            ),
            flush=True,
        )
    finally:
        await worker.stop(grace_seconds=0)
        await llm_client.close()
        await store.close()


async def scoring_state(backend: str, target: str) -> dict[str, Any]:
    """The scoring copy's queue and its scores: ids waiting, significance events per memory, when each was recorded."""
    set_kind, failed_kind = "memory_significance_set", "memory_significance_failed"
    if backend == "sqlite":
        conn = sqlite.connect(target, query_only=True)
        try:
            waiting = [r[0] for r in conn.execute("SELECT id FROM memories WHERE significance IS NULL AND wants_score")]
            per_memory = dict(
                conn.execute(
                    "SELECT json_extract(payload, '$.memory_id'), count(*) FROM events WHERE kind = ? GROUP BY 1",
                    (set_kind,),
                ).fetchall()
            )
            times = [r[0] for r in conn.execute("SELECT recorded_at FROM events WHERE kind = ?", (set_kind,))]
            failed = conn.execute("SELECT count(*) FROM events WHERE kind = ?", (failed_kind,)).fetchone()[0]
        finally:
            conn.close()
    else:
        import asyncpg

        conn = await asyncpg.connect(target)
        try:
            waiting = [
                r[0] for r in await conn.fetch("SELECT id FROM memories WHERE significance IS NULL AND wants_score")
            ]
            rows = await conn.fetch(
                "SELECT (payload ->> 'memory_id')::bigint, count(*) FROM events WHERE kind = $1 GROUP BY 1", set_kind
            )
            per_memory = {row[0]: row[1] for row in rows}
            times = [r[0] for r in await conn.fetch("SELECT recorded_at FROM events WHERE kind = $1", set_kind)]
            failed = await conn.fetchval("SELECT count(*) FROM events WHERE kind = $1", failed_kind)
        finally:
            await conn.close()
    return {"waiting": sorted(waiting), "per_memory": per_memory, "times": sorted(times), "failed_events": failed}


async def run_scoring(backend: str, target: str, processes: int, fake: Any) -> dict[str, Any]:
    """`processes` worker processes on the copy at `target`, started together; jobs/s and the checks."""
    from tests.fakes.llm_server import scored_turn

    before = await scoring_state(backend, target)
    jobs = before["waiting"]
    if before["per_memory"]:
        raise RuntimeError(f"the {backend} scoring copy already holds scores")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children = []
    try:
        for _ in range(processes):
            command = ["-m", "bench.bench_backends", "--score-worker", backend, target, fake.base_url]
            children.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    *command,
                    str(SCORING_CONCURRENCY),
                    cwd=REPO,
                    env=env,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
            if line.strip() != b"ready":
                raise RuntimeError(f"a {backend} score worker did not start: {line!r}")
        fake.requests.clear()
        fake.max_in_flight = 0
        go = time.time()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        outputs = await asyncio.wait_for(
            asyncio.gather(*(child.communicate() for child in children)), timeout=SCORING_TIMEOUT_SECONDS + 30
        )
    except BaseException:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
        raise
    reports = []
    for child, (stdout, _) in zip(children, outputs, strict=True):
        lines = stdout.decode().strip().splitlines()
        if child.returncode != 0 or not lines:
            raise RuntimeError(f"a {backend} score worker failed (exit status {child.returncode})")
        reports.append(json.loads(lines[-1]))
    after = await scoring_state(backend, target)
    counts = [after["per_memory"].get(memory_id, 0) for memory_id in jobs]
    calls = [r for r in fake.requests if r.model == CLASSIFIER_MODEL and "turn_to_score" in r.text]
    per_turn = Counter(scored_turn(r.body) for r in calls)
    times = after["times"]
    seconds = times[-1] - go if times else float("nan")
    # Without the end of the backlog, where one process may still work through its last claimed batch.
    most = int(0.9 * len(times))
    most_rate = most / (times[most - 1] - go) if most else float("nan")
    ideal = processes * SCORING_CONCURRENCY / CLASSIFIER_SECONDS
    return {
        "processes": processes,
        "jobs": len(jobs),
        "seconds": seconds,
        "jobs_per_second": len(jobs) / seconds,
        "ideal_jobs_per_second": ideal,
        "ratio_to_ideal": len(jobs) / seconds / ideal,
        "jobs_per_second_first_90_percent": most_rate,
        "scored_exactly_once": sum(c == 1 for c in counts),
        "scored_twice_or_more": sum(c > 1 for c in counts),
        "missed": sum(c == 0 for c in counts),
        "still_waiting": len(after["waiting"]),
        "failed_events": after["failed_events"],
        "classifier_calls": len(calls),
        "classifier_calls_per_memory": len(calls) / max(1, len(jobs)),
        "most_calls_for_one_turn": max(per_turn.values(), default=0),
        "max_in_flight_at_fake": fake.max_in_flight,
        "scored_by_process": [r["scored"] for r in reports],
        "worker_failures": sum(r["failures"] for r in reports),
        "worker_errors": sum(r["errors"] for r in reports),
    }


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


@dataclass
class Figure:
    label: str
    unit: str
    sqlite: float | None
    postgresql: float | None
    # Set when the ratio compares against another SQLite figure than this row's own (its label).
    ratio_against: tuple[str, float] | None = None
    target: Callable[[float], tuple[str, bool]] | None = None

    @property
    def ratio(self) -> float | None:
        base = self.ratio_against[1] if self.ratio_against else self.sqlite
        if self.postgresql is None or base is None or base == 0:
            return None
        return self.postgresql / base


def format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3f}"


def print_side_by_side(figures: list[Figure], notes: list[str]) -> None:
    width = max(len(f.label) for f in figures) + 2
    print(f"\n{'figure':<{width}} {'SQLite':>12} {'PostgreSQL':>12} {'PG/SQLite':>10}  unit", flush=True)
    print("-" * (width + 52), flush=True)
    for figure in figures:
        ratio = format_value(figure.ratio) + ("*" if figure.ratio_against and figure.ratio is not None else "")
        print(
            f"{figure.label:<{width}} {format_value(figure.sqlite):>12} {format_value(figure.postgresql):>12}"
            f" {ratio:>10}  {figure.unit}",
            flush=True,
        )
    for note in notes:
        print(note, flush=True)
    print(flush=True)


def add_rows(result: Result, figures: list[Figure]) -> None:
    for figure in figures:
        for name, value in (("sqlite", figure.sqlite), ("postgresql", figure.postgresql)):
            if value is None:
                continue
            target, ok = figure.target(value) if figure.target else ("", None)
            result.add(f"{name}: {figure.label}", value, figure.unit, target, ok)
        if figure.ratio is not None:
            against = f" (against SQLite's {figure.ratio_against[0]})" if figure.ratio_against else ""
            result.add(f"postgresql / sqlite: {figure.label}{against}", figure.ratio, "x")
    result.extra["side_by_side"] = [
        {
            "figure": f.label,
            "unit": f.unit,
            "sqlite": f.sqlite,
            "postgresql": f.postgresql,
            "postgresql_over_sqlite": f.ratio,
            **({"ratio_against_sqlite": f.ratio_against[0]} if f.ratio_against else {}),
        }
        for f in figures
    ]


def at_least(floor: float) -> Callable[[float], tuple[str, bool]]:
    return lambda value: (f">= {floor:g}", value >= floor)


def exactly(expected: float) -> Callable[[float], tuple[str, bool]]:
    return lambda value: (f"= {expected:g}", value == expected)


def build_figures(
    by_name: dict[str, Backend],
    memories: int,
    turn_figures: dict[str, TurnFigures],
    append_rates: dict[tuple[str, int], list[float]],
    append_checks: dict[str, dict[str, int]],
    searches: dict[str, Any],
    recall_quality: dict[str, Any],
    scoring: dict[tuple[str, int], dict[str, Any]],
) -> list[Figure]:
    """One row per figure: SQLite's value, PostgreSQL's (None where it did not run)."""
    names = list(by_name)

    def both(value: Callable[[str], float]) -> tuple[float | None, float | None]:
        return (value("sqlite"), value("postgresql") if "postgresql" in names else None)

    figures: list[Figure] = []
    figures.append(
        Figure(f"load {memories:,} memories (import_memories)", "s", *both(lambda n: by_name[n].load_seconds))
    )
    figures.append(Figure("memories after the load", "", *both(lambda n: by_name[n].memories)))
    for label, key in (
        ("turn: prepare_prompt + write_turn", "turn_ms"),
        ("  prepare_prompt", "prepare_ms"),
        ("  write_turn", "write_ms"),
    ):
        figures.append(Figure(f"{label} p50", "ms", *both(lambda n, k=key: median(getattr(turn_figures[n], k)))))
        figures.append(
            Figure(f"{label} p99", "ms", *both(lambda n, k=key: percentile(getattr(turn_figures[n], k), 99)))
        )
    if "postgresql" in names:
        s, p = turn_figures["sqlite"], turn_figures["postgresql"]
        figures.append(
            Figure("turn: recalled overlap@10 with SQLite's", "", None, mean_overlap(s.recalled, p.recalled))
        )
        same = sum(a == b for a, b in zip(s.context, p.context, strict=True)) / len(s.context)
        figures.append(Figure("turn: pins + recent turns same as SQLite's", "", None, same))
    for writers in (1, WRITERS):
        label = "append: write_turn, 1 writer" if writers == 1 else f"append: write_turn, {writers} concurrent writers"
        figures.append(Figure(label, "/s", *both(lambda n, w=writers: median(append_rates[(n, w)]))))
    figures.append(
        Figure(
            "append: turns read back / written",
            "",
            *both(lambda n: append_checks[n]["read_back"] / append_checks[n]["written"]),
            target=exactly(1.0),
        )
    )
    figures.append(
        Figure(
            "append: count grew by / turns written",
            "",
            *both(lambda n: append_checks[n]["count_grew_by"] / append_checks[n]["written"]),
            target=exactly(1.0),
        )
    )
    figures.append(Figure("search (/memory search) p50", "ms", *both(lambda n: median(searches[n]["ms"]))))
    figures.append(Figure("search p99", "ms", *both(lambda n: percentile(searches[n]["ms"], 99))))
    figures.append(
        Figure(
            "search: queries with a match",
            "%",
            *both(lambda n: 100 * sum(bool(i) for i in searches[n]["ids"]) / len(searches[n]["ids"])),
        )
    )
    if "postgresql" in names:
        figures.append(
            Figure(
                "search: top-10 overlap with SQLite's",
                "",
                None,
                mean_overlap(searches["sqlite"]["ids"], searches["postgresql"]["ids"]),
            )
        )
    figures.append(
        Figure(
            f"recall@10, recall set ({recall_quality['questions']} questions)",
            "",
            *both(lambda n: recall_quality[n]["recall_at_10"]),
        )
    )
    for processes in (1, 2):
        label = f"scoring, {processes} process{'es' if processes > 1 else ''} x {SCORING_CONCURRENCY}"
        ideal = processes * SCORING_CONCURRENCY / CLASSIFIER_SECONDS
        floor = SCORING_TARGET_RATIO * ideal
        s1 = scoring[("sqlite", 1)]
        sqlite_value = s1["jobs_per_second"] if processes == 1 else None
        pg = scoring.get(("postgresql", processes))
        against = ("1 process", s1["jobs_per_second"]) if processes == 2 else None
        figures.append(
            Figure(
                f"{label}: jobs/s (ideal {ideal:g})",
                "/s",
                sqlite_value,
                pg["jobs_per_second"] if pg else None,
                against,
                at_least(floor),
            )
        )
        figures.append(
            Figure(
                f"{label}: jobs/s over the first 90%",
                "/s",
                s1["jobs_per_second_first_90_percent"] if processes == 1 else None,
                pg["jobs_per_second_first_90_percent"] if pg else None,
                ("1 process", s1["jobs_per_second_first_90_percent"]) if processes == 2 else None,
            )
        )
        figures.append(
            Figure(
                f"{label}: scored exactly once (share)",
                "",
                s1["scored_exactly_once"] / s1["jobs"] if processes == 1 else None,
                pg["scored_exactly_once"] / pg["jobs"] if pg else None,
                target=exactly(1.0),
            )
        )
        figures.append(
            Figure(
                f"{label}: classifier calls per memory",
                "",
                s1["classifier_calls_per_memory"] if processes == 1 else None,
                pg["classifier_calls_per_memory"] if pg else None,
            )
        )
    return figures


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


async def _run(quick: bool) -> Result:
    from bench.bench_recall import postgres_cluster
    from bench.bench_scoring import _score_answer
    from companion.config import Config
    from tests.fakes.llm_server import FakeLLM

    spec = QUICK_SPEC if quick else FULL_SPEC
    turn_count, query_count = (QUICK_TURNS, QUICK_QUERIES) if quick else (FULL_TURNS, FULL_QUERIES)
    appends, rounds = (QUICK_APPENDS, QUICK_APPEND_ROUNDS) if quick else (FULL_APPENDS, FULL_APPEND_ROUNDS)
    scoring_jobs = QUICK_SCORING_JOBS if quick else FULL_SCORING_JOBS
    result = Result("backends")
    result.extra["load_average_at_start"] = os.getloadavg()
    dataset = load_dataset(spec)
    events = history_events(dataset, scoring_jobs)
    pins = history_pins(dataset)
    config = Config()
    after_history = max(e.created_at for e in events) + 60.0
    turns = make_turns(dataset, turn_count, "backends-turns", MESSAGE_ID_BASE, after_history)
    warmup_turns = make_turns(dataset, WARMUP, "backends-warmup", MESSAGE_ID_BASE + 100_000, after_history - 30.0)
    queries = make_turns(dataset, query_count, "backends-search", 0, 0.0)
    search_warmup = make_turns(dataset, WARMUP, "backends-search-warmup", 0, 0.0)
    result.extra["dataset"] = {
        "memories": len(events),
        "scopes": spec.scopes,
        "heavy_scope_memories": dataset.heavy.memories,
        "waiting_for_a_score": scoring_jobs,
        "pins": len(pins),
    }
    print(
        f"dataset: {len(events):,} memories in {spec.scopes} scopes (heavy {dataset.heavy.memories:,}),"
        f" {scoring_jobs} waiting for a score, {len(pins)} pins",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    notes: list[str] = []
    pg_version = None
    try:
        with durable_postgres(), postgres_cluster() as cluster:
            if cluster is None:
                notes.append("PostgreSQL skipped: no server could be started (the reason is printed above).")
            async with contextlib.AsyncExitStack() as stack:
                print("loading SQLite through import_memories ...", flush=True)
                sqlite_backend = await open_sqlite(workdir, events, pins, dataset)
                stack.push_async_callback(sqlite_backend.store.close)
                backends = [sqlite_backend]
                if cluster is not None:
                    print("loading PostgreSQL through import_memories ...", flush=True)
                    pg_backend = await open_postgres(stack, cluster, events, pins, dataset)
                    pg_version = await pg_backend.store.pool.fetchval("SHOW server_version")  # type: ignore[attr-defined]
                    if pg_backend.numbering != sqlite_backend.numbering:
                        raise RuntimeError("PostgreSQL numbered the memories differently from SQLite")
                    backends.append(pg_backend)
                by_name = {b.name: b for b in backends}
                for backend in backends:
                    print(
                        f"  {backend.name}: {backend.memories:,} memories in {backend.load_seconds:.1f} s", flush=True
                    )

                print(f"search: {query_count} queries ...", flush=True)
                searches = await run_searches(backends, search_warmup, queries)
                print(f"turns: {turn_count} turns ...", flush=True)
                turn_figures = await run_turns(config, backends, warmup_turns, turns)

                print(f"appends: {rounds} rounds of {appends} turns, 1 writer and {WRITERS} writers ...", flush=True)
                append_rates, append_checks = await run_appends(backends, dataset, appends, rounds, after_history)

                scale = QUICK_RECALL_SCALE if quick else FULL_RECALL_SCALE
                print(f"recall set (scale {scale:g}) on each backend ...", flush=True)
                recall_quality = await recall_set_scores(cluster, scale, workdir)

                print(
                    f"scoring: {scoring_jobs} memories, classifier at {CLASSIFIER_SECONDS * 1000:.0f} ms ...",
                    flush=True,
                )
                fake = FakeLLM()
                fake.responders[CLASSIFIER_MODEL] = _score_answer(CLASSIFIER_SECONDS)
                await fake.start()
                scoring: dict[tuple[str, int], dict[str, Any]] = {}
                try:
                    scoring[("sqlite", 1)] = await run_scoring("sqlite", sqlite_backend.score_targets[0], 1, fake)
                    if "postgresql" in by_name:
                        targets = by_name["postgresql"].score_targets
                        scoring[("postgresql", 1)] = await run_scoring("postgresql", targets[0], 1, fake)
                        scoring[("postgresql", 2)] = await run_scoring("postgresql", targets[1], 2, fake)
                finally:
                    await fake.stop()
                for (name, processes), scored in scoring.items():
                    print(f"  {name}, {processes} process(es): {scored['jobs_per_second']:.1f} jobs/s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    figures = build_figures(
        by_name, len(events), turn_figures, append_rates, append_checks, searches, recall_quality, scoring
    )
    notes.append(
        "* against SQLite's 1 process. SQLite has no 2-process figure: one process owns a SQLite database"
        " (the bot holds its data folder's lock; scoring claims live in that process's memory)."
    )
    if pg_version:
        notes.append(
            f"PostgreSQL {pg_version}: a throwaway cluster with the durable defaults (fsync, synchronous_commit on);"
            " SQLite as the bot opens it (WAL, synchronous=FULL)."
        )
    print_side_by_side(figures, notes)
    add_rows(result, figures)
    result.extra["append_checks"] = append_checks
    result.extra["scoring"] = {f"{name}_{processes}": scored for (name, processes), scored in scoring.items()}
    result.extra["recall_set"] = recall_quality
    result.extra["postgresql_version"] = pg_version
    result.extra["load_average_at_end"] = os.getloadavg()
    return result


def run(quick: bool = False) -> Result:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--score-worker":
        asyncio.run(score_worker(*sys.argv[2:]))
    else:
        main(run)
