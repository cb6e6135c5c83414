"""Backups of the PostgreSQL backend: take, verify, list, prune, restore, with pg_dump's custom format.

Synchronous code for a worker thread or the CLI, like `storage.backups`,
whose folder, names, kinds, retention and JSON sidecar these backups share:
`memory-20261129T030000Z-nightly.pgdump` beside SQLite's `.db` files, each
scheme listing and pruning only its own suffix.

Taking one: `pg_dump -Fc` into a temporary file, verify it, fsync it, write
the sidecar, rename both into place, fsync the folder, then prune that
kind. Verifying restores the dump into a scratch database on the same
server and reads its schema version and last event id there, so the id
recorded is the dump's own (same snapshot), and the scratch database is
always dropped. Restoring runs `pg_restore --single-transaction` over the
live database, so a failed restore changes nothing; then, in one more
transaction, the event numbering continues past what the live database
had reached and the schema is migrated.

The client programs must be at least as new as the server (pg_dump refuses
a newer server), so they are chosen by the server's major version. The DSN
reaches them as `--dbname`, without its password, which goes through the
environment: argument lists are visible to every local user.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from storage import backups as shared
from storage.archive import NameScheme
from storage.backups import (
    KINDS,
    BackupCheck,
    BackupError,
    BackupInfo,
    InvalidBackup,
    check_recorded,
    write_backup,
)
from storage.files import is_regular_file
from storage.postgres import schema

log = logging.getLogger(__name__)

SUFFIX = ".pgdump"
NAMES = NameScheme(prefix="memory", noun="backup", kinds=KINDS, suffix=SUFFIX)
BACKEND = "postgresql"
# Every archive in pg_dump's custom format starts so.
DUMP_MAGIC = b"PGDMP"
# Where Debian installs each major version's programs: /usr/lib/postgresql/16/bin.
CLIENT_ROOT = Path("/usr/lib/postgresql")
# Scratch databases are named so, so one left by a crash is easy to recognise.
SCRATCH_PREFIX = "memory_verify_"
# DROP DATABASE ... WITH (FORCE) exists from PostgreSQL 13 on.
FORCE_DROP_FROM = 13
URI_SCHEMES = ("postgresql", "postgres")
# What the migrations create, so a restore of an older dump can clear what newer ones made.
_CREATED = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(TABLE|FUNCTION|SEQUENCE|VIEW|TYPE)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE
)

T = TypeVar("T")


@dataclass(frozen=True)
class PgTools:
    """The client programs to use, and pg_dump's version (recorded in the sidecar)."""

    pg_dump: Path
    pg_restore: Path
    version: str  # "16.4"


def backup_name(kind: str, taken_at: datetime, serial: int = 1) -> str:
    return NAMES.name(kind, taken_at, serial)


# finding the client programs


def find_pg_tools(server: str | int) -> PgTools:
    """pg_dump and pg_restore for the server at DSN `server`, or of that major version
    (an int: 16, or a server_version_num such as 160004).

    Debian's folder of the server's own major version first, then the newest
    folder of a later one, then PATH. BackupError if none is found, or only
    one older than the server.
    """
    major = _server_major(server)
    for folder in _candidate_folders(major):
        dump, restore = folder / "pg_dump", folder / "pg_restore"
        if _executable(dump) and _executable(restore):
            return _checked(dump, restore, major)
    on_path = shutil.which("pg_dump")
    if on_path is None:
        raise BackupError(f"pg_dump not found; install PostgreSQL's client programs ({_package_hint(major)})")
    # pg_restore of the same version when it sits beside pg_dump (or is linked there).
    beside = Path(on_path).parent / "pg_restore"
    restore_path = str(beside) if _executable(beside) else shutil.which("pg_restore")
    if restore_path is None:
        raise BackupError(f"pg_restore not found; install PostgreSQL's client programs ({_package_hint(major)})")
    return _checked(Path(on_path), Path(restore_path), major)


def _server_major(server: str | int) -> int:
    if isinstance(server, str) and server.strip().isdigit():
        server = int(server)
    if isinstance(server, int):
        return server // 10000 if server >= 10000 else server
    version = _on_database(server, lambda conn: conn.fetchval("SHOW server_version_num"), "cannot reach the database")
    return int(version) // 10000


def _candidate_folders(major: int) -> list[Path]:
    own = CLIENT_ROOT / str(major) / "bin"
    newer = [
        folder
        for folder in sorted(CLIENT_ROOT.glob("*/bin"), key=_folder_version, reverse=True)
        if _folder_version(folder) > (major,)
    ]
    return [own, *newer]


