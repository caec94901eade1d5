"""A loopback server that speaks Anthropic's Messages API, with prompt-cache accounting.

What litellm 1.106.2 sends for ``anthropic/...`` models goes to ``POST /v1/messages``:
litellm takes ``api_base`` (or ``litellm.api_base``, or the ``ANTHROPIC_API_BASE`` /
``ANTHROPIC_BASE_URL`` environment variables, in that order) and appends
``/v1/messages`` unless the base already ends with it; so a base of
``http://127.0.0.1:PORT`` (what :attr:`AnthropicServer.url` gives) posts to
``http://127.0.0.1:PORT/v1/messages``. This server answers that path (and
``/v1/messages/count_tokens``); any other path is a 404, as on the real API, so a
wrong base URL shows up at once (``server.paths`` records what was asked for).

Answers come from a *responder*, ``responder(request_body) -> reply``, where a reply is

* a string: a text answer (``stop_reason: end_turn``);
* ``{"tool": NAME, "input": {...}}`` (optionally ``"text": "..."`` before it): a
  ``tool_use`` block (``stop_reason: tool_use``);
* a :class:`Behaviour` (from :func:`rate_limited`, :func:`overloaded`, ...): an error.

Behaviours queued with :meth:`AnthropicServer.enqueue` answer the next requests first
(errors, or fixed replies), like ``tests/support/openai_server.py``.

A request that forces a tool (``tool_choice: {"type": "tool", "name": X}``, which litellm
sends to implement ``response_format`` for Claude models *without* native structured
output) is answered with a ``tool_use`` block for X whose ``input`` is the responder's
text parsed as JSON (a fenced block or surrounding prose is tolerated). A request with
``output_format`` (or ``output_config.format``) — Anthropic's native structured output,
which litellm 1.106.2 uses instead for models whose price-map entry says
``supports_native_structured_output``, claude-sonnet-4-5 among them — is answered with the
responder's text as is (it should be JSON).

Offline: besides ``LITELLM_LOCAL_MODEL_COST_MAP=True`` and ``HF_HUB_OFFLINE=1``, litellm's
Anthropic path needs ``LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True``; without it the first
call that carries a beta header (structured output, for one) tries to fetch a table from
raw.githubusercontent.com before falling back to its bundled copy.

Errors use Anthropic's body, ``{"type": "error", "error": {"type": ..., "message": ...}}``,
with the real API's error types (``rate_limit_error`` 429 + ``retry-after``,
``overloaded_error`` 529, ``api_error`` 500, ``authentication_error`` 401, ...). With
``api_key=...`` the server itself refuses other keys (``x-api-key`` or ``Authorization:
Bearer``) with a 401.

Prompt caching, as Anthropic accounts for it
---------------------------------------------
Usage is ``input_tokens`` (uncached: neither read from nor written to the cache),
``cache_creation_input_tokens``, ``cache_read_input_tokens`` (plus the ``cache_creation``
breakdown by TTL), and ``output_tokens``. The prompt is a sequence of blocks in Anthropic's
prefix order: each tool definition, then each system block, then each content block of
each message (string content counts as one text block). A block carrying
``cache_control: {"type": "ephemeral"}`` is a *breakpoint*; at most 4 per request (more is
a 400, as on the real API). On each request:

* **read**: for every breakpoint, the prefix ending at it and the prefixes ending at the
  ``LOOKBACK_BLOCKS - 1`` block boundaries before it are looked up (the real API checks
  "up to about 20 blocks" back); the longest prefix found in the cache is read;
* **write**: the prefixes ending at breakpoints that are at least the model's minimum
  cacheable length (1024 tokens for Sonnet and Opus 4/4.1, 2048 for Haiku 3/3.5, 4096
  for Opus 4.5 and Haiku 4.5; see :func:`min_cacheable_tokens`) are stored; the tokens from
  the end of the read prefix to the last such breakpoint are the creation tokens;
* **input**: everything else (after the last breakpoint, or all of it without one).

The cache is a dict of prefix hashes to token counts. A prefix hash covers the model, the
blocks without their ``cache_control`` (moving a breakpoint does not invalidate a prefix,
as on the real API), and, from the first message on, ``tool_choice`` and ``thinking``
(changing those invalidates the message part of the cache, as documented by Anthropic).

Tokens are counted deterministically: a block is ``max(1, len(J) // 4)`` tokens, where J is
the block's compact JSON (sorted keys, no ``cache_control``); a string system prompt or
string message content counts as the block ``{"type": "text", "text": ...}``. Output is
``max(1, len(text) // 4)`` for text and the same over the JSON of a tool call's input.

Simplified (good enough for accounting, not a model of the service):
entries never expire (the 5-minute / 1-hour TTLs are only reported in the ``cache_creation``
breakdown, never enforced) and a read does not refresh anything; there is no per-
organisation isolation (one dict per server, shared by every key); images, documents and
thinking blocks are counted like any other JSON; no per-message overhead tokens;
the lookback window is exactly ``LOOKBACK_BLOCKS`` boundaries; streaming
(``stream: true``) is not implemented (a 400 says so); ``max_tokens`` truncates text
replies (``stop_reason: max_tokens``) but never tool calls.

Also here: :func:`scripted_responder`, which answers from a termigen scripted-backend
script (``termigen_plugins.backends.scripted``), for end-to-end runs of a pipeline through
litellm's real Anthropic client.

Usage::

    with AnthropicServer(responder=lambda body: "hello") as server:
        litellm.completion(model="anthropic/claude-sonnet-4-5", api_base=server.url,
                           api_key="sk-dummy", messages=[...])
        server.usages[-1]   # {"input_tokens": ..., "cache_read_input_tokens": ..., ...}
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.loopback import LoopbackHandler, LoopbackServer

#: The path litellm posts to (``api_base`` + ``/v1/messages``).
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
#: At most this many ``cache_control`` breakpoints per request (the real API's limit).
MAX_BREAKPOINTS = 4
#: Block boundaries checked for a cache hit per breakpoint: the breakpoint and the 19 before it.
LOOKBACK_BLOCKS = 20

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# --- behaviours (errors and fixed replies) --------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How the server answers one request when it is not a normal reply."""

    status: int = 200
    #: For a 200: the reply (text, or ``{"tool": ..., "input": ...}``); None = ask the responder.
    reply: Any = None
    error_type: str = ""
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    #: If set, sent verbatim as the body instead of a message or an error object.
    raw_body: str | None = None
    #: Seconds to wait before answering (to provoke client timeouts).
    delay_s: float = 0.0


