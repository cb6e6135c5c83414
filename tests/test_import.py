"""`bot.py import`: a server's history from DiscordChatExporter JSON exports, as memories."""

import asyncio
import json
from pathlib import Path

import pytest

from cli import main
from companion import recall
from storage import memories, sqlite
from storage.commands import forget_memory
from storage.database import Database
from storage.scope import Scope
from storage.sqlite_store import SQLiteStore
from tests.projection_check import live_and_rebuilt

BOT_ID = 1000
ALICE, BOB, OTHER_BOT = 11, 12, 5000
GUILD_ID, CHANNEL_ID = 555, 777
SCOPE = Scope.for_guild(BOT_ID, GUILD_ID)


def message(message_id, author_id, content, timestamp, *, reply_to=None, kind=None, attachments=(), name=None):
    names = {ALICE: "alice", BOB: "bob", BOT_ID: "Mnemo", OTHER_BOT: "otherbot"}
    nicknames = {ALICE: "Alice", BOB: "Bobby"}
    found = {
        "id": str(message_id),
        "type": kind or ("Reply" if reply_to else "Default"),
        "timestamp": timestamp,
        "timestampEdited": None,
        "isPinned": False,
        "content": content,
        "author": {
            "id": str(author_id),
            "name": name or names.get(author_id, "someone"),
            "discriminator": "0000",
            "nickname": nicknames.get(author_id, name or names.get(author_id, "someone")),
            "isBot": author_id in (BOT_ID, OTHER_BOT),
            "roles": [],
        },
        "attachments": [{"id": "1", "url": "https://x", "fileName": f, "fileSizeBytes": 1} for f in attachments],
        "embeds": [],
        "stickers": [],
        "reactions": [],
        "mentions": [],
    }
    if reply_to:
        found["reference"] = {"messageId": str(reply_to), "channelId": str(CHANNEL_ID), "guildId": str(GUILD_ID)}
    return found


def export(
    messages, *, guild_id=GUILD_ID, guild_name="Test Guild", channel_type="GuildTextChat", channel_name="general"
):
    return {
        "guild": {"id": str(guild_id), "name": guild_name, "iconUrl": "https://x"},
        "channel": {"id": str(CHANNEL_ID), "type": channel_type, "categoryId": "1", "name": channel_name},
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2026-01-01T00:00:00+00:00",
        "messages": messages,
        "messageCount": len(messages),
    }


HISTORY = [
    message(101, ALICE, "we adopted a dog named Biscuit", "2025-01-01T10:00:00.000+00:00"),
    message(102, BOT_ID, "Biscuit is a lovely name!", "2025-01-01T10:00:05.000+00:00", reply_to=101),
    message(103, BOT_ID, "(and a second chunk of that reply)", "2025-01-01T10:00:06.000+00:00"),
    message(104, BOB, "I moved to Lisbon last week", "2025-02-01T09:30:00.250+01:00", attachments=["flat.jpg"]),
    message(105, BOB, "", "2025-02-01T10:01:00+00:00", kind="GuildMemberJoin"),
    message(106, OTHER_BOT, "beep boop", "2025-02-01T10:02:00+00:00"),
    message(107, ALICE, "how was the pottery class Bob?", "2025-03-01T10:00:00+00:00"),
    message(108, BOB, "made a wonky bowl!", "2025-03-01T10:02:00+00:00"),
    message(109, BOT_ID, "Wonky bowls are the best bowls.", "2025-03-01T10:02:03+00:00"),
]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[storage]\ndata_dir = "data"\n', encoding="utf-8")
    return path


