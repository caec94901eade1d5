"""The ``tests`` (generator/judge) and ``validate`` (fail before, pass after) stages.

Parsers and the failure diagnosis are checked directly; the loops run through
the real CLI on the scripted backend (``fixture_record``/``fixture_task`` →
``tests`` → ``validate``), with real containers for validation.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import FIXTURES, read_jsonl, run_cli, write_yaml
from termigen_core.errors import ParseError
from termigen_core.records import RunCheck, TaskRecord
from termigen_core.sandbox import CommandResult
from termigen_plugins.stages.tests_stage import JudgeVerdict, parse_test_files
from termigen_plugins.stages.validate import judge_after, judge_before, parse_solution

PLUGIN = FIXTURES / "phase1_fixtures.py"
IMAGE = "termigen/python:bookworm"

GOOD_TESTS = (
    "import pathlib\n\n\n"
    "def test_count_file_holds_the_line_count():\n"
    "    path = pathlib.Path('/app/count.txt')\n"
    "    assert path.is_file(), 'count.txt is missing'\n"
    "    assert path.read_text().strip() == '3'\n"
)
PASSING_TESTS = "import pathlib\n\n\ndef test_data_exists():\n    assert pathlib.Path('/app/data.txt').is_file()\n"
NO_IMPORT_TESTS = "import no_such_module\n\n\ndef test_count():\n    assert no_such_module.count() == 3\n"
SOLUTION = "```bash\nwc -l < /app/data.txt > /app/count.txt\n```"
NEVER_ENDS = "```bash\nsleep 1000\n```"

TASK: dict[str, Any] = {
    "id": "count-lines",
    "title": "Count the lines of a data file",
    "instruction": "Write the number of lines of `/app/data.txt` to `/app/count.txt`.",
    "category": "data_processing",
    "spec": {"objective": "count lines", "success_criteria": ["/app/count.txt holds the line count"]},
    "environment": {
        "Dockerfile": f"FROM {IMAGE}\nWORKDIR /app\nCOPY data.txt /app/data.txt\n",
        "data.txt": "alpha\nbeta\ngamma\n",
    },
}
CHECKS_OK = {"objective_captured": True, "success_conditions_covered": True, "no_incidental_details": True, "deterministic": True}


# --- rules of the scripted backend -------------------------------------------------------


def generator(files: dict[str, str] | str, *, stage: str = "tests", **extra: Any) -> dict[str, Any]:
    reply = files if isinstance(files, str) else json.dumps({"files": files})
    return {"role": "test_generator", "stage": stage, "response": reply, **extra}


def judge(*verdicts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "judge", "responses": [json.dumps(v) for v in verdicts]}


APPROVE = {"verdict": "approve", "feedback": "covers the objective", "checks": CHECKS_OK}


def revise(feedback: str) -> dict[str, Any]:
    return {"verdict": "revise", "feedback": feedback, "checks": {**CHECKS_OK, "success_conditions_covered": False}}


def solver(*scripts: str, **extra: Any) -> dict[str, Any]:
    return {"role": "solver", "responses": list(scripts), **extra}


# --- running the CLI ----------------------------------------------------------------------


def run_pipeline(tmp_path: Path, rules: list[dict[str, Any]], stages: list[dict[str, Any]]) -> tuple[Any, Path]:
    write_yaml(tmp_path / "script.yaml", rules)
    config = write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "run": {"out": str(tmp_path / "run"), "concurrency": 1},
        "llm": {"default": {"backend": "scripted", "model": "scripted-test", "script": "script.yaml"}},
        "images": {"base": IMAGE},
        "stages": stages,
        "exports": [{"use": "jsonl", "with": {"path": "export/items.jsonl"}}],
    })
    result = run_cli("run", str(config), "--plugin", str(PLUGIN), timeout=600)
    if result.returncode == 5:  # honest exit code: the run produced nothing (every item rejected)
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["final_items"] == 0 and all(f["status"] == "rejected" for f in summary["failures"]), result.stderr
    else:
        assert result.returncode == 0, result.stderr
    return result, tmp_path / "run"


def final_tasks(run_dir: Path) -> list[TaskRecord]:
    return [TaskRecord.of(row["data"]) for row in read_jsonl(run_dir / "export" / "items.jsonl")]


def failures(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((run_dir / "summary.json").read_text())["failures"]


def requests(run_dir: Path, role: str, stage: str | None = None) -> list[str]:
    sql = "SELECT request FROM llm_calls WHERE role = ? AND status = 'ok'" + (" AND stage = ?" if stage else "") + " ORDER BY id"
    with sqlite3.connect(run_dir / "run.db") as db:
        rows = db.execute(sql, (role, stage) if stage else (role,)).fetchall()
    return [json.loads(r[0])["messages"][-1]["content"] for r in rows]


# --- parsers and diagnosis (no containers) ------------------------------------------------------


@pytest.mark.parametrize(
    "files, why",
    [
        ({"../evil.py": GOOD_TESTS}, "'..'"),
        ({"/tmp/test_x.py": GOOD_TESTS}, "absolute"),
        ({"test_outputs.py": "def test_x(:\n    pass\n"}, "does not compile"),
        ({"test_outputs.py": "   \n"}, "is empty"),
        ({"test_outputs.py": "x = 1\n"}, "no pytest test found"),
        ({"helpers.py": GOOD_TESTS}, "no pytest test found"),
        ({}, "at least one file"),
    ],
)
def test_unusable_test_files_are_parse_errors(files, why):
    with pytest.raises(ParseError, match=why):
        parse_test_files(json.dumps({"files": files}))


def test_a_test_suite_is_normalised_and_kept():
    parsed = parse_test_files('```json\n' + json.dumps({"files": {"./test_outputs.py": GOOD_TESTS, "data/expected.txt": "3\n"}}) + "\n```")
    assert parsed == {"test_outputs.py": GOOD_TESTS, "data/expected.txt": "3\n"}


def test_solution_parsing():
    assert parse_solution(SOLUTION) == "#!/bin/bash\nwc -l < /app/data.txt > /app/count.txt\n"
    for bad, why in [("wc -l data.txt", "fenced block"), ("```bash\n# nothing\n```", "empty"), ("```bash\nif then\n```", "syntax")]:
        with pytest.raises(ParseError, match=why):
            parse_solution(bad)


def test_an_approval_contradicted_by_the_judges_own_checks_is_not_one():
    assert JudgeVerdict.model_validate(APPROVE).approved
    assert JudgeVerdict.model_validate({"verdict": "Approve"}).approved
    assert not JudgeVerdict.model_validate({**APPROVE, "checks": {**CHECKS_OK, "deterministic": False}}).approved


def _result(exit_code: int, output: str = "", timed_out: bool = False) -> CommandResult:
    return CommandResult("cmd", exit_code, output, 0.1, timed_out=timed_out)


def _check(phase: str, passed: bool) -> RunCheck:
    return RunCheck(phase=phase, passed=passed, exit_code=0 if passed else 1)


def test_diagnosis_routes_each_failure_to_whoever_can_fix_it():
    assert judge_before(_result(1), []) is None
    assert judge_before(_result(0), []).code == "tests_pass_before"
    assert judge_before(_result(0), [_check("before", False)]).code == "flaky"
    assert judge_before(_result(2, "ModuleNotFoundError"), []).code == "tests_error"
    assert judge_before(_result(5, "no tests ran"), []).culprit == "tests"
    assert judge_before(_result(137, "", timed_out=True), []).code == "tests_timeout"
    assert judge_before(_result(1, "/usr/bin/python3: No module named pytest"), []).culprit == "environment"

    ok = _result(0)
    assert judge_after(ok, _result(0), [], None, 60) is None
    timeout = judge_after(_result(137, "", timed_out=True), None, [], None, 60)
    assert (timeout.code, timeout.culprit) == ("solution_timeout", "solution") and "timeout" in timeout.summary
    assert judge_after(_result(3, "boom"), None, [], None, 60).code == "solution_error"
    first = judge_after(ok, _result(1), [], None, 60)
    assert (first.code, first.culprit) == ("tests_fail_after", "solution")
    assert judge_after(ok, _result(1), [], first, 60).culprit == "tests"  # the solver already had its turn
    assert judge_after(ok, _result(1), [_check("after", True)], None, 60).code == "flaky"
    assert judge_after(ok, _result(4), [], None, 60).code == "tests_error"


# --- the tests stage through the CLI (no containers) ------------------------------------------


def run_tests_stage(tmp_path: Path, rules: list[dict[str, Any]], **options: Any) -> Path:
    stages = [{"use": "fixture_record", "with": {"record": TASK}}, {"use": "tests", "with": options}]
    return run_pipeline(tmp_path, rules, stages)[1]


def test_judge_approves_at_once(tmp_path):
    run_dir = run_tests_stage(tmp_path, [generator({"test_outputs.py": GOOD_TESTS}), judge(APPROVE)])
    (task,) = final_tasks(run_dir)
    assert task.tests == {"test_outputs.py": GOOD_TESTS}
    assert [(r.round, r.verdict) for r in task.test_reviews] == [(1, "approve")]
    assert task.test_reviews[0].scores == {k: 1 for k in CHECKS_OK}
    assert task.models == {"test_generator": "scripted-test", "judge": "scripted-test"}
    (judged,) = requests(run_dir, "judge")
    assert "Count the lines of a data file" in judged and "test_count_file_holds_the_line_count" in judged


def test_a_prompt_template_can_be_replaced_from_the_config(tmp_path):
    (tmp_path / "my_judge.txt").write_text("House judge rules for ${title}:\n${tests}\n", encoding="utf-8")
    rules = [generator({"test_outputs.py": GOOD_TESTS}), {**judge(APPROVE), "match": "^House judge rules for Count"}]
    run_dir = run_tests_stage(tmp_path, rules, judge_prompt="my_judge.txt")
    assert final_tasks(run_dir)[0].test_reviews[0].verdict == "approve"


def test_judge_feedback_goes_back_to_the_generator(tmp_path):
    rules = [
        generator({"test_outputs.py": GOOD_TESTS}, match="asked for changes"),
        generator({"test_outputs.py": PASSING_TESTS}),
        judge(revise("check the content of /app/count.txt, not data.txt"), APPROVE),
    ]
    run_dir = run_tests_stage(tmp_path, rules)
    (task,) = final_tasks(run_dir)
    assert task.tests == {"test_outputs.py": GOOD_TESTS}
    assert [(r.round, r.verdict) for r in task.test_reviews] == [(1, "revise"), (2, "approve")]
    first, second = requests(run_dir, "test_generator")
    assert "asked for changes" not in first
    assert "check the content of /app/count.txt" in second and "test_data_exists" in second
    assert json.loads((run_dir / "summary.json").read_text())["stages"][1]["details"]["judge_rounds"] == {"2": 1}


def test_tests_never_approved_are_rejected_with_the_last_feedback(tmp_path):
    rules = [generator({"test_outputs.py": PASSING_TESTS}), judge(revise("round one"), revise("still only checks data.txt"))]
    run_dir = run_tests_stage(tmp_path, rules, max_rounds=2)
    assert final_tasks(run_dir) == []
    (failure,) = failures(run_dir)
    assert failure["status"] == "rejected" and failure["stage"] == "tests"
    assert failure["reason"] == "tests not approved by the judge after 2 rounds: still only checks data.txt"


def test_a_test_file_that_does_not_compile_is_sent_back_with_the_error(tmp_path):
    rules = [
        generator({"test_outputs.py": GOOD_TESTS}, match="could not be used"),
        generator({"test_outputs.py": "def test_count(:\n    assert True\n"}),
        judge(APPROVE),
    ]
    run_dir = run_tests_stage(tmp_path, rules)
    (task,) = final_tasks(run_dir)
    assert task.tests == {"test_outputs.py": GOOD_TESTS}
    retry = requests(run_dir, "test_generator")[-1]
    assert retry.startswith("Your reply could not be used") and "test_outputs.py does not compile" in retry


def test_a_generator_that_never_answers_usably_rejects_the_task_with_the_parse_error(tmp_path):
    run_dir = run_tests_stage(tmp_path, [generator({"../escape.py": GOOD_TESTS}), judge(APPROVE)])
    assert final_tasks(run_dir) == []
    (failure,) = failures(run_dir)
    assert failure["status"] == "rejected"
    assert failure["reason"].startswith("test_generator: reply still malformed after 3 attempts: unusable test file path")
    assert "'..' would leave the task directory" in failure["reason"]


# --- validation on real containers -------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        client.images.get(IMAGE)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Docker engine with {IMAGE} ({exc}); run scripts/setup-engine.sh and `termigen images bootstrap`")
    yield client
    client.close()


@pytest.fixture
def task_tag(engine: Any) -> Iterator[str]:
    """A tag unique to one test, removed afterwards (the image goes with its last tag)."""
    tag = f"termigen-test/validate-{uuid.uuid4().hex[:10]}:latest"
    yield tag
    try:
        engine.images.remove(tag, noprune=False)
    except Exception:  # noqa: BLE001 - never built (e.g. the run failed early)
        pass


def validate_run(tmp_path: Path, tag: str, rules: list[dict[str, Any]], **options: Any) -> Path:
    stages = [
        {"use": "fixture_task", "with": {"record": TASK, "tag": tag}},
        {"use": "tests"},
        {"use": "validate", "with": {"test_timeout_s": 60, "solution_timeout_s": 60, **options}},
    ]
    return run_pipeline(tmp_path, [judge(APPROVE), *rules], stages)[1]


def phases(task: TaskRecord) -> list[tuple[str, bool]]:
    return [(c.phase, c.passed) for c in task.validation.checks]


FAIL_THEN_PASS = [("before", False), ("before", False), ("after", True), ("after", True)]


@pytest.mark.docker
def test_validation_fails_before_and_passes_after_twice_each(tmp_path, task_tag):
    run_dir = validate_run(tmp_path, task_tag, [generator({"test_outputs.py": GOOD_TESTS}), solver(SOLUTION)])
    (task,) = final_tasks(run_dir)
    assert task.validation.passed and task.validation.rounds == 1
    assert phases(task) == FAIL_THEN_PASS
    before, after = task.validation.checks[0], task.validation.checks[-1]
    assert before.exit_code == 1 and "count.txt is missing" in before.output_tail
    assert after.exit_code == 0 and "1 passed" in after.output_tail
    assert all(len(c.output_tail) <= 4096 for c in task.validation.checks)
    assert task.solution == "#!/bin/bash\nwc -l < /app/data.txt > /app/count.txt\n"
    assert task.models["solver"] == "scripted-test"
    (solver_prompt,) = requests(run_dir, "solver")
    assert "data.txt" in solver_prompt and "test_count_file_holds_the_line_count" in solver_prompt


@pytest.mark.docker
def test_tests_passing_on_the_untouched_environment_are_repaired(tmp_path, task_tag):
    rules = [
        generator({"test_outputs.py": GOOD_TESTS}, stage="validate", match="found a problem with the tests"),
        generator({"test_outputs.py": PASSING_TESTS}),
        solver(SOLUTION),
    ]
    run_dir = validate_run(tmp_path, task_tag, rules)
    (task,) = final_tasks(run_dir)
    assert task.validation.passed and task.validation.rounds == 2
    assert phases(task) == FAIL_THEN_PASS and task.tests == {"test_outputs.py": GOOD_TESTS}
    (repair,) = requests(run_dir, "test_generator", "validate")
    assert "pass on the untouched environment" in repair and "1 passed" in repair and "test_data_exists" in repair
    history = read_jsonl(run_dir / "export" / "items.jsonl")[0]["meta"]["validation_history"]
    assert history[0]["problem"] == "tests_pass_before" and len(history[0]["checks"]) == 1


@pytest.mark.docker
def test_a_test_file_that_does_not_import_is_repaired(tmp_path, task_tag):
    rules = [
        generator({"test_outputs.py": GOOD_TESTS}, stage="validate", match="found a problem with the tests"),
        generator({"test_outputs.py": NO_IMPORT_TESTS}),
        solver(SOLUTION),
    ]
    run_dir = validate_run(tmp_path, task_tag, rules)
    (task,) = final_tasks(run_dir)
    assert task.validation.passed and task.validation.rounds == 2
    (repair,) = requests(run_dir, "test_generator", "validate")
    assert "could not run on the untouched environment (pytest exit code 2" in repair
    assert "No module named 'no_such_module'" in repair


@pytest.mark.docker
def test_a_solution_that_never_finishes_is_rejected_for_its_timeout_in_bounded_time(tmp_path, task_tag):
    rules = [generator({"test_outputs.py": GOOD_TESTS}), solver(NEVER_ENDS)]
    started = time.monotonic()
    run_dir = validate_run(tmp_path, task_tag, rules, max_rounds=2, solution_timeout_s=3)
    assert time.monotonic() - started < 120
    assert final_tasks(run_dir) == []
    (failure,) = failures(run_dir)
    assert failure["stage"] == "validate" and failure["status"] == "rejected"
    assert failure["reason"] == "validation failed after 2 round(s): solve.sh did not finish within 3s (timeout)"
    repair = requests(run_dir, "solver")[-1]
    assert "found a problem with the reference solution" in repair and "sleep 1000" in repair
    with sqlite3.connect(run_dir / "run.db") as db:
        (detail,) = db.execute("SELECT detail FROM stage_runs WHERE stage_name = 'validate'").fetchone()
    validation = json.loads(detail)["validation"]
    assert validation["passed"] is False and validation["checks"][-1]["timed_out"] is True


@pytest.mark.docker
def test_a_solution_that_never_finishes_is_repaired_by_the_solver(tmp_path, task_tag):
    rules = [generator({"test_outputs.py": GOOD_TESTS}), solver(NEVER_ENDS, SOLUTION)]
    run_dir = validate_run(tmp_path, task_tag, rules, solution_timeout_s=3)
    (task,) = final_tasks(run_dir)
    assert task.validation.passed and task.validation.rounds == 2 and phases(task) == FAIL_THEN_PASS
    assert "sleep" not in task.solution
