"""The ``atif`` exporter: Harbor's Agent Trajectory Interchange Format, checked by Harbor's own models.

Harbor needs Python >= 3.12, so its validator runs in the conformance venv
(``~/.cache/termigen/conformance-venv`` or ``$TERMIGEN_CONFORMANCE_VENV``, made by
``scripts/conformance.sh``) over the exported files; without it that test is
skipped with the reason. The structural test runs everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from termigen_core.components import instantiate
from termigen_core.items import Item
from termigen_core.plugins import build_plugin_host
from termigen_core.records import CriticVerdict, Step, TaskRecord, TrajectoryRecord
from termigen_core.testing import export_context
from termigen_plugins.exporters.atif import SCHEMA_VERSION, AtifExporter

VENV = Path(os.environ.get("TERMIGEN_CONFORMANCE_VENV") or Path.home() / ".cache/termigen/conformance-venv")

#: What the conformance venv's python runs over the exported files: Harbor's own validator.
VALIDATE = """
import json, sys
from pathlib import Path
from harbor.models.trajectories import Trajectory
from harbor.utils.trajectory_validator import TrajectoryValidator
bad = {}
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    validator = TrajectoryValidator()
    if not validator.validate(path):
        bad[path.name] = validator.get_errors()
    else:
        Trajectory.model_validate(json.loads(path.read_text()))
