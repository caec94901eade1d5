"""The ``validate`` stage: a reference solution, and proof by execution that the tests work.

Beyond the paper, whose judge only reads the tests: a solver writes
``solve.sh``; then, in fresh containers of the task's built image, the tests
must FAIL on the untouched environment (they check something) and PASS after
``solve.sh`` (the task is solvable and the tests accept a solution), each
``repeats`` times (a flaky test shows up as mixed results). A failure is
diagnosed and its evidence (the output's tail) goes to whoever can fix it:
the test generator (tests pass before, do not import, time out, are flaky) or
the solver (solve.sh fails or never finishes, tests fail after it). After
``max_rounds`` the task is rejected with the reason. Every command has a time
limit, so a solution that never finishes cannot hang the run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, Stage
from termigen_core.errors import ParseError, Reject
from termigen_core.items import Item
from termigen_core.llm import with_schema
from termigen_core.records import RunCheck, TaskRecord, Validation
from termigen_core.safepaths import write_tree
from termigen_plugins.agent.oracle import run_solution
from termigen_plugins.agent.scoring import ScoreCard, run_tests
from termigen_plugins.stages.synthesize import load_template
from termigen_plugins.stages.tests_stage import TestFiles, describe_files, parse_test_files, task_context, with_task

if TYPE_CHECKING:
    from termigen_core.context import StageContext
    from termigen_core.sandbox import CommandResult

#: One test run as the judges see it: the raw pytest command (unit tests) or the shared runner's verdict.
TestRun = "CommandResult | ScoreCard"

#: Output kept per check (the end: pytest's summary and the last error are there).
TAIL_CHARS = 4096
#: A fenced block whose closing fence starts a line (a ``` inside the script does not end it).
_BLOCK = re.compile(r"^```[\w+-]*[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)

Culprit = Literal["tests", "solution", "environment"]


@dataclass(frozen=True)
class Problem:
    """Why a validation round failed, and whose output must change."""

    code: str
    culprit: Culprit
    summary: str
    evidence: str


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-(limit - 6) :]


def parse_solution(text: str) -> str:
    """``solve.sh`` from a fenced block: non-empty, valid bash syntax (checked locally when bash exists)."""
    match = _BLOCK.search(text)
    if match is None:
        raise ParseError("put the complete solve.sh in one fenced block: ```bash ... ```")
    script = match.group(1).strip("\n")
    if not script.strip() or all(line.strip().startswith("#") for line in script.splitlines() if line.strip()):
        raise ParseError("solve.sh is empty: it must contain the commands that complete the task")
    if not script.startswith("#!"):
        script = "#!/bin/bash\n" + script
    bash = shutil.which("bash")
    if bash is not None:
        check = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True, timeout=10)
        if check.returncode != 0:
            raise ParseError(f"solve.sh has a bash syntax error: {check.stderr.strip()[:500]}")
    return script + ("" if script.endswith("\n") else "\n")


# --- diagnosis (pure: unit-tested without containers) -----------------------------------------


def _output(result: TestRun) -> str:
    return result.output_tail if isinstance(result, ScoreCard) else result.output


def _by_harness(result: TestRun) -> bool:
    """True when the verdict is the task's own harness's (Harbor reward, tb1 parser), not pytest's exit code."""
    return isinstance(result, ScoreCard) and result.verifier != "pytest"


def _environment_problem(result: TestRun) -> Problem | None:
    """The image cannot run the tests at all: no test generator or solver can fix that."""
    if result.exit_code == 127 or "No module named pytest" in _output(result):
        return Problem(
            "no_pytest", "environment",
            "the image cannot run the tests (python3 or pytest missing); the Dockerfile must install them",
            tail(_output(result)),
        )
    return None


def judge_before(result: TestRun, earlier: list[RunCheck]) -> Problem | None:
    """Tests on the untouched environment must fail with assertion failures (pytest exit 1).

    Under a harness's own runner the verdict is its own (not resolved = failed):
    any unresolved outcome but a timeout counts as failing, as the harness would score it.
    """
    evidence = tail(_output(result))
    if result.timed_out:
        return Problem("tests_timeout", "tests", "the tests did not finish in time on the untouched environment", evidence)
    if _by_harness(result):
        assert isinstance(result, ScoreCard)
        if not result.resolved:
            return None
        if any(not c.passed for c in earlier):
            return Problem("flaky", "tests", "the tests are flaky: on the untouched environment they failed, then passed", evidence)
        return Problem(
            "tests_pass_before", "tests",
            f"the task's {result.verifier} verifier resolves the untouched environment"
            f"{f' (reward {result.reward:g})' if result.reward is not None else ''}, so it does not check the objective",
            evidence,
        )
    if (env := _environment_problem(result)) is not None:
        return env
    if result.exit_code == 0:
        if any(not c.passed for c in earlier):
            return Problem(
                "flaky", "tests", "the tests are flaky: on the untouched environment they failed, then passed", evidence
            )
        return Problem(
            "tests_pass_before", "tests",
            "the tests pass on the untouched environment, so they do not check the task's objective", evidence,
        )
    if result.exit_code != 1:
        return Problem(
            "tests_error", "tests",
            f"the tests could not run on the untouched environment (pytest exit code {result.exit_code}: "
            "collection/import error or no tests collected); they must fail with assertion failures instead",
            evidence,
        )
    return None


