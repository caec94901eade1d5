"""The ``litellm`` LLM backend: any provider litellm speaks (OpenAI, Anthropic, vLLM, Ollama...).

Why a thin wrapper: the core router owns retries, backoff, caching, budget
and accounting, so this module only sends one request and translates the
outcome into the core's vocabulary: a :class:`LLMResponse`, a
:class:`TransientLLMError` (rate limit, 5xx, timeout, unparseable 200 — the
router retries it) or an :class:`LLMCallFailed` (bad key, unknown model,
oversized prompt — retrying cannot help). litellm's own retries are switched
off (``num_retries=0``, ``max_retries=0``) so that a rate limit is never
retried twice over.

Structured output: a request with a JSON Schema is sent with the strongest
``response_format`` the provider takes, trying in order ``json_schema``
(OpenAI, vLLM; litellm sends it to Anthropic as native structured output for
the Claude models in its map, and as a forced tool call for older ones),
``json_object`` with the schema inline (llama.cpp's server), plain
``json_object`` (JSON mode), then nothing (the core re-asks on a malformed
reply). A form the provider refuses is remembered per model and the refusal is
noted in the ledger, so the fallback is paid once.

Native tools are sent as given (``tools``, ``tool_choice``); a provider that
refuses them raises :class:`FeatureUnsupported` and the agent falls back to
its text transport. Prompt caching: for providers whose caching is explicit
(Anthropic), ``cache_control`` breakpoints mark the system prompt and the
conversation prefix; automatic caching (OpenAI, DeepSeek, vLLM) needs nothing.
Either way the cache tokens the provider reports are read into the response,
and the cost is priced with them (``uncached_cost_usd`` says what it would have
cost without the cache). A model without a known price costs ``None``, not 0.

Self-hosted OpenAI-compatible servers (``openai/MODEL`` at an ``api_base``) get a
direct route: litellm would pass the request through unchanged, but its per-call
work around it costs ~7 ms of CPU, which capped one process near 100 calls a second
however many were in flight. The same body is POSTed through httpx's transport, one
connection pool per worker thread (a shared pool serialises hundreds of calls on its
lock), and the reply is read, priced and translated as litellm's would be
(``direct_openai: false`` turns it off; ``benchmarks/llm_concurrency.py`` measures it).

litellm takes ~3 s to import and fetches its price map from the internet at
import unless told not to, so it is imported on first use, with
``LITELLM_LOCAL_MODEL_COST_MAP``, ``LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS`` and
``HF_HUB_OFFLINE`` defaulted first.
The API key is never put in any message this module produces.
"""

from __future__ import annotations

import email.utils
import json
import os
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import Field, SecretStr

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, LLMBackend
from termigen_core.llm import (
    FeatureUnsupported,
    LLMCallFailed,
    LLMRequest,
    LLMResponse,
    ModelCapabilities,
    PromptTooLarge,
    ToolCall,
    TransientLLMError,
)

#: Phrases litellm uses when an HTTP 200 body is not a usable chat completion.
_MALFORMED_MARKERS = (
    "empty or invalid response",
    "provider returned 'choices'",
    "provider returned a response with no 'choices'",
    "received response -",
    "jsondecodeerror",
    "expecting value",
)
_MAX_DETAIL = 500
#: Phrases of an HTTP 400 that says the prompt does not fit the model's context window.
_CONTEXT_MARKERS = ("context length", "context_length_exceeded", "context window", "maximum context", "too many tokens")

