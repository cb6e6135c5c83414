"""Load and validate `config.toml` into frozen dataclasses.

Every problem becomes one `ConfigError` whose message names the file and the
key, so `bot.py` can print it as a single line and exit non-zero.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_CONFIG_PATH = Path("config.toml")


class ConfigError(Exception):
    """A configuration problem, worded for the person running the bot."""


@dataclass(frozen=True)
class DiscordConfig:
    token_env: str = "DISCORD_TOKEN"
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg"
    owner_ids: tuple[int, ...] = ()
    listen_channel_ids: tuple[int, ...] = ()
    # 0: one gateway connection, no sharding. TOML has no null, so 0 stands for "unset".
    shard_count: int = 0
    # The shards this process runs, each in [0, shard_count); empty means all of them.
    shard_ids: tuple[int, ...] = ()

    @property
    def sharded(self) -> bool:
        return self.shard_count > 0


@dataclass(frozen=True)
class LLMConfig:
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    chat_model: str = "gpt-4o-mini"
    classifier_model: str = "gpt-4o-mini"
    timeout_seconds: float = 30.0
    max_retries: int = 2
    max_reply_tokens: int = 800
    max_concurrent_requests: int = 64


@dataclass(frozen=True)
class PersonaConfig:
    name: str = "Mnemo"
    system_prompt: str = (
        "You are Mnemo, a warm and curious companion in a Discord community. You remember what "
        "people tell you and bring it up when it helps. Keep replies conversational and reasonably "
        "short unless someone asks for detail."
    )


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = Path("data")
    backend: str = "sqlite"
    postgresql_dsn_env: str = "DATABASE_URL"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "memory.db"

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"


@dataclass(frozen=True)
class MemoryConfig:
    pin_cap: int = 8
    recent_turns: int = 12
    recall_size: int = 10
    member_pin_quota: int = 1
    share_across_channels: str = "public"
    context_budget_tokens: int = 6000
    scoring_concurrency: int = 4
    scoring_rescan_seconds: float = 60.0
    scoring_lease_seconds: float = 60.0


@dataclass(frozen=True)
class ChatConfig:
    max_pending_per_channel: int = 20
    user_turns_per_minute: float = 12.0
    user_burst: int = 6


@dataclass(frozen=True)
class BackupConfig:
    time: str = "03:00"
    timezone: str = "UTC"
    keep: int = 14
    takeover_seconds: float = 60.0

    @property
    def hour(self) -> int:
        return int(self.time.split(":")[0])

    @property
    def minute(self) -> int:
        return int(self.time.split(":")[1])


@dataclass(frozen=True)
class SnapshotConfig:
    interval_minutes: float = 60.0
    keep: int = 5


@dataclass(frozen=True)
class PrivacyConfig:
    removed_guild_grace_days: float = 7.0


@dataclass(frozen=True)
class Config:
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    source: Path | None = None

    def discord_token(self) -> str:
        """The bot token from the environment; a ConfigError if it is missing."""
        name = self.discord.token_env
        token = os.environ.get(name, "").strip()
        if not token:
            raise ConfigError(f"environment variable {name} is not set ([discord] token_env names it)")
        return token

    def llm_api_key(self) -> str:
        """The LLM API key from the environment, or a placeholder for keyless endpoints."""
        name = self.llm.api_key_env
        if not name:
            return "unused"
        key = os.environ.get(name, "").strip()
        if not key:
            raise ConfigError(
                f"environment variable {name} is not set ([llm] api_key_env names it; "
                'set api_key_env = "" for an endpoint that needs no key)'
            )
        return key

    def postgresql_dsn(self) -> str:
        """The PostgreSQL connection string from the environment; a ConfigError if it is missing."""
        name = self.storage.postgresql_dsn_env
        dsn = os.environ.get(name, "").strip()
        if not dsn:
            raise ConfigError(
                f'environment variable {name} is not set ([storage] backend is "postgresql", '
                "and [storage] postgresql_dsn_env names the variable holding its connection string)"
            )
        return dsn


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "source"}
_SECTION_CLASSES = {
    "discord": DiscordConfig,
    "llm": LLMConfig,
    "persona": PersonaConfig,
    "storage": StorageConfig,
    "memory": MemoryConfig,
    "chat": ChatConfig,
    "backup": BackupConfig,
    "snapshot": SnapshotConfig,
    "privacy": PrivacyConfig,
}

# Bounds for numeric keys: (minimum, maximum), inclusive; None means unbounded.
_BOUNDS: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("discord", "shard_count"): (0, 100_000),
    ("llm", "timeout_seconds"): (0.1, 3600),
    ("llm", "max_retries"): (0, 10),
    ("llm", "max_reply_tokens"): (16, 100_000),
    ("llm", "max_concurrent_requests"): (0, 100_000),
    ("memory", "pin_cap"): (1, 100),
    ("memory", "recent_turns"): (0, 200),
    ("memory", "recall_size"): (0, 100),
    ("memory", "member_pin_quota"): (0, 1000),
    ("memory", "context_budget_tokens"): (500, 1_000_000),
    ("memory", "scoring_concurrency"): (1, 64),
    ("memory", "scoring_rescan_seconds"): (1, 86_400),
    ("memory", "scoring_lease_seconds"): (1, 3600),
    ("chat", "max_pending_per_channel"): (1, 10_000),
    ("chat", "user_turns_per_minute"): (0, 100_000),
    ("chat", "user_burst"): (1, 10_000),
    ("backup", "keep"): (1, 10_000),
    ("backup", "takeover_seconds"): (1, 3600),
    ("snapshot", "interval_minutes"): (1, 7 * 24 * 60),
    ("snapshot", "keep"): (1, 1_000),
    ("privacy", "removed_guild_grace_days"): (0, 3650),
}

# Lists of numbers counted from 0, not Discord ids (which are positive).
_ZERO_BASED_LISTS = {("discord", "shard_ids")}

_TIME_PATTERN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Read, validate and return the configuration at `path`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(document, source=path)


def parse_config(document: dict[str, typing.Any], *, source: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative paths resolve against the file's folder."""
    where = str(source) if source else "config"
    sections: dict[str, typing.Any] = {}
    for section_name, values in document.items():
        section_class = _SECTION_CLASSES.get(section_name)
        if section_class is None:
            raise ConfigError(f"{where}: unknown section [{section_name}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section_name}] must be a table")
        sections[section_name] = _parse_section(where, section_name, section_class, values)

    config = Config(**sections, source=source)
    base = source.parent if source else Path.cwd()
    data_dir = config.storage.data_dir
    if not data_dir.is_absolute():
        storage = dataclasses.replace(config.storage, data_dir=(base / data_dir).resolve())
        config = dataclasses.replace(config, storage=storage)
    _check_semantics(where, config)
    return config


