"""The database: one writer connection, one reader, and the transaction gate.

aiosqlite runs each connection on its own thread, so neither connection ever
blocks the event loop. Every write goes through `transaction()`, which holds
an asyncio lock for its whole span: statements from two commands can never
interleave inside one SQLite transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from storage import sqlite
from storage.schema import migrate

log = logging.getLogger(__name__)

ITER_CHUNK_ROWS = 256


class Database:
    """The open database. Create it with `await Database.open(path)`."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self.writer = writer
        self.reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path | str) -> Database:
        """Create or migrate the database at `path` and open its connections."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        version = await asyncio.to_thread(_migrate_file, path)
        log.info("database %s open (schema v%s, SQLite %s)", path, version, sqlite.sqlite_version)
        writer = await aiosqlite.Connection(lambda: sqlite.connect(path), ITER_CHUNK_ROWS)
        try:
            reader = await aiosqlite.Connection(lambda: sqlite.connect(path, query_only=True), ITER_CHUNK_ROWS)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        async with self._write_lock:
            await self.writer.execute("BEGIN IMMEDIATE")
            try:
                yield self.writer
            except BaseException:
                await asyncio.shield(self._rollback())
                raise
            else:
                await asyncio.shield(self.writer.execute("COMMIT"))

    async def _rollback(self) -> None:
        try:
            await self.writer.execute("ROLLBACK")
        except sqlite.OperationalError:
            # SQLite already rolled back (e.g. after SQLITE_FULL); nothing to undo.
            pass

    async def checkpoint(self) -> None:
        """Fold the WAL into the main file and truncate it."""
        async with self._write_lock:
            await self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        await self.reader.close()
        async with self._write_lock:
            try:
                await self.writer.execute("PRAGMA optimize")
            except sqlite.Error:
                log.debug("PRAGMA optimize failed at close", exc_info=True)
            await self.writer.close()


def _migrate_file(path: Path) -> int:
    conn = sqlite.connect(path)
    try:
        return migrate(conn)
    finally:
        conn.close()
