"""Build the prompt for one turn within a token budget.

Order of priority: the persona and the message itself, then every pinned
memory, then the channel's recent turns and the recalled memories sharing
what is left. Tokens are estimated at four characters each, which is close
enough for English and errs on the generous side for most other text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from storage.memories import Memory

CHARS_PER_TOKEN = 4
# Share of the flexible budget kept for recent turns before recall gets a go.
RECENT_TURNS_SHARE = 0.6
# A single memory or turn never takes more than this many characters.
MAX_ITEM_CHARS = 1500
# The incoming message keeps at most this share of the whole budget.
MAX_MESSAGE_SHARE = 0.5
# Weights of the recall boosts (relevance stays the main signal).
SIGNIFICANCE_BOOST = 0.5
RECENCY_BOOST = 0.3
RECENCY_HALF_LIFE_DAYS = 30.0


@dataclass(frozen=True)
class IncomingMessage:
    author_name: str
    text: str


@dataclass(frozen=True)
class PromptParts:
    persona_name: str
    system_prompt: str
    message: IncomingMessage
    pinned: Sequence[Memory] = ()
    recalled: Sequence[Memory] = ()
    recent: Sequence[Memory] = ()
    where: str = ""


@dataclass
class Prompt:
    messages: list[dict[str, str]]
    pinned_ids: list[int] = field(default_factory=list)
    recalled_ids: list[int] = field(default_factory=list)
    recent_ids: list[int] = field(default_factory=list)
    estimated_tokens: int = 0


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - 1)].rstrip() + "…"


def memory_line(memory: Memory) -> str:
    day = datetime.fromtimestamp(memory.created_at, UTC).strftime("%Y-%m-%d")
    return f"- [{day}] " + clip(memory.text, MAX_ITEM_CHARS).replace("\n", " / ")


def build_prompt(parts: PromptParts, budget_tokens: int) -> Prompt:
    """The chat messages for this turn, fitted into `budget_tokens`."""
    budget_chars = budget_tokens * CHARS_PER_TOKEN
    header = parts.system_prompt.strip()
    if parts.where:
        header += f"\n\nYou are {parts.persona_name}, talking {parts.where}."
    message_text = clip(parts.message.text, int(budget_chars * MAX_MESSAGE_SHARE))
    user_message = {"role": "user", "content": f"{parts.message.author_name}: {message_text}"}
    used = len(header) + len(user_message["content"])

    # Pins always go in; they are clipped only if they alone would blow the budget.
    pinned_lines = [memory_line(m) for m in parts.pinned]
    pinned_block = ""
    if pinned_lines:
        pinned_block = "\n\nThings you must always remember:\n" + "\n".join(pinned_lines)
        pinned_block = clip(pinned_block, max(0, budget_chars - used))
    used += len(pinned_block)

    remaining = max(0, budget_chars - used)
    turn_messages, recent_ids, turn_chars = _fit_recent(parts.recent, int(remaining * RECENT_TURNS_SHARE))
    remaining -= turn_chars
    shown = {m.id for m in parts.pinned} | set(recent_ids)
    recalled_lines: list[str] = []
    recalled_ids: list[int] = []
    recall_intro = "\n\nMemories that may be relevant:\n"
    for memory in parts.recalled:
        if memory.id in shown:
            continue
        line = memory_line(memory)
        cost = len(line) + 1 + (len(recall_intro) if not recalled_lines else 0)
        if cost > remaining:
            break
        recalled_lines.append(line)
        recalled_ids.append(memory.id)
        remaining -= cost
    # Whatever recall left unused goes to older turns.
    if remaining > 0 and len(recent_ids) < len(parts.recent):
        turn_messages, recent_ids, _ = _fit_recent(parts.recent, int(remaining) + turn_chars)

    system = header + pinned_block
    if recalled_lines:
        system += recall_intro + "\n".join(recalled_lines)
    messages = [{"role": "system", "content": system}, *turn_messages, user_message]
    total = sum(len(m["content"]) for m in messages)
    return Prompt(
        messages=messages,
        pinned_ids=[m.id for m in parts.pinned],
        recalled_ids=recalled_ids,
        recent_ids=recent_ids,
        estimated_tokens=math.ceil(total / CHARS_PER_TOKEN),
    )


def _fit_recent(recent: Sequence[Memory], max_chars: int) -> tuple[list[dict[str, str]], list[int], int]:
    """The newest turns that fit in `max_chars`, as alternating chat messages, oldest first."""
    chosen: list[Memory] = []
    used = 0
    for memory in reversed(recent):
        user = clip(f"{memory.author_name}: {memory.user_text}", MAX_ITEM_CHARS)
        reply = clip(memory.reply_text, MAX_ITEM_CHARS)
        cost = len(user) + len(reply)
        if used + cost > max_chars:
            break
        chosen.append(memory)
        used += cost
    chosen.reverse()
    messages: list[dict[str, str]] = []
    for memory in chosen:
        messages.append({"role": "user", "content": clip(f"{memory.author_name}: {memory.user_text}", MAX_ITEM_CHARS)})
        messages.append({"role": "assistant", "content": clip(memory.reply_text, MAX_ITEM_CHARS)})
    return messages, [m.id for m in chosen], used


def rank_recalled(candidates: Sequence[tuple[Memory, float]], *, now: float | None = None, limit: int) -> list[Memory]:
    """Order recall candidates by relevance, boosted by significance and recency.

    `candidates` pairs each memory with its text relevance (higher is
    better). Relevance is normalised to the best candidate; significance
    (unscored counts as ordinary) and an exponential recency decay multiply it.
    """
    if not candidates:
        return []
    now = time.time() if now is None else now
    best = max(relevance for _, relevance in candidates) or 1.0
    scored = []
    for memory, relevance in candidates:
        significance = 1 if memory.significance is None else memory.significance
        age_days = max(0.0, now - memory.created_at) / 86_400
        recency = 0.5 ** (age_days / RECENCY_HALF_LIFE_DAYS)
        boost = 1 + SIGNIFICANCE_BOOST * significance / 3 + RECENCY_BOOST * recency
        scored.append((relevance / best * boost, memory.id, memory))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [memory for _, _, memory in scored[:limit]]
