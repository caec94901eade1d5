"""Phase II trajectories: intent sampling, formats, tools, leaks, scoring, the collector, and whole runs.

Unit tests use small fakes for the LLM clients and the sandbox (the collector
only needs ``chat`` and ``run``). The end-to-end tests run the real CLI on the
scripted backend against real containers: a tiny task image is built by the
``fixture_task_p2`` stage (tests/fixtures/phase2_fixtures.py) and removed after.
"""

from __future__ import annotations

import json
import random
import sqlite3
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import yaml

from helpers import FIXTURES, read_jsonl, run_cli, write_yaml
from termigen_core.components import LLMBackend
from termigen_core.errors import ParseError
from termigen_core.items import Item
from termigen_core.llm import PARSE_RETRY_PREFIX, CallScope, LLMClient, LLMRequest, LLMResponse, LLMRouter, RoleSettings
from termigen_core.records import Step, TrajectoryRecord
from termigen_core.sandbox import CommandResult
from termigen_core.store import RunStore
from termigen_plugins.agent.agent import AgentSettings, BashAgent, cap_output
from termigen_plugins.agent.collect import Collector, CollectSettings, ModeSpec
from termigen_plugins.agent.formats import TOOLS, Action, HermesFormat, ToolCallsFormat, get_format, observation_text
from termigen_plugins.agent.sampling import Intent, IntentSampler, plan
from termigen_plugins.agent.scoring import parse_pytest_counts, score
from termigen_plugins.agent.stats import trajectory_statistics
from termigen_plugins.agent.tools import extract_tools, tools_used
from termigen_plugins.error_modes import mode_applies
from termigen_plugins.verifiers.leaks import LeakScanner

PLUGIN = FIXTURES / "phase2_fixtures.py"
MODES = ["analysis", "command", "hallucination", "requirement_violation", "verification_failure"]


# --- intent sampling ------------------------------------------------------------------------------


def test_intent_sampling_rate_matches_and_is_reproducible():
    modes = [("analysis", 1.0), ("command", 1.0), ("hallucination", 2.0)]
    draws = [IntentSampler(random.Random(1234), 0.2, modes).next() for _ in range(1)]
    sampler = IntentSampler(random.Random(1234), 0.2, modes)
    sequence = [sampler.next() for _ in range(10_000)]
    errors = [i for i in sequence if i.is_error]
    assert abs(len(errors) / 10_000 - 0.2) < 0.015  # 3.75 standard deviations
    shares = {m: sum(i.mode == m for i in errors) / len(errors) for m, _ in modes}
    assert abs(shares["hallucination"] - 0.5) < 0.05 and abs(shares["command"] - 0.25) < 0.05
    again = IntentSampler(random.Random(1234), 0.2, modes)
    assert [again.next() for _ in range(10_000)] == sequence
    assert draws[0] == sequence[0]
    other = IntentSampler(random.Random(4321), 0.2, modes)
    assert [other.next() for _ in range(200)] != sequence[:200]
    # registration order must not matter
    shuffled = IntentSampler(random.Random(1234), 0.2, list(reversed(modes)))
    assert [shuffled.next() for _ in range(500)] == sequence[:500]


def test_intent_sampling_edges():
    assert not any(IntentSampler(random.Random(1), 0.0, [("command", 1)]).next().is_error for _ in range(1000))
    assert all(IntentSampler(random.Random(1), 1.0, [("command", 1)]).next().mode == "command" for _ in range(100))
    assert not IntentSampler(random.Random(1), 1.0, []).next().is_error
    assert not IntentSampler(random.Random(1), 1.0, [("command", 0)]).next().is_error
    with pytest.raises(ValueError):
        IntentSampler(random.Random(1), 1.5, [])


def test_plan_uses_the_core_seeding():
    modes = [("command", 1.0)]
    assert plan(7, "task-a", 1, rate=0.3, modes=modes, steps=50) == plan(7, "task-a", 1, rate=0.3, modes=modes, steps=50)
    assert plan(7, "task-a", 1, rate=0.3, modes=modes, steps=50) != plan(8, "task-a", 1, rate=0.3, modes=modes, steps=50)
    assert plan(7, "task-a", 1, rate=0.3, modes=modes, steps=50, trajectory=1) != plan(7, "task-a", 1, rate=0.3, modes=modes, steps=50)


# --- formats --------------------------------------------------------------------------------------