def write_export(tmp_path: Path, name: str, document) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def rows(config: Path, sql: str, params=()) -> list[tuple]:
    conn = sqlite.connect(config.parent / "data" / "memory.db", query_only=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_each_persons_message_becomes_a_memory_with_the_bots_reply_paired(tmp_path, config, capsys):
    path = write_export(tmp_path, "general.json", export(HISTORY))
    code, out, err = cli(capsys, "import", path, "--config", config, "--bot-id", BOT_ID)
    assert code == 0, err
    assert "4 new memories in Test Guild (guild:555) from 9 messages; 0 already remembered, 2 not" in out
    found = rows(
        config,
        "SELECT bot_id, scope_kind, scope_id, channel_id, author_id, author_name, user_text, reply_text,"
        " user_message_id, created_at, source, wants_score, significance FROM memories ORDER BY id",
    )
    assert [r[4:8] for r in found] == [
        (
            ALICE,
            "Alice",
            "we adopted a dog named Biscuit",
            "Biscuit is a lovely name!\n(and a second chunk of that reply)",
        ),
        (BOB, "Bobby", "I moved to Lisbon last week\n[attachment: flat.jpg]", ""),
        (ALICE, "Alice", "how was the pottery class Bob?", ""),
        (BOB, "Bobby", "made a wonky bowl!", "Wonky bowls are the best bowls."),
    ]
    assert {r[:4] for r in found} == {(BOT_ID, "guild", GUILD_ID, CHANNEL_ID)}
    assert [r[8] for r in found] == [101, 104, 107, 108]
    # The messages' own times (a +01:00 offset read as such), not the import's.
    assert [r[9] for r in found] == [1735725600.0, 1738398600.25, 1740823200.0, 1740823320.0]
    assert {r[10:] for r in found} == {("import", 0, None)}
    # Not queued for scoring: the classifier would be a model call per message.
    assert rows(config, "SELECT count(*) FROM memories WHERE significance IS NULL AND wants_score = 1") == [(0,)]


def test_importing_the_same_file_twice_adds_nothing(tmp_path, config, capsys):
    path = write_export(tmp_path, "general.json", export(HISTORY))
    assert cli(capsys, "import", path, "--config", config, "--bot-id", BOT_ID)[0] == 0
    before = rows(config, "SELECT * FROM events ORDER BY seq")
    code, out, _ = cli(capsys, "import", path, path, "--config", config, "--bot-id", BOT_ID)
    assert code == 0
    assert out.count("0 new memories") == 2 and "4 already remembered" in out
    assert rows(config, "SELECT * FROM events ORDER BY seq") == before


def test_a_forgotten_message_does_not_come_back_with_a_new_import(tmp_path, config, capsys):
    path = write_export(tmp_path, "general.json", export(HISTORY))
    cli(capsys, "import", path, "--config", config, "--bot-id", BOT_ID)
    [(memory_id,)] = rows(config, "SELECT id FROM memories WHERE user_message_id = 104")

    async def forget():
        db = await Database.open(config.parent / "data" / "memory.db")
        try:
            await forget_memory(db, SCOPE, memory_id, actor_id=BOB)
        finally:
            await db.close()

    asyncio.run(forget())
    code, out, _ = cli(capsys, "import", path, "--config", config, "--bot-id", BOT_ID)
    assert code == 0 and "0 new memories" in out
    assert rows(config, "SELECT count(*) FROM memories WHERE user_message_id = 104") == [(0,)]


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda text: text[: len(text) // 2], "not valid JSON after message"),
        (lambda text: text[:-3], "not valid JSON after message 9"),
        (lambda text: text.replace('"2025-02-01T09:30:00.250+01:00"', '"yesterday"'), "message 4 (id 104)"),
        (lambda text: text.replace('"id": "107"', '"id": "seven"'), "message 7: id is not a Discord id"),
        (lambda text: "[]", "no `guild` object"),
        (lambda text: "", "the file is empty"),
    ],
)
def test_a_bad_or_truncated_file_imports_nothing_and_says_where(tmp_path, config, capsys, mangle, expected):
    good = write_export(tmp_path, "good.json", export(HISTORY))
    bad = tmp_path / "bad.json"
    bad.write_text(mangle(good.read_text(encoding="utf-8")), encoding="utf-8")
    code, out, err = cli(capsys, "import", bad, "--config", config, "--bot-id", BOT_ID)
    assert code == 1
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert str(bad) in line and expected in line
    assert rows(config, "SELECT count(*) FROM events") == [(0,)]
    # The good file of the same run still goes in.
    code, out, err = cli(capsys, "import", bad, good, "--config", config, "--bot-id", BOT_ID)
    assert code == 1 and "4 new memories" in out


