"""A generated long-conversation set for judging recall, deterministic from a seed.

Three conversations, each a scope of its own, with months of sessions:

- `guild`: a server of a dozen members over two years, four channels, each
  turn a member's message and the bot's reply (about 12,000 memories);
- `dm`: one person's DMs with the bot, where every memory holds both their
  names: the person writes them, the bot greets the person by name;
- `pair`: two people talking to each other (no bot replies), as an imported
  export of a chat between friends would be.

Between the chatter (the word-salad chat of `bench.dataset`, whose words
follow chat's Zipf curve) facts are planted: a pet adopted, a move, a new
job, a class... Each fact comes with distractors that share its words (other
people's pets, the same person's plans, the city mentioned in passing), and
with questions carrying the message ids of the turns that answer them. The
question kinds:

- `named_person`: the question names the person it is about;
- `temporal`: when something happened, with the person's earlier plans as distractors;
- `multi_session`: two facts from different sessions answer it together;
- `distractor`: the answer is buried among memories sharing most of its words;
- `long_gap`: the fact is in the first tenth of the history, thousands of turns back;
- `dm_two_names`: in the DMs, a question naming both the person and the bot;
- `follow_up`: the topic is in one turn and the answer in the person's next one.

Some questions paraphrase their fact ("moved" / "move", "allergic" / "allergy"),
as people do. Nothing here is tuned to any public benchmark.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.dataset import (
    BOT_ID,
    BOT_NAME,
    DISCORD_EPOCH_MS,
    ChatText,
    Layout,
    ScopeLayout,
    Vocabulary,
)
from storage.scope import Scope

SEED = 20_261_204
# The history ends here (2026-11-01T00:00:00Z); the questions come a day later.
HISTORY_END = 1_793_491_200.0
DAY = 86_400.0

KINDS = ("named_person", "temporal", "multi_session", "distractor", "long_gap", "dm_two_names", "follow_up")


@dataclass(frozen=True)
class Turn:
    """One memory: a person's message and, where the bot answered, its reply."""

    channel_id: int
    author_id: int
    author_name: str
    user_text: str
    reply_text: str
    created_at: float
    message_id: int
    reply_message_id: int | None = None


@dataclass(frozen=True)
class Question:
    conversation: str
    channel_id: int
    asker_id: int
    text: str
    kind: str
    evidence: tuple[int, ...]  # message ids of the turns that answer it
    asked_at: float


@dataclass
class Conversation:
    key: str
    scope: Scope
    channel_ids: tuple[int, ...]
    people: dict[int, str]  # user id -> display name
    bot_replies: bool
    turns: list[Turn] = field(default_factory=list)


@dataclass
class RecallSet:
    conversations: dict[str, Conversation]
    questions: list[Question]

    @property
    def turns(self) -> int:
        return sum(len(c.turns) for c in self.conversations.values())


# --------------------------------------------------------------------------------------------------
# What facts are made of
# --------------------------------------------------------------------------------------------------

PEOPLE = (
    "Mira Tobias Lena Jonas Aiko Ravi Noor Elif Mateo Sofia Kai Yuki Omar Priya Lucas Ines Finn Amara "
    "Hana Dario Felix Nadia Arjun Clara Emil Freya Hugo Jasper Kira Maya Nico Olga Pablo Rosa"
).split()
ANIMALS = "dog cat rabbit parrot hamster tortoise ferret".split()
PET_NAMES = (
    "Biscuit Pepper Mochi Waffles Ziggy Noodle Pickles Clover Juniper Tofu Pretzel Marble Sprocket "
    "Bramble Nutmeg Gizmo Olive Dumpling Scout Pumpkin"
).split()
CITIES = (
    "Lisbon Porto Oslo Kyoto Denver Austin Dublin Lyon Krakow Tallinn Seville Quebec Bergen Ghent "
    "Valencia Utrecht Graz Malmo Bilbao Halifax"
).split()
COMPANIES = (
    "Lumina Brightpath Tidewater Northwind Quillsoft Emberline Copperleaf Halcyon Driftwood Sundial Kestrel Meridian"
).split()
ROLES = "nurse designer barista engineer librarian electrician paralegal pharmacist translator surveyor".split()
HOBBIES = {
    "pottery": ("bowl", "mug", "vase"),
    "woodworking": ("stool", "shelf", "spoon"),
    "knitting": ("scarf", "beanie", "sweater"),
    "glassblowing": ("ornament", "paperweight", "tumbler"),
    "bookbinding": ("notebook", "journal", "sketchbook"),
    "welding": ("planter", "lantern", "bracket"),
}
FOODS = "shellfish peanuts kiwi sesame strawberries hazelnuts mango buckwheat".split()
FOOD_EVENTS = "a work potluck|my cousin's barbecue|a street food festival|a friend's birthday dinner".split("|")
RELATIVES = "grandma grandpa uncle aunt godmother neighbor".split()
INSTRUMENTS = "violin cello ukulele banjo trumpet accordion clarinet mandolin".split()
PLACES = {
    "Iceland": "Hekla",
    "Peru": "Huascaran",
    "Japan": "Fuji",
    "Scotland": "Nevis",
    "Morocco": "Toubkal",
    "Tanzania": "Kilimanjaro",
    "Slovenia": "Triglav",
    "Chile": "Osorno",
}
BOOK_TITLES = (
    "The Salt Orchard|Glass Harbour|The Last Cartographer|Winter Lanterns|A Map of Small Rivers|"
    "The Quiet Engine|Paper Comets|The Orchid Ledger"
).split("|")
AUTHORS = "Okafor Lindqvist Moreau Takahashi Brennan Castellanos Novak Adeyemi".split()


