import subprocess
import sys
from pathlib import Path

import pytest

from companion.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_repository_config_loads_with_documented_defaults():
    config = load_config(REPO / "config.toml")
    assert config.discord.token_env == "DISCORD_TOKEN"
    assert config.discord.api_base == "https://discord.com/api/v10"
    assert config.discord.gateway_url == "wss://gateway.discord.gg"
    assert config.llm.api_key_env == "OPENAI_API_KEY"
    assert config.memory.pin_cap == 8
    assert (config.backup.time, config.backup.timezone, config.backup.keep) == ("03:00", "UTC", 14)
    assert config.snapshot.keep == 5
    assert config.storage.data_dir == REPO / "data"


def test_repository_config_documents_every_key():
    text = (REPO / "config.toml").read_text()
    defaults = Config()
    for section in ("discord", "llm", "persona", "storage", "memory", "chat", "backup", "snapshot"):
        assert f"[{section}]" in text
        for key in vars(getattr(defaults, section)):
            assert f"\n{key} = " in text, f"[{section}] {key} is not documented in config.toml"


def test_empty_file_gives_defaults_and_data_dir_next_to_file(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.memory.recall_size == 10
    assert config.storage.data_dir == tmp_path / "data"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[memory]\npin_cap = 'eight'\n", "[memory] pin_cap must be an integer, got a string ('eight')"),
        ("[memory]\npinn_cap = 3\n", "unknown key [memory] pinn_cap"),
        ("[memmory]\npin_cap = 3\n", "unknown section [memmory]"),
        ("[memory]\npin_cap = 0\n", "[memory] pin_cap must be between 1 and 100, got 0"),
        ("[llm]\ntimeout_seconds = true\n", "[llm] timeout_seconds must be a number"),
        ("[memory]\nscoring_rescan_seconds = nan\n", "[memory] scoring_rescan_seconds must be a finite number"),
        ("[discord]\nowner_ids = [1, -2]\n", "[discord] owner_ids must hold positive integer ids"),
        ("[discord]\nowner_ids = 5\n", "[discord] owner_ids must be a list of ids"),
        ("[discord]\ngateway_url = 'https://x'\n", "[discord] gateway_url must be a ws or wss URL"),
        ("[backup]\ntime = '3am'\n", '[backup] time must be "HH:MM"'),
        ("[backup]\ntimezone = 'Mars/Olympus'\n", "[backup] timezone must be an IANA zone"),
        ("memory = 3\n", "[memory] must be a table"),
        ("[memory\n", "invalid TOML"),
    ],
    ids=[
        "wrong-type",
        "unknown-key",
        "unknown-section",
        "out-of-range",
        "bool-for-number",
        "nan",
        "negative-id",
        "scalar-for-list",
        "bad-gateway-scheme",
        "bad-time",
        "bad-timezone",
        "section-not-table",
        "syntax-error",
    ],
)
def test_bad_config_names_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert expected in str(caught.value)
    assert str(tmp_path / "config.toml") in str(caught.value)


def test_quoted_ids_are_accepted(tmp_path):
    config = load_config(write(tmp_path, "[discord]\nowner_ids = ['123', 456]\n"))
    assert config.discord.owner_ids == (123, 456)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_missing_token_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_TOKEN", raising=False)
    config = load_config(write(tmp_path, "[discord]\ntoken_env = 'MY_TOKEN'\n"))
    with pytest.raises(ConfigError, match="MY_TOKEN is not set"):
        config.discord_token()


def test_keyless_llm_endpoint_is_allowed(tmp_path):
    config = load_config(write(tmp_path, "[llm]\napi_key_env = ''\n"))
    assert config.llm_api_key() == "unused"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "bot.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("config_text", "env", "expected"),
    [
        ("[memory]\nrecall_size = 'many'\n", {}, "[memory] recall_size must be an integer"),
        ("[discord]\ntoken_env = 'NO_SUCH_TOKEN_VAR'\n", {}, "NO_SUCH_TOKEN_VAR is not set"),
        ("", {"DISCORD_TOKEN": "x"}, "OPENAI_API_KEY is not set"),
    ],
    ids=["wrong-type", "missing-token", "missing-api-key"],
)
def test_cli_reports_bad_config_in_one_line_and_exits_non_zero(tmp_path, config_text, env, expected):
    path = write(tmp_path, config_text)
    base_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    result = run_cli("--config", str(path), env={**base_env, **env})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_reports_unreadable_config(tmp_path):
    path = tmp_path / "config.toml"
    path.mkdir()
    result = run_cli("--config", str(path), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "cannot read config file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
