"""Split a long reply into Discord-sized messages without losing anything."""

from __future__ import annotations

import re

DISCORD_MESSAGE_LIMIT = 2000

_FENCE = re.compile(r"^\s*```(\S*)", re.MULTILINE)


def split_message(text: str, limit: int = DISCORD_MESSAGE_LIMIT) -> list[str]:
    """Cut `text` into chunks of at most `limit` characters, in order.

    Cuts fall on a line break if one is near, else on a space, else mid-word
    as a last resort. The whitespace at a cut is the only thing dropped. A
    cut inside a ``` code block closes the fence and reopens it in the next
    chunk, so code keeps rendering as code.
    """
    if limit < 40:
        raise ValueError("limit too small to split sensibly")
    chunks: list[str] = []
    rest = text.strip("\n")
    reopen = ""
    while rest:
        body_limit = limit - len(reopen)
        if len(rest) <= body_limit:
            chunks.append(reopen + rest)
            break
        # Leave room to close a fence that is open at the cut.
        cut = _cut_point(rest, body_limit - 4)
        piece, rest = rest[:cut], rest[cut:]
        language = _open_fence_language(reopen + piece)
        piece = piece.rstrip()
        if language is not None:
            chunks.append(f"{reopen}{piece}\n```")
            reopen = f"```{language}\n"
        else:
            chunks.append(reopen + piece)
            reopen = ""
        rest = rest.lstrip(" \n") if not reopen else rest.lstrip("\n")
    return [chunk for chunk in chunks if chunk.strip()]


def _cut_point(text: str, limit: int) -> int:
    window = text[: limit + 1]
    newline = window.rfind("\n")
    if newline >= limit // 2:
        return newline + 1
    space = max(window.rfind(" "), window.rfind("\t"))
    if space >= limit // 2:
        return space + 1
    return limit


def _open_fence_language(text: str) -> str | None:
    """The language of a ``` block still open at the end of `text`, or None."""
    language: str | None = None
    for match in _FENCE.finditer(text):
        language = match.group(1) if language is None else None
    return language
