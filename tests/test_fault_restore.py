"""Restore under load: an owner restores a backup while turns and scoring run.

The bot runs in-process against the fake Discord and the fake LLM. Four
lanes (a listen channel, a thread, guild B and a DM) send messages without
pause, the classifier is slow so a scoring backlog builds up, an owner takes
a backup with `/backup now`, the traffic goes on, and then the owner restores
that backup with `/backup restore` and its confirm button while messages keep
arriving.

Afterwards the state is the backup plus only what came after the restore:

- the events of the backup are back exactly (same sequence numbers, payloads
  and times), and the memories written between the backup and the restore
  are gone (they are in the pre-restore safety backup instead);
- a message that arrived during the restore got the "restoring" answer and
  was not remembered, or was answered and remembered after it;
- every turn answered after the restore is remembered;
- the scoring queue was rebuilt from the restored database: memories the
  backup held unscored get scored, and no memory has two scores in the log;
- the database is sound, its projections equal a replay of its log, and no
  `-wal` or `-shm` file is left beside a backup, or beside the live database
  once it is checkpointed and closed.

The long version (`-m soak`) restores 60 times in a row under continuous
traffic, each time a random earlier backup (nightly, manual or pre-restore),
in the spirit of Litestream's restore soak. Two short tests pin down what the
soak found or could hide: restoring the oldest safety copy when `[backup]
keep` of them exist (the safety copy the restore takes first used to prune
the very backup being restored), and a classifier answer that outlives the
restore's settle window (it must not score the memory that reuses its id).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from cogs.chat import BUSY_REPLY, INTERNAL_ERROR_REPLY, MEMORY_WRITE_FAILED_REPLY
from companion.context import clip
from companion.operations import RESTORING_REPLY
from companion.significance import MAX_TURN_CHARS
from storage import backups, sqlite
from tests.backend_queries import event_payloads, query, query_dsn, scalar
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import Answer, narrated_turn, scored_turn
from tests.harness import (
    ALICE,
    APP_OWNER,
    B_CHANNEL,
    BOB,
    CAROL,
    CLASSIFIER_MODEL,
    GUILD_A,
    LISTEN_CHANNEL,
    THREAD_IN_LISTEN,
)
from tests.projection_check import live_and_rebuilt, live_and_rebuilt_of

EVENT_COLUMNS = "seq, kind, version, payload, recorded_at"


@dataclass
class Sent:
    message_id: int
    lane: str
    text: str
    sent_at: float


@dataclass
class Load:
    """Traffic in every lane until stopped; what was sent and how it was answered."""

    fake: FakeDiscord
    lanes: list[tuple[str, int, int]]  # (name, channel id, author id)
    rng: random.Random
    pause: float = 0.1  # the longest wait between a lane's answer and its next message
    sent: list[Sent] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._lane(*lane)) for lane in self.lanes]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    async def _lane(self, name: str, channel_id: int, author_id: int) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            text = f"{name} says thing {number}: " + self.rng.choice(["the garden", "a recipe", "my exam", "the trip"])
            message = await self.fake.send_message(channel_id, author_id, text)
            sent = Sent(int(message["id"]), name, text, time.monotonic())
            self.sent.append(sent)
            async with asyncio.timeout(20):
                while not answers(self.fake, sent.message_id):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(self.rng.uniform(0, self.pause))


def turn_to_score(body: dict) -> str:
    """The memory a classifier request is about."""
    return scored_turn(body)


def score_for(text: str) -> int:
    return hashlib.sha256(text.encode()).digest()[0] % 4


def answers(fake: FakeDiscord, message_id: int) -> list[dict]:
    return [
        m for m in fake.bot_messages if int((m.get("message_reference") or {}).get("message_id") or 0) == message_id
    ]


def read(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read a SQLite database file (a backup or the live one) without changing it.

    It is ATTACHed to an empty connection, where `sql`'s plain table names find its tables.
    """
    with backups.attached(path, alias="db") as conn:
        return conn.execute(sql, params).fetchall()