def reply(value: Any) -> Behaviour:
    """A normal 200 answer with this reply (text or a tool call), whatever the responder says."""
    return Behaviour(reply=value)


def rate_limited(retry_after: float | None = 1) -> Behaviour:
    """HTTP 429 ``rate_limit_error``, with ``retry-after`` (seconds) unless ``retry_after`` is None."""
    headers = (("retry-after", _seconds(retry_after)),) if retry_after is not None else ()
    return Behaviour(status=429, error_type="rate_limit_error", headers=headers,
                     message="Number of request tokens has exceeded your per-minute rate limit")


def overloaded(status: int = 529) -> Behaviour:
    """HTTP 529 ``overloaded_error`` (Anthropic's "the API is temporarily overloaded")."""
    return Behaviour(status=status, error_type="overloaded_error", message="Overloaded")


def server_error(status: int = 500) -> Behaviour:
    """HTTP 500 ``api_error`` (or another 5xx)."""
    return Behaviour(status=status, error_type=_ERROR_TYPES.get(status, "api_error"), message="Internal server error")


def authentication_error() -> Behaviour:
    """HTTP 401 ``authentication_error``, as for a wrong key."""
    return Behaviour(status=401, error_type="authentication_error", message="invalid x-api-key")


def http_error(status: int, message: str = "request refused", error_type: str | None = None) -> Behaviour:
    """Any error status with Anthropic's error body (type from the status unless given)."""
    return Behaviour(status=status, error_type=error_type or _ERROR_TYPES.get(status, "api_error"), message=message)


