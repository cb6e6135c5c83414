"""A fake OpenAI-compatible endpoint on 127.0.0.1 for the real openai SDK.

Each model has a queue of scripted actions (answer, fail, hang, send raw
bytes, cut the connection or stall in the middle of a body); when a queue
is empty, the model's default responder answers.
Every request body is recorded, so tests can read the prompts the bot sent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Answer:
    text: str
    delay: float = 0.0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Fail:
    status: int
    message: str = "scripted failure"
    retry_after: float | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Hang:
    seconds: float = 3600.0


@dataclass(frozen=True)
class Raw:
    body: bytes
    content_type: str = "application/json"
    status: int = 200


@dataclass(frozen=True)
class Cut:
    """Send the headers and the start of the body, then drop the connection."""

    partial: bytes = b'{"id": "chatcmpl-cut", "object": "chat.completion", "choi'


@dataclass(frozen=True)
class Stall:
    """Send the headers and the start of the body, then nothing more for `seconds`."""

    seconds: float = 3600.0
    partial: bytes = b'{"id": "chatcmpl-stall", '


Action = Answer | Fail | Hang | Raw | Cut | Stall
Responder = Callable[[dict[str, Any]], Action | Awaitable[Action]]


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def scored_turn(body: dict[str, Any]) -> str:
    """The turn a classifier request asks about, narrated: `Alice said: ...` and the bot's reply."""
    turn = json.loads(last_user_text(body))["turn_to_score"]
    return narrated_turn(turn["who"], turn["said"], turn.get("bot_replied", ""))


def narrated_turn(who: str, said: str, replied: str) -> str:
    """What `scored_turn` gives for a turn with these texts (as the classifier got them)."""
    return f"{who} said: {said}\nbot replied: {replied}" if replied else f"{who} said: {said}"


def echo_responder(body: dict[str, Any]) -> Action:
    return Answer(f"I hear you: {last_user_text(body)[:200]}")


@dataclass
class RecordedRequest:
    model: str
    body: dict[str, Any]
    time: float

    @property
    def text(self) -> str:
        """Every message content of the request, joined."""
        return "\n".join(str(m.get("content", "")) for m in self.body.get("messages", []))


@dataclass
class FakeLLM:
    default_responder: Responder = echo_responder
    requests: list[RecordedRequest] = field(default_factory=list)
    responders: dict[str, Responder] = field(default_factory=dict)
    _scripts: dict[str, deque[Action]] = field(default_factory=lambda: defaultdict(deque))
    _runner: web.AppRunner | None = None
    _port: int = 0
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _in_flight: int = 0
    max_in_flight: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def script(self, model: str, *actions: Action) -> None:
        """Queue actions for the next requests to `model`."""
        self._scripts[model].extend(actions)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    async def wait_for_requests(self, count: int, *, model: str | None = None, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests_for(model) if model else self.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} requests to {model or 'any model'}")
            await asyncio.sleep(0.01)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        self.requests.append(RecordedRequest(model, body, time.monotonic()))
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            action = await self._next_action(model, body)
            return await self._perform(action, body, request)
        finally:
            self._in_flight -= 1

    async def _next_action(self, model: str, body: dict[str, Any]) -> Action:
        script = self._scripts.get(model)
        if script:
            return script.popleft()
        responder = self.responders.get(model, self.default_responder)
        action = responder(body)
        if asyncio.iscoroutine(action):
            action = await action
        return action  # type: ignore[return-value]

    async def _perform(self, action: Action, body: dict[str, Any], request: web.Request) -> web.StreamResponse:
        match action:
            case Answer(text=text, delay=delay, finish_reason=finish_reason):
                if delay:
                    await asyncio.sleep(delay)
                return _json(self._completion(body, text, finish_reason))
            case Fail(status=status, message=message, retry_after=retry_after, delay=delay):
                if delay:
                    await asyncio.sleep(delay)
                headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
                error = {"error": {"message": message, "type": "server_error", "code": None}}
                return _json(error, status=status, headers=headers)
            case Hang(seconds=seconds):
                await asyncio.sleep(seconds)
                return _json(self._completion(body, "too late", "stop"))
            case Raw(body=raw, content_type=content_type, status=status):
                return web.Response(body=raw, status=status, content_type=content_type)
            case Cut(partial=partial):
                response = await _start_body(request, partial)
                assert request.transport is not None
                request.transport.close()
                return response
            case Stall(seconds=seconds, partial=partial):
                response = await _start_body(request, partial)
                await asyncio.sleep(seconds)
                return response
        raise TypeError(f"unknown action {action!r}")

    def _completion(self, body: dict[str, Any], text: str, finish_reason: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


async def _start_body(request: web.Request, partial: bytes) -> web.StreamResponse:
    """A 200 JSON response promising more bytes than `partial`, of which only `partial` is sent."""
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = len(partial) + 1000
    await response.prepare(request)
    await response.write(partial)
    return response


def _json(payload: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(), status=status, headers=headers, content_type="application/json"
    )
