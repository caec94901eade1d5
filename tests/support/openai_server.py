"""A real OpenAI-compatible HTTP server on 127.0.0.1, for tests.

The litellm backend must be tested through its real transport (HTTP client,
status codes, headers, body parsing), not through mocks: that is where rate
limits, 5xx replies and malformed bodies show up. This server answers
``POST /v1/chat/completions`` from a queue of scripted behaviours (falling back
to a default reply when the queue is empty), records every request body it
received, and serves ``GET /v1/models``.

Usage::

    with OpenAIServer() as server:
        server.enqueue(rate_limited(retry_after=0), completion("hello"))
        ...  # talk to server.base_url ("http://127.0.0.1:PORT/v1")
        assert len(server.requests) == 2
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tests.support.loopback import LoopbackHandler, LoopbackServer


@dataclass(frozen=True)
class Behaviour:
    """How the server answers one chat completion request."""

    status: int = 200
    text: str = "ok"
    prompt_tokens: int = 10
    completion_tokens: int = 5
    finish_reason: str = "stop"
    headers: tuple[tuple[str, str], ...] = ()
    #: If set, sent verbatim as the body instead of a completion object.
    raw_body: str | None = None
    #: Seconds to wait before answering (to provoke client timeouts).
    delay_s: float = 0.0
    error_message: str = ""
    #: Native tool calls in the reply: ``(name, arguments_json)`` pairs.
    tool_calls: tuple[tuple[str, str], ...] = ()
    #: Tokens the provider reports as read from its prompt cache (OpenAI's ``cached_tokens``).
    cached_tokens: int = 0


def completion(text: str, *, prompt_tokens: int = 10, completion_tokens: int = 5, finish_reason: str = "stop") -> Behaviour:
    """A normal 200 chat completion."""
    return Behaviour(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, finish_reason=finish_reason)


def tool_call(name: str, arguments: dict[str, Any] | str, *, text: str = "") -> Behaviour:
    """A 200 reply making one native tool call (``finish_reason: tool_calls``)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return Behaviour(text=text, tool_calls=((name, args),), finish_reason="tool_calls")


def rate_limited(retry_after: float | None = 1) -> Behaviour:
    """HTTP 429, with a ``Retry-After`` header (seconds) unless ``retry_after`` is None."""
    headers = (("Retry-After", _seconds(retry_after)),) if retry_after is not None else ()
    return Behaviour(status=429, headers=headers, error_message="Rate limit reached, slow down")


def server_error(status: int = 500) -> Behaviour:
    """An HTTP 5xx with an OpenAI-style error body."""
    return Behaviour(status=status, error_message="The server had an error while processing your request")


def http_error(status: int, message: str = "request refused") -> Behaviour:
    """Any other HTTP error status (401, 404, 400...) with an OpenAI-style error body."""
    return Behaviour(status=status, error_message=message)


def malformed(body: str = "<html>this is not JSON</html>") -> Behaviour:
    """HTTP 200 whose body is not a chat completion."""
    return Behaviour(raw_body=body)


def slow(seconds: float, text: str = "late") -> Behaviour:
    """A normal completion sent after ``seconds``."""
    return Behaviour(text=text, delay_s=seconds)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass
class _State:
    queue: deque[Behaviour] = field(default_factory=deque)
    default: Behaviour = field(default_factory=lambda: completion("default reply"))
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    #: The client's port for each request (one port per TCP connection), in request order.
    peer_ports: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(LoopbackHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": "test-model", "object": "model", "owned_by": "tests"}]})
        else:
            self._send_json(404, _error_body("no such route", "not_found"))

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, _error_body("no such route", "not_found"))
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, _error_body("request body is not JSON", "invalid_request_error"))
            return
        state = self.server.state
        with state.lock:
            state.requests.append(body)
            state.headers.append({k.lower(): v for k, v in self.headers.items()})
            state.peer_ports.append(int(self.client_address[1]))
            behaviour = state.queue.popleft() if state.queue else state.default
        if behaviour.delay_s:
            time.sleep(behaviour.delay_s)
        self._answer(behaviour, body)

    def _answer(self, behaviour: Behaviour, body: dict[str, Any]) -> None:
        if behaviour.raw_body is not None:
            self._send(behaviour.status, behaviour.raw_body.encode(), "text/html", behaviour.headers)
        elif behaviour.status != 200:
            kind = "rate_limit_exceeded" if behaviour.status == 429 else "server_error" if behaviour.status >= 500 else "invalid_request_error"
            self._send_json(behaviour.status, _error_body(behaviour.error_message, kind), behaviour.headers)
        else:
            self._send_json(200, _completion_body(behaviour, str(body.get("model", "test-model"))), behaviour.headers)



def _error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def _completion_body(behaviour: Behaviour, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": _message(behaviour), "finish_reason": behaviour.finish_reason}
        ],
        "usage": {
            "prompt_tokens": behaviour.prompt_tokens,
            "completion_tokens": behaviour.completion_tokens,
            "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": behaviour.cached_tokens},
        },
    }


def _message(behaviour: Behaviour) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": behaviour.text or None if behaviour.tool_calls else behaviour.text}
    if behaviour.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(behaviour.tool_calls)
        ]
    return message


class OpenAIServer(LoopbackServer):
    """Loopback OpenAI-compatible server; use as a context manager."""

    handler = _Handler
    thread_name = "openai-test-server"

    def __init__(self, default: Behaviour | None = None) -> None:
        self._state = _State()
        if default is not None:
            self._state.default = default

    # -- addresses ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients want: ``http://127.0.0.1:PORT/v1``."""
        return self.url + "/v1"

    # -- behaviour and observations ---------------------------------------------------

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with these behaviours, in order."""
        with self._state.lock:
            self._state.queue.extend(behaviours)

    @property
    def peer_ports(self) -> list[int]:
        """The client port of every request, oldest first: requests on one connection share it."""
        with self._state.lock:
            return list(self._state.peer_ports)

    def set_default(self, behaviour: Behaviour) -> None:
        """The answer used when the queue is empty."""
        with self._state.lock:
            self._state.default = behaviour



