"""The loopback Anthropic Messages API server, driven through litellm's real Anthropic client.

Everything here goes over HTTP to tests/support/anthropic_server.py with
``litellm.completion(model="anthropic/...", api_base=server.url, api_key="sk-dummy")``:
the URL litellm posts to, how it reads Anthropic's usage (prompt-cache tokens included)
and prices it, structured output (native ``output_format`` and the forced-tool
fallback), tool calls, error mapping, and the scripted responder that lets a termigen
pipeline run on litellm's Anthropic path with a scripted-backend script.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from string import Template
from typing import Any

import pytest

# Offline: litellm's bundled price map and Anthropic beta-header table (it fetches both from
# GitHub otherwise: the price map at import, the beta headers on the first Anthropic call).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.support import anthropic_server as srv
except ImportError:
    from support import anthropic_server as srv  # type: ignore[no-redef]

AnthropicServer = srv.AnthropicServer
REPO = Path(__file__).resolve().parents[1]
MODEL = "anthropic/claude-sonnet-4-5"
KEY = "sk-dummy"
#: Comfortably over the 1024-token minimum cacheable prefix of claude-sonnet-4-5.
BIG = "You are a careful terminal agent. Follow the rules below exactly. " * 90


@pytest.fixture(scope="module")
def litellm() -> Any:
    from termigen_plugins.backends.litellm_backend import import_litellm

    return import_litellm()


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    with AnthropicServer() as s:
        yield s


def complete(litellm: Any, server: AnthropicServer, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    kwargs.setdefault("model", MODEL)
    return litellm.completion(api_base=server.url, api_key=KEY, messages=messages, num_retries=0, max_retries=0, **kwargs)


def text_tokens(text: str) -> int:
    """What the server counts for a string system prompt or message content."""
    return srv.count_tokens({"type": "text", "text": text})


def cached(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


# --- transport -------------------------------------------------------------------


def test_plain_reply_posts_to_v1_messages(litellm: Any, server: AnthropicServer) -> None:
    server.set_responder(lambda body: f"echo: {body['messages'][-1]['content'][0]['text']}")
    resp = complete(litellm, server, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}])

    assert resp.choices[0].message.content == "echo: hello"
    assert resp.choices[0].finish_reason == "stop"
    assert server.paths == ["/v1/messages"]
    body, headers = server.requests[0], server.request_headers[0]
    assert body["model"] == "claude-sonnet-4-5"  # the provider prefix is stripped
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert isinstance(body["max_tokens"], int)  # litellm always sends one (the API requires it)
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"


def test_base_url_from_the_environment(litellm: Any, server: AnthropicServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_BASE", raising=False)  # it would win over ANTHROPIC_BASE_URL
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    resp = litellm.completion(model=MODEL, messages=[{"role": "user", "content": "hi"}], num_retries=0, max_retries=0)

    assert resp.choices[0].message.content == "default reply"
    assert server.paths == ["/v1/messages"]
    assert server.request_headers[0]["x-api-key"] == KEY


def test_base_url_forms(litellm: Any, server: AnthropicServer) -> None:
    """litellm appends /v1/messages unless the base already ends with it; a base ending in /v1 is wrong."""
    for base in (server.url + "/", server.messages_url):
        litellm.completion(model=MODEL, api_base=base, api_key=KEY, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(model=MODEL, api_base=server.url + "/v1", api_key=KEY, messages=[{"role": "user", "content": "hi"}],
                           num_retries=0, max_retries=0)
    assert server.paths == ["/v1/messages", "/v1/messages", "/v1/v1/messages"]


# --- usage and prompt caching -------------------------------------------------------


def test_usage_without_breakpoints_is_all_input(litellm: Any, server: AnthropicServer) -> None:
    server.set_responder(lambda body: "four")
    resp = complete(litellm, server, [{"role": "system", "content": BIG}, {"role": "user", "content": "q"}])

    expected = text_tokens(BIG) + text_tokens("q")
    assert server.usages[0] == {
        "input_tokens": expected, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 1, "service_tier": "standard",
    }
    usage = resp.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (expected, 1, expected + 1)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (0, 0)
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_cache_write_then_read_as_litellm_reports_it(litellm: Any, server: AnthropicServer) -> None:
    first = [{"role": "system", "content": cached(BIG)}, {"role": "user", "content": cached("step 1: list the files")}]
    resp1 = complete(litellm, server, first)
    prefix1 = text_tokens(BIG) + text_tokens("step 1: list the files")

    u = server.usages[0]
    assert (u["input_tokens"], u["cache_creation_input_tokens"], u["cache_read_input_tokens"]) == (0, prefix1, 0)
    # litellm: prompt_tokens = input + creation + read; the split is in the cache fields
    assert resp1.usage.prompt_tokens == prefix1
    assert resp1.usage.cache_creation_input_tokens == prefix1
    assert resp1.usage.cache_read_input_tokens == 0
    assert resp1.usage.prompt_tokens_details.cached_tokens == 0
    assert resp1.usage.prompt_tokens_details.cache_creation_tokens == prefix1

    # the next turn: the same prefix plus an answer and a new user message (the old mark dropped,
    # a new one on the last message, and an unmarked tail after it)
    second = [
        {"role": "system", "content": cached(BIG)},
        {"role": "user", "content": "step 1: list the files"},
        {"role": "assistant", "content": "ls -la"},
        {"role": "user", "content": [{"type": "text", "text": "total 0", "cache_control": {"type": "ephemeral"}},
                                     {"type": "text", "text": "what next?"}]},
    ]
    resp2 = complete(litellm, server, second)
    tail = text_tokens("ls -la") + text_tokens("total 0")
    u = server.usages[1]
    assert (u["input_tokens"], u["cache_creation_input_tokens"], u["cache_read_input_tokens"]) == (
        text_tokens("what next?"), tail, prefix1)
    usage = resp2.usage
    assert usage.prompt_tokens == prefix1 + tail + text_tokens("what next?")
    assert usage.cache_read_input_tokens == prefix1
    assert usage.prompt_tokens_details.cached_tokens == prefix1
    assert usage.cache_creation_input_tokens == tail
    assert usage.prompt_tokens_details.text_tokens == text_tokens("what next?")

    # a changed system prompt invalidates everything after it
    complete(litellm, server, [{"role": "system", "content": cached(BIG + "!")}, *second[1:]])
    assert server.usages[2]["cache_read_input_tokens"] == 0


def test_message_level_cache_control_and_ttl(litellm: Any, server: AnthropicServer) -> None:
    """litellm moves a message's ``cache_control`` onto its content block; ``ttl: 1h`` is reported apart."""
    messages = [
        {"role": "system", "content": BIG, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"role": "user", "content": "go", "cache_control": {"type": "ephemeral"}},
    ]
    complete(litellm, server, messages)
    body = server.requests[0]
    assert body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert server.usages[0]["cache_creation"] == {
        "ephemeral_5m_input_tokens": text_tokens("go"), "ephemeral_1h_input_tokens": text_tokens(BIG)}


