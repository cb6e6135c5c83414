"""An in-process fake Discord (gateway websocket + REST API) for driving the real discord.py client.

The fake binds an aiohttp server to 127.0.0.1 on a free port. Point discord.py at it and run a real
``commands.Bot`` against it::

    fake = FakeDiscord()
    fake.add_user(2, "alice")
    fake.add_guild(100, channel_ids=[101], member_ids=[2])
    await fake.start()
    with pointing_discord_py_at(fake):
        async with running_client(fake, bot):
            await fake.send_message(101, 2, f"<@{fake.bot_user_id}> hi")
            [reply] = await fake.wait_for_bot_messages()

Payload shapes follow what discord.py 2.7.1 parses (see ``discord/state.py``, ``message.py``,
``interactions.py``, ``app_commands/namespace.py``). Rules of thumb learned the hard way:

* JSON responses carry ``Content-Type: application/json`` exactly (no charset), or discord.py treats
  the body as text.
* Optional keys are omitted rather than sent as ``null``; keys Discord always sends (``avatar``,
  ``edited_timestamp``) are present even when null.
* Gateway frames are text: the client only inflates binary frames.

Sharding is Discord's: an IDENTIFY with ``shard: [id, count]`` opens that shard's session, which gets
only the events of guilds with ``(guild_id >> 22) % count == id`` (DMs: shard 0). Sessions of one
bot's shards may come from several clients at once; an IDENTIFY without ``shard`` gets everything.

Server-side behaviour that discord.py relies on Discord for is imitated where it is cheap and catches
real bugs: the 3 s deadline to answer an interaction, "already acknowledged", the first followup after
a deferral editing the "thinking" message, the 2000 character limit, empty messages, message-content
and message intents, allowed_mentions when deciding who a bot message pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import json
import mimetypes
import re
import secrets
import time
import uuid
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import yarl
from aiohttp import WSMsgType, web

with warnings.catch_warnings():
    # discord.py imports the stdlib ``audioop`` (voice support), deprecated since Python 3.11. Importing
    # it once here with that one warning silenced keeps ``-W error`` runs clean; later imports hit the
    # module cache. Import this module before ``discord`` in test files.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    with contextlib.suppress(ImportError):  # gone from the stdlib in 3.13 (audioop-lts replaces it)
        import audioop  # noqa: F401

    import discord
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

__all__ = [
    "DEFAULT_MEMBER_PERMISSIONS",
    "FakeDiscord",
    "FakeInteraction",
    "new_snowflake",
    "pointing_discord_py_at",
    "running_client",
    "shard_of",
    "snowflake_time",
]

JSON = dict[str, Any]

# ---------------------------------------------------------------------------------------------------
# Protocol constants
# ---------------------------------------------------------------------------------------------------

API_VERSION = 10
HEARTBEAT_INTERVAL_MS = 41_250
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # free tier; INTERACTION_CREATE must carry it
INTERACTION_DEADLINE = 3.0  # seconds Discord waits for the first interaction callback
MAX_CONTENT_LENGTH = 2000


class Op(enum.IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    RESUME = 6
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class Intent(enum.IntFlag):
    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15


class ChannelType(enum.IntEnum):
    GUILD_TEXT = 0
    DM = 1
    PUBLIC_THREAD = 11
    PRIVATE_THREAD = 12


class InteractionType(enum.IntEnum):
    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    AUTOCOMPLETE = 4


class CallbackType(enum.IntEnum):
    CHANNEL_MESSAGE = 4
    DEFERRED_CHANNEL_MESSAGE = 5
    DEFERRED_UPDATE_MESSAGE = 6
    UPDATE_MESSAGE = 7
    AUTOCOMPLETE_RESULT = 8
    MODAL = 9


class OptionType(enum.IntEnum):
    SUB_COMMAND = 1
    SUB_COMMAND_GROUP = 2
    STRING = 3
    INTEGER = 4
    BOOLEAN = 5
    USER = 6
    CHANNEL = 7
    ROLE = 8
    MENTIONABLE = 9
    NUMBER = 10
    ATTACHMENT = 11


class MessageType(enum.IntEnum):
    DEFAULT = 0
    REPLY = 19
    CHAT_INPUT_COMMAND = 20


EPHEMERAL = 1 << 6  # message flag
LOADING = 1 << 7  # message flag: the "Bot is thinking..." state after a deferral
GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19  # application flag

ADMINISTRATOR = discord.Permissions(administrator=True).value
MANAGE_MESSAGES = discord.Permissions(manage_messages=True).value
ALL_PERMISSIONS = discord.Permissions.all().value
# What Discord's default @everyone grants, minus @everyone pings: read, write, react, use commands.
DEFAULT_MEMBER_PERMISSIONS = discord.Permissions(
    create_instant_invite=True,
    change_nickname=True,
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    embed_links=True,
    attach_files=True,
    add_reactions=True,
    use_external_emojis=True,
    read_message_history=True,
    use_application_commands=True,
    connect=True,
    speak=True,
).value

# Seeing a channel and its past: what makes one public when @everyone has it there.
PUBLIC_CHANNEL_PERMISSIONS = discord.Permissions(view_channel=True, read_message_history=True).value
OVERWRITE_ROLE, OVERWRITE_MEMBER = 0, 1


def _overwrite(target_id: int, kind: int, *, allow: int = 0, deny: int = 0) -> JSON:
    return {"id": str(target_id), "type": kind, "allow": str(allow), "deny": str(deny)}


USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")

# ---------------------------------------------------------------------------------------------------
# Snowflakes
# ---------------------------------------------------------------------------------------------------

DISCORD_EPOCH_MS = 1_420_070_400_000
_last_snowflake = 0


def new_snowflake() -> int:
    """A fresh id, strictly increasing across the process, whose embedded time is now."""
    global _last_snowflake
    now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
    _last_snowflake = max(now, _last_snowflake + 1)
    return _last_snowflake


def snowflake_time(snowflake: int) -> datetime:
    return datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, tz=UTC)


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard whose session gets a guild's events, by Discord's rule; DMs (None) are on shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


def _iso_now() -> str:
    return datetime.now(UTC).isoformat()


class _Unset(enum.Enum):
    TOKEN = 0


FROM_CONTEXT: Literal[_Unset.TOKEN] = _Unset.TOKEN  # "derive this argument from the channel/message"

# ---------------------------------------------------------------------------------------------------
# World model
# ---------------------------------------------------------------------------------------------------


@dataclass
class FakeUser:
    id: int
    name: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> JSON:
        data: JSON = {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "avatar": None,  # always present on Discord; discord.py indexes it
            "public_flags": 0,
        }
        if self.global_name is not None:
            data["global_name"] = self.global_name
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int
    position: int = 0
    bot_id: int | None = None  # set for the role Discord makes for a bot when it joins

    def payload(self) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0},
            "hoist": False,
            "managed": self.bot_id is not None,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload


@dataclass
class FakeChannel:
    id: int
    type: ChannelType
    name: str = ""
    guild_id: int | None = None
    parent_id: int | None = None  # threads only
    recipient_id: int | None = None  # DMs only
    position: int = 0
    # Guild channels: Discord's permission overwrites. By default @everyone may see the channel
    # (@everyone's role grants nothing in this fake; members get their rights from roles).
    overwrites: list[JSON] = field(default_factory=list)
    thread_member_ids: list[int] = field(default_factory=list)  # private threads only


@dataclass
class FakeGuild:
    """A guild. Permissions come from roles only, so discord.py computes what interactions report:
    @everyone grants nothing, ordinary members share a "member" role with DEFAULT_MEMBER_PERMISSIONS,
    and ``set_member_permissions`` swaps a member onto a personal role."""

    id: int
    name: str
    owner_id: int
    member_ids: list[int]
    channel_ids: list[int]
    thread_ids: list[int]
    roles: dict[int, FakeRole]
    member_role_id: int
    personal_roles: dict[int, int] = field(default_factory=dict)  # user id -> role id
    joined_at: str = field(default_factory=_iso_now)

    def role_ids_of(self, user_id: int) -> list[int]:
        return [self.personal_roles.get(user_id, self.member_role_id)]

    def permissions_of(self, user_id: int) -> int:
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        value = self.roles[self.id].permissions
        for role_id in self.role_ids_of(user_id):
            value |= self.roles[role_id].permissions
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value


@dataclass(eq=False)
class FakeInteraction:
    """One INTERACTION_CREATE the test injected, and everything the bot answered to it."""

    id: int
    token: str
    type: InteractionType
    user_id: int
    guild_id: int | None
    channel_id: int
    payload: JSON  # the INTERACTION_CREATE data as dispatched
    source_message_id: int | None = None  # the message a clicked component lives on
    created: float = field(default_factory=time.monotonic)
    callback_type: int | None = None
    original_message_id: int | None = None
    message_ids: list[int] = field(default_factory=list)  # every message this interaction created
    choices: list[JSON] | None = None  # autocomplete answer
    modal: JSON | None = None
    responses: list[JSON] = field(default_factory=list)
    _fake: FakeDiscord | None = field(default=None, repr=False)

    @property
    def acknowledged(self) -> bool:
        return self.callback_type is not None

    async def wait_for_response(self, count: int = 1, timeout: float = 10) -> list[JSON]:
        """Wait until the bot made at least ``count`` responses (callback, followups, edits)."""
        assert self._fake is not None
        await self._fake._wait_until(
            lambda: len(self.responses) >= count,
            timeout,
            lambda: (
                f"interaction {self.id}: wanted {count} responses, got {len(self.responses)}: "
                f"{[(r['kind'], r['content']) for r in self.responses]}"
            ),
        )
        return list(self.responses)

    async def answer(self, timeout: float = 10) -> JSON:
        """The bot's answer: its first response, or after a deferral ("thinking…"), what followed it."""
        [first] = (await self.wait_for_response(1, timeout))[:1]
        if first["type"] != 5:
            return first
        return (await self.wait_for_response(2, timeout))[1]

    @property
    def original(self) -> JSON | None:
        """The original response message as it is now (after edits), or None."""
        assert self._fake is not None
        if self.original_message_id is None:
            return None
        message = self._fake._messages.get(self.original_message_id)
        return copy.deepcopy(message) if message is not None else None

    def text(self) -> str:
        """All response contents and embed texts, newline-joined, for substring asserts."""
        parts: list[str] = []
        for response in self.responses:
            parts.append(response["content"] or "")
            parts.extend(_embed_texts(response["embeds"]))
        return "\n".join(part for part in parts if part)


