import pytest

from storage.database import Database
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import Answer, FakeLLM
from tests.harness import APP_OWNER, BACKENDS, BOT_ID, CLASSIFIER_MODEL, TEST_DSN_ENV, Harness, build_world
from tests.postgres import empty_postgres_dsn, fresh_database, postgres_cluster, postgres_dsn  # noqa: F401 (fixtures)


@pytest.fixture
async def db(tmp_path):
    database = await Database.open(tmp_path / "memory.db")
    yield database
    await database.close()


@pytest.fixture
async def llm_fake():
    fake = FakeLLM()
    # Unless a test scripts otherwise, every memory is ordinary.
    fake.responders[CLASSIFIER_MODEL] = lambda body: Answer('{"significance": 1}')
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def discord_fake():
    fake = FakeDiscord(bot_user_id=BOT_ID, bot_name="Mnemo", application_id=BOT_ID, app_owner_id=APP_OWNER)
    build_world(fake)
    await fake.start()
    yield fake
    await fake.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="run the bot's tests against this storage backend only (repeatable; default: both)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test of the running bot runs against each backend, unless it is SQLite's alone.
    if "backend" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("backend") or list(BACKENDS)
    if metafunc.definition.get_closest_marker("sqlite_only"):
        chosen = [name for name in chosen if name == "sqlite"]
    metafunc.parametrize("backend", chosen, indirect=True)


@pytest.fixture
async def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """The storage backend the bot runs on: "sqlite", or "postgresql" on a fresh database of the
    session's throwaway cluster (its DSN in TEST_DSN_ENV)."""
    name = getattr(request, "param", "sqlite")
    if name == "postgresql":
        cluster = request.getfixturevalue("postgres_cluster")
        async with fresh_database(cluster, migrated=True) as dsn:
            monkeypatch.setenv(TEST_DSN_ENV, dsn)
            yield name
        return
    yield name


@pytest.fixture
async def harness(tmp_path, discord_fake, llm_fake, backend):
    """The fakes, ready for a bot; the test starts it with `await harness.start_bot()`."""
    h = Harness(tmp_path, discord_fake, llm_fake, backend=backend)
    yield h
    await h.stop_bot()
    await h.restore_endpoints()