@dataclass(frozen=True)
class Plant:
    """A planted turn: who says what, and under which key questions refer to it."""

    author_id: int
    text: str
    key: str = ""
    reply: str = ""  # the bot's answer; filler when empty


@dataclass
class Fact:
    """Planted turns said together in one session (a follow-up is two consecutive turns)."""

    turns: list[Plant]
    distractors: list[Plant] = field(default_factory=list)
    # The session's position in the history, as a share of it (0 = the start); None: anywhere.
    at: float | None = None


@dataclass(frozen=True)
class Ask:
    kind: str
    text: str
    keys: tuple[str, ...]


class FactMaker:
    """Makes facts about the people of one conversation, drawing values without repeats."""

    def __init__(self, rng: random.Random, conversation: Conversation) -> None:
        self.rng = rng
        self.conversation = conversation
        self.used: set[tuple[str, str]] = set()
        self.counter = 0

    def value(self, pool: list[str] | tuple[str, ...], what: str) -> str:
        choices = [v for v in pool if (what, v) not in self.used] or list(pool)
        chosen = self.rng.choice(choices)
        self.used.add((what, chosen))
        return chosen

    def key(self, name: str) -> str:
        self.counter += 1
        return f"{name}-{self.counter}"

    def others(self, person_id: int) -> list[int]:
        return [p for p in self.conversation.people if p != person_id] or [person_id]

    def name(self, person_id: int) -> str:
        return self.conversation.people[person_id]

    def other_speaker(self, person_id: int) -> int:
        return self.rng.choice(self.others(person_id))

    def retold(self, person_id: int, plant: Plant) -> Plant:
        """Another person's planted turn as a distractor, without its key (retold by a friend in DMs)."""
        if len(self.conversation.people) == 1:
            return Plant(person_id, f"my friend was saying: {plant.text}")
        return Plant(plant.author_id, plant.text)

    def other(self, person_id: int, text: str) -> Plant:
        """Someone else saying `text`; in DMs, the person quoting a friend (it is not their own news)."""
        if len(self.conversation.people) == 1:
            return Plant(person_id, f"my friend was saying: {text}")
        return Plant(self.other_speaker(person_id), text)

    # Each maker returns the fact, and the question texts with the fact's keys.

    def pet(self, p: int) -> tuple[Fact, str, dict[str, str]]:
        animal, pet = self.value(ANIMALS, "animal"), self.value(PET_NAMES, "pet")
        key = self.key("pet")
        text = self.rng.choice(
            (
                f"we adopted a {animal} from the shelter this weekend, named {pet}",
                f"meet {pet}, the {animal} we adopted on saturday",
                f"finally adopted a rescue {animal}! her name is {pet}",
            )
        )
        distractors = [
            self.other(p, f"my {animal} {self.value(PET_NAMES, 'pet')} knocked the plant over again"),
            self.other(p, f"thinking about adopting a {animal} someday, are they a lot of work"),
            Plant(p, f"the shelter had so many {animal}s, it was hard to choose"),
        ]
        fact = Fact([Plant(p, text, key, reply=f"{pet} is such a good name for a {animal}!")], distractors)
        return (
            fact,
            key,
            {
                "named": f"what's the name of {self.name(p)}'s {animal}?",
                "paraphrase": f"what did {self.name(p)} call the {animal} from the adoption?",
                "topic": f"{animal} name",
                "plural": "animals has {name} adopted",
            },
        )

    def move(self, p: int) -> tuple[Fact, str, dict[str, str]]:
        city = self.value(CITIES, "city")
        key = self.key("move")
        text = self.rng.choice(
            (
                f"moved into my new apartment in {city} today, boxes everywhere",
                f"officially living in {city} now, the move took all weekend",
            )
        )
        distractors = [
            Plant(p, f"I might move to {city} next year if the lease thing works out"),
            Plant(p, f"found a great little cafe in {city}, the apartment is close to it"),
            Plant(p, f"{city} weather has been grim all week"),
            self.other(p, f"{city} was amazing when I visited, the food there"),
            self.other(p, "my cousin just moved apartments too, moving is the worst"),
        ]
        fact = Fact([Plant(p, text, key, reply=f"Welcome to {city}! How's the new apartment?")], distractors)
        return (
            fact,
            key,
            {
                "named": f"which city did {self.name(p)} move to?",
                "when": f"when did {self.name(p)} move to {city}?",
                "topic": f"moving to {city}",
                "plural": "cities has {name} moved to",
            },
        )

    def job(self, p: int) -> tuple[Fact, str, dict[str, str]]:
        company, role = self.value(COMPANIES, "company"), self.value(ROLES, "role")
        key = self.key("job")
        text = f"I got the {role} job at {company}! I start in two weeks"
        distractors = [
            self.other(p, f"{company} is hiring a {self.value(ROLES, 'role')}, anyone interested?"),
            Plant(p, f"interview at {company} tomorrow, so nervous about it"),
            Plant(p, f"long day at {company}, the new project is chaos"),
            self.other(p, f"my {role} job is wearing me out lately"),
        ]
        fact = Fact([Plant(p, text, key, reply=f"Congrats on the job at {company}!")], distractors)
        return (
            fact,
            key,
            {
                "named": f"where did {self.name(p)} get hired as a {role}?",
                "when": f"when did {self.name(p)} get the job at {company}?",
                "topic": f"job at {company}",
                "plural": "jobs has {name} been hired for",
            },
        )

    def hobby(self, p: int) -> tuple[Fact, str, dict[str, str]]:
        """A follow-up: someone asks about the class, the person answers in their next turn."""
        hobby = self.value(tuple(HOBBIES), "hobby")
        made = self.rng.choice(HOBBIES[hobby])
        key = self.key("hobby")
        if self.conversation.bot_replies and len(self.conversation.people) == 1:
            # In DMs the bot asks, in its reply to the person's news.
            opener = Plant(p, f"had my first {hobby} class tonight", reply=f"Ooh, how was the {hobby} class?")
        else:
            opener = self.other(p, f"{self.name(p)} how was your first {hobby} class?")
        answer = Plant(p, f"so fun! I made a wonky little {made}, it's drying now", key)
        distractors = [
            self.other(p, f"the {hobby} studio downtown has a waiting list"),
            Plant(p, f"signed up for a {hobby} class, first one is next week"),
        ]
        return (
            Fact([opener, answer], distractors),
            key,
            {
                "named": f"what did {self.name(p)} make in the {hobby} class?",
                "topic": f"{hobby} class",
                "plural": "classes has {name} taken",
            },
        )

    def allergy(self, p: int) -> tuple[Fact, str, dict[str, str]]:
        food, event = self.value(FOODS, "food"), self.rng.choice(FOOD_EVENTS)
        key = self.key("allergy")
        text = f"found out I'm allergic to {food}, ended up in urgent care after {event}"
        distractors = [
            self.other(p, f"I could eat {food} every single day honestly"),
            Plant(p, f"{event} was fun until the end"),
            Plant(p, f"reading every label now because of the {food} thing"),
            self.other(p, "is anyone else allergic to pollen? spring is brutal"),
        ]
        fact = Fact(
            [Plant(p, text, key, reply=f"Oh no, glad you're okay! Good to know about the {food}.")], distractors
        )
        return (
            fact,
            key,
            {
                "named": f"what food allergy does {self.name(p)} have?",
                "when": f"when did {self.name(p)} find out about the {food} allergy?",
                "topic": "food allergy",
                "plural": "foods is {name} allergic to",
            },
        )

    def instrument(self, p: int) -> tuple[Fact, str, dict[str, str]]:
        relative, instrument = self.value(RELATIVES, "relative"), self.value(INSTRUMENTS, "instrument")
        key = self.key("instrument")
        text = f"my {relative} gave me their old {instrument} for my birthday, learning scales now"
        distractors = [
            self.other(p, f"my {relative} is visiting for my birthday next week"),
            self.other(p, f"does anyone here play the {instrument}? I need a teacher"),
            Plant(p, f"practising the {instrument} every evening, my neighbors must hate me"),
        ]
        fact = Fact([Plant(p, text, key, reply=f"What a gift! The {instrument} is a lovely instrument.")], distractors)
        return (
            fact,
            key,
            {
                "named": f"who gave {self.name(p)} the {instrument}?",
                "topic": f"{instrument} gift",
                "plural": "birthday gifts has {name} been given",
            },
        )

    def trip(self, p: int) -> tuple[Fact, str, dict[str, str]]:
        place = self.value(tuple(PLACES), "place")
        mountain = PLACES[place]
        key = self.key("trip")
        text = f"back from {place}! we hiked up {mountain} on the last day, my legs are dead"
        distractors = [
            Plant(p, f"booking flights to {place} for the spring, any tips?"),
            Plant(p, f"still editing my photos from {place}, the hike was unreal"),
            self.other(p, f"{place} is on my list too, I hear the hiking is great"),
            self.other(p, "went hiking last weekend, the trail was so muddy"),
        ]
        fact = Fact([Plant(p, text, key, reply=f"Welcome back! Hiking {mountain} sounds epic.")], distractors)
        return (
            fact,
            key,
            {
                "named": f"which mountain did {self.name(p)} hike in {place}?",
                "when": f"when did {self.name(p)} go hiking in {place}?",
                "topic": f"trip to {place}",
                "plural": "mountains has {name} hiked",
            },
        )

    def book(self, p: int) -> tuple[Fact, str, dict[str, str]]:
        title, author = self.value(BOOK_TITLES, "title"), self.value(AUTHORS, "author")
        key = self.key("book")
        text = f"reading {title} by {author}, could not put it down last night"
        distractors = [
            self.other(p, f"anyone read anything by {author}? the library has a shelf of them"),
            Plant(p, "need a new book, last one was a slog"),
            self.other(p, "stayed up all night reading again"),
        ]
        fact = Fact([Plant(p, text, key, reply=f"{title} is on my list now!")], distractors)
        return (
            fact,
            key,
            {
                "named": f"which book by {author} was {self.name(p)} reading?",
                "topic": f"book by {author}",
                "plural": "books has {name} been reading",
            },
        )

    def makers(self) -> list[Callable[[int], tuple[Fact, str, dict[str, str]]]]:
        return [self.pet, self.move, self.job, self.hobby, self.allergy, self.instrument, self.trip, self.book]


