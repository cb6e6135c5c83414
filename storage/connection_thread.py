"""Run a batch of statements on an aiosqlite connection's own thread, in one hop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import aiosqlite

from storage.sqlite import sqlite3

T = TypeVar("T")


async def run_on_connection(conn: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run `work(connection)` on the aiosqlite connection's own thread, in one round trip.

    Every `await conn.execute(...)` is a hop to that thread and back (40 to 60 µs
    here), and a turn's write is several statements, so they run in one call.
    aiosqlite has no public API for this; `_execute` is what its own methods
    run on (aiosqlite is pinned in requirements.txt, and
    tests/test_dependency_hooks.py names `_execute` or `_conn` if an upgrade
    changes them).
    """
    return await conn._execute(lambda: work(conn._conn))
