"""The memory store on SQLite: storage.store.MemoryStore over one database file.

Each method is the storage module that does the job (commands, memories,
search, visibility, departures, identity, stats) bound to this database's
connections: the writer for commands, the search reader for full-text
search, the other reader for everything else. SQLite's errors leave as
StoreError, so nothing above storage needs to know it is SQLite.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

from storage import commands, departures, identity, memories, search, sqlite, stats, visibility
from storage.commands import PinOutcome, ScoringOutcome, TurnRecord
from storage.database import Database
from storage.events import MemoryWritten
from storage.memories import Memory
from storage.scope import Scope
from storage.search import SearchHit
from storage.snapshots import scrub_memories
from storage.stats import MemoryCounts
from storage.store import StoreError
from storage.visibility import ChannelFilter, ChannelVisibility

P = ParamSpec("P")
T = TypeVar("T")


def store_error(exc: sqlite.Error) -> StoreError:
    """SQLite's error as the store's own, keeping its words and whether the disk is full."""
    return StoreError(str(exc), full=getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL")


def _translated(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except sqlite.Error as exc:
            raise store_error(exc) from exc

    return wrapper


class SQLiteStore:
    """MemoryStore on an open Database; `snapshots_dir` is where its snapshots live."""

    def __init__(self, db: Database, *, snapshots_dir: Path | None = None) -> None:
        self.db = db
        self.snapshots_dir = snapshots_dir
        self._claims: dict[int, tuple[str, float]] = {}  # memory id -> (claimant, lease end, monotonic)

    @classmethod
    async def open(cls, path: Path, *, snapshots_dir: Path | None = None) -> SQLiteStore:
        """Create or migrate the database at `path` (see Database.open) and serve it."""
        return cls(await Database.open(path, snapshots_dir=snapshots_dir), snapshots_dir=snapshots_dir)

    @classmethod
    async def open_for_reading(cls, path: Path) -> SQLiteStore:
        """Serve an up-to-date database for reading only, beside a running bot or not."""
        return cls(await Database.open_for_reading(path))

    # writing

    @_translated
    async def write_turn(self, turn: TurnRecord) -> int:
        return await commands.write_memory(self.db, turn)

    @_translated
    async def import_memories(self, events: Sequence[MemoryWritten]) -> int:
        return await commands.import_memories(self.db, events)

    @_translated
    async def record_significance(self, memory_id: int, score: int, *, model: str, pin_cap: int) -> ScoringOutcome:
        return await commands.record_significance(self.db, memory_id, score, model=model, pin_cap=pin_cap)

    @_translated
    async def record_scoring_failure(self, memory_id: int, *reasons: str) -> bool:
        return await commands.record_scoring_failure(self.db, memory_id, *reasons)

    @_translated
    async def pin(
        self, scope: Scope, memory_id: int, *, actor_id: int, pin_cap: int, member_quota: int | None = None
    ) -> PinOutcome:
        return await commands.pin_memory(
            self.db, scope, memory_id, actor_id=actor_id, pin_cap=pin_cap, member_quota=member_quota
        )

    @_translated
    async def unpin(self, scope: Scope, memory_id: int, *, actor_id: int) -> PinOutcome:
        return await commands.unpin_memory(self.db, scope, memory_id, actor_id=actor_id)

    @_translated
    async def forget(self, scope: Scope, memory_id: int, *, actor_id: int | None, reason: str = "") -> Memory:
        return await commands.forget_memory(self.db, scope, memory_id, actor_id=actor_id, reason=reason)

    @_translated
    async def forget_many(
        self, scope: Scope, memory_ids: Sequence[int], *, actor_id: int | None, reason: str = ""
    ) -> list[int]:
        return await commands.forget_memories(self.db, scope, memory_ids, actor_id=actor_id, reason=reason)

    @_translated
    async def rewrite(self, scope: Scope, memory_id: int, user_text: str, *, reason: str) -> int:
        return await commands.rewrite_memory(self.db, scope, memory_id, user_text, reason=reason)

    @_translated
    async def scrub_copies(self, memory_ids: Sequence[int]) -> int:
        if self.snapshots_dir is None:
            return 0
        return await asyncio.to_thread(scrub_memories, self.snapshots_dir, memory_ids)

    @_translated
    async def checkpoint(self) -> bool:
        return await self.db.checkpoint()

    # reading memories

    @_translated
    async def get_memory(
        self, scope: Scope, memory_id: int, *, channel_filter: ChannelFilter | None = None
    ) -> Memory | None:
        return await memories.get_memory(self.db.reader, scope, memory_id, channel_filter=channel_filter)

    @_translated
    async def list_memories(
        self,
        scope: Scope,
        *,
        pinned_only: bool = False,
        author_id: int | None = None,
        before_id: int | None = None,
        limit: int = 10,
        channel_filter: ChannelFilter | None = None,
    ) -> list[Memory]:
        return await memories.list_memories(
            self.db.reader,
            scope,
            pinned_only=pinned_only,
            author_id=author_id,
            before_id=before_id,
            limit=limit,
            channel_filter=channel_filter,
        )

    @_translated
    async def count_memories(
        self, scope: Scope, *, pinned_only: bool = False, channel_filter: ChannelFilter | None = None
    ) -> int:
        return await memories.count_memories(
            self.db.reader, scope, pinned_only=pinned_only, channel_filter=channel_filter
        )

    @_translated
    async def pinned_and_recent(
        self, scope: Scope, channel_id: int, recent: int, *, channel_filter: ChannelFilter | None = None
    ) -> tuple[list[Memory], list[Memory]]:
        return await memories.pinned_and_recent(
            self.db.reader, scope, channel_id, recent, channel_filter=channel_filter
        )

    @_translated
    async def search(
        self, scope: Scope, text: str, limit: int, *, channel_filter: ChannelFilter | None = None
    ) -> list[SearchHit]:
        # Its own reader connection, so a turn's search runs beside its other reads.
        return await search.search(self.db.search_reader, scope, text, limit, channel_filter=channel_filter)

    def has_search_terms(self, text: str) -> bool:
        return bool(search.query_terms(text))

    @_translated
    async def next_turns(self, scope: Scope, turns: Sequence[Memory]) -> dict[int, Memory]:
        return await memories.next_turns(self.db.reader, scope, turns)

    @_translated
    async def memories_by_id(self, scope: Scope, memory_ids: Sequence[int]) -> list[Memory]:
        return await memories.memories_by_id(self.db.reader, scope, memory_ids)

    @_translated
    async def drawing_on(
        self, scope: Scope, memory_id: int, *, channel_filter: ChannelFilter | None = None
    ) -> list[Memory]:
        return await memories.drawing_on(self.db.reader, scope, memory_id, channel_filter=channel_filter)

    @_translated
    async def memory_ids(
        self, scope: Scope, *, author_id: int | None = None, channel_id: int | None = None
    ) -> list[int]:
        return await memories.memory_ids(self.db.reader, scope, author_id=author_id, channel_id=channel_id)

    @_translated
    async def memories_of_messages(
        self, bot_id: int, message_ids: Sequence[int], *, replies: bool = True
    ) -> list[tuple[int, Scope]]:
        return await memories.memories_of_messages(self.db.reader, bot_id, message_ids, replies=replies)

    @_translated
    async def memory_scope(self, memory_id: int) -> Scope | None:
        return await memories.memory_scope(self.db.reader, memory_id)

    @_translated
    async def memories_before(self, memory: Memory, limit: int) -> list[Memory]:
        return await memories.memories_before(self.db.reader, memory, limit)

    # the scoring queue

    @_translated
    async def unscored_memory_ids(self, *, after_id: int, limit: int) -> list[int]:
        return await memories.unscored_memory_ids(self.db.reader, after_id=after_id, limit=limit)

    @_translated
    async def count_unscored(self) -> int:
        return await memories.count_unscored(self.db.reader)

    @_translated
    async def claim_unscored(self, claimant: str, *, limit: int, lease_seconds: float) -> list[int]:
        # One process owns a SQLite database (storage/datadir_lock.py), so claims live in memory.
        now = time.monotonic()
        self._claims = {i: (who, until) for i, (who, until) in self._claims.items() if until > now}
        claimed: list[int] = []
        after = 0
        while len(claimed) < limit:
            batch = await memories.unscored_memory_ids(self.db.reader, after_id=after, limit=limit + len(self._claims))
            if not batch:
                break
            claimed += [i for i in batch if i not in self._claims][: limit - len(claimed)]
            after = batch[-1]
        for memory_id in claimed:
            self._claims[memory_id] = (claimant, now + lease_seconds)
        return claimed

    async def release_claims(self, claimant: str, memory_ids: Sequence[int]) -> None:
        for memory_id in memory_ids:
            if self._claims.get(memory_id, (None, 0.0))[0] == claimant:
                del self._claims[memory_id]

    async def renew_claims(self, claimant: str, memory_ids: Sequence[int], *, lease_seconds: float) -> list[int]:
        until = time.monotonic() + lease_seconds
        held = [i for i in memory_ids if self._claims.get(i, (None, 0.0))[0] == claimant]
        for memory_id in held:
            self._claims[memory_id] = (claimant, until)
        return sorted(held)

    @_translated
    async def counts(self) -> MemoryCounts:
        return await stats.memory_counts(self.db.reader)

    # channels, servers left, and who the bot is

    @_translated
    async def record_guild_channels(self, guild: Scope, channels: Iterable[ChannelVisibility]) -> bool:
        return await visibility.record_guild_channels(self.db, guild, channels)

    @_translated
    async def thread_parent(self, guild: Scope, channel_id: int) -> int | None:
        return await visibility.thread_parent(self.db, guild, channel_id)

    @_translated
    async def forget_guild_channels(self, guild: Scope) -> None:
        await visibility.forget_guild_channels(self.db, guild)

    @_translated
    async def note_departures(self, bot_id: int, guild_ids: Iterable[int], *, at: float) -> None:
        await departures.note_departures(self.db, bot_id, guild_ids, at=at)

    @_translated
    async def clear_departures(self, bot_id: int, guild_ids: Iterable[int]) -> None:
        await departures.clear_departures(self.db, bot_id, guild_ids)

    @_translated
    async def departures(self, bot_id: int) -> dict[int, float]:
        return await departures.departures(self.db, bot_id)

    @_translated
    async def remembered_guilds(self, bot_id: int) -> list[int]:
        return await departures.remembered_guilds(self.db, bot_id)

    @_translated
    async def record_login(self, bot_id: int, name: str) -> None:
        await identity.record_login(self.db, bot_id, name)

    @_translated
    async def last_bot_id(self) -> int | None:
        rows = await self.db.reader.execute_fetchall(
            "SELECT bot_id FROM bot_identity ORDER BY logged_in_at DESC LIMIT 1"
        )
        return int(rows[0][0]) if rows else None

    async def close(self) -> None:
        await self.db.close()
