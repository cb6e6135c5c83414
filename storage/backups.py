"""Backups of the whole database: take, verify, list, prune, restore.

Synchronous code for a worker thread or the CLI. A backup is one
self-contained SQLite file in `data_dir/backups/`, named so that names sort
by time and say their kind: `memory-20261129T030000Z-nightly.db`. Beside it
a small JSON sidecar records what was checked when it was taken: the last
event id, the schema version and a SHA-256 of the file.

Taking one: copy the live database on its own connection with SQLite's
backup API (one step, so one read transaction and a consistent copy while
the bot keeps writing), switch the copy to a rollback journal so it is a
single file, verify it, fsync it, rename it into place, fsync the folder,
and only then prune old ones. A failure at any step removes the temporary
file and leaves every earlier backup as it was.

Files that are only read (verifying, restoring from) are ATTACHed to an
in-memory connection rather than opened directly: `storage.sqlite.connect`
switches a database to WAL, which would rewrite the backup's header and
leave `-wal`/`-shm` files beside it. Naming, listing, rotation and that
ATTACH are shared with snapshots, in `storage.archive`. The PostgreSQL
backend's backups (`storage.postgres.backups`) share this folder, the
sidecar and the listing and pruning here, under their own suffix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from storage import archive, sqlite
from storage.archive import TEMP_PREFIX, NameScheme, rotated_out
from storage.files import fsync_path, is_regular_file, remove_database_files
from storage.rebuild import ensure_projections
from storage.schema import LATEST_VERSION, migrate

log = logging.getLogger(__name__)

KINDS = ("nightly", "manual", "pre-restore")
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
HASH_CHUNK_BYTES = 1 << 20

NAMES = NameScheme(prefix="memory", noun="backup", kinds=KINDS)
NAME_PATTERN = NAMES.pattern


class BackupError(Exception):
    """A backup could not be taken, found, verified or restored; the message is for people."""


class UnknownBackup(BackupError):
    """No backup has that name."""


class InvalidBackup(BackupError):
    """The file is not a sound backup of this bot's database."""


@dataclass(frozen=True)
class BackupInfo:
    name: str
    path: Path
    kind: str
    taken_at: datetime  # UTC, from the name
    size_bytes: int
    last_event_id: int | None  # None when the sidecar is missing
    schema_version: int | None
    verified: bool  # verified when taken, and the file still has the size it had then


@dataclass(frozen=True)
class BackupCheck:
    """What a successful verification found."""

    schema_version: int
    last_event_id: int
    checksum_checked: bool


def backup_name(kind: str, taken_at: datetime, serial: int = 1) -> str:
    return NAMES.name(kind, taken_at, serial)


def parse_name(name: str) -> tuple[str, datetime, int] | None:
    """(kind, taken_at, serial) for a backup file name, or None if it is not one."""
    return NAMES.parse(name)


# taking


def take_backup(
    db_path: Path,
    backups_dir: Path,
    *,
    kind: str,
    now: datetime | None = None,
    keep: int | None = None,
    protect: Collection[str] = (),
) -> BackupInfo:
    """Copy the live database into a new verified backup; then prune that kind to `keep`.

    Backups named in `protect` are never pruned: the safety copy a restore
    takes first must not delete the (pre-restore) backup about to be restored.
    """

    def copy_and_check(temp: Path) -> BackupCheck:
        copy_database(db_path, temp)
        return verify_file(temp)

    return write_backup(
        backups_dir,
        kind=kind,
        now=now,
        keep=keep,
        protect=protect,
        names=NAMES,
        produce=copy_and_check,
        about={"sqlite_version": sqlite.sqlite_version},
        failures=(sqlite.Error, OSError),
    )