@dataclass(eq=False)
class _GatewayConnection:
    """One websocket. Frames go through a queue, so synchronous code can send and the order of
    frames is fixed when they are queued."""

    ws: web.WebSocketResponse
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    def send(self, op: Op, data: Any = None) -> None:
        self.queue.put_nowait(json.dumps({"op": int(op), "d": data}))

    async def pump(self) -> None:
        while True:
            frame = await self.queue.get()
            try:
                await self.ws.send_str(frame)  # text frames: discord.py only inflates binary ones
            except ConnectionError:
                return


@dataclass(eq=False)
class _Session:
    """A gateway session (one IDENTIFY). It outlives its connection: events dispatched while the
    client is away are kept and replayed when it RESUMEs, as Discord does."""

    id: str
    intents: int
    conn: _GatewayConnection | None = None
    shard: tuple[int, int] | None = None  # (shard id, shard count) from IDENTIFY; None: unsharded
    seq: int = 0
    frames: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=1000))  # for RESUME

    def runs(self, guild_id: int | None) -> bool:
        """Whether this session gets the events of this guild (None: of DMs)."""
        return self.shard is None or shard_of(guild_id, self.shard[1]) == self.shard[0]

    def dispatch(self, event: str, data: JSON) -> None:
        self.seq += 1
        frame = json.dumps({"op": int(Op.DISPATCH), "s": self.seq, "t": event, "d": data})
        self.frames.append((self.seq, frame))
        if self.conn is not None:
            self.conn.queue.put_nowait(frame)

    def resume(self, conn: _GatewayConnection, last_seq: int) -> None:
        self.conn = conn
        for seq, frame in self.frames:
            if seq > last_seq:
                conn.queue.put_nowait(frame)
        self.dispatch("RESUMED", {})


# ---------------------------------------------------------------------------------------------------
# The fake
# ---------------------------------------------------------------------------------------------------