#: Providers that speak OpenAI's protocol, where a model unknown to litellm's map is
#: likely a self-hosted one (vLLM, llama.cpp, Ollama...): offer every feature, fall back on refusal.
_OPENAI_LIKE = ("openai", "hosted_vllm", "ollama", "ollama_chat", "lm_studio", "openai_like", "custom_openai", "llamafile")
#: Providers whose prompt caching needs explicit ``cache_control`` breakpoints.
_EXPLICIT_CACHING = ("anthropic", "bedrock", "vertex_ai")
#: Structured-output wire forms per mode, strongest first (the last resort is none at all).
_FORMS = {"schema": ("json_schema", "json_object_schema", "json_object"), "json": ("json_object",), "off": ()}
_FORM_MODE = {"json_schema": "schema", "json_object_schema": "schema", "json_object": "json"}
#: Words in a refusal that point at the structured-output or the tools part of a request.
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema", "grammar", "structured")
_TOOL_WORDS = ("tool", "function")

#: litellm's providers whose chat requests it passes unchanged to an OpenAI-compatible ``api_base``.
_DIRECT_PROVIDERS = ("openai", "custom_openai")
#: OpenAI's own endpoint: litellm may route its newer models through other APIs, so it keeps its own client.
_OPENAI_API_HOST = "api.openai.com"

_litellm: ModuleType | None = None
_import_lock = threading.Lock()


def import_litellm() -> ModuleType:
    """Import litellm once, offline-safe (bundled price map, no Hugging Face lookups)."""
    global _litellm
    if _litellm is None:
        with _import_lock:
            if _litellm is None:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                # its Anthropic path otherwise fetches a table of beta headers from GitHub
                os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                # litellm hands every answered call to a background logging pool of up to 100
                # threads; with no litellm callbacks that work is a no-op, but starting those threads
                # while hundreds of calls hold the GIL stalls every caller (thread starts are serialised)
                os.environ.setdefault("LOGGING_EXECUTOR_MAX_THREADS", "2")
                import litellm

                litellm.suppress_debug_info = True  # no "Give Feedback" banners on stdout
                _litellm = litellm
    return _litellm


@dataclass(frozen=True)
class _DirectRoute:
    """A self-hosted OpenAI-compatible server's chat endpoint, called without litellm (see ``_direct_route``)."""

    model: str  # the name the server knows (``openai/`` removed)
    url: Any  # httpx.URL, parsed once
    headers: tuple[tuple[str, str], ...]


class ProviderHTTPError(Exception):
    """An HTTP error status from a self-hosted OpenAI-compatible server (the direct route).

    Carries what the translation reads from litellm's errors: ``status_code``, the
    ``response`` (its ``Retry-After``) and the server's own message.
    """

    def __init__(self, response: Any) -> None:
        try:
            error = response.json().get("error")
            message = str(error.get("message") if isinstance(error, dict) else error or response.text)
        except Exception:  # noqa: BLE001 - not JSON: the body as it is
            message = response.text
        super().__init__(f"HTTP {response.status_code}: {message[:_MAX_DETAIL]}")
        self.status_code = int(response.status_code)
        self.response = response


