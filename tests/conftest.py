import pytest

from storage.database import Database
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import Answer, FakeLLM
from tests.harness import APP_OWNER, BOT_ID, CLASSIFIER_MODEL, Harness, build_world
from tests.postgres import postgres_cluster, postgres_dsn  # noqa: F401 (fixtures)


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


@pytest.fixture
async def harness(tmp_path, discord_fake, llm_fake):
    """The fakes, ready for a bot; the test starts it with `await harness.start_bot()`."""
    h = Harness(tmp_path, discord_fake, llm_fake)
    yield h
    await h.stop_bot()
    await h.restore_endpoints()