# --------------------------------------------------------------------------------------------------
# Conversations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationPlan:
    key: str
    kind: str  # guild | dm | pair
    people: int
    channels: int
    sessions: int
    turns_per_session: tuple[int, int]
    facts: int  # facts planted (questions follow from them)


PLANS = (
    ConversationPlan("guild", "guild", people=12, channels=4, sessions=300, turns_per_session=(20, 60), facts=120),
    ConversationPlan("dm", "dm", people=1, channels=1, sessions=120, turns_per_session=(10, 40), facts=60),
    ConversationPlan("pair", "pair", people=2, channels=1, sessions=60, turns_per_session=(20, 45), facts=48),
)
HISTORY_DAYS = 720
GUILD_ID = 910_000_000_000_000_000
USER_ID_BASE = 710_000_000_000_000_000
CHANNEL_ID_BASE = 810_000_000_000_000_000


def generate(seed: int = SEED, *, scale: float = 1.0) -> RecallSet:
    """The whole set. `scale` shrinks every conversation's sessions and facts (a quick run)."""
    rng = random.Random(seed)
    vocabulary = Vocabulary.build(seed)
    conversations: dict[str, Conversation] = {}
    questions: list[Question] = []
    for index, plan in enumerate(PLANS):
        conversation = _conversation(plan, index, rng)
        layout = _layout(conversation, plan, index, rng, vocabulary)
        chat = ChatText(vocabulary, layout, random.Random(f"{seed}-{plan.key}-chat"))
        sessions = max(4, int(plan.sessions * scale))
        facts = max(4, int(plan.facts * scale))
        questions += _fill(
            conversation, plan, layout.scopes[0], chat, sessions, facts, random.Random(f"{seed}-{plan.key}")
        )
        conversations[plan.key] = conversation
    return RecallSet(conversations, questions)


