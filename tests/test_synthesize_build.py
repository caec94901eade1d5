"""synthesize → build → verify, through the real CLI, the scripted backend and a real Docker engine.

One run drives eight seeds, each down a different path (accepted; a build the
repair loop fixes; a build never fixed; a plan escaping the task directory,
then fixed or never fixed; an empty and a truncated file reply; a privileged
Dockerfile; a lint warning that verify rejects). Each test checks one path in
that run's store and exports. The pure parsing and lint rules are tested
directly, without Docker.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from helpers import read_jsonl, run_cli, write_yaml
from termigen_core.context import ImagePolicy
from termigen_core.errors import ParseError
from termigen_core.records import TaskRecord

BASE = "termigen/python:bookworm"
GOOD_DOCKERFILE = f"FROM {BASE}\nWORKDIR /app\nCOPY . /app\nRUN echo built\n"
REPAIRED = f"FROM {BASE}\nWORKDIR /app\nCOPY . /app\nRUN echo repaired\n"
BAD_APT = f"FROM {BASE}\nWORKDIR /app\nRUN apt-get install -y no-such-package-xyz\nCOPY . /app\n"
PRIVILEGED = (
    f"FROM {BASE}\nWORKDIR /app\nCOPY . /app\n"
    "RUN docker run --privileged -v /var/run/docker.sock:/var/run/docker.sock alpine true\n"
)
UNPINNED = f"FROM {BASE}\nWORKDIR /app\nCOPY . /app\nRUN python3 -m pip install --no-index --break-system-packages pytest\n"

SCENARIOS = ("OKTASK", "REPAIRTASK", "NEVERTASK", "NOREPAIRTASK", "ESCAPETASK", "HOPELESSTASK", "TRUNCTASK", "PRIVTASK", "LINTTASK")


def fence(text: str) -> str:
    return "```\n" + text.rstrip("\n") + "\n```\n"


def plan(*paths: str) -> dict[str, Any]:
    return {
        "files": [{"path": p, "purpose": f"input data for the task ({p})"} for p in paths],
        "instruction": "Count the ERROR lines in the log under /app and write the number to /app/count.txt.",
        "workdir": "/app",
    }


def spec(name: str) -> dict[str, Any]:
    return {
        "title": f"{name} count error lines",
        "objective": "Count the ERROR lines of a log file and write the count to a file.",
        "inputs": ["/app/data/app.log"],
        "outputs": ["/app/count.txt"],
        "success_criteria": ["/app/count.txt holds the number of ERROR lines"],
        "difficulty": "easy",
        "tools": ["grep", "wc"],
    }


def script_rules() -> list[dict[str, Any]]:
    """The scripted model: one rule list for every scenario (matched on the task title in prompts)."""
    rules: list[dict[str, Any]] = []
    for name in SCENARIOS:
        rules.append({"role": "proposer", "match": f"Seed: {name} ", "json": spec(name)})
    rules.append({"role": "evaluator", "json": {
        "environment_complexity": 5, "data_generatability": 5, "verification_determinism": 5, "feedback": "fine"}})
    # planner: escape scenarios (the follow-up after an unusable reply names the bad path)
    rules += [
        {"role": "planner", "match": r"could not be used.*'\.\./\.\./etc/cron\.d/x'", "json": plan("../../etc/cron.d/x")},
        {"role": "planner", "match": r"could not be used.*'\.\./x'", "json": plan("/etc/passwd")},
        {"role": "planner", "match": r"could not be used.*'/etc/passwd'", "json": plan("data/escape.log")},
        {"role": "planner", "match": "Task: ESCAPETASK", "json": plan("../x")},
        {"role": "planner", "match": "Task: HOPELESSTASK", "json": plan("../../etc/cron.d/x")},
        {"role": "planner", "match": "Task: TRUNCTASK", "json": plan("data/app.log", "notes/trunc.txt")},
        {"role": "planner", "json": plan("data/app.log")},
    ]
    # constructor: an empty reply, then a truncated one, then the file
    rules += [
        {"role": "constructor", "match": "could not be used: `notes/trunc.txt`: the reply is empty",
         "response": "```\npartial line\n"},
        {"role": "constructor", "match": "could not be used: `notes/trunc.txt`: the code block is never closed",
         "response": fence("complete line")},
        {"role": "constructor", "match": "Write the file `notes/trunc.txt`", "response": ""},
        {"role": "constructor", "response": fence("INFO start\nERROR one\nERROR two")},
    ]
    # env agent, first Dockerfile (stage synthesize)
    rules += [
        {"role": "env_agent", "stage": "synthesize", "match": "could not be used.*privileged", "response": fence(PRIVILEGED)},
        {"role": "env_agent", "stage": "synthesize", "match": "Task: PRIVTASK", "response": fence(PRIVILEGED)},
        {"role": "env_agent", "stage": "synthesize", "match": "Task: REPAIRTASK", "response": fence(BAD_APT)},
        {"role": "env_agent", "stage": "synthesize", "match": "Task: NEVERTASK",
         "response": fence(f"FROM {BASE}\nWORKDIR /app\nRUN exit 3\n")},
        {"role": "env_agent", "stage": "synthesize", "match": "Task: NOREPAIRTASK",
         "response": fence(f"FROM {BASE}\nWORKDIR /app\nRUN exit 7\n")},
        {"role": "env_agent", "stage": "synthesize", "match": "Task: LINTTASK", "response": fence(UNPINNED)},
        {"role": "env_agent", "stage": "synthesize", "response": fence(GOOD_DOCKERFILE)},
    ]
    # env agent, build repairs (stage build)
    rules += [
        {"role": "env_agent", "stage": "build", "match_any": ["Task: NOREPAIRTASK", "could not be used.*evil"],
         "json": {"files": {"../evil.sh": "rm -rf /"}}},
        {"role": "env_agent", "stage": "build", "match": "Task: REPAIRTASK", "json": {"files": {"Dockerfile": REPAIRED}}},
        {"role": "env_agent", "stage": "build", "match": "Task: NEVERTASK", "responses": [
            json.dumps({"files": {"Dockerfile": f"FROM {BASE}\nWORKDIR /app\nRUN exit 4\n"}}),
            json.dumps({"files": {"Dockerfile": f"FROM {BASE}\nWORKDIR /app\nRUN exit 5\n"}}),
        ]},
    ]
    return rules


def db_rows(run_dir: Path, sql: str, *args: Any) -> list[tuple]:
    with sqlite3.connect(run_dir / "run.db", timeout=30) as db:
        return db.execute(sql, args).fetchall()


def item_id(run_dir: Path, name: str) -> str:
    """The id of the scenario's item (ids are category + hash of the seed text)."""
    # the opening quote keeps REPAIRTASK from matching NOREPAIRTASK
    rows = db_rows(run_dir, "SELECT item_id, outputs FROM stage_runs WHERE stage_index=1 AND outputs LIKE ?", f'%"{name} count%')
    assert rows, f"no spec for {name}"
    return rows[0][0]


