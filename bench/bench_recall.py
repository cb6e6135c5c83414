"""Recall quality and recall speed, measured in the same run.

Quality: the conversations of bench/recall_data.py (about 18,000 turns in
three scopes, with facts, distractors and 258 questions carrying the message
ids of the turns that answer them) are written to a database through the
event log and a rebuild, as the bot would have them. For each question, the
turn's recall runs as the turn runs it (`companion.recall.recall`), and
evidence recall@k is the share of a question's evidence among the first k
memories recalled, averaged over questions (and per question kind). The
share of evidence that lands in the prompt comes from the turn's whole
prompt (`companion.turns.prepare_prompt`: pins, the channel's recent turns
and recall, fitted to the default budget).

The design choices are measured one at a time, each on top of the one
before, so each row says what that choice bought:

- before: the recall this replaced (the newest 100 matches of any word, ranked by FTS5's bm25);
- plain BM25: SQLite FTS5 with the porter stemmer, one table per scope,
  content words OR'd, no window: the baseline the targets are set against;
- whole history: every match of the scope considered, BM25 with the scope's
  own statistics, every field weighing the same, no stemming;
- + stemming (Snowball English, at index and query time);
- + the reply weighing half;
- + the next turn brought along after a hit that asked a question;
- + significance and recency boosts: the product as it ships.

Speed: recall latency in the 200,000-memory scope of the 1M dataset for
fresh chat-like messages, with each row's query-time settings (the index is
the product's), plain BM25 over the same 200,000 memories, and the pruned
search against an exact one that reads every match: how much of the exact
top 10 the pruned search returns, and what the exact one costs.

The other backend, in the same run: on a throwaway PostgreSQL cluster (the
tests' own, tests/postgres.py: no fsync), the quality set is imported
through `PostgresStore.import_memories`, IMPORT_BATCH turns to a
transaction as `import` writes them, in the order SQLite numbered them (so
every memory has the same id on both), and each question's recall runs as
the turn runs it there. Then the grown guild, loaded the same way: its
questions' recall@10 and latencies on both backends. The "postgresql: ..."
rows are printed beside SQLite's shipped figures of the run; without server
binaries they are skipped with one line saying why.

    python -m bench.bench_recall [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import recall_data
from bench.common import CACHE_DIR, Result, main, median, percentile
from bench.dataset import BOT_NAME, Dataset, DatasetSpec, load_dataset
from bench.recall_data import Question, RecallSet
from companion import recall
from companion.config import Config
from companion.turns import IncomingTurn, prepare_prompt
from memory_tools import IMPORT_BATCH
from storage import search, sqlite, tokens
from storage.commands import TurnRecord, memory_written
from storage.connection_thread import Connection
from storage.database import Database
from storage.events import SOURCE_CHAT, SOURCE_IMPORT, MemoryWritten, encode
from storage.rebuild import rebuild_on
from storage.schema import migrate
from storage.scope import Scope
from storage.sqlite_store import SQLiteStore
from storage.store import MemoryStore
from storage.visibility import ChannelVisibility

if TYPE_CHECKING:  # asyncpg, and the tests' cluster helpers, are imported only when PostgreSQL runs
    from storage.postgres.store import PostgresStore
    from tests.postgres import PostgresCluster

TARGET_MARGIN = 0.05  # recall@10 at least 5 points above plain BM25
TARGET_P99_MS = 10.0
KS = (5, 10)
LATENCY_QUERIES, QUICK_LATENCY_QUERIES = 1000, 150
AGREEMENT_QUERIES, QUICK_AGREEMENT_QUERIES = 200, 40
# The reference for the pruned search: every match read, this many scored exactly.
EXACT_SHORTLIST = 2000
# The conversation grown to the size of the big dataset's heavy scope, to see recall at that scale.
GROWN = "guild"
GROWN_MEMORIES, QUICK_GROWN_MEMORIES = 200_000, 40_000
# The recall this replaced: the newest matches it ranked.
BEFORE_WINDOW = 100
BEFORE_MAX_TERMS = 12
PORTER_TABLE = "CREATE VIRTUAL TABLE turns USING fts5 (text, tokenize = 'porter unicode61 remove_diacritics 2')"


@dataclass(frozen=True)
class Choice:
    """A row of the table: the settings recall runs with."""

    label: str
    stemming: bool = True
    field_weights: tuple[float, float, float] = search.FIELD_WEIGHTS
    follow_up_hits: int = recall.FOLLOW_UP_HITS
    significance_boost: float = recall.SIGNIFICANCE_BOOST
    recency_boost: float = recall.RECENCY_BOOST


PRODUCT = Choice("+ significance and recency boosts (shipped)")
CHOICES = (
    Choice(
        "whole history, scope statistics",
        stemming=False,
        field_weights=(1.0, 1.0, 1.0),
        follow_up_hits=0,
        significance_boost=0.0,
        recency_boost=0.0,
    ),
    Choice("+ stemming", field_weights=(1.0, 1.0, 1.0), follow_up_hits=0, significance_boost=0.0, recency_boost=0.0),
    Choice("+ reply weighs half", follow_up_hits=0, significance_boost=0.0, recency_boost=0.0),
    Choice("+ next turn after a hit that asked", significance_boost=0.0, recency_boost=0.0),
    PRODUCT,
)


@contextlib.contextmanager
def settings(choice: Choice) -> Iterator[None]:
    """Run recall with `choice`'s settings (this process only)."""
    saved = (
        tokens.stem,
        search.FIELD_WEIGHTS,
        recall.FOLLOW_UP_HITS,
        recall.SIGNIFICANCE_BOOST,
        recall.RECENCY_BOOST,
    )
    tokens._stems.clear()
    if not choice.stemming:
        tokens.stem = lambda word: word
    search.FIELD_WEIGHTS = choice.field_weights
    recall.FOLLOW_UP_HITS = choice.follow_up_hits
    recall.SIGNIFICANCE_BOOST = choice.significance_boost
    recall.RECENCY_BOOST = choice.recency_boost
    try:
        yield
    finally:
        (
            tokens.stem,
            search.FIELD_WEIGHTS,
            recall.FOLLOW_UP_HITS,
            recall.SIGNIFICANCE_BOOST,
            recall.RECENCY_BOOST,
        ) = saved
        tokens._stems.clear()


