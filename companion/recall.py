"""What the bot recalls for a message: the one recall used by the turn, `/memory search` and `bot.py recall`.

Relevance over the scope's whole history decides (storage/search.py);
significance and recency only boost it. A memory already in the prompt
(a pin, a recent turn) is not recalled again, so its slot goes to the next
best. When one of the best hits asked a question, the turn that followed it
in its channel (usually the answer, which may share none of the message's
words) is brought along right after it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from storage.memories import Memory
from storage.scope import Scope
from storage.search import SearchHit
from storage.store import MemoryStore
from storage.visibility import ChannelFilter

# Search hits ranked per memory recalled, so the boosts have some to choose from.
CANDIDATES_PER_SLOT = 2
# Weights of the boosts; relevance stays the main signal.
SIGNIFICANCE_BOOST = 0.5
RECENCY_BOOST = 0.3
RECENCY_HALF_LIFE_DAYS = 30.0
# Only the best few hits bring their next turn along, so the rest keep their slots.
FOLLOW_UP_HITS = 5


@dataclass(frozen=True)
class Recalled:
    memory: Memory
    score: float  # relevance relative to the best hit, times the boosts
    follows: int | None = None  # set on a turn brought along after the hit with this id


def place_filter(
    scope: Scope, channel_id: int, parent_channel_id: int | None, share_across_channels: str
) -> ChannelFilter | None:
    """Which memories a prompt in this channel (or thread, of `parent_channel_id`) may hold.

    In a server, by `[memory] share_across_channels`: "public" lets in what was said in this
    channel and its public threads (in a thread: the thread, its channel and that channel's
    public threads) and in channels everyone may see now; "none" only the former; "all"
    everything. In DMs, everything: they are one person's.
    """
    if scope.kind == "dm" or share_across_channels == "all":
        return None
    home = parent_channel_id if parent_channel_id is not None else channel_id
    here = ChannelFilter(channels=frozenset({channel_id, home}), thread_parents=frozenset({home}))
    if share_across_channels == "none":
        return here
    return replace(here, public_of_guild=scope)


async def find(
    store: MemoryStore,
    scope: Scope,
    text: str,
    *,
    limit: int,
    room: int = 0,
    channel_filter: ChannelFilter | None = None,
) -> list[SearchHit]:
    """The search hits `choose` picks from: enough for `limit` memories after `room` are set aside."""
    return await store.search(scope, text, limit * CANDIDATES_PER_SLOT + room, channel_filter=channel_filter)


def crowded_out(hits: Sequence[SearchHit], exclude: Collection[int], *, limit: int) -> bool:
    """Whether setting `exclude` aside leaves too few of `find`'s hits to fill `limit` (while more may exist)."""
    return len(hits) >= limit * CANDIDATES_PER_SLOT and sum(hit.memory.id not in exclude for hit in hits) < limit


async def choose(
    store: MemoryStore,
    scope: Scope,
    hits: Sequence[SearchHit],
    *,
    limit: int,
    exclude: Collection[int] = (),
    now: float | None = None,
    follow_ups: bool = True,
) -> list[Recalled]:
    """The `limit` memories to recall from `hits`: boosted, without `exclude`, with follow-ups."""
    ranked = [r for r in rank(hits, now=now) if r.memory.id not in exclude]
    if not follow_ups:
        return ranked[:limit]
    chosen = ranked[:limit]
    asking = [r.memory for r in chosen[:FOLLOW_UP_HITS] if asked_a_question(r.memory)]
    if not asking:
        return chosen
    following = await store.next_turns(scope, asking)
    result: list[Recalled] = []
    listed: set[int] = set()
    for item in ranked:
        if len(result) >= limit:
            break
        if item.memory.id in listed:
            continue  # already brought along after an earlier hit
        result.append(item)
        listed.add(item.memory.id)
        after = following.get(item.memory.id)
        if after is not None and after.id not in listed and after.id not in exclude and len(result) < limit:
            result.append(Recalled(after, item.score, follows=item.memory.id))
            listed.add(after.id)
    return result


async def recall(
    store: MemoryStore,
    scope: Scope,
    text: str,
    *,
    limit: int,
    exclude: Collection[int] = (),
    now: float | None = None,
    follow_ups: bool = True,
    channel_filter: ChannelFilter | None = None,
) -> list[Recalled]:
    """`find`, then `choose`: the memories recalled for `text`, best first."""
    hits = await find(store, scope, text, limit=limit, room=len(exclude), channel_filter=channel_filter)
    return await choose(store, scope, hits, limit=limit, exclude=exclude, now=now, follow_ups=follow_ups)


def rank(hits: Sequence[SearchHit], *, now: float | None = None) -> list[Recalled]:
    """Order hits by relevance, boosted by significance and recency.

    Relevance is normalised to the best hit; significance (unscored counts
    as ordinary) and an exponential recency decay multiply it.
    """
    if not hits:
        return []
    now = time.time() if now is None else now
    best = max(hit.relevance for hit in hits) or 1.0
    scored = []
    for hit in hits:
        memory = hit.memory
        significance = 1 if memory.significance is None else memory.significance
        age_days = max(0.0, now - memory.created_at) / 86_400
        recency = 0.5 ** (age_days / RECENCY_HALF_LIFE_DAYS)
        boost = 1 + SIGNIFICANCE_BOOST * significance / 3 + RECENCY_BOOST * recency
        scored.append(Recalled(memory, hit.relevance / best * boost))
    scored.sort(key=lambda r: (r.score, r.memory.id), reverse=True)
    return scored


def asked_a_question(memory: Memory) -> bool:
    """Whether the turn ended asking something: the person asked, or the bot's reply ends in a question."""
    return "?" in memory.user_text or memory.reply_text.rstrip().endswith("?")
