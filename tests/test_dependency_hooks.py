"""The private hooks of our dependencies that the bot relies on, checked by name.

An upgrade that renames or reshapes one of them would otherwise fail in an
odd place (or, for the retry hook, not fail at all: the SDK would simply wait
out long Retry-After delays again). These tests name the hook and the module
that needs it.
"""

from __future__ import annotations

import inspect

import httpx2
import openai

from companion.config import LLMConfig
from companion.llm import MAX_RETRY_AFTER_SECONDS, LLMClient, LLMError


def test_openai_sdk_still_has_the_retry_hooks_llm_relies_on():
    should_retry = getattr(openai.AsyncOpenAI, "_should_retry", None)
    assert callable(should_retry), (
        "openai SDK no longer has AsyncOpenAI._should_retry(response); "
        "companion/llm.py's bounded Retry-After relies on it"
    )
    assert list(inspect.signature(should_retry).parameters) == ["self", "response"], (
        f"openai SDK's AsyncOpenAI._should_retry is now {inspect.signature(should_retry)}, not (self, response); "
        "companion/llm.py's bounded Retry-After overrides it"
    )

    parse_retry_after = getattr(openai.AsyncOpenAI, "_parse_retry_after_header", None)
    assert callable(parse_retry_after), (
        "openai SDK no longer has AsyncOpenAI._parse_retry_after_header(response_headers); "
        "companion/llm.py's bounded Retry-After relies on it"
    )
    assert list(inspect.signature(parse_retry_after).parameters) == ["self", "response_headers"], (
        f"openai SDK's AsyncOpenAI._parse_retry_after_header is now {inspect.signature(parse_retry_after)}, "
        "not (self, response_headers); companion/llm.py's bounded Retry-After calls it"
    )


def _rate_limited_endpoint(headers: dict[str, str], requests: list[httpx2.Request]) -> httpx2.AsyncClient:
    def handle(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        return httpx2.Response(429, headers=headers, json={"error": {"message": "slow down"}})

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handle))


async def _chat_with(headers: dict[str, str]) -> tuple[LLMError, int]:
    requests: list[httpx2.Request] = []
    config = LLMConfig(base_url="http://llm.invalid/v1", max_retries=2)
    client = LLMClient(config, "key", http_client=_rate_limited_endpoint(headers, requests))
    try:
        await client.chat([{"role": "user", "content": "hi"}])
    except LLMError as exc:
        return exc, len(requests)
    finally:
        await client.close()
    raise AssertionError("a 429 on every attempt must end in an LLMError")


async def test_retry_after_beyond_the_cap_fails_at_once():
    error, attempts = await _chat_with({"retry-after": str(int(MAX_RETRY_AFTER_SECONDS * 6))})

    assert (error.kind, attempts) == ("rate_limited", 1), (
        "a 429 asking to wait longer than MAX_RETRY_AFTER_SECONDS was retried: the openai SDK no longer "
        "consults AsyncOpenAI._should_retry(response), which companion/llm.py overrides"
    )


async def test_short_retry_after_is_still_retried_by_the_sdk():
    error, attempts = await _chat_with({"retry-after-ms": "1"})

    assert (error.kind, attempts) == ("rate_limited", 3)