def test_tool_calls_format_parses_and_renders():
    fmt = ToolCallsFormat()
    action = fmt.parse('{"thought": "look", "tool": "bash", "arguments": {"command": "ls -la"}}')
    assert action == Action("look", "bash", "ls -la")
    assert fmt.parse(fmt.render(action)) == action
    fenced = '```json\n{"thought": "t", "name": "bash", "arguments": "{\\"command\\": \\"pwd\\"}"}\n```'
    assert fmt.parse(fenced) == Action("t", "bash", "pwd")  # OpenAI-style name + string arguments
    done = fmt.parse('{"thought": "checked", "tool": "finish", "arguments": {"summary": "all good"}}')
    assert done == Action("checked", "finish", "all good") and done.arguments() == {"summary": "all good"}
    assert fmt.parse('{"thought": "ok", "tool": "finish"}') == Action("ok", "finish", None)
    for bad, message in [
        ("no json here", "no JSON"),
        ('{"thought": "", "tool": "bash", "arguments": {"command": "ls"}}', "thought"),
        ('{"thought": "x", "tool": "python", "arguments": {}}', "unknown tool"),
        ('{"thought": "x", "tool": "bash", "arguments": {"command": "  "}}', "non-empty"),
        ('{"thought": "x", "tool": "bash", "arguments": ["ls"]}', "JSON object"),
    ]:
        with pytest.raises(ParseError, match=message):
            fmt.parse(bad)


def test_hermes_format_parses_and_renders():
    fmt = HermesFormat()
    text = 'The file is there.\n<tool_call>\n{"name": "bash", "arguments": {"command": "cat /app/x"}}\n</tool_call>\n'
    assert fmt.parse(text) == Action("The file is there.", "bash", "cat /app/x")
    assert fmt.parse(fmt.render(Action("a\nb", "bash", "echo 'hi'"))) == Action("a\nb", "bash", "echo 'hi'")
    assert fmt.parse('Done.<tool_call>{"name": "finish", "arguments": {}}</tool_call>') == Action("Done.", "finish", None)
    call = '<tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>'
    for bad, message in [
        ("I will run ls", "no <tool_call>"),
        ('Think. <tool_call>{"name": "bash", "arguments": {"command": "ls"}}', "not closed"),
        (f"Think. {call}{call}", "exactly one"),
        (f"Think. {call}\nThis command is intentionally incorrect.", "nothing after"),
        ("Think. <tool_call>{name: bash}</tool_call>", "not valid JSON"),
        (call, "reasoning before"),
        ('Think. <tool_call>{"name": "rm", "arguments": {}}</tool_call>', "unknown tool"),
    ]:
        with pytest.raises(ParseError, match=message):
            fmt.parse(bad)
    with pytest.raises(ValueError, match="unknown agent format"):
        get_format("xml")


def test_rendering_matches_the_sft_exporter():
    """The agent must see at evaluation what the exported training data teaches."""
    sft = pytest.importorskip("termigen_plugins.exporters.sft_format")
    step = Step(index=0, thought="Look first.", command="ls /app", output="a\nb\n", exit_code=2)
    assert observation_text(step.output, step.exit_code) == sft.observation_text(step)
    slow = Step(index=1, thought="t", command="sleep 9", output="", exit_code=124, timed_out=True, duration_s=5.2)
    assert observation_text(slow.output, slow.exit_code, True, 5.2) == sft.observation_text(slow)
    for action in (Action("Look first.", "bash", "ls /app"), Action("Done.", "finish", "ok"), Action("Done.", "finish", None)):
        step = Step(index=0, thought=action.thought, action=action.action, command=action.command)
        assert HermesFormat().render(action) == sft.hermes_text(step.thought, sft.call_of(step))
    assert TOOLS == sft.DEFAULT_TOOLS


# --- tools ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, expected", [
    ("ls -la /app", ["ls"]),
    ("cat f | grep -E 'a|b' && sort -u > out; wc -l out", ["cat", "grep", "sort", "wc"]),
    ("sudo -u root env FOO=1 /usr/bin/python3 -c 'print(1)'", ["sudo", "python3"]),
    ("time nohup timeout -s KILL 10 make -j4 2>&1 | tee log", ["timeout", "make", "tee"]),
    ("FOO=bar BAZ=1 ./configure --prefix=/usr", ["configure"]),
    ('for f in *.txt; do wc -l "$f"; done', ["wc"]),
    ("if [ -f x ]; then echo yes; else touch x; fi", ["echo", "touch"]),
    ("echo $(date +%s) `hostname`", ["echo", "date", "hostname"]),
    ("cat <<EOF > /app/x.py\nimport os\nrm -rf /tmp/x\nEOF\npython3 /app/x.py", ["cat", "python3"]),
    ("grep -E '(error|warn' app.log", ["grep"]),
    ("echo 'unbalanced | sed s/a/b/", ["echo", "sed"]),
    ("x=$(cat f | head -1) && echo $((1+2))", ["cat", "head", "echo"]),
    ("cd /app \\\n  && ls", ["cd", "ls"]),
    ("# just a comment", []),
])
def test_extract_tools(command, expected):
    assert extract_tools(command) == expected


