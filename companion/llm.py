"""The OpenAI-compatible endpoint, behind one small client.

The SDK does the retrying (connection errors, 408, 409, 429 with
Retry-After, 5xx) with its own bounded backoff; this module turns whatever
still fails into one `LLMError` with a kind the callers can act on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion

from companion.config import LLMConfig
from companion.limits import RequestLimit

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0
# The longest the SDK may wait when a 429 or 5xx says "retry after N seconds".
# The SDK honours up to two minutes per attempt: in a rate-limit storm a turn
# would keep its user, and every message queued behind it in the channel,
# waiting for minutes before hearing why. A longer wait fails at once
# instead: the user is told the model is rate-limited, and the scoring
# worker backs off by itself.
MAX_RETRY_AFTER_SECONDS = 10.0
# The start-up probe is one request without retries: it must not hold anything up.
PROBE_TIMEOUT_SECONDS = 5.0


class LLMError(Exception):
    """A model call that produced no usable answer.

    kind is one of: "timeout", "connection", "rate_limited", "server",
    "rejected" (a 4xx other than 429), "empty".
    """

    def __init__(self, kind: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status

    @property
    def summary(self) -> str:
        """The kind and HTTP status alone: a provider's error text may quote what it was sent."""
        return self.kind if self.status is None else f"{self.kind} (HTTP {self.status})"

    @property
    def transient(self) -> bool:
        """Whether trying again later may succeed."""
        return self.kind in ("timeout", "connection", "rate_limited", "server")


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    model: str


class LLMClient:
    """Chat and classification calls against one OpenAI-compatible endpoint."""

    def __init__(self, config: LLMConfig, api_key: str, *, http_client: httpx2.AsyncClient | None = None) -> None:
        self.config = config
        # Chat and classifier calls share one cap: however many turns and scores wait, the
        # endpoint never sees more requests at once than this.
        self.requests = RequestLimit(config.max_concurrent_requests)
        self._client = _BoundedRetryAfterOpenAI(
            base_url=config.base_url,
            api_key=api_key,
            timeout=httpx2.Timeout(
                config.timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, config.timeout_seconds)
            ),
            max_retries=config.max_retries,
            http_client=http_client,
        )

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        model: str,
        max_tokens: int,
        temperature: float | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Completion:
        """One chat completion; raises LLMError on failure or an empty answer."""
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
        if temperature is not None:
            body["temperature"] = temperature
        if response_format is not None:
            body["response_format"] = response_format
        try:
            # The SDK's documented way to send a body as it is. `chat.completions.create`
            # first walks every message against its type definitions, which costs
            # about 9 ms of CPU per call with a full prompt; our messages are plain
            # strings already. Retries, timeouts, errors and parsing stay the SDK's.
            async with self.requests.slot():
                response = await self._client.post("/chat/completions", body=body, cast_to=ChatCompletion)
        except openai.APITimeoutError as exc:
            raise LLMError("timeout", f"no answer within {self.config.timeout_seconds:g}s") from exc
        except openai.APIConnectionError as exc:
            raise LLMError("connection", str(exc) or type(exc).__name__) from exc
        except openai.RateLimitError as exc:
            raise LLMError("rate_limited", _status_detail(exc), status=exc.status_code) from exc
        except openai.APIStatusError as exc:
            kind = "server" if exc.status_code >= 500 else "rejected"
            raise LLMError(kind, _status_detail(exc), status=exc.status_code) from exc
        except (openai.OpenAIError, ValueError) as exc:
            # Malformed bodies from odd proxies surface as parse errors.
            raise LLMError("server", f"unreadable response: {exc}") from exc
        return _completion_of(response, model)

    async def chat(self, messages: list[dict[str, str]]) -> Completion:
        return await self.complete(messages, model=self.config.chat_model, max_tokens=self.config.max_reply_tokens)

    async def close(self) -> None:
        await self._client.close()

    async def probe(self) -> EndpointProbe:
        """Ask the endpoint once for its models, to learn whether it answers at all.

        Any HTTP answer means it is reachable (servers without /models answer
        404); 401 and 403 mean it refused the key. Only the kind and the status
        are kept: a provider's error text may quote what it was sent.
        """
        client = self._client.with_options(
            max_retries=0, timeout=min(PROBE_TIMEOUT_SECONDS, self.config.timeout_seconds)
        )
        at = datetime.now(UTC)
        try:
            await client.models.list()
        except openai.APITimeoutError:
            return EndpointProbe("unreachable", "timeout", at)
        except openai.APIConnectionError:
            return EndpointProbe("unreachable", "connection error", at)
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                return EndpointProbe("rejected", f"HTTP {exc.status_code}", at)
            return EndpointProbe("reachable", f"HTTP {exc.status_code}", at)
        except (openai.OpenAIError, ValueError):
            return EndpointProbe("reachable", "unreadable answer", at)
        return EndpointProbe("reachable", "HTTP 200", at)


@dataclass(frozen=True)
class EndpointProbe:
    """What one request to the model endpoint found out: whether it answered, never what it said."""

    kind: str  # "reachable", "rejected" (the API key: HTTP 401 or 403) or "unreachable"
    summary: str  # the HTTP status or the failure's kind, e.g. "HTTP 404", "connection error"
    at: datetime


def _completion_of(response: object, model: str) -> Completion:
    """The answer in a parsed response; LLMError if there is none or the body has the wrong shape.

    The SDK builds its response objects without validating them, so a proxy's
    odd JSON (choices that are not a list, content that is not a string)
    arrives here as it was sent, and must become an LLMError like any other
    unreadable answer rather than escape as an AttributeError.
    """
    if not isinstance(response, ChatCompletion):
        # A body that is not a JSON object at all (an HTML error page, a bare list).
        raise LLMError("server", f"unreadable response: a {type(response).__name__}, not a chat completion")
    choices = getattr(response, "choices", None) or []
    if not isinstance(choices, list):
        raise LLMError("server", f"unreadable response: choices is a {type(choices).__name__}")
    if not choices:
        raise LLMError("empty", "the response had no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None) or ""
    if not isinstance(text, str):
        raise LLMError("server", f"unreadable response: the answer is a {type(text).__name__}")
    finish_reason = getattr(choice, "finish_reason", None)
    if not text.strip():
        raise LLMError("empty", f"empty answer (finish_reason={finish_reason})")
    answered_model = getattr(response, "model", None)
    return Completion(
        text=text,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        model=answered_model if isinstance(answered_model, str) and answered_model else model,
    )


class _BoundedRetryAfterOpenAI(AsyncOpenAI):
    """The SDK client, retrying only when the server's Retry-After is at most MAX_RETRY_AFTER_SECONDS.

    The SDK has no public setting for this (openai 3.51.0 hard-codes two
    minutes), so this overrides its private retry decision hook, the one that
    already refuses Retry-After beyond two minutes, and calls its private
    Retry-After parser. tests/test_dependency_hooks.py fails, naming the hook,
    if an SDK upgrade renames, reshapes or stops calling them.
    """

    def _should_retry(self, response: httpx2.Response) -> bool:
        retry_after = self._parse_retry_after_header(response.headers)
        if retry_after is not None and retry_after > MAX_RETRY_AFTER_SECONDS:
            log.info("not retrying: the endpoint asks to wait %.0fs", retry_after)
            return False
        return super()._should_retry(response)


def _status_detail(exc: openai.APIStatusError) -> str:
    message = getattr(exc, "message", "") or ""
    return f"HTTP {exc.status_code}: {message[:200]}"
