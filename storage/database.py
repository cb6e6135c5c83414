"""The database: one writer connection, two readers, and the one way to write.

Each connection runs on a thread of its own (storage/connection_thread.py),
so no connection ever blocks the event loop. The second reader serves
full-text search, so a turn's search runs beside its other reads (SQLite
releases the GIL while it works). Every write goes through `write(work)`:
`work` is a synchronous function of the writer's sqlite3 connection, run
whole on the writer's thread inside BEGIN IMMEDIATE ... COMMIT (rolled back
if it raises), so a command is one hop however many statements it runs, and
nothing can interleave with it. An asyncio lock, held until the writer's
thread is done even if the caller is cancelled, keeps a restore
(`run_exclusively`) from starting while a write is still under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from storage import sqlite
from storage.connection_thread import Connection
from storage.rebuild import ensure_projections, stale_projections
from storage.schema import LATEST_VERSION, migrate, schema_version

log = logging.getLogger(__name__)

# How long a checkpoint waits for readers before it gives up (and writes wait behind it).
CHECKPOINT_BUSY_TIMEOUT_MS = 200

T = TypeVar("T")


class DatabaseNotReady(Exception):
    """The database cannot be read as it is; the message says why and what to do."""


class Database:
    """The open database. Create it with `await Database.open(path)`."""

    def __init__(
        self,
        path: Path,
        writer: Connection | None,
        reader: Connection,
        search_reader: Connection | None = None,
    ) -> None:
        self.path = path
        self.writer = writer
        self.reader = reader
        self.search_reader = search_reader or reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path | str, *, snapshots_dir: Path | None = None) -> Database:
        """Create or migrate the database at `path` and open its connections.

        With `snapshots_dir`, projections that are missing, from another
        version or behind the log are first rebuilt (snapshot plus tail).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        version = await asyncio.to_thread(_migrate_file, path, snapshots_dir)
        log.info("database %s open (schema v%s, SQLite %s)", path, version, sqlite.sqlite_version)
        return cls(path, *await _connect(path, writer=True))

    @classmethod
    async def open_for_reading(cls, path: Path | str) -> Database:
        """Open an existing, up-to-date database for reading only, beside a running bot or not.

        Nothing is migrated or rebuilt (that is the running bot's or the
        `rebuild` command's job): a database that needs either is refused
        with DatabaseNotReady.
        """
        path = Path(path)
        if not path.is_file():
            raise DatabaseNotReady(f"no database at {path}")
        reason = await asyncio.to_thread(_not_ready_reason, path)
        if reason:
            raise DatabaseNotReady(f"the database at {path} {reason}")
        return cls(path, None, *await _connect(path, writer=False))

    @property
    def _writer(self) -> Connection:
        if self.writer is None:
            raise RuntimeError("this database was opened for reading only")
        return self.writer

    async def write(self, work: Callable[[sqlite.sqlite3.Connection], T]) -> T:
        """A write transaction: `work(connection)` on the writer's thread, in one hop.

        `work` gets the raw connection inside BEGIN IMMEDIATE; the transaction
        commits if it returns (its result is returned) and rolls back if it
        raises (its error is raised). Once handed to the writer's thread it
        runs to its end, committed or rolled back, even if the caller is
        cancelled: no write is ever left half done.
        """

        def transact(conn: sqlite.sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                # After a failed COMMIT (a full disk, a busy file) the transaction may still be
                # open, and the next one could not begin.
                with contextlib.suppress(sqlite.OperationalError):  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
                raise
            return result

        return await self._on_writer(transact)

    async def run_exclusively(self, work: Callable[[], T]) -> T:
        """Run blocking `work` in a thread while no write can start, e.g. a restore
        copying a backup over this database on its own connection.

        The lock is held until `work` ends, even if the caller is cancelled:
        releasing it while the thread still writes would let a turn in.
        """
        async with self._write_lock:
            return await outlasting_cancellation(asyncio.to_thread(work))

    async def checkpoint(self) -> bool:
        """Fold the WAL into the main file and truncate it; False if a reader held it up.

        A reader on an older snapshot (a backup or a snapshot being copied)
        keeps its pages in the WAL. Waiting for it would hold every write, so
        the checkpoint waits only briefly; the caller may try again later.
        """

        def truncate(conn: sqlite.sqlite3.Connection) -> bool:
            conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
            try:
                # Reading the row finishes the statement, which must not stay open into the next COMMIT.
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {sqlite.BUSY_TIMEOUT_MS}")
            return busy == 0

        return await self._on_writer(truncate)

    async def _on_writer(self, work: Callable[[sqlite.sqlite3.Connection], T]) -> T:
        """`work(connection)` on the writer's thread while no other write can start.

        The lock is held until `work` ends, even if the caller is cancelled:
        the writer's thread still runs it, and releasing the lock meanwhile
        would let a restore (`run_exclusively`) start beside it.
        """
        async with self._write_lock:
            return await outlasting_cancellation(self._writer.run(work))

    async def close(self) -> None:
        await self.reader.close()
        if self.search_reader is not self.reader:
            await self.search_reader.close()
        if self.writer is None:
            return
        async with self._write_lock:
            try:
                await self.writer.execute_fetchall("PRAGMA optimize")
            except sqlite.Error:
                log.debug("PRAGMA optimize failed at close", exc_info=True)
            await self.writer.close()


async def outlasting_cancellation(work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; if the caller is cancelled meanwhile, wait for `work` to end, then re-raise.

    `work` runs on a thread, which a cancellation cannot stop: its caller
    holds the write lock until it is done.
    """
    job = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait([job])
        raise


async def _connect(path: Path, *, writer: bool) -> list[Connection]:
    """The writer (if asked for) and the two readers, all closed again if any fails to open."""
    factories = [lambda: sqlite.connect(path)] if writer else []
    factories += [lambda: sqlite.connect(path, query_only=True)] * 2
    opened: list[Connection] = []
    try:
        for factory in factories:
            opened.append(await Connection.open(factory))
    except BaseException:
        for conn in opened:
            await conn.close()
        raise
    return opened


def _not_ready_reason(path: Path) -> str | None:
    """Why a database cannot be read as it is (its schema or projections lag this code), or None."""
    conn = sqlite.connect(path, query_only=True)
    try:
        conn.execute("BEGIN")  # one consistent view, whatever a running bot writes meanwhile
        version = schema_version(conn)
        if version != LATEST_VERSION:
            return (
                f"has schema version {version}, and this bot's is {LATEST_VERSION}:"
                " start the bot once to bring it up to date"
            )
        stale = stale_projections(conn)
        if stale:
            return f"needs its projections rebuilt ({stale}): start the bot, or run `rebuild` with the bot stopped"
        return None
    finally:
        conn.close()


def _migrate_file(path: Path, snapshots_dir: Path | None = None) -> int:
    conn = sqlite.connect(path)
    try:
        version = migrate(conn)
        if snapshots_dir is not None:
            ensure_projections(conn, snapshots_dir)
        return version
    finally:
        conn.close()