def test_prefix_below_the_minimum_is_not_cached(litellm: Any, server: AnthropicServer) -> None:
    messages = [{"role": "system", "content": cached("short system prompt")}, {"role": "user", "content": cached("hi")}]
    for _ in range(2):
        complete(litellm, server, messages)
    for u in server.usages:
        assert (u["cache_creation_input_tokens"], u["cache_read_input_tokens"]) == (0, 0)
        assert u["input_tokens"] == text_tokens("short system prompt") + text_tokens("hi")


def test_tools_come_first_in_the_prefix() -> None:
    """Prefix order is tools → system → messages: a changed tool invalidates the system prompt's entry."""
    tool = {"name": "bash", "description": "run a command", "input_schema": {"type": "object"}}
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "tools": [tool],
            "system": cached(BIG), "messages": [{"role": "user", "content": "hi"}]}
    cache = srv.PromptCache()
    assert cache.account(body, srv.prompt_blocks(body)).cache_creation_input_tokens > 0
    assert cache.account(body, srv.prompt_blocks(body)).cache_read_input_tokens > 0
    changed = {**body, "tools": [{**tool, "description": "run a shell command"}]}
    usage = cache.account(changed, srv.prompt_blocks(changed))
    assert usage.cache_read_input_tokens == 0 and usage.cache_creation_input_tokens > 0


