"""The task record: what Phase I stages build up and exporters and Phase II read.

A task travels as ``item.data["task"]`` (a :class:`TaskRecord` dumped to JSON)
from the stage that first writes files to the exporters, each stage filling in
its part. Keeping it one typed record, rather than loose keys per stage, is what
lets third-party stages and exporters interoperate, and keeps the metadata true:
category, tier, seed, difficulty, build attempts and validation results are
recorded by the stage that knows them, never guessed by an exporter.

Layout of a task (the same in the run and in every export):

- ``environment``: the Docker build context; ``Dockerfile`` at its root.
  Inside the container the agent works in ``workdir`` (``/app``).
- ``tests``: pytest files, copied to ``/tests`` only when the task is verified
  (never baked into the image).
- ``solution``: ``solve.sh``, the reference solution, run from ``workdir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Where tests are copied inside the container when a task is verified.
TESTS_DIR = "/tests"
#: How the tests are run, from the task's working directory.
PYTEST_COMMAND = f"python3 -m pytest -q -p no:cacheprovider -rA {TESTS_DIR}"


def verification_command(workdir: str = "/app") -> str:
    """The command that verifies a task in its container (exit 0 = pass), from ``workdir``.

    Imported tasks work in other directories (``/workspace``, ``/home/user``), so
    the directory is the task's, never assumed.
    """
    import shlex

    return f"cd {shlex.quote(workdir)} && {PYTEST_COMMAND}"



class BuildInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    attempts: int = 0
    errors: list[str] = Field(default_factory=list, description="concise build error per failed attempt")
    cached: bool = False
    context_hash: str | None = None


class Review(BaseModel):
    """One round of a generator/judge (or proposer/evaluator) loop."""

    model_config = ConfigDict(extra="forbid")

    round: int
    verdict: str
    feedback: str = ""
    scores: dict[str, int] = Field(default_factory=dict)


class RunCheck(BaseModel):
    """One execution of the tests in a fresh container."""

    model_config = ConfigDict(extra="forbid")

    phase: str  # "before" (untouched environment) | "after" (after the reference solution)
    passed: bool
    exit_code: int
    timed_out: bool = False
    duration_s: float = 0.0
    output_tail: str = ""


class Validation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    passed: bool = False
    rounds: int = 0
    checks: list[RunCheck] = Field(default_factory=list)
    reason: str = ""


class TaskRecord(BaseModel):
    """A generated (or imported) terminal task."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    instruction: str = Field(description="what the agent is asked to do (markdown)")
    category: str
    category_name: str = ""
    tier: int | None = None
    seed: str = ""
    difficulty: str = "medium"
    spec: dict[str, Any] = Field(default_factory=dict)
    workdir: str = "/app"
    environment: dict[str, str] = Field(default_factory=dict, description="build context files, path → text")
    tests: dict[str, str] = Field(default_factory=dict, description="pytest files, path → text")
    solution: str = Field(default="", description="solve.sh")
    build: BuildInfo = Field(default_factory=BuildInfo)
    test_reviews: list[Review] = Field(default_factory=list)
    validation: Validation = Field(default_factory=Validation)
    lint: list[dict[str, str]] = Field(default_factory=list, description="verifier findings")
    models: dict[str, str] = Field(default_factory=dict, description="role → model that wrote this task")
    agent_timeout_s: int = 900
    test_timeout_s: int = 180

    @classmethod
    def of(cls, item_data: dict[str, Any]) -> "TaskRecord":
        return cls.model_validate(item_data["task"])


def materialize(record: TaskRecord, root: Path, *, with_solution: bool = True) -> dict[str, Path]:
    """Write a task's folders under ``root`` (confined, capped); return their paths.

    ``environment/`` (the build context), ``tests/`` and ``solution/solve.sh``.
    """

    from .safepaths import write_tree

    root = Path(root)
    dirs = {"environment": root / "environment", "tests": root / "tests", "solution": root / "solution"}
    write_tree(dirs["environment"], record.environment)
    if record.tests:
        write_tree(dirs["tests"], record.tests)
    if with_solution and record.solution:
        write_tree(dirs["solution"], {"solve.sh": record.solution})
        (dirs["solution"] / "solve.sh").chmod(0o755)
    return dirs


# --- Phase II -------------------------------------------------------------------


class CriticVerdict(BaseModel):
    """The critic's judgement of one candidate step."""

    model_config = ConfigDict(extra="forbid")

    accepted: bool
    feedback: str = ""


class Step(BaseModel):
    """One agent turn: reasoning, then one action, then what the environment said.

    ``intent`` and ``error_mode`` are the generator's private labels: they are
    recorded for analysis and training weights, never in the assistant text.
    """

    model_config = ConfigDict(extra="forbid")

    index: int
    intent: str = "correct"  # correct | error
    error_mode: str | None = None
    thought: str = ""
    action: str = "bash"  # bash | finish
    command: str | None = None
    output: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    duration_s: float = 0.0
    critic: list[CriticVerdict] = Field(default_factory=list)
    regenerations: int = 0
    recovers_from: int | None = Field(default=None, description="index of the error step this step diagnoses")
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TrajectoryRecord(BaseModel):
    """One episode of the agent on one task, scored by the task's tests."""

    model_config = ConfigDict(extra="forbid")

    id: str
    task_id: str
    run_id: str = ""
    model: str = ""
    seed: int = 0
    agent_format: str = "tool_calls"  # tool_calls | hermes
    system_prompt: str = ""
    instruction: str = ""
    tools: list[dict[str, Any]] = Field(default_factory=list, description="tool schema (OpenAI function format)")
    steps: list[Step] = Field(default_factory=list)
    finished: bool = False
    resolved: bool = False
    pass_ratio: float = 0.0
    tests_passed: int = 0
    tests_total: int = 0
    test_output_tail: str = ""
    tools_used: list[str] = Field(default_factory=list, description="unique command-line tools the agent ran")
    stats: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, item_data: dict[str, Any]) -> "TrajectoryRecord":
        return cls.model_validate(item_data["trajectory"])