def _folder_version(folder: Path) -> tuple[int, ...]:
    """(16,) for /usr/lib/postgresql/16/bin, (9, 6) for .../9.6/bin; () if not a version."""
    name = folder.parent.name
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return ()
    return tuple(int(part) for part in name.split("."))


def _checked(dump: Path, restore: Path, major: int) -> PgTools:
    """The tools, once pg_dump says a version that can dump a server of `major`."""
    result = _run([dump, "--version"], what="pg_dump --version")
    found = re.search(r"(\d+)(?:\.(\d+))?", result.stdout)
    if found is None:
        raise BackupError(f"{dump} does not say its version")
    version = found.group(0)
    if int(found.group(1)) < major:
        raise BackupError(
            f"pg_dump {version} ({dump}) cannot dump a PostgreSQL {major} server;"
            f" install PostgreSQL's client programs ({_package_hint(major)})"
        )
    return PgTools(pg_dump=dump, pg_restore=restore, version=version)


def _package_hint(major: int) -> str:
    return f"Debian: postgresql-client-{major}"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


# taking


def take_backup(
    dsn: str,
    backups_dir: Path,
    *,
    kind: str,
    now: datetime | None = None,
    keep: int | None = None,
    protect: Collection[str] = (),
    tools: PgTools | None = None,
) -> BackupInfo:
    """Dump the database at `dsn` into a new verified backup; then prune that kind to `keep`.

    Backups named in `protect` are never pruned (see storage.backups.take_backup).
    """
    tools = tools or find_pg_tools(dsn)

    def dump_and_check(temp: Path) -> BackupCheck:
        client_dsn, env = _client_connection(dsn)
        dump = [tools.pg_dump, "-Fc", "--no-owner", "--no-privileges", f"--file={temp}", f"--dbname={client_dsn}"]
        _run(dump, what="pg_dump", env=env)
        # The dump's own last event id, read where it was restored: the same snapshot as the data.
        return verify_file(temp, dsn, tools)

    return write_backup(
        backups_dir,
        kind=kind,
        now=now,
        keep=keep,
        protect=protect,
        names=NAMES,
        produce=dump_and_check,
        about={"backend": BACKEND, "pg_dump_version": tools.version},
        failures=(OSError,),
    )


# verifying


def verify_backup(path: Path, dsn: str, tools: PgTools | None = None) -> BackupCheck:
    """Check a dump and, if it has a sidecar, that it is still the file that was taken.

    The dump is restored into a scratch database on the server at `dsn`
    (whose role needs CREATEDB), which is dropped afterwards whatever happens.
    """
    sidecar = check_recorded(path)
    check = verify_file(path, dsn, tools)
    if sidecar is not None:
        for field, found in (("last_event_id", check.last_event_id), ("schema_version", check.schema_version)):
            recorded = sidecar.get(field)
            if recorded != found:
                what = field.replace("_", " ")
                raise InvalidBackup(f"{path.name} restores with {what} {found}, but {recorded} was recorded")
    return BackupCheck(check.schema_version, check.last_event_id, checksum_checked=sidecar is not None)


