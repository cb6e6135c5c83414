"""The events of the memory log: past-tense, frozen, versioned.

An event is stored as (kind, version, JSON payload). Reading an older
payload version runs the chain of upcasters registered for its kind, so
code only ever sees the current shape.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from storage.scope import Scope

SOURCE_CHAT = "chat"
SOURCE_IMPORT = "import"


@dataclass(frozen=True)
class MemoryWritten:
    """A turn (a user message and the bot's reply) was remembered."""

    KIND: ClassVar[str] = "memory_written"
    VERSION: ClassVar[int] = 3

    bot_id: int
    scope_kind: str
    scope_id: int
    channel_id: int
    author_id: int
    author_name: str
    bot_name: str
    user_text: str
    reply_text: str
    user_message_id: int | None
    created_at: float
    redacted: bool = False
    # Where the turn came from: "chat" (the bot answered it) or "import" (a server's history).
    source: str = SOURCE_CHAT
    # Whether the classifier should score it; an import does not ask for a model call per message.
    wants_score: bool = True
    # The bot's messages that carried the reply: deleting one in Discord forgets the memory.
    reply_message_ids: tuple[int, ...] = ()
    # The memories the prompt held when the bot wrote the reply (its provenance): a reply
    # may repeat what they said.
    drew_on: tuple[int, ...] = ()
    # Where in the server: for a thread, its channel (`channel_id` is the thread), and whether
    # it is private (its members alone see it).
    parent_channel_id: int | None = None
    private_thread: bool = False

    def __post_init__(self) -> None:
        # Read back from JSON it is a list; events compare equal however they were made.
        object.__setattr__(self, "reply_message_ids", tuple(self.reply_message_ids))
        object.__setattr__(self, "drew_on", tuple(self.drew_on))

    @property
    def scope(self) -> Scope:
        return Scope(self.bot_id, self.scope_kind, self.scope_id)

    def redact(self) -> MemoryWritten:
        """The same event with every piece of text dropped."""
        return dataclasses.replace(self, author_name="", bot_name="", user_text="", reply_text="", redacted=True)


@dataclass(frozen=True)
class MemorySignificanceSet:
    """The classifier scored a memory 0 (small talk) to 3 (pivotal)."""

    KIND: ClassVar[str] = "memory_significance_set"
    VERSION: ClassVar[int] = 1

    memory_id: int
    score: int
    model: str


@dataclass(frozen=True)
class MemorySignificanceFailed:
    """One classifier call for a memory gave no usable answer (or was refused).

    Each one spends a call of the memory's budget (memories.MAX_SCORING_FAILURES).
    """

    KIND: ClassVar[str] = "memory_significance_failed"
    VERSION: ClassVar[int] = 1

    memory_id: int
    reason: str
    # Set when the memory is forgotten: a reason recorded by an older version may quote its text.
    redacted: bool = False


@dataclass(frozen=True)
class MemoryPinChanged:
    """A memory was pinned or unpinned, automatically or by a person."""

    KIND: ClassVar[str] = "memory_pin_changed"
    VERSION: ClassVar[int] = 1

    memory_id: int
    pinned: bool
    auto: bool
    actor_id: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class MemoryForgotten:
    """Someone asked the bot to forget a memory; its text is gone everywhere."""

    KIND: ClassVar[str] = "memory_forgotten"
    VERSION: ClassVar[int] = 1

    memory_id: int
    actor_id: int | None = None
    # Why, when no person asked: "deleted in Discord", say.
    reason: str = ""


Event = MemoryWritten | MemorySignificanceSet | MemorySignificanceFailed | MemoryPinChanged | MemoryForgotten

EVENT_TYPES: dict[str, type] = {
    cls.KIND: cls
    for cls in (
        MemoryWritten,
        MemorySignificanceSet,
        MemorySignificanceFailed,
        MemoryPinChanged,
        MemoryForgotten,
    )
}

# (kind, from_version) -> function turning that payload into the next version.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _memory_written_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # Every memory before imports existed came from a chat turn.
    return {**data, "source": SOURCE_CHAT, "wants_score": True}


def _memory_written_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    # Version 2 payloads were written with some or none of these (the reply's messages and the
    # provenance came within it); where none is known, a memory said in a channel, drawing on nothing.
    return {
        "reply_message_ids": (),
        "drew_on": (),
        "parent_channel_id": None,
        "private_thread": False,
        **data,
    }


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    (MemoryWritten.KIND, 1): _memory_written_v1_to_v2,
    (MemoryWritten.KIND, 2): _memory_written_v2_to_v3,
}


class UnknownEvent(Exception):
    """The log holds an event kind or version this code cannot read."""


# Each event type's field names in declaration order. Events are flat (numbers, text,
# booleans, None), so these fields are exactly what `dataclasses.asdict` would give.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in EVENT_TYPES.values()
}


def payload_of(event: Event) -> dict[str, Any]:
    """The event's payload: its fields, in declaration order."""
    return {name: getattr(event, name) for name in _FIELD_NAMES[type(event)]}


def dump_payload(data: dict[str, Any]) -> str:
    """The JSON text stored for a payload."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def encode(event: Event) -> tuple[str, int, str]:
    """(kind, version, JSON payload) for storage."""
    return event.KIND, event.VERSION, dump_payload(payload_of(event))


def read_payload(kind: str, version: int, payload: str | dict[str, Any]) -> dict[str, Any]:
    """A stored payload as a dict in the current version's shape, upcasting older versions.

    What `decode` builds an event from; a rebuild reads payloads this way, without the dataclass.
    """
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise UnknownEvent(f"unknown event kind {kind!r}")
    data = json.loads(payload) if isinstance(payload, str) else dict(payload)
    if version == cls.VERSION:
        return data
    while version < cls.VERSION:
        upcast = UPCASTERS.get((kind, version))
        if upcast is None:
            raise UnknownEvent(f"no upcaster for {kind} v{version}")
        data = upcast(data)
        version += 1
    if version != cls.VERSION:
        raise UnknownEvent(f"{kind} v{version} is newer than this code's v{cls.VERSION}")
    return data


def decode(kind: str, version: int, payload: str | dict[str, Any]) -> Event:
    """Rebuild an event from storage, upcasting older payload versions."""
    data = read_payload(kind, version, payload)
    return EVENT_TYPES[kind](**data)
