"""The bot's own per-turn overhead, and its throughput with a slow model.

Latency: the real bot (`bot.create_bot` + `start`) runs in a child process
over a private copy of a dataset (`bench/dataset.py`: 100 scopes, one heavy
scope holding 20% of the memories), against the fake Discord and a
zero-latency fake LLM, which run in this process. It answers a few hundred
chat-like messages one at a time, alternating between the heavy scope and a
small one; each message waits for the previous turn to be fully settled
(reply sent, memory written, memory scored), so a turn is measured alone.

What is measured, inside the bot process, per turn:

* turn = from the moment discord.py takes the MESSAGE_CREATE frame off the
  gateway websocket (`DiscordWebSocket.received_message` is entered) to the
  moment the reply POST's body is handed to the socket (aiohttp's
  `on_request_chunk_sent`, through discord.py's own `http_trace` option).
  That is everything the bot does for a turn, discord.py's parsing and HTTP
  client included, and nothing the fakes do (they run in another process).
* LLM round trip = the openai SDK call (`LLMClient.complete`), to a fake that
  answers at once: SDK request building, loopback HTTP, the fake's own
  handling, response parsing. Reported apart, with the bot's work excluding it.
* the prompt building breakdown: the pins and recent turns (one read on the
  reader connection), the whole-history recall (on the search reader, beside
  it) and the ranking/assembly.

Every stage is wall time on the bot's one event loop: work the loop does
meanwhile (the typing indicator's POST, started as the turn begins, lands
mostly in the pins read) counts in the stage that was waiting. The SDK's
own CPU work (it walks every message of the request) is in the LLM round trip.

Both processes read `time.monotonic()` (CLOCK_MONOTONIC), so the figure the
fake sees (before `send_message` → POST arrived) is reported next to it.

Throughput: with the 1M (quick: 100k) dataset, the chat model answers after
500 ms; 50 channels of the heavy guild each get N messages at once. Turns in
a channel run in order, so the ideal is 50 / 0.5 s = 100 turns/s.

The significance worker keeps running (as in production): the dataset has
no memory waiting for a score, and the fake classifier answers at once.
The backup/snapshot schedule (`bot.operations`) is not started: at first
start it takes a catch-up backup of the whole database in a thread, which
would run through the measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Result, main, percentile
from bench.dataset import BOT_ID, BOT_NAME, CLASSIFIER_MODEL, Dataset, DatasetSpec, ScopeLayout, describe, load_dataset

REPO = Path(__file__).resolve().parent.parent
SCOPES = 100
FULL_SIZES = (10_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
TARGET_SIZE = 1_000_000
TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
FULL_TURNS, FULL_WARMUP = 400, 40
QUICK_TURNS, QUICK_WARMUP = 80, 10
THROUGHPUT_CHANNELS = 50
THROUGHPUT_LLM_SECONDS = 0.5
FULL_PER_CHANNEL, QUICK_PER_CHANNEL = 10, 3
CHAT_MODEL = "bench-chat"
APP_OWNER = 1
SETTLE_TIMEOUT_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 120.0


# ==================================================================================================
# The bot process
# ==================================================================================================

_CURRENT_TURN: contextvars.ContextVar[int | None] = contextvars.ContextVar("bench_current_turn", default=None)


class Probe:
    """Timestamps taken inside the bot, keyed by the user message id of each turn."""

    def __init__(self) -> None:
        self.turns: dict[int, dict[str, Any]] = defaultdict(dict)
        self.frame_time = 0.0
        self.posts: list[tuple[float, bytes]] = []
        self.classifier_calls: list[tuple[float, float]] = []  # (started, seconds)
        self.score_writes: list[tuple[float, float]] = []
        self.memory_to_message: dict[int, int] = {}
        self.worker_paused = False

    def span(self, name: str, started: float) -> None:
        message_id = _CURRENT_TURN.get()
        if message_id is not None:
            self.turns[message_id][name] = (started, time.monotonic())

    @staticmethod
    def settled(message_id: int) -> None:
        sys.stdout.write(f"settled {message_id}\n")
        sys.stdout.flush()

    def results(self) -> dict[str, Any]:
        for sent_at, body in self.posts:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                replied_to = int(json.loads(body)["message_reference"]["message_id"])
                self.turns[replied_to].setdefault("post", sent_at)
        return {
            "turns": {str(k): v for k, v in self.turns.items()},
            "classifier_calls": self.classifier_calls,
            "score_writes": self.score_writes,
        }


def _timed(probe: Probe, name: str, function: Any) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return await function(*args, **kwargs)
        finally:
            probe.span(name, started)

    return wrapper


def _timed_sync(probe: Probe, name: str, function: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            probe.span(name, started)

    return wrapper


def install_probes(probe: Probe) -> Any:
    """Patch timing hooks into discord.py and the bot's modules (this process only); returns the http trace."""
    import aiohttp
    from discord.gateway import DiscordWebSocket
    from discord.state import ConnectionState

    import companion.recall
    import companion.turns
    import storage.commands
    from storage import memories

    received_message = DiscordWebSocket.received_message

    async def timed_received_message(self: Any, msg: Any, /) -> None:
        probe.frame_time = time.monotonic()
        await received_message(self, msg)

    DiscordWebSocket.received_message = timed_received_message  # type: ignore[method-assign]

    parse_message_create = ConnectionState.parse_message_create

    def timed_parse_message_create(self: Any, data: Any) -> None:
        if int(data["author"]["id"]) == BOT_ID:
            parse_message_create(self, data)
            return
        turn = probe.turns[int(data["id"])]
        turn["frame"] = probe.frame_time
        parse_message_create(self, data)
        turn["dispatched"] = time.monotonic()

    # Parsers are bound when the client's state is built, so this must precede create_bot.
    ConnectionState.parse_message_create = timed_parse_message_create  # type: ignore[method-assign]

    memories.pinned_and_recent = _timed(probe, "pins", memories.pinned_and_recent)
    companion.recall.find = _timed(probe, "search", companion.recall.find)
    companion.recall.choose = _timed(probe, "rank", companion.recall.choose)
    companion.turns.build_prompt = _timed_sync(probe, "assemble", companion.turns.build_prompt)

    record_significance = storage.commands.record_significance

    async def timed_record_significance(db: Any, memory_id: int, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return await record_significance(db, memory_id, *args, **kwargs)
        finally:
            probe.score_writes.append((started, time.monotonic() - started))
            message_id = probe.memory_to_message.pop(memory_id, None)
            if message_id is not None:
                probe.settled(message_id)

    storage.commands.record_significance = timed_record_significance

    async def on_chunk_sent(session: Any, context: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
        if params.method == "POST" and params.url.path.endswith("/messages"):
            probe.posts.append((time.monotonic(), bytes(params.chunk)))

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_chunk_sent)
    return trace


def instrument_bot(bot: Any, probe: Probe) -> None:
    """Instance-level hooks on the bot's turn service and LLM client."""
    turns = bot.turns
    compose_reply = turns.compose_reply

    async def timed_compose_reply(turn: Any) -> Any:
        token = _CURRENT_TURN.set(turn.message_id)
        probe.turns[turn.message_id]["turn_start"] = time.monotonic()
        try:
            return await compose_reply(turn)
        finally:
            _CURRENT_TURN.reset(token)

    turns.compose_reply = timed_compose_reply
    turns.build_prompt = _timed(probe, "prompt", turns.build_prompt)

    complete = bot.llm.complete

    async def timed_complete(messages: Any, *, model: str, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return await complete(messages, model=model, **kwargs)
        finally:
            if model == bot.config.llm.chat_model:
                probe.span("llm", started)
            else:
                probe.classifier_calls.append((started, time.monotonic() - started))

    bot.llm.complete = timed_complete

    remember = turns.remember

    async def timed_remember(turn: Any, reply_text: str, **kwargs: Any) -> int:
        started = time.monotonic()
        memory_id = await remember(turn, reply_text, **kwargs)
        probe.turns[turn.message_id]["remember"] = (started, time.monotonic())
        if probe.worker_paused:
            probe.settled(turn.message_id)
        else:
            probe.memory_to_message[memory_id] = turn.message_id
        return memory_id

    turns.remember = timed_remember


async def _bot_process(config_document: dict[str, Any], workdir: Path, pause_worker: bool) -> dict[str, Any]:
    from bot import create_bot
    from companion.config import parse_config

    probe = Probe()
    trace = install_probes(probe)
    config = parse_config(config_document, source=workdir / "config.toml")
    bot = await create_bot(config, guild_ready_timeout=0.05, http_trace=trace)
    instrument_bot(bot, probe)
    operations = getattr(bot, "operations", None)
    if operations is not None:
        # The backup/snapshot schedule would take a catch-up backup of the whole dataset (copy,
        # integrity check, digest) right at start, in a thread, in the middle of the measurement.
        async def no_schedule() -> None:
            return None

        operations.start = no_schedule
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    runner = asyncio.create_task(bot.start("fake-token"))
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            while not bot.is_ready():
                if runner.done():
                    runner.result()
                await asyncio.sleep(0.01)
        if pause_worker:
            bot.scoring.pause()
            probe.worker_paused = True
        print("ready", flush=True)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, runner], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await bot.release_resources()
    return probe.results()


def bot_process_main() -> None:
    """Entry point of the child: `python -c "from bench.bench_turns import bot_process_main; ..." ARGS`."""
    args = json.loads(Path(sys.argv[1]).read_text())
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    results_path = Path(args["results"])
    results = asyncio.run(_bot_process(args["config"], results_path.parent, args["pause_worker"]))
    results_path.write_text(json.dumps(results))


# ==================================================================================================
# The driver (this process): fakes, the bot process, the messages
# ==================================================================================================


@dataclass
class Sent:
    message_id: int
    scope: str  # "heavy" or "small"
    sent_at: float
    measured: bool


@dataclass
class Session:
    dataset: Dataset
    workdir: Path
    discord: Any
    llm: Any
    process: asyncio.subprocess.Process | None = None
    settled: dict[int, asyncio.Event] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def results_path(self) -> Path:
        return self.workdir / "probe.json"

    def settle_event(self, message_id: int) -> asyncio.Event:
        return self.settled.setdefault(message_id, asyncio.Event())


def _world(fake: Any, dataset: Dataset) -> None:
    names = dataset.layout.user_names
    for scope in (dataset.heavy, dataset.small):
        for user_id in scope.member_ids:
            fake.add_user(user_id, names[user_id].lower().replace(" ", "_"), global_name=names[user_id])
        fake.add_guild(
            scope.guild_id,
            scope.name,
            owner_id=scope.member_ids[0],
            channel_ids=scope.channel_ids,
            member_ids=scope.member_ids,
        )


def _config_document(session: Session) -> dict[str, Any]:
    listen = [*session.dataset.heavy.channel_ids, *session.dataset.small.channel_ids]
    return {
        "discord": {
            "api_base": session.discord.api_base,
            "gateway_url": session.discord.gateway_url,
            "listen_channel_ids": listen,
            "token_env": "BENCH_UNUSED_TOKEN",
        },
        "llm": {
            "base_url": session.llm.base_url,
            "api_key_env": "",
            "chat_model": CHAT_MODEL,
            "classifier_model": CLASSIFIER_MODEL,
            "timeout_seconds": 10.0,
            "max_retries": 0,
        },
        "persona": {"name": BOT_NAME},
        "storage": {"data_dir": str(session.workdir / "data")},
        # A few generated people send every turn; the per-person limit would measure itself.
        "chat": {"user_turns_per_minute": 0},
    }


def _classifier_answer(body: dict[str, Any]) -> Any:
    from tests.fakes.llm_server import Answer

    # Deterministic and realistic: mostly ordinary, now and then pivotal (which pins).
    bucket = zlib.crc32(body["messages"][-1]["content"].encode()) % 100
    score = 3 if bucket < 3 else 2 if bucket < 22 else 1 if bucket < 70 else 0
    return Answer(json.dumps({"significance": score}))


def _chat_responder(replies: list[str], delay: float) -> Any:
    from tests.fakes.llm_server import Answer

    counter = iter(range(10**9))

    def respond(body: dict[str, Any]) -> Any:
        return Answer(replies[next(counter) % len(replies)], delay=delay)

    return respond


async def _start(dataset: Dataset, *, pause_worker: bool = False) -> Session:
    from tests.fakes.discord_server import FakeDiscord
    from tests.fakes.llm_server import FakeLLM

    workdir = Path(tempfile.mkdtemp(prefix=f"bench-turns-{dataset.spec.label}-"))
    await asyncio.to_thread(dataset.copy_to, workdir / "data" / "memory.db")
    discord_fake = FakeDiscord(bot_user_id=BOT_ID, bot_name=BOT_NAME, application_id=BOT_ID, app_owner_id=APP_OWNER)
    _world(discord_fake, dataset)
    llm_fake = FakeLLM()
    text = dataset.chat_text("replies")
    replies = [text.reply(dataset.heavy) for _ in range(200)]
    llm_fake.responders[CHAT_MODEL] = _chat_responder(replies, 0.0)
    llm_fake.responders[CLASSIFIER_MODEL] = _classifier_answer
    await discord_fake.start()
    await llm_fake.start()
    session = Session(dataset, workdir, discord_fake, llm_fake)
    args_path = workdir / "args.json"
    args_path.write_text(
        json.dumps(
            {"config": _config_document(session), "results": str(session.results_path), "pause_worker": pause_worker}
        )
    )
    log = (workdir / "bot.log").open("wb")
    session.process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from bench.bench_turns import bot_process_main; bot_process_main()",
        str(args_path),
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    log.close()
    session.reader = asyncio.create_task(_read_bot_output(session))
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            while not session.ready.is_set():
                if session.process.returncode is not None:
                    raise RuntimeError(f"the bot exited early: {_log_tail(session)}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await session.ready.wait()
    except BaseException:
        await _stop(session)
        raise
    return session


async def _read_bot_output(session: Session) -> None:
    assert session.process is not None and session.process.stdout is not None
    async for raw in session.process.stdout:
        line = raw.decode().strip()
        if line == "ready":
            session.ready.set()
        elif line.startswith("settled "):
            session.settle_event(int(line.split()[1])).set()


def _log_tail(session: Session, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join((session.workdir / "bot.log").read_text(errors="replace").splitlines()[-lines:])
    return ""


async def _stop(session: Session) -> dict[str, Any]:
    results: dict[str, Any] = {}
    process = session.process
    try:
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(60):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if session.reader is not None:
            with contextlib.suppress(Exception):
                await session.reader
        if session.results_path.exists():
            results = json.loads(session.results_path.read_text())
    finally:
        await session.discord.stop()
        await session.llm.stop()
        shutil.rmtree(session.workdir, ignore_errors=True)
    return results


def _pick_weighted(rng: Any, items: tuple[int, ...]) -> int:
    """Busier channels and chattier members first, as in the dataset (Zipf weights)."""
    weights = [1.0 / rank for rank in range(1, len(items) + 1)]
    return rng.choices(items, weights=weights)[0]


async def _say(session: Session, scope: ScopeLayout, rng: Any, text: str) -> tuple[int, float]:
    channel_id = _pick_weighted(rng, scope.channel_ids)
    author_id = _pick_weighted(rng, scope.member_ids)
    sent_at = time.monotonic()
    message = await session.discord.send_message(channel_id, author_id, text)
    return int(message["id"]), sent_at


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _latency_turns(session: Session, turns: int, warmup: int) -> tuple[list[Sent], float]:
    """Sequential turns; returns them and the bot's CPU seconds over the measured ones."""
    import random

    assert session.process is not None

    dataset = session.dataset
    rng = random.Random(f"latency-{dataset.spec.stem}")
    text = dataset.chat_text("latency")
    sent: list[Sent] = []
    cpu_started = 0.0
    for index in range(warmup + turns):
        if index == warmup:
            cpu_started = _cpu_seconds(session.process.pid)
        label, scope = ("heavy", dataset.heavy) if index % 2 == 0 else ("small", dataset.small)
        # Half the messages bring up one of the community's recurring topics.
        message_text = text.user_message(scope, topic_chance=0.5)
        replies_before = len(session.discord.bot_messages)
        message_id, sent_at = await _say(session, scope, rng, message_text)
        await session.discord.wait_for_bot_messages(replies_before + 1, timeout=SETTLE_TIMEOUT_SECONDS)
        async with asyncio.timeout(SETTLE_TIMEOUT_SECONDS):
            await session.settle_event(message_id).wait()
        sent.append(Sent(message_id, label, sent_at, measured=index >= warmup))
    return sent, _cpu_seconds(session.process.pid) - cpu_started


async def _throughput(session: Session, per_channel: int) -> dict[str, Any]:
    import random

    dataset = session.dataset
    channels = dataset.heavy.channel_ids[:THROUGHPUT_CHANNELS]
    text = dataset.chat_text("throughput")
    rng = random.Random(f"throughput-{dataset.spec.stem}")
    replies = [text.reply(dataset.heavy) for _ in range(200)]
    session.llm.responders[CHAT_MODEL] = _chat_responder(replies, THROUGHPUT_LLM_SECONDS)
    replies_before = len(session.discord.bot_messages)
    total = per_channel * len(channels)
    message_ids: list[int] = []
    assert session.process is not None
    cpu_started = _cpu_seconds(session.process.pid)
    started = time.monotonic()
    for _ in range(per_channel):
        for channel_id in channels:
            author_id = _pick_weighted(rng, dataset.heavy.member_ids)
            message = await session.discord.send_message(channel_id, author_id, text.user_message(dataset.heavy))
            message_ids.append(int(message["id"]))
    sent_seconds = time.monotonic() - started
    await session.discord.wait_for_bot_messages(replies_before + total, timeout=60 + total)
    replies = session.discord.bot_messages[replies_before:]
    finished = max(reply["time"] for reply in replies)
    elapsed = finished - started
    cpu_seconds = _cpu_seconds(session.process.pid) - cpu_started
    # Let the memory writes and scores of these turns land before the bot is stopped.
    settle_started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SETTLE_TIMEOUT_SECONDS):
            for message_id in message_ids:
                await session.settle_event(message_id).wait()
    return {
        "turns": total,
        "channels": len(channels),
        "per_channel": per_channel,
        "elapsed_seconds": elapsed,
        "send_seconds": sent_seconds,
        "turns_per_second": total / elapsed,
        "bot_cpu_seconds": cpu_seconds,
        "ideal_turns_per_second": len(channels) / THROUGHPUT_LLM_SECONDS,
        "settled_after_last_reply_seconds": time.monotonic() - settle_started,
        "message_ids": message_ids,
        "reply_times": {str(int(r["message_reference"]["message_id"])): r["time"] for r in replies},
        "sent_at": started,
    }


@dataclass
class SizeRun:
    dataset: Dataset
    sent: list[Sent]
    probe: dict[str, Any]
    reply_times: dict[int, float]
    latency_phase_end: float
    latency_cpu_seconds: float
    throughput: dict[str, Any] | None

    def background_ms(self, name: str, *, during_latency: bool) -> list[float]:
        """Durations of background calls ("classifier_calls", "score_writes") in one phase."""
        return [
            _ms(seconds)
            for started, seconds in self.probe.get(name, [])
            if (started <= self.latency_phase_end) == during_latency
        ]


async def _run_size(dataset: Dataset, turns: int, warmup: int, per_channel: int | None) -> SizeRun:
    session = await _start(dataset)
    throughput = None
    try:
        sent, latency_cpu_seconds = await _latency_turns(session, turns, warmup)
        latency_phase_end = time.monotonic()
        reply_times = {
            int(r["message_reference"]["message_id"]): r["time"]
            for r in session.discord.bot_messages
            if r.get("message_reference")
        }
        if per_channel:
            throughput = await _throughput(session, per_channel)
    except BaseException:
        print(_log_tail(session), file=sys.stderr)
        raise
    finally:
        probe = await _stop(session)
    return SizeRun(dataset, sent, probe, reply_times, latency_phase_end, latency_cpu_seconds, throughput)


# ==================================================================================================
# Figures
# ==================================================================================================


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _span(turn: dict[str, Any], name: str) -> float | None:
    value = turn.get(name)
    return value[1] - value[0] if value else None


def _turn_figures(run: SizeRun) -> dict[str, list[float]]:
    """Per measured turn: named durations in milliseconds."""
    figures: dict[str, list[float]] = defaultdict(list)
    turns = run.probe.get("turns", {})
    for sent in run.sent:
        if not sent.measured:
            continue
        turn = turns.get(str(sent.message_id), {})
        if "frame" not in turn or "post" not in turn:
            figures["incomplete"].append(1.0)
            continue
        total = turn["post"] - turn["frame"]
        llm = _span(turn, "llm") or 0.0
        figures["total"].append(_ms(total))
        figures[f"total_{sent.scope}"].append(_ms(total))
        figures["llm"].append(_ms(llm))
        figures["llm_share"].append(100.0 * llm / total if total else 0.0)
        figures["own"].append(_ms(total - llm))
        figures["own_" + sent.scope].append(_ms(total - llm))
        for name in ("prompt", "pins", "search", "rank", "assemble", "remember"):
            duration = _span(turn, name)
            if duration is not None:
                figures[name].append(_ms(duration))
                figures[f"{name}_{sent.scope}"].append(_ms(duration))
        figures["discord_in"].append(_ms(turn["turn_start"] - turn["frame"]))
        if "llm" in turn:
            figures["discord_out"].append(_ms(turn["post"] - turn["llm"][1]))
        if sent.message_id in run.reply_times:
            figures["e2e"].append(_ms(run.reply_times[sent.message_id] - sent.sent_at))
    return figures


def _summaries(figures: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "n": len(values),
            "p50": percentile(values, 50),
            "p90": percentile(values, 90),
            "p99": percentile(values, 99),
            "max": max(values),
            "mean": statistics.fmean(values),
        }
        for name, values in figures.items()
        if values
    }


def _add_size_rows(result: Result, run: SizeRun) -> dict[str, Any]:
    label = run.dataset.spec.label
    stats = _summaries(_turn_figures(run))
    at_target = run.dataset.spec.memories == TARGET_SIZE

    def p(name: str, pct: str) -> float:
        return stats.get(name, {}).get(pct, float("nan"))

    def check(value: float, limit: float) -> tuple[str, bool | None]:
        return (f"<= {limit:g} ms", value <= limit) if at_target else ("", None)

    p50, p99 = p("total", "p50"), p("total", "p99")
    target, ok = check(p50, TARGET_P50_MS)
    result.add(f"{label}: turn p50 (frame -> reply POST)", p50, "ms", target, ok)
    target, ok = check(p99, TARGET_P99_MS)
    result.add(f"{label}: turn p99", p99, "ms", target, ok)
    for scope in ("heavy", "small"):
        result.add(f"{label}:   {scope} scope p50", p(f"total_{scope}", "p50"), "ms")
        result.add(f"{label}:   {scope} scope p99", p(f"total_{scope}", "p99"), "ms")
    result.add(f"{label}: LLM round trip (openai SDK, 0-latency fake) p50", p("llm", "p50"), "ms")
    result.add(f"{label}: LLM round trip share of the turn, median", p("llm_share", "p50"), "%")
    result.add(f"{label}: bot's own work (turn minus LLM) p50", p("own", "p50"), "ms")
    result.add(f"{label}: bot's own work (turn minus LLM) p99", p("own", "p99"), "ms")
    result.add(f"{label}: prompt building p50", p("prompt", "p50"), "ms")
    result.add(f"{label}: prompt building p99", p("prompt", "p99"), "ms")
    result.add(f"{label}:   pins and recent turns read p50", p("pins", "p50"), "ms")
    result.add(f"{label}:   FTS recall p50", p("search", "p50"), "ms")
    result.add(f"{label}:   FTS recall p99", p("search", "p99"), "ms")
    result.add(f"{label}:   FTS recall heavy scope p50", p("search_heavy", "p50"), "ms")
    result.add(f"{label}:   rank + assemble p50", p("rank", "p50") + p("assemble", "p50"), "ms")
    result.add(f"{label}: discord.py in (frame -> turn starts) p50", p("discord_in", "p50"), "ms")
    result.add(f"{label}: discord.py out (LLM done -> POST) p50", p("discord_out", "p50"), "ms")
    result.add(f"{label}: end to end as the fake sees it p50", p("e2e", "p50"), "ms")
    result.add(f"{label}: memory write after the reply p50", p("remember", "p50"), "ms")
    classifier = run.background_ms("classifier_calls", during_latency=True)
    score_writes = run.background_ms("score_writes", during_latency=True)
    result.add(f"{label}: background: classifier call (SDK) p50", percentile(classifier, 50), "ms")
    result.add(f"{label}: background: score write p50", percentile(score_writes, 50), "ms")
    measured = sum(1 for sent in run.sent if sent.measured)
    result.add(f"{label}: bot process CPU per turn (all its work)", _ms(run.latency_cpu_seconds / measured), "ms")
    return stats


def run(quick: bool = False) -> Result:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    turns, warmup = (QUICK_TURNS, QUICK_WARMUP) if quick else (FULL_TURNS, FULL_WARMUP)
    per_channel = QUICK_PER_CHANNEL if quick else FULL_PER_CHANNEL
    result = Result("turns")
    result.extra["method"] = (
        "bot in a child process; turn = discord.py receives the MESSAGE_CREATE frame -> reply POST body "
        "written to the socket; sequential turns, each after the previous one settled; worker running;"
        " backup/snapshot schedule not started"
    )
    result.extra["turns_per_size"] = turns
    # Other work on the machine skews every figure here; the load average says how much there was.
    result.extra["load_average_at_start"] = os.getloadavg()
    result.extra["warmup_turns"] = warmup
    datasets = [load_dataset(DatasetSpec(size, SCOPES)) for size in sizes]
    for dataset in datasets:
        label = dataset.spec.label
        result.add(f"dataset {label}: generate event log (cached build)", dataset.report.generate_seconds, "s")
        result.add(f"dataset {label}: rebuild_on (replay + FTS)", dataset.report.rebuild_seconds, "s")
    for dataset in datasets:
        is_largest = dataset is datasets[-1]
        size_run = asyncio.run(_run_size(dataset, turns, warmup, per_channel if is_largest else None))
        stats = _add_size_rows(result, size_run)
        result.extra[dataset.spec.label] = {
            "dataset": describe(dataset),
            "small_scope_memories": dataset.small.memories,
            "stats_ms": stats,
        }
        if size_run.throughput:
            _add_throughput_rows(result, size_run)
    result.extra["load_average_at_end"] = os.getloadavg()
    return result


def _add_throughput_rows(result: Result, run: SizeRun) -> None:
    data = run.throughput
    assert data is not None
    label = run.dataset.spec.label
    rate, ideal = data["turns_per_second"], data["ideal_turns_per_second"]
    turns = run.probe.get("turns", {})
    latencies = [
        _ms(turns[str(m)]["post"] - turns[str(m)]["frame"])
        for m in data["message_ids"]
        if "post" in turns.get(str(m), {}) and "frame" in turns[str(m)]
    ]

    def spans(name: str) -> list[float]:
        found = (turns.get(str(m), {}).get(name) for m in data["message_ids"])
        return [_ms(span[1] - span[0]) for span in found if span]

    name = f"throughput {label} ({data['channels']} ch x {data['per_channel']}, 500 ms LLM)"
    result.add(f"{name}: turns/s", rate, "/s")
    result.add(f"{name}: ideal (channels / 0.5 s)", ideal, "/s")
    result.add(f"{name}: ratio to ideal", rate / ideal, "x")
    result.add(f"{name}: bot process CPU per turn", _ms(data["bot_cpu_seconds"] / data["turns"]), "ms")
    result.add(f"{name}: bot process CPU busy", 100 * data["bot_cpu_seconds"] / data["elapsed_seconds"], "%")
    result.add(f"{name}: prompt building p50 under load", percentile(spans("prompt"), 50), "ms")
    result.add(f"{name}: FTS recall p50 under load", percentile(spans("search"), 50), "ms")
    result.add(f"{name}: LLM call p50 under load", percentile(spans("llm"), 50), "ms")
    result.add(f"{name}: memory write p50 under load", percentile(spans("remember"), 50), "ms")
    score_writes = run.background_ms("score_writes", during_latency=False)
    result.add(f"{name}: score write p50 under load", percentile(score_writes, 50), "ms")
    result.extra["throughput"] = {
        k: v for k, v in data.items() if k not in ("message_ids", "reply_times", "sent_at")
    } | {"turn_ms_p50_including_queueing": percentile(latencies, 50), "turn_ms_max": max(latencies, default=0)}


if __name__ == "__main__":
    main(run)