# --------------------------------------------------------------------------------------------------
# The quality database
# --------------------------------------------------------------------------------------------------


def turn_events(recall_set: RecallSet) -> list[MemoryWritten]:
    """The set's turns as memory_written events, oldest first: the order both backends number them in."""
    turns = sorted(
        ((c, t) for c in recall_set.conversations.values() for t in c.turns), key=lambda ct: ct[1].created_at
    )
    events = []
    for conversation, turn in turns:
        record = TurnRecord(
            scope=conversation.scope,
            channel_id=turn.channel_id,
            author_id=turn.author_id,
            author_name=turn.author_name,
            bot_name=BOT_NAME,
            user_text=turn.user_text,
            reply_text=turn.reply_text,
            user_message_id=turn.message_id,
            created_at=turn.created_at,
        )
        events.append(memory_written(record, source=SOURCE_CHAT if conversation.bot_replies else SOURCE_IMPORT))
    return events


def public_channels(recall_set: RecallSet) -> dict[Scope, list[int]]:
    """Each guild's channels. Every one is a channel everyone may see, as the running bot would have
    recorded: prompts recall across channels by the default [memory] share_across_channels = "public"."""
    return {c.scope: sorted(c.channel_ids) for c in recall_set.conversations.values() if c.scope.kind == "guild"}


def write_recall_set(recall_set: RecallSet, path: Path) -> dict[int, int]:
    """The set's turns as memory_written events, projected by a rebuild; returns message id -> memory id."""
    conn = sqlite.connect(path)
    try:
        migrate(conn)
        rows = [(seq, *encode(event), event.created_at) for seq, event in enumerate(turn_events(recall_set), start=1)]
        public = [
            (guild.bot_id, guild.id, channel_id, None, 1)
            for guild, channel_ids in sorted(public_channels(recall_set).items(), key=lambda gc: gc[0].id)
            for channel_id in channel_ids
        ]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events (seq, kind, version, payload, recorded_at) VALUES (?, ?, ?, ?, ?)", rows)
        conn.executemany(
            "INSERT INTO channel_visibility (bot_id, guild_id, channel_id, parent_id, public) VALUES (?, ?, ?, ?, ?)",
            public,
        )
        conn.execute("COMMIT")
        rebuild_on(conn)
        return dict(conn.execute("SELECT user_message_id, id FROM memories"))
    finally:
        conn.close()