class FakeDiscord:
    """Discord for one bot at a time (it may reconnect, or be replaced by a restarted process); a
    sharded bot holds one session per shard, from one client or several.

    Set up the world (``add_user``, ``add_guild``) before the bot connects, inject user activity
    (``send_message``, ``send_dm``, ``invoke``, ``autocomplete``, ``click``) and read what the bot did:
    ``bot_messages`` (channel POSTs), ``edits``, ``deleted``, ``typing``, ``reactions``, ``requests``,
    ``registered_commands`` and, per interaction, ``FakeInteraction.responses``. Every message's
    current state is available through ``get_message`` / ``channel_messages``.
    """

    def __init__(
        self,
        *,
        bot_user_id: int = 1000,
        bot_name: str = "Mnemo",
        application_id: int = 1000,
        app_owner_id: int = 1,
        echo_bot_messages: bool = True,
    ) -> None:
        self.bot_user_id = bot_user_id
        self.application_id = application_id
        self.app_owner_id = app_owner_id
        # Discord sends a bot its own messages and edits over the gateway; handlers must cope.
        self.echo_bot_messages = echo_bot_messages
        self.interaction_deadline = INTERACTION_DEADLINE
        # When set, REST calls made with another bot token get Discord's 401 (a login then fails).
        self.accepted_token: str | None = None
        # The application's team, if it has one: member user id -> role ("admin", "developer",
        # "read_only"). Change it at any time; GET /oauth2/applications/@me answers with it as it is.
        self.team_members: dict[int, str] | None = None
        # When set, GET /oauth2/applications/@me answers with this HTTP status instead.
        self.application_failure: int | None = None
        # The shard count GET /gateway/bot recommends (what a sharded client without one uses).
        self.recommended_shards = 1

        self.users: dict[int, FakeUser] = {bot_user_id: FakeUser(bot_user_id, bot_name, bot=True)}
        if app_owner_id not in self.users:
            self.users[app_owner_id] = FakeUser(app_owner_id, "owner")
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self._dm_channels: dict[int, int] = {}  # user id -> channel id

        # What the bot did.
        self.bot_messages: list[JSON] = []  # POST /channels/{id}/messages only; interactions record apart
        self.edits: list[JSON] = []  # PATCH /channels/{id}/messages/{id}
        self.deleted: list[int] = []  # message ids the bot deleted (channel or webhook route)
        self.typing: list[int] = []
        # Channels where the bot lacks Read Message History: Discord refuses its replies there.
        self.channels_without_history: set[int] = set()
        self.reactions: list[tuple[int, int, str]] = []  # (channel id, message id, emoji)
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []  # REST calls the fake has no route for
        self.presence_updates: list[JSON] = []
        self.registered_commands: list[JSON] = []
        self.guild_commands: dict[int, list[JSON]] = {}
        self.interactions: list[FakeInteraction] = []
        self.connections = 0  # IDENTIFYs seen
        self.identified_shards: list[tuple[int, int] | None] = []  # each IDENTIFY's shard, in order
        self.resumes = 0  # successful RESUMEs

        self._messages: dict[int, JSON] = {}  # every message, as REST would return it now
        self._attachment_bytes: dict[int, bytes] = {}
        self._interactions: dict[int, FakeInteraction] = {}
        self._post_delay = 0.0
        self._post_failures: list[tuple[int, float]] = []  # (status, retry_after)

        # The sessions by shard id (None: the unsharded one), connected or waiting for a RESUME; a
        # guild's events go to the one that runs its shard.
        self._sessions: dict[int | None, _Session] = {}
        self._connections: set[_GatewayConnection] = set()
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()  # replaced on every change; see _wait_until
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes([web.get("/gateway", self._gateway_handler), *self._rest_routes()])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        for conn in list(self._connections):
            await conn.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v{API_VERSION}"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.base_url.removeprefix('http://')}/gateway"

    @property
    def bot_user(self) -> FakeUser:
        return self.users[self.bot_user_id]

    # -- world setup --------------------------------------------------------------------------------

    def add_user(self, user_id: int, name: str, *, bot: bool = False, global_name: str | None = None) -> None:
        self.users[user_id] = FakeUser(user_id, name, bot=bot, global_name=global_name)

    def add_guild(
        self,
        guild_id: int,
        name: str = "guild",
        *,
        owner_id: int = 1,
        channel_ids: Iterable[int] = (),
        member_ids: Iterable[int] = (),
        threads: dict[int, int] | None = None,
    ) -> None:
        """Add a guild with text channels and threads (thread id -> parent channel id).

        The bot is always a member; so is the owner if it is a known user. Unknown member ids become
        users named ``user<id>``. Adding a guild while the bot is connected sends GUILD_CREATE (a join).
        """
        members = [self.bot_user_id, *member_ids]
        if owner_id in self.users:
            members.append(owner_id)
        for user_id in members:
            self.users.setdefault(user_id, FakeUser(user_id, f"user{user_id}"))
        member_role = FakeRole(new_snowflake(), "member", DEFAULT_MEMBER_PERMISSIONS, position=1)
        bot_role = FakeRole(
            new_snowflake(), self.bot_user.name, DEFAULT_MEMBER_PERMISSIONS, position=2, bot_id=self.bot_user_id
        )
        guild = FakeGuild(
            id=guild_id,
            name=name,
            owner_id=owner_id,
            member_ids=list(dict.fromkeys(members)),
            channel_ids=list(channel_ids),
            thread_ids=list(threads or {}),
            roles={
                guild_id: FakeRole(guild_id, "@everyone", 0),
                member_role.id: member_role,
                bot_role.id: bot_role,
            },
            member_role_id=member_role.id,
            personal_roles={self.bot_user_id: bot_role.id},
        )
        self.guilds[guild_id] = guild
        for position, channel_id in enumerate(guild.channel_ids):
            self.channels[channel_id] = FakeChannel(
                channel_id,
                ChannelType.GUILD_TEXT,
                f"channel-{position}",
                guild_id,
                position=position,
                overwrites=[_overwrite(guild_id, OVERWRITE_ROLE, allow=PUBLIC_CHANNEL_PERMISSIONS)],
            )
        for thread_id, parent_id in (threads or {}).items():
            self.channels[thread_id] = FakeChannel(
                thread_id, ChannelType.PUBLIC_THREAD, f"thread-{thread_id}", guild_id, parent_id=parent_id
            )
        if session := self._session_for(guild_id):
            session.dispatch("GUILD_CREATE", self._guild_create_payload(guild, new_join=True))

    def set_member_permissions(self, guild_id: int, user_id: int, permissions: int) -> None:
        """Give a member exactly ``permissions`` (through a personal role). Works for the bot too,
        which changes ``app_permissions``. The guild owner keeps every permission, as on Discord."""
        guild = self.guilds[guild_id]
        if user_id not in guild.member_ids:
            raise ValueError(f"user {user_id} is not a member of guild {guild_id}")
        role_id = guild.personal_roles.get(user_id)
        if role_id is None:
            role = FakeRole(new_snowflake(), f"perms-{user_id}", permissions, position=len(guild.roles))
            guild.roles[role.id] = role
            guild.personal_roles[user_id] = role.id
            event = "GUILD_ROLE_CREATE"
        else:
            role = guild.roles[role_id]
            role.permissions = permissions
            event = "GUILD_ROLE_UPDATE"
        session = self._session_for(guild_id)
        if session is not None:  # keep the connected client's cache in step
            session.dispatch(event, {"guild_id": str(guild_id), "role": role.payload()})
            if session.intents & Intent.GUILD_MEMBERS or user_id == self.bot_user_id:
                member_update = {"guild_id": str(guild_id), **self._member(guild, user_id)}
                session.dispatch("GUILD_MEMBER_UPDATE", member_update)

    def make_channel_private(self, channel_id: int, member_ids: Iterable[int]) -> None:
        """Only these members (and the bot) may see the channel: @everyone denied, them allowed."""
        channel = self.channels[channel_id]
        assert channel.guild_id is not None
        seeing = [self.bot_user_id, *member_ids]
        channel.overwrites = [
            _overwrite(channel.guild_id, OVERWRITE_ROLE, deny=PUBLIC_CHANNEL_PERMISSIONS),
            *(_overwrite(user_id, OVERWRITE_MEMBER, allow=PUBLIC_CHANNEL_PERMISSIONS) for user_id in seeing),
        ]
        if session := self._session_for(channel.guild_id):
            session.dispatch("CHANNEL_UPDATE", self._channel_payload(channel))

    def add_thread(
        self, thread_id: int, parent_id: int, *, private: bool = False, member_ids: Iterable[int] = ()
    ) -> None:
        """A thread in a guild channel (a private one, for `member_ids` and the bot): THREAD_CREATE."""
        parent = self.channels[parent_id]
        assert parent.guild_id is not None
        kind = ChannelType.PRIVATE_THREAD if private else ChannelType.PUBLIC_THREAD
        thread = FakeChannel(
            thread_id,
            kind,
            f"thread-{thread_id}",
            parent.guild_id,
            parent_id=parent_id,
            thread_member_ids=[self.bot_user_id, *member_ids],
        )
        self.channels[thread_id] = thread
        self.guilds[parent.guild_id].thread_ids.append(thread_id)
        if session := self._session_for(parent.guild_id):
            session.dispatch("THREAD_CREATE", self._channel_payload(thread) | {"newly_created": True})

    def dm_channel_id(self, user_id: int) -> int:
        """The DM channel between ``user_id`` and the bot, created on first use."""
        if user_id not in self._dm_channels:
            if user_id not in self.users:
                raise KeyError(f"unknown user {user_id}; add_user() first")
            channel = FakeChannel(new_snowflake(), ChannelType.DM, recipient_id=user_id)
            self.channels[channel.id] = channel
            self._dm_channels[user_id] = channel.id
        return self._dm_channels[user_id]

    def get_message(self, message_id: int) -> JSON:
        """A message as it is now (after edits)."""
        return copy.deepcopy(self._messages[int(message_id)])

    def channel_messages(self, channel_id: int) -> list[JSON]:
        """Every non-ephemeral message in a channel, oldest first."""
        return [
            copy.deepcopy(m)
            for m in sorted(self._messages.values(), key=lambda m: int(m["id"]))
            if int(m["channel_id"]) == channel_id and not m["flags"] & EPHEMERAL
        ]

    def attachment_bytes(self, attachment_id: int) -> bytes:
        return self._attachment_bytes[attachment_id]

    def _guild_of_channel(self, channel_id: int) -> FakeGuild | None:
        channel = self.channels.get(channel_id)
        if channel is None or channel.guild_id is None:
            return None
        return self.guilds[channel.guild_id]

    # -- payload builders ---------------------------------------------------------------------------

    def _member(self, guild: FakeGuild, user_id: int, *, with_user: bool = True, permissions: bool = False) -> JSON:
        data: JSON = {
            "roles": [str(role_id) for role_id in guild.role_ids_of(user_id)],
            "joined_at": guild.joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
        }
        if with_user:
            data["user"] = self.users[user_id].payload()
        if permissions:  # interactions carry the member's resolved permissions
            data["permissions"] = str(guild.permissions_of(user_id))
        return data

    def _mention(self, guild: FakeGuild | None, user_id: int) -> JSON:
        data = self.users[user_id].payload()
        if guild is not None and user_id in guild.member_ids:
            data["member"] = self._member(guild, user_id, with_user=False)
        return data

    def _channel_payload(self, channel: FakeChannel, *, permissions_for: int | None = None) -> JSON:
        if channel.type is ChannelType.DM:
            assert channel.recipient_id is not None
            return {
                "id": str(channel.id),
                "type": int(channel.type),
                "recipients": [self.users[channel.recipient_id].payload()],
                "flags": 0,
            }
        data: JSON = {
            "id": str(channel.id),
            "type": int(channel.type),
            "guild_id": str(channel.guild_id),
            "name": channel.name,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        if channel.type in (ChannelType.PUBLIC_THREAD, ChannelType.PRIVATE_THREAD):
            data |= {
                "parent_id": str(channel.parent_id),
                "owner_id": str(self.bot_user_id),
                "message_count": 0,
                "member_count": 1,
                "total_message_sent": 0,
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _iso_now(),
                    "locked": False,
                },
            }
        else:
            data |= {"position": channel.position, "permission_overwrites": channel.overwrites, "nsfw": False}
        if permissions_for is not None and channel.guild_id is not None:
            data["permissions"] = str(self.guilds[channel.guild_id].permissions_of(permissions_for))
        return data

    def _guild_create_payload(self, guild: FakeGuild, *, new_join: bool = False) -> JSON:
        channels = [self.channels[c] for c in guild.channel_ids]
        threads = [self.channels[t] for t in guild.thread_ids]
        data: JSON = {} if new_join else {"unavailable": False}  # decides guild_join vs guild_available
        return data | {
            "id": str(guild.id),
            "name": guild.name,
            "owner_id": str(guild.owner_id),
            "large": False,
            "joined_at": guild.joined_at,
            # Equal to len(members), or discord.py asks for member chunks and waits for them.
            "member_count": len(guild.member_ids),
            "members": [self._member(guild, user_id) for user_id in guild.member_ids],
            "roles": [role.payload() for role in guild.roles.values()],
            "channels": [self._channel_payload(c) for c in channels],
            "threads": [self._channel_payload(t) for t in threads],
            "features": [],
            "emojis": [],
            "stickers": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "preferred_locale": "en-US",
            "premium_tier": 0,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "afk_timeout": 300,
            "system_channel_flags": 0,
        }

    def _make_attachment(self, channel_id: int, spec: JSON, content: bytes | None = None) -> JSON:
        """An attachment payload whose url the fake itself serves (so ``Attachment.read()`` works)."""
        attachment_id = new_snowflake()
        filename = spec["filename"]
        if content is None:
            raw = spec.get("content", b"")
            content = raw.encode() if isinstance(raw, str) else raw
        self._attachment_bytes[attachment_id] = content
        url = f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{filename}"
        data: JSON = {
            "id": str(attachment_id),
            "filename": filename,
            "size": spec.get("size", len(content)),
            "url": url,
            "proxy_url": url,
        }
        content_type = spec.get("content_type") or mimetypes.guess_type(filename)[0]
        if content_type:
            data["content_type"] = content_type
        for key in ("description", "width", "height", "flags"):
            if key in spec:
                data[key] = spec[key]
        return data

    def _new_message(
        self,
        *,
        channel_id: int,
        author_id: int,
        content: str,
        mentions: Iterable[int] = (),
        mention_roles: Iterable[int] = (),
        mention_everyone: bool = False,
        reply_to: int | None = None,
        embeds: list[JSON] | None = None,
        components: list[JSON] | None = None,
        attachments: list[JSON] | None = None,
        flags: int = 0,
        msg_type: MessageType = MessageType.DEFAULT,
        interaction: FakeInteraction | None = None,
    ) -> JSON:
        """Build and store a message in the shape REST returns it (gateway adds ``member``)."""
        guild = self._guild_of_channel(channel_id)
        message_id = new_snowflake()
        message: JSON = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": self.users[author_id].payload(),
            "content": content,
            "timestamp": snowflake_time(message_id).isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": mention_everyone,
            "mentions": [self._mention(guild, user_id) for user_id in dict.fromkeys(mentions)],
            "mention_roles": [str(role_id) for role_id in dict.fromkeys(mention_roles)],
            "attachments": attachments or [],
            "embeds": embeds or [],
            "components": components or [],
            "pinned": False,
            "type": int(msg_type),
            "flags": flags,
        }
        if guild is not None:
            message["guild_id"] = str(guild.id)
        if reply_to is not None:
            target = self._messages[reply_to]
            reference: JSON = {"type": 0, "message_id": str(reply_to), "channel_id": target["channel_id"]}
            if guild is not None:
                reference["guild_id"] = str(guild.id)
            message["message_reference"] = reference
            # Discord nests the replied-to message one level deep.
            message["referenced_message"] = {
                k: copy.deepcopy(v) for k, v in target.items() if k != "referenced_message"
            }
            if msg_type is MessageType.DEFAULT:
                message["type"] = int(MessageType.REPLY)
        if interaction is not None:  # interaction responses are webhook messages of the application
            message["webhook_id"] = str(self.application_id)
            message["application_id"] = str(self.application_id)
            metadata: JSON = {
                "id": str(interaction.id),
                "type": int(interaction.type),
                "user": self.users[interaction.user_id].payload(),
                "authorizing_integration_owners": {"0": str(interaction.guild_id or 0)},
            }
            if interaction.source_message_id is not None:
                metadata["interacted_message_id"] = str(interaction.source_message_id)
            message["interaction_metadata"] = metadata
        self._messages[message_id] = message
        return message

    # -- gateway ------------------------------------------------------------------------------------

    async def _gateway_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _GatewayConnection(ws)
        self._connections.add(conn)
        writer = asyncio.create_task(conn.pump(), name="fake-discord-gateway-writer")
        try:
            conn.send(Op.HELLO, {"heartbeat_interval": HEARTBEAT_INTERVAL_MS})
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    self._on_gateway_payload(conn, json.loads(frame.data))
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self._connections.discard(conn)
            for session in self._sessions.values():
                if session.conn is conn:
                    session.conn = None
            self._update_ready()
            self._touch()
        return ws

    def _on_gateway_payload(self, conn: _GatewayConnection, payload: JSON) -> None:
        op, data = payload.get("op"), payload.get("d")
        if op == Op.HEARTBEAT:
            conn.send(Op.HEARTBEAT_ACK)
        elif op == Op.IDENTIFY:
            self._identify(conn, data)
        elif op == Op.RESUME:
            self._resume(conn, data)
        elif op == Op.REQUEST_GUILD_MEMBERS:
            self._send_member_chunk(data)
        elif op == Op.PRESENCE_UPDATE:
            self.presence_updates.append(data)

    def _identify(self, conn: _GatewayConnection, data: JSON) -> None:
        self.connections += 1
        shard = (int(data["shard"][0]), int(data["shard"][1])) if "shard" in data else None
        self.identified_shards.append(shard)
        session = _Session(uuid.uuid4().hex, data.get("intents", 0), conn, shard=shard)
        # The new session takes over its shard. Sessions sharded otherwise (or not at all) are of a
        # bot that restarted or re-sharded: they get nothing more.
        self._sessions = {
            key: other
            for key, other in self._sessions.items()
            if shard is not None and other.shard is not None and other.shard[1] == shard[1] and key != shard[0]
        }
        self._sessions[shard[0] if shard else None] = session
        guilds = [guild for guild in self.guilds.values() if session.runs(guild.id)]
        ready: JSON = {
            "v": API_VERSION,
            "user": self.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(guild.id), "unavailable": True} for guild in guilds],
            "session_id": session.id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": GATEWAY_MESSAGE_CONTENT_LIMITED},
            "private_channels": [],
        }
        if "shard" in data:  # AutoShardedClient expects its shard echoed
            ready["shard"] = data["shard"]
        session.dispatch("READY", ready)
        for guild in guilds:
            session.dispatch("GUILD_CREATE", self._guild_create_payload(guild))
        self._update_ready()
        self._touch()

    def _resume(self, conn: _GatewayConnection, data: JSON) -> None:
        session = next((s for s in self._sessions.values() if s.id == data.get("session_id")), None)
        if session is None:
            # The client must IDENTIFY afresh. discord.py waits 5 s before a non-initial IDENTIFY.
            conn.send(Op.INVALID_SESSION, False)
            return
        self.resumes += 1
        session.resume(conn, data.get("seq") or 0)
        self._update_ready()
        self._touch()

    def _update_ready(self) -> None:
        if self._sessions and all(session.conn is not None for session in self._sessions.values()):
            self._ready.set()
        else:
            self._ready.clear()

    def _send_member_chunk(self, data: JSON) -> None:
        guild = self.guilds[int(data["guild_id"])]
        wanted = {int(u) for u in data.get("user_ids") or []}
        query = (data.get("query") or "").lower()
        members = [
            self._member(guild, user_id)
            for user_id in guild.member_ids
            if (not wanted or user_id in wanted) and self.users[user_id].name.lower().startswith(query)
        ]
        chunk: JSON = {"guild_id": str(guild.id), "members": members, "chunk_index": 0, "chunk_count": 1}
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        if session := self._session_for(guild.id, required=True):
            session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    def _session_for(self, guild_id: int | None, *, required: bool = False) -> _Session | None:
        """The session that gets this guild's events (None: DMs'), or None if no session runs its
        shard: Discord then delivers them to nobody. ``required``: fail if no bot IDENTIFYed yet."""
        if required and not self._sessions:
            raise RuntimeError("no bot has connected to the fake gateway (did it IDENTIFY yet?)")
        return next((s for s in self._sessions.values() if s.runs(guild_id)), None)

    def connected_shards(self) -> list[tuple[int, int] | None]:
        """(shard id, shard count) of every session with a live connection; None for an unsharded one."""
        return [s.shard for s in self._sessions.values() if s.conn is not None]

    async def wait_until_ready(self, timeout: float = 10) -> None:
        """Wait until a client has IDENTIFYed and was sent READY and every GUILD_CREATE (or has
        RESUMEd); with shards, until every shard's session is connected."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no client IDENTIFYed within {timeout}s") from None

    async def wait_for_connections(self, count: int, timeout: float = 10) -> None:
        """Wait until ``count`` IDENTIFYs have been seen in total (for reconnect/restart tests)."""
        await self._wait_until(
            lambda: self.connections >= count and self._ready.is_set(),
            timeout,
            lambda: f"wanted {count} IDENTIFYs, saw {self.connections}",
        )

    async def disconnect(self, code: int = 4000, *, resumable: bool = True, shard_id: int | None = None) -> None:
        """Drop the bot's gateway connection (every shard's, or ``shard_id``'s) from the server side,
        as Discord sometimes does.

        discord.py then RESUMEs, and gets the events it missed. With ``resumable=False`` the RESUME
        is refused and the client IDENTIFYs again, which discord.py delays by 5 s.
        """
        if not self._sessions:
            raise RuntimeError("no bot has connected to the fake gateway (did it IDENTIFY yet?)")
        sessions = [s for s in self._sessions.values() if shard_id is None or (s.shard or (0, 1))[0] == shard_id]
        if not sessions or any(session.conn is None for session in sessions):
            raise RuntimeError("the bot is not connected right now")
        for session in sessions:
            assert session.conn is not None
            conn = session.conn
            if not resumable:
                session.id = "expired"
            await conn.ws.close(code=code)

    def _dispatch_message_event(self, event: str, message: JSON, *, required: bool) -> None:
        guild_id = int(message["guild_id"]) if "guild_id" in message else None
        session = self._session_for(guild_id, required=required)
        if session is None:
            return
        needed = Intent.GUILD_MESSAGES if "guild_id" in message else Intent.DIRECT_MESSAGES
        if not session.intents & needed:
            return  # Discord only sends message events for subscribed intents
        if event == "MESSAGE_DELETE":
            data = {key: message[key] for key in ("id", "channel_id", "guild_id") if key in message}
        else:
            data = self._gateway_message(session, message)
        session.dispatch(event, data)

    def _gateway_message(self, session: _Session, message: JSON) -> JSON:
        data = copy.deepcopy(message)
        guild = self.guilds.get(int(message["guild_id"])) if "guild_id" in message else None
        author_id = int(message["author"]["id"])
        if guild is not None and "webhook_id" not in message and author_id in guild.member_ids:
            data["member"] = self._member(guild, author_id, with_user=False)
        visible = (
            guild is None
            or session.intents & Intent.MESSAGE_CONTENT
            or author_id == self.bot_user_id
            or any(int(u["id"]) == self.bot_user_id for u in message["mentions"])
        )
        if not visible:  # without the MESSAGE_CONTENT intent Discord blanks these fields
            data |= {"content": "", "embeds": [], "attachments": [], "components": []}
            data.pop("poll", None)
        return data

    # -- injecting user activity --------------------------------------------------------------------

    async def send_message(
        self,
        channel_id: int,
        author_id: int,
        content: str = "",
        *,
        guild_id: int | Literal[_Unset.TOKEN] | None = FROM_CONTEXT,
        mentions: Iterable[int] = (),
        mention_everyone: bool = False,
        mention_roles: Iterable[int] = (),
        reply_to: int | str | None = None,
        reply_mention: bool = True,
        attachments: list[JSON] | None = None,
        embeds: list[JSON] | None = None,
        forward_of: int | str | None = None,
    ) -> JSON:
        """A user posts a message (MESSAGE_CREATE); returns the stored payload.

        User and role mentions are also parsed from ``content``. ``reply_to`` may name any stored
        message; the reply then pings its author (unless ``reply_mention=False``), as Discord's client
        does by default. ``attachments`` items need ``filename`` and may carry ``content`` (bytes/str),
        which the fake serves at the attachment url. Ids may be given as ints or as the strings
        found in payloads.
        """
        channel_id = int(channel_id)
        reply_to = int(reply_to) if reply_to is not None else None
        channel = self.channels.get(channel_id)
        if channel is None:
            raise KeyError(f"unknown channel {channel_id}")
        if author_id not in self.users:
            raise KeyError(f"unknown user {author_id}; add_user() first")
        guild = self._guild_of_channel(channel_id)
        if guild_id is not FROM_CONTEXT and guild_id != (guild.id if guild else None):
            raise ValueError(f"channel {channel_id} belongs to guild {guild.id if guild else None}")
        if guild is not None and author_id not in guild.member_ids:
            raise ValueError(f"user {author_id} is not a member of guild {guild.id}")
        if channel.type is ChannelType.DM and author_id not in (channel.recipient_id, self.bot_user_id):
            raise ValueError(f"user {author_id} is not part of DM channel {channel_id}")
        if reply_to is not None and reply_to not in self._messages:
            raise KeyError(f"cannot reply to unknown message {reply_to}")

        user_ids = [*mentions, *(int(m) for m in USER_MENTION.findall(content))]
        if reply_to is not None and reply_mention:
            user_ids.append(int(self._messages[reply_to]["author"]["id"]))
        message = self._new_message(
            channel_id=channel_id,
            author_id=author_id,
            content=content,
            mentions=[u for u in user_ids if u in self.users],
            mention_roles=[*mention_roles, *(int(r) for r in ROLE_MENTION.findall(content))],
            mention_everyone=mention_everyone,
            reply_to=reply_to,
            embeds=embeds,
            attachments=[self._make_attachment(channel_id, spec) for spec in attachments or []],
        )
        if forward_of is not None:
            self._make_forward(message, int(forward_of))
        self._dispatch_message_event("MESSAGE_CREATE", message, required=True)
        return copy.deepcopy(message)

    def delete_message(self, message_id: int) -> None:
        """Someone (its author, a moderator) deletes a message: MESSAGE_DELETE, with its ids only."""
        message = self._messages.pop(int(message_id))
        self._dispatch_message_event("MESSAGE_DELETE", message, required=True)

    def bulk_delete_messages(self, channel_id: int, message_ids: Iterable[int]) -> None:
        """A moderator purges messages at once: one MESSAGE_DELETE_BULK."""
        ids = [int(m) for m in message_ids]
        for message_id in ids:
            self._messages.pop(message_id, None)
        data: JSON = {"ids": [str(m) for m in ids], "channel_id": str(channel_id)}
        guild = self._guild_of_channel(channel_id)
        if guild is not None:
            data["guild_id"] = str(guild.id)
        session = self._session_for(guild.id if guild is not None else None, required=True)
        if session is None:
            return
        if session.intents & (Intent.GUILD_MESSAGES if guild is not None else Intent.DIRECT_MESSAGES):
            session.dispatch("MESSAGE_DELETE_BULK", data)

    def edit_message(self, message_id: int, content: str) -> JSON:
        """Its author edits a message: MESSAGE_UPDATE with the whole new message."""
        message = self._messages[int(message_id)]
        message["content"] = content
        message["edited_timestamp"] = _iso_now()
        self._dispatch_message_event("MESSAGE_UPDATE", message, required=True)
        return copy.deepcopy(message)

    def delete_channel(self, channel_id: int) -> None:
        """A channel (with its threads) or a thread is deleted: CHANNEL_DELETE, or THREAD_DELETE
        with the thread's ids only, as Discord sends it; their messages go with them."""
        channel = self.channels.pop(channel_id)
        assert channel.guild_id is not None
        guild = self.guilds[channel.guild_id]
        if channel.type in (ChannelType.PUBLIC_THREAD, ChannelType.PRIVATE_THREAD):
            guild.thread_ids.remove(channel_id)
            event, payload = (
                "THREAD_DELETE",
                {
                    "id": str(channel_id),
                    "guild_id": str(channel.guild_id),
                    "parent_id": str(channel.parent_id),
                    "type": int(channel.type),
                },
            )
        else:
            guild.channel_ids.remove(channel_id)
            for thread_id in [t for t in guild.thread_ids if self.channels[t].parent_id == channel_id]:
                guild.thread_ids.remove(thread_id)
                self.channels.pop(thread_id)
            event, payload = "CHANNEL_DELETE", self._channel_payload(channel)
        if session := self._session_for(channel.guild_id):
            session.dispatch(event, payload)

    def remove_bot_from_guild(self, guild_id: int) -> None:
        """The bot is kicked from (or leaves) a guild: GUILD_DELETE without `unavailable`."""
        guild = self.guilds.pop(guild_id)
        for channel_id in [*guild.channel_ids, *guild.thread_ids]:
            self.channels.pop(channel_id, None)
        if session := self._session_for(guild_id, required=True):
            session.dispatch("GUILD_DELETE", {"id": str(guild_id)})

    def _make_forward(self, message: JSON, forwarded_id: int) -> None:
        """Turn ``message`` into a forward of a stored message: empty content, a type 1 reference,
        and a snapshot of the forwarded message, as Discord sends them."""
        if message["content"]:
            raise ValueError("a forward carries no content of its own")
        target = self._messages[forwarded_id]
        reference: JSON = {"type": 1, "message_id": str(forwarded_id), "channel_id": target["channel_id"]}
        if "guild_id" in target:
            reference["guild_id"] = target["guild_id"]
        message["message_reference"] = reference
        fields = ("type", "content", "embeds", "attachments", "timestamp", "edited_timestamp", "flags", "components")
        message["message_snapshots"] = [{"message": {key: copy.deepcopy(target[key]) for key in fields}}]

    async def send_dm(self, user_id: int, content: str, **kw: Any) -> JSON:
        """The user DMs the bot. DMs get no CHANNEL_CREATE: discord.py makes a DMChannel from the
        message itself (its ``recipient`` is then unknown until the bot fetches the channel)."""
        return await self.send_message(self.dm_channel_id(user_id), user_id, content, guild_id=None, **kw)

    # -- waiting ------------------------------------------------------------------------------------

    def _touch(self) -> None:
        """Wake everything in _wait_until. Replacing the event makes this safe from sync code."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"after {timeout}s: {describe()}") from None

    async def wait_for_bot_messages(
        self, count: int = 1, *, channel_id: int | None = None, timeout: float = 10
    ) -> list[JSON]:
        """Wait for at least ``count`` channel messages from the bot (in ``channel_id`` if given)."""

        def matching() -> list[JSON]:
            return [m for m in self.bot_messages if channel_id is None or m["channel_id"] == channel_id]

        await self._wait_until(
            lambda: len(matching()) >= count,
            timeout,
            lambda: (
                f"wanted {count} bot messages, got {[m['content'] for m in matching()]}; "
                f"requests so far: {self.requests[-10:]}"
            ),
        )
        return matching()

    # -- failure injection --------------------------------------------------------------------------

    def delay_message_posts(self, seconds: float) -> None:
        """Answer every later POST /channels/{id}/messages after ``seconds``."""
        self._post_delay = seconds

    def fail_message_posts(self, status: int, times: int = 1, *, retry_after: float = 0.05) -> None:
        """The next ``times`` POST /channels/{id}/messages answer ``status`` with a Discord-shaped
        error. Note discord.py retries 429 (after ``retry_after``) and 500/502/504 (after 1 s, 3 s, ...)
        by itself."""
        self._post_failures.extend([(status, retry_after)] * times)

    # -- REST plumbing ------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        api_prefix = f"/api/v{API_VERSION}"
        is_api = request.path.startswith(api_prefix)
        if is_api:
            self.requests.append((request.method, request.path.removeprefix(api_prefix)))
        authorization = request.headers.get("Authorization", "")
        if is_api and self.accepted_token is not None and authorization.startswith("Bot "):
            if authorization != f"Bot {self.accepted_token}":
                self._touch()
                return _error(401, 0, "401: Unauthorized")
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            if not is_api:
                raise
            self.unhandled.append((request.method, request.path.removeprefix(api_prefix)))
            return _error(404, 0, "404: Not Found")
        finally:
            self._touch()

    def _rest_routes(self) -> list[web.RouteDef]:
        api = f"/api/v{API_VERSION}"
        messages = f"{api}/channels/{{channel_id}}/messages"
        app_commands = f"{api}/applications/{{application_id}}"
        webhook = f"{api}/webhooks/{{application_id}}/{{token}}"
        routes = [
            web.get(f"{api}/gateway", self._get_gateway),
            web.get(f"{api}/gateway/bot", self._get_gateway_bot),
            web.get(f"{api}/users/@me", self._get_me),
            web.post(f"{api}/users/@me/channels", self._create_dm),
            web.get(f"{api}/users/{{user_id}}", self._get_user),
            web.get(f"{api}/oauth2/applications/@me", self._get_application),
            web.get(f"{api}/guilds/{{guild_id}}/members/{{user_id}}", self._get_member),
            web.get(f"{api}/channels/{{channel_id}}", self._get_channel),
            web.post(f"{api}/channels/{{channel_id}}/typing", self._post_typing),
            web.get(messages, self._get_history),
            web.post(messages, self._post_message),
            web.get(f"{messages}/{{message_id}}", self._get_channel_message),
            web.patch(f"{messages}/{{message_id}}", self._edit_channel_message),
            web.delete(f"{messages}/{{message_id}}", self._delete_channel_message),
            web.put(f"{messages}/{{message_id}}/reactions/{{emoji}}/@me", self._add_reaction),
            web.delete(f"{messages}/{{message_id}}/reactions/{{emoji}}/@me", self._remove_reaction),
            web.post(f"{api}/interactions/{{interaction_id}}/{{token}}/callback", self._interaction_callback),
            web.post(webhook, self._followup),
            web.get(f"{webhook}/messages/{{message_id}}", self._get_webhook_message),
            web.patch(f"{webhook}/messages/{{message_id}}", self._edit_webhook_message),
            web.delete(f"{webhook}/messages/{{message_id}}", self._delete_webhook_message),
            web.get("/attachments/{channel_id}/{attachment_id}/{filename}", self._get_attachment),
        ]
        for base in (f"{app_commands}/commands", f"{app_commands}/guilds/{{guild_id}}/commands"):
            routes += [
                web.get(base, self._list_commands),
                web.put(base, self._put_commands),
                web.post(base, self._post_command),
                web.get(f"{base}/{{command_id}}", self._get_command),
                web.patch(f"{base}/{{command_id}}", self._patch_command),
                web.delete(f"{base}/{{command_id}}", self._delete_command),
            ]
        return routes

    # -- REST: session and lookups ------------------------------------------------------------------

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": self.recommended_shards, "session_start_limit": limit})

    async def _get_me(self, request: web.Request) -> web.Response:
        return _json(self.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0})

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(_id(request, "user_id"))
        return _json(user.payload()) if user else _error(404, 10013, "Unknown User")

    async def _get_application(self, request: web.Request) -> web.Response:
        if self.application_failure is not None:
            return _injected_error(self.application_failure, retry_after=0.05)
        application: JSON = {  # without "team", discord.py takes ``owner`` as the only owner
            "id": str(self.application_id),
            "name": self.bot_user.name,
            "description": "",
            "icon": None,
            "bot_public": False,
            "bot_require_code_grant": False,
            "owner": self.users[self.app_owner_id].payload(),
            "verify_key": "0" * 64,
            "flags": GATEWAY_MESSAGE_CONTENT_LIMITED,
            "bot": self.bot_user.payload(),
        }
        if self.team_members is not None:
            team_id = str(self.application_id + 1)
            application["team"] = {
                "id": team_id,
                "name": "team",
                "icon": None,
                "owner_user_id": str(self.app_owner_id),
                "members": [
                    {
                        "membership_state": 2,  # accepted
                        "permissions": ["*"],
                        "team_id": team_id,
                        "role": role,
                        "user": self.users[user_id].payload(),
                    }
                    for user_id, role in self.team_members.items()
                ],
            }
        return _json(application)

    async def _get_member(self, request: web.Request) -> web.Response:
        guild = self.guilds.get(_id(request, "guild_id"))
        if guild is None:
            return _error(404, 10004, "Unknown Guild")
        user_id = _id(request, "user_id")
        if user_id not in guild.member_ids:
            return _error(404, 10007, "Unknown Member")
        return _json(self._member(guild, user_id))

    async def _create_dm(self, request: web.Request) -> web.Response:
        body = await request.json()
        user_id = int(body["recipient_id"])
        if user_id not in self.users:
            return _error(400, 50007, "Cannot send messages to this user")
        return _json(self._channel_payload(self.channels[self.dm_channel_id(user_id)]))

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self.channels.get(_id(request, "channel_id"))
        return _json(self._channel_payload(channel)) if channel else _error(404, 10003, "Unknown Channel")

    async def _post_typing(self, request: web.Request) -> web.Response:
        self.typing.append(_id(request, "channel_id"))
        return web.Response(status=204)

    async def _get_attachment(self, request: web.Request) -> web.Response:
        content = self._attachment_bytes.get(_id(request, "attachment_id"))
        if content is None:
            return web.Response(status=404)
        return web.Response(body=content, content_type="application/octet-stream")

    # -- REST: channel messages ---------------------------------------------------------------------

    def _channel_message(self, request: web.Request) -> JSON | None:
        message = self._messages.get(_id(request, "message_id"))
        if message is None or message["channel_id"] != request.match_info["channel_id"]:
            return None
        return None if message["flags"] & EPHEMERAL else message

    async def _get_history(self, request: web.Request) -> web.Response:
        channel_id = _id(request, "channel_id")
        if channel_id not in self.channels:
            return _error(404, 10003, "Unknown Channel")
        limit = int(request.query.get("limit", 50))
        history = self.channel_messages(channel_id)  # oldest first
        if "before" in request.query:
            history = [m for m in history if int(m["id"]) < int(request.query["before"])][-limit:]
        elif "after" in request.query:
            history = [m for m in history if int(m["id"]) > int(request.query["after"])][:limit]
        else:
            history = history[-limit:]
        return _json(history[::-1])  # Discord returns newest first

    async def _get_channel_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        return _json(message) if message else _error(404, 10008, "Unknown Message")

    async def _post_message(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        if self._post_delay:
            await asyncio.sleep(self._post_delay)
        if self._post_failures:
            return _injected_error(*self._post_failures.pop(0))
        channel_id = _id(request, "channel_id")
        if channel_id not in self.channels:
            return _error(404, 10003, "Unknown Channel")
        body, files = await _read_body(request)
        problem = self._message_problem(body, files)
        if problem is not None:
            return problem
        reply_to = None
        if reference := body.get("message_reference"):
            if channel_id in self.channels_without_history:
                return _error(403, 160002, "Cannot reply without permission to read message history")
            reply_to = int(reference["message_id"])
            if reply_to not in self._messages:
                if reference.get("fail_if_not_exists", True):
                    return _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
                reply_to = None
        message = self._bot_message(channel_id, body, files, reply_to=reply_to)
        record: JSON = {
            "id": int(message["id"]),
            "channel_id": channel_id,
            "guild_id": int(message["guild_id"]) if "guild_id" in message else None,
            "content": body.get("content") or "",
            "message_reference": body.get("message_reference"),
            "embeds": body.get("embeds") or [],
            "components": body.get("components") or [],
            "flags": body.get("flags") or 0,
            "attachments": message["attachments"],
            "files": [{"filename": name, "content": data} for name, data in files.values()],
            "mentions": [int(u["id"]) for u in message["mentions"]],
            "mention_everyone": message["mention_everyone"],
            "time": arrived,
            "payload": body,
        }
        if "allowed_mentions" in body:
            record["allowed_mentions"] = body["allowed_mentions"]
        self.bot_messages.append(record)
        self._echo("MESSAGE_CREATE", message)
        return _json(message)

    async def _edit_channel_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        if message is None:
            return _error(404, 10008, "Unknown Message")
        if int(message["author"]["id"]) != self.bot_user_id:
            return _error(403, 50005, "Cannot edit a message authored by another user")
        body, files = await _read_body(request)
        problem = self._message_problem(body, files, editing=True)
        if problem is not None:
            return problem
        self._apply_edit(message, body, files)
        self.edits.append(
            {
                "id": int(message["id"]),
                "channel_id": int(message["channel_id"]),
                "content": message["content"],
                "embeds": message["embeds"],
                "components": message["components"],
                "time": time.monotonic(),
                "payload": body,
            }
        )
        self._echo("MESSAGE_UPDATE", message)
        return _json(message)

    async def _delete_channel_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        if message is None:
            return _error(404, 10008, "Unknown Message")
        guild = self._guild_of_channel(int(message["channel_id"]))
        own = int(message["author"]["id"]) == self.bot_user_id
        if not own and (guild is None or not guild.permissions_of(self.bot_user_id) & MANAGE_MESSAGES):
            return _error(403, 50013, "Missing Permissions")
        self._delete(message)
        return web.Response(status=204)

    async def _add_reaction(self, request: web.Request) -> web.Response:
        if self._channel_message(request) is None:
            return _error(404, 10008, "Unknown Message")
        self.reactions.append((_id(request, "channel_id"), _id(request, "message_id"), request.match_info["emoji"]))
        return web.Response(status=204)

    async def _remove_reaction(self, request: web.Request) -> web.Response:
        entry = (_id(request, "channel_id"), _id(request, "message_id"), request.match_info["emoji"])
        if entry in self.reactions:
            self.reactions.remove(entry)
        return web.Response(status=204)

    def _message_problem(
        self, body: JSON, files: dict[int, tuple[str, bytes]], *, editing: bool = False
    ) -> web.Response | None:
        """The error Discord would answer for this message body, or None."""
        content = body.get("content") or ""
        if len(content) > MAX_CONTENT_LENGTH:
            return _form_error("content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT_LENGTH} or fewer in length.")
        if problem := _embed_problem(body.get("embeds") or []):
            return _form_error("embeds", "BASE_TYPE_MAX_LENGTH", problem)
        has_anything = content or body.get("embeds") or body.get("components") or files or body.get("poll")
        if not editing and not has_anything and not body.get("sticker_ids"):
            return _error(400, 50006, "Cannot send an empty message")
        return None

    def _attachments(
        self, channel_id: int, body: JSON, files: dict[int, tuple[str, bytes]], old: list[JSON]
    ) -> list[JSON]:
        """Resolve ``attachments`` of a create/edit body: upload indexes become new attachments,
        ids of existing attachments are kept."""
        kept = {a["id"]: a for a in old}
        result = []
        for spec in body.get("attachments", []):
            key = str(spec["id"])
            if key in kept:
                result.append(kept[key])
            elif int(key) in files:
                filename, content = files[int(key)]
                result.append(self._make_attachment(channel_id, {**spec, "filename": filename}, content))
        return result

    def _pings(self, content: str, body: JSON, reply_to: int | None) -> tuple[list[int], list[int], bool]:
        """Who a bot message pings: content mentions filtered through allowed_mentions."""
        users = [u for u in map(int, USER_MENTION.findall(content)) if u in self.users]
        roles = [int(r) for r in ROLE_MENTION.findall(content)]
        everyone = "@everyone" in content or "@here" in content
        allowed = body.get("allowed_mentions")
        if allowed is None:  # no allowed_mentions: Discord parses everything
            replied_user = True
        else:
            parse = set(allowed.get("parse", []))
            explicit_users = {int(u) for u in allowed.get("users", [])}
            explicit_roles = {int(r) for r in allowed.get("roles", [])}
            users = [u for u in users if "users" in parse or u in explicit_users]
            roles = [r for r in roles if "roles" in parse or r in explicit_roles]
            everyone = everyone and "everyone" in parse
            replied_user = allowed.get("replied_user", False)
        if reply_to is not None and replied_user:
            users.append(int(self._messages[reply_to]["author"]["id"]))
        return users, roles, everyone

    def _bot_message(
        self,
        channel_id: int,
        body: JSON,
        files: dict[int, tuple[str, bytes]],
        *,
        reply_to: int | None = None,
        flags: int | None = None,
        interaction: FakeInteraction | None = None,
    ) -> JSON:
        content = body.get("content") or ""
        users, roles, everyone = self._pings(content, body, reply_to)
        command_reply = interaction is not None and interaction.type is InteractionType.APPLICATION_COMMAND
        return self._new_message(
            channel_id=channel_id,
            author_id=self.bot_user_id,
            content=content,
            mentions=users,
            mention_roles=roles,
            mention_everyone=everyone,
            reply_to=reply_to,
            embeds=body.get("embeds"),
            components=body.get("components"),
            attachments=self._attachments(channel_id, body, files, []),
            flags=(body.get("flags") or 0) if flags is None else flags,
            msg_type=MessageType.CHAT_INPUT_COMMAND if command_reply else MessageType.DEFAULT,
            interaction=interaction,
        )

    def _apply_edit(self, message: JSON, body: JSON, files: dict[int, tuple[str, bytes]]) -> None:
        for key in ("content", "embeds", "components"):
            if key in body:
                message[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        if "attachments" in body:
            message["attachments"] = self._attachments(int(message["channel_id"]), body, files, message["attachments"])
        # Ephemerality is fixed at creation; an edit ends the "thinking" state.
        flags = message["flags"] & EPHEMERAL
        rest = body["flags"] if body.get("flags") is not None else message["flags"]
        message["flags"] = flags | (rest & ~(EPHEMERAL | LOADING))
        if "content" in body or "allowed_mentions" in body:
            users, roles, everyone = self._pings(message["content"], body, None)
            guild = self._guild_of_channel(int(message["channel_id"]))
            message["mentions"] = [self._mention(guild, u) for u in dict.fromkeys(users)]
            message["mention_roles"] = [str(r) for r in roles]
            message["mention_everyone"] = everyone
        message["edited_timestamp"] = _iso_now()

    def _delete(self, message: JSON) -> None:
        del self._messages[int(message["id"])]
        self.deleted.append(int(message["id"]))
        self._echo("MESSAGE_DELETE", message)

    def _echo(self, event: str, message: JSON) -> None:
        if self.echo_bot_messages and not message["flags"] & EPHEMERAL:
            self._dispatch_message_event(event, message, required=False)

    # -- REST: application commands -----------------------------------------------------------------

    def _command_pool(self, request: web.Request) -> tuple[list[JSON], int | None] | None:
        if _id(request, "application_id") != self.application_id:
            return None
        if "guild_id" in request.match_info:
            guild_id = _id(request, "guild_id")
            return self.guild_commands.setdefault(guild_id, []), guild_id
        return self.registered_commands, None

    def _stored_command(self, payload: JSON, pool: list[JSON], guild_id: int | None) -> JSON:
        kind = payload.get("type", 1)
        previous = next((c for c in pool if c["name"] == payload["name"] and c["type"] == kind), None)
        command = copy.deepcopy(payload) | {
            "id": previous["id"] if previous else str(new_snowflake()),  # Discord keeps ids across upserts
            "application_id": str(self.application_id),
            "version": str(new_snowflake()),
            "type": kind,
        }
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        return command

    async def _list_commands(self, request: web.Request) -> web.Response:
        found = self._command_pool(request)
        return _json(found[0]) if found else _error(404, 10002, "Unknown Application")

    async def _put_commands(self, request: web.Request) -> web.Response:
        found = self._command_pool(request)
        if found is None:
            return _error(404, 10002, "Unknown Application")
        pool, guild_id = found
        commands = [self._stored_command(p, pool, guild_id) for p in await request.json()]
        if guild_id is None:
            self.registered_commands = commands
        else:
            self.guild_commands[guild_id] = commands
        return _json(commands)

    async def _post_command(self, request: web.Request) -> web.Response:
        found = self._command_pool(request)
        if found is None:
            return _error(404, 10002, "Unknown Application")
        pool, guild_id = found
        command = self._stored_command(await request.json(), pool, guild_id)
        pool[:] = [c for c in pool if c["id"] != command["id"]] + [command]
        return _json(command)

    def _find_stored_command(self, request: web.Request) -> tuple[list[JSON], JSON] | None:
        found = self._command_pool(request)
        if found is None:
            return None
        command = next((c for c in found[0] if c["id"] == request.match_info["command_id"]), None)
        return (found[0], command) if command else None

    async def _get_command(self, request: web.Request) -> web.Response:
        found = self._find_stored_command(request)
        return _json(found[1]) if found else _error(404, 10063, "Unknown application command")

    async def _patch_command(self, request: web.Request) -> web.Response:
        found = self._find_stored_command(request)
        if found is None:
            return _error(404, 10063, "Unknown application command")
        found[1].update(await request.json())
        return _json(found[1])

    async def _delete_command(self, request: web.Request) -> web.Response:
        found = self._find_stored_command(request)
        if found is None:
            return _error(404, 10063, "Unknown application command")
        found[0].remove(found[1])
        return web.Response(status=204)

    # -- interactions: injecting --------------------------------------------------------------------

    async def invoke(
        self,
        user_id: int,
        command: str,
        *,
        guild_id: int | None,
        channel_id: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        """Run a slash command, e.g. ``invoke(2, "memory list", guild_id=10, options={"limit": 5})``.

        The nested options payload is built from the synced command definitions (so the bot must
        have called ``tree.sync()``), validating names, types, required options and choices the
        way the Discord client would. User/channel/role options take ids; attachment options take
        ``{"filename": ..., "content": ...}``.
        """
        path = command.split()
        definition = self._find_command(path[0], guild_id)
        guild = self.guilds.get(guild_id) if guild_id is not None else None
        leaf, wrappers = self._command_leaf(definition, path)
        values = dict(options or {})
        resolved: JSON = {}
        built = []
        for option in leaf.get("options", []):
            name = option["name"]
            if name in values:
                built.append(self._option(option, values.pop(name), resolved, guild, user_id))
            elif option.get("required"):
                raise ValueError(f"/{command}: required option {name!r} missing")
        if values:
            known = [o["name"] for o in leaf.get("options", [])]
            raise ValueError(f"/{command}: unknown options {sorted(values)}; it takes {known}")
        data = self._command_data(definition, wrappers, built, resolved)
        return self._start_interaction(InteractionType.APPLICATION_COMMAND, user_id, guild_id, channel_id, data)

    async def autocomplete(
        self,
        user_id: int,
        command: str,
        *,
        guild_id: int | None,
        channel_id: int | None = None,
        options: dict[str, Any],
        focused: str,
        timeout: float = 10,
    ) -> list[JSON]:
        """The user is typing ``options[focused]``; returns the choices the bot answered.

        As on Discord the focused value arrives as the raw typed string, whatever the option type.
        """
        path = command.split()
        definition = self._find_command(path[0], guild_id)
        guild = self.guilds.get(guild_id) if guild_id is not None else None
        leaf, wrappers = self._command_leaf(definition, path)
        by_name = {o["name"]: o for o in leaf.get("options", [])}
        if not by_name.get(focused, {}).get("autocomplete"):
            raise ValueError(f"/{command}: option {focused!r} does not have autocomplete")
        resolved: JSON = {}
        built = []
        for name, value in options.items():
            if name == focused:
                built.append({"name": name, "type": by_name[name]["type"], "value": str(value), "focused": True})
            else:
                built.append(self._option(by_name[name], value, resolved, guild, user_id))
        if focused not in options:
            built.append({"name": focused, "type": by_name[focused]["type"], "value": "", "focused": True})
        data = self._command_data(definition, wrappers, built, {})  # Discord sends no resolved here
        interaction = self._start_interaction(InteractionType.AUTOCOMPLETE, user_id, guild_id, channel_id, data)
        await self._wait_until(
            lambda: interaction.choices is not None,
            timeout,
            lambda: f"no autocomplete answer for /{command} {focused}; responses {interaction.responses}",
        )
        assert interaction.choices is not None
        return interaction.choices

    async def click(
        self,
        user_id: int,
        message: JSON,
        custom_id: str,
        *,
        guild_id: int | Literal[_Unset.TOKEN] | None = FROM_CONTEXT,
        values: list[str] | None = None,
    ) -> FakeInteraction:
        """Click a button (or pick ``values`` in a select) on a message the bot posted."""
        message_id = int(message["id"])
        stored = self._messages.get(message_id)
        if stored is None:
            raise KeyError(f"unknown or deleted message {message_id}")
        components = {c["custom_id"]: c for c in _walk_components(stored["components"]) if "custom_id" in c}
        component = components.get(custom_id)
        if component is None:
            raise ValueError(f"message {message_id} has no component {custom_id!r}; it has {sorted(components)}")
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled")
        data: JSON = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] != 2:  # selects
            data["values"] = list(values or [])
        channel_id = int(stored["channel_id"])
        if guild_id is FROM_CONTEXT:
            guild = self._guild_of_channel(channel_id)
            guild_id = guild.id if guild else None
        return self._start_interaction(
            InteractionType.MESSAGE_COMPONENT, user_id, guild_id, channel_id, data, message=stored
        )

    def _find_command(self, name: str, guild_id: int | None) -> JSON:
        """A synced chat-input command; guild commands shadow global ones, as in the Discord client."""
        pools = [self.registered_commands]
        if guild_id is not None:
            pools.insert(0, self.guild_commands.get(guild_id, []))
        candidates = [c for pool in pools for c in pool if c["name"] == name and c.get("type", 1) == 1]
        if not candidates:
            known = sorted({c["name"] for pool in pools for c in pool})
            raise LookupError(f"/{name} is not registered (did the bot tree.sync()?); registered: {known}")
        command = candidates[0]
        # The Discord client only offers commands where their contexts allow them.
        contexts = command.get("contexts")
        if guild_id is None and (command.get("dm_permission") is False or (contexts and 1 not in contexts)):
            raise ValueError(f"/{name} is not available in DMs")
        if guild_id is not None and contexts and 0 not in contexts:
            raise ValueError(f"/{name} is not available in guilds")
        return command

    @staticmethod
    def _command_leaf(definition: JSON, path: list[str]) -> tuple[JSON, list[JSON]]:
        """Walk "group sub" names down to the subcommand that holds the options."""
        node, wrappers = definition, []
        for name in path[1:]:
            child = next(
                (o for o in node.get("options", []) if o["name"] == name and o["type"] in (1, 2)),
                None,
            )
            if child is None:
                raise LookupError(f"/{' '.join(path)}: no subcommand or group {name!r}")
            wrappers.append(child)
            node = child
        subcommands = [o["name"] for o in node.get("options", []) if o["type"] in (1, 2)]
        if subcommands:
            raise LookupError(f"/{' '.join(path)} needs one of the subcommands {subcommands}")
        return node, wrappers

    @staticmethod
    def _command_data(definition: JSON, wrappers: list[JSON], options: list[JSON], resolved: JSON) -> JSON:
        for wrapper in reversed(wrappers):  # nest: group -> subcommand -> options
            options = [{"name": wrapper["name"], "type": wrapper["type"], "options": options}]
        data: JSON = {"id": definition["id"], "name": definition["name"], "type": 1, "options": options}
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in definition:
            data["guild_id"] = definition["guild_id"]
        return data

    def _option(self, option: JSON, value: Any, resolved: JSON, guild: FakeGuild | None, user_id: int) -> JSON:
        """One leaf option with its value typed as Discord sends it, plus ``resolved`` entries."""
        kind, name = OptionType(option["type"]), option["name"]
        expected = {
            OptionType.STRING: str,
            OptionType.INTEGER: int,
            OptionType.BOOLEAN: bool,
            OptionType.NUMBER: (int, float),
        }.get(kind)
        if expected is not None:
            if not isinstance(value, expected) or (kind is not OptionType.BOOLEAN and isinstance(value, bool)):
                raise TypeError(f"option {name!r} is {kind.name}, got {value!r}")
            choices = [c["value"] for c in option.get("choices", [])]
            if choices and value not in choices:
                raise ValueError(f"option {name!r} must be one of {choices}, got {value!r}")
            size = len(value) if isinstance(value, str) else value
            low = option.get("min_length" if kind is OptionType.STRING else "min_value")
            high = option.get("max_length" if kind is OptionType.STRING else "max_value")
            if kind is not OptionType.BOOLEAN and (
                (low is not None and size < low) or (high is not None and size > high)
            ):
                raise ValueError(f"option {name!r} out of range [{low}, {high}]: {value!r}")
            return {"name": name, "type": int(kind), "value": value}

        if kind is OptionType.ATTACHMENT:
            attachment = self._make_attachment(0, value)
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
            return {"name": name, "type": int(kind), "value": attachment["id"]}
        target = int(value)
        is_user = kind is OptionType.USER or (kind is OptionType.MENTIONABLE and target in self.users)
        if is_user:
            resolved.setdefault("users", {})[str(target)] = self.users[target].payload()
            if guild is not None and target in guild.member_ids:
                member = self._member(guild, target, with_user=False, permissions=True)
                resolved.setdefault("members", {})[str(target)] = member
        elif kind is OptionType.CHANNEL:
            channel = self._channel_payload(self.channels[target], permissions_for=user_id)
            resolved.setdefault("channels", {})[str(target)] = channel
        else:  # role, or a mentionable that is not a user
            assert guild is not None, "role options need a guild"
            resolved.setdefault("roles", {})[str(target)] = guild.roles[target].payload()
        return {"name": name, "type": int(kind), "value": str(target)}

    def _start_interaction(
        self,
        kind: InteractionType,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        data: JSON,
        *,
        message: JSON | None = None,
    ) -> FakeInteraction:
        session = self._session_for(guild_id, required=True)
        guild = self.guilds[guild_id] if guild_id is not None else None
        if channel_id is None:
            channel_id = guild.channel_ids[0] if guild is not None else self.dm_channel_id(user_id)
        channel = self.channels[channel_id]
        if guild is not None and user_id not in guild.member_ids:
            raise ValueError(f"user {user_id} is not a member of guild {guild_id}")
        interaction_id = new_snowflake()
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": int(kind),
            "data": data,
            "token": secrets.token_urlsafe(32),
            "version": 1,
            "channel": self._channel_payload(channel, permissions_for=user_id),
            "channel_id": str(channel_id),
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild_id or 0)},
            "context": 0 if guild is not None else 1,  # GUILD / BOT_DM
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        if guild is not None:
            payload |= {
                "guild_id": str(guild.id),
                "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
                "guild_locale": "en-US",
                "member": self._member(guild, user_id, permissions=True),
                "app_permissions": str(guild.permissions_of(self.bot_user_id)),
            }
        else:  # DMs carry ``user`` instead of ``member``
            payload |= {
                "user": self.users[user_id].payload(),
                "app_permissions": str(DEFAULT_MEMBER_PERMISSIONS),
            }
        if message is not None:
            payload["message"] = copy.deepcopy(message)
        interaction = FakeInteraction(
            id=interaction_id,
            token=payload["token"],
            type=kind,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            payload=payload,
            source_message_id=int(message["id"]) if message is not None else None,
            _fake=self,
        )
        self._interactions[interaction_id] = interaction
        self.interactions.append(interaction)
        if session is not None:  # else no session runs the guild's shard: nobody answers, as on Discord
            session.dispatch("INTERACTION_CREATE", payload)
        return interaction

    # -- interactions: the bot's answers ------------------------------------------------------------

    def _record_response(
        self,
        interaction: FakeInteraction,
        kind: str,
        body: JSON,
        message: JSON | None,
        callback_type: int | None,
    ) -> None:
        shown = message if message is not None else body
        flags = shown.get("flags") or 0
        interaction.responses.append(
            {
                "kind": kind,
                "type": callback_type,
                "content": shown.get("content") or "",
                "embeds": shown.get("embeds") or [],
                "components": shown.get("components") or [],
                "flags": flags,
                "ephemeral": bool(flags & EPHEMERAL),
                "message": copy.deepcopy(message),
                "payload": body,
                "time": time.monotonic(),
            }
        )

    def _interaction_message(
        self,
        interaction: FakeInteraction,
        body: JSON,
        files: dict[int, tuple[str, bytes]],
        *,
        loading: bool = False,
    ) -> JSON:
        flags = body.get("flags") or 0
        if loading:
            flags = (flags & EPHEMERAL) | LOADING
        message = self._bot_message(interaction.channel_id, body, files, flags=flags, interaction=interaction)
        interaction.message_ids.append(int(message["id"]))
        self._echo("MESSAGE_CREATE", message)
        return message

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        interaction = self._interactions.get(_id(request, "interaction_id"))
        if interaction is None or interaction.token != request.match_info["token"]:
            return _error(404, 10062, "Unknown interaction")
        body, files = await _read_body(request)
        if interaction.acknowledged:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - interaction.created > self.interaction_deadline:
            return _error(404, 10062, "Unknown interaction")  # Discord gave up waiting after 3 s
        kind, data = body.get("type"), body.get("data") or {}
        message = None
        if kind == CallbackType.CHANNEL_MESSAGE:
            if problem := self._message_problem(data, files):
                return problem
            message = self._interaction_message(interaction, data, files)
            interaction.original_message_id = int(message["id"])
        elif kind == CallbackType.DEFERRED_CHANNEL_MESSAGE:
            message = self._interaction_message(interaction, {"flags": data.get("flags", 0)}, {}, loading=True)
            interaction.original_message_id = int(message["id"])
        elif kind in (CallbackType.DEFERRED_UPDATE_MESSAGE, CallbackType.UPDATE_MESSAGE):
            source = self._messages.get(interaction.source_message_id or 0)
            if source is None:
                return _error(400, 40004, "This interaction is not on a message")
            interaction.original_message_id = int(source["id"])  # @original now means the clicked message
            if kind == CallbackType.UPDATE_MESSAGE:
                if problem := self._message_problem(data, files, editing=True):
                    return problem
                self._apply_edit(source, data, files)
                self._echo("MESSAGE_UPDATE", source)
                message = source
        elif kind == CallbackType.AUTOCOMPLETE_RESULT and interaction.type is InteractionType.AUTOCOMPLETE:
            interaction.choices = data.get("choices", [])
        elif kind == CallbackType.MODAL:
            interaction.modal = data
        else:
            return _error(400, 50035, "Invalid Form Body")
        interaction.callback_type = kind
        self._record_response(interaction, "callback", data, message, kind)
        info: JSON = {
            "id": str(interaction.id),
            "type": int(interaction.type),
            "response_message_loading": kind == CallbackType.DEFERRED_CHANNEL_MESSAGE,
            "response_message_ephemeral": bool(message and message["flags"] & EPHEMERAL),
        }
        resource: JSON = {"type": kind}
        if message is not None:
            # discord.py stores a View under response_message_id, so buttons on it can be clicked.
            info["response_message_id"] = message["id"]
            resource["message"] = message
        return _json({"interaction": info, "resource": resource})

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction | None:
        if _id(request, "application_id") != self.application_id:
            return None
        token = request.match_info["token"]
        interaction = next((i for i in reversed(self.interactions) if i.token == token), None)
        # The webhook only exists once the interaction was acknowledged.
        return interaction if interaction is not None and interaction.acknowledged else None

    def _webhook_message(self, request: web.Request) -> tuple[FakeInteraction, JSON] | web.Response:
        interaction = self._webhook_interaction(request)
        if interaction is None:
            return _error(404, 10015, "Unknown Webhook")
        raw = request.match_info["message_id"]
        message_id = interaction.original_message_id if raw == "@original" else int(raw)
        owned = message_id == interaction.original_message_id or message_id in interaction.message_ids
        message = self._messages.get(message_id or 0) if owned else None
        if message is None:
            return _error(404, 10008, "Unknown Message")
        return interaction, message

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        if interaction is None:
            return _error(404, 10015, "Unknown Webhook")
        body, files = await _read_body(request)
        if problem := self._message_problem(body, files):
            return problem
        original = self._messages.get(interaction.original_message_id or 0)
        if original is not None and original["flags"] & LOADING:
            # Discord: the first followup after a deferral edits the "thinking" message instead of
            # posting a new one, and keeps the deferral's ephemerality.
            self._apply_edit(original, {**body, "flags": (body.get("flags") or 0) & ~EPHEMERAL}, files)
            self._echo("MESSAGE_UPDATE", original)
            message = original
        else:
            message = self._interaction_message(interaction, body, files)
        self._record_response(interaction, "followup", body, message, None)
        if request.query.get("wait", "false").lower() in ("1", "true"):
            return _json(message)
        return web.Response(status=204)

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        found = self._webhook_message(request)
        return found if isinstance(found, web.Response) else _json(found[1])

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        found = self._webhook_message(request)
        if isinstance(found, web.Response):
            return found
        interaction, message = found
        body, files = await _read_body(request)
        if problem := self._message_problem(body, files, editing=True):
            return problem
        self._apply_edit(message, body, files)
        self._echo("MESSAGE_UPDATE", message)
        kind = "edit_original" if request.match_info["message_id"] == "@original" else "edit_message"
        self._record_response(interaction, kind, body, message, None)
        return _json(message)

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        found = self._webhook_message(request)
        if isinstance(found, web.Response):
            return found
        interaction, message = found
        self._delete(message)
        self._record_response(interaction, "delete", {}, message, None)
        return web.Response(status=204)


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json": aiohttp's json_response adds "; charset=utf-8", which discord.py
    # does not recognise as JSON.
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json", headers=headers)


def _error(status: int, code: int, message: str, errors: JSON | None = None) -> web.Response:
    body: JSON = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return _json(body, status)


def _form_error(field_name: str, code: str, message: str) -> web.Response:
    errors = {field_name: {"_errors": [{"code": code, "message": message}]}}
    return _error(400, 50035, "Invalid Form Body", errors)


def _injected_error(status: int, retry_after: float) -> web.Response:
    if status == 429:
        # discord.py only honours a 429 that came through Discord's proxy (a Via header).
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
        headers = {"Via": "1.1 google", "Retry-After": str(retry_after)}
        return _json(body, 429, headers)
    known = {
        400: (50035, "Invalid Form Body"),
        401: (0, "401: Unauthorized"),
        403: (50013, "Missing Permissions"),
        404: (10003, "Unknown Channel"),
        500: (0, "500: Internal Server Error"),
        502: (0, "502: Bad Gateway"),
        503: (0, "503: Service Unavailable"),
    }
    code, message = known.get(status, (0, f"{status}: Error"))
    return _error(status, code, message)


def _id(request: web.Request, name: str) -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise web.HTTPNotFound() from None


async def _read_body(request: web.Request) -> tuple[JSON, dict[int, tuple[str, bytes]]]:
    """The JSON body, or for uploads the ``payload_json`` part plus ``files[i]`` -> (name, bytes)."""
    if request.content_type == "multipart/form-data":
        form = await request.post()
        body = json.loads(str(form.get("payload_json", "{}")))
        files: dict[int, tuple[str, bytes]] = {}
        for key, value in form.items():
            if isinstance(value, web.FileField) and (match := re.fullmatch(r"files\[(\d+)\]", key)):
                files[int(match.group(1))] = (value.filename, value.file.read())
        return body, files
    if request.can_read_body:
        return await request.json(), {}
    return {}, {}


def _walk_components(components: list[JSON]) -> Iterator[JSON]:
    for component in components:
        yield component
        yield from _walk_components(component.get("components", []))
        if "accessory" in component:
            yield component["accessory"]


def _embed_texts(embeds: list[JSON]) -> list[str]:
    texts = []
    for embed in embeds:
        texts += [embed.get("title") or "", embed.get("description") or ""]
        for embed_field in embed.get("fields", []):
            texts += [embed_field.get("name") or "", embed_field.get("value") or ""]
    return texts


def _embed_problem(embeds: list[JSON]) -> str | None:
    """Discord's embed limits, which discord.py does not check."""
    if len(embeds) > 10:
        return "Must be 10 or fewer in length."
    total = 0
    for embed in embeds:
        fields = embed.get("fields", [])
        if len(fields) > 25:
            return "Must be 25 or fewer fields."
        parts = [
            (embed.get("title") or "", 256),
            (embed.get("description") or "", 4096),
            ((embed.get("footer") or {}).get("text") or "", 2048),
            ((embed.get("author") or {}).get("name") or "", 256),
        ]
        parts += [(f.get("name") or "", 256) for f in fields] + [(f.get("value") or "", 1024) for f in fields]
        for text, limit in parts:
            if len(text) > limit:
                return f"Must be {limit} or fewer in length."
            total += len(text)
    return "Embed size exceeds maximum size of 6000" if total > 6000 else None


