"""The storage interface: the SQLite backend implements all of it, and its errors are the store's own."""

import inspect

import pytest

from storage.commands import TurnRecord
from storage.scope import Scope
from storage.sqlite_store import SQLiteStore
from storage.store import MemoryStore, StoreError

SCOPE = Scope.for_guild(1000, 100)


def operations(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


def test_the_sqlite_store_implements_every_operation_with_its_signature():
    wanted, offered = operations(MemoryStore), operations(SQLiteStore)
    assert wanted.keys() <= offered.keys(), f"SQLiteStore lacks {sorted(wanted.keys() - offered.keys())}"
    for name, signature in wanted.items():
        assert str(offered[name]) == str(signature), f"SQLiteStore.{name}{offered[name]} is not {name}{signature}"
        assert inspect.iscoroutinefunction(vars(SQLiteStore)[name]) == inspect.iscoroutinefunction(
            vars(MemoryStore)[name]
        ), name


async def test_a_full_disk_is_a_store_error_that_says_so_and_changes_nothing(db):
    store = SQLiteStore(db)
    first = await store.write_turn(TurnRecord(SCOPE, 1, 11, "Alice", "Mnemo", "hello", "hi"))
    # The database may not grow by a single page: what a full disk does to SQLite.
    async with db.writer.execute("PRAGMA page_count") as cursor:
        (pages,) = await cursor.fetchone()
    await db.writer.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError) as raised:
        await store.write_turn(TurnRecord(SCOPE, 1, 11, "Alice", "Mnemo", "a long story " * 2000, "wow"))
    assert raised.value.full and "full" in str(raised.value)
    assert [m.id for m in await store.list_memories(SCOPE)] == [first]