@dataclass
class Scores:
    hits: dict[int, float]  # k -> summed evidence recall@k
    by_kind: dict[str, list[float]]  # kind -> recall@10 of each question
    in_prompt: float = 0.0
    questions: int = 0

    @classmethod
    def empty(cls) -> Scores:
        return cls({k: 0.0 for k in KS}, defaultdict(list))

    def add(self, question: Question, evidence: set[int], ranked: list[int]) -> None:
        for k in KS:
            self.hits[k] += len(evidence & set(ranked[:k])) / len(evidence)
        self.by_kind[question.kind].append(len(evidence & set(ranked[:10])) / len(evidence))
        self.questions += 1

    def at(self, k: int) -> float:
        return self.hits[k] / max(1, self.questions)

    def kinds(self) -> dict[str, float]:
        return {kind: sum(values) / len(values) for kind, values in sorted(self.by_kind.items())}


def evidence_ids(question: Question, memory_ids: dict[int, int]) -> set[int]:
    return {memory_ids[m] for m in question.evidence}


async def score_choice(
    choice: Choice, recall_set: RecallSet, path: Path, memory_ids: dict[int, int], config: Config
) -> Scores:
    db = await Database.open(path)
    try:
        with settings(choice):
            return await score_store(SQLiteStore(db), recall_set, memory_ids, config)
    finally:
        await db.close()


async def score_store(store: MemoryStore, recall_set: RecallSet, memory_ids: dict[int, int], config: Config) -> Scores:
    """Each question's recall as the turn runs it, and the evidence its whole prompt holds."""
    scores = Scores.empty()
    for question in recall_set.questions:
        scope = recall_set.conversations[question.conversation].scope
        found = await recall.recall(store, scope, question.text, limit=max(KS), now=question.asked_at)
        evidence = evidence_ids(question, memory_ids)
        scores.add(question, evidence, [r.memory.id for r in found])
        prepared = await prepare_prompt(config, store, incoming(recall_set, question), now=question.asked_at)
        in_prompt = {m.id for m in prepared.pinned} | {m.id for m in prepared.recent}
        in_prompt |= {r.memory.id for r in prepared.recalled}
        scores.in_prompt += len(evidence & in_prompt) / len(evidence)
    return scores


def incoming(recall_set: RecallSet, question: Question) -> IncomingTurn:
    conversation = recall_set.conversations[question.conversation]
    return IncomingTurn(
        scope=conversation.scope,
        channel_id=question.channel_id,
        author_id=question.asker_id,
        author_name=conversation.people[question.asker_id],
        text=question.text,
    )


# --------------------------------------------------------------------------------------------------
# Baselines: plain BM25, and the recall this replaced
# --------------------------------------------------------------------------------------------------


def plain_bm25_tables(recall_set: RecallSet, memory_ids: dict[int, int]) -> dict[str, sqlite.sqlite3.Connection]:
    """One FTS5 table (porter) per scope, over each turn's words as the bot narrates them."""
    tables = {}
    for key, conversation in recall_set.conversations.items():
        conn = sqlite.connect(":memory:")
        conn.execute(PORTER_TABLE)
        conn.executemany(
            "INSERT INTO turns (rowid, text) VALUES (?, ?)",
            [(memory_ids[t.message_id], narrate(t.author_name, t.user_text, t.reply_text)) for t in conversation.turns],
        )
        tables[key] = conn
    return tables


def narrate(author: str, said: str, replied: str) -> str:
    return f"{author} said: {said}\n{BOT_NAME} replied: {replied}" if replied else f"{author} said: {said}"


def plain_bm25(conn: sqlite.sqlite3.Connection, text: str, limit: int) -> list[int]:
    words = [w for w in dict.fromkeys(tokens.words(text)) if tokens.is_searchable(w)]
    if not words:
        return []
    match = " OR ".join(f'"{w}"' for w in words)
    rows = conn.execute("SELECT rowid FROM turns WHERE turns MATCH ? ORDER BY bm25(turns) LIMIT ?", (match, limit))
    return [row[0] for row in rows]


def before_tables(recall_set: RecallSet, memory_ids: dict[int, int]) -> sqlite.sqlite3.Connection:
    """The index the replaced recall searched: one column of scope-prefixed words, unstemmed, every scope."""
    conn = sqlite.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE fts USING fts5 (text, tokenize = 'unicode61 remove_diacritics 2')")
    conn.execute("CREATE TABLE memories (id INTEGER PRIMARY KEY, created_at REAL)")
    for conversation in recall_set.conversations.values():
        prefix = conversation.scope.token
        for t in conversation.turns:
            said = f"{t.author_name} {t.user_text} {t.reply_text}"
            indexed = " ".join(prefix + w for w in tokens.words(said) if tokens.is_searchable(w))
            memory_id = memory_ids[t.message_id]
            conn.execute("INSERT INTO fts (rowid, text) VALUES (?, ?)", (memory_id, indexed))
            conn.execute("INSERT INTO memories VALUES (?, ?)", (memory_id, t.created_at))
    return conn


