"""The turn flow without Discord: gather context, ask the model, remember the turn.

The chat cog turns a Discord message into an `IncomingTurn`, sends what
`compose_reply` returns, and then calls `remember` with what was delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from companion import recall
from companion.config import Config
from companion.context import IncomingMessage, Prompt, PromptParts, build_prompt
from companion.llm import LLMClient, LLMError
from companion.recall import Recalled
from storage.commands import TurnRecord
from storage.memories import Memory
from storage.scope import Scope
from storage.store import MemoryStore

log = logging.getLogger(__name__)

FAILURE_REPLIES = {
    "timeout": "Sorry, my thoughts timed out just now. Could you try again in a moment?",
    "rate_limited": "Sorry, I'm being rate-limited by my language model right now. Please try again shortly.",
    "connection": "Sorry, I can't reach my language model at the moment. Please try again in a little while.",
    "server": "Sorry, my language model had a problem answering. Please try again in a moment.",
    "rejected": ("Sorry, my language model refused that request. Try rephrasing, or tell my owner if it persists."),
    "empty": "Sorry, I came up empty on that one. Could you try asking again?",
}


@dataclass(frozen=True)
class IncomingTurn:
    scope: Scope
    channel_id: int
    author_id: int
    author_name: str
    text: str
    message_id: int | None = None
    where: str = ""
    # In a thread: its channel, and whether the thread is private.
    parent_channel_id: int | None = None
    private_thread: bool = False


@dataclass(frozen=True)
class PreparedPrompt:
    """A turn's prompt, and the memories in it: what `bot.py recall` shows."""

    prompt: Prompt
    pinned: list[Memory]
    recent: list[Memory]
    recalled: list[Recalled]


async def prepare_prompt(
    config: Config, store: MemoryStore, turn: IncomingTurn, *, now: float | None = None
) -> PreparedPrompt:
    """Gather the pins, the channel's recent turns and the recalled memories, and fit them into the prompt."""
    memory_config = config.memory
    now = time.time() if now is None else now
    # The search runs beside the reading of the pins and recent turns. Those are set aside from
    # recall; the search looks further only if that leaves too little.
    place = recall.place_filter(
        turn.scope, turn.channel_id, turn.parent_channel_id, memory_config.share_across_channels
    )
    (pinned, recent), hits = await asyncio.gather(
        store.pinned_and_recent(turn.scope, turn.channel_id, memory_config.recent_turns, channel_filter=place),
        recall.find(store, turn.scope, turn.text, limit=memory_config.recall_size, channel_filter=place),
    )
    shown = {m.id for m in pinned} | {m.id for m in recent}
    if recall.crowded_out(hits, shown, limit=memory_config.recall_size):
        hits = await recall.find(
            store,
            turn.scope,
            turn.text,
            limit=memory_config.recall_size,
            room=len(shown),
            channel_filter=place,
        )
    recalled = await recall.choose(store, turn.scope, hits, limit=memory_config.recall_size, exclude=shown, now=now)
    parts = PromptParts(
        persona_name=config.persona.name,
        system_prompt=config.persona.system_prompt,
        message=IncomingMessage(turn.author_name, turn.text),
        pinned=pinned,
        recalled=recalled,
        recent=recent,
        where=turn.where,
    )
    prompt = build_prompt(parts, memory_config.context_budget_tokens)
    in_prompt = set(prompt.pinned_ids) | set(prompt.recent_ids) | set(prompt.recalled_ids)
    return PreparedPrompt(
        prompt=prompt,
        pinned=[m for m in pinned if m.id in in_prompt],
        recent=[m for m in recent if m.id in in_prompt],
        recalled=[r for r in recalled if r.memory.id in in_prompt],
    )


@dataclass(frozen=True)
class Reply:
    text: str
    ok: bool
    prompt: Prompt | None = None
    failure: LLMError | None = None


class TurnService:
    """Composes replies and writes memories for answered turns.

    `memory_written` hears of each new memory (the scoring worker's wake-up).
    """

    def __init__(
        self,
        config: Config,
        store: MemoryStore,
        llm: LLMClient,
        *,
        memory_written: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.llm = llm
        self.memory_written = memory_written

    async def build_prompt(self, turn: IncomingTurn) -> Prompt:
        return (await prepare_prompt(self.config, self.store, turn)).prompt

    async def compose_reply(self, turn: IncomingTurn) -> Reply:
        """The model's answer, or a short friendly failure message (ok=False)."""
        prompt = await self.build_prompt(turn)
        try:
            completion = await self.llm.chat(prompt.messages)
        except LLMError as exc:
            log.warning("chat model failed in channel %s (%s): %s", turn.channel_id, turn.scope, exc)
            return Reply(text=FAILURE_REPLIES.get(exc.kind, FAILURE_REPLIES["server"]), ok=False, failure=exc)
        return Reply(text=completion.text.strip(), ok=True, prompt=prompt)

    async def remember(
        self,
        turn: IncomingTurn,
        reply_text: str,
        *,
        reply_message_ids: Sequence[int] = (),
        drew_on: Sequence[int] = (),
    ) -> int:
        """Write the memory of an answered turn, with the memories its prompt held; returns its id."""
        record = TurnRecord(
            scope=turn.scope,
            channel_id=turn.channel_id,
            author_id=turn.author_id,
            author_name=turn.author_name,
            bot_name=self.config.persona.name,
            user_text=turn.text,
            reply_text=reply_text,
            user_message_id=turn.message_id,
            reply_message_ids=tuple(reply_message_ids),
            drew_on=tuple(drew_on),
            parent_channel_id=turn.parent_channel_id,
            private_thread=turn.private_thread,
        )
        memory_id = await self.store.write_turn(record)
        if self.memory_written is not None:
            self.memory_written(memory_id)
        return memory_id