class LiteLLMBackend(LLMBackend):
    """Calls a model through litellm (``model: provider/name``)."""

    name = "litellm"
    description = "Any provider litellm supports (OpenAI, Anthropic, vLLM, Ollama, OpenAI-compatible servers)."

    class Config(ComponentConfig):
        api_base: str | None = Field(default=None, description="endpoint URL, e.g. http://localhost:8000/v1 for vLLM")
        api_key: SecretStr | None = Field(default=None, description="API key; prefer {$env: NAME}")
        input_cost_per_token: float | None = Field(default=None, ge=0, description="USD per prompt token (overrides litellm's price map)")
        output_cost_per_token: float | None = Field(default=None, ge=0, description="USD per completion token (overrides litellm's price map)")
        extra_body: dict[str, Any] = Field(default_factory=dict, description="extra JSON fields sent with each request")
        direct_openai: bool = Field(
            default=True,
            description="a self-hosted OpenAI-compatible server (openai/MODEL with api_base, no proxy) gets the request litellm "
            "would send, POSTed directly: about 1 ms of CPU a call instead of 7; false: always through litellm",
        )

    config: LiteLLMBackend.Config

    def __init__(self, config: ComponentConfig | None = None) -> None:
        super().__init__(config)
        #: (model, wire form) pairs a provider refused: not tried again by this backend.
        self._refused: set[tuple[str, str]] = set()
        self._refused_lock = threading.Lock()
        #: model -> how to reach it directly when a self-hosted OpenAI-compatible server answers it (decided once).
        self._direct_routes: dict[str, _DirectRoute | None] = {}
        self._threads = threading.local()
        self._ssl_context: Any = None
        self._transport_lock = threading.Lock()
        #: models litellm's price map does not know (the direct route does not look them up again).
        self._unpriced: set[str] = set()

    # -- the direct route to self-hosted OpenAI-compatible servers ---------------------

    def _direct_route(self, litellm: ModuleType, model: str) -> _DirectRoute | None:
        """How to reach ``model`` when a self-hosted OpenAI-compatible server answers it, else None (litellm's route).

        Why a route of its own: for ``openai/MODEL`` at an ``api_base``, litellm
        passes the request through unchanged to the OpenAI SDK, yet its per-call
        work around that (a logging object, parameter mapping, price-map lookups
        for a cost it computes twice, response re-wrapping) costs about 5 ms of CPU
        a call and the SDK's and httpx's client layers about 2 ms more, which caps
        one process near 100 answered calls a second however many are in flight
        (``benchmarks/llm_concurrency.py`` measures it). Here the same JSON body is
        sent through httpx's transport (the layer every one of them ends in) and
        the reply read as JSON; errors are translated like litellm's, by HTTP status.
        A server behind a proxy keeps litellm's route (the transport uses none).
        """
        if model not in self._direct_routes:
            self._direct_routes[model] = self._self_hosted_openai(litellm, model)
        return self._direct_routes[model]

    def _self_hosted_openai(self, litellm: ModuleType, model: str) -> _DirectRoute | None:
        import urllib.request

        import httpx

        base = (self.config.api_base or "").rstrip("/")
        if not self.config.direct_openai or not base or _OPENAI_API_HOST in base:
            return None
        url = httpx.URL(base + "/chat/completions")
        if url.scheme not in ("http", "https") or (urllib.request.getproxies() and not urllib.request.proxy_bypass(url.host)):
            return None
        key = self.config.api_key.get_secret_value() if self.config.api_key is not None else None
        try:
            name, provider, dynamic_key, _ = litellm.get_llm_provider(model, api_base=base, api_key=key)
        except Exception:  # noqa: BLE001 - an unknown provider is reported by litellm's own call
            return None
        if provider not in _DIRECT_PROVIDERS:
            return None
        token = key or dynamic_key or os.environ.get("OPENAI_API_KEY") or "none"  # litellm's order
        headers = (("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"), ("Accept", "application/json"))
        return _DirectRoute(str(name), url, headers)

    def _thread_transport(self) -> Any:
        """This worker thread's connection pool (see :meth:`_direct_route`).

        Why one per thread: a shared pool keeps every connection in one list under
        one lock and walks it (quadratically) on every request and every response;
        with hundreds of calls in flight the workers queue on that lock for seconds.
        A thread's own pool holds the one connection that thread uses, kept alive
        between its calls.
        """
        transport = getattr(self._threads, "transport", None)
        if transport is None:
            import httpx
            from litellm.llms.custom_httpx.http_handler import get_ssl_configuration

            with self._transport_lock:
                if self._ssl_context is None:  # litellm's TLS settings (SSL_CERT_FILE, ssl_verify), built once
                    self._ssl_context = get_ssl_configuration(None)
            transport = self._threads.transport = httpx.HTTPTransport(
                verify=self._ssl_context, limits=httpx.Limits(max_connections=4, max_keepalive_connections=2)
            )
        return transport

    def _send_direct(self, route: _DirectRoute, kwargs: dict[str, Any]) -> dict[str, Any]:
        """POST one chat completion; the reply's JSON. An HTTP error raises :class:`ProviderHTTPError`,
        a body that is not a chat completion a ``ValueError`` the translation calls malformed."""
        import httpx

        body: dict[str, Any] = {"model": route.model, "messages": kwargs["messages"]}
        for key in ("temperature", "max_tokens", "response_format", "tools", "tool_choice"):
            if key in kwargs:
                body[key] = kwargs[key]
        body.update(kwargs.get("extra_body") or {})
        timeout = kwargs["timeout"]
        request = httpx.Request(
            "POST", route.url, headers=route.headers, content=json.dumps(body, ensure_ascii=False).encode(),
            extensions={"timeout": {"connect": min(timeout, 10.0), "read": timeout, "write": timeout, "pool": timeout}},
        )
        reply = self._thread_transport().handle_request(request)
        try:
            reply.read()
        finally:
            reply.close()
        if reply.status_code >= 400:
            raise ProviderHTTPError(reply)
        data = reply.json()  # a body that is not JSON raises JSONDecodeError ("expecting value"): malformed
        if not isinstance(data, dict) or not data.get("choices"):
            raise ValueError(f"provider returned a response with no 'choices': {reply.text[:200]}")
        return data

    # -- what the model can do -----------------------------------------------------

    def capabilities(self, settings: Any) -> ModelCapabilities:
        litellm = import_litellm()
        model = str(settings.model)
        try:
            provider = litellm.get_llm_provider(model, api_base=self.config.api_base)[1]
        except Exception:  # noqa: BLE001 - an unknown provider is reported by the first call
            provider = model.split("/", 1)[0]
        try:
            info: dict[str, Any] | None = dict(litellm.get_model_info(model))
        except Exception:  # noqa: BLE001 - not in litellm's map
            info = None
        configured_price = self.config.input_cost_per_token is not None or self.config.output_cost_per_token is not None
        priced = configured_price or (info is not None and info.get("input_cost_per_token") is not None)
        context = (info or {}).get("max_input_tokens") or None
        if info is None and provider in _OPENAI_LIKE:
            # a self-hosted model: ask for everything, the fallbacks handle refusals
            return ModelCapabilities(("schema", "json"), tools=True, context_tokens=context, priced=priced)
        schema = _ask_bool(litellm.supports_response_schema, model)
        structured: tuple[str, ...] = ("schema", "json") if schema else ()
        if not schema and provider in _OPENAI_LIKE:
            structured = ("json",)
        explicit = provider in _EXPLICIT_CACHING and _ask_bool(litellm.utils.supports_prompt_caching, model)
        return ModelCapabilities(
            structured, tools=_ask_bool(litellm.supports_function_calling, model), explicit_caching=explicit,
            context_tokens=context, priced=priced,
        )

    def count_tokens(self, model: str, messages: list[dict[str, Any]]) -> int:
        try:
            return int(import_litellm().token_counter(model=model, messages=messages))
        except Exception:  # noqa: BLE001 - no tokenizer for this model: estimate
            return super().count_tokens(model, messages)

    # -- checks before the run ---------------------------------------------------

    def validate_environment(self, settings: Any) -> list[str]:
        """Name the environment variables the model's provider needs and lacks."""
        if self.config.api_key is not None or self.config.api_base:
            return []
        model = str(getattr(settings, "model", "") or "")
        if not model:
            return []
        try:
            missing = list(import_litellm().validate_environment(model=model).get("missing_keys") or [])
        except Exception:  # noqa: BLE001 - an unknown provider is reported by the first call instead
            return []
        if not missing:
            return []
        needs_base = all(k.endswith("_BASE") or k.endswith("_URL") for k in missing)
        hint = "api_base: URL" if needs_base else "api_key: {$env: NAME}"
        return [f"llm model {model} needs {' and '.join(missing)} in the environment (or {hint})"]

    # -- one call ------------------------------------------------------------------

    def complete(self, request: LLMRequest) -> LLMResponse:
        litellm = import_litellm()
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": with_cache_breakpoints(request.messages) if request.prompt_caching else request.messages,
            "timeout": request.timeout_s,
            "num_retries": 0,  # retries are the router's job
            "max_retries": 0,  # ...and not the OpenAI SDK's either
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if self.config.api_base:
            kwargs["api_base"] = self.config.api_base
        if self.config.api_key is not None:
            kwargs["api_key"] = self.config.api_key.get_secret_value()
        if self.config.extra_body:
            kwargs["extra_body"] = dict(self.config.extra_body)
        direct = self._direct_route(litellm, request.model)
        if request.tools:
            kwargs["tools"] = list(request.tools)
            if request.tool_choice:
                kwargs["tool_choice"] = _tool_choice(request.tool_choice)

        notes: list[str] = []
        forms = [f for f in _FORMS.get(request.structured_output, ()) if (request.model, f) not in self._refused]
        if request.response_schema is None:
            forms = []
        started = time.monotonic()
        for form in [*forms, None]:
            attempt = dict(kwargs)
            if form is not None:
                attempt["response_format"] = _response_format(form, request)
            try:
                resp = self._send_direct(direct, attempt) if direct is not None else litellm.completion(**attempt)
                break
            except Exception as exc:  # noqa: BLE001 - every failure is translated below
                if form is not None and _refuses(exc, _FORMAT_WORDS):
                    with self._refused_lock:
                        self._refused.add((request.model, form))
                    notes.append(f"the provider refused response_format {form} ({_status_of(exc) or type(exc).__name__}); fell back")
                    continue
                if request.tools and _refuses(exc, _TOOL_WORDS):
                    raise FeatureUnsupported(
                        f"{request.model}: the provider refused native tool calls: {self._scrub(str(exc))[:_MAX_DETAIL]}", feature="tools"
                    ) from None
                raise self._translate(exc, request, litellm) from None
        latency = time.monotonic() - started

        try:
            choice = _field(resp, "choices")[0]
            message = _field(choice, "message")
            if message is None:
                raise TypeError("the choice has no message")
            text = _field(message, "content") or ""
            finish_reason = str(_field(choice, "finish_reason") or "")
            calls = [
                ToolCall(str(_field(c, "id") or f"call_{i}"), str(_field(_field(c, "function"), "name") or ""),
                         str(_field(_field(c, "function"), "arguments") or ""))
                for i, c in enumerate(_field(message, "tool_calls") or [])
            ]
        except (AttributeError, IndexError, TypeError, KeyError) as exc:
            raise TransientLLMError(f"{request.model}: the reply has no usable choice: {exc}", kind="malformed") from None
        usage = _field(resp, "usage")
        prompt_tokens = int(_field(usage, "prompt_tokens") or 0)
        completion_tokens = int(_field(usage, "completion_tokens") or 0)
        cache_read, cache_write = _cache_tokens(usage)
        if direct is not None:
            cost, uncached = self._token_cost(litellm, request.model, prompt_tokens, completion_tokens, cache_read)
        else:
            cost, uncached = self._cost(litellm, resp, request.model, prompt_tokens, completion_tokens)
        mode = "tools" if request.tools else (_FORM_MODE[form] if form is not None else "off")
        return LLMResponse(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            uncached_cost_usd=uncached,
            model=request.model,
            finish_reason=finish_reason,
            latency_s=latency,
            tool_calls=calls,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            structured_mode=mode,
            notes=notes,
        )

    def _cost(self, litellm: ModuleType, resp: Any, model: str, prompt_tokens: int, completion_tokens: int) -> tuple[float | None, float | None]:
        """(cost, cost without the prompt cache); ``None`` where the price is unknown."""
        cfg = self.config
        if cfg.input_cost_per_token is not None or cfg.output_cost_per_token is not None:
            cost = prompt_tokens * (cfg.input_cost_per_token or 0.0) + completion_tokens * (cfg.output_cost_per_token or 0.0)
            return cost, cost
        try:
            cost = float(litellm.completion_cost(completion_response=resp))
        except Exception:  # noqa: BLE001 - not in the price map: unknown, never a silent 0
            return None, None
        try:
            uncached = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
        except Exception:  # noqa: BLE001
            uncached = None
        return cost, uncached

    def _token_cost(
        self, litellm: ModuleType, model: str, prompt_tokens: int, completion_tokens: int, cache_read: int
    ) -> tuple[float | None, float | None]:
        """(cost, cost without the prompt cache) from token counts: the configured prices, else litellm's map."""
        cfg = self.config
        if cfg.input_cost_per_token is not None or cfg.output_cost_per_token is not None:
            cost = prompt_tokens * (cfg.input_cost_per_token or 0.0) + completion_tokens * (cfg.output_cost_per_token or 0.0)
            return cost, cost
        if model in self._unpriced:
            return None, None
        try:
            cost = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                              cache_read_input_tokens=cache_read))
            uncached = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
        except Exception:  # noqa: BLE001 - not in the price map: unknown, never a silent 0 (and not looked up again)
            self._unpriced.add(model)
            return None, None
        return float(cost), float(uncached)

    # -- error translation -----------------------------------------------------------

    def _translate(self, exc: Exception, request: LLMRequest, litellm: ModuleType) -> Exception:
        """Map a litellm exception to a retryable or a permanent core error."""
        status = _status_of(exc)
        detail = self._scrub(str(exc))[:_MAX_DETAIL]
        where = f"{request.model}" + (f" at {self.config.api_base}" if self.config.api_base else "")
        lowered = detail.lower()

        import httpx

        if isinstance(exc, (litellm.Timeout, httpx.TimeoutException)) or status in (408, 504):
            return TransientLLMError(f"{where}: timed out after {request.timeout_s:g}s: {detail}", kind="timeout")
        if isinstance(exc, litellm.RateLimitError) or status == 429:
            return TransientLLMError(f"{where}: rate limited (HTTP 429): {detail}", kind="rate_limit", retry_after_s=_retry_after(exc))
        if isinstance(exc, litellm.ContextWindowExceededError) or (status == 400 and any(m in lowered for m in _CONTEXT_MARKERS)):
            return PromptTooLarge(f"{where}: the prompt does not fit the model's context window (set context_tokens for the role if litellm does not know it): {detail}")
        # refused keys, forbidden or unknown models: every other call would fail the same way
        if isinstance(exc, litellm.AuthenticationError) or status == 401:
            return LLMCallFailed(f"{where}: authentication failed (HTTP 401); check the API key (api_key: {{$env: NAME}} or the provider's environment variable): {detail}", stops_run=True)
        if isinstance(exc, litellm.PermissionDeniedError) or status == 403:
            return LLMCallFailed(f"{where}: permission denied (HTTP 403); the key may not be allowed to use this model: {detail}", stops_run=True)
        if isinstance(exc, litellm.NotFoundError) or status == 404:
            return LLMCallFailed(f"{where}: not found (HTTP 404); check the model name and api_base: {detail}", stops_run=True)
        if any(marker in lowered for marker in _MALFORMED_MARKERS):
            return TransientLLMError(f"{where}: the reply could not be parsed as a chat completion: {detail}", kind="malformed")
        server_errors = (
            litellm.InternalServerError, litellm.ServiceUnavailableError, litellm.BadGatewayError, litellm.APIConnectionError,
            httpx.TransportError,  # the direct route: refused or reset connections
        )
        if isinstance(exc, server_errors) or (status is not None and status >= 500) or status == 409:
            return TransientLLMError(f"{where}: server error{f' (HTTP {status})' if status else ''}: {detail}", kind="server")
        if status is not None and 400 <= status < 500:
            return LLMCallFailed(f"{where}: the provider rejected the request (HTTP {status}): {detail}")
        if isinstance(exc, litellm.APIError):
            return TransientLLMError(f"{where}: API error: {detail}", kind="server")
        return LLMCallFailed(f"{where}: the call failed ({type(exc).__name__}): {detail}")

    def _scrub(self, text: str) -> str:
        """Remove the API key from text (keys under 4 characters are not real secrets)."""
        key = self.config.api_key.get_secret_value() if self.config.api_key is not None else ""
        return text.replace(key, "***") if len(key) >= 4 else text