def test_tools_used_is_sorted_unique_and_skips_none():
    assert tools_used(["ls; ls", None, "cat x | ls", ""]) == ["cat", "ls"]


# --- leaks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "This command is intentionally incorrect to inject an error.",
    "I'll deliberately use the wrong flag here.",
    "As instructed, I will use jq.",
    "Per the error mode, run it without checking.",
    "That was a command error: tar needs --directory.",
    "This step violates the requirement_violation rule.",
    "Maybe jq exists; this is a hallucination test.",
    "Let me make a mistake now.",
    "This command is wrong on purpose.",
])
def test_leak_scanner_flags_protocol_vocabulary(text):
    assert LeakScanner(MODES).scan(text)


@pytest.mark.parametrize("text", [
    "Let me run cvc5 on the file to check satisfiability.",
    "I'll check the access log for SQL injection attempts.",
    "The previous command failed: awk's program lacks its closing brace.",
    "Open the file in vim command mode and save it.",
    "The analysis of the CSV shows three columns.",
])
def test_leak_scanner_passes_genuine_text(text):
    assert LeakScanner(MODES).scan(text) == []


def test_leak_scanner_catches_quoted_private_text_and_custom_patterns():
    private = "Skip a check that the situation calls for and act directly on an unverified assumption."
    leaks = LeakScanner(MODES).scan("I'll act directly on an unverified assumption that the situation calls for", [private])
    assert not leaks  # shares fewer than 8 consecutive words
    assert LeakScanner(MODES).scan("skip a check that the situation calls for and restart", [private])
    assert LeakScanner(MODES, extra_patterns=[r"\bgolden path\b"]).scan("Back on the golden path.")


def test_leaks_verifier_reports_leaking_steps():
    from termigen_core.plugins import build_plugin_host
    from termigen_plugins.verifiers.leaks import LeaksVerifier

    registry = build_plugin_host(entrypoints=False).registry
    steps = [
        Step(index=0, thought="Read the input.", command="cat /app/numbers.txt"),
        Step(index=1, intent="error", error_mode="command", thought="This command is intentionally incorrect.", command="awk '{print'"),
    ]
    record = TrajectoryRecord(id="t.0", task_id="t", steps=steps)
    item = Item(id="t.0", kind="trajectory", data={"task": {}, "trajectory": record.model_dump()})
    findings = LeaksVerifier().verify(item, SimpleNamespace(registry=registry))
    assert [f.path for f in findings] == ["steps[1].thought"] and findings[0].severity == "error"
    assert LeaksVerifier().verify(Item(id="x", kind="task", data={}), SimpleNamespace(registry=registry)) == []


# --- scoring and statistics -----------------------------------------------------------------------


def test_pytest_summary_parsing():
    assert parse_pytest_counts("..F\nFAILED t.py::b\n1 failed, 1 passed in 0.05s\n") == {"failed": 1, "passed": 1}
    assert parse_pytest_counts("===== 2 passed, 1 warning in 0.01s =====") == {"passed": 2, "warnings": 1}
    assert parse_pytest_counts("ERROR t.py\n1 error in 0.10s") == {"errors": 1}
    half = score("1 failed, 1 passed in 0.05s", 1)
    assert (half.passed, half.total, half.pass_ratio, half.resolved) == (1, 2, 0.5, False)
    full = score("2 passed, 1 skipped in 0.05s", 0)
    assert (full.passed, full.total, full.pass_ratio, full.resolved) == (2, 2, 1.0, True)
    broken = score("ImportError while loading conftest\n1 error in 0.1s", 4)
    assert (broken.total, broken.pass_ratio, broken.resolved) == (1, 0.0, False)
    silent = score("Killed", 137, timed_out=True)
    assert (silent.total, silent.pass_ratio, silent.resolved) == (0, 0.0, False)
    assert score("no tests ran in 0.01s", 5).total == 0


