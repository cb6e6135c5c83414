"""The command line on the PostgreSQL backend: backups, restore, rebuild, and clear start errors."""

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main
from storage.commands import TurnRecord
from storage.postgres.store import PostgresStore
from storage.scope import Scope

REPO = Path(__file__).resolve().parent.parent
SCOPE = Scope.for_guild(1000, 10)
DSN_ENV = "COMPANION_CLI_TEST_DATABASE_URL"


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "data"\nbackend = "postgresql"\npostgresql_dsn_env = "{DSN_ENV}"\n\n'
        '[backup]\nkeep = 3\n\n[discord]\ntoken_env = "COMPANION_TEST_TOKEN"\n\n[llm]\napi_key_env = ""\n',
        encoding="utf-8",
    )
    return config


async def _remember(dsn: str, *texts: str) -> None:
    store = await PostgresStore.open(dsn, max_size=1)
    try:
        for text in texts:
            await store.write_turn(TurnRecord(SCOPE, 5, 7, "alice", "Mnemo", text, "noted"))
    finally:
        await store.close()


async def _texts(dsn: str) -> list[str]:
    store = await PostgresStore.open(dsn, max_size=1)
    try:
        return [row[0] for row in await store.pool.fetch("SELECT user_text FROM memories ORDER BY id")]
    finally:
        await store.close()


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def setup(tmp_path, postgres_dsn, monkeypatch):
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    asyncio.run(_remember(postgres_dsn, "the first thing", "the second thing"))
    return write_config(tmp_path), postgres_dsn


def test_backup_now_list_verify_and_restore(setup, tmp_path, capsys):
    config, dsn = setup
    code, out, err = cli(capsys, "backup", "now", "--config", str(config))
    assert code == 0, err
    name = out.split()[1]
    assert name.endswith("-manual.pgdump") and "events up to #2, verified" in out
    assert (tmp_path / "data" / "backups" / name).is_file()

    code, out, _ = cli(capsys, "backup", "list", "--config", str(config))
    assert code == 0 and name in out and "#2" in out

    asyncio.run(_remember(dsn, "said after the backup"))
    code, out, err = cli(capsys, "backup", "verify", name, "--config", str(config))
    assert code == 0, err
    assert out.startswith(f"{name}: ok (schema v") and "events up to #2, checksum matches" in out

    code, out, err = cli(capsys, "backup", "restore", name, "--config", str(config))
    assert code == 0, err
    assert "safety backup memory-" in out and f"restored {name}: the memory is back to event #2" in out
    assert asyncio.run(_texts(dsn)) == ["the first thing", "the second thing"]
    # The state before the restore is kept, as on SQLite.
    safety = [p.name for p in (tmp_path / "data" / "backups").glob("*-pre-restore.pgdump")]
    assert len(safety) == 1
    # A memory written now gets an id past every one handed out before the restore.
    asyncio.run(_remember(dsn, "after the restore"))
    code, out, _ = cli(
        capsys, "recall", "--guild", "10", "--channel", "5", "--bot-id", "1000", "--config", str(config), "restore"
    )
    assert code == 0 and "#4 " in out


def test_an_unknown_or_damaged_backup_is_refused_with_one_line(setup, tmp_path, capsys):
    config, dsn = setup
    code, _, err = cli(capsys, "backup", "restore", "memory-20260101T000000Z-manual.pgdump", "--config", str(config))
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    code, out, _ = cli(capsys, "backup", "now", "--config", str(config))
    path = tmp_path / "data" / "backups" / out.split()[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = cli(capsys, "backup", "restore", path.name, "--config", str(config))
    assert code == 1 and "checksum" in err and len(err.strip().splitlines()) == 1
    assert asyncio.run(_texts(dsn)) == ["the first thing", "the second thing"]


def test_rebuild_replays_the_whole_log(setup, capsys):
    config, _ = setup
    code, out, err = cli(capsys, "rebuild", "--config", str(config))
    assert code == 0, err
    assert out.startswith("rebuilt projections from all 2 events (up to #2) in ")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_bot_py(config: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if name != DSN_ENV}
    environment.update(COMPANION_TEST_TOKEN="fake-token", **env)
    return subprocess.run(
        [sys.executable, str(REPO / "bot.py"), "--config", str(config)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_unreachable_server_stops_the_start_with_one_line_and_no_password(tmp_path):
    config = write_config(tmp_path)
    port = _closed_port()
    result = run_bot_py(config, **{DSN_ENV: f"postgresql://companion:hunter2@127.0.0.1:{port}/memories"})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: cannot connect to PostgreSQL at 127.0.0.1:{port}/memories: Connection refused"], (
        result.stderr
    )
    assert "hunter2" not in result.stderr + result.stdout


def test_a_missing_connection_string_is_named(tmp_path):
    config = write_config(tmp_path)
    result = run_bot_py(config)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: environment variable {DSN_ENV} is not set ([storage] backend is "postgresql", '
        "and [storage] postgresql_dsn_env names the variable holding its connection string)"
    )
