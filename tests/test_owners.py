"""The application's owners follow its team in Discord: fetched at every owner check and every ten
minutes, so a member removed from the team loses the owners' commands without a restart."""

import asyncio
import logging

import bot as bot_module
from tests.harness import APP_OWNER, BOB, CAROL, GUILD_A
from tests.test_admin_commands import REFUSED, answer, run


async def status_of(harness, user_id: int) -> str:
    return answer(await run(harness, user_id, "status", guild_id=GUILD_A))


async def test_team_changes_apply_at_the_next_owner_command(harness):
    harness.discord.team_members = {APP_OWNER: "admin", CAROL: "developer", BOB: "read_only"}
    await harness.start_bot()
    assert "**Memory:**" in await status_of(harness, CAROL)
    assert await status_of(harness, BOB) == REFUSED  # a read-only member is no owner

    # Carol leaves the team and Bob becomes a developer, in the developer portal.
    del harness.discord.team_members[CAROL]
    harness.discord.team_members[BOB] = "developer"
    assert await status_of(harness, CAROL) == REFUSED
    assert "**Memory:**" in await status_of(harness, BOB)


async def test_owners_are_refreshed_in_the_background(harness, monkeypatch):
    monkeypatch.setattr(bot_module, "OWNERS_REFRESH_SECONDS", 0.05)
    harness.discord.team_members = {APP_OWNER: "admin", CAROL: "developer"}
    bot = await harness.start_bot()
    assert bot.app_owner_ids == {APP_OWNER, CAROL}
    del harness.discord.team_members[CAROL]
    async with asyncio.timeout(5):
        while CAROL in bot.app_owner_ids:
            await asyncio.sleep(0.02)
    assert bot.app_owner_ids == {APP_OWNER}


async def test_a_failed_fetch_falls_back_to_the_last_known_owners(harness, caplog):
    harness.discord.team_members = {APP_OWNER: "admin", CAROL: "developer"}
    await harness.start_bot()
    harness.discord.application_failure = 503
    del harness.discord.team_members[CAROL]  # not seen while Discord fails
    with caplog.at_level(logging.WARNING, logger="companion"):
        assert "**Memory:**" in await status_of(harness, CAROL)
        assert await status_of(harness, BOB) == REFUSED
    warnings = [r.getMessage() for r in caplog.records if "application's owners" in r.getMessage()]
    assert len(warnings) == 2 and all(w.startswith("could not fetch the application's owners (") for w in warnings)

    harness.discord.application_failure = None
    assert await status_of(harness, CAROL) == REFUSED
