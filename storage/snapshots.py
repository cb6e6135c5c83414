"""Snapshots of the projections: the `memories` rows and their full-text index as they were at event N.

Synchronous code for a worker thread or the CLI. A snapshot is one SQLite
file in `data_dir/snapshots/`, `snapshot-20261129T030000Z-periodic.db`,
holding:

- `memories`: the projection rows at sequence N;
- `memories_fts`: an FTS5 table of the live one's definition over the
  snapshot's own `memories`, its shadow tables copies of the live index's
  at N (read in the same transaction as the rows), so loading a snapshot
  copies the index instead of re-indexing every memory;
- `snapshot`: one row with N, the kind, when it was taken, which event sits
  at N (its kind and recorded_at, so a snapshot of another timeline, say
  from before a restore, is never mistaken for this one) and a digest of the
  projection DDL it was taken under;
- `scrubbed`: ids of memories removed from it because they were forgotten.

Snapshots honour forgets: `scrub_memory` deletes a forgotten memory from
every snapshot file, its index entry with FTS5's `secure-delete` as the live
path does, and VACUUMs it (the connection has secure_delete on), so no byte
of its text or its index terms stays in any of them. A snapshot is written to a
temporary name and checked against forgets that committed meanwhile before
it is renamed into place; that check and every scrub hold one lock, so a
forget can never slip between them.

Naming, listing, rotation and reading a file by ATTACH are shared with
backups, in `storage.archive`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from storage import archive, sqlite
from storage.archive import TEMP_PREFIX, NameScheme, rotated_out
from storage.files import fsync_path, is_regular_file, remove_database_files
from storage.schema import FTS_COLUMNS, FTS_SHADOW_TABLES, PROJECTION_DDL, fts_ddl

log = logging.getLogger(__name__)

KINDS = ("periodic", "manual", "pre-restore")
# Snapshots taken under other projection DDL cannot be loaded into these tables.
PROJECTION_DIGEST = hashlib.sha256(PROJECTION_DDL.encode()).hexdigest()[:16]

NAMES = NameScheme(prefix="snapshot", noun="snapshot", kinds=KINDS)
NAME_PATTERN = NAMES.pattern

SNAPSHOT_DDL = (
    "CREATE TABLE snapshot (seq INTEGER NOT NULL, kind TEXT NOT NULL, taken_at TEXT NOT NULL,"
    " event_kind TEXT, event_recorded_at REAL, projection_digest TEXT NOT NULL, memories INTEGER NOT NULL)",
    "CREATE TABLE scrubbed (memory_id INTEGER PRIMARY KEY)",
)

# Publishing a snapshot and scrubbing snapshots never interleave (see the module docstring).
_files_lock = threading.Lock()


class SnapshotError(Exception):
    """A snapshot could not be written or used; the message is for people."""


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    path: Path
    kind: str
    taken_at: datetime
    size_bytes: int
    seq: int | None  # None: the file could not be read
    memories: int | None = None
    event_kind: str | None = None
    event_recorded_at: float | None = None
    projection_digest: str | None = None
    scrubbed: tuple[int, ...] = ()
    indexed: bool = False  # holds the full-text index (snapshots of older versions do not)

    @property
    def readable(self) -> bool:
        return self.seq is not None


def snapshot_name(kind: str, taken_at: datetime, serial: int = 1) -> str:
    return NAMES.name(kind, taken_at, serial)


# writing


def write_snapshot(
    db_path: Path, snapshots_dir: Path, *, kind: str, now: datetime | None = None, keep: int | None = None
) -> SnapshotInfo:
    """Write the live projections to a new snapshot; then prune that kind to `keep`."""
    name, taken_at = NAMES.new_name(snapshots_dir, kind, now)
    temp = snapshots_dir / f"{TEMP_PREFIX}{name}"
    try:
        seq = _copy_projections(db_path, temp, kind, taken_at)
        with _files_lock:
            # A forget that committed after the copy was read, but before
            # this lock, found no file to scrub: remove its memory here.
            late = _forgotten_in(temp, _forgotten_ids(db_path, after_seq=seq))
            if late:
                _scrub_file(temp, late)
            fsync_path(temp)
            os.replace(temp, snapshots_dir / name)
            fsync_path(snapshots_dir)
    except BaseException as exc:
        remove_database_files(temp)
        if isinstance(exc, sqlite.Error | OSError):
            raise SnapshotError(f"snapshot failed: {exc}") from exc
        raise
    info = read_snapshot_info(snapshots_dir / name)
    log.info("snapshot %s written at event #%s with %s memories", name, info.seq, info.memories)
    if keep is not None:
        try:
            prune_snapshots(snapshots_dir, kind=kind, keep=keep, protect=(name,))
        except OSError as exc:
            log.warning("could not prune old %s snapshots: %s", kind, exc)
    return info


def _copy_projections(db_path: Path, target: Path, kind: str, taken_at: datetime) -> int:
    """Copy the projection rows into a new file, all read in one transaction; returns N."""
    conn = sqlite.connect(target)
    try:
        # One self-contained file, never WAL: scrubbing must leave no old pages behind.
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("ATTACH DATABASE ? AS live", (str(db_path),))
        conn.execute("BEGIN")
        try:
            row = conn.execute("SELECT last_seq FROM live.projection_state WHERE name = 'memories'").fetchone()
            if row is None:
                raise SnapshotError("snapshot failed: the database has no projections")
            seq = int(row[0])
            event = conn.execute("SELECT kind, recorded_at FROM live.events WHERE seq = ?", (seq,)).fetchone()
            conn.execute("CREATE TABLE main.memories AS SELECT * FROM live.memories")
            _copy_index(conn)
            for statement in SNAPSHOT_DDL:
                conn.execute(statement)
            count = _check_index_covers_rows(conn)
            conn.execute(
                "INSERT INTO main.snapshot VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    kind,
                    taken_at.isoformat(),
                    event[0] if event else None,
                    event[1] if event else None,
                    PROJECTION_DIGEST,
                    count,
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise
        conn.execute("DETACH DATABASE live")
    finally:
        conn.close()
    return seq


def _copy_index(conn: sqlite.sqlite3.Connection) -> None:
    """Give the snapshot the live full-text index, as the current read transaction sees it.

    A real FTS5 table of the same definition (so a scrub can delete from it
    as the live path does), whose shadow tables, ordinary tables, then get
    the live ones' rows. The FTS5 table on this connection still caches the
    empty index it was created with, so nothing here may use it afterwards:
    the connection is closed at the end of the copy.
    """
    for statement in fts_ddl():
        conn.execute(statement)
    for table in FTS_SHADOW_TABLES:
        conn.execute(f"DELETE FROM main.{table}")
        conn.execute(f"INSERT INTO main.{table} SELECT * FROM live.{table}")


def _check_index_covers_rows(conn: sqlite.sqlite3.Connection) -> int:
    """The number of memories copied, once it is clear the index holds one document for each."""
    (count,) = conn.execute("SELECT count(*) FROM main.memories").fetchone()
    (indexed,) = conn.execute("SELECT count(*) FROM main.memories_fts_docsize").fetchone()
    if indexed != count:
        raise SnapshotError(f"snapshot failed: the full-text index holds {indexed} memories, the table {count}")
    return int(count)


# reading


@contextlib.contextmanager
def _attached(path: Path, alias: str = "snap") -> Iterator[sqlite.sqlite3.Connection]:
    """Read a snapshot file without opening it directly (which would switch it to WAL).

    Only a regular file: a scrub writes through this connection, and never through a link.
    """
    if not is_regular_file(path, folder="snapshots"):
        raise FileNotFoundError(path)
    with archive.attached(path, alias) as conn:
        yield conn


def read_snapshot_info(path: Path) -> SnapshotInfo:
    """What a snapshot file says about itself; `seq` is None if it cannot be read."""
    parsed = NAMES.parse(path.name)
    if parsed is None:
        raise ValueError(f"{path.name} is not a snapshot name")
    size = path.stat().st_size
    try:
        with _attached(path) as conn:
            row = conn.execute(
                "SELECT seq, event_kind, event_recorded_at, projection_digest, memories FROM snap.snapshot"
            ).fetchone()
            scrubbed = tuple(r[0] for r in conn.execute("SELECT memory_id FROM snap.scrubbed ORDER BY 1"))
            indexed = _has_index(conn, "snap")
    except (sqlite.Error, OSError) as exc:
        log.warning("snapshot %s cannot be read: %s", path.name, exc)
        row = None
    if row is None:
        return SnapshotInfo(path.name, path, parsed.kind, parsed.taken_at, size, seq=None)
    return SnapshotInfo(
        name=path.name,
        path=path,
        kind=parsed.kind,
        taken_at=parsed.taken_at,
        size_bytes=size,
        seq=int(row[0]),
        memories=int(row[4]),
        event_kind=row[1],
        event_recorded_at=row[2],
        projection_digest=row[3],
        scrubbed=scrubbed,
        indexed=indexed,
    )


def _has_index(conn: sqlite.sqlite3.Connection, alias: str) -> bool:
    """Whether the snapshot attached as `alias` holds the full-text index and all of its shadow tables."""
    names = ("memories_fts", *FTS_SHADOW_TABLES)
    (found,) = conn.execute(
        f"SELECT count(*) FROM {alias}.sqlite_master WHERE name IN (SELECT value FROM json_each(?))",
        (json.dumps(names),),
    ).fetchone()
    return found == len(names)


def _has_any_index_table(conn: sqlite.sqlite3.Connection, alias: str) -> bool:
    """Whether the snapshot attached as `alias` holds any part of a full-text index.

    A scrub must then delete from the index, or fail (and the file is deleted)
    if the index is incomplete: skipping it could leave a forgotten memory's terms.
    """
    (found,) = conn.execute(f"SELECT count(*) FROM {alias}.sqlite_master WHERE name GLOB 'memories_fts*'").fetchone()
    return found > 0


def list_snapshots(snapshots_dir: Path) -> list[SnapshotInfo]:
    """Every snapshot file, oldest first (unreadable ones included, with seq None)."""
    if not snapshots_dir.is_dir():
        return []
    infos = []
    for path in NAMES.files_in(snapshots_dir):
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
            infos.append(read_snapshot_info(path))
    return sorted(infos, key=lambda i: (i.taken_at, _serial(i.name), i.name))


def unusable_reason(conn: sqlite.sqlite3.Connection, info: SnapshotInfo) -> str | None:
    """Why the snapshot cannot stand for the projections of the log on `conn` at its N; None if it can."""
    if info.seq is None:
        return "unreadable"
    if info.projection_digest != PROJECTION_DIGEST:
        return "taken under other projection tables"
    if not info.indexed:
        return "taken by an older version of the bot, without the full-text index"
    (log_end,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    if info.seq > log_end:
        return f"at event #{info.seq}, past the end of the log (#{log_end})"
    if info.seq > 0:
        row = conn.execute("SELECT kind, recorded_at FROM events WHERE seq = ?", (info.seq,)).fetchone()
        if row is None or (row[0], row[1]) != (info.event_kind, info.event_recorded_at):
            return f"event #{info.seq} of the log is not the one the snapshot was taken at"
    for memory_id in info.scrubbed:
        # A scrubbed memory must be forgotten in this log too, or the log (a
        # restored older one, say) still holds it and the snapshot is short of it.
        row = conn.execute(
            "SELECT json_extract(payload, '$.redacted') FROM events WHERE seq = ?", (memory_id,)
        ).fetchone()
        if row is None or row[0] != 1:
            return f"memory #{memory_id} was scrubbed from it but is not forgotten in this log"
    return None


def usable_snapshots(conn: sqlite.sqlite3.Connection, snapshots_dir: Path) -> list[SnapshotInfo]:
    """Snapshots that fit the log on `conn`, newest (highest N) first."""
    usable = []
    for info in list_snapshots(snapshots_dir):
        reason = unusable_reason(conn, info)
        if reason is None:
            usable.append(info)
        else:
            log.info("snapshot %s not usable: %s", info.name, reason)
    return sorted(usable, key=lambda i: (i.seq or 0, i.taken_at, _serial(i.name), i.name), reverse=True)


def has_current_snapshot(db_path: Path, snapshots_dir: Path) -> bool:
    """Whether some snapshot already holds the projections at the log's current end."""
    conn = sqlite.connect(db_path, query_only=True)
    try:
        (log_end,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        return any(info.seq == log_end for info in usable_snapshots(conn, snapshots_dir))
    finally:
        conn.close()


def load_into(conn: sqlite.sqlite3.Connection, alias: str, info: SnapshotInfo) -> int:
    """Copy the rows and the full-text index of the snapshot ATTACHed as `alias` into the
    (fresh, empty) projections; returns N.

    Runs inside the caller's transaction, which replays the tail on top.
    """
    problems = [row[0] for row in conn.execute(f"PRAGMA {alias}.quick_check")]
    if problems != ["ok"]:
        raise SnapshotError(f"snapshot {info.name} is damaged: {problems[0]}")
    live_columns = [row[1] for row in conn.execute("PRAGMA main.table_info(memories)")]
    snap_columns = [row[1] for row in conn.execute(f"PRAGMA {alias}.table_info(memories)")]
    if live_columns != snap_columns:
        raise SnapshotError(f"snapshot {info.name} has other columns than the projections")
    if not _has_index(conn, alias):
        raise SnapshotError(f"snapshot {info.name} holds no full-text index")
    columns = ", ".join(live_columns)
    conn.execute(f"INSERT INTO main.memories ({columns}) SELECT {columns} FROM {alias}.memories")
    _load_index(conn, alias)
    conn.execute("UPDATE projection_state SET last_seq = ? WHERE name = 'memories'", (info.seq,))
    return int(info.seq or 0)


def _load_index(conn: sqlite.sqlite3.Connection, alias: str) -> None:
    """Replace the fresh FTS table's (empty) index with the snapshot's."""
    for table in FTS_SHADOW_TABLES:
        conn.execute(f"DELETE FROM main.{table}")
        conn.execute(f"INSERT INTO main.{table} SELECT * FROM {alias}.{table}")
    # FTS5 caches the index's structure and settings per connection, and re-reads them only
    # after another connection commits: it would go on writing as if the index were still
    # empty, over the copied segments. Reloading the schema disconnects the table; its next
    # use connects afresh and reads the copied index.
    conn.execute("PRAGMA writable_schema = RESET")


# pruning


def prune_snapshots(snapshots_dir: Path, *, kind: str, keep: int, protect: Collection[str] = ()) -> list[str]:
    """Delete the oldest snapshots of `kind` beyond the newest `keep`, and unreadable ones;
    never those named in `protect` (the one just written)."""
    with _files_lock:
        infos = list_snapshots(snapshots_dir)
        unreadable = [i for i in infos if not i.readable and i.name not in protect]
        readable = [i for i in infos if i.readable]
        doomed = unreadable + rotated_out(readable, kind=kind, keep=keep, protect=protect)
        for info in doomed:
            remove_database_files(info.path)
            log.info("pruned snapshot %s", info.name)
        if doomed:
            fsync_path(snapshots_dir)
    return [i.name for i in doomed]


def remove_unusable(db_path: Path, snapshots_dir: Path) -> list[str]:
    """Delete snapshots that do not fit the log (after a restore they belong to another timeline)."""
    conn = sqlite.connect(db_path, query_only=True)
    try:
        with _files_lock:
            doomed = [i for i in list_snapshots(snapshots_dir) if unusable_reason(conn, i) is not None]
            for info in doomed:
                remove_database_files(info.path)
                log.info("removed snapshot %s: it does not fit the log", info.name)
    finally:
        conn.close()
    return [i.name for i in doomed]


# forgetting


def scrub_memory(snapshots_dir: Path, memory_id: int) -> int:
    """Remove a forgotten memory from every snapshot so no byte of its text remains in any.

    Call it (in a thread) right after the forget commits. A snapshot that
    cannot be rewritten is deleted instead. Returns how many snapshot files
    held the memory (rewritten or deleted).
    """
    return scrub_memories(snapshots_dir, [memory_id])


def scrub_memories(snapshots_dir: Path, memory_ids: Iterable[int]) -> int:
    wanted = sorted(set(memory_ids))
    if not wanted or not snapshots_dir.is_dir():
        return 0
    changed = 0
    with _files_lock:
        # A link is not the bot's to rewrite or delete (it never loads one either).
        for path in sorted(NAMES.files_in(snapshots_dir)):
            try:
                present = _forgotten_in(path, wanted)
            except (sqlite.Error, OSError) as exc:
                # Unreadable: it cannot be shown to be free of the text.
                log.warning("deleting snapshot %s, which cannot be checked for forgotten memories: %s", path.name, exc)
                remove_database_files(path)
                changed += 1
                continue
            if not present:
                continue
            changed += 1
            try:
                _scrub_file(path, present)
            except (sqlite.Error, OSError) as exc:
                log.warning("deleting snapshot %s, which could not be scrubbed: %s", path.name, exc)
                remove_database_files(path)
        if changed:
            fsync_path(snapshots_dir)
    return changed


def scrub_forgotten(db_path: Path, snapshots_dir: Path) -> int:
    """Scrub every memory the log says was forgotten from every snapshot (a start-up sweep).

    Covers a crash between a forget's commit and its scrub.
    """
    has_snapshots = snapshots_dir.is_dir() and any(NAME_PATTERN.match(p.name) for p in snapshots_dir.iterdir())
    if not has_snapshots:
        return 0  # and no need to read the whole log
    return scrub_memories(snapshots_dir, _forgotten_ids(db_path, after_seq=0))


def _forgotten_ids(db_path: Path, *, after_seq: int) -> list[int]:
    conn = sqlite.connect(db_path, query_only=True)
    try:
        rows = conn.execute(
            "SELECT json_extract(payload, '$.memory_id') FROM events WHERE seq > ? AND kind = 'memory_forgotten'",
            (after_seq,),
        ).fetchall()
    finally:
        conn.close()
    return [int(row[0]) for row in rows if row[0] is not None]


def _forgotten_in(path: Path, memory_ids: list[int]) -> list[int]:
    """Which of `memory_ids` the snapshot file still holds."""
    if not memory_ids:
        return []
    with _attached(path) as conn:
        rows = conn.execute(
            "SELECT id FROM snap.memories WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(memory_ids),)
        ).fetchall()
    return [row[0] for row in rows]


def _scrub_file(path: Path, memory_ids: list[int]) -> None:
    # Attached rather than opened: it keeps its rollback journal (a WAL would
    # keep the old pages), and inherits secure_delete from our connection.
    with _attached(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = json.dumps(memory_ids)
            if _has_any_index_table(conn, "snap"):  # older snapshots have none
                _unindex(conn, ids)
            conn.execute("DELETE FROM snap.memories WHERE id IN (SELECT value FROM json_each(?))", (ids,))
            conn.execute("INSERT OR IGNORE INTO snap.scrubbed (memory_id) SELECT value FROM json_each(?)", (ids,))
            conn.execute("UPDATE snap.snapshot SET memories = (SELECT count(*) FROM snap.memories)")
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise
        # secure_delete zeroed the rows; VACUUM also drops the freed pages.
        conn.execute("VACUUM snap")
    fsync_path(path)


def _unindex(conn: sqlite.sqlite3.Connection, ids: str) -> None:
    """Delete the memories `ids` (a JSON list) from the snapshot's full-text index, terms and all.

    FTS5's 'delete' takes the values that were indexed, read from the row
    before it goes. `secure-delete` is on in the copied settings; set it
    again anyway, since without it the terms would stay in the index pages.
    """
    conn.execute("INSERT INTO snap.memories_fts (memories_fts, rank) VALUES ('secure-delete', 1)")
    columns = ", ".join(FTS_COLUMNS)
    conn.execute(
        f"INSERT INTO snap.memories_fts (memories_fts, rowid, {columns})"
        f" SELECT 'delete', id, {columns} FROM snap.memories WHERE id IN (SELECT value FROM json_each(?))",
        (ids,),
    )


# file helpers


def _rollback_quietly(conn: sqlite.sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite.OperationalError):  # SQLite may have rolled back already
        conn.execute("ROLLBACK")


def _serial(name: str) -> int:
    parsed = NAMES.parse(name)
    return parsed.serial if parsed else 0