def grown(recall_set: RecallSet, key: str, memories: int, seed: int = SEED) -> RecallSet:
    """The set with conversation `key` grown to `memories` turns by more chatter over the same two years.

    The facts and questions stay; thousands of turns more share their words.
    """
    conversation = recall_set.conversations[key]
    index = [plan.key for plan in PLANS].index(key)
    rng = random.Random(f"{seed}-{key}-grown")
    vocabulary = Vocabulary.build(seed)
    plan = PLANS[index]
    layout = _layout(conversation, plan, index, rng, vocabulary)
    chat = ChatText(vocabulary, layout, random.Random(f"{seed}-{key}-grown-chat"))
    start = HISTORY_END - HISTORY_DAYS * DAY
    people = list(conversation.people)
    extra = []
    for counter in range(memories - len(conversation.turns)):
        at = rng.uniform(start, HISTORY_END)
        extra.append(
            Turn(
                channel_id=rng.choice(conversation.channel_ids),
                author_id=(author := rng.choice(people)),
                author_name=conversation.people[author],
                user_text=chat.user_message(layout.scopes[0]),
                reply_text=chat.reply(layout.scopes[0]) if conversation.bot_replies else "",
                created_at=at,
                message_id=_snowflake(at, 0x200000 + counter),
            )
        )
    bigger = Conversation(
        conversation.key,
        conversation.scope,
        conversation.channel_ids,
        conversation.people,
        conversation.bot_replies,
        sorted([*conversation.turns, *extra], key=lambda turn: turn.created_at),
    )
    return RecallSet({**recall_set.conversations, key: bigger}, recall_set.questions)