def test_trajectory_statistics():
    def record(ratio: float, intents: list[str], tools: list[str]) -> TrajectoryRecord:
        steps = []
        for i, kind in enumerate(intents):
            mode = kind if kind != "correct" else None
            recovers = i - 1 if i and intents[i - 1] != "correct" and kind == "correct" else None
            steps.append(Step(index=i, intent="error" if mode else "correct", error_mode=mode, recovers_from=recovers, regenerations=1))
        return TrajectoryRecord(id="t", task_id="t", steps=steps, pass_ratio=ratio, resolved=ratio == 1.0, tools_used=tools,
                                stats={"stopped": "finished", "tokens": {"agent": {"prompt": 10, "completion": 2}}})

    records = [record(1.0, ["correct", "command", "correct", "correct"], ["ls", "awk"]),
               record(0.5, ["hallucination", "command", "correct"], ["ls"]),
               record(0.0, ["correct"], [])]
    items = [Item(id=f"i{k}", kind="trajectory", data={"trajectory": r.model_dump()}) for k, r in enumerate(records)]
    stats = trajectory_statistics(items)
    assert stats["trajectories"] == 3 and stats["resolved"] == {"count": 1, "rate": 0.3333}
    assert stats["steps"]["max"] == 4 and stats["steps"]["histogram"] == {"0-4": 3}
    assert stats["errors_injected"]["by_mode"] == {"command": 2, "hallucination": 1}
    assert stats["recoveries"]["total"] == 2 and stats["recoveries"]["errors_followed_by_recovery"] == round(2 / 3, 4)
    assert stats["pass_ratio"]["histogram"] == {"0": 1, "(0.25,0.5]": 1, "1": 1}
    assert stats["tools"]["distinct"] == 2 and stats["tools"]["top"] == {"ls": 2, "awk": 1}
    assert stats["tokens"] == {"agent_prompt": 30, "agent_completion": 6} and stats["regenerations"] == 8
    assert trajectory_statistics([]) == {"trajectories": 0}
    assert trajectory_statistics([r.model_dump() for r in records])["trajectories"] == 3


def test_mode_applies_hook():
    class Everywhere:
        name = "everywhere"

    class Never:
        name = "never"

        @classmethod
        def applies_to(cls, task: Any) -> bool:
            return False

    class Broken:
        name = "broken"

        @classmethod
        def applies_to(cls, task: Any) -> bool:
            raise RuntimeError("bug")

    assert mode_applies(Everywhere, object()) and not mode_applies(Never, object()) and not mode_applies(Broken, object())


# --- the collector with fakes ---------------------------------------------------------------------


class FakeClient(LLMClient):
    """A real ``LLMClient`` (router, run store, ask path) whose backend answers with ``reply(messages)``."""

    def __init__(self, role: str, reply: Callable[[list[dict[str, str]]], str]) -> None:
        calls: list[list[dict[str, str]]] = []

        class Backend(LLMBackend):
            name = "function"

            def complete(self, request: LLMRequest) -> LLMResponse:
                calls.append(request.messages)
                return LLMResponse(text=reply(request.messages), prompt_tokens=10, completion_tokens=3)

        store = RunStore(tempfile.mkdtemp(prefix="fake-client-"))
        settings = RoleSettings(backend="function", model=f"fake-{role}", max_parse_retries=1)
        router = LLMRouter(default=settings, roles={}, backends={"function": Backend}, store=store)
        super().__init__(router, role, CallScope(key=f"item@{role}", stage="trajectories"))
        self.calls = calls


class FakeBox:
    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: str, *, timeout_s: float = 60) -> CommandResult:
        self.commands.append(command)
        return CommandResult(command, 1 if "bad" in command else 0, "x" * 5000 if "big" in command else f"ran {command}", 0.01)


def tc(thought: str, command: str | None = None, *, finish: bool = False) -> str:
    if finish:
        return json.dumps({"thought": thought, "tool": "finish", "arguments": {"summary": command or ""}})
    return json.dumps({"thought": thought, "tool": "bash", "arguments": {"command": command}})


def collector(agent_reply: Callable, critic_reply: Callable, *, rate: float = 0.0, steps: int = 5, regen: int = 2,
              min_finish: int = 1) -> tuple[Collector, FakeClient, FakeClient]:
    agent_llm, critic_llm = FakeClient("agent", agent_reply), FakeClient("critic", critic_reply)
    agent = BashAgent(agent_llm, ToolCallsFormat(), AgentSettings(max_steps=steps, max_history_chars=4000))  # type: ignore[arg-type]
    modes = {"command": ModeSpec("command", "Break the syntax.", "Is it a syntax error?", ("tar -xzf a -directory b",))}
    sampler = IntentSampler(random.Random(0), rate, [("command", 1.0)])
    return Collector(agent, critic_llm, sampler, modes, LeakScanner(MODES), CollectSettings(regen, min_finish)), agent_llm, critic_llm  # type: ignore[arg-type]


def last(messages: list[dict[str, str]]) -> str:
    return messages[-1]["content"]


def accept(_: Any) -> str:
    return '{"accepted": true, "feedback": "ok"}'


