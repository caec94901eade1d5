"""The ``audit`` stage: does a built task's test suite check anything, and does its solution pass?

For each task (after ``build``), in fresh containers of its image:

- ``repeats`` **no-op** runs: the tests on the untouched environment. They must
  NOT pass; tests that pass with nothing done check nothing.
- when the task ships a ``solve.sh``, ``repeats`` **oracle** runs: the solution
  (run as ``validate`` runs it, :func:`termigen_plugins.agent.oracle.run_solution`),
  then the tests. They must pass.

The tests are run only through :func:`termigen_plugins.agent.scoring.run_tests`,
so "pass" means what it means when a trajectory is scored. Repeating each phase
shows flaky tests (mixed results). The lint verifiers run too; their findings
are reported next to the verdict, never used to drop the task.

An audit reports, it does not filter: the verdict is written on the item
(``meta["audit"]`` and ``record.validation``) and every task reaches the end of
the pipeline. Verdicts this stage gives (the others, ``build_failed``,
``import_failed``, ``infra_error``, ``error`` and ``pending``, are read from the
run store by :mod:`termigen_plugins.audit.report`: the task never finished this stage):

======================  =============================================================
``valid``               no-op runs all fail, oracle runs all pass
``no_solution``         no-op runs all fail, no ``solve.sh``: valid as far as can be
                        told, but unproven (a note, not a gate failure by default)
``tests_pass_untouched`` every no-op run passed: the tests do not check the objective
                        (the oracle is not run: the task is invalid whatever it does)
``solution_fails``      no-op runs fail, and every oracle run fails (``solve.sh`` fails,
                        times out, or the tests fail after it)
``flaky``               mixed results across the repeats of one phase
======================  =============================================================
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, ComponentRef, Stage, ref_field
from termigen_core.items import Item
from termigen_core.records import RunCheck, TaskRecord, Validation
from termigen_core.safepaths import write_tree
from termigen_plugins.agent.oracle import run_solution
from termigen_plugins.agent.scoring import run_tests

if TYPE_CHECKING:
    from termigen_core.context import StageContext

VALID = "valid"
NO_SOLUTION = "no_solution"
TESTS_PASS_UNTOUCHED = "tests_pass_untouched"
SOLUTION_FAILS = "solution_fails"
FLAKY = "flaky"
BUILD_FAILED = "build_failed"
INFRA_ERROR = "infra_error"
IMPORT_FAILED = "import_failed"
ERROR = "error"
PENDING = "pending"
#: Every verdict, in the order reports list them, with what it means.
VERDICTS: dict[str, str] = {
    VALID: "the tests fail on the untouched environment and pass after the solution, every time",
    NO_SOLUTION: "the tests fail on the untouched environment; no solve.sh ships, so solvability is unproven",
    TESTS_PASS_UNTOUCHED: "the tests pass on the untouched environment: they check nothing",
    SOLUTION_FAILS: "the shipped solution never makes the tests pass",
    FLAKY: "mixed results across repeats of the same run",
    BUILD_FAILED: "the environment does not build (or the task could not be imported)",
    INFRA_ERROR: "the container engine or the machine failed; not a verdict on the task (re-run to resume)",
    # given by the report only (:mod:`termigen_plugins.audit.report`): these tasks never finish this stage
    IMPORT_FAILED: "the task folder could not be imported (the reason names the file)",
    ERROR: "the audit step itself failed on this task (the reason says why)",
    PENDING: "not finished: the audit was stopped; re-run the same command to resume",
}
#: Output kept per run in the evidence.
TAIL_CHARS = 2000


def clip(text: str, limit: int = TAIL_CHARS) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def decide(noop: list[bool], oracle: list[bool], has_solution: bool) -> str:
    """The verdict from which runs passed (pure: the table in the module docstring)."""
    if noop and all(noop):
        return TESTS_PASS_UNTOUCHED
    if any(noop):
        return FLAKY
    if not has_solution:
        return NO_SOLUTION
    if all(oracle):
        return VALID
    return FLAKY if any(oracle) else SOLUTION_FAILS


class TaskSetsConfig(ComponentConfig):
    paths: list[Path] = Field(min_length=1, description="folders of Harbor/TB1 task folders, or task folders")
    importer: dict[str, Any] = Field(
        default_factory=dict, description="options of import_tasks (format, limits, ...) applied to each path"
    )

    @model_validator(mode="after")
    def _importer_options(self) -> "TaskSetsConfig":
        from termigen_plugins.seed_sources.task_import import TaskImportConfig

        TaskImportConfig.model_validate({**self.importer, "path": "."})  # checked now, not at run time
        return self


class TaskSetsStage(Stage):
    """Source stage: ``import_tasks`` over several paths, as one set of ``task`` items.

    ``termigen audit PATH...`` takes several task sets; one source stage per
    path is not possible (a pipeline has one source), so this one runs the
    ``import_tasks`` stage over each path in turn. A task id seen under an
    earlier path is suffixed with the path's position (``name@2``) rather than dropped.
    """

    name = "import_task_sets"
    description = "Like import_tasks, over several paths (what `termigen audit PATH...` starts with)."
    Config = TaskSetsConfig
    source = True
    produces = ("task",)
    config: TaskSetsConfig

    def produce(self, ctx: "StageContext") -> list[Item]:
        from termigen_plugins.seed_sources.task_import import ImportTasksStage, TaskImportConfig

        items: list[Item] = []
        seen: set[str] = set()
        for position, path in enumerate(self.config.paths, start=1):
            importer = ImportTasksStage(TaskImportConfig.model_validate({**self.config.importer, "path": path}))
            for item in importer.produce(ctx):
                if item.id in seen:
                    record = item.task().model_copy(update={"id": f"{item.id}@{position}"})
                    item = item.with_task(record).model_copy(update={"id": record.id})
                seen.add(item.id)
                items.append(item)
        return items


class AuditConfig(ComponentConfig):
    repeats: int = Field(default=2, ge=1, le=10, description="runs of each phase (no-op, oracle), each in a fresh container")
    test_timeout_s: float | None = Field(default=None, gt=0, description="limit of one test run (default: the task's)")
    solution_timeout_s: float | None = Field(
        default=None, gt=0, description="limit of one solve.sh run (default: the task's agent timeout)"
    )
    verifiers: list[ComponentRef] = ref_field(
        "verifier", default=["lint"], description="verifiers whose findings are reported (never used to drop a task); [] for none"
    )


class AuditStage(Stage):
    """No-op and oracle runs, repeated, with a verdict recorded on every task."""

    name = "audit"
    description = "Tests must fail untouched and pass after solve.sh, `repeats` times each; records a verdict, drops nothing."
    Config = AuditConfig
    accepts = ("task",)
    produces = ("task",)
    uses_executor = True
    uses_task_image = True

    config: AuditConfig

    def process(self, item: Item, ctx: "StageContext") -> Item:
        record = item.task()
        record.require_image(self.name)
        findings = self._lint(item, ctx)
        scratch = ctx.workdir()
        if scratch.exists():
            shutil.rmtree(scratch)  # a resumed step starts clean
        scratch.mkdir(parents=True)
        runs: list[dict[str, Any]] = []
        for repeat in range(1, self.config.repeats + 1):
            runs.append(self._noop(record, ctx, scratch / f"noop-{repeat}", repeat))
        noop = [r["passed"] for r in runs]
        oracle: list[bool] = []
        has_solution = bool(record.solution.strip())
        if has_solution and not all(noop):
            write_tree(scratch / "solution", {"solve.sh": record.solution})
            for repeat in range(1, self.config.repeats + 1):
                runs.append(self._oracle(record, ctx, scratch, repeat))
                oracle.append(runs[-1]["passed"])
        verdict = decide(noop, oracle, has_solution)
        audit = {
            "verdict": verdict,
            "summary": VERDICTS[verdict],
            "has_solution": has_solution,
            "noop_passed": sum(noop), "noop_runs": len(noop),
            "oracle_passed": sum(oracle), "oracle_runs": len(oracle),
            "lint_errors": sum(1 for f in findings if f["severity"] == "error"),
            "lint_warnings": sum(1 for f in findings if f["severity"] != "error"),
            "lint": findings,
            "runs": runs,
        }
        ctx.log("audit: %s", verdict)
        validation = Validation(
            passed=verdict == VALID, rounds=1, reason=f"audit: {verdict}: {VERDICTS[verdict]}",
            checks=[_check(r) for r in runs],
        )
        updated = record.model_copy(update={"validation": validation, "lint": findings})
        return item.with_task(updated, audit=audit)

    def _lint(self, item: Item, ctx: "StageContext") -> list[dict[str, str]]:
        found: list[dict[str, str]] = []
        for ref, verifier in zip(self.config.verifiers, ctx.components(self.config.verifiers)):
            for f in verifier.verify(item, ctx):  # type: ignore[attr-defined]
                found.append({"verifier": ref.use, "severity": f.severity, "message": f.message, "path": f.path})
        return found

    def _noop(self, record: TaskRecord, ctx: "StageContext", scratch: Any, repeat: int) -> dict[str, Any]:
        started = time.monotonic()
        with ctx.sandbox(record.build.image or "") as box:
            card = run_tests(box, record, scratch, self.config.test_timeout_s, read_blob=ctx.store.read_artifact)
        return {"phase": "noop", "repeat": repeat, **_card(card), "duration_s": round(time.monotonic() - started, 3)}

    def _oracle(self, record: TaskRecord, ctx: "StageContext", scratch: Any, repeat: int) -> dict[str, Any]:
        timeout = self.config.solution_timeout_s or float(record.agent_timeout_s)
        started = time.monotonic()
        with ctx.sandbox(record.build.image or "") as box:
            solution = run_solution(box, scratch / "solution", record.workdir, timeout)
            card = run_tests(box, record, scratch / f"oracle-{repeat}", self.config.test_timeout_s, read_blob=ctx.store.read_artifact) if solution.ok else None
        run: dict[str, Any] = {
            "phase": "oracle", "repeat": repeat,
            "solution_exit_code": solution.exit_code, "solution_timed_out": solution.timed_out,
            "solution_duration_s": round(solution.duration_s, 3),
        }
        if card is None:
            why = "timed out" if solution.timed_out else f"exited with code {solution.exit_code}"
            run.update(passed=False, tests_passed=0, tests_total=0, reward=None, exit_code=None, timed_out=solution.timed_out,
                       reason=f"solve.sh {why}; the tests were not run", output_tail=clip(solution.output))
        else:
            run.update(_card(card))
        run["duration_s"] = round(time.monotonic() - started, 3)
        return run

    def summarize(self, outputs: list[Item]) -> dict[str, Any]:
        verdicts: dict[str, int] = {}
        for output in outputs:
            verdict = output.meta.get("audit", {}).get("verdict")
            if verdict:
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
        return {"verdicts": verdicts} if verdicts else {}


def _card(card: Any) -> dict[str, Any]:
    """A ScoreCard as evidence; ``reward``/``reason`` only exist where the scorer knows Harbor's reward file."""
    return {
        "passed": bool(card.resolved), "tests_passed": card.passed, "tests_total": card.total,
        "reward": getattr(card, "reward", None), "reason": getattr(card, "reason", "") or "",
        "exit_code": card.exit_code, "timed_out": card.timed_out, "output_tail": clip(card.output_tail),
    }


def _check(run: dict[str, Any]) -> RunCheck:
    return RunCheck(
        phase="before" if run["phase"] == "noop" else "after", passed=run["passed"],
        exit_code=run["exit_code"] if run["exit_code"] is not None else -1, timed_out=bool(run["timed_out"]),
        duration_s=run["duration_s"], output_tail=run["output_tail"],
    )


@hookimpl
def register_stages() -> list[type[Stage]]:
    return [TaskSetsStage, AuditStage]