def write_backup(
    backups_dir: Path,
    *,
    kind: str,
    now: datetime | None,
    keep: int | None,
    protect: Collection[str],
    names: NameScheme,
    produce: Callable[[Path], BackupCheck],
    about: dict[str, object],
    failures: tuple[type[BaseException], ...],
) -> BackupInfo:
    """Either backend's way to a new backup: `produce` writes and checks the file at a temporary
    name; then its sidecar (with `about` the backend) and the file are fsynced and renamed into
    place, and that kind is pruned to `keep`. An exception of `failures` becomes a BackupError;
    whatever fails, the temporary files go and every earlier backup stays as it was."""
    name, taken_at = names.new_name(backups_dir, kind, now, sidecar_suffix=SIDECAR_SUFFIX)
    temp = backups_dir / f"{TEMP_PREFIX}{name}"
    temp_sidecar = backups_dir / f"{TEMP_PREFIX}{name}{SIDECAR_SUFFIX}"
    try:
        check = produce(temp)
        digest = file_digest(temp)
        fsync_path(temp)
        size = temp.stat().st_size
        sidecar = {
            "format": SIDECAR_FORMAT,
            "name": name,
            "kind": kind,
            "taken_at": taken_at.isoformat(),
            "last_event_id": check.last_event_id,
            "schema_version": check.schema_version,
            "size_bytes": size,
            "sha256": digest,
            **about,
        }
        write_synced(temp_sidecar, json.dumps(sidecar, indent=2).encode() + b"\n")
        # The sidecar goes first: a backup file that exists always has its record.
        os.replace(temp_sidecar, backups_dir / f"{name}{SIDECAR_SUFFIX}")
        os.replace(temp, backups_dir / name)
        fsync_path(backups_dir)
    except BaseException as exc:
        remove_database_files(temp, temp_sidecar)
        if isinstance(exc, failures):
            raise BackupError(f"backup failed: {_describe(exc)}") from exc
        raise
    log.info("backup %s taken: %d bytes, events up to #%d", name, size, check.last_event_id)
    if keep is not None:
        try:
            prune_backups(backups_dir, kind=kind, keep=keep, protect={name, *protect}, names=names)
        except OSError as exc:
            # The new backup is good; old ones are simply kept a while longer.
            log.warning("could not prune old %s backups: %s", kind, exc)
    return BackupInfo(name, backups_dir / name, kind, taken_at, size, check.last_event_id, check.schema_version, True)


def copy_database(db_path: Path, target: Path) -> None:
    """A consistent copy of the live database at `db_path` into a new single-file database."""
    if target.exists():
        raise BackupError(f"{target.name} already exists")
    source = sqlite.connect(db_path, query_only=True)
    try:
        copy = sqlite.connect(target)
        try:
            # A rollback journal while copying: through WAL every page would be written twice.
            copy.execute("PRAGMA journal_mode = DELETE")
            # One step copies everything under one read transaction. In smaller
            # steps, a write by the bot between steps restarts the copy.
            source.backup(copy, pages=-1)
            # The copy took the live header, which says WAL; a backup is one file.
            copy.execute("PRAGMA journal_mode = DELETE")
        finally:
            copy.close()
    finally:
        source.close()


# verifying


def verify_backup(path: Path) -> BackupCheck:
    """Check a backup file and, if it has a sidecar, that it is still the file that was taken."""
    sidecar = check_recorded(path)
    check = verify_file(path)
    if sidecar is not None and sidecar.get("last_event_id") != check.last_event_id:
        raise InvalidBackup(
            f"{path.name} holds events up to #{check.last_event_id}, but #{sidecar.get('last_event_id')} was recorded"
        )
    return BackupCheck(check.schema_version, check.last_event_id, checksum_checked=sidecar is not None)


def check_recorded(path: Path) -> dict | None:
    """The sidecar of the backup at `path`, once the file is checked to still have the size and
    SHA-256 it records (InvalidBackup if not); None when there is no readable sidecar."""
    sidecar = read_sidecar(path)
    if sidecar is not None:
        size = _size_or_none(path)
        if size != sidecar.get("size_bytes"):
            raise InvalidBackup(f"{path.name} has {size} bytes, but {sidecar.get('size_bytes')} were written")
        if file_digest(path) != sidecar.get("sha256"):
            raise InvalidBackup(f"{path.name} changed since it was taken (its checksum does not match)")
    return sidecar


