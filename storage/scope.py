"""Whose memories a read or write may touch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScopeKind = Literal["guild", "dm"]


@dataclass(frozen=True)
class Scope:
    """One bot's memories in one guild, or in its DMs with one user.

    Every memory read takes a Scope, and every query filters on all three
    fields, so no query can return another scope's memories.
    """

    bot_id: int
    kind: ScopeKind
    id: int

    def __post_init__(self) -> None:
        if self.kind not in ("guild", "dm"):
            raise ValueError(f"scope kind must be 'guild' or 'dm', not {self.kind!r}")

    @classmethod
    def for_guild(cls, bot_id: int, guild_id: int) -> Scope:
        return cls(bot_id, "guild", guild_id)

    @classmethod
    def for_dm(cls, bot_id: int, user_id: int) -> Scope:
        return cls(bot_id, "dm", user_id)

    @property
    def token(self) -> str:
        """A single full-text token naming the scope, so search can filter inside FTS5."""
        return f"s{self.bot_id}{self.kind[0]}{self.id}"

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"
