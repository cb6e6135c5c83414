"""`bot.py recall`: beside the running bot, it shows exactly what the turn puts in the prompt."""

import asyncio
import json
import sys
from datetime import datetime

from companion.context import record_line
from storage.memories import Memory
from tests.backend_queries import query
from tests.botprocess import REPO, write_config
from tests.fakes.llm_server import Answer
from tests.harness import ALICE, B_CHANNEL, BOB, BOT_ID, CHAT_MODEL, GUILD_A, GUILD_B, LISTEN_CHANNEL, SCOPE_A

FACTS = [
    (ALICE, "we adopted a rescue dog last weekend, her name is Pepper"),
    (BOB, "I'm flying to Lisbon on Friday for my cousin's wedding"),
    (ALICE, "Pepper already chewed my favourite shoes"),
    (BOB, "the wedding in Lisbon was lovely, the dog at the venue stole the show"),
    (ALICE, "does anyone know a good vet for a dog near the park?"),
    (BOB, "my sourdough starter finally bubbled"),
]


async def run_cli(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "bot.py"),
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout=60)
    return process.returncode, out.decode(), err.decode()


def cli_config(harness, tmp_path):
    """A config file for the command line, on the running bot's data: its folder, and on PostgreSQL its
    database (the DSN in the environment variable the harness's config names)."""
    storage = harness.config.storage
    return write_config(
        tmp_path,
        harness.discord,
        harness.llm,
        storage=f'data_dir = "{storage.data_dir}"\nbackend = "{storage.backend}"\n'
        f'postgresql_dsn_env = "{storage.postgresql_dsn_env}"',
    )


async def chat_history(harness) -> None:
    # The facts, then enough small talk to push them out of the recent turns (12 by default).
    chatter = [(ALICE, f"small talk number {i}, nothing much") for i in range(13)]
    for author, text in FACTS + chatter:
        await harness.say(LISTEN_CHANNEL, author, text)
    await harness.wait_for_memories(len(FACTS) + len(chatter))
    await harness.wait_until_scored()
    # One pin, so all three parts of the prompt show.
    await harness.bot.store.pin(SCOPE_A, 1, actor_id=ALICE, pin_cap=8)


def as_memory(item: dict) -> Memory:
    """Enough of a Memory to render a prompt line the way the turn does."""
    return Memory(
        id=item["id"],
        scope=SCOPE_A,
        channel_id=item["channel_id"],
        author_id=item["author_id"],
        author_name=item["author_name"],
        bot_name="Mnemo",
        user_text=item["user_text"],
        reply_text=item["reply_text"],
        user_message_id=item["message_id"],
        created_at=datetime.fromisoformat(item["created_at"]).timestamp(),
        significance=item["significance"],
        scoring_failures=0,
        pinned=item["pinned"],
        pin_auto=None,
    )


def line_of(item: dict, *, follow_up: bool = False) -> str:
    return record_line(as_memory(item), follows=follow_up)


async def test_recall_json_is_exactly_what_the_turn_sends_to_the_model(harness, tmp_path):
    await harness.start_bot()
    await chat_history(harness)
    config = cli_config(harness, tmp_path)
    question = "what's the name of Alice's dog, and how was the Lisbon wedding?"

    # The database knows the bot's id: the running bot recorded it at login.
    code, out, err = await run_cli(
        "recall", "--guild", str(GUILD_A), "--channel", str(LISTEN_CHANNEL), "--json", "--config", str(config), question
    )
    assert code == 0, err
    shown = json.loads(out)
    assert set(shown) == {"pinned", "recent", "recalled"}

    harness.llm.script(CHAT_MODEL, Answer("Pepper! And lovely."))
    await harness.say(LISTEN_CHANNEL, BOB, question)
    sent = harness.llm.requests_for(CHAT_MODEL)[-1].body["messages"]
    system, records, *turns, last = sent
    assert system["role"] == "system" and "Pepper" not in system["content"]
    assert last == {"role": "user", "content": f"Bob: {question}"}

    # Pins and recalled memories: the records message's lines, in order, and nothing else.
    expected_lines = [line_of(item) for item in shown["pinned"]]
    expected_lines += [line_of(item, follow_up=item["follows"] is not None) for item in shown["recalled"]]
    record_lines = [line for line in records["content"].splitlines() if line.startswith("{")]
    assert record_lines == expected_lines
    assert [item["id"] for item in shown["pinned"]] == [1]
    assert shown["recalled"] and len(shown["recent"]) == 12
    # Recent turns: the conversation before the message, turn by turn.
    expected_turns = []
    for item in shown["recent"]:
        expected_turns.append({"role": "user", "content": f"{item['author_name']}: {item['user_text']}"})
        expected_turns.append({"role": "assistant", "content": item["reply_text"]})
    assert turns == expected_turns
    for item in shown["recalled"]:
        assert {"id", "message_id", "created_at", "text", "score"} <= set(item)