def _parse_section(where: str, section: str, section_class: type, values: dict[str, typing.Any]) -> object:
    hints = typing.get_type_hints(section_class)
    known = {f.name for f in dataclasses.fields(section_class)}
    parsed: dict[str, typing.Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key [{section}] {key}")
        parsed[key] = _coerce(where, section, key, hints[key], value)
    return section_class(**parsed)


def _coerce(where: str, section: str, key: str, hint: typing.Any, value: typing.Any) -> typing.Any:
    label = f"[{section}] {key}"

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {label} must be {expected}, got {_describe(value)}")

    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        _check_bounds(where, section, key, value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        if not math.isfinite(value):  # TOML allows nan and inf, and no bound check catches nan
            raise wrong("a finite number")
        _check_bounds(where, section, key, value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value.strip():
            raise wrong("a non-empty path string")
        return Path(value)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if (section, key) in _ZERO_BASED_LISTS:
            return _zero_based_list(where, label, value)
        if not isinstance(value, list):
            raise wrong("a list of ids")
        items = []
        for item in value:
            if isinstance(item, str) and item.isdigit():
                item = int(item)  # ids copied from Discord are often quoted
            if isinstance(item, bool) or not isinstance(item, int) or item <= 0:
                raise ConfigError(f"{where}: {label} must hold positive integer ids, got {_describe(item)}")
            items.append(item)
        return tuple(items)
    if origin is types.UnionType:  # pragma: no cover - no optional keys today
        return value
    raise AssertionError(f"unhandled config type {hint!r}")


def _zero_based_list(where: str, label: str, value: typing.Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {label} must be a list of integers, got {_describe(value)}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ConfigError(f"{where}: {label} must hold integers from 0 up, got {_describe(item)}")
    return tuple(value)


def _check_bounds(where: str, section: str, key: str, value: float) -> None:
    low, high = _BOUNDS.get((section, key), (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where}: [{section}] {key} must be between {low} and {high}, got {value}")


SHARE_ACROSS_CHANNELS = ("public", "all", "none")
STORAGE_BACKENDS = ("sqlite", "postgresql")


def _check_sharding(where: str, discord: DiscordConfig) -> None:
    count, ids = discord.shard_count, discord.shard_ids
    if ids and not count:
        raise ConfigError(
            f"{where}: [discord] shard_ids needs shard_count, the total number of shards across every process"
        )
    for position, shard_id in enumerate(ids):
        if shard_id >= count:
            raise ConfigError(
                f"{where}: [discord] shard_ids must be below shard_count ({count}): shards are numbered "
                f"0 to {count - 1}, got {shard_id}"
            )
        if shard_id in ids[:position]:
            raise ConfigError(f"{where}: [discord] shard_ids lists shard {shard_id} more than once")


def _check_semantics(where: str, config: Config) -> None:
    _check_sharding(where, config.discord)
    backend = config.storage.backend
    if backend not in STORAGE_BACKENDS:
        options = ", ".join(f'"{option}"' for option in STORAGE_BACKENDS)
        raise ConfigError(f"{where}: [storage] backend must be one of {options}, got {backend!r}")
    if backend == "postgresql" and not config.storage.postgresql_dsn_env.strip():
        raise ConfigError(f"{where}: [storage] postgresql_dsn_env must name an environment variable")
    share = config.memory.share_across_channels
    if share not in SHARE_ACROSS_CHANNELS:
        options = ", ".join(f'"{option}"' for option in SHARE_ACROSS_CHANNELS)
        raise ConfigError(f"{where}: [memory] share_across_channels must be one of {options}, got {share!r}")
    for label, url, schemes in (
        ("[discord] api_base", config.discord.api_base, ("http", "https")),
        ("[discord] gateway_url", config.discord.gateway_url, ("ws", "wss")),
        ("[llm] base_url", config.llm.base_url, ("http", "https")),
    ):
        parsed = urlparse(url)
        if parsed.scheme not in schemes or not parsed.netloc:
            raise ConfigError(f"{where}: {label} must be a {' or '.join(schemes)} URL, got {url!r}")
    for label, value in (
        ("[discord] token_env", config.discord.token_env),
        ("[llm] chat_model", config.llm.chat_model),
        ("[llm] classifier_model", config.llm.classifier_model),
        ("[persona] name", config.persona.name),
        ("[persona] system_prompt", config.persona.system_prompt),
    ):
        if not value.strip():
            raise ConfigError(f"{where}: {label} must not be empty")
    if not _TIME_PATTERN.match(config.backup.time):
        raise ConfigError(f'{where}: [backup] time must be "HH:MM" (24-hour), got {config.backup.time!r}')
    try:
        ZoneInfo(config.backup.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}: [backup] timezone must be an IANA zone such as UTC or Europe/Berlin, "
            f"got {config.backup.timezone!r}"
        ) from None


def _describe(value: typing.Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return f"{kind.get(type(value), type(value).__name__)} ({value!r})"
