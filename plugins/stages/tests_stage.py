"""The ``tests`` stage: a test generator writes pytest tests, a judge reviews them.

Paper §3.2 (Generator-Judge): tests decide an agent's success and later its
reward, so a second model checks that they capture the objective, cover every
success condition, do not rely on incidental details of one solution and are
deterministic. The judge's feedback goes back to the generator until it
approves or ``max_rounds`` is spent; a task whose tests are never approved is
rejected with the judge's last feedback. Every round is kept as a
:class:`~termigen_core.records.Review`.

The helpers here (test-file parsing, prompt context) are shared with the
``validate`` stage, which asks the same generator to repair tests.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from termigen_core import hookimpl, pysource
from termigen_core.components import ComponentConfig, Stage
from termigen_core.errors import ParseError, Reject
from termigen_core.items import Item
from termigen_core.llm import json_model, parse_json, with_schema
from termigen_core.records import TESTS_DIR, Review, TaskRecord, verification_command
from termigen_core.safepaths import Limits, UnsafePath, check_tree

from .synthesize import load_template

if TYPE_CHECKING:
    from termigen_core.context import StageContext

PROMPTS = Path(__file__).parent / "prompts"
T = TypeVar("T")

#: Caps on a model-written test suite: tests are small; a huge reply is a runaway.
TEST_LIMITS = Limits(max_files=16, max_file_bytes=256 * 1024, max_total_bytes=1024 * 1024)

#: How much of the environment a prompt quotes (per file, in total).
ENV_FILE_CHARS = 4000
ENV_TOTAL_CHARS = 24000


# --- shared helpers --------------------------------------------------------------------


class TestFiles(BaseModel):
    """The shape of a test generator's reply (sent as its JSON Schema where the backend can)."""

    __test__ = False  # not a pytest class
    files: dict[str, str]


def parse_test_files(text: str) -> dict[str, str]:
    """Parse ``{"files": {path: source}}`` into a confined, compilable pytest suite.

    Every problem is a :class:`ParseError`, so the model sees it and answers
    again: a path leaving the tests folder, an empty or truncated file, a
    Python file that does not compile, or a suite with no test at all.
    """
    data = parse_json(text)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files:
        raise ParseError('expected {"files": {"test_outputs.py": "..."}} with at least one file')
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ParseError("every file path and content must be a string")
    try:
        checked = check_tree(files, TEST_LIMITS)
    except UnsafePath as exc:
        raise ParseError(f"unusable test file path: {exc}") from exc
    found_test = False
    for path, source in checked.items():
        if not source.strip():
            raise ParseError(f"{path} is empty")
        if not path.endswith(".py"):
            continue
        try:
            tree = pysource.parse(source, filename=path)
            pysource.compile_module(tree, path)
        except SyntaxError as exc:
            raise ParseError(f"{path} does not compile: {exc.msg} (line {exc.lineno})") from exc
        if _is_test_module(path) and _has_test(tree):
            found_test = True
    if not found_test:
        raise ParseError(
            "no pytest test found: write a file named test_*.py with at least one function named test_*"
        )
    return checked