def prompt_too_long(tokens: int = 250_000, maximum: int = 200_000) -> Behaviour:
    """HTTP 400 as for a prompt over the context window (litellm: ``ContextWindowExceededError``)."""
    return Behaviour(status=400, error_type="invalid_request_error",
                     message=f"prompt is too long: {tokens} tokens > {maximum} maximum")


def malformed(body: str = "<html>this is not JSON</html>") -> Behaviour:
    """HTTP 200 whose body is not a message."""
    return Behaviour(raw_body=body)


def slow(seconds: float, value: Any = None) -> Behaviour:
    """A normal answer (the responder's, or ``value``) sent after ``seconds``."""
    return Behaviour(reply=value, delay_s=seconds)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


Reply = str | Mapping[str, Any] | Behaviour
Responder = Callable[[dict[str, Any]], Reply]


def default_responder(body: dict[str, Any]) -> Reply:
    """``"default reply"``; ``{}`` as the input of a forced tool."""
    forced = forced_tool(body)
    if forced is not None:
        return {"tool": forced, "input": {}}
    return "default reply"


# --- tokens and caching ------------------------------------------------------------


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def count_tokens(block: Any) -> int:
    """Deterministic stand-in for a tokenizer: a quarter of the block's compact JSON, at least 1."""
    return max(1, len(_compact(block)) // 4)


def min_cacheable_tokens(model: str) -> int:
    """Anthropic's minimum cacheable prompt length for a model.

    litellm's price map says it (``prompt_cache_min_tokens``): it is used when litellm is
    already imported (never imported here: that takes seconds). Otherwise Anthropic's
    documented figures: 4096 for Opus 4.5 and Haiku 4.5, 2048 for Haiku 3/3.5, else 1024.
    """
    import sys

    name = model.lower().split("/")[-1]
    litellm = sys.modules.get("litellm")
    if litellm is not None:
        entry = getattr(litellm, "model_cost", {}).get(name) or {}
        if isinstance(entry.get("prompt_cache_min_tokens"), int):
            return int(entry["prompt_cache_min_tokens"])
    name = name.replace(".", "-")
    if "haiku-4" in name or "opus-4-5" in name or "opus-4-6" in name:
        return 4096
    if "haiku" in name:  # claude-3-haiku, claude-3-5-haiku
        return 2048
    return 1024


@dataclass(frozen=True)
class PromptBlock:
    """One block of the prompt in prefix order."""

    section: str  # "tools" | "system" | "messages"
    content: dict[str, Any]  # without cache_control
    tokens: int
    cache_control: dict[str, Any] | None
    prefix_hash: str  # hash of the whole prefix ending with this block
    prefix_tokens: int  # tokens of the whole prefix ending with this block


class PromptError(ValueError):
    """The request is invalid (answered with a 400 ``invalid_request_error``)."""


def _as_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return list(content)
    raise PromptError(f"{where}: expected a string or a list of content blocks")


def prompt_blocks(body: dict[str, Any]) -> list[PromptBlock]:
    """The request's prompt as blocks in Anthropic's prefix order (tools → system → messages)."""
    raw: list[tuple[str, dict[str, Any], str]] = []
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict):
            raise PromptError(f"tools.{i}: expected an object")
        raw.append(("tools", tool, ""))
    system = body.get("system")
    if system is not None and system != "":
        for block in _as_blocks(system, "system"):
            raw.append(("system", block, ""))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise PromptError("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise PromptError(f"messages.{i}.role: expected 'user' or 'assistant'")
        for block in _as_blocks(message.get("content"), f"messages.{i}.content"):
            raw.append(("messages", block, str(message["role"])))

    header = _compact({"model": body.get("model")})
    state = hashlib.sha256(header.encode()).hexdigest()
    messages_header = _compact({"tool_choice": body.get("tool_choice"), "thinking": body.get("thinking")})
    blocks: list[PromptBlock] = []
    total = 0
    first_message = True
    for section, block, role in raw:
        control = block.get("cache_control")
        if control is not None and (not isinstance(control, dict) or control.get("type") != "ephemeral"):
            raise PromptError(f"{section}: cache_control.type must be 'ephemeral'")
        if control is not None and control.get("ttl", "5m") not in ("5m", "1h"):
            raise PromptError(f"{section}: cache_control.ttl must be '5m' or '1h'")
        content = {k: v for k, v in block.items() if k != "cache_control"}
        payload = _compact({"section": section, "role": role, "block": content})
        if section == "messages" and first_message:
            payload = messages_header + payload
            first_message = False
        state = hashlib.sha256((state + payload).encode()).hexdigest()
        tokens = count_tokens(content)
        total += tokens
        blocks.append(PromptBlock(section, content, tokens, control, state, total))
    return blocks


@dataclass(frozen=True)
class CacheUsage:
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    ephemeral_5m_input_tokens: int
    ephemeral_1h_input_tokens: int

    def as_usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.ephemeral_5m_input_tokens,
                "ephemeral_1h_input_tokens": self.ephemeral_1h_input_tokens,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }


class PromptCache:
    """Prefix hash → token count, with Anthropic's read/write accounting (thread-safe)."""

    def __init__(self, min_tokens: Callable[[str], int] = min_cacheable_tokens) -> None:
        self.entries: dict[str, int] = {}
        self._min_tokens = min_tokens
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def account(self, body: dict[str, Any], blocks: list[PromptBlock]) -> CacheUsage:
        """Look up and store the request's prefixes; return the input-token split."""
        total = blocks[-1].prefix_tokens if blocks else 0
        breakpoints = [i for i, b in enumerate(blocks) if b.cache_control is not None]
        if len(breakpoints) > MAX_BREAKPOINTS:
            raise PromptError(
                f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(breakpoints)}."
            )
        minimum = self._min_tokens(str(body.get("model", "")))
        with self._lock:
            read = 0
            for b in breakpoints:
                for j in range(b, max(-1, b - LOOKBACK_BLOCKS), -1):
                    if blocks[j].prefix_hash in self.entries:
                        read = max(read, blocks[j].prefix_tokens)
                        break
            cacheable = [b for b in breakpoints if blocks[b].prefix_tokens >= minimum]
            ttl_tokens = {"5m": 0, "1h": 0}
            previous = 0
            for b in cacheable:
                end = blocks[b].prefix_tokens
                segment = end - max(read, previous)
                if segment > 0:
                    ttl_tokens[str((blocks[b].cache_control or {}).get("ttl", "5m"))] += segment
                previous = end
                self.entries[blocks[b].prefix_hash] = end
        creation = ttl_tokens["5m"] + ttl_tokens["1h"]
        return CacheUsage(
            input_tokens=total - read - creation,
            cache_creation_input_tokens=creation,
            cache_read_input_tokens=read,
            ephemeral_5m_input_tokens=ttl_tokens["5m"],
            ephemeral_1h_input_tokens=ttl_tokens["1h"],
        )


# --- requests -> replies ---------------------------------------------------------------


def forced_tool(body: dict[str, Any]) -> str | None:
    """The tool a request forces (``tool_choice: {"type": "tool", "name": X}``), if any."""
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        return str(choice.get("name") or "")
    return None


