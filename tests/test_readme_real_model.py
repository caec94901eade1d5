"""The README's real-model command, run as written, against a loopback server speaking Anthropic's API.

``termigen run examples/quickstart.yaml --out DIR -s llm.default.backend=litellm
-s llm.default.model=anthropic/claude-sonnet-4-5`` goes through litellm's real Anthropic
client (structured output, prompt caching, usage and pricing) to
``tests/support/anthropic_server.py``, which answers from the quickstart's own script
and accounts the prompt cache the way Anthropic's API does. Only the transport's far
end is ours: the config, the switch of backend, the ledger and the Docker stages are
what a user with an ``ANTHROPIC_API_KEY`` runs.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess

import pytest

from helpers import ROOT, read_jsonl, run_cli
from tests.support.anthropic_server import AnthropicServer, scripted_responder

pytestmark = [pytest.mark.docker, pytest.mark.slow]

README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_command() -> list[str]:
    """The README's real-model command line (its continuation lines joined), minus the program."""
    block = re.search(r"export ANTHROPIC_API_KEY=.*?\n(.*?)```", README, re.DOTALL)
    assert block is not None, "the README lost its real-model command"
    line = block.group(1).replace("\\\n", " ")
    words = line.split()
    assert words[0].endswith("termigen") and words[1] == "run"
    return words[1:]


@pytest.fixture(scope="module")
def claude_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("claude")
    shutil.copy(ROOT / "examples" / "quickstart.yaml", work / "quickstart.yaml")
    shutil.copy(ROOT / "examples" / "quickstart.script.yaml", work / "quickstart.script.yaml")
    args = readme_command()
    args[args.index("examples/quickstart.yaml")] = str(work / "quickstart.yaml")
    args[args.index("--out") + 1] = str(work / "run")
    with AnthropicServer(responder=scripted_responder(work / "quickstart.script.yaml"), api_key="sk-ant-test-dummy") as server:
        env = {
            "ANTHROPIC_API_KEY": "sk-ant-test-dummy",
            "ANTHROPIC_BASE_URL": server.url,
            "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
        }
        result = run_cli(*args, env=env, timeout=1500)
        requests = list(server.requests)
    run_dir = work / "run"
    try:
        yield run_dir, result, requests
    finally:
        path = run_dir / "export" / "trajectories.jsonl"
        for item in read_jsonl(path) if path.exists() else []:
            subprocess.run(["docker", "rmi", "-f", item["data"]["task"]["build"]["image"]], capture_output=True)


def test_the_readme_command_runs_the_whole_pipeline_through_litellm(claude_run):
    run_dir, result, requests = claude_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_items"] == 3
    assert requests, "no request reached the loopback Anthropic server"
    assert "LiteLLM" not in result.stdout + result.stderr  # litellm's own logging stays out of the console


def test_structured_calls_ask_for_their_schema_and_every_call_is_priced(claude_run):
    run_dir, _, _ = claude_run
    db = sqlite3.connect(run_dir / "run.db")
    rows = db.execute("SELECT role, structured_mode, cost_usd, request FROM llm_calls WHERE status='ok'").fetchall()
    modes = {(role, mode) for role, mode, _, _ in rows}
    for role in ("seeder", "proposer", "evaluator", "planner", "judge", "critic"):
        assert (role, "schema") in modes, f"{role} did not ask for its schema: {sorted(modes)}"
    assert all(cost is not None and cost > 0 for _, _, cost, _ in rows)  # claude-sonnet-4-5 has a price
    assert all("sk-ant-test-dummy" not in request for *_, request in rows)
    report = (run_dir / "report.md").read_text()
    assert "## LLM use" in report and "| propose | proposer | anthropic/claude-sonnet-4-5 |" in report
    proposer = next(line for line in report.splitlines() if line.startswith("| propose | proposer |"))
    assert proposer.rstrip(" |").endswith("schema")  # the structured-output mode, per stage and role
    assert "sk-ant-test-dummy" not in report + (run_dir / "config.yaml").read_text() + (run_dir / "run.log").read_text()


def test_agent_and_critic_turns_mark_their_prefix_for_the_prompt_cache(claude_run):
    """The quickstart's prompts are under Anthropic's 1024-token minimum, so nothing is cached
    here (benchmarks/prompt_caching.py measures a real-sized episode); the breakpoints must be
    sent all the same, on the system prompt and, once the model has answered, on the latest turns."""
    _, _, requests = claude_run

    def marked(block) -> bool:
        return isinstance(block, dict) and "cache_control" in block

    def marks(request) -> tuple[bool, int]:
        system = request.get("system")
        system_marked = isinstance(system, list) and any(marked(b) for b in system)
        turns = sum(1 for m in request["messages"] if isinstance(m["content"], list) and any(marked(b) for b in m["content"]))
        return system_marked, turns

    agent = [r for r in requests if str(r.get("system", "")).find("terminal") >= 0 and len(r["messages"]) >= 3]
    assert agent, "no multi-turn agent request reached the server"
    assert all(marks(r) == (True, 2) for r in agent)
    critic = [r for r in requests if "You review single steps" in json.dumps(r.get("system", ""))]
    assert critic and all(marks(r)[0] for r in critic)
    one_shot = [r for r in requests if "system" not in r and len(r["messages"]) == 1]
    assert one_shot and all(marks(r) == (False, 0) for r in one_shot)  # nothing would read them back
