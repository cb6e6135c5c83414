"""A realistic memory database for benchmarks, built once and cached under bench/.cache/.

The database is what a long-running bot would have written: `memory_written`
events for chat turns spread over a year and over many scopes (guilds and
DMs, one of them heavy), `memory_significance_set` for almost all of them,
the auto-pins (and evictions) that pivotal scores cause, a few manual pins,
scoring failures and forgotten memories. Only the event log is generated;
the projections come from `storage.rebuild.rebuild_on`, exactly as
`bot.py rebuild` makes them, and that rebuild is timed.

Text looks like chat: short lowercase sentences drawn from a Zipf-distributed
vocabulary (function words, a few hundred everyday content words and a long
tail of about 12,000 rare compounds and made-up words), with member names,
numbers and per-scope topic words that recur inside their community. The
event log is a pure function of the spec (seed included), so a dataset is
the same on every machine.

Two layers are cached: the event log (`<stem>.events.db`), and the database
with its projections (`<stem>-p<key>.db`), where the key hashes the product
code that shapes projections (schema, projections, tokens...). Changing that
code rebuilds only the projections, from the cached log.

Scope ids are what the bot makes: `Scope.for_guild(BOT_ID, guild_id)` with
BOT_ID the fake Discord's bot user, and `Scope.for_dm(BOT_ID, user_id)`.
`layout.heavy` (50 channels, 400 members) and `layout.small` (the smallest
guild) are the guilds a benchmark registers in the fake Discord, with their
channel and member ids, so its messages land in scopes full of data.

    from bench.dataset import DatasetSpec, load_dataset
    dataset = load_dataset(DatasetSpec(memories=1_000_000))   # builds or reuses the cache
    dataset.heavy, dataset.small                               # the two scopes benches talk in
    dataset.copy_to(tmp / "data" / "memory.db")                # a private copy for the bot

`python -m bench.dataset --memories 1000000` builds a dataset and prints its figures.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import fcntl
import hashlib
import importlib
import itertools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from bench.common import CACHE_DIR
from storage import sqlite
from storage.events import (
    Event,
    MemoryForgotten,
    MemoryPinChanged,
    MemorySignificanceFailed,
    MemorySignificanceSet,
    MemoryWritten,
    encode,
)
from storage.rebuild import rebuild_on
from storage.schema import migrate
from storage.scope import Scope

# Bump only when the generated event log changes. A change to the schema or the projections
# (storage/schema.py, projections.py, tokens.py, ...) needs no bump: projection_key() hashes that
# code into the cache key, and the projections are rebuilt from the cached log.
DATASET_VERSION = 1

# The bot as the fakes present it: FakeDiscord's default bot user id and the persona's default name.
BOT_ID = 1000
BOT_NAME = "Mnemo"
CLASSIFIER_MODEL = "fake-classifier"
PIN_CAP = 8  # [memory] pin_cap default

# Snowflake-sized id ranges, far from the ids tests use.
GUILD_ID_BASE = 900_000_000_000_000_000  # guild of scope i: base + 1000 * i; its channels follow it
USER_ID_BASE = 700_000_000_000_000_000
DM_CHANNEL_ID_BASE = 800_000_000_000_000_000
DISCORD_EPOCH_MS = 1_420_070_400_000

# One year of history, ending on a fixed day (2026-11-01T00:00:00Z) so the file is reproducible.
HISTORY_END = 1_793_491_200.0
HISTORY_SECONDS = 365 * 86_400.0

HEAVY_SHARE = 0.2  # default size of the heavy scope, as a share of all memories
HEAVY_CHANNELS = 50
HEAVY_MEMBERS = 400
USER_POOL = 3000
DM_EVERY = 5  # every fifth ordinary scope is one user's DMs
SCOPE_SIZE_EXPONENT = 0.8  # ordinary scopes' sizes fall off as 1 / rank^0.8
TOPICS_PER_SCOPE = 25
ZIPF_EXPONENT = 1.1

# Significance the classifier gives (0..3) and how often.
SCORE_WEIGHTS = (30, 48, 19, 3)
FAILED_ONCE_SHARE = 0.005  # one failed scoring attempt, then a score
GAVE_UP_SHARE = 0.0005  # three failed attempts: given up, never scored
FORGOTTEN_SHARE = 0.0002
MANUAL_PIN_SCOPE_SHARE = 0.15
MANUAL_PINS_PER_SCOPE = 2

INSERT_BATCH_ROWS = 20_000
ENCODE_CHECK_EVERY = 997
INSERT_EVENT = "INSERT INTO events (seq, kind, version, payload, recorded_at) VALUES (?, ?, ?, ?, ?)"


# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

# Roughly by frequency in English chat. Most are stopwords for recall, as in real messages.
FUNCTION_WORDS = """
i the to you a and it is that of in my for this me just so be on have but not do was lol with like what
are we its im can if all at get no they one yeah know about he out up there dont your or good time think
now how would will really people she go from some when as then more did got too see an want day make
because been her him them his has had going why well much still also need here even back their our
only who which over after way thing things right new first last next very into something anything
nothing lot lots maybe probably actually pretty kinda sure though yes okay ok thanks thank haha lmao
omg tbh idk btw rn ngl gonna wanna gotta let say said tell told ask asked feel feels felt look looks
try trying tried take took come came went other same many few every any most another around again
always never sometimes today tomorrow yesterday tonight morning night week weekend year years month
""".split()

CONTENT_WORDS = """
work job boss meeting office shift coffee tea pizza ramen sushi dinner lunch breakfast snack pasta
burger tacos curry soup salad cheese chocolate cake cookies bread bakery recipe cooking baking kitchen
movie movies film show series episode season trailer cinema anime manga comic book books novel reading
author chapter library music song songs album playlist concert band guitar piano drums bass singing
vinyl spotify podcast radio game games gaming play playing played player match ranked raid boss level
quest loot build patch update server discord stream streaming twitch youtube video videos clip meme
memes code coding bug bugs python rust javascript compiler deploy laptop computer keyboard mouse monitor
phone screen battery charger headphones camera photo photos picture drawing painting art sketch design
weekend monday tuesday wednesday thursday friday saturday sunday january february march april may june
july august september october november december birthday party wedding holiday vacation trip travel
flight airport train bus car bike drive driving traffic road walk walking run running gym workout yoga
hike hiking mountain beach lake river ocean forest park city town village home house apartment room
rent move moving neighbor neighbors garden plants flowers tree trees rain snow sun sunny weather storm
cold hot warm summer winter spring autumn fall cat cats dog dogs puppy kitten pet pets bird fish horse
vet school college university class classes exam exams test homework essay project deadline teacher
professor student students study studying grade grades thesis research lab science math history
english language spanish french german japanese learning lesson lessons course family mom dad mother
father sister brother grandma grandpa aunt uncle cousin kids baby son daughter wife husband girlfriend
boyfriend partner friend friends roommate coworker team manager interview salary money budget bills
bank savings rent price cheap expensive sale shopping store market groceries clothes shoes jacket shirt
dress hair haircut doctor dentist hospital sick flu cold cough headache tired sleep nap insomnia dream
dreams stress anxiety therapy health diet vegan vegetarian allergy allergic peanuts gluten medicine
news election politics government law court police fire accident emergency insurance taxes contract
lease landlord kitchen bathroom couch bed desk chair lamp window door floor wall paint furniture ikea
garden tomatoes basil coffee espresso latte matcha boba beer wine cocktail party bar club festival
museum gallery theater play tickets seats show stage actor actress director script camera editing
minecraft zelda pokemon fortnite valorant league overwatch skyrim elden ring stardew terraria tetris
chess puzzle board cards dice tabletop campaign dungeon dragon character characters story plot ending
spoilers finale sequel remake release launch preorder beta alpha version feature features settings
problem problems issue issues fix fixed broken crash crashes error errors lag ping internet wifi router
happy sad angry excited nervous scared bored lonely proud grateful sorry glad worried confused curious
great nice cool awesome amazing terrible awful weird funny cute beautiful ugly huge tiny fast slow
easy hard difficult simple important interesting boring favorite best worst better worse fresh old
finally honestly literally basically seriously definitely totally exactly almost already soon later
plan plans idea ideas question answer advice help favor promise secret surprise gift present card
letter message call text email chat voice hangout meetup date anniversary graduation promotion
retirement funeral hospital surgery recovery pregnant engaged married divorced breakup moved quit
hired fired started finished won lost broke bought sold made built wrote read watched listened
learned forgot remembered missed visited called texted met saw heard loved hated liked enjoyed
""".split()

NAME_STEMS = """
Mira Tobias Lena Jonas Aiko Ravi Noor Elif Mateo Sofia Kai Yuki Omar Priya Lucas Ines Finn Amara Leo
Hana Dario Zoe Felix Nadia Arjun Clara Emil Freya Hugo Ivy Jasper Kira Liam Maya Nico Olga Pablo Quinn
Rosa Sami Tara Uma Viktor Wren Xena Yara Zane Ada Bram Cleo Dev Esme Goran Hiro Ilse Juno Kofi Lyra
Milo Nell Otto Pia Rune Saga Theo Una Vera Wim Ximena Yusuf Zelda Anouk Bodhi Cyrus Dina Ezra Fay Gus
Halle Idris Jin Kenji Lotte Marek Nia Oren Paz Remy Sana Tove Ugo Vida Wade Yves Zara
""".split()

SYLLABLES_START = (
    "b br bl c ch cl cr d dr f fl fr g gl gr h j k kl kr l m n p pl pr qu r s sh sk sl sp st t th tr v w z".split()
)
SYLLABLES_VOWEL = "a e i o u ai au ea ee ei ia io oa oo ou y".split()
SYLLABLES_END = "b ck d f g k l ll m n nd ng nk nt p r rd rk rn s sh sk ss st t th x z".split()

REPLY_OPENERS = (
    "Oh nice,",
    "Ha,",
    "That sounds",
    "I remember",
    "Honestly",
    "Oh no,",
    "Wait,",
    "Ooh,",
    "Fair enough,",
    "Good luck with",
    "Congrats on",
    "Hmm,",
    "Right,",
    "I love that",
    "Sorry to hear",
)
SENTENCE_ENDS = ("", "", "", ".", "?", "!", "!!", "...", " lol", " haha")


def _rare_words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """The long tail of any chat corpus: compounds and handles (`raidnight`, `pizzaparty`) and
    short made-up words standing for names of games, places, slang and typos."""
    stems = [w for w in CONTENT_WORDS if 3 <= len(w) <= 7]
    words: list[str] = []
    while len(words) < count:
        if rng.random() < 0.7:
            word = rng.choice(stems) + rng.choice(stems)
        else:
            word = "".join(
                rng.choice(SYLLABLES_START) + rng.choice(SYLLABLES_VOWEL) + (rng.choice(SYLLABLES_END) if i else "")
                for i in range(rng.choice((1, 2, 2)))
            )
        if 3 <= len(word) <= 14 and word not in taken:
            taken.add(word)
            words.append(word)
    return words


@dataclass(frozen=True)
class Vocabulary:
    """Words ranked by frequency, sampled with Zipf-Mandelbrot weights 1 / (rank + 2.7)^1.1."""

    words: tuple[str, ...]
    cum_weights: tuple[float, ...]

    @classmethod
    def build(cls, seed: int, rare_words: int = 12_000) -> Vocabulary:
        rng = random.Random(f"vocabulary-{seed}")
        ranked = list(dict.fromkeys(FUNCTION_WORDS + CONTENT_WORDS))
        ranked += _rare_words(rng, rare_words, set(ranked))
        weights = [1.0 / (rank + 2.7) ** ZIPF_EXPONENT for rank in range(1, len(ranked) + 1)]
        return cls(tuple(ranked), tuple(itertools.accumulate(weights)))

    def rank_of(self, word: str) -> int:
        return self.words.index(word) + 1


# --------------------------------------------------------------------------------------------------
# Layout: scopes, channels, members and topics (cheap, recomputed from the spec)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    memories: int
    scopes: int = 100
    heavy_scope_memories: int | None = None  # default: HEAVY_SHARE of all memories
    unscored: int = 0  # the newest memories left without any scoring event
    seed: int = 20_240_601

    def __post_init__(self) -> None:
        if self.scopes < 2:
            raise ValueError("a dataset needs at least two scopes (the heavy one and a small one)")
        if self.heavy + (self.scopes - 1) > self.memories:
            raise ValueError("too few memories for that many scopes")
        if not 0 <= self.unscored <= self.memories:
            raise ValueError("unscored must be between 0 and memories")

    @property
    def heavy(self) -> int:
        if self.heavy_scope_memories is not None:
            return self.heavy_scope_memories
        return int(self.memories * HEAVY_SHARE)

    @property
    def stem(self) -> str:
        return (
            f"memories-{self.memories}-scopes-{self.scopes}-heavy-{self.heavy}"
            f"-unscored-{self.unscored}-seed-{self.seed}-v{DATASET_VERSION}"
        )

    @property
    def label(self) -> str:
        return _short_count(self.memories)


@dataclass(frozen=True)
class ScopeLayout:
    index: int
    scope: Scope
    name: str
    memories: int
    channel_ids: tuple[int, ...]  # busiest first
    member_ids: tuple[int, ...]  # most talkative first
    topics: tuple[str, ...]

    @property
    def guild_id(self) -> int | None:
        return self.scope.id if self.scope.kind == "guild" else None


@dataclass(frozen=True)
class Layout:
    spec: DatasetSpec
    scopes: tuple[ScopeLayout, ...]
    user_names: dict[int, str]  # user id -> display name (what the bot stores as author_name)

    @property
    def heavy(self) -> ScopeLayout:
        return self.scopes[0]

    @property
    def small(self) -> ScopeLayout:
        """The smallest guild scope with at least two members and two channels."""
        guilds = [s for s in self.scopes[1:] if s.scope.kind == "guild" and len(s.member_ids) >= 2]
        return min(guilds, key=lambda s: (s.memories, -s.index))


def scope_sizes(spec: DatasetSpec) -> list[int]:
    """Memories per scope: the heavy one first, then ordinary ones falling off by rank."""
    ordinary = spec.scopes - 1
    rest = spec.memories - spec.heavy
    weights = [1.0 / (rank**SCOPE_SIZE_EXPONENT) for rank in range(1, ordinary + 1)]
    total = sum(weights)
    sizes = [max(1, int(rest * w / total)) for w in weights]
    # Settle the rounding difference on the biggest ordinary scopes.
    difference = rest - sum(sizes)
    index = 0
    while difference:
        if difference > 0:
            sizes[index % ordinary] += 1
            difference -= 1
        elif sizes[index % ordinary] > 1:
            sizes[index % ordinary] -= 1
            difference += 1
        index += 1
    return [spec.heavy, *sizes]


def user_name(rng: random.Random, index: int) -> str:
    stem = NAME_STEMS[index % len(NAME_STEMS)]
    style = rng.randrange(6)
    if style == 0:
        return stem
    if style == 1:
        return f"{stem.lower()}_{rng.randrange(10, 99)}"
    if style == 2:
        return f"{stem} {rng.choice('ABCDEFGHJKLMNPRSTVW')}."
    if style == 3:
        return f"{stem.lower()}{rng.choice(('codes', 'plays', 'reads', 'bakes', 'draws', 'runs'))}"
    if style == 4:
        return f"x{stem.lower()}x"
    return stem.upper() if len(stem) <= 3 else stem


def make_layout(spec: DatasetSpec, vocabulary: Vocabulary) -> Layout:
    rng = random.Random(f"layout-{spec.seed}-{spec.memories}-{spec.scopes}-{spec.heavy}")
    user_ids = [USER_ID_BASE + i for i in range(USER_POOL)]
    user_names = {uid: user_name(rng, i) for i, uid in enumerate(user_ids)}
    # Topic words come from the middle of the vocabulary: common enough to recur, rare enough to matter.
    topic_pool = vocabulary.words[150:6000]
    dm_users = iter(rng.sample(user_ids, spec.scopes))
    scopes: list[ScopeLayout] = []
    for index, size in enumerate(scope_sizes(spec)):
        topics = tuple(rng.sample(topic_pool, TOPICS_PER_SCOPE))
        is_dm = index > 0 and index % DM_EVERY == 0
        if is_dm:
            user_id = next(dm_users)
            scope = Scope.for_dm(BOT_ID, user_id)
            channels: tuple[int, ...] = (DM_CHANNEL_ID_BASE + (user_id - USER_ID_BASE),)
            members: tuple[int, ...] = (user_id,)
            name = f"DMs with {user_names[user_id]}"
        else:
            guild_id = GUILD_ID_BASE + 1000 * index
            scope = Scope.for_guild(BOT_ID, guild_id)
            if index == 0:
                channel_count, member_count = HEAVY_CHANNELS, HEAVY_MEMBERS
                name = "The Commons"
            else:
                channel_count = min(12, 2 + size // 8000)
                member_count = min(200, max(2, 3 + size // 100))
                name = f"{topics[0].capitalize()} {rng.choice(('Club', 'Crew', 'Hangout', 'Guild', 'Corner'))}"
            channels = tuple(guild_id + 1 + c for c in range(channel_count))
            members = tuple(rng.sample(user_ids, member_count))
        scopes.append(ScopeLayout(index, scope, name, size, channels, members, topics))
    return Layout(spec, tuple(scopes), user_names)


# --------------------------------------------------------------------------------------------------
# Chat text
# --------------------------------------------------------------------------------------------------


class ChatText:
    """Generates user messages and bot replies. Draws words in bulk, so a million turns take seconds."""

    BUFFER_WORDS = 200_000

    def __init__(self, vocabulary: Vocabulary, layout: Layout, rng: random.Random) -> None:
        self.vocabulary = vocabulary
        self.layout = layout
        self.rng = rng
        self._buffer: list[str] = []
        self._position = 0

    def _words(self, count: int) -> list[str]:
        if self._position + count > len(self._buffer):
            self._buffer = self.rng.choices(
                self.vocabulary.words, cum_weights=self.vocabulary.cum_weights, k=self.BUFFER_WORDS
            )
            self._position = 0
        words = self._buffer[self._position : self._position + count]
        self._position += count
        return words

    def _length(self, median: float, cap: int) -> int:
        return max(1, min(cap, int(self.rng.lognormvariate(math.log(median), 0.6))))

    def _sprinkle(self, words: list[str], scope: ScopeLayout, *, topic_chance: float) -> None:
        rng = self.rng
        if rng.random() < topic_chance:
            for _ in range(rng.choice((1, 1, 2, 3))):
                words.insert(rng.randrange(len(words) + 1), rng.choice(scope.topics))
        if rng.random() < 0.08 and len(scope.member_ids) > 1:
            name = self.layout.user_names[rng.choice(scope.member_ids)]
            words.insert(rng.randrange(len(words) + 1), "@" + name if rng.random() < 0.5 else name)
        if rng.random() < 0.06:
            number = rng.choice((str(rng.randrange(2, 60)), str(rng.randrange(100, 2030)), f"{rng.randrange(1, 12)}pm"))
            words.insert(rng.randrange(len(words) + 1), number)

    def user_message(self, scope: ScopeLayout, *, topic_chance: float = 0.4) -> str:
        words = self._words(self._length(9, 60))
        self._sprinkle(words, scope, topic_chance=topic_chance)
        text = " ".join(words)
        if self.rng.random() < 0.3:
            text = text[:1].upper() + text[1:]
        return text + self.rng.choice(SENTENCE_ENDS)

    def reply(self, scope: ScopeLayout) -> str:
        words = self._words(self._length(24, 110))
        self._sprinkle(words, scope, topic_chance=0.3)
        sentences = []
        while words:
            cut = self.rng.randrange(6, 16)
            sentence = " ".join(words[:cut])
            if sentences:
                sentence = sentence[:1].upper() + sentence[1:]
            sentences.append(sentence + self.rng.choice((".", ".", "!", "?")))
            words = words[cut:]
        return f"{self.rng.choice(REPLY_OPENERS)} {' '.join(sentences)}"


# --------------------------------------------------------------------------------------------------
# The event log
# --------------------------------------------------------------------------------------------------


@dataclass
class _ScopeState:
    """The auto-pin state of one scope, replaying storage.commands' pin rules."""

    pinned: dict[int, bool] = field(default_factory=dict)  # memory id -> auto, in pin order

    def auto_pin(self, memory_id: int) -> list[Event]:
        auto_ids = [i for i, auto in self.pinned.items() if auto]
        contenders = sorted([*auto_ids, memory_id])
        excess = max(0, len(self.pinned) + 1 - PIN_CAP)
        yielding = contenders[: min(excess, len(contenders))]
        events: list[Event] = []
        for evicted in (i for i in yielding if i != memory_id):
            del self.pinned[evicted]
            events.append(MemoryPinChanged(evicted, pinned=False, auto=True, reason="over pin cap"))
        if memory_id not in yielding:
            self.pinned[memory_id] = True
            events.append(MemoryPinChanged(memory_id, pinned=True, auto=True, reason="pivotal"))
        return events

    def manual_pin(self, memory_id: int, actor_id: int) -> list[Event]:
        manual_pins = sum(1 for auto in self.pinned.values() if not auto)
        if self.pinned.get(memory_id) is False or manual_pins >= MANUAL_PINS_PER_SCOPE:
            return []
        self.pinned.pop(memory_id, None)
        self.pinned[memory_id] = False
        events: list[Event] = [MemoryPinChanged(memory_id, pinned=True, auto=False, actor_id=actor_id, reason="manual")]
        excess = max(0, len(self.pinned) - PIN_CAP)
        for evicted in sorted(i for i, auto in self.pinned.items() if auto and i != memory_id)[:excess]:
            del self.pinned[evicted]
            events.append(MemoryPinChanged(evicted, pinned=False, auto=True, reason="over pin cap"))
        return events