def before_recall(conn: sqlite.sqlite3.Connection, scope: Scope, text: str, now: float, limit: int) -> list[int]:
    """The replaced recall: the newest BEFORE_WINDOW matches of any word, by bm25, then the same boosts."""
    distinct = dict.fromkeys(w for w in tokens.words(text) if tokens.is_searchable(w))
    words = sorted(distinct, key=len, reverse=True)[:BEFORE_MAX_TERMS]
    if not words:
        return []
    match = " OR ".join(f'"{scope.token}{w}"' for w in words)
    rows = conn.execute(
        "WITH hits AS (SELECT rowid AS id, bm25(fts) AS score FROM fts WHERE fts MATCH ? ORDER BY rowid DESC LIMIT ?)"
        " SELECT hits.id, hits.score, m.created_at FROM hits JOIN memories AS m ON m.id = hits.id ORDER BY hits.score"
        " LIMIT ?",
        (match, BEFORE_WINDOW, limit * recall.CANDIDATES_PER_SLOT),
    ).fetchall()
    if not rows:
        return []
    best = max(-score for _, score, _ in rows) or 1.0
    scored = []
    for memory_id, score, created_at in rows:
        recency = 0.5 ** (max(0.0, now - created_at) / 86_400 / recall.RECENCY_HALF_LIFE_DAYS)
        boost = 1 + recall.SIGNIFICANCE_BOOST / 3 + recall.RECENCY_BOOST * recency
        scored.append((-score / best * boost, memory_id))
    scored.sort(reverse=True)
    return [memory_id for _, memory_id in scored[:limit]]


def score_baseline(
    recall_set: RecallSet, memory_ids: dict[int, int], ranker: Callable[[Question], list[int]]
) -> Scores:
    scores = Scores.empty()
    for question in recall_set.questions:
        scores.add(question, evidence_ids(question, memory_ids), ranker(question))
    return scores


# --------------------------------------------------------------------------------------------------
# Speed in the 200,000-memory scope
# --------------------------------------------------------------------------------------------------


async def heavy_latencies(store: SQLiteStore, scope: Scope, queries: list[str]) -> list[float]:
    latencies = []
    for text in queries:
        started = time.perf_counter()
        await recall.recall(store, scope, text, limit=max(KS))
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def heavy_bm25_table(dataset: Dataset) -> Path:
    """Plain BM25 (porter) over the heavy scope's memories, built once per dataset under bench/.cache."""
    path = CACHE_DIR / f"{dataset.path.stem}-heavy-porter.db"
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    source = sqlite.connect(dataset.path, query_only=True)
    target = sqlite.connect(partial)
    try:
        target.execute(PORTER_TABLE)
        heavy = dataset.heavy.scope
        rows = source.execute(
            "SELECT id, author_name, user_text, reply_text FROM memories"
            " WHERE bot_id = ? AND scope_kind = ? AND scope_id = ?",
            (heavy.bot_id, heavy.kind, heavy.id),
        )
        target.execute("BEGIN")
        while batch := rows.fetchmany(10_000):
            entries = [(row[0], narrate(*row[1:])) for row in batch]
            target.executemany("INSERT INTO turns (rowid, text) VALUES (?, ?)", entries)
        target.execute("COMMIT")
    finally:
        source.close()
        target.close()
    partial.rename(path)
    return path


@contextlib.contextmanager
def exhaustive() -> Iterator[None]:
    """No term too common to read in full, and a shortlist as long as asked for."""
    saved = search.POSTINGS_BUDGET, search.SHORTLIST
    search.POSTINGS_BUDGET, search.SHORTLIST = 1 << 40, EXACT_SHORTLIST
    try:
        yield
    finally:
        search.POSTINGS_BUDGET, search.SHORTLIST = saved


async def agreement(reader: Connection, scope: Scope, queries: list[str]) -> tuple[float, list[float]]:
    """How much of the exact top 10 the search returns; and the latencies of finding that exact top 10.

    Exact: every match of every term read, and the best EXACT_SHORTLIST of them by the
    weights of their terms scored field by field (more are never in the top 10).
    """
    overlaps, latencies = [], []
    limit = max(KS) * recall.CANDIDATES_PER_SLOT  # what the turn asks for
    for text in queries:
        pruned = {h.memory.id for h in (await search.search(reader, scope, text, limit))[: max(KS)]}
        started = time.perf_counter()
        with exhaustive():
            full = [h.memory.id for h in await search.search(reader, scope, text, EXACT_SHORTLIST)][: max(KS)]
        latencies.append((time.perf_counter() - started) * 1000)
        if full:
            overlaps.append(len(pruned & set(full)) / len(full))
    return sum(overlaps) / max(1, len(overlaps)), latencies


