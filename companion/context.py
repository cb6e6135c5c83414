"""Build the prompt for one turn within a token budget.

Order of priority: the persona and the message itself, then every pinned
memory, then the channel's recent turns and the recalled memories sharing
what is left. Tokens are estimated at four characters each, which is close
enough for English and errs on the generous side for most other text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from companion.recall import Recalled
from storage.memories import Memory

CHARS_PER_TOKEN = 4
# Share of the flexible budget kept for recent turns before recall gets a go.
RECENT_TURNS_SHARE = 0.6
# A single memory or turn never takes more than this many characters.
MAX_ITEM_CHARS = 1500
# The incoming message keeps at most this share of the whole budget.
MAX_MESSAGE_SHARE = 0.5


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
    recalled: Sequence[Recalled] = ()
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


def memory_line(memory: Memory, *, follow_up: bool = False) -> str:
    day = datetime.fromtimestamp(memory.created_at, UTC).strftime("%Y-%m-%d")
    # A turn brought along after a hit reads as what came next in that conversation.
    marker = "  - (next) " if follow_up else "- "
    return f"{marker}[{day}] " + clip(memory.text, MAX_ITEM_CHARS).replace("\n", " / ")


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
    for item in parts.recalled:
        memory = item.memory
        if memory.id in shown:
            continue
        line = memory_line(memory, follow_up=item.follows is not None)
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
        if memory.reply_text:  # an imported message the bot did not answer has no reply
            messages.append({"role": "assistant", "content": clip(memory.reply_text, MAX_ITEM_CHARS)})
    return messages, [m.id for m in chosen], used
