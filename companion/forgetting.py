"""Forgetting, end to end: the store's forget, then every other place the running bot keeps a memory.

A forget commits first (the event log redacts the text in the same
transaction). What follows only chases copies: the scoring queue, the
store's copies beside its log (snapshots), and the write-ahead file, which
is folded into the database so the pages that held the text leave it too.
A problem there is reported, never raised: the memory is forgotten.

Discord's own forgetting arrives here too: deleted messages and channels,
edits, and servers that removed the bot.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from companion.worker import SignificanceWorker
from storage.scope import Scope
from storage.store import MemoryNotFound, MemoryStore, StoreError

log = logging.getLogger(__name__)

# A checkpoint held up by a reader (a backup, a snapshot) is tried again this often, this many times.
CHECKPOINT_RETRY_SECONDS = 5
CHECKPOINT_RETRIES = 120
# Message ids Discord deleted lately, remembered so a turn answered meanwhile is not kept.
RECENTLY_DELETED_MESSAGES = 10_000


@dataclass
class ForgetCleanup:
    """What happened to a forgotten memory's other copies."""

    problems: list[str] = field(default_factory=list)
    # A reader held up the checkpoint: the old pages leave the database files shortly, on a retry.
    checkpoint_pending: bool = False


class Forgetting:
    """Forgets memories and chases their copies. `bot_id` gives the bot's user id once it is known."""

    def __init__(self, store: MemoryStore, scoring: SignificanceWorker, bot_id: Callable[[], int | None]) -> None:
        self.store = store
        self.scoring = scoring
        self._bot_id = bot_id
        self._deleted_messages: OrderedDict[int, None] = OrderedDict()
        self._checkpoint_retry: asyncio.Task[None] | None = None

    async def after_forget(self, memory_ids: Sequence[int]) -> ForgetCleanup:
        """Scrub just-forgotten memories from everywhere else the running bot keeps them."""
        cleanup = ForgetCleanup()
        named = ", ".join(f"#{memory_id}" for memory_id in memory_ids)
        for memory_id in memory_ids:
            self.scoring.discard(memory_id)
        try:
            rewritten = await self.store.scrub_copies(memory_ids)
            log.info("forgot memory %s; scrubbed %d snapshot files", named, rewritten)
        except Exception:
            log.exception("could not scrub forgotten memory %s from the snapshots", named)
            cleanup.problems.append("scrubbing the snapshots failed")
        try:
            if not await self.store.checkpoint():
                log.info("a reader held up the checkpoint after forgetting memory %s; retrying", named)
                cleanup.checkpoint_pending = True
                self._retry_checkpoint()
        except StoreError:
            log.exception("checkpoint after forgetting memory %s failed", named)
            cleanup.problems.append("the database checkpoint failed")
        return cleanup

    async def forget_messages(self, message_ids: Sequence[int], *, reason: str) -> list[int]:
        """Forget the memories these Discord messages came from (a person's, or a reply's); their ids."""
        self._deleted_messages.update(dict.fromkeys(message_ids))
        while len(self._deleted_messages) > RECENTLY_DELETED_MESSAGES:
            self._deleted_messages.popitem(last=False)
        bot_id = self._bot_id()
        if bot_id is None:
            return []
        forgotten = []
        for memory_id, scope in await self.store.memories_of_messages(bot_id, message_ids):
            try:
                await self.store.forget(scope, memory_id, actor_id=None, reason=reason)
            except MemoryNotFound:
                continue  # forgotten meanwhile
            forgotten.append(memory_id)
        if forgotten:
            await self.after_forget(forgotten)
        return forgotten

    async def follow_edit(self, message_id: int, text: str, *, reason: str) -> int | None:
        """A person edited a message: its memory (if any) takes the new text; the new memory's id."""
        bot_id = self._bot_id()
        if bot_id is None:
            return None
        for memory_id, scope in await self.store.memories_of_messages(bot_id, [message_id], replies=False):
            memory = await self.store.get_memory(scope, memory_id)
            if memory is None or memory.user_text == text:
                continue  # forgotten meanwhile, or the text did not change (an embed appeared)
            try:
                new_id = await self.store.rewrite(scope, memory_id, text, reason=reason)
            except MemoryNotFound:
                continue
            await self.after_forget([memory_id])
            self.scoring.notify()
            return new_id
        return None

    async def forget_scope(self, scope: Scope, *, reason: str, channel_id: int | None = None) -> int:
        """Forget every memory of a scope (a server the bot left), or of one of its channels with its
        threads (a deleted channel); how many there were."""
        memory_ids = await self.store.memory_ids(scope, channel_id=channel_id)
        forgotten = await self.store.forget_many(scope, memory_ids, actor_id=None, reason=reason)
        if forgotten:
            await self.after_forget(forgotten)
        return len(forgotten)

    def was_deleted(self, message_id: int) -> bool:
        """Whether Discord deleted this message lately (a turn answered meanwhile is then not remembered)."""
        return message_id in self._deleted_messages

    def close(self) -> None:
        if self._checkpoint_retry is not None:
            # Closing the store checkpoints it anyway.
            self._checkpoint_retry.cancel()

    def _retry_checkpoint(self) -> None:
        if self._checkpoint_retry is None or self._checkpoint_retry.done():
            self._checkpoint_retry = asyncio.create_task(self._checkpoint_when_free(), name="checkpoint-retry")

    async def _checkpoint_when_free(self) -> None:
        """Try the checkpoint again until the reader holding it up (a backup, a snapshot) is done."""
        for _ in range(CHECKPOINT_RETRIES):
            await asyncio.sleep(CHECKPOINT_RETRY_SECONDS)
            try:
                if await self.store.checkpoint():
                    log.info("checkpoint done: forgotten text has left the database's WAL")
                    return
            except StoreError as exc:
                log.warning("checkpoint retry failed: %s", exc)
        log.error(
            "the WAL could not be checkpointed for %d minutes", CHECKPOINT_RETRIES * CHECKPOINT_RETRY_SECONDS // 60
        )
