"""A throwaway PostgreSQL cluster for the tests, and a fresh database for each test.

`postgres_cluster` (session) starts one cluster the first time a test asks for it,
from the server binaries (`initdb`, `pg_ctl`) on PATH or under
/usr/lib/postgresql/<version>/bin, newest version first. initdb refuses to run as
root, so as root the cluster runs as the `postgres` user (Debian's package creates
it). Without binaries, or if the cluster does not start, the tests that need it are
skipped with the reason; the SQLite tests run anyway.

`postgres_dsn` (function) creates an empty database on that cluster, yields its DSN
and drops it after the test.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest

DEBIAN_SERVER_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 30
START_ATTEMPTS = 3
# A throwaway cluster does not need to survive a power cut: no fsync, no waiting on
# the WAL at commit, no full-page images. It starts and writes faster.
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
# The tests' cluster needs no autovacuum either, whose workers would visit each of the
# hundreds of short-lived test databases and take the CPU the tests need. (The benchmarks
# keep it: their planner needs the statistics it gathers.)
TEST_SERVER_OPTIONS = f"{SERVER_OPTIONS} -c autovacuum=off"
NOT_FOUND = "PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql package"


@dataclass(frozen=True)
class PostgresCluster:
    host: str
    port: int
    user: str
    # The folder of the server's binaries: pg_dump and pg_restore of the same version sit there too.
    binaries: Path
    data_dir: Path

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")


def _version_key(folder: Path) -> tuple[int, ...]:
    """(16,) for /usr/lib/postgresql/16/bin, (9, 6) for .../9.6/bin; () if not a version."""
    name = folder.parent.name
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return ()
    return tuple(int(part) for part in name.split("."))


def server_binary_dirs() -> list[Path]:
    """Where to look for initdb and pg_ctl, in order: PATH, then Debian's folders, newest first."""
    on_path = [Path(entry) for entry in os.environ.get("PATH", "").split(os.pathsep) if entry]
    debian = sorted(DEBIAN_SERVER_ROOT.glob("*/bin"), key=_version_key, reverse=True)
    return [*on_path, *debian]


def find_server_binaries() -> Path | None:
    """The real folder of the first initdb found, if pg_ctl sits beside it; or None.

    Symbolic links are followed (some machines link /usr/local/bin/initdb to Debian's
    folder), so pg_dump and pg_restore of the same version are found beside them.
    """
    for folder in server_binary_dirs():
        initdb = folder / "initdb"
        if not os.access(initdb, os.X_OK):
            continue
        real = initdb.resolve().parent
        has_both = all(os.access(real / name, os.X_OK) for name in ("initdb", "pg_ctl"))
        if has_both:
            return real
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _as_owner(command: list[str]) -> list[str]:
    """`command`, run as the cluster's owner: the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


def _owner_problem() -> str | None:
    """Why the cluster's owner cannot run it, or None."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        return "running as root, where initdb refuses to run, and runuser is missing to run it as postgres"
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return f"running as root, where initdb refuses to run, and there is no {SERVER_USER!r} user to run it as"
    return None


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def start_cluster(folder: Path, options: str | None = None) -> PostgresCluster:
    """initdb and start a cluster in `folder` (which must exist), or pytest.skip with the reason."""
    binaries = find_server_binaries()
    if binaries is None:
        pytest.skip(NOT_FOUND)
    problem = _owner_problem()
    if problem is not None:
        pytest.skip(problem)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SERVER_USER)
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data_dir = folder / "data"
    log_file = folder / "server.log"

    # A new cluster: trust on loopback only, no password. --no-sync: a throwaway needs no fsync.
    initdb = [
        str(binaries / "initdb"), "-D", str(data_dir),
        "--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync",
    ]  # fmt: skip
    result = subprocess.run(_as_owner(initdb), cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"initdb failed ({binaries}): {_tail(result.stderr)}")

    # Start it on a free loopback port. The log file keeps the server off our pipes. Another
    # process may take the port between the probe and the start, so a few tries.
    cluster = PostgresCluster(host=HOST, port=0, user="postgres", binaries=binaries, data_dir=data_dir)
    for _ in range(START_ATTEMPTS):
        cluster = replace(cluster, port=_free_port())
        options_here = f"-p {cluster.port} -k {folder} -c listen_addresses={HOST} {options or SERVER_OPTIONS}"
        start = [
            str(binaries / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file),
            "-o", options_here, "-w", "-t", str(START_TIMEOUT_SECONDS), "start",
        ]  # fmt: skip
        result = subprocess.run(_as_owner(start), cwd=folder, capture_output=True, text=True)
        if result.returncode == 0:
            return cluster
        # A server still starting after the timeout must not outlive its folder.
        stop_cluster(cluster)
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        if "Address already in use" not in log:
            break
    pytest.skip(f"PostgreSQL did not start ({binaries}): {_tail(log or result.stderr)}")


