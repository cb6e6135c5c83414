from __future__ import annotations

import asyncio
import threading
import time

import pytest

from storage import sqlite
from storage.connection_thread import ITER_CHUNK_ROWS, Connection


def _connection_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "sqlite-connection"}


async def _still_running_after(threads: set[threading.Thread], timeout: float = 5.0) -> set[threading.Thread]:
    """Those of `threads` still running once they have had `timeout` seconds to end."""
    deadline = time.monotonic() + timeout
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return {thread for thread in threads if thread.is_alive()}


@pytest.fixture
async def conn():
    # sqlite3's check_same_thread is on: the connection refuses any thread but the one that opened it.
    conn = await Connection.open(lambda: sqlite.connect(":memory:"))
    yield conn
    await conn.close()


async def test_a_batch_runs_in_one_hop_on_the_connections_own_thread(conn):
    finished = threading.Event()

    def batch(db) -> tuple[int, int]:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
        total = db.execute("SELECT sum(x) FROM t").fetchone()[0]
        finished.set()
        return threading.get_ident(), total

    pending = asyncio.ensure_future(conn.run(batch))
    await asyncio.sleep(0)  # the batch is handed over
    # The loop is blocked now: a batch needing a hop back to it between statements could not finish.
    finished_with_the_loop_blocked = finished.wait(timeout=10)
    batch_thread, total = await pending
    connection_thread = await conn.run(lambda db: threading.get_ident())

    assert (finished_with_the_loop_blocked, total) == (True, 6)
    assert batch_thread == connection_thread != threading.get_ident()


async def test_a_cancelled_call_still_runs_and_the_next_one_waits_for_it(conn):
    await conn.execute("CREATE TABLE t (x)")
    release = threading.Event()

    def slow_insert(db) -> None:
        release.wait(timeout=10)
        db.execute("INSERT INTO t VALUES (1)")

    cancelled = asyncio.ensure_future(conn.run(slow_insert))
    await asyncio.sleep(0)
    cancelled.cancel()
    counted = asyncio.ensure_future(conn.execute_fetchall("SELECT count(*) FROM t"))
    await asyncio.sleep(0)
    release.set()

    assert await counted == [(1,)]
    assert cancelled.cancelled()


async def test_an_error_reaches_the_caller_and_the_connection_stays_usable(conn):
    with pytest.raises(sqlite.OperationalError, match="no such table"):
        await conn.run(lambda db: db.execute("SELECT * FROM missing"))
    with pytest.raises(sqlite.OperationalError, match="no such table"):
        await conn.execute("SELECT * FROM missing")

    assert await conn.execute_fetchall("SELECT 1") == [(1,)]


async def test_cursors_fetch_and_walk_every_row(conn):
    rows = ITER_CHUNK_ROWS * 2 + 1  # an `async for` fetches this in three chunks
    await conn.execute("CREATE TABLE t (x)")
    inserted = await conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    async with conn.execute("SELECT x FROM t ORDER BY x") as cursor:
        walked = [row[0] async for row in cursor]
    async with conn.execute("SELECT count(*) FROM t") as cursor:
        counted = await cursor.fetchone()
    cursor = await conn.execute("SELECT x FROM t WHERE x < 3 ORDER BY x")
    fetched = await cursor.fetchall()
    await cursor.close()

    assert (inserted.rowcount, walked, counted, fetched) == (rows, list(range(rows)), (rows,), [(0,), (1,), (2,)])


async def test_a_connection_that_fails_to_open_or_is_closed_leaves_no_thread_behind(tmp_path):
    before = _connection_threads()
    with pytest.raises(sqlite.OperationalError):
        await Connection.open(lambda: sqlite.connect(tmp_path / "missing" / "db.sqlite"))
    conn = await Connection.open(lambda: sqlite.connect(":memory:"))
    started = _connection_threads() - before  # the open one's, and the failed one's unless it has ended
    await conn.close()

    with pytest.raises(sqlite.sqlite3.ProgrammingError):
        await conn.execute_fetchall("SELECT 1")
    assert started and await _still_running_after(started) == set()