def test_a_dm_export_is_the_dm_scope_of_the_person_the_bot_talked_with(tmp_path, config, capsys):
    dms = [
        message(201, ALICE, "remind me that my passport expires in May", "2025-04-01T08:00:00+00:00"),
        message(202, BOT_ID, "Noted: passport, May.", "2025-04-01T08:00:02+00:00"),
    ]
    path = write_export(
        tmp_path,
        "dm.json",
        export(dms, guild_id=0, guild_name="Direct Messages", channel_type="DirectTextChat", channel_name="Alice"),
    )
    code, out, err = cli(capsys, "import", path, "--config", config, "--bot-id", BOT_ID)
    assert code == 0, err
    assert "DMs with Alice (dm:11)" in out
    assert rows(config, "SELECT scope_kind, scope_id, reply_text FROM memories") == [
        ("dm", ALICE, "Noted: passport, May.")
    ]


@pytest.mark.parametrize("channel_type, private", [("GuildPublicThread", 0), ("GuildPrivateThread", 1)])
def test_a_thread_export_keeps_its_channel_and_whether_it_is_private(tmp_path, config, capsys, channel_type, private):
    document = export(HISTORY[:3], channel_type=channel_type, channel_name="plans")
    document["channel"]["categoryId"] = "777"  # for a thread, DiscordChatExporter names its channel here
    code, _, err = cli(capsys, "import", write_export(tmp_path, "thread.json", document), "--config", config,
                       "--bot-id", BOT_ID)  # fmt: skip
    assert code == 0, err
    assert rows(config, "SELECT channel_id, parent_channel_id, private_thread FROM memories") == [
        (CHANNEL_ID, 777, private)
    ]
    # A thread export without its channel imports nothing, and says why.
    del document["channel"]["categoryId"]
    code, _, err = cli(capsys, "import", write_export(tmp_path, "bad.json", document), "--config", config,
                       "--bot-id", BOT_ID)  # fmt: skip
    assert code == 1 and "channel.categoryId (the thread's channel) is not a Discord id: None" in err


def test_score_queues_the_imported_memories_for_the_classifier(tmp_path, config, capsys):
    path = write_export(tmp_path, "general.json", export(HISTORY))
    assert cli(capsys, "import", path, "--score", "--config", config, "--bot-id", BOT_ID)[0] == 0
    assert rows(config, "SELECT count(*) FROM memories WHERE significance IS NULL AND wants_score = 1") == [(4,)]


def test_without_a_known_bot_id_import_asks_for_one(tmp_path, config, capsys):
    path = write_export(tmp_path, "general.json", export(HISTORY))
    code, _, err = cli(capsys, "import", path, "--config", config)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: the database doesn't know the bot's user id")
    assert "--bot-id" in err


def test_a_rebuild_after_an_import_equals_the_live_projections(tmp_path, config, capsys):
    path = write_export(tmp_path, "general.json", export(HISTORY))
    cli(capsys, "import", path, "--config", config, "--bot-id", BOT_ID)
    live, rebuilt = live_and_rebuilt(config.parent / "data" / "memory.db", tmp_path)
    assert live == rebuilt
    assert len(live["memories"]) == 4


def test_imported_history_is_recalled_and_its_times_order_the_recent_turns(tmp_path, config, capsys):
    path = write_export(tmp_path, "general.json", export(HISTORY))
    cli(capsys, "import", path, "--config", config, "--bot-id", BOT_ID)

    async def check():
        db = await Database.open(config.parent / "data" / "memory.db")
        try:
            found = await recall.recall(SQLiteStore(db), SCOPE, "what's the name of Alice's dog?", limit=3)
            assert found[0].memory.user_message_id == 101
            recent = await memories.recent_memories(db.reader, SCOPE, CHANNEL_ID, 2)
            assert [m.user_message_id for m in recent] == [107, 108]
        finally:
            await db.close()

    asyncio.run(check())