def _conversation(plan: ConversationPlan, index: int, rng: random.Random) -> Conversation:
    names = rng.sample(PEOPLE, plan.people)
    people = {USER_ID_BASE + 1000 * index + i: name for i, name in enumerate(names)}
    channels = tuple(CHANNEL_ID_BASE + 1000 * index + c for c in range(plan.channels))
    if plan.kind == "dm":
        scope = Scope.for_dm(BOT_ID, next(iter(people)))
    else:
        scope = Scope.for_guild(BOT_ID, GUILD_ID + 1000 * index)
    return Conversation(plan.key, scope, channels, people, bot_replies=plan.kind != "pair")


def _layout(
    conversation: Conversation, plan: ConversationPlan, index: int, rng: random.Random, vocabulary: Vocabulary
) -> Layout:
    topics = tuple(rng.sample(vocabulary.words[150:6000], 25))
    scope = ScopeLayout(
        index, conversation.scope, plan.key, 0, conversation.channel_ids, tuple(conversation.people), topics
    )
    return Layout(None, (scope,), dict(conversation.people))  # type: ignore[arg-type]


def _fill(
    conversation: Conversation,
    plan: ConversationPlan,
    scope: ScopeLayout,
    chat: ChatText,
    session_count: int,
    fact_count: int,
    rng: random.Random,
) -> list[Question]:
    """Plan facts and questions, then write the sessions with the facts planted in them."""
    maker = FactMaker(rng, conversation)
    people = list(conversation.people)
    # Each session gets groups of planted turns; a group's turns follow one another.
    sessions: list[list[list[Plant]]] = [[] for _ in range(session_count)]
    asks: list[Ask] = []

    def place(fact: Fact, session: int) -> None:
        # The fact's turns go together; each distractor into a session of its own, before or after.
        sessions[session].append(fact.turns)
        for distractor in fact.distractors:
            sessions[rng.randrange(session_count)].append([distractor])

    def random_session(low: float = 0.0, high: float = 0.95) -> int:
        return rng.randrange(int(low * session_count), max(int(low * session_count) + 1, int(high * session_count)))

    makers = maker.makers()
    kinds = ("named_person", "temporal", "multi_session", "distractor", "long_gap", "follow_up")
    for n in range(fact_count):
        kind = kinds[n % len(kinds)]
        person = people[n % len(people)]
        if kind == "follow_up":
            candidates = [maker.hobby]
        elif kind == "temporal":
            candidates = [m for m in makers if m in (maker.move, maker.job, maker.allergy, maker.trip)]
        else:
            candidates = [m for m in makers if m != maker.hobby]
        make = candidates[(n // len(kinds)) % len(candidates)]
        fact, key, texts = make(person)
        if kind == "long_gap":
            place(fact, random_session(0.0, 0.1))
        elif kind == "temporal":
            place(fact, random_session(0.2, 0.95))
        elif kind == "multi_session":
            # A second fact of the same kind about the same person, in another session.
            second, second_key, _ = make(person)
            place(fact, random_session(0.0, 0.5))
            place(second, random_session(0.5, 0.95))
        elif kind == "distractor":
            # More people saying nearly the same thing.
            for _ in range(4):
                lookalike = make(maker.other_speaker(person))[0]
                fact.distractors.extend(maker.retold(person, plant) for plant in lookalike.turns)
            place(fact, random_session())
        else:
            place(fact, random_session())
        name = maker.name(person)
        if kind == "multi_session":
            asks.append(Ask(kind, f"which {texts['plural'].format(name=name)}?", (key, second_key)))
        elif kind == "temporal":
            asks.append(Ask(kind, texts["when"], (key,)))
        elif kind == "distractor":
            asks.append(Ask(kind, texts.get("paraphrase", texts["named"]), (key,)))
        else:
            asks.append(Ask(kind, texts["named"], (key,)))
        if plan.kind == "dm" and n % 2 == 0:
            text = f"{BOT_NAME}, it's {name}, do you remember what I said about my {texts['topic']}?"
            asks.append(Ask("dm_two_names", text, (key,)))

    message_ids: dict[str, int] = {}
    _write_sessions(conversation, plan, scope, chat, sessions, message_ids, rng)
    asked_at = HISTORY_END + DAY
    questions = []
    for ask in asks:
        asker = rng.choice(people)
        channel = rng.choice(conversation.channel_ids)
        questions.append(
            Question(
                conversation.key,
                channel,
                asker,
                ask.text,
                ask.kind,
                tuple(message_ids[key] for key in ask.keys),
                asked_at,
            )
        )
    return questions


def _write_sessions(
    conversation: Conversation,
    plan: ConversationPlan,
    scope: ScopeLayout,
    chat: ChatText,
    sessions: list[list[list[Plant]]],
    message_ids: dict[str, int],
    rng: random.Random,
) -> None:
    start = HISTORY_END - HISTORY_DAYS * DAY
    session_gap = HISTORY_DAYS * DAY / len(sessions)
    people = list(conversation.people)
    counter = 0
    dm_name = conversation.people[people[0]]
    for number, planted in enumerate(sessions):
        at = start + number * session_gap + rng.uniform(0, session_gap / 2)
        channel = rng.choice(conversation.channel_ids)
        length = rng.randint(*plan.turns_per_session)
        # Filler turns (None) with the planted groups at random places among them.
        lines: list[Plant | None] = [None] * length
        for group in planted:
            at_index = rng.randrange(len(lines) + 1)
            lines[at_index:at_index] = group
        for plant in lines:
            if plant is not None:
                author, text = plant.author_id, plant.text
                reply = plant.reply or chat.reply(scope)
            else:
                author = rng.choice(people)
                text = chat.user_message(scope)
                reply = chat.reply(scope)
                if plan.kind == "dm":
                    # In DMs both names are everywhere: the person addresses the bot, the bot the person.
                    if rng.random() < 0.4:
                        text = f"{BOT_NAME} {text}"
                    if rng.random() < 0.5:
                        reply = f"{dm_name}, {reply}"
            at += rng.uniform(30, 300)
            counter += 1
            message_id = _snowflake(at, counter)
            conversation.turns.append(
                Turn(
                    channel_id=channel,
                    author_id=author,
                    author_name=conversation.people[author],
                    user_text=text,
                    reply_text=reply if conversation.bot_replies else "",
                    created_at=at,
                    message_id=message_id,
                    reply_message_id=_snowflake(at + 2, counter) if conversation.bot_replies else None,
                )
            )
            if plant is not None and plant.key:
                message_ids[plant.key] = message_id


def _snowflake(at: float, counter: int) -> int:
    return ((int(at * 1000) - DISCORD_EPOCH_MS) << 22) | (counter & 0x3FFFFF)
