"""The memory store on PostgreSQL: storage.store.MemoryStore for several bot processes sharing one database.

Every command is one transaction on a pooled connection: its events are
appended and applied to the projections together (eventlog.append), and
the pin rules are storage/pin_rules.py's, as on SQLite. Commands that
decide from a scope's pins take a transaction-scoped advisory lock on the
scope first, so two processes never decide from the same census. Recall is
PostgreSQL's own full-text search (`tsvector`, GIN, `ts_rank`), kept to
the scope and to what a channel filter lets through.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import asyncpg

from storage import pin_rules, tokens
from storage.commands import (
    FORGET_BATCH,
    PIVOTAL,
    MemoryNotFound,
    PinOutcome,
    ScoringOutcome,
    TurnRecord,
    edited_turn,
    memory_written,
)
from storage.events import (
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceFailed,
    MemorySignificanceSet,
    MemoryWritten,
)
from storage.memories import COLUMNS, MAX_SCORING_FAILURES, Memory, memory_from_row
from storage.pin_rules import Pin
from storage.postgres import schema
from storage.postgres.eventlog import append, redact_forgotten
from storage.scope import Scope
from storage.search import SearchHit
from storage.stats import MemoryCounts
from storage.store import StoreError
from storage.visibility import ChannelFilter, ChannelVisibility

P = ParamSpec("P")
T = TypeVar("T")

# PostgreSQL's code for a full disk (disk_full).
DISK_FULL = "53100"
# Weights of ts_rank for {D, C, B, A}: the bot's reply (C) weighs half of what was said (A) and the name (B).
# ts_rank rather than ts_rank_cd, normalised by the log of the length (its `1`): repeats of a common
# word add less and long chatty messages do not outrank the short one holding the fact. On the recall
# benchmark that took recall@10 from 0.626 to 0.769, and halved the latency at 200k memories.
RANK_WEIGHTS = [0.1, 0.5, 1.0, 1.0]
# The most words of a message that become the search's terms (any of them may match).
MAX_QUERY_WORDS = 32
CONNECT_TIMEOUT_SECONDS = 10.0


def server_of(dsn: str) -> str:
    """Where a connection string points, for messages: host:port/database, without user or password."""
    parsed = urlsplit(dsn)
    if parsed.scheme not in ("postgresql", "postgres") or not parsed.hostname:
        return "the configured server"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.hostname}{port}{parsed.path}"


def _connect_problem(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        # asyncio's own text names the address ("Connect call failed ('127.0.0.1', 5432)"), named already.
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _translated(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except asyncpg.PostgresError as exc:
            raise StoreError(str(exc), full=getattr(exc, "sqlstate", None) == DISK_FULL) from exc
        except (OSError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"the database is unreachable: {exc}") from exc

    return wrapper


class PostgresStore:
    """MemoryStore on a PostgreSQL database, through a connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction that may append to the log: it first waits out a restore,
        which holds the write lock exclusively while it swaps the database's content."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", schema.WRITE_LOCK)
            yield conn

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        """Connect, and bring the schema up to date (once, however many processes start together).

        StoreError, in one line naming the server (never the password), if it cannot connect.
        """
        try:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {server_of(dsn)}: {_connect_problem(exc)}") from exc
        try:
            async with pool.acquire() as conn:
                await schema.migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    # writing

    @_translated
    async def write_turn(self, turn: TurnRecord) -> int:
        async with self._writing() as conn:
            return await append(conn, memory_written(turn))

    @_translated
    async def import_memories(self, events: Sequence[MemoryWritten]) -> int:
        if not events:
            return 0
        async with self._writing() as conn:
            seen = await self._remembered_messages(conn, events)
            new = 0
            for event in events:
                key = (event.bot_id, event.user_message_id)
                if key in seen:  # also a message twice in one batch
                    continue
                seen.add(key)
                await append(conn, event)
                new += 1
            return new

    @staticmethod
    async def _remembered_messages(conn: asyncpg.Connection, events: Sequence[MemoryWritten]) -> set[tuple[int, Any]]:
        """(bot id, message id) of these events' messages already remembered, or remembered and forgotten."""
        message_ids = [e.user_message_id for e in events if e.user_message_id is not None]
        rows = await conn.fetch(
            "SELECT bot_id, user_message_id FROM memories WHERE user_message_id = ANY($1::bigint[])"
            " UNION SELECT (payload ->> 'bot_id')::bigint, (payload ->> 'user_message_id')::bigint FROM events"
            " WHERE kind = 'memory_written' AND (payload ->> 'redacted') = 'true'"
            " AND (payload ->> 'user_message_id')::bigint = ANY($1::bigint[])",
            message_ids,
        )
        return {(row[0], row[1]) for row in rows}

    @_translated
    async def record_significance(self, memory_id: int, score: int, *, model: str, pin_cap: int) -> ScoringOutcome:
        if not 0 <= score <= 3:
            raise ValueError(f"significance must be 0-3, got {score}")
        async with self._writing() as conn:
            memory = await self._lock_memory_scope(conn, memory_id)
            if memory is None or memory.significance is not None:
                return ScoringOutcome(recorded=False)
            await append(conn, MemorySignificanceSet(memory_id=memory_id, score=score, model=model))
            if score != PIVOTAL or memory.pinned:
                return ScoringOutcome(recorded=True)
            pins = await self._pins(conn, memory.scope)
            pinned, evicted = pin_rules.auto_pin(pins, memory_id, memory.author_id, pin_cap)
            await self._unpin_evicted(conn, evicted)
            if pinned:
                await append(conn, MemoryPinChanged(memory_id, pinned=True, auto=True, reason="pivotal"))
            return ScoringOutcome(recorded=True, pinned=pinned, unpinned=evicted)

    @_translated
    async def record_scoring_failure(self, memory_id: int, *reasons: str) -> bool:
        async with self._writing() as conn:
            memory = await self._lock_memory_scope(conn, memory_id)
            if memory is None or memory.significance is not None:
                return False
            for reason in reasons:
                await append(conn, MemorySignificanceFailed(memory_id=memory_id, reason=reason[:500]))
            return True

    @_translated
    async def pin(
        self, scope: Scope, memory_id: int, *, actor_id: int, pin_cap: int, member_quota: int | None = None
    ) -> PinOutcome:
        async with self._writing() as conn:
            await _lock_scope(conn, scope)
            memory = await self._scoped_memory(conn, scope, memory_id)
            if memory.pinned and not memory.pin_auto:
                return PinOutcome(changed=False, memory=memory)
            if member_quota is not None:
                pin_rules.check_manual_pin(
                    await self._pins(conn, scope), actor_id, member_quota=member_quota, pin_cap=pin_cap
                )
            await append(conn, MemoryPinChanged(memory_id, pinned=True, auto=False, actor_id=actor_id, reason="manual"))
            unpinned = pin_rules.over_cap(await self._pins(conn, scope), pin_cap, protect=memory_id)
            await self._unpin_evicted(conn, unpinned)
            return PinOutcome(changed=True, memory=await self._scoped_memory(conn, scope, memory_id), unpinned=unpinned)

    @_translated
    async def unpin(self, scope: Scope, memory_id: int, *, actor_id: int) -> PinOutcome:
        async with self._writing() as conn:
            await _lock_scope(conn, scope)
            memory = await self._scoped_memory(conn, scope, memory_id)
            if not memory.pinned:
                return PinOutcome(changed=False, memory=memory)
            await append(
                conn, MemoryPinChanged(memory_id, pinned=False, auto=False, actor_id=actor_id, reason="manual")
            )
            return PinOutcome(changed=True, memory=await self._scoped_memory(conn, scope, memory_id))

    @_translated
    async def forget(self, scope: Scope, memory_id: int, *, actor_id: int | None, reason: str = "") -> Memory:
        async with self._writing() as conn:
            await _lock_scope(conn, scope)
            memory = await self._scoped_memory(conn, scope, memory_id)
            await append(conn, MemoryForgotten(memory_id=memory_id, actor_id=actor_id, reason=reason))
            await redact_forgotten(conn, [memory_id])
            return memory

    @_translated
    async def forget_many(
        self, scope: Scope, memory_ids: Sequence[int], *, actor_id: int | None, reason: str = ""
    ) -> list[int]:
        forgotten: list[int] = []
        for start in range(0, len(memory_ids), FORGET_BATCH):
            batch = [int(i) for i in memory_ids[start : start + FORGET_BATCH]]
            async with self._writing() as conn:
                await _lock_scope(conn, scope)
                present = [
                    row[0]
                    for row in await conn.fetch(
                        "SELECT id FROM memories WHERE id = ANY($1::bigint[]) AND bot_id = $2 AND scope_kind = $3"
                        " AND scope_id = $4 ORDER BY id",
                        batch,
                        *_scope_params(scope),
                    )
                ]
                for memory_id in present:
                    await append(conn, MemoryForgotten(memory_id, actor_id=actor_id, reason=reason))
                await redact_forgotten(conn, present)
                forgotten += present
        return forgotten

    @_translated
    async def rewrite(self, scope: Scope, memory_id: int, user_text: str, *, reason: str) -> int:
        async with self._writing() as conn:
            await _lock_scope(conn, scope)
            memory = await self._scoped_memory(conn, scope, memory_id)
            row = await conn.fetchrow(
                "SELECT parent_channel_id, private_thread, reply_message_ids, pinned_by FROM memories WHERE id = $1",
                memory_id,
            )
            await append(conn, MemoryForgotten(memory_id=memory_id, reason=reason))
            await redact_forgotten(conn, [memory_id])
            record = edited_turn(
                memory,
                user_text,
                reply_message_ids=row["reply_message_ids"],
                parent_channel_id=row["parent_channel_id"],
                private_thread=row["private_thread"],
            )
            new_id = await append(conn, memory_written(record, source=memory.source, wants_score=memory.wants_score))
            if memory.pinned and not memory.pin_auto:
                pin = MemoryPinChanged(
                    new_id, pinned=True, auto=False, actor_id=row["pinned_by"], reason=f"kept from #{memory_id}"
                )
                await append(conn, pin)
            return new_id

    async def scrub_copies(self, memory_ids: Sequence[int]) -> int:
        # Redaction happens in the forget's own transaction; PostgreSQL keeps no snapshot files.
        return 0

    @_translated
    async def checkpoint(self) -> bool:
        # The forgotten rows' old versions stay in their pages until a vacuum prunes them.
        await self.pool.execute("VACUUM events, memories, reply_messages")
        return True

    # reading memories

    @_translated
    async def get_memory(
        self, scope: Scope, memory_id: int, *, channel_filter: ChannelFilter | None = None
    ) -> Memory | None:
        visible, params = _condition(channel_filter, 5)
        row = await self.pool.fetchrow(
            f"SELECT {COLUMNS} FROM memories WHERE id = $1 AND {_SCOPE} AND {visible}",
            memory_id,
            *_scope_params(scope),
            *params,
        )
        return memory_from_row(row) if row else None

    @_translated
    async def list_memories(
        self,
        scope: Scope,
        *,
        pinned_only: bool = False,
        author_id: int | None = None,
        before_id: int | None = None,
        limit: int = 10,
        channel_filter: ChannelFilter | None = None,
    ) -> list[Memory]:
        params: list[Any] = list(_scope_params(scope))
        visible, visible_params = _condition(channel_filter, len(params) + 1)
        params += visible_params
        sql = f"SELECT {COLUMNS} FROM memories WHERE {_scope_sql(1)} AND {visible}"
        if pinned_only:
            sql += " AND pinned"
        if author_id is not None:
            params.append(author_id)
            sql += f" AND author_id = ${len(params)}"
        if before_id is not None:
            params.append(before_id)
            sql += f" AND id < ${len(params)}"
        params.append(limit)
        sql += f" ORDER BY id DESC LIMIT ${len(params)}"
        return [memory_from_row(row) for row in await self.pool.fetch(sql, *params)]

    @_translated
    async def count_memories(
        self, scope: Scope, *, pinned_only: bool = False, channel_filter: ChannelFilter | None = None
    ) -> int:
        visible, params = _condition(channel_filter, 4)
        sql = f"SELECT count(*) FROM memories WHERE {_scope_sql(1)} AND {visible}" + (
            " AND pinned" if pinned_only else ""
        )
        return int(await self.pool.fetchval(sql, *_scope_params(scope), *params))

    @_translated
    async def pinned_and_recent(
        self, scope: Scope, channel_id: int, recent: int, *, channel_filter: ChannelFilter | None = None
    ) -> tuple[list[Memory], list[Memory]]:
        visible, params = _condition(channel_filter, 6)
        rows = await self.pool.fetch(
            f"(SELECT {COLUMNS}, true FROM memories WHERE {_scope_sql(1)} AND pinned AND {visible} ORDER BY id)"
            f" UNION ALL (SELECT {COLUMNS}, false FROM memories WHERE {_scope_sql(1)} AND channel_id = $4"
            " ORDER BY created_at DESC, id DESC LIMIT $5)",
            *_scope_params(scope),
            channel_id,
            max(0, recent),
            *params,
        )
        pinned = [memory_from_row(tuple(row)[:-1]) for row in rows if row[-1]]
        newest_first = [memory_from_row(tuple(row)[:-1]) for row in rows if not row[-1]]
        return pinned, newest_first[::-1]

    @_translated
    async def search(
        self, scope: Scope, text: str, limit: int, *, channel_filter: ChannelFilter | None = None
    ) -> list[SearchHit]:
        query = _or_query(text)
        if not query or limit <= 0:
            return []
        visible, params = _condition(channel_filter, 6)
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS}, ts_rank($5::float4[], search, q, 1) AS relevance"
            " FROM memories, to_tsquery('english', $4) AS q"
            f" WHERE {_scope_sql(1)} AND search @@ q AND {visible}"
            f" ORDER BY relevance DESC, id DESC LIMIT ${6 + len(params)}",
            *_scope_params(scope),
            query,
            RANK_WEIGHTS,
            *params,
            limit,
        )
        return [SearchHit(memory_from_row(tuple(row)[:-1]), float(row[-1])) for row in rows]

    def has_search_terms(self, text: str) -> bool:
        return bool(_or_query(text))

    @_translated
    async def next_turns(self, scope: Scope, turns: Sequence[Memory]) -> dict[int, Memory]:
        found: dict[int, Memory] = {}
        for turn in turns:
            row = await self.pool.fetchrow(
                f"SELECT {COLUMNS} FROM memories WHERE {_scope_sql(1)} AND channel_id = $4"
                " AND (created_at, id) > ($5, $6) ORDER BY created_at, id LIMIT 1",
                *_scope_params(scope),
                turn.channel_id,
                turn.created_at,
                turn.id,
            )
            if row is not None:
                found[turn.id] = memory_from_row(row)
        return found

    @_translated
    async def memories_by_id(self, scope: Scope, memory_ids: Sequence[int]) -> list[Memory]:
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS} FROM memories WHERE id = ANY($4::bigint[]) AND {_scope_sql(1)} ORDER BY id",
            *_scope_params(scope),
            [int(i) for i in memory_ids],
        )
        return [memory_from_row(row) for row in rows]

    @_translated
    async def drawing_on(
        self, scope: Scope, memory_id: int, *, channel_filter: ChannelFilter | None = None
    ) -> list[Memory]:
        visible, params = _condition(channel_filter, 5)
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS} FROM memories WHERE {_scope_sql(1)} AND id > $4 AND drew_on @> ARRAY[$4::bigint]"
            f" AND {visible} ORDER BY id",
            *_scope_params(scope),
            memory_id,
            *params,
        )
        return [memory_from_row(row) for row in rows]

    @_translated
    async def memory_ids(
        self, scope: Scope, *, author_id: int | None = None, channel_id: int | None = None
    ) -> list[int]:
        params: list[Any] = list(_scope_params(scope))
        sql = f"SELECT id FROM memories WHERE {_scope_sql(1)}"
        if author_id is not None:
            params.append(author_id)
            sql += f" AND author_id = ${len(params)}"
        if channel_id is not None:
            params.append(channel_id)
            sql += f" AND (channel_id = ${len(params)} OR parent_channel_id = ${len(params)})"
        return [row[0] for row in await self.pool.fetch(sql + " ORDER BY id", *params)]

    @_translated
    async def memories_of_messages(
        self, bot_id: int, message_ids: Sequence[int], *, replies: bool = True
    ) -> list[tuple[int, Scope]]:
        if not message_ids:
            return []
        sql = (
            "SELECT id, bot_id, scope_kind, scope_id FROM memories"
            " WHERE bot_id = $1 AND user_message_id = ANY($2::bigint[])"
        )
        if replies:
            sql += (
                " UNION SELECT m.id, m.bot_id, m.scope_kind, m.scope_id FROM reply_messages AS r"
                " JOIN memories AS m ON m.id = r.memory_id WHERE r.message_id = ANY($2::bigint[]) AND m.bot_id = $1"
            )
        rows = await self.pool.fetch(sql + " ORDER BY 1", bot_id, [int(m) for m in message_ids])
        return [(row[0], Scope(row[1], row[2], row[3])) for row in rows]

    @_translated
    async def memory_scope(self, memory_id: int) -> Scope | None:
        row = await self.pool.fetchrow("SELECT bot_id, scope_kind, scope_id FROM memories WHERE id = $1", memory_id)
        return Scope(row[0], row[1], row[2]) if row else None

    @_translated
    async def memories_before(self, memory: Memory, limit: int) -> list[Memory]:
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS} FROM memories WHERE {_scope_sql(1)} AND channel_id = $4"
            " AND (created_at, id) < ($5, $6) ORDER BY created_at DESC, id DESC LIMIT $7",
            *_scope_params(memory.scope),
            memory.channel_id,
            memory.created_at,
            memory.id,
            limit,
        )
        return [memory_from_row(row) for row in reversed(rows)]

    # the scoring queue

    @_translated
    async def unscored_memory_ids(self, *, after_id: int, limit: int) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT id FROM memories WHERE significance IS NULL AND wants_score AND id > $1 AND scoring_failures < $2"
            " ORDER BY id LIMIT $3",
            after_id,
            MAX_SCORING_FAILURES,
            limit,
        )
        return [row[0] for row in rows]

    @_translated
    async def count_unscored(self) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM memories WHERE significance IS NULL AND wants_score AND scoring_failures < $1",
                MAX_SCORING_FAILURES,
            )
        )

    @_translated
    async def claim_unscored(self, claimant: str, *, limit: int, lease_seconds: float) -> list[int]:
        # Rows another process is claiming right now are locked: skip them rather than wait. The
        # snapshot may not show a claim committed a moment ago, so the insert decides: a live claim
        # already there (the latest one, whatever the snapshot) is left alone and not returned.
        rows = await self.pool.fetch(
            "WITH candidates AS ("
            " SELECT m.id FROM memories AS m"
            " WHERE m.significance IS NULL AND m.wants_score AND m.scoring_failures < $3"
            " AND NOT EXISTS (SELECT 1 FROM scoring_claims AS c"
            "  WHERE c.memory_id = m.id AND c.lease_until > clock_timestamp())"
            " ORDER BY m.id LIMIT $2 FOR UPDATE OF m SKIP LOCKED)"
            " INSERT INTO scoring_claims (memory_id, claimant, lease_until)"
            " SELECT id, $1, clock_timestamp() + make_interval(secs => $4) FROM candidates"
            " ON CONFLICT (memory_id) DO UPDATE SET claimant = excluded.claimant, lease_until = excluded.lease_until"
            " WHERE scoring_claims.lease_until <= clock_timestamp()"
            " RETURNING memory_id",
            claimant,
            limit,
            MAX_SCORING_FAILURES,
            float(lease_seconds),
        )
        return sorted(row[0] for row in rows)

    @_translated
    async def release_claims(self, claimant: str, memory_ids: Sequence[int]) -> None:
        await self.pool.execute(
            "DELETE FROM scoring_claims WHERE claimant = $1 AND memory_id = ANY($2::bigint[])",
            claimant,
            [int(i) for i in memory_ids],
        )

    @_translated
    async def renew_claims(self, claimant: str, memory_ids: Sequence[int], *, lease_seconds: float) -> list[int]:
        rows = await self.pool.fetch(
            "UPDATE scoring_claims SET lease_until = clock_timestamp() + make_interval(secs => $3)"
            " WHERE claimant = $1 AND memory_id = ANY($2::bigint[]) RETURNING memory_id",
            claimant,
            [int(i) for i in memory_ids],
            float(lease_seconds),
        )
        return sorted(row[0] for row in rows)

    @_translated
    async def counts(self) -> MemoryCounts:
        row = await self.pool.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE pinned),"
            " count(DISTINCT scope_id) FILTER (WHERE scope_kind = 'guild'),"
            " count(DISTINCT scope_id) FILTER (WHERE scope_kind = 'dm'),"
            " (SELECT coalesce(max(seq), 0) FROM events) FROM memories"
        )
        return MemoryCounts(*(int(value) for value in row))

    # channels, servers left, and who the bot is

    @_translated
    async def record_guild_channels(self, guild: Scope, channels: Iterable[ChannelVisibility]) -> bool:
        now = {(c.channel_id, c.parent_id, bool(c.public)) for c in channels}
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT channel_id, parent_id, public FROM channel_visibility WHERE bot_id = $1 AND guild_id = $2",
                guild.bot_id,
                guild.id,
            )
            if {tuple(row) for row in rows} == now:
                return False
            await conn.execute(
                "DELETE FROM channel_visibility WHERE bot_id = $1 AND guild_id = $2", guild.bot_id, guild.id
            )
            await conn.executemany(
                "INSERT INTO channel_visibility (bot_id, guild_id, channel_id, parent_id, public)"
                " VALUES ($1, $2, $3, $4, $5)",
                [(guild.bot_id, guild.id, *entry) for entry in sorted(now, key=lambda e: e[0])],
            )
            return True

    @_translated
    async def thread_parent(self, guild: Scope, channel_id: int) -> int | None:
        return await self.pool.fetchval(
            "SELECT parent_id FROM channel_visibility WHERE bot_id = $1 AND guild_id = $2 AND channel_id = $3",
            guild.bot_id,
            guild.id,
            channel_id,
        )

    @_translated
    async def forget_guild_channels(self, guild: Scope) -> None:
        await self.pool.execute(
            "DELETE FROM channel_visibility WHERE bot_id = $1 AND guild_id = $2", guild.bot_id, guild.id
        )

    @_translated
    async def note_departures(self, bot_id: int, guild_ids: Iterable[int], *, at: float) -> None:
        await self.pool.executemany(
            "INSERT INTO departed_guilds (bot_id, guild_id, departed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [(bot_id, guild_id, at) for guild_id in guild_ids],
        )

    @_translated
    async def clear_departures(self, bot_id: int, guild_ids: Iterable[int]) -> None:
        await self.pool.execute(
            "DELETE FROM departed_guilds WHERE bot_id = $1 AND guild_id = ANY($2::bigint[])", bot_id, list(guild_ids)
        )

    @_translated
    async def departures(self, bot_id: int) -> dict[int, float]:
        rows = await self.pool.fetch("SELECT guild_id, departed_at FROM departed_guilds WHERE bot_id = $1", bot_id)
        return {row[0]: row[1] for row in rows}

    @_translated
    async def remembered_guilds(self, bot_id: int) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT scope_id FROM memories WHERE bot_id = $1 AND scope_kind = 'guild' ORDER BY 1", bot_id
        )
        return [row[0] for row in rows]

    @_translated
    async def last_bot_id(self) -> int | None:
        return await self.pool.fetchval("SELECT bot_id FROM bot_identity ORDER BY logged_in_at DESC LIMIT 1")

    @_translated
    async def record_login(self, bot_id: int, name: str) -> None:
        await self.pool.execute(
            "INSERT INTO bot_identity (bot_id, name, logged_in_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (bot_id) DO UPDATE SET name = excluded.name, logged_in_at = excluded.logged_in_at",
            bot_id,
            name,
            time.time(),
        )

    # helpers

    async def _lock_memory_scope(self, conn: asyncpg.Connection, memory_id: int) -> Memory | None:
        scope_row = await conn.fetchrow("SELECT bot_id, scope_kind, scope_id FROM memories WHERE id = $1", memory_id)
        if scope_row is None:
            return None
        scope = Scope(scope_row[0], scope_row[1], scope_row[2])
        await _lock_scope(conn, scope)
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM memories WHERE id = $1", memory_id)
        return memory_from_row(row) if row else None

    @staticmethod
    async def _pins(conn: asyncpg.Connection, scope: Scope) -> list[Pin]:
        rows = await conn.fetch(
            f"SELECT id, pin_auto, pinned_by, author_id FROM memories WHERE {_scope_sql(1)} AND pinned",
            *_scope_params(scope),
        )
        return [Pin(row[0], bool(row[1]), row[2], row[3]) for row in rows]

    @staticmethod
    async def _unpin_evicted(conn: asyncpg.Connection, memory_ids: Sequence[int]) -> None:
        for memory_id in memory_ids:
            await append(conn, MemoryPinChanged(memory_id, pinned=False, auto=True, reason="over pin cap"))

    @staticmethod
    async def _scoped_memory(conn: asyncpg.Connection, scope: Scope, memory_id: int) -> Memory:
        row = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM memories WHERE id = $1 AND {_scope_sql(2)}", memory_id, *_scope_params(scope)
        )
        if row is None:
            raise MemoryNotFound(memory_id)
        return memory_from_row(row)


