"""A memory as a plain JSON record, for people and tools outside the bot (recall --json, /memory export)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from storage.memories import Memory


def memory_record(memory: Memory) -> dict[str, Any]:
    return {
        "id": memory.id,
        "message_id": memory.user_message_id,
        "created_at": datetime.fromtimestamp(memory.created_at, UTC).isoformat(timespec="milliseconds"),
        "channel_id": memory.channel_id,
        "author_id": memory.author_id,
        "author_name": memory.author_name,
        "text": memory.text,
        "user_text": memory.user_text,
        "reply_text": memory.reply_text,
        "significance": memory.significance,
        "pinned": memory.pinned,
        "source": memory.source,
    }
