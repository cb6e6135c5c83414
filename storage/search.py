"""Full-text search over the whole history of one scope.

Relevance is BM25F over a memory's three fields (the author's name, what
the person said, what the bot replied; the reply counts for less, as the
bot's words are an echo more than a record), computed with the statistics
of the scope alone: how many of its memories hold each term
(`memories_vocab`) and how many memories and indexed terms it has
(`scope_stats`). A word found in half a scope's memories, such as the
name of one of the two people in a DM, weighs next to nothing there,
however rare it is elsewhere.

Finding the matches never looks at age. The query's terms are split by
how many memories hold them:

- the rarest ones, together holding at most POSTINGS_BUDGET memories,
  have every memory holding them considered, with which of the common
  terms each also holds;
- the rest, the common ones (the least common MAX_COMMON_TERMS of them),
  are words that alone say little: the memories holding two of them at
  once are considered (the newest PAIR_MATCHES of each pair), and the
  newest NEWEST_MATCHES holding each.

The candidates are ranked in SQL by the weights of the terms they hold;
the best SHORTLIST of those by BM25 with their lengths, as if each term
were there once; and the best RESCORED of those are scored exactly, field
by field, from their indexed terms. Everything runs in one hop to the
connection's thread.

A reader kept from some channels (storage/visibility.py) gets only the
candidates said where they may look; those set aside never take a place
another could have had. The newest matches of a common term are taken
before that, so a question of common words only, asked where few of the
matches were said, may find fewer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from storage import tokens
from storage.connection_thread import Connection
from storage.memories import COLUMNS, Memory, memory_from_row
from storage.schema import FTS_COLUMNS
from storage.scope import Scope
from storage.sqlite import sqlite3
from storage.visibility import ChannelFilter, condition

MAX_QUERY_TERMS = 12
# Field weights, in the order of FTS_COLUMNS: the author's name, the person's words, the reply.
FIELD_WEIGHTS = (1.0, 1.0, 0.5)
# BM25's term-frequency saturation and length normalisation, at their usual values.
K1 = 1.2
B = 0.75
# Memories read in full for the rarest terms (reading one costs about a quarter of a microsecond).
POSTINGS_BUDGET = 2000
# Common terms considered (the least common first), and how many memories holding two of
# them at once, or the newest holding one, are looked at.
MAX_COMMON_TERMS = 3
PAIR_MATCHES = 30
NEWEST_MATCHES = 30
# Candidates whose lengths are looked up, the heaviest by the weight of their terms; and how
# many of those, the best by BM25 as if each term were there once, are scored exactly.
SHORTLIST = 400
RESCORED = 40

# Counts of memories holding a common term are kept (see `_frequencies`): terms held by at
# least this many, while the scope's size stays within this share of what it was.
CACHED_FREQUENCY_MIN = 1000
CACHE_TOLERANCE = 0.01
CACHED_TERMS = 100_000
# scoped term -> (memories holding it, the scope's memories then); shared by the reader threads.
_common_frequencies: dict[str, tuple[int, int]] = {}

# One term's matches, every one or the newest few, as (memory id, term, weight) rows.
_ALL_MATCHES = "SELECT rowid, ?, ? FROM memories_fts WHERE memories_fts MATCH ?"
_NEWEST_MATCHES = (
    "SELECT rowid, ?, ? FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? ORDER BY rowid DESC LIMIT ?)"
)
# Memories holding both of two terms: a row for each term.
_PAIR_MATCHES = (
    "SELECT pair.rowid, held.term, held.weight"
    " FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? ORDER BY rowid DESC LIMIT ?) AS pair,"
    " (SELECT ? AS term, ? AS weight UNION ALL SELECT ?, ?) AS held"
)


@dataclass(frozen=True)
class SearchHit:
    memory: Memory
    relevance: float  # BM25F, higher is better


def query_terms(text: str) -> list[str]:
    """The distinct stemmed content words of `text`, at most MAX_QUERY_TERMS (longer words first when cut)."""
    distinct = list(dict.fromkeys(tokens.terms(text)))
    if len(distinct) > MAX_QUERY_TERMS:
        # Longer words tend to be rarer and more telling.
        distinct = sorted(distinct, key=len, reverse=True)[:MAX_QUERY_TERMS]
    return distinct


async def search(
    conn: Connection, scope: Scope, text: str, limit: int, *, channel_filter: ChannelFilter | None = None
) -> list[SearchHit]:
    """The scope's memories best matching `text`, best first, at most `limit`; only those
    `channel_filter` lets through, when there is one."""
    terms = query_terms(text)
    if not terms or limit <= 0:
        return []
    return await conn.run(lambda db: search_on(db, scope, terms, limit, channel_filter))


def search_on(
    db: sqlite3.Connection,
    scope: Scope,
    terms: Sequence[str],
    limit: int,
    channel_filter: ChannelFilter | None = None,
) -> list[SearchHit]:
    """`search` on a plain connection, for query terms already made (see `query_terms`)."""
    scope_params = (scope.bot_id, scope.kind, scope.id)
    stats = db.execute(
        "SELECT memories, terms FROM scope_stats WHERE bot_id = ? AND scope_kind = ? AND scope_id = ?", scope_params
    ).fetchone()
    if stats is None or stats[0] <= 0:
        return []
    memory_count, term_count = stats
    average_length = max(1.0, term_count / memory_count)
    scoped = [tokens.scoped_term(scope, term) for term in terms]
    frequencies = _frequencies(db, scoped, memory_count)
    present = sorted((t for t in scoped if frequencies.get(t)), key=lambda t: (frequencies[t], t))
    if not present:
        return []
    weights = {t: _idf(memory_count, frequencies[t]) for t in present}
    visible, visible_params = condition(channel_filter, "m.")
    candidates = _candidates(
        db, present, frequencies, weights, average_length, max(limit, RESCORED), (visible, visible_params)
    )
    # The candidates' rows, checked against the scope's own columns too: the guarantee does not
    # rest on the index alone. Their indexed terms give each one's exact relevance.
    rows = db.execute(
        f"SELECT {COLUMNS}, {', '.join(FTS_COLUMNS)}, search_terms FROM memories AS m"
        " WHERE id IN (SELECT value FROM json_each(?)) AND bot_id = ? AND scope_kind = ? AND scope_id = ?"
        f" AND {visible}",
        (json.dumps(candidates), *scope_params, *visible_params),
    ).fetchall()
    width = len(FTS_COLUMNS) + 1
    scored = [(_relevance(row[-width:-1], row[-1], weights, average_length), row[0], row) for row in rows]
    scored.sort(reverse=True)
    return [SearchHit(memory_from_row(row[:-width]), relevance) for relevance, _, row in scored[:limit]]


def _frequencies(db: sqlite3.Connection, scoped: list[str], memory_count: int) -> dict[str, int]:
    """How many of the scope's memories hold each term (absent: none).

    FTS5 counts a term's memories by reading all of them, so the counts of
    common terms are kept for as long as the scope has not grown or shrunk
    by more than CACHE_TOLERANCE: their weights would hardly move.
    """
    found: dict[str, int] = {}
    missing: list[str] = []
    for term in scoped:
        cached = _common_frequencies.get(term)
        if cached is not None and abs(memory_count - cached[1]) <= cached[1] * CACHE_TOLERANCE:
            found[term] = cached[0]
        else:
            missing.append(term)
    if missing:
        placeholders = ", ".join("?" * len(missing))
        counted = db.execute(f"SELECT term, doc FROM memories_vocab WHERE term IN ({placeholders})", missing)
        for term, holding in counted:
            found[term] = holding
            if holding >= CACHED_FREQUENCY_MIN:
                if len(_common_frequencies) >= CACHED_TERMS:
                    _common_frequencies.clear()
                _common_frequencies[term] = (holding, memory_count)
    return found


def _idf(memories: int, holding: int) -> float:
    # The BM25 inverse document frequency that never goes negative (as Lucene's).
    return math.log(1 + (memories - holding + 0.5) / (holding + 0.5))


def _match(*terms: str) -> str:
    # Scoped terms are letters and digits only; quoting them keeps FTS5 from reading any as syntax.
    return " OR ".join(f'"{term}"' for term in terms)


def _candidates(
    db: sqlite3.Connection,
    present: list[str],
    frequencies: dict[str, int],
    weights: dict[str, float],
    average_length: float,
    count: int,
    visible: tuple[str, list[Any]],
) -> list[int]:
    """The `count` memory ids holding the most weight of query terms, as far as the pruned search sees,
    among those the `visible` condition (on `m.`) lets through."""
    rare: list[str] = []
    spent = 0
    for term in present:
        if spent + frequencies[term] > POSTINGS_BUDGET:
            break
        rare.append(term)
        spent += frequencies[term]
    common = present[len(rare) : len(rare) + MAX_COMMON_TERMS]
    parts: list[str] = []
    params: list[object] = []
    for term in rare:
        parts.append(_ALL_MATCHES)
        params += [term, weights[term], _match(term)]
    rare_match = _match(*rare)
    for term in common:
        if rare:
            # Which of the rare terms' memories also hold this common one.
            parts.append(_ALL_MATCHES)
            params += [term, weights[term], f'"{term}" AND ({rare_match})']
        if spent < count:
            # Too few memories hold a rare term to fill the candidates: some holding only this one.
            parts.append(_NEWEST_MATCHES)
            params += [term, weights[term], _match(term), NEWEST_MATCHES]
    for first, second in combinations(common, 2):
        parts.append(_PAIR_MATCHES)
        params += [f'"{first}" AND "{second}"', PAIR_MATCHES, first, weights[first], second, weights[second]]
    ranking = (average_length, count)
    if visible[0] == "1":
        return [row[0] for row in db.execute(*_shortlist(parts, params, ranking))]
    # Where the reader may not see every channel, the shortlist's hidden memories are set aside.
    # When that leaves too few (most matches were said where the reader may not look), the hidden
    # ones are set aside before the shortlist instead, so they can never crowd out the others:
    # that looks up where every match was said, so only when it is needed.
    rows = db.execute(*_shortlist(parts, params, ranking, after=visible)).fetchall()
    candidates, passed = rows[0][1:] if rows else (SHORTLIST + 1, 0)
    if candidates <= SHORTLIST or passed >= max(count, SHORTLIST // 2):
        return [row[0] for row in rows]  # every candidate was shortlisted, or enough of them passed
    return [row[0] for row in db.execute(*_shortlist(parts, params, ranking, before=visible))]


def _shortlist(
    parts: list[str],
    params: list[object],
    ranking: tuple[float, int],
    *,
    before: tuple[str, list[Any]] = ("1", []),
    after: tuple[str, list[Any]] = ("1", []),
) -> tuple[str, list[object]]:
    """The query for the candidates' memory ids (with `after`, also how many candidates there were
    before the shortlist, and how many of those shortlisted passed), and its parameters.

    `parts` find the matches; a memory found for the same term more than once (a pair and the
    newest) counts once. The best SHORTLIST by the weight of their terms, then the best `count`
    (of `ranking`) by BM25 as if each term were there once. A condition on `m.` (the memories)
    may set some aside `before` the shortlist or `after` it.
    """
    average_length, count = ranking
    # Counted only where a condition sets memories aside after the shortlist: the candidates
    # before it (a window on the groups counts them all, before the LIMIT), and those that pass.
    counted = after[0] != "1"
    distinct = "(SELECT DISTINCT id, term, weight FROM found)"
    if before[0] != "1":
        distinct = (
            "(SELECT DISTINCT f.id, f.term, f.weight FROM found AS f"
            f" JOIN memories AS m INDEXED BY memories_lengths ON m.id = f.id WHERE {before[0]})"
        )
    sql = (
        f"WITH found (id, term, weight) AS ({' UNION ALL '.join(parts)}),"
        f" summed (id, weight, total) AS (SELECT id, sum(weight), {'count(*) OVER ()' if counted else 0}"
        f"  FROM {distinct} GROUP BY id ORDER BY 2 DESC, id DESC LIMIT ?)"
        f" SELECT summed.id{', summed.total, count(*) OVER ()' if counted else ''} FROM summed"
        " JOIN memories AS m INDEXED BY memories_lengths ON m.id = summed.id"
        f" WHERE {after[0]}"
        " ORDER BY summed.weight / (1 + ? * (1 - ? + ? * m.search_terms / ?)) DESC, summed.id DESC LIMIT ?"
    )
    return sql, [*params, *before[1], SHORTLIST, *after[1], K1, B, B, average_length, count]


def _relevance(fields: Sequence[str], length: int, weights: dict[str, float], average_length: float) -> float:
    """BM25F of one memory, from its indexed terms, field by field."""
    frequencies: dict[str, float] = {}
    for text, field_weight in zip(fields, FIELD_WEIGHTS, strict=True):
        for term in text.split():
            if term in weights:
                frequencies[term] = frequencies.get(term, 0.0) + field_weight
    saturation = K1 * (1 - B + B * length / average_length)
    return sum(weights[t] * f * (K1 + 1) / (f + saturation) for t, f in frequencies.items() if f)
