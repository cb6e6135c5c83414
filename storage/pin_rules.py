"""The pin rules, as pure decisions on a scope's pins: every backend applies the same ones.

A scope holds at most `pin_cap` pins. Manual pins are never evicted; over
the cap, the oldest automatic pin yields. One author's turns hold at most
half the cap's automatic pins. A member holds at most their quota of
manual pins, and manual pins never fill more than the cap.

Each function takes the scope's pins as they are and says what changes;
the caller appends the events that make it so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Pin:
    """One pinned memory of a scope."""

    id: int
    auto: bool
    by: int | None  # who pinned it by hand
    author_id: int


class ManualPinLimit(Exception):
    """This person may pin no more here: they hold their quota, or manual pins fill the scope's cap."""

    def __init__(self, limit: int, *, scope_full: bool = False) -> None:
        super().__init__(f"{limit} manual pins already")
        self.limit = limit
        self.scope_full = scope_full


def author_share(pin_cap: int) -> int:
    """The most auto-pins one author's turns may hold in a scope: half the cap."""
    return max(1, pin_cap // 2)


def auto_pin(pins: Sequence[Pin], candidate: int, author_id: int, pin_cap: int) -> tuple[bool, tuple[int, ...]]:
    """Whether a pivotal memory (`candidate`, by `author_id`, not pinned yet) is pinned, and which
    auto-pins yield to make room."""
    # One author's turns hold at most half the cap's auto-pins: past that, their own oldest
    # auto-pin yields first, so one person's big news cannot push out everyone else's.
    own = sorted([pin.id for pin in pins if pin.auto and pin.author_id == author_id] + [candidate])
    yielding = own[: max(0, len(own) - author_share(pin_cap))]
    # Then the candidate competes with the remaining auto-pins: while the scope would be
    # over the cap, the oldest auto-pinned memory yields, and that may be the candidate
    # itself (always so if manual pins fill the cap).
    remaining = [pin for pin in pins if pin.id not in yielding]
    contenders = sorted([pin.id for pin in remaining if pin.auto] + [candidate])
    excess = max(0, len(remaining) + 1 - pin_cap)
    if candidate not in yielding:
        yielding += contenders[: min(excess, len(contenders))]
    return candidate not in yielding, tuple(i for i in yielding if i != candidate)


def check_manual_pin(pins: Sequence[Pin], actor_id: int, *, member_quota: int, pin_cap: int) -> None:
    """Raise ManualPinLimit if a member (not a moderator) may not pin one more by hand."""
    if sum(pin.by == actor_id for pin in pins) >= member_quota:
        raise ManualPinLimit(member_quota)
    if sum(not pin.auto for pin in pins) >= pin_cap:
        raise ManualPinLimit(pin_cap, scope_full=True)


def over_cap(pins: Sequence[Pin], pin_cap: int, *, protect: int) -> tuple[int, ...]:
    """The auto-pins that yield, oldest first, when `pins` (a new manual pin `protect` among them)
    exceed the cap."""
    excess = max(0, len(pins) - pin_cap)
    return tuple(i for i in sorted(pin.id for pin in pins if pin.auto) if i != protect)[:excess]
