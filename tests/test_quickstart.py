"""The README's main job, end to end: examples/quickstart.yaml on the scripted backend and real Docker."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from helpers import ROOT, prune_run_images, read_jsonl, run_cli

#: the run-end pages (report.html, browse.html), which the suite's other runs skip
PAGES = {"TERMIGEN_HTML_PAGES": "1"}

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("quickstart")
    shutil.copy(ROOT / "examples" / "quickstart.yaml", work / "quickstart.yaml")
    shutil.copy(ROOT / "examples" / "quickstart.script.yaml", work / "quickstart.script.yaml")
    run_dir = work / "run"
    result = run_cli("run", str(work / "quickstart.yaml"), "--out", str(run_dir), timeout=1200, env=PAGES)
    try:
        yield run_dir, result
    finally:
        prune_run_images(run_dir)


def stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["stage"] == name)


def test_quickstart_goes_through_every_stage(quickstart_run):
    run_dir, result = quickstart_run
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    seeds, propose = stage(summary, "seeds"), stage(summary, "propose")
    assert (seeds["in"], seeds["out"], seeds["rejected"]) == (5, 4, 1)
    assert (propose["out"], propose["rejected"]) == (3, 1)
    build = stage(summary, "build")
    assert build["details"]["repaired"] == 1 and build["details"]["attempts_total"] == 4
    tests = stage(summary, "tests")
    assert tests["details"]["judge_rounds"] == {"1": 2, "2": 1}
    validate = stage(summary, "validate")
    assert validate["out"] == 3 and validate["details"]["repairs"] == {"tests": 1}
    reasons = {f["stage"]: f["reason"] for f in summary["failures"]}
    assert reasons["seeds"].startswith("near-duplicate")
    assert reasons["propose"].startswith("spec below min_score")
    report = (run_dir / "report.md").read_text()
    assert "| 3 build | 3 | 3 |" in report


def test_quickstart_tasks_are_validated_and_exported(quickstart_run):
    run_dir, _ = quickstart_run
    trajectories = read_jsonl(run_dir / "export" / "trajectories.jsonl")
    tasks = {t["data"]["task"]["id"]: t["data"]["task"] for t in trajectories}
    assert {t["category"] for t in tasks.values()} == {"data_processing", "system_admin", "algorithms"}
    for task in tasks.values():
        phases = [(c["phase"], c["passed"]) for c in task["validation"]["checks"]]
        assert phases == [("before", False), ("before", False), ("after", True), ("after", True)]
        assert task["solution"] and task["tests"] and task["build"]["image"]
    repaired = next(t for t in tasks.values() if t["category"] == "data_processing")
    assert repaired["build"]["attempts"] == 2 and "gawk-not-a-package" in repaired["build"]["errors"][0]
    for fmt, marker in (("harbor", "task.toml"), ("tb1", "task.yaml")):
        folders = sorted(p for p in (run_dir / "export" / fmt).iterdir() if p.is_dir())
        assert len(folders) == 3 and all((f / marker).is_file() for f in folders)


def test_quickstart_writes_its_html_pages(quickstart_run):
    """The run itself leaves report.html and browse.html beside report.md (checked in Chromium elsewhere)."""
    run_dir, result = quickstart_run
    for name in ("report.html", "browse.html"):
        page = (run_dir / name).read_text(encoding="utf-8")
        assert page.lstrip().lower().startswith("<!doctype html>") and "</html>" in page
    assert "<svg" in (run_dir / "report.html").read_text(encoding="utf-8")  # the plots are inline


def test_quickstart_trajectory_recovers_from_three_error_modes(quickstart_run):
    run_dir, _ = quickstart_run
    trajectories = [t["data"]["trajectory"] for t in read_jsonl(run_dir / "export" / "trajectories.jsonl")]
    assert all(t["resolved"] and t["pass_ratio"] == 1.0 for t in trajectories)
    best = max(trajectories, key=lambda t: len({s["error_mode"] for s in t["steps"] if s["error_mode"]}))
    steps = best["steps"]
    modes = {s["error_mode"] for s in steps if s["intent"] == "error"}
    assert modes == {"analysis", "command", "hallucination"}
    for index, step in enumerate(steps):
        if step["intent"] == "error":
            follow = steps[index + 1]
            assert follow["intent"] == "correct" and follow["recovers_from"] == index and follow["exit_code"] == 0
            assert step["exit_code"] != 0  # the injected mistake really failed in the container
    assert steps[-1]["action"] == "finish"
    text = " ".join(s["thought"] + (s["command"] or "") for s in steps).lower()
    assert "intent" not in text and "inject" not in text and "error mode" not in text


def test_quickstart_resumes_without_paying_again(quickstart_run):
    run_dir, _ = quickstart_run
    again = run_cli("run", str(run_dir.parent / "quickstart.yaml"), "--out", str(run_dir), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["llm"]["this_invocation"].get("paid", 0) == 0


def test_raising_the_target_of_a_finished_run_draws_again_and_says_how_far_it_got(quickstart_run, tmp_path):
    """A campaign on the real pipeline: the quickstart's run asked for 4 verified tasks afterwards.

    The scripted seeder answers the second draw with the seeds it gave the first, so the draw
    adds nothing: the run stops, exports what it has and says how far it got (exit 5)."""
    run_dir, _ = quickstart_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    again = run_cli("run", str(run_dir.parent / "quickstart.yaml"), "--out", str(copy), "-s", "run.target.verified_tasks=4",
                    timeout=600)
    assert again.returncode == 5, again.stderr[-3000:]
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["target"]["goals"]["verified_tasks"] == {"wanted": 4, "reached": 3, "stage_index": 6}
    assert summary["target"]["draws"] == 2
    assert "run.target not met: 3 of 4 verified tasks after 2 draw(s); draw 2 gave no new items" in summary["message"]
    # only the new draw's seeder calls were paid; every earlier step was replayed
    paid = "SELECT role, COUNT(*) FROM llm_calls WHERE status = 'ok' AND source = 'backend' GROUP BY role"
    before, after = dict(_rows(run_dir, paid)), dict(_rows(copy, paid))
    assert {role: n - before.get(role, 0) for role, n in after.items() if n != before.get(role, 0)} == {"seeder": 3}
    assert len(read_jsonl(copy / "export" / "trajectories.jsonl")) == 3


def _rows(run_dir, sql: str) -> list[tuple]:
    with sqlite3.connect(run_dir / "run.db") as db:
        return db.execute(sql).fetchall()


def test_quickstart_sft_exports_load_with_datasets(quickstart_run):
    import datasets

    run_dir, _ = quickstart_run
    sft = run_dir / "export" / "sft"
    openai = datasets.load_dataset("json", data_files=str(sft / "openai.jsonl"), split="train")
    parquet = datasets.load_dataset("parquet", data_files=str(sft / "trajectories.parquet"), split="train")
    assert len(openai) == len(parquet) == 3
    first = read_jsonl(sft / "openai.jsonl")
    weights = [m.get("weight") for r in first for m in r["messages"] if m["role"] == "assistant"]
    assert 0 in weights and 1 in weights  # injected mistakes get no training weight, recoveries do
    sharegpt = json.loads((sft / "sharegpt.json").read_text())
    info = json.loads((sft / "dataset_info.json").read_text())
    entry = next(iter(info.values()))
    assert entry["formatting"] == "sharegpt" and entry["columns"]["messages"] == "conversations"
    for record in sharegpt:
        roles = [turn["from"] for turn in record["conversations"]]
        assert all(r in ("human", "observation") for r in roles[0::2])
        assert all(r in ("gpt", "function_call") for r in roles[1::2])
    # one run-level train_on: every format leaves the same number of turns out of the loss
    masked_openai = weights.count(0)
    axolotl = read_jsonl(sft / "axolotl.jsonl")
    assert sum(not m["train"] for r in axolotl for m in r["messages"] if m["role"] == "assistant") == masked_openai
    assert sum(m["weight"] == 0 for r in parquet for m in r["messages"] if m["role"] == "assistant") == masked_openai
    card = (sft / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: axolotl" in card and (sft / "chat_template.jinja").is_file()


@pytest.mark.parametrize("fmt", ["harbor", "tb1"])
def test_the_audit_finds_every_exported_task_valid(quickstart_run, tmp_path, fmt):
    """`termigen audit` on the quickstart's own exports: each task builds, its tests fail untouched
    and pass after its solution, twice; no model is asked."""
    run_dir, _ = quickstart_run
    exported = sorted(p.name for p in (run_dir / "export" / fmt).iterdir() if p.is_dir())
    out = tmp_path / "audit"
    result = run_cli("audit", str(run_dir / "export" / fmt), "--out", str(out), "--json", "--no-progress", timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verdicts"] == {"valid": len(exported)}, report["tasks"]
    assert sorted(t["id"] for t in report["tasks"]) == exported
    assert all(t["noop_passed"] == 0 and t["noop_runs"] == 2 and t["oracle_passed"] == t["oracle_runs"] == 2 for t in report["tasks"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["llm"]["paid_calls_total"] == 0


def test_eval_reproduces_the_known_pass_at_k_on_the_quickstart_tasks(quickstart_run, tmp_path):
    """examples/quickstart.eval.yaml solves one task always, one in one attempt of three, one never."""
    run_dir, _ = quickstart_run
    out = tmp_path / "eval"
    args = ("eval", str(run_dir / "export" / "harbor"), "--model", "scripted-demo", "--backend", "scripted",
            "--script", str(ROOT / "examples" / "quickstart.eval.yaml"), "--agent-format", "hermes",
            "--attempts", "3", "--out", str(out), "--json")
    result = run_cli(*args, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["tasks"]["scored"] == 3
    assert report["pass@1"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert report["pass@3"] == pytest.approx(2 / 3)
    assert sorted(t["resolved"] for t in report["per_task"]) == [0, 1, 3]
    again = run_cli(*args, timeout=600)  # resumes: the same figures, no new model call
    assert json.loads(again.stdout)["pass@1"] == report["pass@1"]
    assert json.loads(again.stdout)["llm"]["calls"] == report["llm"]["calls"]