def _zipf_cum(count: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, count + 1)))


def _snowflake(created_at: float, counter: int) -> int:
    return ((int(created_at * 1000) - DISCORD_EPOCH_MS) << 22) | (counter & 0x3FFFFF)


@dataclass
class _Counts:
    events: int = 0
    memories: int = 0
    scored: int = 0
    failures: int = 0
    pins: int = 0
    unpins: int = 0
    forgotten: int = 0


def generate_events(spec: DatasetSpec, vocabulary: Vocabulary, layout: Layout, counts: _Counts) -> Iterator[tuple]:
    """The log as (seq, kind, version, payload, recorded_at) rows, oldest first."""
    rng = random.Random(f"events-{spec.stem}")
    text = ChatText(vocabulary, layout, rng)
    order = [scope.index for scope in layout.scopes for _ in range(scope.memories)]
    rng.shuffle(order)
    channel_cums = {s.index: _zipf_cum(len(s.channel_ids), 1.0) for s in layout.scopes}
    member_cums = {s.index: _zipf_cum(len(s.member_ids), 1.1) for s in layout.scopes}
    states = {s.index: _ScopeState() for s in layout.scopes}
    manual_pin_scopes = {s.index for s in layout.scopes if rng.random() < MANUAL_PIN_SCOPE_SHARE}
    scored_until = spec.memories - spec.unscored
    step = HISTORY_SECONDS / spec.memories
    start = HISTORY_END - HISTORY_SECONDS
    seq = 0
    forgotten_later: list[tuple[int, int]] = []

    def row(event: Event, at: float) -> tuple:
        nonlocal seq
        seq += 1
        counts.events += 1
        kind, version, payload = encode_fast(event)
        if seq % ENCODE_CHECK_EVERY == 1:
            assert (kind, version, payload) == encode(event), "encode_fast drifted from storage.events.encode"
        return (seq, kind, version, payload, at)

    for k, scope_index in enumerate(order):
        scope = layout.scopes[scope_index]
        created_at = start + (k + rng.random()) * step
        channel_id = scope.channel_ids[_pick(rng, channel_cums[scope_index])]
        author_id = scope.member_ids[_pick(rng, member_cums[scope_index])]
        forget = rng.random() < FORGOTTEN_SHARE
        written = MemoryWritten(
            bot_id=BOT_ID,
            scope_kind=scope.scope.kind,
            scope_id=scope.scope.id,
            channel_id=channel_id,
            author_id=author_id,
            author_name=layout.user_names[author_id],
            bot_name=BOT_NAME,
            user_text=text.user_message(scope),
            reply_text=text.reply(scope),
            user_message_id=_snowflake(created_at, k),
            created_at=created_at,
        )
        memory_id = seq + 1
        yield row(written.redact() if forget else written, created_at + 0.01)
        counts.memories += 1
        if forget:
            forgotten_later.append((memory_id, author_id))
        if k < scored_until:
            # The worker scores it a moment later (sometimes after failed attempts).
            yield from _scoring_events(
                rng,
                memory_id,
                author_id,
                forget,
                states[scope_index],
                scope_index in manual_pin_scopes,
                created_at + 0.5,
                row,
                counts,
            )
        if len(forgotten_later) >= 4:
            # Someone asks the bot to forget a few memories now and then.
            for forgotten_id, actor_id in forgotten_later:
                yield row(MemoryForgotten(forgotten_id, actor_id=actor_id), created_at + 1.0)
                counts.forgotten += 1
            forgotten_later.clear()
    for forgotten_id, actor_id in forgotten_later:
        yield row(MemoryForgotten(forgotten_id, actor_id=actor_id), HISTORY_END)
        counts.forgotten += 1


