"""Whose memories a read or write may touch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

ScopeKind = Literal["guild", "dm"]
SCOPE_TAG_CHARS = 8
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    out = []
    while number:
        number, digit = divmod(number, 36)
        out.append(_DIGITS[digit])
    return "".join(reversed(out)) or "0"


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

    @cached_property
    def token(self) -> str:
        """A short fixed-length tag of the scope, prefixed to its words in the full-text index.

        A hash keeps index terms short (ids are 18-digit snowflakes). Two scopes
        sharing a tag would only share index terms: every read still filters
        on the scope's own columns, so a collision could cost speed, never privacy.
        """
        digest = hashlib.blake2b(f"{self.bot_id}:{self.kind}:{self.id}".encode(), digest_size=8).digest()
        return _base36(int.from_bytes(digest, "big"))[:SCOPE_TAG_CHARS].rjust(SCOPE_TAG_CHARS, "0")

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"