def judge_after(
    solution: "CommandResult", result: "TestRun | None", earlier: list[RunCheck], previous: Problem | None,
    solution_timeout_s: float,
) -> Problem | None:
    """After solve.sh (which must succeed in time) the tests must pass (pytest exit 0; a harness: resolved)."""
    if solution.timed_out:
        return Problem(
            "solution_timeout", "solution",
            f"solve.sh did not finish within {solution_timeout_s:g}s (timeout)", tail(solution.output),
        )
    if solution.exit_code != 0:
        return Problem("solution_error", "solution", f"solve.sh exited with code {solution.exit_code}", tail(solution.output))
    assert result is not None
    evidence = tail(_output(result))
    if result.timed_out:
        return Problem("tests_timeout", "tests", "the tests did not finish in time after the solution ran", evidence)
    if _by_harness(result):
        assert isinstance(result, ScoreCard)
        if result.resolved:
            return None
        if any(c.passed for c in earlier):
            return Problem("flaky", "tests", "the tests are flaky: after the same solution they passed, then failed", evidence)
        return Problem(
            "tests_fail_after", "solution",
            f"the task's {result.verifier} verifier does not resolve the task after solve.sh ran: {result.reason}", evidence,
        )
    if (env := _environment_problem(result)) is not None:
        return env
    if result.exit_code == 0:
        return None
    if result.exit_code != 1:  # pytest 2-5: collection error, internal/usage error, no tests
        return Problem(
            "tests_error", "tests",
            f"the tests could not run after the solution (pytest exit code {result.exit_code})", evidence,
        )
    if any(c.passed for c in earlier):
        return Problem("flaky", "tests", "the tests are flaky: after the same solution they passed, then failed", evidence)
    # Tests were judge-approved, so blame the solution first; if a revised
    # solution still fails the same way, the tests may be what is wrong.
    culprit: Culprit = "tests" if previous is not None and previous.code == "tests_fail_after" else "solution"
    return Problem("tests_fail_after", culprit, "the tests fail after solve.sh ran", evidence)


# --- the stage ----------------------------------------------------------------------------------


class ValidateConfig(ComponentConfig):
    max_rounds: int = Field(default=3, ge=1, le=10, description="validation rounds (each may repair tests or solution)")
    repeats: int = Field(default=2, ge=1, le=5, description="runs of each phase, in fresh containers (flakiness)")
    test_timeout_s: float | None = Field(
        default=None, gt=0, description="limit of one test run (default: the task's test_timeout_s, 180)"
    )
    solution_timeout_s: float = Field(default=600, gt=0, description="limit of one solve.sh run")
    solver_prompt: Path | None = Field(default=None, description="template replacing prompts/solver.txt")
    test_repair_prompt: Path | None = Field(default=None, description="template replacing prompts/test_repair.txt")
    solution_repair_prompt: Path | None = Field(default=None, description="template replacing prompts/solution_repair.txt")


