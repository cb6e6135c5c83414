"""The turn flow without Discord: gather context, ask the model, remember the turn.

The chat cog turns a Discord message into an `IncomingTurn`, sends what
`compose_reply` returns, and then calls `remember` with what was delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from companion.config import Config
from companion.context import IncomingMessage, Prompt, PromptParts, build_prompt, rank_recalled
from companion.llm import LLMClient, LLMError
from storage import memories
from storage.commands import TurnRecord, write_memory
from storage.database import Database
from storage.scope import Scope

log = logging.getLogger(__name__)

# How many FTS candidates are re-ranked per recalled memory wanted.
RECALL_CANDIDATES_PER_SLOT = 4
# Recent matches ranked on the reply path: half of /memory search's window,
# because every turn pays for it.
RECALL_WINDOW = 100

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


@dataclass(frozen=True)
class Reply:
    text: str
    ok: bool
    prompt: Prompt | None = None
    failure: LLMError | None = None


class TurnService:
    """Composes replies and writes memories for answered turns."""

    def __init__(self, config: Config, db: Database, llm: LLMClient) -> None:
        self.config = config
        self.db = db
        self.llm = llm

    async def build_prompt(self, turn: IncomingTurn) -> Prompt:
        memory_config = self.config.memory
        reader = self.db.reader
        # The search runs on its own reader connection, beside the other two reads.
        pinned, recent, candidates = await asyncio.gather(
            memories.pinned_memories(reader, turn.scope),
            memories.recent_memories(reader, turn.scope, turn.channel_id, memory_config.recent_turns),
            memories.search_memories(
                self.db.search_reader,
                turn.scope,
                turn.text,
                memory_config.recall_size * RECALL_CANDIDATES_PER_SLOT,
                window=RECALL_WINDOW,
            ),
        )
        recalled = rank_recalled(
            [(c.memory, c.relevance) for c in candidates], now=time.time(), limit=memory_config.recall_size
        )
        parts = PromptParts(
            persona_name=self.config.persona.name,
            system_prompt=self.config.persona.system_prompt,
            message=IncomingMessage(turn.author_name, turn.text),
            pinned=pinned,
            recalled=recalled,
            recent=recent,
            where=turn.where,
        )
        return build_prompt(parts, memory_config.context_budget_tokens)

    async def compose_reply(self, turn: IncomingTurn) -> Reply:
        """The model's answer, or a short friendly failure message (ok=False)."""
        prompt = await self.build_prompt(turn)
        try:
            completion = await self.llm.chat(prompt.messages)
        except LLMError as exc:
            log.warning("chat model failed in channel %s (%s): %s", turn.channel_id, turn.scope, exc)
            return Reply(text=FAILURE_REPLIES.get(exc.kind, FAILURE_REPLIES["server"]), ok=False, failure=exc)
        return Reply(text=completion.text.strip(), ok=True, prompt=prompt)

    async def remember(self, turn: IncomingTurn, reply_text: str) -> int:
        """Write the memory of an answered turn; returns its id."""
        record = TurnRecord(
            scope=turn.scope,
            channel_id=turn.channel_id,
            author_id=turn.author_id,
            author_name=turn.author_name,
            bot_name=self.config.persona.name,
            user_text=turn.text,
            reply_text=reply_text,
            user_message_id=turn.message_id,
        )
        return await write_memory(self.db, record)