def verify_file(path: Path) -> BackupCheck:
    """Check that `path` is a sound database of this bot: integrity, foreign keys, schema, events."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise InvalidBackup(f"{path.name} does not exist") from None
    except OSError as exc:
        raise InvalidBackup(f"{path.name} cannot be read: {_describe(exc)}") from None
    if not header:
        raise InvalidBackup(f"{path.name} is empty")
    if header != SQLITE_MAGIC:
        raise InvalidBackup(f"{path.name} is not an SQLite database")
    try:
        with attached(path) as conn:
            problems = [row[0] for row in conn.execute("PRAGMA candidate.integrity_check(10)")]
            if problems != ["ok"]:
                raise InvalidBackup(f"{path.name} failed the integrity check: {problems[0]}")
            foreign = conn.execute("PRAGMA candidate.foreign_key_check").fetchall()
            if foreign:
                raise InvalidBackup(f"{path.name} has {len(foreign)} broken foreign keys (first in {foreign[0][0]})")
            version = _schema_version(conn)
            if version is None:
                raise InvalidBackup(f"{path.name} is not a database of this bot (no schema version)")
            if not 1 <= version <= LATEST_VERSION:
                raise InvalidBackup(f"{path.name} has schema version {version}, which this bot does not know")
            (last_event_id,) = conn.execute("SELECT coalesce(max(seq), 0) FROM candidate.events").fetchone()
    except sqlite.Error as exc:
        raise InvalidBackup(f"{path.name} cannot be read as a database: {_describe(exc)}") from None
    return BackupCheck(int(version), int(last_event_id), checksum_checked=False)


@contextlib.contextmanager
def attached(path: Path, alias: str = "candidate") -> Iterator[sqlite.sqlite3.Connection]:
    """A connection with the database at `path` ATTACHed as `alias`, for reading it unchanged.

    Any file will do, a link to one too: `verify` checks copies kept elsewhere.
    """
    if not path.is_file():
        # ATTACH would create an empty database there.
        raise InvalidBackup(f"{path.name} does not exist")
    with archive.attached(path, alias) as conn:
        yield conn


def _schema_version(conn: sqlite.sqlite3.Connection) -> int | None:
    exists = conn.execute(
        "SELECT 1 FROM candidate.sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return None
    (version,) = conn.execute("SELECT max(version) FROM candidate.schema_migrations").fetchone()
    return None if version is None else int(version)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_sidecar(path: Path) -> dict | None:
    """The JSON record beside a backup, or None if it is missing or unreadable."""
    try:
        data = json.loads(Path(f"{path}{SIDECAR_SUFFIX}").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# listing and pruning


def list_backups(backups_dir: Path, *, names: NameScheme = NAMES) -> list[BackupInfo]:
    """Every backup named by `names` (SQLite's by default), oldest first."""
    found: list[tuple[tuple[datetime, int], BackupInfo]] = []
    if not backups_dir.is_dir():
        return []
    for path in names.files_in(backups_dir):
        parsed = names.parse(path.name)
        size = _size_or_none(path)
        if parsed is None or size is None:
            continue
        kind, taken_at, serial = parsed
        sidecar = read_sidecar(path) or {}
        verified = bool(sidecar) and sidecar.get("size_bytes") == size and bool(sidecar.get("sha256"))
        info = BackupInfo(
            name=path.name,
            path=path,
            kind=kind,
            taken_at=taken_at,
            size_bytes=size,
            last_event_id=_int_or_none(sidecar.get("last_event_id")),
            schema_version=_int_or_none(sidecar.get("schema_version")),
            verified=verified,
        )
        found.append(((taken_at, serial), info))
    return [info for _, info in sorted(found, key=lambda item: item[0])]


def find_backup(backups_dir: Path, name: str, *, names: NameScheme = NAMES) -> BackupInfo:
    """The backup called `name` (its suffix, `.db`, may be left out); UnknownBackup if there is none."""
    wanted = name.strip()
    if wanted and not wanted.endswith(names.suffix):
        wanted += names.suffix
    for info in list_backups(backups_dir, names=names):
        if info.name == wanted:
            return info
    raise UnknownBackup(f"No backup named {name.strip() or '(empty)'}.")


def newest_backup(backups_dir: Path, kind: str | None = None, *, names: NameScheme = NAMES) -> BackupInfo | None:
    candidates = [b for b in list_backups(backups_dir, names=names) if kind is None or b.kind == kind]
    return candidates[-1] if candidates else None


def prune_backups(
    backups_dir: Path, *, kind: str, keep: int, protect: Collection[str] = (), names: NameScheme = NAMES
) -> list[str]:
    """Delete the oldest backups of `kind` beyond the newest `keep`, except those named in
    `protect` (they wait for a later prune); returns the names deleted.

    Each kind is pruned on its own, so the nightly rotation never removes a
    manual backup or the safety copy taken before a restore; and `names` (SQLite's by
    default) picks the files by suffix, so the two backends' backups never prune each other.
    """
    doomed = rotated_out(list_backups(backups_dir, names=names), kind=kind, keep=keep, protect=protect)
    for info in doomed:
        remove_database_files(Path(f"{info.path}{SIDECAR_SUFFIX}"), info.path)
        log.info("pruned backup %s", info.name)
    # Sidecars left by a crash between the two renames of a take.
    for sidecar in backups_dir.glob(f"{names.prefix}-*{names.suffix}{SIDECAR_SUFFIX}"):
        if not sidecar.with_suffix("").exists():
            remove_database_files(sidecar)
    if doomed:
        fsync_path(backups_dir)
    return [info.name for info in doomed]


def remove_temp_files(directory: Path) -> list[str]:
    """Delete what an interrupted backup or snapshot left; call only when none is running."""
    if not directory.is_dir():
        return []
    leftovers = [p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]
    remove_database_files(*leftovers)
    return [p.name for p in leftovers]


# restoring


def restore_into(backup_path: Path, live_path: Path, snapshots_dir: Path | None = None) -> None:
    """Copy a verified backup over the live database with the backup API, then bring it up to date.

    The copy is one write transaction on the live database: a crash before
    its commit leaves the old database, after it the restored one. Other
    connections may stay open (the bot holds its write lock meanwhile); they
    see the restored content at their next read. Nothing is renamed, so no
    stale `-wal` or `-shm` can end up beside the wrong file. Afterwards the
    schema is migrated and, if the backup's projections do not fit this
    code, they are rebuilt (from a snapshot when one fits).

    Event numbers are memory ids, which people have seen: new events after
    the restore continue past the highest number the replaced database had
    reached, so an id shown before the restore never names another memory.
    """
    # SQLite opens the file by its name and follows links: make sure the name is still the file listed.
    if not is_regular_file(backup_path, folder="backups"):
        raise InvalidBackup(f"{backup_path.name} is not a regular file")
    copied = False
    try:
        with attached(backup_path) as source:
            live = sqlite.connect(live_path)
            try:
                reached = _last_event_number(live)
                source.backup(live, pages=-1, name="candidate")
                copied = True
                _continue_numbering(live, reached)
                migrate(live)
                ensure_projections(live, snapshots_dir)
                # Fold the restored pages into the main file and empty the WAL.
                live.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                live.close()
    except sqlite.Error as exc:
        if copied:
            # The backup is in; what failed is bringing it up to date, which the next start retries.
            raise BackupError(
                f"restore copied the backup in, but could not finish ({_describe(exc)}); restart the bot to complete it"
            ) from exc
        raise BackupError(f"restore failed: {_describe(exc)}; the database is unchanged") from exc
    log.info("restored %s into %s", backup_path.name, live_path)


def _last_event_number(conn: sqlite.sqlite3.Connection) -> int:
    """The highest event number this database has handed out (0 for a new one)."""
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    except sqlite.OperationalError:  # no AUTOINCREMENT table yet
        return 0
    return int(row[0]) if row else 0


def _continue_numbering(conn: sqlite.sqlite3.Connection, reached: int) -> None:
    """Make the next event number come after `reached`, whatever the restored database had."""
    if reached <= _last_event_number(conn):
        return
    updated = conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (reached,)).rowcount
    if not updated:
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (reached,))


# file helpers


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to a new file at `path` and flush it to disk."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