# ---------------------------------------------------------------------------------------------------
# Wiring discord.py to the fake
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def pointing_discord_py_at(fake: FakeDiscord) -> Iterator[None]:
    """Point discord.py's REST base and gateway URL at ``fake``; restore them afterwards."""
    saved = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = fake.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


@contextlib.asynccontextmanager
async def running_client(
    fake: FakeDiscord, client: discord.Client, *, token: str = "fake-token", timeout: float = 10
) -> AsyncIterator[discord.Client]:
    """Run ``client.start()`` in a task until the client is ready (its on_ready fired); close it and
    wait for the task on exit. Fails fast if ``start()`` dies (bad payload, login error)."""
    start = asyncio.create_task(client.start(token), name="fake-discord-client")

    async def ready() -> None:
        await fake.wait_until_ready(timeout)  # after login, so client.wait_until_ready() is usable
        await asyncio.wait_for(client.wait_until_ready(), timeout)

    waiter = asyncio.create_task(ready())
    try:
        await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            start.result()  # re-raise what killed the client
            raise RuntimeError("client.start() returned before the client became ready")
        waiter.result()
        yield client
    finally:
        await client.close()
        if not start.done():
            await asyncio.wait_for(start, timeout)  # returns once the gateway loop sees the close
        elif not start.cancelled():
            start.exception()  # already reported above; mark it retrieved
