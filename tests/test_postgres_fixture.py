"""The PostgreSQL test fixtures: one cluster per session, a fresh database per test."""

import asyncpg
import pytest

from tests import postgres
from tests.postgres import fresh_database

USER_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
DATABASE_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)"
# Databases seen by test_each_test_gets_its_own_empty_database, across its parameters.
seen_databases: set[str] = set()


async def test_cluster_answers_on_loopback(postgres_cluster):
    conn = await asyncpg.connect(postgres_cluster.admin_dsn)
    try:
        version = await conn.fetchval("SELECT version()")
        address = await conn.fetchval("SELECT host(inet_server_addr())")
    finally:
        await conn.close()
    assert version.startswith("PostgreSQL ")
    assert (postgres_cluster.host, address) == ("127.0.0.1", "127.0.0.1")
    assert postgres_cluster.admin_dsn == f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"
    assert (postgres_cluster.binaries / "pg_dump").exists()


@pytest.mark.parametrize("turn", ["first", "second"])
async def test_each_test_gets_its_own_empty_database(empty_postgres_dsn, turn):
    conn = await asyncpg.connect(empty_postgres_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetch(USER_TABLES)
        # Leave something behind: the other turn must not see it.
        await conn.execute("CREATE TABLE left_behind (id int)")
    finally:
        await conn.close()
    assert name not in seen_databases
    seen_databases.add(name)
    assert tables == []


async def test_a_migrated_database_has_the_bots_schema_and_nothing_else(postgres_dsn):
    conn = await asyncpg.connect(postgres_dsn)
    try:
        tables = {row[0] for row in await conn.fetch(USER_TABLES)}
        events = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    assert {"events", "memories", "schema_migrations", "scoring_claims"} <= tables
    assert events == 0


async def test_database_is_dropped_after_its_test_even_with_a_session_open(postgres_cluster):
    async with fresh_database(postgres_cluster) as dsn:
        left_open = await asyncpg.connect(dsn)
        name = await left_open.fetchval("SELECT current_database()")
    left_open.terminate()
    admin = await asyncpg.connect(postgres_cluster.admin_dsn)
    try:
        exists = await admin.fetchval(DATABASE_EXISTS, name)
    finally:
        await admin.close()
    assert exists is False


def _make_server_binaries(folder, names=("initdb", "pg_ctl")):
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)


def test_finder_takes_the_newest_complete_debian_version(tmp_path, monkeypatch):
    for version in ("9.6", "15", "16"):
        _make_server_binaries(tmp_path / version / "bin")
    _make_server_binaries(tmp_path / "17" / "bin", names=("initdb",))
    monkeypatch.setattr(postgres, "DEBIAN_SERVER_ROOT", tmp_path)
    monkeypatch.setenv("PATH", "")
    assert postgres.find_server_binaries() == tmp_path / "16" / "bin"


def test_finder_follows_a_link_on_path_to_the_real_folder(tmp_path, monkeypatch):
    real = tmp_path / "lib" / "16" / "bin"
    _make_server_binaries(real, names=("initdb", "pg_ctl", "pg_dump"))
    linked = tmp_path / "local-bin"
    linked.mkdir()
    for name in ("initdb", "pg_ctl"):
        (linked / name).symlink_to(real / name)
    monkeypatch.setattr(postgres, "DEBIAN_SERVER_ROOT", tmp_path / "nowhere")
    monkeypatch.setenv("PATH", str(linked))
    assert postgres.find_server_binaries() == real


def test_missing_binaries_skip_with_a_reason(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(postgres, "server_binary_dirs", lambda: [empty])
    assert postgres.find_server_binaries() is None
    with pytest.raises(pytest.skip.Exception, match=r"server binaries \(initdb, pg_ctl\) not found"):
        postgres.start_cluster(tmp_path)
    assert list(tmp_path.iterdir()) == [empty]