@dataclass
class Grown:
    shipped: Scores
    exact: Scores
    bm25: Scores
    latencies: list[float]
    # Recall as a turn runs it, kept to the channels a prompt there may draw on (every one public).
    placed: Scores
    placed_latencies: list[float]
    memory_ids: dict[int, int]  # message id -> memory id, as the grown set was numbered
    write_seconds: float  # writing its events and the rebuild


def guild_questions(bigger: RecallSet) -> RecallSet:
    return RecallSet(bigger.conversations, [q for q in bigger.questions if q.conversation == GROWN])


async def grown_scores(bigger: RecallSet, workdir: Path) -> Grown:
    """The guild's questions in `bigger`, the set with the guild grown: shipped recall (unfiltered, and
    kept to the question's channel filter), an exact search, plain BM25; and the shipped recall's latencies there."""
    guild_only = guild_questions(bigger)
    path = workdir / "recall-grown.db"
    started = time.perf_counter()
    memory_ids = write_recall_set(bigger, path)
    write_seconds = time.perf_counter() - started
    shipped, exact, placed = Scores.empty(), Scores.empty(), Scores.empty()
    latencies: list[float] = []
    placed_latencies: list[float] = []
    db = await Database.open(path)
    store = SQLiteStore(db)
    try:
        scope = bigger.conversations[GROWN].scope
        for question in guild_only.questions:
            evidence = evidence_ids(question, memory_ids)
            started = time.perf_counter()
            found = await recall.recall(store, scope, question.text, limit=max(KS), now=question.asked_at)
            latencies.append((time.perf_counter() - started) * 1000)
            shipped.add(question, evidence, [r.memory.id for r in found])
            place = recall.place_filter(scope, question.channel_id, None, Config().memory.share_across_channels)
            started = time.perf_counter()
            found = await recall.recall(
                store, scope, question.text, limit=max(KS), now=question.asked_at, channel_filter=place
            )
            placed_latencies.append((time.perf_counter() - started) * 1000)
            placed.add(question, evidence, [r.memory.id for r in found])
            with exhaustive():
                found = await recall.recall(
                    store, scope, question.text, limit=EXACT_SHORTLIST // 2, now=question.asked_at
                )
            exact.add(question, evidence, [r.memory.id for r in found])
    finally:
        await db.close()
    tables = plain_bm25_tables(RecallSet({GROWN: bigger.conversations[GROWN]}, []), memory_ids)
    bm25 = score_baseline(guild_only, memory_ids, lambda q: plain_bm25(tables[GROWN], q.text, max(KS)))
    return Grown(shipped, exact, bm25, latencies, placed, placed_latencies, memory_ids, write_seconds)


# --------------------------------------------------------------------------------------------------
# PostgreSQL: the same questions on the other backend
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster | None]:
    """A throwaway cluster for this run (the tests' own, tests/postgres.py), stopped and its folder
    deleted afterwards, whatever happens; None, with one line saying why, where none can start."""
    try:
        import pytest

        from tests import postgres
    except ImportError as exc:
        print(f"postgresql: skipped, {exc}", flush=True)
        yield None
        return
    if postgres.find_server_binaries() is None:
        print(f"postgresql: skipped, {postgres.NOT_FOUND}", flush=True)
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-recall-pg-"))
    try:
        try:
            cluster = postgres.start_cluster(folder)
        except pytest.skip.Exception as exc:  # the tests' helper says why as a skip
            print(f"postgresql: skipped, {exc.msg}", flush=True)
            cluster = None
        if cluster is None:
            yield None
            return
        try:
            yield cluster
        finally:
            postgres.stop_cluster(cluster)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def postgres_store(cluster: PostgresCluster) -> AsyncIterator[PostgresStore]:
    """A PostgresStore on a new, empty database of `cluster`, dropped afterwards."""
    from storage.postgres.store import PostgresStore
    from tests.postgres import fresh_database

    async with fresh_database(cluster) as dsn:
        store = await PostgresStore.open(dsn)
        try:
            yield store
        finally:
            await store.close()