def stop_cluster(cluster: PostgresCluster) -> None:
    """Stop the server at once (nothing to keep); a no-op when it is not running."""
    stop = [str(cluster.binaries / "pg_ctl"), "-D", str(cluster.data_dir), "-m", "immediate", "-w", "stop"]
    subprocess.run(_as_owner(stop), cwd=cluster.data_dir.parent, capture_output=True, check=False)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One cluster for the whole session, started by the first test that asks for it."""
    folder = Path(tempfile.mkdtemp(prefix="pytest-pg-"))
    try:
        cluster = start_cluster(folder, TEST_SERVER_OPTIONS)
        try:
            yield cluster
        finally:
            stop_cluster(cluster)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# The template the bot's tests copy their databases from: migrated once a session, so a test's
# bot finds its schema up to date (a fresh migration costs ten times the copy).
MIGRATED_TEMPLATE = "companion_migrated_template"
_migrated_templates: set[int] = set()  # ports of the clusters that have one


async def _create_database(admin: asyncpg.Connection, name: str, template: str) -> None:
    # FILE_COPY (PostgreSQL 15+) copies a small database's files at once instead of logging every page.
    strategy = " STRATEGY FILE_COPY" if await admin.fetchval("SHOW server_version_num") >= "150000" else ""
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')


async def _ensure_migrated_template(cluster: PostgresCluster, admin: asyncpg.Connection) -> None:
    if cluster.port in _migrated_templates:
        return
    from storage.postgres import schema  # the product's migrations, imported only where they are used

    await admin.execute(f'DROP DATABASE IF EXISTS "{MIGRATED_TEMPLATE}"')
    await _create_database(admin, MIGRATED_TEMPLATE, "template0")
    conn = await asyncpg.connect(cluster.dsn(MIGRATED_TEMPLATE))
    try:
        await schema.migrate(conn)
    finally:
        await conn.close()
    _migrated_templates.add(cluster.port)


@contextlib.asynccontextmanager
async def fresh_database(cluster: PostgresCluster, *, migrated: bool = False) -> AsyncIterator[str]:
    """Create a database on `cluster` (empty, or `migrated` to the bot's latest schema), yield its
    DSN, and drop it on the way out."""
    name = f"test_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(cluster.admin_dsn)
    try:
        if migrated:
            await _ensure_migrated_template(cluster, admin)
        await _create_database(admin, name, MIGRATED_TEMPLATE if migrated else "template0")
    finally:
        await admin.close()
    try:
        yield cluster.dsn(name)
    finally:
        # FORCE ends the sessions a test left open (PostgreSQL 13+).
        admin = await asyncpg.connect(cluster.admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def postgres_dsn(postgres_cluster: PostgresCluster) -> AsyncIterator[str]:
    """The DSN of a new database with the bot's schema on the session's cluster, dropped after the test."""
    async with fresh_database(postgres_cluster, migrated=True) as dsn:
        yield dsn


@pytest.fixture
async def empty_postgres_dsn(postgres_cluster: PostgresCluster) -> AsyncIterator[str]:
    """The DSN of a new, empty database on the session's cluster, dropped after the test."""
    async with fresh_database(postgres_cluster) as dsn:
        yield dsn