def _scoring_events(
    rng: random.Random,
    memory_id: int,
    author_id: int,
    forget: bool,
    state: _ScopeState,
    manual_pins: bool,
    at: float,
    row: Callable[[Event, float], tuple],
    counts: _Counts,
) -> Iterator[tuple]:
    roll = rng.random()
    if roll < GAVE_UP_SHARE + FAILED_ONCE_SHARE:
        attempts = 3 if roll < GAVE_UP_SHARE else 1
        for _ in range(attempts):
            yield row(MemorySignificanceFailed(memory_id, reason="no single number in 'maybe?'"), at)
            counts.failures += 1
        if attempts == 3:
            return
    score = 0 if forget else rng.choices((0, 1, 2, 3), weights=SCORE_WEIGHTS)[0]
    yield row(MemorySignificanceSet(memory_id, score=score, model=CLASSIFIER_MODEL), at)
    counts.scored += 1
    pin_events: list[Event] = []
    if score == 3:
        pin_events = state.auto_pin(memory_id)
    elif score == 2 and manual_pins and rng.random() < 0.002:
        pin_events = state.manual_pin(memory_id, actor_id=author_id)
    for event in pin_events:
        yield row(event, at)
        _count_pin(counts, event)


def encode_fast(event: Event) -> tuple[str, int, str]:
    """storage.events.encode without dataclasses.asdict's deep copies, which dominate a big build.

    The events are flat frozen dataclasses, so their __dict__ holds the fields in declaration
    order, which is exactly what asdict produces. Every ENCODE_CHECK_EVERY-th event is checked
    against `encode` itself.
    """
    return event.KIND, event.VERSION, json.dumps(vars(event), ensure_ascii=False, separators=(",", ":"))