async def restored_copy(dsn: str, path: Path) -> str:
    """A new scratch database on the PostgreSQL server of `dsn` holding the pg_dump archive at `path`; its DSN."""
    from storage.postgres.backups import find_pg_tools

    assert "?" not in dsn, dsn
    tools = await asyncio.to_thread(find_pg_tools, dsn)
    name = f"restored_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    copy = f"{dsn.rsplit('/', 1)[0]}/{name}"
    process = await asyncio.create_subprocess_exec(
        str(tools.pg_restore),
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        f"--dbname={copy}",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 0, f"pg_restore of {path.name}: {err.decode()}"
    return copy


class Stored:
    """What the live memory and the backups hold, on either backend, read without changing them.

    `sql` names tables plainly and uses `?` placeholders. SQLite's files are read
    attached (see `read`); PostgreSQL's live database through a connection of its
    own (the bot need not run), and a backup in a scratch database it is restored
    into once, dropped by `close`.
    """

    def __init__(self, harness) -> None:
        self.harness = harness
        self._copies: dict[Path, str] = {}

    @property
    def _dsn(self) -> str | None:
        config = self.harness.config
        return config.postgresql_dsn() if config.storage.backend == "postgresql" else None

    async def live(self, sql: str, *params) -> list[tuple]:
        if self._dsn is None:
            return read(self.harness.config.storage.database_path, sql, params)
        return await query_dsn(self._dsn, sql, *params)

    async def backup(self, path: Path, sql: str, *params) -> list[tuple]:
        if self._dsn is None:
            return read(path, sql, params)
        if path not in self._copies:
            self._copies[path] = await restored_copy(self._dsn, path)
        return await query_dsn(self._copies[path], sql, *params)

    async def written_message_ids(self, path: Path | None, after_seq: int = 0) -> set[int]:
        """Discord message ids of the turns whose memory_written event is in the log of the backup at
        `path` (None: the live memory)."""
        sql = "SELECT payload FROM events WHERE kind = 'memory_written' AND seq > ?"
        rows = await (self.live(sql, after_seq) if path is None else self.backup(path, sql, after_seq))
        ids = (json.loads(payload).get("user_message_id") for (payload,) in rows)
        return {message_id for message_id in ids if message_id is not None}

    async def close(self) -> None:
        copies, self._copies = list(self._copies.values()), {}
        if not copies:
            return
        conn = await asyncpg.connect(self._dsn)
        try:
            for copy in copies:
                await conn.execute(f'DROP DATABASE IF EXISTS "{copy.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def stored(harness):
    reader = Stored(harness)
    yield reader
    await reader.close()


def backup_name(answer: str) -> str:
    """The name of the backup an answer to /backup now names."""
    return re.search(r"`(memory-[^`]+\.(?:db|pgdump))`", answer)[1]


async def owner_command(fake: FakeDiscord, name: str, **options) -> str:
    interaction = await fake.invoke(APP_OWNER, name, guild_id=GUILD_A, options=options)
    [first] = await interaction.wait_for_response(1)
    assert first["ephemeral"]
    if first["type"] == 5:
        await interaction.wait_for_response(2)
    return interaction.original["content"]


@dataclass
class Restored:
    backup: str
    backup_seq: int
    safety: str
    seconds: float  # as the bot reported it
    wall_seconds: float  # confirm click to the "Restored" answer
    clicked_at: float
    finished_at: float
    unscored_in_backup: int
    rolled_back: int  # memories written between the backup and the restore
    safety_turns: set[int]  # the turns remembered in the safety backup (it may be pruned later)


async def restore(harness, stored: Stored, name: str) -> Restored:
    """/backup restore, confirmed with the button, while the traffic goes on."""
    fake = harness.discord
    backups_dir = harness.bot.config.storage.backups_dir
    info = harness.bot.backend.backups.find(name)
    interaction = await fake.invoke(APP_OWNER, "backup restore", guild_id=GUILD_A, options={"name": name})
    [confirm] = await interaction.wait_for_response(1)
    assert "every server and DM" in confirm["content"], confirm
    clicked = time.monotonic()
    await fake.click(APP_OWNER, interaction.original, "backup:restore:confirm")
    async with asyncio.timeout(30):
        while "Restored `" not in interaction.text():
            text = interaction.text()
            assert "Sorry" not in text and "Nothing was changed" not in text, f"restoring {name} failed: {text}"
            await asyncio.sleep(0.01)
    finished = time.monotonic()
    text = interaction.text()
    seconds = float(re.search(r"Restored `[^`]+` in ([\d.]+) s", text)[1])
    safety = re.search(r"saved as `([^`]+)`", text)[1]

    # Right now, with turns already arriving again: the backup's log is back exactly.
    seq = info.last_event_id
    live_events = await stored.live(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq <= ? ORDER BY seq", seq)
    backup_events = await stored.backup(info.path, f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq")
    assert backup_events[-1][0] == seq if backup_events else seq == 0
    assert live_events == backup_events, f"restoring {name} did not bring its log back exactly"
    # What was written between the backup and the restore is only in the safety backup.
    safety_turns = await stored.written_message_ids(backups_dir / safety)
    between = await stored.written_message_ids(backups_dir / safety, after_seq=seq)
    assert not between & await stored.written_message_ids(None), "memories from after the backup survived the restore"
    assert no_sidecar_files(backups_dir)
    unscored = (await stored.backup(info.path, "SELECT count(*) FROM memories WHERE significance IS NULL"))[0][0]
    return Restored(
        name, seq, safety, seconds, finished - clicked, clicked, finished, unscored, len(between), safety_turns
    )


def no_sidecar_files(directory: Path) -> bool:
    stray = [p.name for p in directory.iterdir() if p.name.endswith(("-wal", "-shm", "-journal"))]
    stray += [p.name for p in directory.iterdir() if p.name.startswith(backups.TEMP_PREFIX)]
    assert stray == [], stray
    return True


async def restore_under_load(harness, stored: Stored, *, restores: int, seed: int) -> dict:
    rng = random.Random(seed)
    slow = random.Random(seed + 1)
    # The classifier is slow until the last restore, so a backlog builds up and
    # backups hold unscored memories; then it is quick, so the test ends soon.
    # Each score follows from the memory's own text, so a score recorded for the
    # wrong memory (ids are reused after a restore) shows.
    classifier = {"delay": 0.3}
    harness.llm.responders[CLASSIFIER_MODEL] = lambda body: Answer(
        f'{{"significance": {score_for(turn_to_score(body))}}}', delay=slow.uniform(0, classifier["delay"])
    )
    # No periodic rescan: after a restore, only the rebuilt queue finds the
    # restored memories that still wait for a score.
    bot = await harness.start_bot(
        discord={"listen_channel_ids": [LISTEN_CHANNEL, B_CHANNEL]},
        memory={"scoring_concurrency": 2, "scoring_rescan_seconds": 600.0},
    )
    fake = harness.discord
    config = bot.config.storage
    target = bot.backend.backups
    load = Load(
        fake,
        [
            ("listen", LISTEN_CHANNEL, ALICE),
            ("thread", THREAD_IN_LISTEN, BOB),
            ("guild-b", B_CHANNEL, CAROL),
            ("dm", fake.dm_channel_id(ALICE), ALICE),
        ],
        rng,
    )
    load.start()
    done: list[Restored] = []
    taken: list[str] = []
    try:
        for round_ in range(restores):
            await asyncio.sleep(rng.uniform(0.6, 1.2) if round_ == 0 else rng.uniform(0.2, 0.8))
            answer = await owner_command(fake, "backup now")
            assert answer.startswith("Backup taken:"), answer
            taken.append(backup_name(answer))
            await asyncio.sleep(rng.uniform(0.5, 1.0) if round_ == 0 else rng.uniform(0.1, 0.6))
            # The first restore takes the backup just made; later ones any earlier backup.
            if round_ == 0:
                name = taken[-1]
            else:
                name = rng.choice([b.name for b in target.list()])
            done.append(await restore(harness, stored, name))
        classifier["delay"] = 0.0
        await asyncio.sleep(0.8)
    finally:
        await load.finish()
    await harness.wait_until_scored(timeout=60)

    last = done[-1]
    # Every message got exactly one answer: a reply, or the restoring notice.
    outcomes: dict[int, str] = {}
    for sent in load.sent:
        got = [m["content"] for m in answers(fake, sent.message_id)]
        assert len(got) == 1, (sent, got)
        assert got[0] not in (INTERNAL_ERROR_REPLY, MEMORY_WRITE_FAILED_REPLY, BUSY_REPLY), got
        outcomes[sent.message_id] = "restoring" if got[0] == RESTORING_REPLY else "answered"
    answered_at = {s.message_id: answers(fake, s.message_id)[0]["time"] for s in load.sent}
    in_live = await stored.written_message_ids(None)
    everywhere = set(in_live)
    for restored in done:
        everywhere |= restored.safety_turns
    turned_away = {m for m, outcome in outcomes.items() if outcome == "restoring"}
    assert not turned_away & everywhere, "a message turned away during a restore was remembered"
    answered = {m for m, outcome in outcomes.items() if outcome == "answered"}
    assert answered <= everywhere, "an answered turn was never remembered"
    after_last = {m for m in answered if answered_at[m] > last.finished_at}
    assert after_last <= in_live, "a turn answered after the restore is missing"
    # The live log is the last backup's log plus turns and scores from after the restore.
    after = await stored.live("SELECT kind, count(*) FROM events WHERE seq > ? GROUP BY kind", last.backup_seq)
    assert set(dict(after)) <= {"memory_written", "memory_significance_set", "memory_pin_changed"}, after
    assert await stored.written_message_ids(None, after_seq=last.backup_seq) <= {
        m for m in answered if answered_at[m] > last.clicked_at
    }, "the live log holds a turn from before the restore"

    # The queue was rebuilt: every memory scored, once.
    ids = [row[0] for row in await stored.live("SELECT id FROM memories")]
    assert await stored.live("SELECT count(*) FROM memories WHERE significance IS NULL") == [(0,)]
    scores = collections.Counter(p["memory_id"] for p in await event_payloads(bot, "memory_significance_set"))
    assert {i: scores.get(i, 0) for i in ids} == dict.fromkeys(ids, 1), "a memory scored twice or never"
    for memory_id, author, user_text, reply, significance in await stored.live(
        "SELECT id, author_name, user_text, reply_text, significance FROM memories"
    ):
        expected = score_for(narrated_turn(author, clip(user_text, MAX_TURN_CHARS), clip(reply, MAX_TURN_CHARS)))
        assert significance == expected, f"memory #{memory_id} has another memory's score"
    rescored = sum(r.unscored_in_backup for r in done)

    if bot.db is None:
        # PostgreSQL: the projections equal a replay of the log (the bot is quiet now).
        live_state, rebuilt = await live_and_rebuilt_of(bot, harness.tmp_path)
        assert live_state == rebuilt
    await harness.stop_bot()
    assert no_sidecar_files(config.backups_dir)
    if bot.db is not None:
        # SQLite: no file left beside the closed database, which is sound and equals a replay of its log.
        live = config.database_path
        leftovers = sorted(p.name for p in live.parent.iterdir() if p.name.endswith(("-wal", "-shm", "-journal")))
        assert leftovers == [], leftovers
        conn = sqlite.connect(live, query_only=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
        live_state, rebuilt = live_and_rebuilt(live, harness.tmp_path)
        assert live_state == rebuilt
    all_backups = target.list()
    assert any(info.name.endswith(".pgdump" if bot.db is None else ".db") for info in all_backups)
    for info in all_backups:
        await asyncio.to_thread(target.verify, info.path)  # blocks; PostgreSQL's runs its own event loop
    return {
        "restores": len(done),
        "restore_seconds": [round(r.seconds, 2) for r in done],
        "restore_wall_seconds_max": round(max(r.wall_seconds for r in done), 2),
        "turns_sent": len(load.sent),
        "answered": len(answered),
        "turned_away_while_restoring": len(turned_away),
        "rolled_back_memories": sum(r.rolled_back for r in done),
        "unscored_in_restored_backups": rescored,
        "memories_at_end": len(ids),
        "backups": len(all_backups),
    }


async def test_restore_under_load(harness, stored):
    report = await restore_under_load(harness, stored, restores=1, seed=7)
    print(f"\nrestore under load (short): {report}")
    assert report["unscored_in_restored_backups"] >= 1, "the backup held no unscored memory; slow the classifier"


@pytest.mark.soak
@pytest.mark.timeout(600)
async def test_restore_soak(harness, stored):
    report = await restore_under_load(harness, stored, restores=60, seed=11)
    print(f"\nrestore under load (soak): {report}")


async def test_a_score_still_in_flight_when_the_restore_copies_is_not_given_to_another_memory(
    harness, stored, monkeypatch
):
    """A classifier call that outlives the restore's settle window must not score another memory:
    ids are not reused after a restore, and the rolled-back one is gone."""
    from companion import operations

    def classify(body: dict) -> Answer:
        # Pivotal for the rolled-back memory, and slower than the settle window; small talk otherwise.
        turn = turn_to_score(body)
        if "the wedding is off" in turn:
            return Answer('{"significance": 3}', delay=0.8)
        # The memory that reuses its id is scored after that slow answer is back.
        return Answer('{"significance": 0}', delay=1.2 if "nice weather" in turn else 0.0)

    harness.llm.responders[CLASSIFIER_MODEL] = classify
    monkeypatch.setattr(operations, "RESTORE_SETTLE_SECONDS", 0.2)
    bot = await harness.start_bot(memory={"scoring_rescan_seconds": 600.0})
    await harness.say(LISTEN_CHANNEL, ALICE, "good morning")
    await harness.wait_for_memories(1)
    await harness.wait_until_scored()
    name = backup_name(await owner_command(harness.discord, "backup now"))
    await harness.say(LISTEN_CHANNEL, ALICE, "the wedding is off")
    await harness.wait_for_memories(2)
    await harness.llm.wait_for_requests(2, model=CLASSIFIER_MODEL)  # its score is being asked for
    rolled_back_id = await scalar(bot, "SELECT max(id) FROM memories")

    await restore(harness, stored, name)
    await harness.say(LISTEN_CHANNEL, ALICE, "nice weather today")
    await harness.wait_for_memories(2)
    await harness.wait_until_scored()
    rows = await query(bot, "SELECT id, user_text, significance, pinned FROM memories ORDER BY id")
    assert [row[1] for row in rows] == ["good morning", "nice weather today"]
    assert rows[1][0] > rolled_back_id, "an id people saw before the restore now names another memory"
    assert rows[1][2:] == (0, 0), f"the new memory got the rolled-back memory's score: {rows[1]}"


async def test_restoring_the_oldest_safety_backup_does_not_prune_it_first(harness, stored, capsys):
    """With `keep` pre-restore backups on disk, restoring the oldest one takes a new safety
    backup first; pruning for it must not delete the backup being restored (slash command and CLI)."""
    import cli

    bot = await harness.start_bot(backup={"keep": 2})
    target = bot.backend.backups
    await harness.say(LISTEN_CHANNEL, ALICE, "the first thing")
    await harness.wait_for_memories(1)
    name = backup_name(await owner_command(harness.discord, "backup now"))
    await harness.say(LISTEN_CHANNEL, ALICE, "the second thing")
    await harness.wait_for_memories(2)
    first_safety = (await restore(harness, stored, name)).safety  # holds both things
    await restore(harness, stored, name)
    safeties = [b.name for b in target.list() if b.kind == "pre-restore"]
    assert safeties[0] == first_safety and len(safeties) == 2

    await restore(harness, stored, first_safety)
    rows = await query(bot, "SELECT user_text FROM memories ORDER BY id")
    assert [text for (text,) in rows] == ["the first thing", "the second thing"]

    # The command line, with the bot stopped, the same way round.
    await harness.stop_bot()
    oldest = next(b.name for b in target.list() if b.kind == "pre-restore")
    config = harness.tmp_path / "config.toml"
    storage = harness.config.storage  # on PostgreSQL, its DSN is in the environment variable named
    config.write_text(
        f'[storage]\ndata_dir = "data"\nbackend = "{storage.backend}"\n'
        f'postgresql_dsn_env = "{storage.postgresql_dsn_env}"\n\n[backup]\nkeep = 2\n',
        encoding="utf-8",
    )
    code = await asyncio.to_thread(cli.main, ["backup", "restore", oldest, "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"restored {oldest}" in out