def verify_file(path: Path, dsn: str, tools: PgTools | None = None) -> BackupCheck:
    """Check that `path` is a dump of this bot's database that restores: InvalidBackup if not."""
    tools = tools or find_pg_tools(dsn)
    _check_archive(path, tools)
    scratch = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:16]}"
    # Like the live database, so text restores as it was dumped.
    _on_database(dsn, lambda conn: _create_like_current(conn, scratch), "cannot create a scratch database to verify in")
    try:
        scratch_dsn = _with_database(dsn, scratch)
        client_dsn, env = _client_connection(scratch_dsn)
        restore = [tools.pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={client_dsn}", path]
        try:
            _run(restore, what="pg_restore", env=env)
        except BackupError as exc:
            raise InvalidBackup(f"{path.name} does not restore: {exc}") from None
        return _on_database(scratch_dsn, lambda conn: _read_restored(conn, path.name), "cannot read the restored copy")
    finally:
        try:
            _on_database(dsn, lambda conn: _drop_database(conn, scratch), "cannot drop the scratch database")
        except BackupError as exc:
            # The verification's own outcome matters more; the name says what to drop by hand.
            log.warning("scratch database %s left behind: %s", scratch, exc)


def _check_archive(path: Path, tools: PgTools) -> None:
    """A readable custom-format archive, whose table of contents pg_restore can list, with an event log."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(DUMP_MAGIC))
    except FileNotFoundError:
        raise InvalidBackup(f"{path.name} does not exist") from None
    except OSError as exc:
        raise InvalidBackup(f"{path.name} cannot be read: {_describe(exc)}") from None
    if not header:
        raise InvalidBackup(f"{path.name} is empty")
    if header != DUMP_MAGIC:
        raise InvalidBackup(f"{path.name} is not a pg_dump archive (custom format)")
    try:
        listing = _run([tools.pg_restore, "--list", path], what="pg_restore --list").stdout
    except BackupError as exc:
        raise InvalidBackup(f"{path.name} cannot be read: {exc}") from None
    if not re.search(r"^\d+; \d+ \d+ TABLE \S+ events ", listing, re.MULTILINE):
        raise InvalidBackup(f"{path.name} is not a backup of this bot's database (no event log)")


async def _create_like_current(conn: asyncpg.Connection, name: str) -> None:
    encoding, collate, ctype = await conn.fetchrow(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = current_database()"
    )
    await conn.execute(
        f"CREATE DATABASE {_ident(name)} TEMPLATE template0 ENCODING {_literal(encoding)}"
        f" LC_COLLATE {_literal(collate)} LC_CTYPE {_literal(ctype)}"
    )


async def _drop_database(conn: asyncpg.Connection, name: str) -> None:
    # FORCE ends a session pg_restore may have left behind.
    force = " WITH (FORCE)" if conn.get_server_version().major >= FORCE_DROP_FROM else ""
    await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)}{force}")


async def _read_restored(conn: asyncpg.Connection, label: str) -> BackupCheck:
    version = await schema.schema_version(conn)
    if version == 0:
        raise InvalidBackup(f"{label} is not a database of this bot (no schema version)")
    if not 1 <= version <= schema.LATEST_VERSION:
        raise InvalidBackup(f"{label} has schema version {version}, which this bot does not know")
    last_event_id = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events")
    return BackupCheck(int(version), int(last_event_id), checksum_checked=False)


# listing and pruning: storage.backups', for this suffix


def list_backups(backups_dir: Path) -> list[BackupInfo]:
    """Every PostgreSQL backup in the folder, oldest first."""
    return shared.list_backups(backups_dir, names=NAMES)


def find_backup(backups_dir: Path, name: str) -> BackupInfo:
    """The backup called `name` (the `.pgdump` may be left out); UnknownBackup if there is none."""
    return shared.find_backup(backups_dir, name, names=NAMES)


def newest_backup(backups_dir: Path, kind: str | None = None) -> BackupInfo | None:
    return shared.newest_backup(backups_dir, kind, names=NAMES)


def prune_backups(backups_dir: Path, *, kind: str, keep: int, protect: Collection[str] = ()) -> list[str]:
    """Delete the oldest PostgreSQL backups of `kind` beyond the newest `keep`, except those in `protect`."""
    return shared.prune_backups(backups_dir, kind=kind, keep=keep, protect=protect, names=NAMES)


# restoring


def restore_into(path: Path, dsn: str, tools: PgTools | None = None) -> None:
    """Restore a verified dump over the live database at `dsn`, then bring it up to date.

    pg_restore runs in one transaction: if it fails, the database is as it
    was. Then, in one more transaction: objects of migrations newer than the
    dump are cleared and the schema migrated, scoring claims are dropped (work
    in progress on the replaced state), and event numbers continue past the
    highest the replaced database had reached, as on SQLite: they are memory
    ids people have seen. A write by another process between the two
    transactions would take an id of the restored numbering, so writers must
    be held off for the whole call: that is the caller's part. This takes no
    lock of its own, so a caller holding one on its own session cannot
    deadlock with it.
    """
    # pg_restore opens the file by its name and follows links: make sure the name is still the file listed.
    if not is_regular_file(path, folder="backups"):
        raise InvalidBackup(f"{path.name} is not a regular file")
    tools = tools or find_pg_tools(dsn)
    _check_archive(path, tools)
    try:
        reached = _on_database(dsn, _last_event_number, "cannot read the database")
    except BackupError as exc:
        raise BackupError(f"restore failed ({exc}); the database is unchanged") from None
    client_dsn, env = _client_connection(dsn)
    restore = [
        tools.pg_restore, "--clean", "--if-exists", "--single-transaction", "--no-owner", "--no-privileges",
        f"--dbname={client_dsn}", path,
    ]  # fmt: skip
    try:
        _run(restore, what="pg_restore", env=env)
    except BackupError as exc:
        raise BackupError(f"restore failed ({exc}); the database is unchanged") from None
    try:
        _on_database(dsn, lambda conn: _finish_restore(conn, reached), "could not finish")
    except BackupError as exc:
        raise BackupError(
            f"restore copied the backup in, but {exc}; new memory ids must continue past #{reached}"
        ) from exc
    log.info("restored %s into %s; memory ids continue past #%d", path.name, _without_password(dsn), reached)


async def _finish_restore(conn: asyncpg.Connection, reached: int) -> None:
    async with conn.transaction():
        restored = await schema.schema_version(conn)
        if restored >= 1:
            # --clean drops only what the dump holds: what newer migrations made is still there.
            for kind, name in _created_after(restored):
                await conn.execute(f"DROP {kind} IF EXISTS {_ident(name)} CASCADE")
        await schema.migrate(conn)
        if reached > await _last_event_number(conn):
            await conn.execute("SELECT setval(pg_get_serial_sequence('events', 'seq')::regclass, $1, true)", reached)
        # Claims are on the replaced state's work: whoever holds one finds its memory gone or claims again.
        if await conn.fetchval("SELECT to_regclass('scoring_claims')") is not None:
            await conn.execute("DELETE FROM scoring_claims")


def _created_after(version: int) -> list[tuple[str, str]]:
    """(kind, name) of what migrations after `version` create, the latest first."""
    created = [
        (kind.upper(), name.lower())
        for number, _, ddl in schema.MIGRATIONS
        if number > version
        for kind, name in _CREATED.findall(ddl)
    ]
    return created[::-1]


async def _last_event_number(conn: asyncpg.Connection) -> int:
    """The highest event number this database has handed out (0 for a new one)."""
    if await conn.fetchval("SELECT to_regclass('events')") is None:
        return 0
    highest = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))
    sequence = await conn.fetchval("SELECT pg_get_serial_sequence('events', 'seq')")
    if sequence is None:
        return highest
    # pg_get_serial_sequence gives the name quoted as SQL needs it.
    row = await conn.fetchrow(f"SELECT last_value, is_called FROM {sequence}")
    issued = row["last_value"] if row["is_called"] else row["last_value"] - 1
    return max(highest, int(issued))


# connecting


def _on_database(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]], failing: str) -> T:
    """Run `work` on a new connection to `dsn`, in an event loop of its own (callers are threads).

    A database error becomes BackupError(`failing`: the reason); BackupErrors of `work` pass.
    """

    async def run() -> T:
        conn = await asyncpg.connect(dsn)
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, schema.SchemaTooNew) as exc:
        raise BackupError(f"{failing}: {_describe(exc)}") from exc


def _client_connection(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN for pg_dump and pg_restore without its password, and their environment with it."""
    env = dict(os.environ)
    parts = urlsplit(dsn)
    if parts.scheme not in URI_SCHEMES:
        return dsn, env
    password = None if parts.password is None else unquote(parts.password)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}@{hosts}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key == "password" for key, _ in pairs):
        password = next(value for key, value in pairs if key == "password")
        # quote, not quote_plus: libpq does not read "+" as a space.
        query = urlencode([(k, v) for k, v in pairs if k != "password"], quote_via=quote)
    if password is not None:
        env["PGPASSWORD"] = password
    return urlunsplit(parts._replace(netloc=netloc, query=query)), env


def _without_password(dsn: str) -> str:
    return _client_connection(dsn)[0]


def _with_database(dsn: str, database: str) -> str:
    """`dsn` naming another database on the same server."""
    parts = urlsplit(dsn)
    if parts.scheme not in URI_SCHEMES:
        return f"{dsn} dbname={database}"  # libpq's key=value form: the last dbname wins
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key == "dbname" for key, _ in pairs):
        query = urlencode([(k, v) for k, v in pairs if k != "dbname"], quote_via=quote)
    return urlunsplit(parts._replace(path=f"/{quote(database)}", query=query))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# running the client programs


def _run(
    command: list[str | Path], *, what: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a client program; BackupError with its last error line if it fails."""
    try:
        result = subprocess.run(
            [str(part) for part in command],
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise BackupError(f"{what} could not run: {_describe(exc)}") from exc
    if result.returncode != 0:
        raise BackupError(f"{what} failed: {_error_line(result.stderr)}")
    return result


def _error_line(stderr: str) -> str:
    """The line that says what went wrong: the last `…: error: …` line, else the last line.

    A connection failure, for one, ends with a hint ("Is the server running…?").
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    line = (errors or lines or ["no output"])[-1]
    return line.split(": error: ", 1)[-1]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
