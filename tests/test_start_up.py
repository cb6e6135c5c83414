"""Starting the bot: an unreachable Discord or a rejected token ends it with one clear line; an
unreachable model endpoint does not stop it, and is said once in the log and shown in /status."""

import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

import httpx2
import pytest

from companion.config import parse_config
from companion.llm import LLMClient
from tests.botprocess import REPO, TOKEN_ENV, BotProcess, write_config
from tests.harness import ALICE, APP_OWNER, CHAT_MODEL, LISTEN_CHANNEL
from tests.test_admin_commands import answer, run


def closed_port() -> int:
    """A loopback port nothing listens on (bound once to find it, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_file(tmp_path: Path, *, api_base: str, gateway_url: str = "ws://127.0.0.1:9/gateway") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[discord]\ntoken_env = "{TOKEN_ENV}"\napi_base = "{api_base}"\ngateway_url = "{gateway_url}"\n\n'
        f'[llm]\nbase_url = "http://127.0.0.1:{closed_port()}/v1"\napi_key_env = ""\n\n'
        '[storage]\ndata_dir = "data"\n',
        encoding="utf-8",
    )
    return path


async def run_bot_py(config_path: Path, token: str = "fake-token") -> tuple[int, list[str]]:
    """Run `bot.py` to its end (the fakes keep serving meanwhile); its exit code and stderr lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "bot.py"),
        "--config",
        str(config_path),
        cwd=REPO,
        env={**os.environ, TOKEN_ENV: token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, stderr.decode(errors="replace").splitlines()


def error_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("error:")]


# Discord at start: fatal, one line


async def test_an_unresolvable_discord_is_named_with_the_reason(tmp_path):
    code, stderr = await run_bot_py(config_file(tmp_path, api_base="http://discord.invalid/api/v10"))
    [error] = error_lines(stderr)
    assert code == 1
    # The resolver's own words vary by system; the shape does not.
    assert error.startswith("error: cannot reach Discord at http://discord.invalid/api/v10 (") and error.endswith(")")
    assert len(error) > len("error: cannot reach Discord at http://discord.invalid/api/v10 ()")
    assert not any("Traceback" in line for line in stderr)


async def test_a_closed_discord_port_says_connection_refused(tmp_path):
    api_base = f"http://127.0.0.1:{closed_port()}/api/v10"
    code, stderr = await run_bot_py(config_file(tmp_path, api_base=api_base))
    assert (code, error_lines(stderr)) == (1, [f"error: cannot reach Discord at {api_base} (Connection refused)"])
    assert not any("Traceback" in line for line in stderr)


async def test_a_rejected_token_names_its_variable_and_the_status(tmp_path, discord_fake):
    discord_fake.accepted_token = "the-real-token"
    config = config_file(tmp_path, api_base=discord_fake.api_base, gateway_url=discord_fake.gateway_url)
    code, stderr = await run_bot_py(config, token="a-stale-token")
    assert (code, error_lines(stderr)) == (1, [f"error: Discord rejected the token in {TOKEN_ENV} (401)"])
    assert not any("Traceback" in line for line in stderr)
    assert discord_fake.connections == 0
    # The same bot with the token Discord accepts logs in: the refusal above was the token's.
    discord_fake.accepted_token = "fake-token"  # what BotProcess passes
    process = BotProcess(config)
    try:
        await process.start(discord_fake)
    finally:
        await process.stop()


async def test_a_gateway_refusing_the_token_ends_the_bot_with_one_line(tmp_path, discord_fake, llm_fake):
    process = BotProcess(write_config(tmp_path, discord_fake, llm_fake))
    await process.start(discord_fake)
    # discord.py retries an unreachable gateway for ever; close code 4004 is what it gives up on.
    await discord_fake.disconnect(4004, resumable=False)
    try:
        async with asyncio.timeout(30):
            code = await process.wait()
    finally:
        await process.stop()
    lines = process.log_path.read_text().splitlines()
    assert (code, error_lines(lines)) == (
        1,
        [f"error: Discord rejected the token in {TOKEN_ENV} (gateway close code 4004)"],
    )


# The model endpoint at start: said once, never fatal


def probe_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "companion" and r.getMessage().startswith("model endpoint")]


async def wait_for_probe(bot) -> None:
    async with asyncio.timeout(10):
        while bot.llm_probe is None:
            await asyncio.sleep(0.01)


async def test_an_unreachable_model_endpoint_does_not_stop_the_start(harness, caplog):
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    with caplog.at_level(logging.INFO, logger="companion"):
        bot = await harness.start_bot(llm={"base_url": base_url, "max_retries": 0})
        await wait_for_probe(bot)
        reply = await harness.say(LISTEN_CHANNEL, ALICE, "are you there?")
    assert reply["content"]  # an apology: the model could not be reached
    [line] = probe_lines(caplog)
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith(f"model endpoint {base_url} is unreachable (connection error)")
    assert (bot.llm_probe.kind, bot.llm_probe.summary) == ("unreachable", "connection error")
    status = answer(await run(harness, APP_OWNER, "status"))
    assert f"**Model endpoint:** unreachable at start (connection error) at {base_url}." in status.splitlines()


async def test_a_reachable_model_endpoint_is_logged_once_and_shown_in_status(harness, caplog):
    with caplog.at_level(logging.INFO, logger="companion"):
        bot = await harness.start_bot()
        await wait_for_probe(bot)
        await harness.say(LISTEN_CHANNEL, ALICE, "hello")
    # The fake serves no /models: its 404 is an answer all the same.
    [line] = probe_lines(caplog)
    assert line.levelno == logging.INFO and line.getMessage() == (
        f"model endpoint {harness.llm.base_url} is reachable (HTTP 404)"
    )
    assert len(harness.llm.requests_for(CHAT_MODEL)) == 1  # the probe is no chat call
    status = answer(await run(harness, APP_OWNER, "status"))
    assert "**Model endpoint:** reachable at start." in status.splitlines()


SECRET = "sk-the-provider-quoted-this"


@pytest.mark.parametrize(
    ("answer_with", "expected"),
    [
        (httpx2.Response(200, json={"object": "list", "data": []}), ("reachable", "HTTP 200")),
        (httpx2.Response(404, text="no such route"), ("reachable", "HTTP 404")),
        (httpx2.Response(500, json={"error": {"message": SECRET}}), ("reachable", "HTTP 500")),
        (httpx2.Response(401, json={"error": {"message": f"bad key {SECRET}"}}), ("rejected", "HTTP 401")),
        (httpx2.Response(403, json={"error": {"message": SECRET}}), ("rejected", "HTTP 403")),
        (httpx2.ConnectError("refused"), ("unreachable", "connection error")),
        (httpx2.ReadTimeout("slow"), ("unreachable", "timeout")),
    ],
    ids=["ok", "no-models-route", "server-error", "key-401", "key-403", "connection", "timeout"],
)
async def test_the_probe_keeps_the_kind_and_status_only(tmp_path, answer_with, expected):
    requests = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        if isinstance(answer_with, Exception):
            raise answer_with
        return answer_with

    config = parse_config({"llm": {"base_url": "http://llm.test/v1", "max_retries": 3}}, source=tmp_path / "c.toml")
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        client = LLMClient(config.llm, "key", http_client=http)
        probe = await client.probe()
    assert (probe.kind, probe.summary) == expected
    assert SECRET not in repr(probe)
    assert len(requests) == 1  # one request, never retried
    assert requests[0].url.path == "/v1/models"
