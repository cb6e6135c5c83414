"""The memory store: every operation the bot's upper layers (cogs/, companion/, the CLI) need.

They see only this interface, the dataclasses storage already has (Memory,
Scope, SearchHit, ChannelFilter and the outcomes of commands), and the
store's own errors. A backend (storage/sqlite_store.py) implements it; what
is one backend's alone (SQLite's backups, snapshots and FTS details) stays
behind it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from storage.commands import MemoryNotFound, PinOutcome, ScoringOutcome, TurnRecord
from storage.events import MemoryWritten
from storage.memories import Memory
from storage.pin_rules import ManualPinLimit
from storage.scope import Scope
from storage.search import SearchHit
from storage.stats import MemoryCounts
from storage.visibility import ChannelFilter, ChannelVisibility

# The commands' own errors belong to the interface too.
__all__ = ["ManualPinLimit", "MemoryNotFound", "MemoryStore", "StoreError"]


class StoreError(Exception):
    """The store could not do it (a full disk, an I/O error): nothing was changed.

    `full` is set when the storage is out of space, which people are told
    in those words.
    """

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


class MemoryStore(Protocol):
    """The event-sourced memory of every scope the bot serves.

    Memory ids grow in the order memories are written: paging (`before_id`,
    `after_id`), "later" and "oldest" all go by id. Lists come oldest first
    unless a method says otherwise. No read returns another scope's memory.
    """

    # Writing: each is one event (or a few) applied with its projection in one transaction.

    async def write_turn(self, turn: TurnRecord) -> int:
        """Remember an answered turn; the new memory's id."""
        ...

    async def import_memories(self, events: Sequence[MemoryWritten]) -> int:
        """Remember imported turns, skipping messages already remembered or forgotten; how many were new."""
        ...

    async def record_significance(self, memory_id: int, score: int, *, model: str, pin_cap: int) -> ScoringOutcome: ...

    async def record_scoring_failure(self, memory_id: int, *reasons: str) -> bool: ...

    async def pin(
        self, scope: Scope, memory_id: int, *, actor_id: int, pin_cap: int, member_quota: int | None = None
    ) -> PinOutcome: ...

    async def unpin(self, scope: Scope, memory_id: int, *, actor_id: int) -> PinOutcome: ...

    async def forget(self, scope: Scope, memory_id: int, *, actor_id: int | None, reason: str = "") -> Memory: ...

    async def forget_many(
        self, scope: Scope, memory_ids: Sequence[int], *, actor_id: int | None, reason: str = ""
    ) -> list[int]: ...

    async def rewrite(self, scope: Scope, memory_id: int, user_text: str, *, reason: str) -> int:
        """Replace a memory's text (its message was edited); the new memory's id."""
        ...

    async def scrub_copies(self, memory_ids: Sequence[int]) -> int:
        """Remove forgotten memories from every copy the store keeps beside its log (snapshots); how
        many files changed."""
        ...

    async def checkpoint(self) -> bool:
        """Make what was just forgotten leave any write-ahead copy too; False if it must be retried."""
        ...

    # Reading memories.

    async def get_memory(
        self, scope: Scope, memory_id: int, *, channel_filter: ChannelFilter | None = None
    ) -> Memory | None: ...

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
        """The scope's memories, newest first, paged by id."""
        ...

    async def count_memories(
        self, scope: Scope, *, pinned_only: bool = False, channel_filter: ChannelFilter | None = None
    ) -> int: ...

    async def pinned_and_recent(
        self, scope: Scope, channel_id: int, recent: int, *, channel_filter: ChannelFilter | None = None
    ) -> tuple[list[Memory], list[Memory]]:
        """The scope's pins, oldest first, and the channel's last `recent` turns, oldest first by when they
        were said: what every prompt holds besides recall. `channel_filter` applies to the pins (the
        recent turns are the channel's own)."""
        ...

    async def search(
        self, scope: Scope, text: str, limit: int, *, channel_filter: ChannelFilter | None = None
    ) -> list[SearchHit]:
        """The best `limit` matches for `text` in the scope's whole history."""
        ...

    def has_search_terms(self, text: str) -> bool:
        """Whether `text` holds any word the search can look for (very common words are skipped)."""
        ...

    async def next_turns(self, scope: Scope, turns: Sequence[Memory]) -> dict[int, Memory]: ...

    async def memories_by_id(self, scope: Scope, memory_ids: Sequence[int]) -> list[Memory]: ...

    async def drawing_on(
        self, scope: Scope, memory_id: int, *, channel_filter: ChannelFilter | None = None
    ) -> list[Memory]:
        """Later memories whose prompt held this one."""
        ...

    async def memory_ids(
        self, scope: Scope, *, author_id: int | None = None, channel_id: int | None = None
    ) -> list[int]: ...

    async def memories_of_messages(
        self, bot_id: int, message_ids: Sequence[int], *, replies: bool = True
    ) -> list[tuple[int, Scope]]:
        """The memories these Discord messages (a person's, or with `replies` the bot's) came from."""
        ...

    async def memory_scope(self, memory_id: int) -> Scope | None: ...

    async def memories_before(self, memory: Memory, limit: int) -> list[Memory]: ...

    # The scoring queue: the memories waiting for a score are the queue.

    async def unscored_memory_ids(self, *, after_id: int, limit: int) -> list[int]: ...

    async def count_unscored(self) -> int: ...

    async def claim_unscored(self, claimant: str, *, limit: int, lease_seconds: float) -> list[int]:
        """Claim up to `limit` of the oldest memories waiting for a score that nobody holds a live
        claim on, for `lease_seconds`; their ids, oldest first.

        Several processes may share one store: a memory is claimed by one at a
        time, and the claim of a process that died runs out with its lease.
        """
        ...

    async def release_claims(self, claimant: str, memory_ids: Sequence[int]) -> None:
        """Give back `claimant`'s claims on these memories (scored, failed, or left for later)."""
        ...

    async def renew_claims(self, claimant: str, memory_ids: Sequence[int], *, lease_seconds: float) -> list[int]:
        """Extend `claimant`'s claims on these memories to `lease_seconds` from now; the ids it still
        holds (a claim whose lease ran out stays its own until another claimant takes it)."""
        ...

    async def counts(self) -> MemoryCounts:
        """How much is remembered, for /status."""
        ...

    # Channels, servers left, and who the bot is.

    async def record_guild_channels(self, guild: Scope, channels: Iterable[ChannelVisibility]) -> bool: ...

    async def thread_parent(self, guild: Scope, channel_id: int) -> int | None: ...

    async def forget_guild_channels(self, guild: Scope) -> None: ...

    async def note_departures(self, bot_id: int, guild_ids: Iterable[int], *, at: float) -> None: ...

    async def clear_departures(self, bot_id: int, guild_ids: Iterable[int]) -> None: ...

    async def departures(self, bot_id: int) -> dict[int, float]: ...

    async def remembered_guilds(self, bot_id: int) -> list[int]: ...

    async def record_login(self, bot_id: int, name: str) -> None:
        """Note the bot's user id, for the command-line tools that run beside it."""
        ...

    async def last_bot_id(self) -> int | None:
        """The user id of the bot that logged in last with this store, or None if none ever did."""
        ...

    async def close(self) -> None: ...