def stage_outcome(run_dir: Path, name: str, stage: str) -> tuple[str, str | None]:
    rows = db_rows(run_dir, "SELECT status, reason FROM stage_runs WHERE item_id=? AND stage_name=?", item_id(run_dir, name), stage)
    assert rows, f"{name} never reached {stage}"
    return rows[0]


def requests(run_dir: Path, role: str, name: str) -> list[str]:
    """Every request text of ``role`` in the scope of the scenario's item."""
    rows = db_rows(run_dir, "SELECT request FROM llm_calls WHERE role=? AND scope LIKE ? ORDER BY id", role, item_id(run_dir, name) + "@%")
    return [r[0] for r in rows]


# --- the run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(python_base_engine: Any) -> Any:
    return python_base_engine


@pytest.fixture(scope="module")
def scenario_run(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One CLI run over every scenario; its images are removed afterwards."""
    root = tmp_path_factory.mktemp("synth")
    home = tmp_path_factory.mktemp("synth-home")
    write_yaml(root / "script.yaml", script_rules())
    session = uuid.uuid4().hex[:8]  # unique item ids, hence image tags: concurrent sessions never share images
    write_yaml(root / "seeds.yaml", [
        {"text": f"{name} count the error lines of an application log ({session})", "category": "data_processing", "tier": 1}
        for name in SCENARIOS
    ])
    config = write_yaml(root / "pipeline.yaml", {
        "version": 1,
        "run": {"out": str(root / "run"), "concurrency": 4, "seed": 3},
        "llm": {
            "default": {"backend": "scripted", "model": "scripted-test", "script": "script.yaml"},
            "roles": {"planner": {"model": "planner-model"}},
        },
        "images": {"base": BASE},
        "stages": [
            {"use": "seeds", "with": {"source": "file", "options": {"path": "seeds.yaml"}, "dedup_threshold": 0.99}},
            {"use": "propose", "with": {"max_rounds": 1, "min_score": 4}},
            {"use": "synthesize", "with": {"max_files": 4}},
            {"use": "build", "with": {"max_attempts": 3, "build_timeout_s": 300}},
            {"use": "verify", "with": {"verifiers": ["lint"], "fail_on": "warning"}},
        ],
        "exports": [{"use": "jsonl", "with": {"path": "export/tasks.jsonl", "kinds": ["task"]}}],
    })
    env = {"TERMIGEN_HOME": str(home)}
    result = run_cli("run", str(config), "--json", env=env, timeout=900)
    run_dir = root / "run"
    try:
        yield {"result": result, "run_dir": run_dir, "config": config, "env": env}
    finally:
        ids = [r[0] for r in db_rows(run_dir, "SELECT DISTINCT item_id FROM stage_runs WHERE stage_name='build'")] if (run_dir / "run.db").exists() else []
        for image in engine.images.list(name="termigen-task/*"):
            for tag in image.tags:
                if any(tag.startswith(f"termigen-task/{slug(i)}:") for i in ids):
                    engine.images.remove(tag, force=True)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:100].strip("-")


def tasks(run_dir: Path) -> dict[str, TaskRecord]:
    records = [TaskRecord.of(row["data"]) for row in read_jsonl(run_dir / "export" / "tasks.jsonl")]
    return {r.title.split()[0]: r for r in records}




@pytest.mark.docker
def test_the_run_completes_and_reports_every_stage(scenario_run):
    result = scenario_run["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed"
    stages = {s["stage"]: s for s in summary["stages"]}
    assert (stages["synthesize"]["in"], stages["synthesize"]["rejected"]) == (9, 2)
    assert (stages["build"]["in"], stages["build"]["out"], stages["build"]["rejected"]) == (7, 5, 2)
    assert (stages["verify"]["in"], stages["verify"]["out"], stages["verify"]["rejected"]) == (5, 4, 1)
    assert stages["build"]["details"] == {"built": 5, "attempts_total": 6, "first_try": 4, "repaired": 1, "cached": 0}
    assert set(tasks(scenario_run["run_dir"])) == {"OKTASK", "REPAIRTASK", "ESCAPETASK", "TRUNCTASK"}


@pytest.mark.docker
def test_accepted_task_has_true_metadata_and_a_built_image(scenario_run, engine):
    task = tasks(scenario_run["run_dir"])["OKTASK"]
    assert task.category == "data_processing" and task.tier == 1 and task.difficulty == "easy"
    assert task.seed.startswith("OKTASK count the error lines")
    assert task.spec["title"] == "OKTASK count error lines"
    assert task.instruction.startswith("Count the ERROR lines")
    assert task.environment == {"Dockerfile": GOOD_DOCKERFILE, "data/app.log": "INFO start\nERROR one\nERROR two\n"}
    assert task.models == {"planner": "planner-model", "constructor": "scripted-test", "env_agent": "scripted-test"}
    assert task.build.attempts == 1 and task.build.errors == [] and not task.build.cached
    assert re.fullmatch(r"termigen-task/[a-z0-9-]+:[0-9a-f]{12}", task.build.image or "")
    assert task.lint == []
    engine.images.get(task.build.image)  # the image exists under the recorded tag


@pytest.mark.docker
def test_a_failing_build_is_repaired_by_the_env_agent(scenario_run):
    run_dir = scenario_run["run_dir"]
    task = tasks(run_dir)["REPAIRTASK"]
    assert task.build.attempts == 2
    assert len(task.build.errors) == 1 and "no-such-package-xyz" in task.build.errors[0]
    assert task.environment["Dockerfile"] == REPAIRED
    # the first repair request (a parse retry, if any, comes after it in the same scope)
    repairs = [r for r in requests(run_dir, "env_agent", "REPAIRTASK") if "The Docker build" in r]
    assert repairs, requests(run_dir, "env_agent", "REPAIRTASK")
    assert "no-such-package-xyz" in repairs[0] and "attempt 1 of 3" in repairs[0], repairs[0]


@pytest.mark.docker
def test_a_build_never_fixed_is_rejected_with_its_last_error(scenario_run):
    run_dir = scenario_run["run_dir"]
    status, reason = stage_outcome(run_dir, "NEVERTASK", "build")
    assert status == "rejected"
    assert reason.startswith("build failed after 3 attempt(s)") and "exit" in reason and "5" in reason
    assert "\n" not in reason  # one line in the report; every error is in the details
    detail = json.loads(db_rows(run_dir, "SELECT detail FROM stage_runs WHERE item_id=? AND stage_name='build'", item_id(run_dir, "NEVERTASK"))[0][0])
    assert detail["attempts"] == 3 and len(detail["errors"]) == 3
    assert all("last " in e and "lines of build output" in e for e in detail["errors"])


@pytest.mark.docker
def test_a_repair_escaping_the_build_context_is_retried_then_rejected(scenario_run):
    run_dir = scenario_run["run_dir"]
    status, reason = stage_outcome(run_dir, "NOREPAIRTASK", "build")
    assert status == "rejected"
    assert reason.startswith("build failed and the env agent gave no usable repair")
    assert "'..' would leave the task directory" in reason and "exit 7" in reason
    assert len(requests(run_dir, "env_agent", "NOREPAIRTASK")) == 1 + 3  # the Dockerfile, then 3 repair replies
    assert not list(run_dir.rglob("evil.sh"))


@pytest.mark.docker
def test_escaping_paths_are_shown_to_the_planner_and_retried(scenario_run):
    run_dir = scenario_run["run_dir"]
    task = tasks(run_dir)["ESCAPETASK"]
    assert set(task.environment) == {"Dockerfile", "data/escape.log"}
    asked = requests(run_dir, "planner", "ESCAPETASK")
    assert len(asked) == 3
    assert "'..' would leave the task directory" in asked[1]
    assert "absolute paths are not allowed" in asked[2]
    # the planner that never stops escaping is rejected, with the reason
    status, reason = stage_outcome(run_dir, "HOPELESSTASK", "synthesize")
    assert status == "rejected"
    assert reason.startswith("planner could not produce a usable file plan") and "would leave the task directory" in reason
    assert not list(run_dir.rglob("cron.d"))


@pytest.mark.docker
def test_empty_and_truncated_file_replies_are_retried(scenario_run):
    run_dir = scenario_run["run_dir"]
    task = tasks(run_dir)["TRUNCTASK"]
    assert task.environment["notes/trunc.txt"] == "complete line\n"
    asked = "\n".join(requests(run_dir, "constructor", "TRUNCTASK"))
    assert "`notes/trunc.txt`: the reply is empty" in asked
    assert "`notes/trunc.txt`: the code block is never closed" in asked


@pytest.mark.docker
def test_a_privileged_dockerfile_is_refused(scenario_run):
    run_dir = scenario_run["run_dir"]
    status, reason = stage_outcome(run_dir, "PRIVTASK", "synthesize")
    assert status == "rejected"
    assert "env_agent could not produce an acceptable Dockerfile" in reason
    assert "--privileged" in reason and "Docker socket" in reason
    assert len(requests(run_dir, "env_agent", "PRIVTASK")) == 3
    assert not db_rows(run_dir, "SELECT 1 FROM stage_runs WHERE item_id=? AND stage_name='build'", item_id(run_dir, "PRIVTASK"))


@pytest.mark.docker
def test_verify_rejects_on_lint_findings_at_the_configured_level(scenario_run):
    status, reason = stage_outcome(scenario_run["run_dir"], "LINTTASK", "verify")
    assert status == "rejected"
    assert reason.startswith("1 blocking finding(s): [lint] environment/Dockerfile: line 4: unpinned pip install of 'pytest'")


@pytest.mark.docker
def test_a_resume_pays_nothing_and_rebuilds_nothing(scenario_run):
    result = run_cli("run", str(scenario_run["config"]), "--json", env=scenario_run["env"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["llm"]["this_invocation"].get("paid", 0) == 0
    assert set(tasks(scenario_run["run_dir"])) == {"OKTASK", "REPAIRTASK", "ESCAPETASK", "TRUNCTASK"}


# --- config checks --------------------------------------------------------------------


def test_verify_names_unknown_verifiers_with_a_suggestion(tmp_path):
    (tmp_path / "script.yaml").write_text("- response: x\n", encoding="utf-8")
    (tmp_path / "seeds.txt").write_text("a seed\n", encoding="utf-8")
    config = write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "stages": [
            {"use": "seeds", "with": {"source": "file", "options": {"path": "seeds.txt"}}},
            {"use": "propose"}, {"use": "synthesize"}, {"use": "build"},
            {"use": "verify", "with": {"verifiers": ["lnit"], "options": {"other": {}}}},
        ],
    })
    result = run_cli("config", "check", str(config))
    assert result.returncode == 2
    assert "verifiers[0]" in result.stderr and "did you mean 'lint'" in result.stderr
    assert "options.other" in result.stderr


# --- parsing rules, without Docker ---------------------------------------------------------


def test_fenced_content_refuses_empty_missing_and_truncated_blocks():
    from termigen_plugins.stages.synthesize import fenced_content

    assert fenced_content("Here:\n```python\nprint(1)\n```\nDone.", "f") == "print(1)\n"
    nested = "````markdown\n# Title\n```bash\nls\n```\n````"
    assert fenced_content(nested, "f") == "# Title\n```bash\nls\n```\n"
    for reply, why in [("", "empty"), ("just text", "no fenced code block"), ("```\nhalf a fi", "never closed"),
                       ("```\n\n```", "code block is empty")]:
        with pytest.raises(ParseError, match=why):
            fenced_content(reply, "f")


def test_blueprint_parser_confines_paths_and_refuses_reserved_files():
    from termigen_plugins.stages.synthesize import blueprint_parser

    parse = blueprint_parser(max_files=3)

    def reply(*paths: str, workdir: str = "/app") -> str:
        return json.dumps({**plan(*paths), "workdir": workdir})

    assert [f.path for f in parse(reply("./data//a.txt", "b.py")).files] == ["data/a.txt", "b.py"]
    for paths, why in [
        (("../x",), "would leave"), (("/etc/passwd",), "absolute"), (("Dockerfile",), "environment agent"),
        (("tests/test_outputs.py",), "tests belong to the verifier"), (("solution/solve.sh",), "reference solution"),
        (("a", "b", "c", "d"), "at most 3"), (("a", "a/b"), "both a file and a directory"), (("a", "./a"), "given twice"),
    ]:
        with pytest.raises(ParseError, match=why):
            parse(reply(*paths))
    with pytest.raises(ParseError, match="workdir"):
        parse(reply("a", workdir="app/../.."))
    with pytest.raises(ParseError, match="schema"):
        parse('{"files": [], "instruction": "too short"}')


def test_check_dockerfile_applies_aliases_and_refuses_what_a_task_must_not_do():
    from termigen_plugins.stages.synthesize import check_dockerfile

    images = ImagePolicy(base=BASE, aliases={"python:3*": BASE})
    assert check_dockerfile("FROM python:3.12-slim\nWORKDIR /app\n", images, "/app", {}) == f"FROM {BASE}\nWORKDIR /app\n"
    cases = [
        ("FROM ubuntu:22.04\nWORKDIR /app\n", "base image must be"),
        (f"FROM {BASE}\nRUN true\n", "WORKDIR /app"),
        (f"FROM {BASE}\nWORKDIR /app\nCOPY tests/ /tests/\n", "tests belong to the verifier"),
        (f"FROM {BASE}\nWORKDIR /app\nCOPY solve.sh /app/\n", "reference solution"),
        (f"FROM {BASE}\nWORKDIR /app\nVOLUME /var/run/docker.sock\n", "Docker socket"),
        (f"FROM {BASE}\nWORKDIR /app\nRUN --security=insecure true\n", "insecure"),
        ("WORKDIR /app\n", "must start with"),
    ]
    for text, why in cases:
        with pytest.raises(ParseError, match=re.escape(why)):
            check_dockerfile(text, images, "/app", {})
    # a multi-stage build from the base is fine
    staged = f"FROM {BASE} AS deps\nRUN true\nFROM deps\nWORKDIR /app\n"
    assert check_dockerfile(staged, images, "/app", {}) == staged


def test_image_tags_are_valid_docker_references():
    from termigen_plugins.stages.build import image_tag

    tag = image_tag("Data_Processing-1A2b.0", {"Dockerfile": "FROM x\n"})
    assert re.fullmatch(r"termigen-task/data-processing-1a2b-0:[0-9a-f]{12}", tag)
    assert image_tag("!!!", {}).startswith("termigen-task/task:")
    assert image_tag("a", {"Dockerfile": "1"}) != image_tag("a", {"Dockerfile": "2"})


# --- lint -------------------------------------------------------------------------------


def crafted_task() -> TaskRecord:
    dockerfile = "\n".join([
        "FROM ubuntu:22.04",
        "WORKDIR /app",
        "COPY tests/ /tests/",
        "ADD solution/solve.sh /root/",
        "COPY . /app",
        "RUN pip install requests flask==3.0.0 -r requirements.txt && \\",
        "    python3 -m pip install --upgrade numpy",
        "RUN curl -fsSL https://example.invalid/install.sh | bash",
        "RUN docker run --privileged -v /:/host alpine true",
        "VOLUME /var/run/docker.sock",
        "RUN --network=host true",
        "",
    ])
    tests = {
        "test_outputs.py": (
            "import os\nfrom pathlib import Path\n\n"
            "def test_exists():\n    assert os.path.exists('/app/out.txt')\n    assert Path('/app/b').is_file()\n\n"
            "def test_constant():\n    assert 1 + 1 == 2\n\n"
            "def test_content():\n    assert Path('/app/out.txt').read_text() == '42\\n'\n\n"
            "class TestMore:\n    def test_dir(self):\n        assert not os.path.isdir('/app/tmp')\n"
        ),
        "test_broken.py": "def test_x(:\n    pass\n",
    }
    environment = {"Dockerfile": dockerfile, "requirements.txt": "pandas\nnumpy==1.26.4\n# comment\n", "tests/leak.py": "x"}
    return TaskRecord(id="t", title="t", instruction="i", category="c", environment=environment, tests=tests)


def test_lint_flags_what_the_quality_rubric_flags():
    from termigen_plugins.verifiers.lint import task_findings

    findings = task_findings(crafted_task(), ImagePolicy(base=BASE, aliases={"python:3*": "termigen/python:bookworm"}))
    got = {(f.severity, f.path, f.message) for f in findings}

    def has(severity: str, path: str, fragment: str) -> bool:
        return any(s == severity and p == path and fragment in m for s, p, m in got)

    df = "environment/Dockerfile"
    assert has("warning", df, "line 1: FROM ubuntu:22.04 is not the configured base image")
    assert has("error", df, "line 3: copies tests/ into the image")
    assert has("error", df, "line 4: copies solution/solve.sh into the image")
    assert has("error", df, "line 5: copies the whole build context, which holds tests/leak.py")
    assert has("warning", df, "line 6: unpinned pip install of 'requests'")
    assert has("warning", df, "line 6: unpinned pip install of 'numpy'")
    assert not has("warning", df, "'flask")
    assert not has("warning", df, "'requirements.txt'")
    assert has("warning", df, "line 8: pipes a downloaded script into a shell")
    assert has("error", df, "line 9: uses --privileged")
    assert has("error", df, "line 9: mounts a host path")
    assert has("error", df, "line 10: refers to the Docker socket")
    assert has("warning", df, "line 11: uses the host network")
    assert has("error", "environment/tests/leak.py", "in the build context")
    assert has("warning", "environment/requirements.txt", "unpinned requirements: pandas")
    assert has("warning", "tests/test_outputs.py", "test_exists only checks that files exist")
    assert has("warning", "tests/test_outputs.py", "test_dir only checks that files exist")
    assert has("warning", "tests/test_outputs.py", "test_constant asserts a constant")
    assert not has("warning", "tests/test_outputs.py", "test_content")
    assert has("error", "tests/test_broken.py", "does not parse")


def test_lint_passes_a_clean_task():
    from termigen_plugins.verifiers.lint import task_findings

    record = TaskRecord(
        id="t", title="t", instruction="i", category="c",
        environment={"Dockerfile": GOOD_DOCKERFILE + "RUN pip install --break-system-packages rich==13.7.1\n", "data/app.log": "x\n"},
        tests={"test_outputs.py": "from pathlib import Path\n\ndef test_count():\n    assert Path('/app/count.txt').read_text().strip() == '2'\n"},
    )
    assert task_findings(record, ImagePolicy(base=BASE)) == []
