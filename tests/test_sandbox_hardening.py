"""What a model is shown after awkward commands, against both real engines (Docker and Podman).

Observations become training data and are re-sent on every later turn, so they
must be terminal text: control bytes escaped or summarised (once, where the
shell decodes output, so the run store, the trajectory record and the prompt
agree), one note per restarted shell, and no ``fork: retry`` spam left behind by
a fork bomb. The engine fixtures are the contract suite's (same skips, same
clean-up); the terminal-text rules themselves are also checked without an engine.
"""

from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import test_executor_contract as contract

from termigen_core.sandbox import SandboxSpec
from termigen_plugins.agent.agent import AgentSettings, BashAgent
from termigen_plugins.agent.formats import get_format, observation_text
from termigen_plugins.executors.output import CappedOutput, printable

# The contract suite's engine fixtures (parametrized over Docker and Podman; same skips and clean-up).
podman_url, engine, executor, spec, box = contract.podman_url, contract.engine, contract.executor, contract.spec, contract.box

CONTROL_CHARS = {chr(c) for c in range(0x20) if chr(c) not in "\n\t"} | {chr(c) for c in range(0x7F, 0xA0)}


def _agent() -> BashAgent:
    llm = SimpleNamespace(capabilities=SimpleNamespace(tools=False))
    return BashAgent(llm=llm, format=get_format("tool_calls"), settings=AgentSettings(command_timeout_s=30))  # type: ignore[arg-type]


# --- terminal text, without an engine ------------------------------------------------------------


@pytest.mark.parametrize(("raw", "shown"), [
    (b"a\0b" + b"\0" * 3000 + b"\n", "a\\x00b[3000 NUL bytes]\n"),
    (b"bell\x07 \x1b[1;31mred\x1b[0m done\r\n", "bell\\x07 red done\n"),
    (b"10%\r50%\r100%\nnext\r", "100%\nnext"),
    (b"\x1b]0;title\x07x\x1b", "x\\x1b"),
    (b"\xff\xfeok\ttab\x7f\x01", "\ufffd\ufffdok\ttab\\x7f\\x01"),
    (b"plain text\n", "plain text\n"),
])
def test_printable(raw: bytes, shown: str) -> None:
    assert printable(raw) == shown


def test_capped_output_is_printable_on_both_sides_of_the_cut() -> None:
    out = CappedOutput(100)
    out.add(b"\0" * 30 + b"x" * 1000 + b"\x07")
    assert out.text() == "[30 NUL bytes]" + "x" * 20 + "\n[... 931 bytes of output omitted ...]\n" + "x" * 49 + "\\x07"


# --- against the engines -------------------------------------------------------------------------


def test_control_bytes_are_escaped_before_any_record_or_prompt(box: Any) -> None:
    command = r"printf 'a\0b'; head -c 3000 /dev/zero; printf '\a\033[31mred\033[0m\r\n\377\n'; printf '1%%\r99%%\r100%%\n'"
    result = box.run(command, timeout_s=30)
    expected = "a\\x00b[3000 NUL bytes]\\x07red\n\ufffd\n100%\n"
    assert result.ok and result.output == expected
    outcome = _agent().execute(box, command)  # what the step (and so the export) records
    assert outcome.output == expected
    prompt = observation_text(outcome.output, outcome.exit_code, outcome.timed_out, outcome.duration_s)
    assert not CONTROL_CHARS & set(prompt), repr(prompt)


def test_control_bytes_on_separate_stderr(executor: Any, spec: SandboxSpec) -> None:
    with executor.open(replace(spec, merge_stderr=False)) as sandbox:
        result = sandbox.run(r"printf 'out\0\n'; printf 'err\a\n' >&2", timeout_s=30)
        assert (result.output, result.stderr) == ("out\\x00\n", "err\\x07\n")


def test_a_restarted_shell_is_announced_once(box: Any) -> None:
    box.run("cd /tmp", timeout_s=30)
    outcome = _agent().execute(box, "echo bye; exit 3")
    assert outcome.exit_code == 3 and outcome.output.startswith("bye\n")
    assert outcome.output.count("[termigen: ") == 1 and "[the shell was restarted" not in outcome.output
    assert "a new shell was started in /app" in outcome.output
    assert _agent().execute(box, "pwd").output == "/app\n"


@pytest.mark.parametrize("bomb", [
    ":(){ :|:& };:",                # returns at once; the copies fill the pids cgroup in the background
    ":(){ :|:& };:; sleep 60",      # still running when the timeout kills it
])
def test_a_fork_bomb_leaves_no_spam_behind(executor: Any, spec: SandboxSpec, bomb: str) -> None:
    with executor.open(replace(spec, pids_limit=64)) as sandbox:
        assert sandbox.run("cd /tmp; export KEEP=1", timeout_s=30).ok
        first = sandbox.run(bomb, timeout_s=3)
        # A bomb left in the background grows on its own: the limit is noticed by the check
        # before or after whichever command comes next once it is reached, so look a few times.
        results = [first]
        note = "[termigen: the sandbox reached its limit of 64 processes, so every process started from the shell was killed"
        on_timeout = "the sandbox was at its process limit, so background processes were killed too]"
        for _ in range(20):
            if any(note in r.output or on_timeout in r.output for r in results):
                break
            time.sleep(0.25)
            results.append(sandbox.run("echo ok", timeout_s=30))
        after = sandbox.run("echo ok", timeout_s=30)
        results.append(after)
        seen = "\n".join(repr(r.output[-300:]) for r in results)
        for result in results:
            assert "fork" not in result.output and not result.shell_restarted, seen
        # The sandbox says it killed the processes exactly once, and the command after that is clean.
        text = "".join(r.output for r in results)
        assert text.count(note) + text.count(on_timeout) == 1, seen
        assert first.timed_out == (on_timeout in first.output), seen
        assert after.ok and after.output == "ok\n", seen
        again = sandbox.run('echo ok; pwd; echo "$KEEP"; ls / | wc -l', timeout_s=30)
        lines = again.output.split("\n")
        assert again.ok and lines[:3] == ["ok", "/tmp", "1"] and int(lines[3]) > 5, again.output
