"""Which of the processes sharing one PostgreSQL database runs the scheduled jobs (backups).

The one holding a session-level advisory lock, on a connection of its own:
PostgreSQL releases the lock when that session ends, so a process that
dies (or loses its connection) gives it up at once, and the next process
to ask takes it over.
"""

from __future__ import annotations

import logging

import asyncpg

log = logging.getLogger(__name__)

# pg_try_advisory_lock key: "mnemo" + 2 (the migrations use + 1).
SCHEDULER_LOCK = 0x6D6E656D6F02
CONNECT_TIMEOUT_SECONDS = 10.0


class PostgresLeadership:
    """Elects this process to run the scheduled jobs while it holds the scheduler's advisory lock."""

    shared = True

    def __init__(self, dsn: str, *, key: int = SCHEDULER_LOCK) -> None:
        self.dsn = dsn
        self.key = key
        self._conn: asyncpg.Connection | None = None
        self._leading = False

    @property
    def leading(self) -> bool:
        """Whether this process held the lock when last asked."""
        return self._leading

    async def lead(self) -> bool:
        """Whether this process runs the scheduled jobs: it still holds the lock, or takes it now."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._leading = False
                self._conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_SECONDS)
            if self._leading:
                # The lock lives as long as the session: a session that still answers still holds it.
                await self._conn.fetchval("SELECT 1")
                return True
            self._leading = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self._leading:
                log.warning("lost the scheduler's lock with the connection to PostgreSQL (%s)", exc)
            await self._drop_connection()
            return False
        if self._leading:
            log.info("this process now runs the scheduled backups")
        return self._leading

    async def close(self) -> None:
        """Give the lock up (with its session), so another process takes over at once."""
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._leading = False
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()