def structured_output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of native structured output (``output_format`` / ``output_config.format``)."""
    fmt = body.get("output_format")
    if fmt is None and isinstance(body.get("output_config"), dict):
        fmt = body["output_config"].get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) else {}
    return None


_FENCE = re.compile(r"```(?:[A-Za-z0-9_+-]*)\s*\n(.*?)```", re.DOTALL)


def parse_json_object(text: str) -> dict[str, Any]:
    """A JSON object from a reply (tolerating a code fence or prose around it)."""
    candidates = [text.strip()]
    fence = _FENCE.search(text)
    if fence:
        candidates.append(fence.group(1).strip())
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"not a JSON object: {text[:200]!r}")


_ids = itertools.count(1)


def _message_body(body: dict[str, Any], value: Any, usage: CacheUsage) -> dict[str, Any]:
    """The 200 body for one reply (raises ValueError when the reply cannot answer the request)."""
    model = str(body.get("model", "claude"))
    forced = forced_tool(body)
    tool_names = [str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict)]
    content: list[dict[str, Any]] = []
    if isinstance(value, Mapping) and "tool" in value:
        name = str(value["tool"])
        if forced is not None and name != forced:
            raise ValueError(f"the request forces tool {forced!r}, the responder called {name!r}")
        if name not in tool_names:
            raise ValueError(f"the responder called tool {name!r}, which the request does not define ({tool_names})")
        arguments = value.get("input", {})
        if not isinstance(arguments, Mapping):
            raise ValueError(f"a tool call's input must be an object, got {type(arguments).__name__}")
        if value.get("text"):
            content.append({"type": "text", "text": str(value["text"])})
        content.append({"type": "tool_use", "id": f"toolu_loopback_{next(_ids):06d}", "name": name, "input": dict(arguments)})
        stop_reason = "tool_use"
        output = count_tokens(dict(arguments))
    elif isinstance(value, str):
        if forced is not None:
            if forced not in tool_names:
                raise ValueError(f"tool_choice names {forced!r}, which the request does not define ({tool_names})")
            arguments = parse_json_object(value)
            content.append({"type": "tool_use", "id": f"toolu_loopback_{next(_ids):06d}", "name": forced, "input": arguments})
            stop_reason = "tool_use"
            output = count_tokens(arguments)
        else:
            text = value
            stop_reason = "end_turn"
            output = max(1, len(text) // 4)
            limit = body.get("max_tokens")
            if isinstance(limit, int) and output > limit:
                text, output, stop_reason = text[: limit * 4], limit, "max_tokens"
            content.append({"type": "text", "text": text})
    else:
        raise ValueError(f"a reply must be a string or {{'tool': NAME, 'input': {{...}}}}, got {type(value).__name__}")
    return {
        "id": f"msg_loopback_{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage.as_usage(output),
    }


# --- the HTTP server -----------------------------------------------------------------


@dataclass
class _State:
    responder: Responder = default_responder
    queue: deque[Behaviour] = field(default_factory=deque)
    api_key: str | None = None
    cache: PromptCache = field(default_factory=PromptCache)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    usages: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(LoopbackHandler):
    def default_headers(self) -> tuple[tuple[str, str], ...]:
        return (("request-id", f"req_loopback_{next(_ids):06d}"),)

    def do_GET(self) -> None:
        self._send_error(404, "not_found_error", f"no route GET {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        state = self.server.state
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        with state.lock:
            state.paths.append(self.path)
            state.requests.append(body if isinstance(body, dict) else {"_raw": raw.decode(errors="replace")})
            state.headers.append(headers)
        if path not in (MESSAGES_PATH, COUNT_TOKENS_PATH):
            self._send_error(404, "not_found_error", f"no route POST {self.path} (the Messages API is POST {MESSAGES_PATH})")
            return
        if not isinstance(body, dict):
            self._send_error(400, "invalid_request_error", "the request body is not a JSON object")
            return
        if state.api_key is not None and _key_of(headers) != state.api_key:
            self._send_error(401, "authentication_error", "invalid x-api-key")
            return
        if path == COUNT_TOKENS_PATH:
            try:
                blocks = prompt_blocks(body)
            except PromptError as exc:
                self._send_error(400, "invalid_request_error", str(exc))
                return
            self._send_json(200, {"input_tokens": blocks[-1].prefix_tokens if blocks else 0})
            return
        self._messages(body)

    def _messages(self, body: dict[str, Any]) -> None:
        state = self.server.state
        with state.lock:
            behaviour = state.queue.popleft() if state.queue else None
            responder = state.responder
        if behaviour is not None and behaviour.delay_s:
            time.sleep(behaviour.delay_s)
        if behaviour is not None and behaviour.raw_body is not None:
            self._send(behaviour.status, behaviour.raw_body.encode(), "text/html", behaviour.headers)
            return
        if behaviour is not None and behaviour.status != 200:
            self._send_error(behaviour.status, behaviour.error_type, behaviour.message, behaviour.headers)
            return
        problem = _validate(body)
        if problem:
            self._send_error(400, "invalid_request_error", problem)
            return
        try:
            blocks = prompt_blocks(body)
        except PromptError as exc:
            self._send_error(400, "invalid_request_error", str(exc))
            return
        value = behaviour.reply if behaviour is not None and behaviour.reply is not None else None
        if value is None:
            try:
                value = responder(body)
            except Exception as exc:  # noqa: BLE001 - a broken responder is reported to the client
                self._send_error(500, "api_error", f"loopback server: the responder raised {type(exc).__name__}: {exc}")
                return
        if isinstance(value, Behaviour):  # the responder chose an error
            if value.delay_s:
                time.sleep(value.delay_s)
            if value.raw_body is not None:
                self._send(value.status, value.raw_body.encode(), "text/html", value.headers)
                return
            if value.status != 200:
                self._send_error(value.status, value.error_type, value.message, value.headers)
                return
            value = value.reply if value.reply is not None else default_responder(body)
        # Validate the reply before touching the cache: a refused request writes nothing.
        try:
            _message_body(body, value, CacheUsage(0, 0, 0, 0, 0))
        except ValueError as exc:
            self._send_error(500, "api_error", f"loopback server: the reply cannot answer this request: {exc}")
            return
        try:
            usage = state.cache.account(body, blocks)
        except PromptError as exc:
            self._send_error(400, "invalid_request_error", str(exc))
            return
        message = _message_body(body, value, usage)
        with state.lock:
            state.usages.append(dict(message["usage"]))
        self._send_json(200, message)

    def _send_error(self, status: int, kind: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        payload = {"type": "error", "error": {"type": kind or _ERROR_TYPES.get(status, "api_error"), "message": message}}
        self._send_json(status, payload, headers)



def _key_of(headers: dict[str, str]) -> str | None:
    if "x-api-key" in headers:
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else None


def _validate(body: dict[str, Any]) -> str:
    """What the real API would refuse with a 400 (the checks that matter here)."""
    if not body.get("model"):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required (a positive integer)"
    if body.get("stream"):
        return "loopback server: stream=true is not implemented"
    return ""


class AnthropicServer(LoopbackServer):
    """Loopback Anthropic Messages API server; use as a context manager (``url`` is the
    ``api_base`` / ``ANTHROPIC_BASE_URL`` to give litellm)."""

    handler = _Handler
    thread_name = "anthropic-test-server"

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        api_key: str | None = None,
        min_tokens: Callable[[str], int] | int | None = None,
    ) -> None:
        """``api_key``: refuse any other key with a 401. ``min_tokens``: minimum cacheable prefix
        (an int, or a function of the model name; default :func:`min_cacheable_tokens`)."""
        minimum: Callable[[str], int]
        if min_tokens is None:
            minimum = min_cacheable_tokens
        elif isinstance(min_tokens, int):
            def minimum(_model: str, n: int = min_tokens) -> int:
                return n
        else:
            minimum = min_tokens
        self._state = _State(responder=responder or default_responder, api_key=api_key, cache=PromptCache(minimum))

    # -- addresses ---------------------------------------------------------------

    @property
    def messages_url(self) -> str:
        """The full URL litellm posts to (``url`` + ``/v1/messages``)."""
        return self.url + MESSAGES_PATH

    # -- behaviour ---------------------------------------------------------------------

    def set_responder(self, responder: Responder) -> None:
        with self._state.lock:
            self._state.responder = responder

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Answer the next ``/v1/messages`` requests with these behaviours, in order."""
        with self._state.lock:
            self._state.queue.extend(behaviours)

    @property
    def cache(self) -> PromptCache:
        """The prompt cache (``.entries``: prefix hash → tokens; ``.clear()``)."""
        return self._state.cache

    def reset(self) -> None:
        """Forget the cache, the queue and every recorded request."""
        with self._state.lock:
            self._state.queue.clear()
            for seq in (self._state.requests, self._state.headers, self._state.paths, self._state.usages):
                seq.clear()
        self._state.cache.clear()

    # -- observations ------------------------------------------------------------------



    @property
    def paths(self) -> list[str]:
        """The path (with any query) of every request."""
        with self._state.lock:
            return list(self._state.paths)

    @property
    def usages(self) -> list[dict[str, Any]]:
        """The ``usage`` object of every successful ``/v1/messages`` answer."""
        with self._state.lock:
            return [json.loads(json.dumps(u)) for u in self._state.usages]


