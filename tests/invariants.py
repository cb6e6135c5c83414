"""Invariants of the memory store, checked with direct SQLite reads of its file.

The fault-injection tests (crash, LLM faults, overload, disk faults) run the
bot through something nasty and then call `check_store` on the database
file, with the bot stopped or killed. Each check raises AssertionError
listing what is wrong; they only read, except `check_rebuild_matches_live`,
which rebuilds a copy.

    counts = check_store(db_path, pin_cap=3, tmp_dir=tmp_path)   # everything below
    check_every_memory_scored_once(db_path)                      # once scoring has settled
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from storage import sqlite
from storage.memories import MAX_SCORING_FAILURES
from tests.projection_check import live_and_rebuilt

# How many problems an assertion message lists before it stops.
SHOWN_PROBLEMS = 10


@dataclass(frozen=True)
class StoreCounts:
    """What the store holds, for reports."""

    memories: int
    events: dict[str, int]  # events per kind
    scored: int  # memories with a significance
    waiting: int  # memories still waiting for a score
    gave_up: int  # memories whose scoring failed too often
    pinned: int

    def __str__(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.events.items()))
        return (
            f"{self.memories} memories ({self.scored} scored, {self.waiting} waiting, {self.gave_up} given up, "
            f"{self.pinned} pinned); events: {kinds}"
        )


def _read(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite.connect(db_path, query_only=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _events(db_path: Path, kind: str) -> list[tuple[int, dict]]:
    """(seq, payload) of every event of `kind`, oldest first."""
    rows = _read(db_path, "SELECT seq, payload FROM events WHERE kind = ? ORDER BY seq", (kind,))
    return [(seq, json.loads(payload)) for seq, payload in rows]


def _require(problems: list[str], what: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise AssertionError(f"{what}: {len(problems)} problems\n  {shown}{more}")


def count_store(db_path: Path) -> StoreCounts:
    events = dict(_read(db_path, "SELECT kind, count(*) FROM events GROUP BY kind"))
    [(memories, scored, waiting, gave_up, pinned)] = _read(
        db_path,
        "SELECT count(*), count(significance),"
        " coalesce(sum(significance IS NULL AND scoring_failures < ?), 0),"
        " coalesce(sum(significance IS NULL AND scoring_failures >= ?), 0),"
        " coalesce(sum(pinned), 0) FROM memories",
        (MAX_SCORING_FAILURES, MAX_SCORING_FAILURES),
    )
    return StoreCounts(memories, events, scored, waiting, gave_up, pinned)


def check_integrity(db_path: Path) -> None:
    """SQLite's own checks: the file's structure, and every foreign key."""
    assert _read(db_path, "PRAGMA integrity_check") == [("ok",)], "integrity_check failed"
    assert _read(db_path, "PRAGMA foreign_key_check") == [], "foreign_key_check found dangling references"


def check_turns_all_or_nothing(db_path: Path) -> None:
    """Never a memory without its event, nor an event without its memory.

    Every memories row is the projection of its own memory_written event
    (same seq, same content); every memory_written event has its row, unless
    the memory was forgotten (and then its text was redacted from the event).
    """
    problems: list[str] = []
    written = dict(_events(db_path, "memory_written"))
    forgotten = {payload["memory_id"] for _, payload in _events(db_path, "memory_forgotten")}
    rows = _read(
        db_path,
        "SELECT id, written_seq, bot_id, scope_kind, scope_id, channel_id, author_id, user_text, reply_text,"
        " user_message_id FROM memories ORDER BY id",
    )
    seen = set()
    for memory_id, written_seq, *fields in rows:
        seen.add(memory_id)
        event = written.get(written_seq)
        if written_seq != memory_id or event is None:
            problems.append(f"memory #{memory_id} has no memory_written event (written_seq {written_seq})")
            continue
        expected = [
            event[key]
            for key in (
                "bot_id",
                "scope_kind",
                "scope_id",
                "channel_id",
                "author_id",
                "user_text",
                "reply_text",
                "user_message_id",
            )
        ]
        if fields != expected:
            problems.append(f"memory #{memory_id} differs from its event: {fields} != {expected}")
        if memory_id in forgotten or event.get("redacted"):
            problems.append(f"memory #{memory_id} was forgotten but still has a row")
    for seq, event in written.items():
        if seq in seen:
            continue
        if seq not in forgotten:
            problems.append(f"memory_written event #{seq} has no memory and was never forgotten")
        elif not event.get("redacted"):
            problems.append(f"forgotten memory #{seq} still has its text in the log")
    _require(problems, "turns are not all or nothing")


def check_scored_at_most_once(db_path: Path) -> None:
    """Every score in the log is the memory's score, and no memory was scored twice."""
    problems: list[str] = []
    scores = _events(db_path, "memory_significance_set")
    per_memory = Counter(payload["memory_id"] for _, payload in scores)
    problems += [f"memory #{i} was scored {n} times" for i, n in per_memory.items() if n > 1]
    live = dict(_read(db_path, "SELECT id, significance FROM memories"))
    for seq, payload in scores:
        memory_id = payload["memory_id"]
        if memory_id in live and live[memory_id] != payload["score"]:
            problems.append(f"memory #{memory_id} has score {live[memory_id]}, event #{seq} says {payload['score']}")
    problems += [
        f"memory #{i} has a score but no memory_significance_set event"
        for i, score in live.items()
        if score is not None and i not in per_memory
    ]
    failures = Counter(payload["memory_id"] for _, payload in _events(db_path, "memory_significance_failed"))
    for memory_id, counted in _read(db_path, "SELECT id, scoring_failures FROM memories"):
        if counted != failures.get(memory_id, 0):
            problems.append(f"memory #{memory_id} counts {counted} scoring failures, the log {failures[memory_id]}")
    _require(problems, "scores disagree with the log")


