"""SQLite connections for the event loop, each on a thread of its own.

An sqlite3 call blocks, so each connection lives on its own thread and the
loop hands it work. Every hand-over is a hop to that thread and back (15 to
90 µs on the development VM, more than most of our statements take), so work
of several statements (every write, a whole-history search) goes over as
one function: `await conn.run(work)` is one hop, however many statements
`work` runs. `execute_fetchall` is one hop for a single query; `execute`
gives a cursor whose every fetch, and its close, is another.

aiosqlite (0.22) works the same way, but hands its thread a function only
through its private `Connection._execute` and `_conn`. This is the same
queue and thread with `run` public, and the part of aiosqlite's surface the
bot uses (`execute`, `executemany`, `execute_fetchall`, cursors as async
context managers and iterators), so callers read as before.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from functools import partial
from queue import SimpleQueue
from typing import Any, TypeVar

from storage.sqlite import sqlite3

T = TypeVar("T")

# Rows each hop fetches while an `async for` walks a cursor.
ITER_CHUNK_ROWS = 256

# A job for the connection's thread: the future awaiting it (None when nobody waits), and the call;
# None ends the thread.
_Job = tuple[asyncio.Future | None, Callable[[], Any]] | None


class Connection:
    """One SQLite connection on a thread of its own. Open it with `await Connection.open(connector)`.

    Calls run on that thread one at a time, in the order they were made. A
    call whose caller is cancelled still runs (SQLite may be in the middle of
    it); only its result is dropped.
    """

    def __init__(self) -> None:
        """Not open yet, and without a thread: see `open`."""
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, connector: Callable[[], sqlite3.Connection]) -> Connection:
        """A connection made by `connector`, which runs on the new connection's own thread."""
        conn = cls()
        # A daemon: a connection left open by mistake must not keep the process from exiting. SQLite's
        # journal makes an exit in the middle of a write a rollback, as a crash would be.
        threading.Thread(target=_serve, args=(conn._jobs,), name="sqlite-connection", daemon=True).start()
        try:
            conn._db = await conn._call(connector)
        except BaseException:
            conn._jobs.put(None)
            raise
        return conn

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` on the connection's thread, in one hop: a batch of statements at the cost of one."""
        return await self._call(partial(work, self._open))

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Executing:
        """Run one statement; await it for a `Cursor`, or use it in `async with` to close the cursor after."""
        return _Executing(self._cursor(partial(self._open.execute, sql, parameters)))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Executing:
        """Run one statement for each of `rows`, in one hop."""
        return _Executing(self._cursor(partial(self._open.executemany, sql, rows)))

    async def execute_fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """Every row of one query, in one hop."""
        return await self.run(partial(_fetchall, sql, parameters))

    @property
    def in_transaction(self) -> bool:
        return self._open.in_transaction

    async def close(self) -> None:
        """Close the connection once the calls made before it have run, and end its thread."""
        db, self._db = self._db, None
        if db is None:
            return
        try:
            await self._call(db.close)
        finally:
            self._jobs.put(None)

    def __del__(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        warnings.warn(f"{self!r} was never closed", ResourceWarning, stacklevel=1)
        # The loop may be gone by now: the thread closes the connection and ends, and nobody waits.
        self._jobs.put((None, db.close))
        self._jobs.put(None)

    @property
    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        return self._db

    async def _call(self, function: Callable[[], T]) -> T:
        """`function()` on the connection's thread: one hop."""
        future = asyncio.get_running_loop().create_future()
        self._jobs.put((future, function))
        return await future

    async def _cursor(self, statement: Callable[[], sqlite3.Cursor]) -> Cursor:
        return Cursor(self, await self._call(statement))


class Cursor:
    """A cursor of a `Connection`: each fetch, and the close, is a hop to the connection's thread."""

    def __init__(self, conn: Connection, cursor: sqlite3.Cursor) -> None:
        self._conn = conn
        self._cursor = cursor

    async def fetchone(self) -> Any:
        return await self._conn._call(self._cursor.fetchone)

    async def fetchmany(self, size: int = ITER_CHUNK_ROWS) -> list[Any]:
        return await self._conn._call(partial(self._cursor.fetchmany, size))

    async def fetchall(self) -> list[Any]:
        return await self._conn._call(self._cursor.fetchall)

    async def close(self) -> None:
        await self._conn._call(self._cursor.close)

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    async def __aiter__(self) -> AsyncIterator[Any]:
        while rows := await self.fetchmany():
            for row in rows:
                yield row

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Executing:
    """A statement on its way to the connection's thread: await it for its `Cursor`, or enter it
    in `async with` to have the cursor closed on the way out."""

    def __init__(self, pending: Coroutine[Any, Any, Cursor]) -> None:
        self._pending = pending
        self._entered: Cursor | None = None

    def __await__(self) -> Generator[Any, None, Cursor]:
        return self._pending.__await__()

    async def __aenter__(self) -> Cursor:
        self._entered = await self._pending
        return self._entered

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._entered is not None
        await self._entered.close()


def _fetchall(sql: str, parameters: Sequence[Any], db: sqlite3.Connection) -> list[Any]:
    cursor = db.execute(sql, parameters)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _serve(jobs: SimpleQueue[_Job]) -> None:
    """The connection's thread: run each job in turn, and hand its outcome to the loop awaiting it."""
    while (job := jobs.get()) is not None:
        future, function = job
        try:
            result, error = function(), None
        except BaseException as exc:  # handed to the caller, like any outcome
            result, error = None, exc
        if future is None:
            continue
        try:
            future.get_loop().call_soon_threadsafe(_settle, future, result, error)
        except RuntimeError:
            pass  # the loop has closed: nobody awaits this any more


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