class ValidateStage(Stage):
    """Reference solution + fail-before/pass-after execution, with bounded repairs."""

    name = "validate"
    description = "Writes solve.sh; tests must fail before and pass after it in fresh containers, twice each."
    Config = ValidateConfig
    accepts = ("task",)
    produces = ("task",)
    roles = ("solver", "test_generator")
    uses_executor = True
    uses_task_image = True

    @property
    def cfg(self) -> ValidateConfig:
        return self.config  # type: ignore[return-value]

    def process(self, item: Item, ctx: "StageContext") -> Item:
        record = item.task()
        record.require_image(self.name)
        if not record.has_tests:
            raise Reject("the task has no tests: run the `tests` stage before `validate`")
        if not record.solution.strip():
            record.solution = self._ask_solution(record, ctx, "solver.txt", self.cfg.solver_prompt)
            record.models["solver"] = ctx.llm("solver").model
        history: list[dict[str, Any]] = []
        previous: Problem | None = None
        for round_no in range(1, self.cfg.max_rounds + 1):
            checks, problem = self._round(record, ctx, round_no, previous)
            history.append({"round": round_no, "checks": [c.model_dump() for c in checks],
                            **({"problem": problem.code, "culprit": problem.culprit} if problem else {})})
            if problem is None:
                record.validation = Validation(passed=True, rounds=round_no, checks=checks)
                return with_task(item, record, validation_rounds=round_no, validation_history=history)
            ctx.log("round %d: %s", round_no, problem.summary)
            # an imported task's own runner (test.sh / run-tests.sh) is not ours to rewrite
            own_tests = problem.culprit == "tests" and record.verifier.kind != "pytest"
            if problem.culprit == "environment" or own_tests or round_no == self.cfg.max_rounds:
                reason = f"validation failed after {round_no} round(s): {problem.summary}"
                validation = Validation(passed=False, rounds=round_no, checks=checks, reason=reason)
                raise Reject(reason, {"validation": validation.model_dump(), "history": history, "evidence": problem.evidence})
            self._repair(record, ctx, problem)
            previous = problem
        raise AssertionError("unreachable")  # pragma: no cover

    # -- execution ------------------------------------------------------------------------

    def _round(
        self, record: TaskRecord, ctx: "StageContext", round_no: int, previous: Problem | None
    ) -> tuple[list[RunCheck], Problem | None]:
        """Run every check of one round, stopping at the first problem."""
        local = ctx.workdir() / f"round-{round_no}"
        if local.exists():
            shutil.rmtree(local)  # a resumed step starts from what the record says
        solution_dir = local / "solution"
        write_tree(solution_dir, {"solve.sh": record.solution})
        test_timeout = self.cfg.test_timeout_s  # None: the task's own verifier timeout
        image = record.build.image or ""
        checks: list[RunCheck] = []
        before: list[RunCheck] = []
        for _ in range(self.cfg.repeats):
            with ctx.sandbox(image) as box:
                result = run_tests(box, record, local, test_timeout, read_blob=ctx.store.read_artifact)
            problem = judge_before(result, before)
            before.append(_check("before", result, result.output_tail))
            checks.append(before[-1])
            if problem is not None:
                return checks, problem
        after: list[RunCheck] = []
        for _ in range(self.cfg.repeats):
            with ctx.sandbox(image) as box:
                solution = run_solution(box, solution_dir, record.workdir, self.cfg.solution_timeout_s)
                result = None if not solution.ok else run_tests(box, record, local, test_timeout, read_blob=ctx.store.read_artifact)
            problem = judge_after(solution, result, after, previous, self.cfg.solution_timeout_s)
            after.append(_after_check(solution, result))
            checks.append(after[-1])
            if problem is not None:
                return checks, problem
        return checks, None

    # -- repairs -----------------------------------------------------------------------------

    def _repair(self, record: TaskRecord, ctx: "StageContext", problem: Problem) -> None:
        if problem.culprit == "tests":
            template = load_template(self.cfg.test_repair_prompt, "test_repair.txt")
            prompt = template.safe_substitute(self._context(record), problem=problem.summary, evidence=problem.evidence)
            record.tests = ctx.llm("test_generator").ask(prompt, with_schema(TestFiles, parse_test_files)).value
            record.models["test_generator"] = ctx.llm("test_generator").model
        else:
            record.solution = self._ask_solution(
                record, ctx, "solution_repair.txt", self.cfg.solution_repair_prompt,
                problem=problem.summary, evidence=problem.evidence,
            )
            record.models["solver"] = ctx.llm("solver").model

    def _ask_solution(self, record: TaskRecord, ctx: "StageContext", default: str, override: Path | None, **extra: str) -> str:
        prompt = load_template(override, default).safe_substitute(self._context(record), **extra)
        return ctx.llm("solver").ask(prompt, parse_solution).value

    def _context(self, record: TaskRecord) -> dict[str, str]:
        return {
            **task_context(record),
            "tests": describe_files(record.tests, per_file=64 * 1024, total=256 * 1024),
            "solution": record.solution or "(none yet)",
            "solution_timeout_s": f"{self.cfg.solution_timeout_s:g}",
        }

    def summarize(self, outputs: list[Item]) -> dict[str, Any]:
        rounds = [int(o.meta["validation_rounds"]) for o in outputs if o.meta.get("validation_rounds")]
        if not rounds:
            return {}
        repairs: dict[str, int] = {}
        for output in outputs:
            for entry in output.meta.get("validation_history", []):
                if entry.get("culprit"):
                    repairs[entry["culprit"]] = repairs.get(entry["culprit"], 0) + 1
        return {"validated": len(rounds), "rounds": {str(r): rounds.count(r) for r in sorted(set(rounds))},
                "repairs": repairs}


def _check(phase: str, result: TestRun, output: str) -> RunCheck:
    """One check as recorded: a runner's verdict (resolved, reward, reason) or a command's exit code."""
    if isinstance(result, ScoreCard):
        return RunCheck(
            phase=phase, passed=result.resolved, exit_code=-1 if result.exit_code is None else result.exit_code,
            timed_out=result.timed_out, duration_s=round(result.duration_s, 3), output_tail=tail(output),
            reward=result.reward, reason=result.reason,
        )
    return RunCheck(
        phase=phase, passed=result.exit_code == 0 and not result.timed_out, exit_code=result.exit_code,
        timed_out=result.timed_out, duration_s=round(result.duration_s, 3), output_tail=tail(output),
    )


def _after_check(solution: "CommandResult", result: TestRun | None) -> RunCheck:
    """One "after" check; when solve.sh itself failed, the check reports that failure."""
    if result is None:
        return _check("after", solution, f"[solve.sh failed; the tests were not run]\n{solution.output}")
    check = _check("after", result, f"[solve.sh: exit 0 in {solution.duration_s:.1f}s]\n{_output(result)}")
    return check.model_copy(update={"duration_s": round(solution.duration_s + result.duration_s, 3)})


@hookimpl
def register_stages() -> list[type[Stage]]:
    return [ValidateStage]
