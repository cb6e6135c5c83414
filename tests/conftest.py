import pytest

from storage.database import Database


@pytest.fixture
async def db(tmp_path):
    database = await Database.open(tmp_path / "memory.db")
    yield database
    await database.close()