def test_lookback_window_of_twenty_blocks() -> None:
    """One breakpoint on the last message finds a prefix up to 19 blocks back, not further."""
    cache = srv.PromptCache()

    def body(n_messages: int) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(n_messages)
        ]
        messages[-1] = {"role": messages[-1]["role"], "content": cached(f"message {n_messages - 1}")}
        return {"model": "claude-sonnet-4-5", "max_tokens": 10, "system": BIG, "messages": messages}

    base = body(1)
    written = cache.account(base, srv.prompt_blocks(base)).cache_creation_input_tokens
    # 20 blocks from the new breakpoint back to (and including) the old one: a hit
    near = body(20)
    assert cache.account(near, srv.prompt_blocks(near)).cache_read_input_tokens == written
    cache.clear()
    cache.account(base, srv.prompt_blocks(base))
    # one block more: a miss (a second breakpoint would have found it)
    far = body(21)
    assert cache.account(far, srv.prompt_blocks(far)).cache_read_input_tokens == 0


def test_more_than_four_breakpoints_is_a_400(litellm: Any, server: AnthropicServer) -> None:
    messages = [{"role": "system", "content": cached(BIG)}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": cached(f"m{i}")} for i in range(5)
    ]
    with pytest.raises(litellm.BadRequestError, match="A maximum of 4 blocks with cache_control may be provided. Found 6"):
        complete(litellm, server, messages)
    assert server.usages == [] and server.cache.entries == {}


# --- pricing ------------------------------------------------------------------------------


def test_completion_cost_prices_cache_reads_and_writes(litellm: Any, server: AnthropicServer) -> None:
    price = litellm.model_cost["claude-sonnet-4-5"]
    assert price["cache_read_input_token_cost"] == pytest.approx(0.1 * price["input_cost_per_token"])
    assert price["cache_creation_input_token_cost"] == pytest.approx(1.25 * price["input_cost_per_token"])

    messages = [{"role": "system", "content": cached(BIG)}, {"role": "user", "content": "go on"}]
    costs = [litellm.completion_cost(complete(litellm, server, messages)) for _ in range(2)]
    for cost, u in zip(costs, server.usages):
        expected = (
            u["input_tokens"] * price["input_cost_per_token"]
            + u["cache_creation_input_tokens"] * price["cache_creation_input_token_cost"]
            + u["cache_read_input_tokens"] * price["cache_read_input_token_cost"]
            + u["output_tokens"] * price["output_cost_per_token"]
        )
        assert cost == pytest.approx(expected, rel=1e-9)
    write, read = server.usages
    assert write["cache_creation_input_tokens"] == read["cache_read_input_tokens"] == text_tokens(BIG)


# --- structured output and tools ---------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}


def test_response_format_is_native_structured_output_for_sonnet_4_5(litellm: Any, server: AnthropicServer) -> None:
    """litellm 1.106.2 sends ``output_format`` (not a forced tool) to models its map marks as supporting it."""
    server.set_responder(lambda body: '{"answer": 42}')
    resp = complete(litellm, server, [{"role": "user", "content": "answer?"}], response_format=RESPONSE_FORMAT)

    body = server.requests[0]
    assert body["output_format"]["type"] == "json_schema"
    assert body["output_format"]["schema"]["properties"] == SCHEMA["properties"]
    assert "tool_choice" not in body and "tools" not in body
    assert "structured-outputs" in server.request_headers[0].get("anthropic-beta", "")
    assert json.loads(resp.choices[0].message.content) == {"answer": 42}


