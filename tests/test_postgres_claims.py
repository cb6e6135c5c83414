"""Scoring claims on PostgreSQL: processes claiming at once never get the same memory, and together get all."""

import asyncio

from storage.commands import TurnRecord
from storage.events import MemoryWritten
from storage.postgres.store import PostgresStore
from storage.scope import Scope

GUILD = Scope.for_guild(1000, 10)


def waiting(index: int) -> MemoryWritten:
    return MemoryWritten(
        bot_id=GUILD.bot_id,
        scope_kind=GUILD.kind,
        scope_id=GUILD.id,
        channel_id=5,
        author_id=7,
        author_name="Alice",
        bot_name="Mnemo",
        user_text=f"turn {index}",
        reply_text="ok",
        user_message_id=10_000 + index,
        created_at=1_700_000_000.0 + index,
    )


async def test_processes_claiming_together_share_the_queue_without_overlap(postgres_dsn):
    stores = [await PostgresStore.open(postgres_dsn, max_size=4) for _ in range(3)]
    try:
        await stores[0].import_memories([waiting(i) for i in range(300)])
        await stores[0].write_turn(TurnRecord(GUILD, 5, 7, "Alice", "Mnemo", "one more", "ok", user_message_id=1))
        everything = set(await stores[0].unscored_memory_ids(after_id=0, limit=1000))

        async def claim_all(store: PostgresStore, name: str) -> list[int]:
            mine: list[int] = []
            while batch := await store.claim_unscored(name, limit=7, lease_seconds=60):
                mine += batch
                await asyncio.sleep(0)  # let the others in between
            return mine

        claimed = await asyncio.gather(*(claim_all(store, f"process-{i}") for i, store in enumerate(stores)))
        flat = [memory_id for batch in claimed for memory_id in batch]
        assert len(flat) == len(set(flat)), "a memory was claimed twice"
        assert set(flat) == everything
    finally:
        for store in stores:
            await store.close()