def _scope_sql(start: int) -> str:
    return f"bot_id = ${start} AND scope_kind = ${start + 1} AND scope_id = ${start + 2}"


_SCOPE = _scope_sql(2)


def _scope_params(scope: Scope) -> tuple[int, str, int]:
    return scope.bot_id, scope.kind, scope.id


async def _lock_scope(conn: asyncpg.Connection, scope: Scope) -> None:
    """Hold the scope's lock for the rest of the transaction: its pins are decided one command at a time."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", str(scope))


def _or_query(text: str) -> str:
    """A to_tsquery text matching any of `text`'s searchable words (PostgreSQL stems them).

    The words are storage/tokens.py's, as on SQLite: letters and digits only,
    so nothing in a message can be read as tsquery syntax.
    """
    words = list(dict.fromkeys(word for word in tokens.words(text) if tokens.is_searchable(word)))
    return " | ".join(words[:MAX_QUERY_WORDS])


def _condition(channel_filter: ChannelFilter | None, start: int) -> tuple[str, list[Any]]:
    """ChannelFilter.sql for PostgreSQL, its parameters numbered from `start`."""
    if channel_filter is None:
        return "true", []
    clauses: list[str] = []
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return f"${start + len(params) - 1}"

    if channel_filter.public_of_guild is not None:
        guild = channel_filter.public_of_guild
        public = (
            "SELECT channel_id FROM channel_visibility"
            f" WHERE bot_id = {param(guild.bot_id)} AND guild_id = {param(guild.id)} AND public"
        )
        clauses.append(f"channel_id IN ({public})")
        clauses.append(f"(NOT private_thread AND parent_channel_id IN ({public}))")
    if channel_filter.channels:
        clauses.append(f"channel_id = ANY({param(sorted(channel_filter.channels))}::bigint[])")
    if channel_filter.thread_parents:
        parents = param(sorted(channel_filter.thread_parents))
        clauses.append(f"(NOT private_thread AND parent_channel_id = ANY({parents}::bigint[]))")
    if channel_filter.private_thread_parents:
        clauses.append(f"parent_channel_id = ANY({param(sorted(channel_filter.private_thread_parents))}::bigint[])")
    if channel_filter.author_id is not None:
        clauses.append(f"author_id = {param(channel_filter.author_id)}")
    if not clauses:
        return "false", []
    return "(" + " OR ".join(clauses) + ")", params