async def load_postgres(store: PostgresStore, recall_set: RecallSet, memory_ids: dict[int, int]) -> float:
    """The set's events imported as `import` writes them, IMPORT_BATCH to a transaction, in the order
    SQLite numbered them; the seconds that took. Every memory must get the id it has on SQLite."""
    events = turn_events(recall_set)
    started = time.perf_counter()
    for start in range(0, len(events), IMPORT_BATCH):
        await store.import_memories(events[start : start + IMPORT_BATCH])
    seconds = time.perf_counter() - started
    for guild, channel_ids in public_channels(recall_set).items():
        await store.record_guild_channels(guild, [ChannelVisibility(c, None, public=True) for c in channel_ids])
    # The planner's statistics and the GIN index's pending list, as autovacuum would leave them after a load.
    await store.pool.execute("VACUUM ANALYZE memories")
    numbered = dict(await store.pool.fetch("SELECT user_message_id, id FROM memories"))
    if numbered != memory_ids:
        raise RuntimeError("PostgreSQL numbered the set's memories differently from SQLite")
    return seconds


async def timed_recall(
    store: MemoryStore, recall_set: RecallSet, memory_ids: dict[int, int]
) -> tuple[Scores, list[float]]:
    """Each question's recall as the turn runs it, and how long each took."""
    scores, latencies = Scores.empty(), []
    for question in recall_set.questions:
        scope = recall_set.conversations[question.conversation].scope
        started = time.perf_counter()
        found = await recall.recall(store, scope, question.text, limit=max(KS), now=question.asked_at)
        latencies.append((time.perf_counter() - started) * 1000)
        scores.add(question, evidence_ids(question, memory_ids), [r.memory.id for r in found])
    return scores, latencies


@dataclass
class OnPostgres:
    server_version: str
    scores: Scores
    load_seconds: float
    grown: Scores
    grown_latencies: list[float]
    grown_load_seconds: float
    seconds: float  # all of it, the cluster's start and stop included


async def postgres_scores(
    recall_set: RecallSet, memory_ids: dict[int, int], bigger: RecallSet, grown_ids: dict[int, int], config: Config
) -> OnPostgres | None:
    """The quality set's questions, and the grown guild's with their latencies, on PostgresStore."""
    started = time.perf_counter()
    with postgres_cluster() as cluster:
        if cluster is None:
            return None
        async with postgres_store(cluster) as store:
            version = await store.pool.fetchval("SHOW server_version")
            print(f"  postgresql {version}: the quality set ...", flush=True)
            load_seconds = await load_postgres(store, recall_set, memory_ids)
            scores = await score_store(store, recall_set, memory_ids, config)
        async with postgres_store(cluster) as store:
            print(
                f"  postgresql: the {GROWN} grown to {len(bigger.conversations[GROWN].turns):,} memories ...",
                flush=True,
            )
            grown_load_seconds = await load_postgres(store, bigger, grown_ids)
            grown, grown_latencies = await timed_recall(store, guild_questions(bigger), grown_ids)
    seconds = time.perf_counter() - started
    return OnPostgres(version, scores, load_seconds, grown, grown_latencies, grown_load_seconds, seconds)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