print(json.dumps({"checked": len(list(Path(sys.argv[1]).glob("*.json"))), "bad": bad}))
"""


def trajectory(traj_id: str, *, system_prompt: str = "You are a careful terminal agent.") -> TrajectoryRecord:
    """Look, an injected hallucination (rejected once by the critic, then regenerated), its recovery, finish."""
    return TrajectoryRecord(
        id=traj_id, task_id="count-errors", run_id="run-7", model="scripted-demo", seed=3, system_prompt=system_prompt,
        instruction="Count the ERROR lines in /app/logs/app.log into /app/out.txt.",
        steps=[
            Step(index=0, thought="First I list the logs.", command="ls /app/logs", output="app.log\n", exit_code=0,
                 prompt_tokens=120, completion_tokens=20),
            Step(index=1, intent="error", error_mode="hallucination", thought="I count them with logcount.",
                 command="logcount --level ERROR /app/logs/app.log", output="bash: logcount: command not found\n", exit_code=127,
                 critic=[CriticVerdict(accepted=False, feedback="too obvious"), CriticVerdict(accepted=True)], regenerations=1,
                 prompt_tokens=150, completion_tokens=25),
            Step(index=2, thought="logcount is not installed; grep -c counts matching lines.", recovers_from=1,
                 command="grep -c ERROR /app/logs/app.log > /app/out.txt", output="", exit_code=0, prompt_tokens=190, completion_tokens=30),
            Step(index=3, action="finish", thought="Written.", command="Wrote the count to /app/out.txt", prompt_tokens=210, completion_tokens=10),
        ],
        finished=True, resolved=True, pass_ratio=1.0, tests_passed=2, tests_total=2,
    )


def items() -> list[Item]:
    task = TaskRecord(id="count-errors", title="Count errors", instruction="Count the ERROR lines", category="data_processing").model_dump()
    records = [trajectory("count-errors.0"), trajectory("count-errors/1:odd id", system_prompt="")]
    return [Item(id="count-errors", kind="task", data={"task": task})] + [
        Item(id=r.id, kind="trajectory", data={"task": task, "trajectory": r.model_dump()}) for r in records
    ]


def export(tmp_path: Path) -> tuple[dict, Path]:
    summary = instantiate(AtifExporter, {}, tmp_path).export(items(), export_context(tmp_path))
    return summary, Path(summary["path"])


def test_atif_is_a_registered_exporter() -> None:
    host = build_plugin_host()
    assert host.registry.get("exporter", "atif") is AtifExporter


def test_atif_structure_steps_calls_observations_and_labels(tmp_path: Path) -> None:
    summary, root = export(tmp_path)
    assert summary["count"] == 2 and root == tmp_path / "export" / "atif"
    assert sorted(p.name for p in root.iterdir()) == ["count-errors.0.json", "count-errors_1_odd_id.json"]
    doc = json.loads((root / "count-errors.0.json").read_text())

    assert doc["schema_version"] == SCHEMA_VERSION
    assert {"schema_version", "agent", "steps"} <= doc.keys()
    assert doc["agent"]["name"] == "termigen" and doc["agent"]["model_name"] == "scripted-demo" and doc["agent"]["version"]
    assert [t["function"]["name"] for t in doc["agent"]["tool_definitions"]] == ["bash", "finish"]
    steps = doc["steps"]
    assert [s["step_id"] for s in steps] == list(range(1, len(steps) + 1))
    assert [s["source"] for s in steps] == ["system", "user", "agent", "agent", "agent", "agent"]
    assert steps[1]["message"].startswith("Count the ERROR lines")
    for step in steps[:2]:  # agent-only fields never on system/user steps
        assert not {"tool_calls", "metrics", "model_name", "reasoning_content"} & step.keys()
    for step in steps[2:]:
        (call,) = step["tool_calls"]
        results = step.get("observation", {}).get("results", [])
        assert all(r["source_call_id"] == call["tool_call_id"] for r in results)
    ids = [s["tool_calls"][0]["tool_call_id"] for s in steps[2:]]
    assert len(set(ids)) == len(ids)

    error, recovery, finish = steps[3], steps[4], steps[5]
    assert error["tool_calls"][0] == {"tool_call_id": "call_1", "function_name": "bash", "arguments": {"command": "logcount --level ERROR /app/logs/app.log"}}
    assert "command not found" in error["observation"]["results"][0]["content"]
    assert error["metrics"] == {"prompt_tokens": 150, "completion_tokens": 25}
    labels = error["extra"]["termigen"]
    assert (labels["intent"], labels["error_mode"], labels["regenerations"], labels["exit_code"]) == ("error", "hallucination", 1, 127)
    assert [v["accepted"] for v in labels["critic"]] == [False, True]
    assert recovery["extra"]["termigen"]["recovers_from"] == 1
    assert recovery["extra"]["termigen"]["recovers_from_step_id"] == error["step_id"]
    assert recovery["extra"]["termigen"]["intent"] == "correct" and "error_mode" not in recovery["extra"]["termigen"]
    assert finish["tool_calls"][0]["function_name"] == "finish" and "observation" not in finish
    # the private labels are metadata only, never dialogue
    assert all("hallucination" not in json.dumps([s["message"], s.get("observation")]) for s in steps)

    assert doc["final_metrics"] == {"total_prompt_tokens": 670, "total_completion_tokens": 85, "total_steps": 6}
    meta = doc["extra"]["termigen"]
    assert (meta["task_id"], meta["trajectory_id"], meta["run_id"], meta["resolved"]) == ("count-errors", "count-errors.0", "run-7", True)
    assert meta["error_steps"] == [1] and doc["trajectory_id"] == "count-errors.0" and doc["session_id"] == "run-7"

    no_system = json.loads((root / "count-errors_1_odd_id.json").read_text())
    assert [s["source"] for s in no_system["steps"]][:2] == ["user", "agent"] and no_system["steps"][0]["step_id"] == 1


def test_a_reexport_replaces_the_folder_whole(tmp_path: Path) -> None:
    _, root = export(tmp_path)
    (root / "stale.json").write_text("{}")
    export(tmp_path)
    assert not (root / "stale.json").exists() and len(list(root.iterdir())) == 2
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".termigen-staging-")]


def test_atif_files_validate_with_harbors_own_models(tmp_path: Path) -> None:
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"needs Harbor's models (Python >= 3.12) in {VENV}; make it with scripts/conformance.sh")
    probe = subprocess.run([str(python), "-c", "import harbor.utils.trajectory_validator"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import harbor's trajectory validator: {probe.stderr.strip().splitlines()[-1:]}")
    _, root = export(tmp_path)
    done = subprocess.run([str(python), "-c", VALIDATE, str(root)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"checked": 2, "bad": {}}


def test_harbors_validator_rejects_a_broken_reference(tmp_path: Path) -> None:
    """The validation script really checks: a dangling source_call_id is refused by Harbor's models."""
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"needs Harbor's models (Python >= 3.12) in {VENV}; make it with scripts/conformance.sh")
    _, root = export(tmp_path)
    path = root / "count-errors.0.json"
    doc = json.loads(path.read_text())
    doc["steps"][2]["observation"]["results"][0]["source_call_id"] = "call_99"
    path.write_text(json.dumps(doc))
    done = subprocess.run([str(python), "-c", VALIDATE, str(root)], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(report["bad"]) == ["count-errors.0.json"] and "call_99" in " ".join(report["bad"]["count-errors.0.json"])


#: Harbor's own models over a harbor_jobs export: every job and trial document they read.
VALIDATE_JOBS = """
import json, sys
from pathlib import Path
from harbor.models.job.config import JobConfig
from harbor.models.job.result import JobResult
from harbor.models.trajectories import Trajectory
from harbor.models.trial.config import TrialConfig
from harbor.models.trial.result import TrialResult
from harbor.viewer.scanner import JobScanner
scanner = JobScanner(Path(sys.argv[1]))
out = {}
for job in scanner.list_jobs():
    JobConfig.model_validate_json((scanner.jobs_dir / job / "config.json").read_text())
    JobResult.model_validate_json((scanner.jobs_dir / job / "result.json").read_text())
    trials = {}
    for trial in scanner.list_trials(job):
        d = scanner.jobs_dir / job / trial
        TrialConfig.model_validate_json((d / "config.json").read_text())
        result = TrialResult.model_validate_json((d / "result.json").read_text())
        Trajectory.model_validate(json.loads((d / "agent" / "trajectory.json").read_text()))
        trials[trial] = {"task": result.task_name, "reward": result.verifier_result.rewards["reward"]}
    out[job] = trials
print(json.dumps(out))
"""


def harbor_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"needs Harbor (Python >= 3.12) in {VENV}; make it with scripts/conformance.sh")
    return python