# --- answering from a termigen scripted-backend script -----------------------------------

#: Prompt templates whose opening words identify a termigen role (and stage): (file under
#: the ``termigen_plugins`` package, role, stage). The opening is read from the file at run
#: time (text before the first ``$`` placeholder), so rewording a template keeps working.
TERMIGEN_PROMPT_ROLES: tuple[tuple[str, str, str], ...] = (
    ("taxonomy_builtin/seed_prompt.txt", "seeder", "seeds"),
    ("stages/prompts/proposer.txt", "proposer", "propose"),
    ("stages/prompts/evaluator.txt", "evaluator", "propose"),
    ("stages/prompts/planner.txt", "planner", "synthesize"),
    ("stages/prompts/constructor.txt", "constructor", "synthesize"),
    ("stages/prompts/env_agent.txt", "env_agent", "synthesize"),
    ("stages/prompts/build_repair.txt", "env_agent", "build"),
    ("stages/prompts/test_generator.txt", "test_generator", "tests"),
    ("stages/prompts/judge.txt", "judge", "tests"),
    ("stages/prompts/solver.txt", "solver", "validate"),
    ("stages/prompts/test_repair.txt", "test_generator", "validate"),
    ("stages/prompts/solution_repair.txt", "solver", "validate"),
    ("agent/prompts/system.txt", "agent", "trajectories"),
    ("agent/prompts/critic.txt", "critic", "trajectories"),
)