async def _run(quick: bool) -> Result:
    result = Result("recall")
    recall_set = recall_data.generate(scale=0.35 if quick else 1.0)
    config = Config()
    result.extra["quality_set"] = {
        "turns": recall_set.turns,
        "questions": len(recall_set.questions),
        "scopes": {k: len(c.turns) for k, c in recall_set.conversations.items()},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-recall-"))
    try:
        print(f"quality set: {recall_set.turns:,} turns, {len(recall_set.questions)} questions", flush=True)
        paths, write_seconds = {}, {}
        for stemming in (True, False):
            with settings(replace(PRODUCT, stemming=stemming)):
                paths[stemming] = workdir / f"recall-{'stemmed' if stemming else 'plain'}.db"
                started = time.perf_counter()
                memory_ids = write_recall_set(recall_set, paths[stemming])
                write_seconds[stemming] = time.perf_counter() - started

        # The heavy scope of the 1M dataset, for the speed of each choice.
        dataset = load_dataset(DatasetSpec(memories=100_000) if quick else DatasetSpec(memories=1_000_000))
        heavy = dataset.heavy.scope
        chat = dataset.chat_text("recall-bench")
        count = QUICK_LATENCY_QUERIES if quick else LATENCY_QUERIES
        queries = [chat.user_message(dataset.heavy) for _ in range(count)]
        reader = await Connection.open(lambda: sqlite.connect(dataset.path, query_only=True))
        store = SQLiteStore(Database(dataset.path, None, reader))
        try:
            # Once through every query first, so each row below meets the same warm caches.
            await heavy_latencies(store, heavy, queries)
            rows: list[tuple[str, Scores, list[float]]] = []

            before_conn = before_tables(recall_set, memory_ids)
            before = score_baseline(
                recall_set,
                memory_ids,
                lambda q: before_recall(
                    before_conn, recall_set.conversations[q.conversation].scope, q.text, q.asked_at, max(KS)
                ),
            )
            rows.append(("before: newest 100 matches, FTS5 bm25", before, []))

            tables = plain_bm25_tables(recall_set, memory_ids)
            bm25 = score_baseline(recall_set, memory_ids, lambda q: plain_bm25(tables[q.conversation], q.text, max(KS)))
            bm25_heavy = sqlite.connect(heavy_bm25_table(dataset), query_only=True)
            bm25_latencies = []
            for text in queries:
                started = time.perf_counter()
                plain_bm25(bm25_heavy, text, max(KS))
                bm25_latencies.append((time.perf_counter() - started) * 1000)
            rows.append(("plain BM25 (FTS5 porter, whole scope)", bm25, bm25_latencies))

            for choice in CHOICES:
                print(f"  {choice.label} ...", flush=True)
                scores = await score_choice(choice, recall_set, paths[choice.stemming], memory_ids, config)
                latencies = []
                if choice.stemming:  # the 1M dataset's index is stemmed: an unstemmed search would miss
                    with settings(choice):
                        latencies = await heavy_latencies(store, heavy, queries)
                rows.append((choice.label, scores, latencies))

            agreement_count = QUICK_AGREEMENT_QUERIES if quick else AGREEMENT_QUERIES
            overlap, exhaustive_latencies = await agreement(reader, heavy, queries[:agreement_count])
        finally:
            await reader.close()
        grown_size = QUICK_GROWN_MEMORIES if quick else GROWN_MEMORIES
        print(f"  the {GROWN} grown to {grown_size:,} memories ...", flush=True)
        bigger = recall_data.grown(recall_set, GROWN, grown_size)
        grown = await grown_scores(bigger, workdir)
        on_postgres = await postgres_scores(recall_set, memory_ids, bigger, grown.memory_ids, config)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    baseline_at_10 = bm25.at(10)
    product = rows[-1][1]
    table: list[dict[str, Any]] = []
    for label, scores, latencies in rows:
        entry = {"choice": label, "kinds_at_10": scores.kinds()}
        for k in KS:
            result.add(f"{label}: recall@{k}", scores.at(k), "")
            entry[f"recall_at_{k}"] = scores.at(k)
        if scores is not bm25 and scores is not before:
            result.add(f"{label}: evidence in the prompt", scores.in_prompt / max(1, scores.questions), "")
            entry["in_prompt"] = scores.in_prompt / max(1, scores.questions)
        if latencies:
            result.add(f"{label}: latency p50 (200k scope)", median(latencies), "ms")
            result.add(f"{label}: latency p99 (200k scope)", percentile(latencies, 99), "ms")
            entry["latency_ms"] = {"p50": median(latencies), "p99": percentile(latencies, 99)}
        table.append(entry)
    margin = product.at(10) - baseline_at_10
    result.add(
        "shipped recall@10 minus plain BM25",
        margin,
        "",
        f">= {TARGET_MARGIN:g}",
        margin >= TARGET_MARGIN,
    )
    worst = min(product.kinds()[k] - bm25.kinds()[k] for k in bm25.kinds())
    result.add("shipped minus plain BM25, worst question kind (recall@10)", worst, "", ">= 0", worst >= 0)
    for kind, value in product.kinds().items():
        result.add(f"shipped recall@10, {kind} (plain BM25 {bm25.kinds()[kind]:.2f})", value, "")
    p99 = percentile(rows[-1][2], 99)
    result.add("shipped recall p99 in the 200k scope", p99, "ms", f"<= {TARGET_P99_MS:g} ms", p99 <= TARGET_P99_MS)
    label = f"{GROWN} grown to {grown_size:,} memories ({grown.shipped.questions} questions)"
    result.add(f"{label}: shipped recall@10", grown.shipped.at(10), "")
    result.add(f"{label}: shipped recall@10, kept to the channels a prompt there may draw on", grown.placed.at(10), "")
    result.add(f"{label}: exact search (every match read) recall@10", grown.exact.at(10), "")
    result.add(f"{label}: plain BM25 recall@10", grown.bm25.at(10), "")
    result.add(f"{label}: shipped recall latency p50", median(grown.latencies), "ms")
    result.add(f"{label}: shipped recall latency p99", percentile(grown.latencies, 99), "ms")
    result.add(f"{label}: kept to the channels, latency p50", median(grown.placed_latencies), "ms")
    result.add(f"{label}: kept to the channels, latency p99", percentile(grown.placed_latencies, 99), "ms")
    result.extra["grown"] = {
        "memories": grown_size,
        "kinds_at_10": {
            "shipped": grown.shipped.kinds(),
            "kept_to_channels": grown.placed.kinds(),
            "exact": grown.exact.kinds(),
            "bm25": grown.bm25.kinds(),
        },
    }
    result.add("pruned search: share of the exact top 10 it returns (200k scope)", overlap, "")
    result.add("exact search (every match read) latency p50 (200k scope)", median(exhaustive_latencies), "ms")
    result.add("exact search (every match read) latency p99 (200k scope)", percentile(exhaustive_latencies, 99), "ms")
    result.extra["choices"] = table
    if on_postgres is not None:
        add_postgres(result, on_postgres, product, grown, label, write_seconds[True], len(memory_ids))
    return result


def add_postgres(
    result: Result,
    pg: OnPostgres,
    sqlite_shipped: Scores,
    grown: Grown,
    grown_label: str,
    sqlite_write_seconds: float,
    quality_memories: int,
) -> None:
    """The PostgreSQL rows; beside them in `extra`, and printed, SQLite's shipped figures of this run."""
    grown_memories = len(grown.memory_ids)
    in_prompt = {
        "postgresql": pg.scores.in_prompt / max(1, pg.scores.questions),
        "sqlite": sqlite_shipped.in_prompt / max(1, sqlite_shipped.questions),
    }
    sqlite_kinds = sqlite_shipped.kinds()
    # (figure, PostgreSQL, SQLite, unit). A load is PostgresStore.import_memories in IMPORT_BATCH
    # transactions against SQLite's write of the events and a rebuild (how this benchmark writes it).
    side_by_side: list[tuple[str, float, float, str]] = [
        *((f"recall@{k}", pg.scores.at(k), sqlite_shipped.at(k), "") for k in KS),
        ("evidence in the prompt", in_prompt["postgresql"], in_prompt["sqlite"], ""),
        *((f"recall@10, {kind}", value, sqlite_kinds[kind], "") for kind, value in pg.scores.kinds().items()),
        (f"load of the quality set ({quality_memories:,} memories)", pg.load_seconds, sqlite_write_seconds, "s"),
        (
            "load per 10,000 memories (quality set)",
            pg.load_seconds / quality_memories * 10_000,
            sqlite_write_seconds / quality_memories * 10_000,
            "s",
        ),
        (f"{grown_label}: recall@10", pg.grown.at(10), grown.shipped.at(10), ""),
        (f"{grown_label}: recall latency p50", median(pg.grown_latencies), median(grown.latencies), "ms"),
        (
            f"{grown_label}: recall latency p99",
            percentile(pg.grown_latencies, 99),
            percentile(grown.latencies, 99),
            "ms",
        ),
        (f"{grown_label}: load of {grown_memories:,} memories", pg.grown_load_seconds, grown.write_seconds, "s"),
        (
            "load per 10,000 memories (grown set)",
            pg.grown_load_seconds / grown_memories * 10_000,
            grown.write_seconds / grown_memories * 10_000,
            "s",
        ),
    ]
    for figure, value, _, unit in side_by_side:
        result.add(f"postgresql: {figure}", value, unit)
    result.add("postgresql: the benchmark's time on it (cluster, loads, questions)", pg.seconds, "s")
    result.extra["postgresql"] = {
        "server_version": pg.server_version,
        "seconds": pg.seconds,
        "side_by_side": [
            {"figure": figure, "postgresql": value, "sqlite": other, "unit": unit}
            for figure, value, other, unit in side_by_side
        ],
        "grown_kinds_at_10": pg.grown.kinds(),
    }
    print(f"PostgreSQL {pg.server_version} beside SQLite, same run ({pg.seconds:.0f} s on PostgreSQL):", flush=True)
    print(f"  {'':<72} {'postgresql':>10} {'sqlite':>10}", flush=True)
    for figure, value, other, unit in side_by_side:
        print(f"  {figure:<72} {value:>10.3f} {other:>10.3f} {unit}", flush=True)


def run(quick: bool = False) -> Result:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    main(run)
