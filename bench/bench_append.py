"""Appending events: the real write path against raw sqlite3 inserts of the same rows.

The product: `storage.commands.write_memory`, as the chat flow calls it after
every answered turn, on the bot's own `Database` (the writer connection's thread,
`BEGIN IMMEDIATE`, the memory_written event encoded to JSON, its projection
row, its FTS5 entry, the projection position, `COMMIT`): one turn's event and
projection updates per transaction, committed per turn.

The baseline: the same driver (sqlean) through `storage.sqlite.connect`, so
the same PRAGMAs (WAL, synchronous=FULL), on the same schema, inserting the
same event row, the same `memories` row and the same FTS5 row with plain
INSERTs and a COMMIT per turn, called straight from Python: no event loop,
no thread hop, no JSON encoding, no tokenizing (payloads and index text are
prepared before the clock starts). A second baseline leaves out the FTS row,
for context: the full-text index is most of what a turn's write costs.

Turns are chat-like messages from `bench/dataset.py`, spread over its scopes.
Each case runs on a fresh database and on a copy of a dataset that already
holds 100,000 memories (quick: 10,000). The contenders take turns, several
rounds each, on their own copies of the file, so background load hits them
alike; each rate is the median over rounds, and the ratio is product /
baseline of those medians. Target: product / raw (same rows) >= 0.5.

    python -m bench.bench_append [--quick]
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import CACHE_DIR, Result, main, median
from bench.dataset import BOT_ID, BOT_NAME, Dataset, DatasetSpec, load_dataset
from storage import sqlite
from storage.commands import TurnRecord, write_memory
from storage.database import Database
from storage.events import MemoryWritten, encode, payload_of
from storage.projections import INDEX_MEMORY, INSERT_MEMORY, index_entry, new_memory
from storage.schema import migrate

TARGET_RATIO = 0.5
FULL_TURNS, QUICK_TURNS = 1500, 300  # per contender and round
FULL_ROUNDS, QUICK_ROUNDS = 5, 3
WARMUP_TURNS = 50
FULL_SPEC = DatasetSpec(memories=100_000)
QUICK_SPEC = DatasetSpec(memories=10_000)
WORK_DIR = CACHE_DIR / "append-bench-out"

INSERT_EVENT = "INSERT INTO events (kind, version, payload, recorded_at) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True)
class PreparedTurn:
    """A turn as the product receives it, and the rows the raw baseline inserts for it."""

    record: TurnRecord
    payload: str
    memory_values: tuple  # the memories row after its two id columns (id and written_seq)
    search_fields: tuple[str, ...]


def prepare_turns(dataset: Dataset, count: int, seed: str) -> list[PreparedTurn]:
    text = dataset.chat_text(seed)
    rng = random.Random(seed)
    turns = []
    for _ in range(count):
        layout = dataset.heavy if rng.random() < 0.3 else rng.choice(dataset.layout.scopes)
        author_id = rng.choice(layout.member_ids)
        record = TurnRecord(
            scope=layout.scope,
            channel_id=rng.choice(layout.channel_ids),
            author_id=author_id,
            author_name=dataset.layout.user_names[author_id],
            bot_name=BOT_NAME,
            user_text=text.user_message(layout),
            reply_text=text.reply(layout),
            user_message_id=rng.getrandbits(60),
            created_at=time.time(),
        )
        event = MemoryWritten(
            bot_id=BOT_ID,
            scope_kind=record.scope.kind,
            scope_id=record.scope.id,
            channel_id=record.channel_id,
            author_id=record.author_id,
            author_name=record.author_name,
            bot_name=record.bot_name,
            user_text=record.user_text,
            reply_text=record.reply_text,
            user_message_id=record.user_message_id,
            created_at=record.created_at,
        )
        # The memories row the product writes for it (after its two id columns), and its index entry.
        row = new_memory(0, payload_of(event))
        assert row is not None
        values = tuple(row[2:])
        search_fields = index_entry(row)[1:]
        turns.append(PreparedTurn(record, encode(event)[2], values, search_fields))
    return turns


class Raw:
    """The baseline: plain INSERTs and a COMMIT per turn on a synchronous connection."""

    def __init__(self, path: Path, *, fts: bool) -> None:
        self.conn = sqlite.connect(path)
        migrate(self.conn)
        self.fts = fts

    def write(self, turn: PreparedTurn) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        event = (MemoryWritten.KIND, MemoryWritten.VERSION, turn.payload, time.time())
        seq = conn.execute(INSERT_EVENT, event).lastrowid
        conn.execute(INSERT_MEMORY, (seq, seq, *turn.memory_values))
        if self.fts:
            conn.execute(INDEX_MEMORY, (seq, *turn.search_fields))
        conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


async def _product_rate(db: Database, turns: list[PreparedTurn]) -> float:
    started = time.perf_counter()
    for turn in turns:
        await write_memory(db, turn.record)
    return len(turns) / (time.perf_counter() - started)


def _raw_rate(raw: Raw, turns: list[PreparedTurn]) -> float:
    started = time.perf_counter()
    for turn in turns:
        raw.write(turn)
    return len(turns) / (time.perf_counter() - started)


async def _case(
    label: str, make_file: Callable[[Path], None], dataset: Dataset, turns_per_round: int, rounds: int
) -> dict[str, float]:
    """Median turns/s of the product and both baselines, each on its own copy of the starting file."""
    case_dir = WORK_DIR / label
    shutil.rmtree(case_dir, ignore_errors=True)
    paths = {name: case_dir / name / "memory.db" for name in ("product", "raw", "raw+fts")}
    for path in paths.values():
        path.parent.mkdir(parents=True)
        make_file(path)
    # Flush the copies now: on ext4, a commit's fsync would otherwise also write out their dirty pages.
    os.sync()
    warmup = prepare_turns(dataset, WARMUP_TURNS, f"append-warmup-{label}")
    batches = [prepare_turns(dataset, turns_per_round, f"append-{label}-{r}") for r in range(rounds)]
    db = await Database.open(paths["product"])
    raw = Raw(paths["raw"], fts=False)
    raw_fts = Raw(paths["raw+fts"], fts=True)
    rates: dict[str, list[float]] = {"product": [], "raw": [], "raw+fts": []}
    try:
        await _product_rate(db, warmup)
        _raw_rate(raw, warmup)
        _raw_rate(raw_fts, warmup)
        for r, batch in enumerate(batches):
            # Rotate who goes first, so a burst of background load does not always hit the same one.
            order = ["product", "raw", "raw+fts"]
            order = order[r % 3 :] + order[: r % 3]
            for name in order:
                if name == "product":
                    rates[name].append(await _product_rate(db, batch))
                else:
                    rates[name].append(_raw_rate(raw if name == "raw" else raw_fts, batch))
    finally:
        await db.close()
        raw.close()
        raw_fts.close()
        shutil.rmtree(case_dir, ignore_errors=True)
    return {name: median(values) for name, values in rates.items()}


async def _run(quick: bool) -> Result:
    spec = QUICK_SPEC if quick else FULL_SPEC
    dataset = load_dataset(spec)
    turns, rounds = (QUICK_TURNS, QUICK_ROUNDS) if quick else (FULL_TURNS, FULL_ROUNDS)
    result = Result("event append")
    result.extra = {"turns_per_round": turns, "rounds": rounds, "dataset": spec.stem}

    def empty(path: Path) -> None:
        conn = sqlite.connect(path)
        try:
            migrate(conn)
        finally:
            conn.close()

    cases = {
        "fresh database": empty,
        f"{spec.memories // 1000}k memories": dataset.copy_to,
    }
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    try:
        for label, make_file in cases.items():
            rates = await _case(label.split()[0], make_file, dataset, turns, rounds)
            ratio = rates["product"] / rates["raw+fts"]
            result.add(f"{label}: write_memory", rates["product"], "/s")
            result.add(f"{label}: raw sqlite3, same rows (event, memory, FTS)", rates["raw+fts"], "/s")
            result.add(
                f"{label}: write_memory / raw same rows", ratio, "x", f">= {TARGET_RATIO:g}", ratio >= TARGET_RATIO
            )
            result.add(f"{label}: raw sqlite3 without the FTS row", rates["raw"], "/s")
            result.add(f"{label}: write_memory / raw without FTS", rates["product"] / rates["raw"], "x")
    finally:
        shutil.rmtree(WORK_DIR, ignore_errors=True)
    return result


def run(quick: bool = False) -> Result:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    main(run)
