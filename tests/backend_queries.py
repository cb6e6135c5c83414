"""Reading a running bot's database directly, whichever backend it runs on.

The tests look behind the store at times (the raw event log, a column the
store does not return). `query` runs one read-only statement on either
backend: write it with `?` placeholders, as for SQLite; on PostgreSQL they
become `$1`, `$2`, …. The schemas share their table and column names;
booleans come back as 0/1 on SQLite and False/True on PostgreSQL (equal in
Python), and `payload` is JSON text on both.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from bot import CompanionBot

_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    counter = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


async def query(bot: CompanionBot, sql: str, *params: Any) -> list[tuple]:
    """Every row of a read-only statement, as tuples."""
    if bot.db is not None:
        return [tuple(row) for row in await bot.db.reader.execute_fetchall(sql, params)]
    pool = bot.store.pool  # type: ignore[attr-defined]
    return [tuple(row) for row in await pool.fetch(_numbered(sql), *params)]


async def scalar(bot: CompanionBot, sql: str, *params: Any) -> Any:
    """The first column of the first row (None if there is none)."""
    rows = await query(bot, sql, *params)
    return rows[0][0] if rows else None


async def event_kinds(bot: CompanionBot) -> list[str]:
    """The kinds of every event in the log, in order."""
    return [kind for (kind,) in await query(bot, "SELECT kind FROM events ORDER BY seq")]


async def event_payloads(bot: CompanionBot, kind: str) -> list[dict[str, Any]]:
    """The payloads of every event of `kind`, in order."""
    rows = await query(bot, "SELECT payload FROM events WHERE kind = ? ORDER BY seq", kind)
    return [json.loads(payload) for (payload,) in rows]


# The store invariants of tests/invariants.py, read through `query`: on either backend, while the bot runs.
# (SQLite's own integrity checks need its file: tests/invariants.check_store, with the bot stopped.)


async def _events_of(bot: CompanionBot, kind: str) -> list[tuple[int, dict[str, Any]]]:
    rows = await query(bot, "SELECT seq, payload FROM events WHERE kind = ? ORDER BY seq", kind)
    return [(seq, json.loads(payload)) for seq, payload in rows]


async def memories_by_message_of(bot: CompanionBot) -> dict[int, tuple[int, str, str]]:
    """invariants.memories_by_message: user_message_id -> (memory id, user_text, reply_text)."""
    found: dict[int, tuple[int, str, str]] = {}
    duplicates = []
    for message_id, memory_id, user_text, reply_text in await query(
        bot, "SELECT user_message_id, id, user_text, reply_text FROM memories"
    ):
        if message_id in found:
            duplicates.append(f"message {message_id} has memories #{found[message_id][0]} and #{memory_id}")
        found[message_id] = (memory_id, user_text, reply_text)
    assert not duplicates, f"a message was remembered twice: {duplicates[:10]}"
    return found


async def check_store_of(bot: CompanionBot, *, pin_cap: int, tmp_dir: Any) -> Any:
    """invariants.check_store but its SQLite integrity check: turns all or nothing, scores and pins as the
    log says, pins within the cap, a rebuild equal to the live projections. Returns invariants.StoreCounts."""
    from storage.memories import MAX_SCORING_FAILURES
    from tests.invariants import StoreCounts
    from tests.projection_check import live_and_rebuilt_of

    problems: list[str] = []
    # Turns all or nothing.
    written = dict(await _events_of(bot, "memory_written"))
    forgotten = {payload["memory_id"] for _, payload in await _events_of(bot, "memory_forgotten")}
    fields = ("bot_id", "scope_kind", "scope_id", "channel_id", "author_id", "user_text", "reply_text")
    rows = await query(bot, f"SELECT id, written_seq, {', '.join(fields)}, user_message_id FROM memories ORDER BY id")
    for memory_id, written_seq, *values in rows:
        event = written.get(written_seq)
        if written_seq != memory_id or event is None:
            problems.append(f"memory #{memory_id} has no memory_written event (written_seq {written_seq})")
        elif values != [event[key] for key in (*fields, "user_message_id")]:
            problems.append(f"memory #{memory_id} differs from its event")
        elif memory_id in forgotten or event.get("redacted"):
            problems.append(f"memory #{memory_id} was forgotten but still has a row")
    ids = {row[0] for row in rows}
    for seq, event in written.items():
        if seq not in ids and (seq not in forgotten or not event.get("redacted")):
            problems.append(f"memory_written event #{seq} has no memory and was not forgotten and redacted")
    # Scores and failures as the log says, each memory scored at most once.
    scores = await _events_of(bot, "memory_significance_set")
    live = dict(await query(bot, "SELECT id, significance FROM memories"))
    scored_by_log: dict[int, int] = {}
    for _, payload in scores:
        if payload["memory_id"] in scored_by_log:
            problems.append(f"memory #{payload['memory_id']} was scored more than once")
        scored_by_log[payload["memory_id"]] = payload["score"]
    problems += [
        f"memory #{i} has score {score}, the log {scored_by_log.get(i)}"
        for i, score in live.items()
        if score != scored_by_log.get(i)
    ]
    failures: dict[int, int] = {}
    for _, payload in await _events_of(bot, "memory_significance_failed"):
        failures[payload["memory_id"]] = failures.get(payload["memory_id"], 0) + 1
    for memory_id, counted in await query(bot, "SELECT id, scoring_failures FROM memories"):
        if counted != failures.get(memory_id, 0):
            problems.append(f"memory #{memory_id} counts {counted} scoring failures, the log {failures.get(memory_id)}")
    # Pins as their last event says, auto-pins pivotal, within the cap.
    last_pin = {payload["memory_id"]: payload for _, payload in await _events_of(bot, "memory_pin_changed")}
    pins: dict[tuple, list[bool]] = {}
    for memory_id, bot_id, kind, scope_id, pinned, pin_auto, significance in await query(
        bot, "SELECT id, bot_id, scope_kind, scope_id, pinned, pin_auto, significance FROM memories"
    ):
        event = last_pin.get(memory_id)
        expected = (bool(event["pinned"]), bool(event["auto"])) if event and event["pinned"] else (False, None)
        if (bool(pinned), None if pin_auto is None else bool(pin_auto)) != expected:
            problems.append(f"memory #{memory_id} pin state differs from its last pin event {expected}")
        if pinned:
            pins.setdefault((bot_id, kind, scope_id), []).append(bool(pin_auto))
            if pin_auto and significance != 3:
                problems.append(f"memory #{memory_id} is auto-pinned with significance {significance}")
    for scope, autos in pins.items():
        if len(autos) > max(pin_cap, autos.count(False)):
            problems.append(f"scope {scope} holds {len(autos)} pins over the cap of {pin_cap}")
    assert not problems, f"{len(problems)} problems: {problems[:10]}"
    live_state, rebuilt = await live_and_rebuilt_of(bot, tmp_dir)
    assert live_state == rebuilt, "a rebuild differs from the live projections"

    events = {kind: count for kind, count in await query(bot, "SELECT kind, count(*) FROM events GROUP BY kind")}
    [(memories, scored, waiting, gave_up, pinned)] = await query(
        bot,
        "SELECT count(*), count(significance),"
        " coalesce(sum(CASE WHEN significance IS NULL AND scoring_failures < ? THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN significance IS NULL AND scoring_failures >= ? THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN pinned THEN 1 ELSE 0 END), 0) FROM memories",
        MAX_SCORING_FAILURES,
        MAX_SCORING_FAILURES,
    )
    return StoreCounts(int(memories), events, int(scored), int(waiting), int(gave_up), int(pinned))


async def check_every_memory_scored_once_of(bot: CompanionBot) -> None:
    """invariants.check_every_memory_scored_once: one score event per memory, and every memory scored."""
    scored = [payload["memory_id"] for _, payload in await _events_of(bot, "memory_significance_set")]
    assert len(scored) == len(set(scored)), "a memory was scored more than once"
    unscored = await query(bot, "SELECT id FROM memories WHERE significance IS NULL ORDER BY id")
    assert not unscored, f"memories left unscored: {[i for (i,) in unscored][:10]}"


async def tables_holding(bot: CompanionBot, *words: str) -> list[str]:
    """PostgreSQL: the tables of the bot's database where a row, read as text, holds any of `words`
    (case-insensitive; a search index's stems show in its row too)."""
    tables = [
        name
        for (name,) in await query(
            bot, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        )
    ]
    assert {"events", "memories"} <= set(tables), tables
    found = []
    for table in tables:
        for word in words:
            if await scalar(bot, f'SELECT count(*) FROM "{table}" AS t WHERE t::text ILIKE ?', f"%{word}%"):
                found.append(table)
                break
    return found


async def execute(bot: CompanionBot, sql: str, *params: Any) -> None:
    """Run one writing statement (`?` placeholders) in a transaction of its own, on either backend."""
    if bot.db is not None:
        await bot.db.write(lambda conn: conn.execute(sql, params))
        return
    await bot.store.pool.execute(_numbered(sql), *params)  # type: ignore[attr-defined]


async def query_dsn(dsn: str, sql: str, *params: Any) -> list[tuple]:
    """`query` on the PostgreSQL database at `dsn`, through a connection of its own (no bot need run)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await conn.fetch(_numbered(sql), *params)]
    finally:
        await conn.close()