def _ask_bool(check: Any, model: str) -> bool:
    try:
        return bool(check(model))
    except Exception:  # noqa: BLE001 - litellm raises for models it does not know
        return False


def _response_format(form: str, request: LLMRequest) -> dict[str, Any]:
    schema = request.response_schema or {}
    if form == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": request.schema_name, "schema": schema, "strict": False}}
    if form == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_object"}


def _tool_choice(choice: str) -> Any:
    if choice in ("auto", "required", "none"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _refuses(exc: Exception, words: tuple[str, ...]) -> bool:
    """A request-validation refusal that names a part of the request (not an outage).

    Some servers refuse with a 500 (llama.cpp's server rejects OpenAI's
    ``json_schema`` form that way), so the status alone does not tell.
    """
    status = _status_of(exc)
    if status is not None and status not in (400, 415, 422, 500, 501):
        return False
    text = str(exc).lower()
    if status is None and "badrequest" not in type(exc).__name__.lower() and "unprocessable" not in type(exc).__name__.lower():
        return False
    return any(word in text for word in words)


def _cache_tokens(usage: Any) -> tuple[int, int]:
    """(read, written) prompt-cache tokens: Anthropic's fields, or OpenAI's ``cached_tokens``."""
    if usage is None:
        return 0, 0
    details = _field(usage, "prompt_tokens_details")
    read = _field(usage, "cache_read_input_tokens") or _field(details, "cached_tokens") or 0
    written = _field(usage, "cache_creation_input_tokens") or _field(details, "cache_creation_tokens") or 0
    return int(read or 0), int(written or 0)


def _field(obj: Any, name: str) -> Any:
    """A field of a reply, whether litellm's object or the JSON of the direct route (None if absent)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def with_cache_breakpoints(messages: list[dict[str, Any]], conversation_marks: int = 2) -> list[dict[str, Any]]:
    """Mark the system prompt and, in a conversation, the last user/tool messages as cache breakpoints.

    Anthropic caches the prefix up to each marked block (at most four per
    request) and bills a write at 1.25x the input price, a read at 0.1x. The
    system prompt is marked always (it repeats across the calls of an episode).
    Once the model has answered before (an agent's turns), the latest two turns
    are marked too: the next request repeats them and adds one, so it reads the
    prefix written by this one, even when the very last message carried text
    that the next request drops (the collector's private guidance). A one-shot
    prompt gets no conversation mark: nothing would ever read it back.
    """
    out = [dict(m) for m in messages]
    marked = [i for i, m in enumerate(out) if m.get("role") == "system"][:1]
    if any(m.get("role") == "assistant" for m in out):
        turns = [i for i, m in enumerate(out) if m.get("role") in ("user", "tool")]
        marked += turns[-conversation_marks:]
    for index in marked:
        content = out[index].get("content")
        if isinstance(content, str) and content:
            out[index]["content"] = [{"type": "text", "text": content, "cache_control": {"type": "ephemeral"}}]
    return out


def _status_of(exc: Exception) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after(exc: Exception) -> float | None:
    """Seconds from ``Retry-After``/``retry-after-ms`` response headers, if any."""
    for headers in (getattr(exc, "litellm_response_headers", None), getattr(getattr(exc, "response", None), "headers", None)):
        if not headers:
            continue
        lower = {str(k).lower(): str(v) for k, v in dict(headers).items()}
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0), ("llm_provider-retry-after", 1.0)):
            value = lower.get(name)
            if value is None:
                continue
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                pass
            try:  # an HTTP date
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                continue
    return None


@hookimpl
def register_llm_backends() -> list[type[LLMBackend]]:
    return [LiteLLMBackend]