def check_pins_within_cap(db_path: Path, pin_cap: int) -> None:
    """Each scope holds at most max(pin_cap, its manual pins) pins; auto-pins are pivotal memories;
    each memory's pin state is what its last pin event says."""
    problems: list[str] = []
    last_pin_event: dict[int, dict] = {}
    for _, payload in _events(db_path, "memory_pin_changed"):
        last_pin_event[payload["memory_id"]] = payload
    rows = _read(db_path, "SELECT id, bot_id, scope_kind, scope_id, pinned, pin_auto, significance FROM memories")
    pins: dict[tuple, list[bool]] = defaultdict(list)
    for memory_id, bot_id, kind, scope_id, pinned, pin_auto, significance in rows:
        event = last_pin_event.get(memory_id)
        expected = (bool(event["pinned"]), bool(event["auto"])) if event and event["pinned"] else (False, None)
        actual = (bool(pinned), None if pin_auto is None else bool(pin_auto))
        if actual != expected:
            problems.append(f"memory #{memory_id} pin state {actual}, its last pin event says {expected}")
        if pinned:
            pins[(bot_id, kind, scope_id)].append(bool(pin_auto))
            if pin_auto and significance != 3:
                problems.append(f"memory #{memory_id} is auto-pinned with significance {significance}")
    for scope, autos in pins.items():
        manual = autos.count(False)
        if len(autos) > max(pin_cap, manual):
            problems.append(f"scope {scope} holds {len(autos)} pins ({manual} manual) over the cap of {pin_cap}")
    _require(problems, "pins break the cap")


def check_rebuild_matches_live(db_path: Path, tmp_dir: Path) -> None:
    """Replaying the log gives exactly the live projections."""
    live, rebuilt = live_and_rebuilt(db_path, tmp_dir)
    if live != rebuilt:
        live_rows = {row[0]: row for row in live["memories"]}
        rebuilt_rows = {row[0]: row for row in rebuilt["memories"]}
        differing = [
            f"#{i}: live {live_rows.get(i)} rebuilt {rebuilt_rows.get(i)}"
            for i in sorted(live_rows.keys() | rebuilt_rows.keys())
            if live_rows.get(i) != rebuilt_rows.get(i)
        ]
        if live["last_seq"] != rebuilt["last_seq"]:
            differing.append(f"last_seq: live {live['last_seq']} rebuilt {rebuilt['last_seq']}")
        if live["indexed"] != rebuilt["indexed"]:
            differing.append(f"indexed ids differ: live {len(live['indexed'])}, rebuilt {len(rebuilt['indexed'])}")
        _require(differing or ["(the states differ)"], "a rebuild differs from the live projections")


def check_store(db_path: Path, *, pin_cap: int, tmp_dir: Path) -> StoreCounts:
    """Every invariant that holds at any committed state; returns the counts."""
    check_integrity(db_path)
    check_turns_all_or_nothing(db_path)
    check_scored_at_most_once(db_path)
    check_pins_within_cap(db_path, pin_cap)
    check_rebuild_matches_live(db_path, tmp_dir)
    return count_store(db_path)


def check_every_memory_scored_once(db_path: Path) -> None:
    """Once scoring has settled with a healthy classifier: each memory has exactly one score."""
    check_scored_at_most_once(db_path)
    unscored = [row[0] for row in _read(db_path, "SELECT id FROM memories WHERE significance IS NULL ORDER BY id")]
    _require([f"memory #{i} has no score" for i in unscored], "memories left unscored")


def memories_by_message(db_path: Path) -> dict[int, tuple[int, str, str]]:
    """user_message_id -> (memory id, user_text, reply_text), for matching memories to Discord messages."""
    rows = _read(db_path, "SELECT user_message_id, id, user_text, reply_text FROM memories")
    found: dict[int, tuple[int, str, str]] = {}
    duplicates = []
    for message_id, memory_id, user_text, reply_text in rows:
        if message_id in found:
            duplicates.append(f"message {message_id} has memories #{found[message_id][0]} and #{memory_id}")
        found[message_id] = (memory_id, user_text, reply_text)
    _require(duplicates, "a message was remembered twice")
    return found