def _pick(rng: random.Random, cum: list[float]) -> int:
    return bisect.bisect(cum, rng.random() * cum[-1])


def _count_pin(counts: _Counts, event: Event) -> None:
    if isinstance(event, MemoryPinChanged):
        if event.pinned:
            counts.pins += 1
        else:
            counts.unpins += 1


# --------------------------------------------------------------------------------------------------
# Building and caching
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildReport:
    events: int
    memories: int
    scored: int
    failures: int
    pins: int
    unpins: int
    forgotten: int
    generate_seconds: float  # generating and inserting the event log (cached on its own)
    rebuild_seconds: float  # storage.rebuild.rebuild_on: replaying the log and filling FTS
    optimize_seconds: float
    file_bytes: int
    projection_key: str  # hash of the product code that shapes the projections
    built_at: float


@dataclass(frozen=True)
class Dataset:
    spec: DatasetSpec
    path: Path
    report: BuildReport
    cached: bool  # True when an earlier run built the projections

    @property
    def events_path(self) -> Path:
        """The cached event log alone (its projection tables empty), next to the full database."""
        return self.path.parent / f"{self.spec.stem}.events.db"

    @cached_property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary.build(self.spec.seed)

    @cached_property
    def layout(self) -> Layout:
        return make_layout(self.spec, self.vocabulary)

    @property
    def heavy(self) -> ScopeLayout:
        return self.layout.heavy

    @property
    def small(self) -> ScopeLayout:
        return self.layout.small

    def chat_text(self, seed: int | str) -> ChatText:
        """A generator of fresh messages in the dataset's style (its own random stream)."""
        return ChatText(self.vocabulary, self.layout, random.Random(f"chat-{self.spec.stem}-{seed}"))

    def copy_to(self, destination: Path) -> Path:
        """A private copy of the database file (the cache itself is never opened for writing)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, destination)
        return destination


def build_dataset(
    memories: int = 1_000_000,
    scopes: int = 100,
    heavy_scope_memories: int | None = None,
    *,
    unscored: int = 0,
    seed: int = DatasetSpec.seed,
    cache_dir: Path = CACHE_DIR,
) -> Path:
    """The path of the cached database for these parameters, building it first if needed."""
    spec = DatasetSpec(memories, scopes, heavy_scope_memories, unscored, seed)
    return load_dataset(spec, cache_dir=cache_dir).path


# The product modules whose code decides what the projections hold. Their source is hashed into
# the cache key, so a schema or projection change rebuilds the projections from the cached log
# (the log itself, the slow part to generate, is reused).
KEEP_PROJECTION_BUILDS = 2
PROJECTION_MODULES = ("storage.schema", "storage.projections", "storage.events", "storage.scope", "storage.tokens")


def projection_key() -> str:
    digest = hashlib.sha256()
    for name in PROJECTION_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        digest.update(name.encode() + b"\0" + Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:12]


def load_dataset(spec: DatasetSpec, *, cache_dir: Path = CACHE_DIR, log: bool = True) -> Dataset:
    """The dataset for `spec`, from the cache or freshly built (under a lock, once).

    Two layers are cached: the event log (`<stem>.events.db`, depends only on the spec and
    DATASET_VERSION) and the database with its projections (`<stem>-p<key>.db`, also on the
    product's projection code). Only the newest KEEP_PROJECTION_BUILDS of the latter are kept.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = projection_key()
    path = cache_dir / f"{spec.stem}-p{key}.db"
    meta = path.with_suffix(".json")
    with _locked(cache_dir / f"{spec.stem}.lock"):
        if path.exists() and meta.exists():
            return Dataset(spec, path, BuildReport(**json.loads(meta.read_text())["report"]), cached=True)
        events_path = cache_dir / f"{spec.stem}.events.db"
        events_meta = events_path.with_suffix(".json")
        if not (events_path.exists() and events_meta.exists()):
            if log:
                print(f"generating the event log {events_path.name} (cached afterwards) ...", flush=True)
            counts, generate_seconds = _generate(spec, events_path)
            events_meta.write_text(
                json.dumps({"counts": asdict(counts), "generate_seconds": round(generate_seconds, 3)}, indent=2) + "\n"
            )
        log_info = json.loads(events_meta.read_text())
        if log:
            print(f"building projections {path.name} with storage.rebuild.rebuild_on ...", flush=True)
        rebuild_seconds, optimize_seconds = _project(events_path, path)
        report = BuildReport(
            **log_info["counts"],
            generate_seconds=log_info["generate_seconds"],
            rebuild_seconds=round(rebuild_seconds, 3),
            optimize_seconds=round(optimize_seconds, 3),
            file_bytes=path.stat().st_size,
            projection_key=key,
            built_at=time.time(),
        )
        meta.write_text(json.dumps({"spec": asdict(spec), "report": asdict(report)}, indent=2) + "\n")
        _forget_old_projections(cache_dir, spec)
        if log:
            print(
                f"  {report.events:,} events, {report.memories:,} memories: log generated in"
                f" {report.generate_seconds:.1f}s, projections rebuilt in {report.rebuild_seconds:.1f}s,"
                f" {report.file_bytes / 2**20:,.0f} MiB",
                flush=True,
            )
        return Dataset(spec, path, report, cached=False)


def _forget_old_projections(cache_dir: Path, spec: DatasetSpec) -> None:
    """Keep the newest KEEP_PROJECTION_BUILDS builds of a spec (two checkouts may share the cache)."""
    builds = sorted(cache_dir.glob(f"{spec.stem}-p*.db"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[KEEP_PROJECTION_BUILDS:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fresh(path: Path) -> Path:
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    return path


def _generate(spec: DatasetSpec, events_path: Path) -> tuple[_Counts, float]:
    """Write the event log (and the empty schema) to `events_path`; returns counts and seconds."""
    vocabulary = Vocabulary.build(spec.seed)
    layout = make_layout(spec, vocabulary)
    partial = _fresh(events_path.with_suffix(".partial"))
    counts = _Counts()
    conn = sqlite.connect(partial)
    try:
        migrate(conn)
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for batch in _batches(generate_events(spec, vocabulary, layout, counts), INSERT_BATCH_ROWS):
                conn.executemany(INSERT_EVENT, batch)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        seconds = time.perf_counter() - started
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    os.replace(partial, events_path)
    return counts, seconds


def _project(events_path: Path, path: Path) -> tuple[float, float]:
    """Copy the log and build its projections as the bot would; returns (rebuild, optimize) seconds."""
    partial = _fresh(path.with_suffix(".partial"))
    shutil.copyfile(events_path, partial)
    conn = sqlite.connect(partial)
    try:
        migrate(conn)  # any migration newer than the cached log
        rebuilt = rebuild_on(conn)
        # What Database.close() does at every shutdown, so the planner sees what a live bot's would.
        started = time.perf_counter()
        conn.execute("PRAGMA optimize")
        optimize_seconds = time.perf_counter() - started
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    os.replace(partial, path)
    return rebuilt.seconds, optimize_seconds


def _batches(rows: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    while batch := list(itertools.islice(rows, size)):
        yield batch


def _short_count(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % (scale // 10) == 0:
            value = n / scale
            return f"{value:g}{unit}"
    return str(n)


def describe(dataset: Dataset) -> dict[str, object]:
    """Figures worth printing next to a benchmark that used the dataset."""
    layout = dataset.layout
    return {
        "file": dataset.path.name,
        "projection_key": dataset.report.projection_key,
        "memories": dataset.spec.memories,
        "scopes": dataset.spec.scopes,
        "heavy_scope_memories": layout.heavy.memories,
        "small_scope_memories": layout.small.memories,
        "vocabulary_words": len(dataset.vocabulary.words),
        "events": dataset.report.events,
        "generate_seconds": dataset.report.generate_seconds,
        "rebuild_seconds": dataset.report.rebuild_seconds,
        "file_mib": round(dataset.report.file_bytes / 2**20, 1),
        "cached": dataset.cached,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build (or show) a cached benchmark memory database.")
    parser.add_argument("--memories", type=int, default=1_000_000)
    parser.add_argument("--scopes", type=int, default=100)
    parser.add_argument("--heavy", type=int, default=None, help="memories in the heavy scope (default 20%%)")
    parser.add_argument("--unscored", type=int, default=0)
    parser.add_argument("--seed", type=int, default=DatasetSpec.seed)
    parser.add_argument("--sample", type=int, default=3, help="print this many sample turns")
    args = parser.parse_args(argv)
    dataset = load_dataset(DatasetSpec(args.memories, args.scopes, args.heavy, args.unscored, args.seed))
    print(json.dumps(describe(dataset), indent=2))
    conn = sqlite.connect(dataset.path, query_only=True)
    try:
        rows = conn.execute(
            "SELECT author_name, user_text, reply_text FROM memories WHERE scope_id = ? ORDER BY id DESC LIMIT ?",
            (dataset.heavy.scope.id, args.sample),
        ).fetchall()
    finally:
        conn.close()
    for author, user_text, reply_text in rows:
        print(f"\n{author}: {user_text}\n{BOT_NAME}: {reply_text}")


if __name__ == "__main__":
    main()