async def test_recall_reads_many_messages_from_stdin_and_stays_in_its_scope(harness, tmp_path):
    await harness.start_bot()
    await chat_history(harness)
    await harness.say(B_CHANNEL, BOB, f"<@{BOT_ID}> in guild B: my dog Pepper is a secret here", mentions=[BOT_ID])
    await harness.wait_for_memories(len(FACTS) + 14)
    config = cli_config(harness, tmp_path)

    code, out, err = await run_cli(
        "recall",
        "--guild",
        str(GUILD_B),
        "--channel",
        str(B_CHANNEL),
        "--config",
        str(config),
        "-",
        stdin="Pepper the dog\n\nLisbon wedding\n",
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3  # one per message, blank ones too
    for shown in lines:
        everything = shown["pinned"] + shown["recent"] + shown["recalled"]
        assert {item["channel_id"] for item in everything} <= {B_CHANNEL}
    assert [item["text"] for item in lines[2]["recalled"]] == []


async def test_the_readable_listing_names_each_part_with_ids_and_scores(harness, tmp_path):
    await harness.start_bot()
    await chat_history(harness)
    config = cli_config(harness, tmp_path)
    code, out, err = await run_cli(
        "recall",
        "--guild",
        str(GUILD_A),
        "--channel",
        str(LISTEN_CHANNEL + 1),
        "--config",
        str(config),
        "where",
        "is",
        "the",
        "Lisbon",
        "wedding?",
    )
    assert code == 0, err
    assert "Pinned (1):\n  #1 " in out
    assert "Recent turns in the channel (0):" in out
    recalled = out.split("Recalled (", 1)[1]
    assert "score " in recalled and "Lisbon" in recalled


async def test_recall_needs_to_know_which_bot_and_a_database(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[storage]\ndata_dir = "data"\n', encoding="utf-8")
    code, _, err = await run_cli("recall", "--dm", str(ALICE), "--channel", "5", "--config", str(config), "hi")
    assert code == 2 and err.strip().startswith("error: the database doesn't know the bot's user id")
    code, _, err = await run_cli(
        "recall", "--dm", str(ALICE), "--channel", "5", "--bot-id", str(BOT_ID), "--config", str(config), "hi"
    )
    assert code == 1 and err.strip() == f"error: no database at {tmp_path / 'data' / 'memory.db'}"
    code, _, err = await run_cli("recall", "--guild", "x", "--channel", "5", "--config", str(config), "hi")
    assert code == 2 and "not a Discord id: 'x'" in err


async def test_the_bot_records_its_user_id_at_login(harness):
    await harness.start_bot()
    assert await query(harness.bot, "SELECT bot_id, name FROM bot_identity") == [(BOT_ID, "Mnemo")]


async def test_an_import_beside_the_running_bot_is_recalled_in_its_next_turn(harness, tmp_path):
    await harness.start_bot()
    await harness.say(LISTEN_CHANNEL, ALICE, "hello again")
    config = cli_config(harness, tmp_path)
    history = {
        "guild": {"id": str(GUILD_A), "name": "Guild A"},
        "channel": {"id": str(LISTEN_CHANNEL + 1), "type": "GuildTextChat", "name": "archive"},
        "messages": [
            {
                "id": "424242",
                "type": "Default",
                "timestamp": "2024-05-01T12:00:00+00:00",
                "content": "our first meetup was at the Quokka Cafe in Perth",
                "author": {"id": str(BOB), "name": "bob", "nickname": "Bob", "isBot": False},
            }
        ],
    }
    export = tmp_path / "archive.json"
    export.write_text(json.dumps(history), encoding="utf-8")
    # The bot holds the data folder's lock; an import only appends beside it.
    code, out, err = await run_cli("import", str(export), "--config", str(config))
    assert code == 0, err
    assert "1 new memories in Guild A" in out

    await harness.say(LISTEN_CHANNEL, ALICE, "where was our first meetup?")
    records = harness.llm.requests_for(CHAT_MODEL)[-1].body["messages"][1]["content"]
    assert '"who": "Bob", "said": "our first meetup was at the Quokka Cafe in Perth"' in records