def termigen_role_hints() -> list[tuple[re.Pattern[str], str, str]]:
    """(opening regex, role, stage) for termigen's own prompt templates (see TERMIGEN_PROMPT_ROLES)."""
    import termigen_plugins

    root = Path(termigen_plugins.__file__).resolve().parent
    hints: list[tuple[re.Pattern[str], str, str]] = []
    for rel, role, stage in TERMIGEN_PROMPT_ROLES:
        path = root / rel
        if not path.is_file():
            continue
        first = path.read_text(encoding="utf-8").strip().splitlines()[0] if path.read_text(encoding="utf-8").strip() else ""
        opening = first.split("$", 1)[0].strip()
        if len(opening) >= 12:
            hints.append((re.compile(r"\A\s*" + re.escape(opening)), role, stage))
    return hints


def _block_text(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return "\n".join(_block_text(b) for b in content if isinstance(b, dict))
        return str(content or "")
    if kind == "tool_use":
        return _compact(block.get("input", {}))
    return ""


def termigen_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The request as termigen's ``[{"role", "content"}]`` messages.

    Each system block becomes a ``system`` message (litellm turns each system message into
    one block); each wire message's text (text blocks, tool results, tool-call inputs as
    JSON) joined with blank lines becomes one message of its role.
    """
    out: list[dict[str, str]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append({"role": "system", "content": system})
    elif isinstance(system, list):
        out.extend({"role": "system", "content": _block_text(b)} for b in system if isinstance(b, dict))
    for message in body.get("messages") or []:
        content = message.get("content")
        text = content if isinstance(content, str) else "\n\n".join(
            _block_text(b) for b in content or [] if isinstance(b, dict)
        )
        out.append({"role": str(message.get("role")), "content": text})
    return out


def scripted_responder(
    script: str | Path,
    *,
    role_hints: Iterable[tuple[re.Pattern[str] | str, str, str | None]] | None = None,
    on_no_match: Callable[[dict[str, Any]], Reply] | None = None,
) -> Responder:
    """A responder that answers like termigen's ``scripted`` backend playing ``script``.

    The request's system and messages are turned into termigen's message shape
    (:func:`termigen_messages`) and the first rule that matches answers, exactly as
    ``Rule.matches`` decides — except for ``role:`` and ``stage:``, which are not on the
    wire. They are inferred from the conversation's first message (the system prompt if
    any, else the first user message) with ``role_hints``, a list of (regex, role, stage)
    tried in order; by default :func:`termigen_role_hints`, which recognises every prompt
    template termigen ships. A rule's ``role:``/``stage:`` is then checked against the
    inferred values; when the role (or stage) cannot be inferred, that condition is ignored
    and rules are simply tried in order (pass ``role_hints=[]`` for that behaviour always).

    Limitations: a custom prompt template (``proposer_prompt: ...``) is not recognised unless
    its opening is added to ``role_hints``; ``responses: [...]`` advance per rule over the
    server's lifetime, not per (item, stage) scope as in the backend (the scope is not on the
    wire either) — the same thing whenever a rule only ever answers one item, as in the
    quickstart script; ``error:`` rules fail the first ``times`` attempts of each distinct
    request (429 with ``retry-after: 0`` for ``rate_limit``, 529 ``overloaded_error`` for
    ``server``, 504 ``timeout_error`` for ``timeout``, a non-JSON 200 for ``malformed``);
    ``usage: {completion_tokens}`` and ``cost_usd`` are ignored (the server counts tokens
    itself and litellm prices them). A request no rule matches gets ``on_no_match(body)``,
    by default a 400 ``invalid_request_error`` naming the inferred role and the last user
    message, so the failure is readable from the client side.
    """
    from termigen_core.llm import LLMRequest
    from termigen_plugins.backends.scripted import load_script

    rules = load_script(Path(script))
    hints = [
        (re.compile(p) if isinstance(p, str) else p, role, stage)
        for p, role, stage in (termigen_role_hints() if role_hints is None else role_hints)
    ]
    fired: dict[int, int] = {}
    attempts: dict[tuple[int, str], int] = {}
    lock = threading.Lock()

    def infer(messages: list[dict[str, str]]) -> tuple[str | None, str | None]:
        first = next((m["content"] for m in messages if m["role"] in ("system", "user")), "")
        for pattern, role, stage in hints:
            if pattern.search(first):
                return role, stage
        return None, None

    def respond(body: dict[str, Any]) -> Reply:
        messages = termigen_messages(body)
        role, stage = infer(messages)
        request = LLMRequest(role=role or "", model=str(body.get("model", "")), messages=messages, stage=stage or "")
        winner = None
        for rule in rules:
            relaxed = dataclasses.replace(
                rule, role=rule.role if role else None, stage=rule.stage if stage else None
            )
            if relaxed.matches(request):
                winner = rule
                break
        if winner is None:
            if on_no_match is not None:
                return on_no_match(body)
            last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            return http_error(400, f"loopback scripted responder: no rule in {script} matches role={role!r} "
                                   f"stage={stage!r}; last user message starts: {last[:200]!r}")
        if winner.error is not None:
            key = (winner.index, hashlib.sha256(_compact(messages).encode()).hexdigest())
            with lock:
                failed = attempts.get(key, 0)
                attempts[key] = failed + 1
            if failed < winner.times:
                return {
                    "rate_limit": rate_limited(retry_after=0),
                    "server": overloaded(),
                    "timeout": http_error(504, "Request timed out"),
                    "malformed": malformed(),
                }[winner.error]
        with lock:
            n = fired.get(winner.index, 0)
            fired[winner.index] = n + 1
        return winner.replies[min(n, len(winner.replies) - 1)]

    return respond