def _is_test_module(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith("test_") or name.endswith("_test.py")


def _has_test(tree: ast.Module) -> bool:
    """True if pytest would collect something: a ``test*`` function or a ``Test*`` class method."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            return True
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test") for n in node.body):
                return True
    return False


def describe_files(files: dict[str, str], *, per_file: int = ENV_FILE_CHARS, total: int = ENV_TOTAL_CHARS) -> str:
    """Files as a prompt section: each path with its size and (capped) contents."""
    if not files:
        return "(none)"
    parts: list[str] = []
    used = 0
    for path in sorted(files):
        text = files[path]
        header = f"--- {path} ({len(text.encode('utf-8', 'replace'))} bytes)"
        if used >= total:
            parts.append(header + " [contents not shown]")
            continue
        shown = text[: min(per_file, total - used)]
        used += len(shown)
        more = "" if len(shown) == len(text) else f"\n[... {len(text) - len(shown)} more characters ...]"
        parts.append(f"{header}\n{shown}{more}")
    return "\n".join(parts)


def task_context(record: TaskRecord) -> dict[str, str]:
    """The template variables every test/solution prompt shares."""
    return {
        "title": record.title,
        "instruction": record.instruction,
        "spec": json.dumps(record.spec, indent=2, ensure_ascii=False) if record.spec else "(none)",
        "environment": describe_files(record.environment),
        "workdir": record.workdir,
        "tests_dir": TESTS_DIR,
        "test_command": verification_command(record.workdir),
    }


def with_task(item: Item, record: TaskRecord, **meta: Any) -> Item:
    """The item carrying the updated record (and extra ``meta``)."""
    return item.with_task(record, **meta)


# --- the judge's answer ------------------------------------------------------------------


class JudgeChecks(BaseModel):
    """The four properties the paper's judge verifies; ``None`` means not stated."""

    model_config = ConfigDict(extra="ignore")

    objective_captured: bool | None = None
    success_conditions_covered: bool | None = None
    no_incidental_details: bool | None = None
    deterministic: bool | None = None

    def failed(self) -> list[str]:
        return [name for name, value in self.model_dump().items() if value is False]


class JudgeVerdict(BaseModel):
    model_config = ConfigDict(extra="ignore")

    verdict: Literal["approve", "revise"]
    feedback: str = ""
    checks: JudgeChecks = Field(default_factory=JudgeChecks)

    @field_validator("verdict", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def approved(self) -> bool:
        """An approval contradicted by the judge's own checks is not one."""
        return self.verdict == "approve" and not self.checks.failed()


# --- the stage ---------------------------------------------------------------------------


class TestsConfig(ComponentConfig):
    max_rounds: int = Field(default=3, ge=1, le=20, description="generator/judge rounds before a task is rejected")
    test_generator_prompt: Path | None = Field(default=None, description="template replacing prompts/test_generator.txt")
    judge_prompt: Path | None = Field(default=None, description="template replacing prompts/judge.txt")


class TestsStage(Stage):
    """Generator-Judge loop for a task's pytest tests."""

    __test__ = False  # not a pytest class, whatever its name
    name = "tests"
    description = "Pytest tests from a generator, reviewed by a judge until approved (paper §3.2)."
    Config = TestsConfig
    accepts = ("task",)
    produces = ("task",)
    roles = ("test_generator", "judge")

    def process(self, item: Item, ctx: "StageContext") -> Item:
        config: TestsConfig = self.config  # type: ignore[assignment]
        generator_t = load_template(config.test_generator_prompt, "test_generator.txt")
        judge_t = load_template(config.judge_prompt, "judge.txt")
        record = item.task()
        context = task_context(record)
        reviews: list[Review] = []
        feedback = ""
        for round_no in range(1, config.max_rounds + 1):
            files = ctx.llm("test_generator").ask(
                generator_t.safe_substitute(context, feedback=feedback), with_schema(TestFiles, parse_test_files)
            ).value
            tests_text = describe_files(files, per_file=64 * 1024, total=256 * 1024)
            verdict = ctx.llm("judge").ask(judge_t.safe_substitute(context, tests=tests_text), json_model(JudgeVerdict)).value
            review = _review(round_no, verdict)
            reviews.append(review)
            if verdict.approved:
                record.tests = files
                record.test_reviews = reviews
                record.models.update(
                    test_generator=ctx.llm("test_generator").model, judge=ctx.llm("judge").model
                )
                return with_task(item, record, test_rounds=round_no)
            feedback = (
                f"\nA reviewer asked for changes to your previous tests:\n{review.feedback}\n"
                f"Your previous tests:\n{tests_text}\nWrite the complete revised set of test files.\n"
            )
        raise Reject(
            f"tests not approved by the judge after {config.max_rounds} rounds: {reviews[-1].feedback}",
            {"test_reviews": [r.model_dump() for r in reviews]},
        )

    def summarize(self, outputs: list[Item]) -> dict[str, Any]:
        rounds = [int(o.meta.get("test_rounds", 0)) for o in outputs if o.meta.get("test_rounds")]
        if not rounds:
            return {}
        return {"approved": len(rounds), "judge_rounds": {str(r): rounds.count(r) for r in sorted(set(rounds))}}


def _review(round_no: int, verdict: JudgeVerdict) -> Review:
    """A round as recorded: the effective verdict, with any self-contradiction spelled out."""
    feedback = verdict.feedback.strip() or "(no feedback given)"
    failed = verdict.checks.failed()
    if verdict.verdict == "approve" and failed:
        feedback += f" [approval overruled: the judge's own checks failed: {', '.join(failed)}]"
    scores = {k: int(v) for k, v in verdict.checks.model_dump().items() if v is not None}
    return Review(round=round_no, verdict="approve" if verdict.approved else "revise", feedback=feedback, scores=scores)


@hookimpl
def register_stages() -> list[type[Stage]]:
    return [TestsStage]
