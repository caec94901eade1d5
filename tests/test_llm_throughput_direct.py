"""The litellm backend's direct route to self-hosted OpenAI-compatible servers.

For ``openai/MODEL`` at an ``api_base`` the backend sends the chat completion itself
(httpx's transport, one connection pool per worker thread) instead of through
litellm's per-call machinery, which cost about 5-7 ms of CPU a call and capped one
process near 100 calls a second (``benchmarks/llm_concurrency.py``). These tests
pin what that route must keep: the same request body litellm sends, a kept-alive
connection per worker thread, the same error translation and pricing, and litellm's
route wherever the direct one does not apply. Everything goes over real HTTP to the
loopback server, through the real router and store.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import BaseModel
from support.llm_routers import BACKENDS, KEY, litellm_router
from support.openai_server import Behaviour, OpenAIServer, completion, rate_limited, tool_call

from termigen_core.llm import CallScope, LLMCallFailed, LLMRouter, RoleSettings, json_model
from termigen_core.store import RunStore
from termigen_plugins.backends.litellm_backend import LiteLLMBackend, import_litellm


class Verdict(BaseModel):
    ok: bool
    reason: str


def scope(key: str = "item-1@1") -> CallScope:
    return CallScope(key=key, stage="propose")


def _sent_by(api: OpenAIServer, before: int) -> list[dict[str, Any]]:
    return api.requests[before:]


def test_direct_route_sends_the_body_litellm_sends(api: OpenAIServer, store: RunStore) -> None:
    """A structured request with sampling settings: the same JSON on both routes (the user agent tells them apart)."""
    bodies: dict[bool, dict[str, Any]] = {}
    agents: dict[bool, str] = {}
    for direct in (True, False):
        router, _ = litellm_router(store, api, temperature=0.3, max_tokens=64, direct_openai=direct)
        before = len(api.requests)
        api.enqueue(completion('{"ok": true, "reason": "fine"}'))
        parsed = router.client("judge", scope(f"item-{direct}@1")).ask("Is it fine?", json_model(Verdict), system="judge")
        assert parsed.value == Verdict(ok=True, reason="fine")
        [bodies[direct]] = _sent_by(api, before)
        agents[direct] = api.request_headers[-1].get("user-agent", "")
        assert api.request_headers[-1]["authorization"] == f"Bearer {KEY}"
    assert agents[False].startswith("OpenAI/Python") and not agents[True].startswith("OpenAI/Python")
    for key in ("model", "messages", "temperature", "max_tokens", "response_format"):
        assert bodies[True][key] == bodies[False][key], key
    assert bodies[True]["model"] == "test-model"
    assert bodies[True]["response_format"]["type"] == "json_schema"


def test_direct_route_reads_tool_calls_and_cache_tokens(api: OpenAIServer, store: RunStore) -> None:
    router, _ = litellm_router(store, api)
    api.enqueue(tool_call("bash", {"command": "ls -la"}))
    tools = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}]
    response = router.client("agent", scope()).chat("list the files", tools=tools, tool_choice="bash")
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("bash", '{"command": "ls -la"}')]
    assert response.finish_reason == "tool_calls" and response.structured_mode == "tools"
    assert api.requests[-1]["tool_choice"] == {"type": "function", "function": {"name": "bash"}}
    api.enqueue(Behaviour(text="cached", prompt_tokens=1000, cached_tokens=800))
    assert router.client("agent", scope("item-2@1")).chat("again").cache_read_tokens == 800


def test_a_worker_thread_keeps_one_connection_and_threads_do_not_share_one(api: OpenAIServer, store: RunStore) -> None:
    router, _ = litellm_router(store, api)
    before = len(api.requests)
    threads = 4
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for call in range(3):
                barrier.wait(timeout=10)  # every thread's calls are in flight together
                router.client("proposer", scope(f"t{index}@1")).chat(f"thread {index} call {call}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    assert errors == []
    ports_by_thread: dict[str, set[int]] = {}
    for body, port in zip(api.requests[before:], api.peer_ports[before:], strict=True):
        thread_name = body["messages"][-1]["content"].split(" call ")[0]
        ports_by_thread.setdefault(thread_name, set()).add(port)
    assert sorted(ports_by_thread) == [f"thread {i}" for i in range(threads)]
    assert all(len(ports) == 1 for ports in ports_by_thread.values()), ports_by_thread  # kept alive between calls
    assert len(set().union(*ports_by_thread.values())) == threads  # one connection per thread, none shared
    assert store.llm_call_count() == 3 * threads


def test_a_rate_limit_is_retried_after_the_servers_delay(api: OpenAIServer, store: RunStore) -> None:
    router, sleeps = litellm_router(store, api, retry_max_s=30)
    api.enqueue(rate_limited(retry_after=7), completion("after the wait"))
    assert router.client("proposer", scope()).chat("hi").text == "after the wait"
    assert sleeps and sleeps[0] >= 7
    assert [row["status"] for row in store.llm_calls()] == ["retry:rate_limit", "ok"]


def test_a_refused_connection_is_transient_and_names_the_server(store: RunStore) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    role = RoleSettings(backend="litellm", model="openai/test-model", api_base=f"http://127.0.0.1:{port}/v1", api_key=KEY,
                        max_retries=1, retry_base_s=0.0)  # type: ignore[call-arg]
    router = LLMRouter(default=role, roles={}, backends=BACKENDS, store=store, sleep=lambda s: None)
    with pytest.raises(LLMCallFailed, match=rf"still failing after 2 attempts \(server\).*127\.0\.0\.1:{port}"):
        router.client("proposer", scope()).chat("hi")
    assert [row["status"] for row in store.llm_calls()] == ["retry:server", "retry:server"]


def test_a_model_in_litellms_price_map_is_priced_on_the_direct_route(api: OpenAIServer, store: RunStore) -> None:
    router, _ = litellm_router(store, api, model="openai/gpt-4o-mini")
    api.enqueue(completion("x", prompt_tokens=1000, completion_tokens=100))
    response = router.client("proposer", scope()).chat("hi")
    expected = sum(import_litellm().cost_per_token(model="openai/gpt-4o-mini", prompt_tokens=1000, completion_tokens=100))
    assert expected > 0
    assert response.cost_usd == pytest.approx(expected)
    assert api.requests[-1]["model"] == "gpt-4o-mini"


def test_litellms_route_where_the_direct_one_does_not_apply(api: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other providers, OpenAI's own API, a proxy in the way, or ``direct_openai: false``: litellm decides."""
    litellm = import_litellm()

    def route(model: str, **options: Any) -> Any:
        backend = LiteLLMBackend(LiteLLMBackend.Config(**options))
        return backend._direct_route(litellm, model)

    assert route("openai/test-model", api_base=api.base_url) is not None
    assert route("openai/test-model", api_base=api.base_url, direct_openai=False) is None
    assert route("anthropic/claude-sonnet-4-5", api_base=api.base_url) is None
    assert route("openai/gpt-4o-mini") is None  # no api_base: OpenAI's API
    assert route("openai/gpt-4o-mini", api_base="https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    assert route("openai/test-model", api_base=api.base_url) is None
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert route("openai/test-model", api_base=api.base_url) is not None