def test_response_format_as_forced_tool(litellm: Any, server: AnthropicServer) -> None:
    """For a Claude model without native structured output, litellm forces its ``json_tool_call`` tool."""
    server.set_responder(lambda body: 'Here you are:\n```json\n{"answer": 7}\n```')
    resp = complete(litellm, server, [{"role": "user", "content": "answer?"}], response_format=RESPONSE_FORMAT,
                    model="anthropic/claude-3-5-sonnet-20241022")

    body = server.requests[0]
    assert body["tool_choice"] == {"type": "tool", "name": "json_tool_call"}
    assert [t["name"] for t in body["tools"]] == ["json_tool_call"]
    assert json.loads(resp.choices[0].message.content) == {"answer": 7}
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == "stop"


def test_tools_and_tool_choice(litellm: Any, server: AnthropicServer) -> None:
    pytest.importorskip("mcp", reason="litellm 1.106.2 raises `No module named 'mcp'` on any call with tools=")
    tools = [{"type": "function", "function": {
        "name": "bash", "description": "run a shell command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]
    server.set_responder(lambda body: {"tool": "bash", "input": {"command": "ls -la"}, "text": "Let me look."})
    resp = complete(litellm, server, [{"role": "user", "content": "what is here?"}], tools=tools, tool_choice="auto")
    call = resp.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("bash", {"command": "ls -la"})
    assert resp.choices[0].message.content == "Let me look."
    assert resp.choices[0].finish_reason == "tool_calls"
    assert server.requests[0]["tools"][0]["input_schema"]["required"] == ["command"]

    # a forced tool: the responder's text is parsed as the tool's input
    server.set_responder(lambda body: '{"command": "pwd"}')
    resp = complete(litellm, server, [{"role": "user", "content": "where?"}], tools=tools,
                    tool_choice={"type": "function", "function": {"name": "bash"}})
    assert server.requests[1]["tool_choice"] == {"type": "tool", "name": "bash"}
    assert json.loads(resp.choices[0].message.tool_calls[0].function.arguments) == {"command": "pwd"}


# --- errors ---------------------------------------------------------------------------------


def test_errors_map_to_litellm_exceptions(litellm: Any, server: AnthropicServer) -> None:
    hi = [{"role": "user", "content": "hi"}]
    server.enqueue(srv.authentication_error())
    with pytest.raises(litellm.AuthenticationError, match="authentication_error"):
        complete(litellm, server, hi)

    server.enqueue(srv.rate_limited(retry_after=3))
    with pytest.raises(litellm.RateLimitError) as info:
        complete(litellm, server, hi)
    assert dict(info.value.litellm_response_headers)["retry-after"] == "3"

    for behaviour in (srv.overloaded(), srv.server_error()):  # 529 and 500: both InternalServerError
        server.enqueue(behaviour)
        with pytest.raises(litellm.InternalServerError):
            complete(litellm, server, hi)

    server.enqueue(srv.prompt_too_long())
    with pytest.raises(litellm.ContextWindowExceededError):
        complete(litellm, server, hi)
    assert server.pending == 0
    assert server.usages == []


def test_server_checks_the_key(litellm: Any) -> None:
    with AnthropicServer(api_key="sk-the-right-one") as server:
        with pytest.raises(litellm.AuthenticationError):
            complete(litellm, server, [{"role": "user", "content": "hi"}])
        resp = litellm.completion(model=MODEL, api_base=server.url, api_key="sk-the-right-one",
                                  messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content == "default reply"


# --- answering from a termigen script ----------------------------------------------------------


def test_scripted_responder_answers_the_quickstart_seeder(server: AnthropicServer, tmp_path: Path) -> None:
    """The quickstart's first stage, through termigen's router and litellm backend, answered from its script."""
    from termigen_core.llm import CallScope, LLMRouter, RoleSettings
    from termigen_core.store import RunStore
    from termigen_plugins.backends.litellm_backend import LiteLLMBackend
    from termigen_plugins.taxonomy_builtin import (
        DEFAULT_PROMPT,
        load_taxonomy,
        parse_seeds,
        render_prompt,
    )

    script = REPO / "examples" / "quickstart.script.yaml"
    server.set_responder(srv.scripted_responder(script))
    store = RunStore(tmp_path / "run")
    try:
        router = LLMRouter(
            default=RoleSettings(backend="litellm", model=MODEL, api_base=server.url, api_key=KEY, max_retries=0),
            roles={}, backends={"litellm": LiteLLMBackend}, store=store,
        )
        taxonomy = load_taxonomy("builtin")
        template = DEFAULT_PROMPT.read_text(encoding="utf-8")
        seeds = {}
        for category in (c for c in taxonomy.categories if c.id in ("data_processing", "system_admin", "algorithms")):
            client = router.client("seeder", CallScope(key="source/seeds", stage="seeds"))
            seeds[category.id] = client.ask(render_prompt(template, category, taxonomy, 3), parse_seeds).value
    finally:
        store.close()

    assert seeds["data_processing"][0] == "Summarise HTTP status codes from a web server access log"
    assert seeds["system_admin"] == ["Archive oversized log files with gzip before the disk fills up"]
    assert seeds["algorithms"] == ["Compute shortest path distances from a weighted edge list"]
    assert set(server.paths) == {"/v1/messages"}


def test_role_hints_tell_the_evaluator_from_the_proposer() -> None:
    """Every template in TERMIGEN_PROMPT_ROLES yields a hint; the evaluator's prompt, which quotes the
    seed a proposer rule matches, gets the evaluator's rule."""
    import termigen_plugins

    root = Path(termigen_plugins.__file__).resolve().parent
    assert all((root / rel).is_file() for rel, _, _ in srv.TERMIGEN_PROMPT_ROLES)
    assert len(srv.termigen_role_hints()) == len(srv.TERMIGEN_PROMPT_ROLES)

    respond = srv.scripted_responder(REPO / "examples" / "quickstart.script.yaml")
    evaluator = Template((root / "stages/prompts/evaluator.txt").read_text(encoding="utf-8")).safe_substitute(
        seed="Summarise HTTP status codes from a web server access log", spec='{"title": "Summarise HTTP status codes"}'
    )
    reply = respond({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": evaluator}]})
    assert json.loads(str(reply))["feedback"] == "Clear, buildable and checkable."

    # without hints the role is ignored: the proposer rule quoting the same seed wins
    blind = srv.scripted_responder(REPO / "examples" / "quickstart.script.yaml", role_hints=[])
    reply = blind({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": evaluator}]})
    assert json.loads(str(reply))["title"] == "Summarise HTTP status codes in an access log"

    # a prompt no hint recognises: role conditions are ignored, so a role-only rule catches it
    unknown = respond({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "nothing matches this"}]})
    assert json.loads(str(unknown))["feedback"] == "Clear, buildable and checkable."  # the evaluator's catch-all


def test_scripted_responder_without_a_matching_rule(tmp_path: Path, litellm: Any) -> None:
    script = tmp_path / "script.yaml"
    script.write_text("- {role: seeder, match: 'seeds please', response: 'a'}\n")
    with AnthropicServer(srv.scripted_responder(script)) as server:
        with pytest.raises(litellm.BadRequestError, match="no rule in .* matches role=None"):
            complete(litellm, server, [{"role": "user", "content": "something else"}])
        assert complete(litellm, server, [{"role": "user", "content": "seeds please"}]).choices[0].message.content == "a"