def test_error_step_falls_back_to_a_correct_step_when_the_critic_never_accepts():
    def agent(messages):
        return tc("Extract it.", "tar -xzf a -directory b bad") if "Intent: ERROR" in last(messages) else tc("Extract it.", "tar -xzf a -C b")

    def critic(messages):
        return '{"accepted": false, "feedback": "not informative"}' if "INJECTED ERROR" in last(messages) else accept(messages)

    coll, _, critic_llm = collector(agent, critic, rate=1.0, steps=1, regen=1)
    episode = coll.run(FakeBox(), "Extract a into b.")  # type: ignore[arg-type]
    (step,) = episode.steps
    assert (step.intent, step.error_mode, step.command) == ("correct", None, "tar -xzf a -C b")
    assert [v.accepted for v in step.critic] == [False, False, True] and step.regenerations == 2
    assert episode.stats["error_fallbacks"] == 1 and episode.stats["critic_rejections"] == 2
    assert episode.stats["tokens"]["agent"] == {"prompt": 30, "completion": 9}
    assert len(critic_llm.calls) == 3


def test_correct_step_keeps_its_last_candidate_when_the_critic_never_accepts():
    coll, _, _ = collector(lambda m: tc("List.", "ls"), lambda m: '{"accepted": false, "feedback": "meh"}', steps=1, regen=2)
    episode = coll.run(FakeBox(), "task")  # type: ignore[arg-type]
    assert episode.steps[0].command == "ls" and episode.steps[0].regenerations == 2
    assert [v.accepted for v in episode.steps[0].critic] == [False, False, False]
    assert episode.stats["accepted_after_rejections"] == 1 and episode.stopped == "max_steps"


def test_unparseable_agent_output_stops_the_episode_and_is_retried_with_the_error_first():
    coll, agent_llm, _ = collector(lambda m: "I am not sure.", accept)
    episode = coll.run(FakeBox(), "task")  # type: ignore[arg-type]
    assert episode.steps == [] and episode.stopped == "unparseable" and episode.stats["parse_retries"] == 1
    assert last(agent_llm.calls[1]).startswith(PARSE_RETRY_PREFIX)


def test_finish_too_early_and_finish_as_an_error_are_rejected_without_the_critic():
    replies = iter([tc("Nothing to do.", "done", finish=True), tc("Check.", "ls"), tc("Verified.", "ok", finish=True)])
    coll, _, critic_llm = collector(lambda m: next(replies), accept)
    episode = coll.run(FakeBox(), "task")  # type: ignore[arg-type]
    assert [s.action for s in episode.steps] == ["bash", "finish"] and episode.finished
    assert "Do not finish yet" in episode.steps[0].critic[0].feedback and len(critic_llm.calls) == 2

    def agent(messages):
        return tc("All set.", "x", finish=True) if "rejected" not in last(messages) else tc("Go.", "bad-tar")

    coll, _, _ = collector(agent, accept, rate=1.0, steps=1)
    step = coll.run(FakeBox(), "task").steps[0]  # type: ignore[arg-type]
    assert step.intent == "error" and step.command == "bad-tar" and "must not finish" in step.critic[0].feedback


def test_private_guidance_reaches_only_the_current_turn_and_recovery_follows_an_error():
    def agent(messages):
        text = last(messages)
        if "Intent: ERROR" in text:
            return tc("Extract the archive.", "tar -xzf a -directory b bad")
        if "Recovery:" in text:
            return tc("tar rejected -directory: the long option needs two dashes. Retrying.", "tar -xzf a --directory b")
        return tc("Check the result.", "ls b") if "[exit code: 0]" in text else tc("Done and checked.", "ok", finish=True)

    coll, agent_llm, critic_llm = collector(agent, accept, steps=3)
    planned = iter([Intent("error", "command"), Intent("correct"), Intent("correct")])
    coll.sampler = SimpleNamespace(next=lambda: next(planned))  # type: ignore[assignment]
    episode = coll.run(FakeBox(), "Extract a into b.")  # type: ignore[arg-type]
    error, recovery, check = episode.steps
    assert error.intent == "error" and error.exit_code == 1 and recovery.recovers_from == 0 and check.recovers_from is None
    assert "INJECTED ERROR" in last(critic_llm.calls[0]) and "follows a failed step" in last(critic_llm.calls[1])
    for messages in agent_llm.calls:
        guided = [m for m in messages[1:] if "PRIVATE STEP GUIDANCE" in m["content"]]  # [0]: system
        assert guided == [messages[-1]]  # only the current turn carries it
    assert "Recovery: the previous step (step 1)" in last(agent_llm.calls[1])
    assert episode.stats["recoveries"] == 1 and episode.stats["errors_by_mode"] == {"command": 1}