def test_harbor_jobs_layout_is_what_harbor_view_opens(tmp_path: Path) -> None:
    """layout: harbor_jobs → Harbor's models read every document, and `harbor view` serves the trials."""
    import socket
    import time
    import urllib.request

    python = harbor_python()
    summary = instantiate(AtifExporter, {"layout": "harbor_jobs"}, tmp_path).export(items(), export_context(tmp_path))
    root = Path(summary["path"])
    assert summary["count"] == 2 and summary["layout"] == "harbor_jobs"
    done = subprocess.run([str(python), "-c", VALIDATE_JOBS, str(root)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout.strip().splitlines()[-1])
    (job, trials), = jobs.items()
    assert set(trials) == {"count-errors.0", "count-errors_1_odd_id"}
    assert all(t == {"task": "count-errors", "reward": 1.0} for t in trials.values())

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    harbor = python.parent / "harbor"
    env = {**os.environ, "HARBOR_TELEMETRY": "0"}
    server = subprocess.Popen([str(harbor), "view", str(root), "--host", "127.0.0.1", "--port", str(port), "--jobs", "--no-build"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}/api"

    def get(path: str) -> object:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get("/health")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("harbor view did not start")
                time.sleep(0.3)
        listed = get("/jobs")
        assert [j["name"] for j in listed["items"]] == [job] and listed["items"][0]["n_total_trials"] == 2
        served = get(f"/jobs/{job}/trials")
        assert {t["name"] for t in served["items"]} == set(trials)
        assert {t["model_name"] for t in served["items"]} == {"scripted-demo"}
        trajectory = get(f"/jobs/{job}/trials/count-errors.0/trajectory")
        assert trajectory == json.loads((root / job / "count-errors.0" / "agent" / "trajectory.json").read_text())
        error_steps = [s for s in trajectory["steps"] if s.get("extra", {}).get("termigen", {}).get("intent") == "error"]
        assert [s["extra"]["termigen"]["error_mode"] for s in error_steps] == ["hallucination"]
    finally:
        server.terminate()
        server.wait(timeout=30)