def test_history_keeps_the_latest_observation_and_truncates_old_ones_with_a_note():
    agent = BashAgent(FakeClient("agent", accept), HermesFormat(), AgentSettings(max_history_chars=3000))  # type: ignore[arg-type]
    steps = [Step(index=i, thought="t", command="cat big", output="y" * 2000, exit_code=0) for i in range(3)]
    messages = agent.messages("task", steps, final_note="NOTE")
    observations = [m["content"] for m in messages if m["role"] == "user"][1:]
    assert all("older output truncated" in o for o in observations[:-1])
    assert observations[-1].startswith("y" * 2000) and observations[-1].endswith("NOTE")
    assert "<tool_call>" in messages[0]["content"] and "PRIVATE" not in agent.system_prompt
    assert len(cap_output("z" * 50, 20)) < 120 and "omitted" in cap_output("z" * 50, 20)


# --- whole runs: real CLI, scripted models, real containers ----------------------------------------


def hermes(thought: str, command: str) -> str:
    return f'{thought}\n\n<tool_call>\n{json.dumps({"name": "bash", "arguments": {"command": command}})}\n</tool_call>'


def hermes_finish(thought: str, summary: str) -> str:
    return f'{thought}\n\n<tool_call>\n{json.dumps({"name": "finish", "arguments": {"summary": summary}})}\n</tool_call>'


@pytest.fixture(scope="module")
def image_tag(docker_client):
    """A unique tag for the fixture task's image; removed with the module."""
    import docker

    client = docker_client
    if not client.images.list(name="termigen/python"):
        pytest.skip("termigen/python:bookworm is missing; run `termigen images bootstrap`")
    tag = f"termigen-test/p2-task:{uuid.uuid4().hex[:8]}"
    yield tag
    try:
        client.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass


def run_pipeline(tmp_path: Path, rules: list[dict], trajectories: dict, tag: str, *, seed: int = 7) -> tuple[Path, dict]:
    (tmp_path / "script.yaml").write_text(yaml.safe_dump(rules, sort_keys=False, width=1000), encoding="utf-8")
    config = write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "run": {"out": str(tmp_path / "run"), "seed": seed, "concurrency": 1},
        "llm": {"default": {"backend": "scripted", "model": "scripted-agent", "script": "script.yaml"},
                "roles": {"critic": {"model": "scripted-critic"}}},
        "images": {"base": "termigen/python:bookworm"},
        "stages": [{"use": "fixture_task_p2", "with": {"tag": tag}}, {"use": "trajectories", "with": trajectories}],
        "exports": [{"use": "jsonl", "with": {"path": "export/trajectories.jsonl", "kinds": ["trajectory"]}}],
    })
    result = run_cli("run", str(config), "--plugin", str(PLUGIN), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    return run_dir, summary


def llm_requests(run_dir: Path, role: str) -> list[str]:
    with sqlite3.connect(run_dir / "run.db") as db:
        return [r[0] for r in db.execute("SELECT request FROM llm_calls WHERE role=? AND status='ok' ORDER BY rowid", (role,))]


def assert_no_leaks(record: TrajectoryRecord) -> None:
    scanner = LeakScanner(MODES)
    for step in record.steps:
        assert scanner.scan(f"{step.thought}\n{step.command or ''}") == [], step
        assert "PRIVATE" not in step.thought and "planned mistake" not in step.thought
    assert "PRIVATE" not in record.system_prompt and "guidance" not in record.system_prompt.lower()


FIX_MODES = [("analysis", 1.0), ("command", 1.0), ("hallucination", 1.0)]
FULL_RULES = [
    {"role": "agent", "match": "Error mode: command",
     "response": hermes("I'll total the column with awk.", "awk '{s+=$1} END {print s' /app/numbers.txt")},
    {"role": "agent", "match": "Error mode: hallucination",
     "response": hermes("jq can add up a stream of numbers in one go.", "jq -s add /app/numbers.txt")},
    {"role": "agent", "match": "Error mode: analysis",
     "response": hermes("The input is probably kept under /app/data as CSV; let me read it.", "cat /app/data/numbers.csv")},
    {"role": "agent", "match": r"Recovery:[^\n]*\(command\)",
     "response": hermes("awk reported a syntax error: the END block is missing its closing brace. Running it again with the brace.",
                        "awk '{s+=$1} END {print s}' /app/numbers.txt")},
    {"role": "agent", "match": r"Recovery:[^\n]*\(hallucination\)",
     "response": hermes("jq is not installed here (command not found), but Python is, so I'll add the numbers with it.",
                        "python3 -c \"print(sum(int(l) for l in open('/app/numbers.txt')))\"")},
    {"role": "agent", "match": r"Recovery:[^\n]*\(analysis\)",
     "response": hermes("There is no /app/data directory. Let me list /app to see where the input really is.", "ls -la /app")},
    {"role": "agent", "match": "Intent: CORRECT", "responses": [
        hermes("Let me look at the input file first.", "cat /app/numbers.txt"),
        hermes("One integer per line. I'll sum them with awk and write the result.",
               "awk '{s+=$1} END {print s}' /app/numbers.txt > /app/result.txt"),
        hermes("Let me check the result file.", "cat /app/result.txt"),
        hermes_finish("result.txt holds 15, the sum of 3, 4 and 8.", "Wrote 15 to /app/result.txt and checked it."),
    ]},
    {"role": "critic", "json": {"accepted": True, "feedback": "fine"}},
]


def seed_with_three_recovered_modes(rate: float) -> int:
    """A run seed whose sampled intents give errors of all three modes, each followed by a recovery,
    before the script's four correct steps are used up (found with the stage's own seeding)."""
    for seed in range(5000):
        progress, seen, previous_error = 0, set(), False
        for intent in plan(seed, "p2-sum", 1, rate=rate, modes=FIX_MODES, steps=40):
            if intent.is_error:
                if previous_error:
                    break  # no consecutive errors in this scenario
                seen.add(intent.mode)
                previous_error = True
            elif previous_error:
                previous_error = False
            else:
                progress += 1
                if progress == 4:
                    if seen == {m for m, _ in FIX_MODES}:
                        return seed
                    break
    raise AssertionError("no suitable seed")


@pytest.mark.docker
def test_full_episode_with_three_error_modes_each_recovered_ends_resolved(tmp_path, image_tag):
    rate = 0.5
    seed = seed_with_three_recovered_modes(rate)
    run_dir, summary = run_pipeline(tmp_path, FULL_RULES, {
        "injection_rate": rate, "error_modes": ["analysis", "command", "hallucination"], "agent_format": "hermes",
        "max_steps": 20, "command_timeout_s": 30,
    }, image_tag, seed=seed)
    (line,) = read_jsonl(run_dir / "export" / "trajectories.jsonl")
    record = TrajectoryRecord.of(line["data"])
    assert record.resolved and record.pass_ratio == 1.0 and (record.tests_passed, record.tests_total) == (2, 2)
    assert record.finished and record.steps[-1].action == "finish" and record.agent_format == "hermes"
    errors = [s for s in record.steps if s.intent == "error"]
    assert {s.error_mode for s in errors} == {"analysis", "command", "hallucination"}
    for error in errors:
        assert error.exit_code not in (0, None), error
        follow = record.steps[error.index + 1]
        assert follow.intent == "correct" and follow.recovers_from == error.index and follow.exit_code == 0
    # intents are exactly what the seed plans: reproducible from the run seed
    planned = plan(seed, "p2-sum", 1, rate=rate, modes=FIX_MODES, steps=len(record.steps))
    assert [(s.intent, s.error_mode) for s in record.steps] == [(i.kind, i.mode) for i in planned]
    assert record.seed == line["meta"]["trajectory_seed"] and record.model == "scripted-agent"
    assert record.stats["critic_model"] == "scripted-critic" and record.stats["recoveries"] == len(errors)
    assert {"cat", "awk", "jq", "python3", "ls"} <= set(record.tools_used)
    assert record.tools == TOOLS and "<tool_call>" in record.system_prompt
    assert_no_leaks(record)
    # the generator was guided privately; none of it was recorded
    requests = llm_requests(run_dir, "agent")
    assert len(requests) == len(record.steps) and all("PRIVATE STEP GUIDANCE" in r for r in requests)
    assert "PRIVATE STEP GUIDANCE" not in json.dumps(line)
    # the run report carries the trajectory statistics
    details = summary["stages"][1]["details"]
    assert details["errors_injected"]["by_mode"] == {"analysis": 1, "command": 1, "hallucination": 1}
    assert details["resolved"]["count"] == 1 and details["pass_ratio"]["histogram"] == {"1": 1}


@pytest.mark.docker
def test_critic_rejection_regenerates_and_a_failing_episode_is_kept_with_half_the_tests(tmp_path, image_tag):
    rules = [
        {"role": "agent", "match": "rejected your previous attempt",
         "response": tc("Let me read the input to see its format before computing anything.", "cat /app/numbers.txt")},
        {"role": "agent", "match": "could not be used", "response": tc("Writing the sum.", "echo 14 > /app/result.txt")},
        {"role": "agent", "match": "Intent: CORRECT", "responses": [
            tc("Let me look.", "cat /app/numbers.txt"),
            "I will write the sum now.",  # malformed: no JSON, retried with the parse error
            tc("The result is written.", "Wrote the sum to /app/result.txt.", finish=True),
        ]},
        {"role": "critic", "responses": [
            json.dumps({"accepted": False, "feedback": "Say what you expect to learn from the file."}),
            json.dumps({"accepted": True, "feedback": "ok"}),
        ]},
    ]
    run_dir, summary = run_pipeline(tmp_path, rules, {"injection_rate": 0.0, "max_steps": 10}, image_tag)
    (line,) = read_jsonl(run_dir / "export" / "trajectories.jsonl")
    record = TrajectoryRecord.of(line["data"])
    first = record.steps[0]
    assert first.regenerations == 1 and [v.accepted for v in first.critic] == [False, True]
    assert first.thought.startswith("Let me read the input") and first.command == "cat /app/numbers.txt"
    assert record.stats["critic_rejections"] == 1 and record.stats["regenerations"] == 1 and record.stats["parse_retries"] == 1
    assert [s.action for s in record.steps] == ["bash", "bash", "finish"] and record.finished
    assert (record.tests_passed, record.tests_total, record.pass_ratio, record.resolved) == (1, 2, 0.5, False)
    assert "1 failed, 1 passed" in record.test_output_tail
    assert record.agent_format == "tool_calls" and record.system_prompt and "JSON object" not in record.system_prompt
    assert summary["stages"][1]["rejected"] == 0 and summary["stages"][1]["details"]["pass_ratio"]["histogram"] == {"(0.25,0.5]": 1}

    # resume-safety: a stage interrupted mid-way runs again and replays every model call from the store
    with sqlite3.connect(run_dir / "run.db") as db:
        db.execute("UPDATE stage_runs SET status='running', outputs=NULL WHERE stage_index=1")
    again = run_cli("run", str(run_dir.parent / "pipeline.yaml"), "--plugin", str(PLUGIN), timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["llm"]["this_invocation"].get("paid", 0) == 0 and resumed["llm"]["this_invocation"]["replayed"] > 0
    (line_again,) = read_jsonl(run_dir / "export" / "trajectories.jsonl")
    replayed = TrajectoryRecord.of(line_again["data"])

    def essence(r: TrajectoryRecord) -> list:
        return [(s.intent, s.thought, s.command, s.output, s.exit_code, s.regenerations) for s in r.steps]

    assert essence(replayed) == essence(record) and replayed.seed == record.seed and replayed.pass_ratio == 0.5


@pytest.mark.docker
def test_a_leaking_candidate_is_caught_and_regenerated_before_the_critic_sees_it(tmp_path, image_tag):
    rules = [
        {"role": "agent", "match": "rejected your previous attempt",
         "response": tc("jq can add up a stream of numbers in one go.", "jq -s add /app/numbers.txt")},
        {"role": "agent", "match": "Error mode: hallucination",
         "response": tc("This command is intentionally incorrect to inject an error.", "jq -s add /app/numbers.txt")},
        {"role": "critic", "json": {"accepted": True, "feedback": "a realistic missing-tool error"}},
    ]
    run_dir, _ = run_pipeline(tmp_path, rules, {
        "injection_rate": 1.0, "error_modes": ["hallucination"], "max_steps": 2,
    }, image_tag)
    (line,) = read_jsonl(run_dir / "export" / "trajectories.jsonl")
    record = TrajectoryRecord.of(line["data"])
    assert len(record.steps) == 2 and not record.finished and record.stats["stopped"] == "max_steps"
    for step in record.steps:
        assert step.intent == "error" and step.error_mode == "hallucination" and step.regenerations == 1
        assert not step.critic[0].accepted and "reveals the private guidance" in step.critic[0].feedback
        assert step.critic[1].accepted and "intentionally" not in step.thought and step.exit_code == 127
    assert record.stats["leak_rejections"] == 2 and len(llm_requests(run_dir, "critic")) == 2
    assert (record.tests_total, record.pass_ratio, record.resolved) == (2, 0.0, False)  # kept, not rejected
    assert_no_leaks(record)


def test_config_check_names_unknown_error_modes(tmp_path):
    (tmp_path / "script.yaml").write_text("- response: x\n", encoding="utf-8")
    config = write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "stages": [{"use": "fixture_task_p2"}, {"use": "trajectories", "with": {
            "error_modes": ["halucination"], "mode_weights": {"comand": 2}}}],
    })
    result = run_cli("config", "check", str(config), "--plugin", str(PLUGIN))
    assert result.returncode != 0
    assert "did you mean 'hallucination'" in result.stderr + result.stdout
    assert "did you mean 'command'" in result.stderr + result.stdout
    empty = write_yaml(tmp_path / "empty.yaml", {
        "version": 1,
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "stages": [{"use": "fixture_task_p2"}, {"use": "trajectories", "with": {"error_modes": []}}],
    })
    result = run_cli("config", "check", str(empty), "--plugin", str(PLUGIN))
    assert result.returncode != 0 and "injection_rate: 0" in result.stderr + result.stdout
