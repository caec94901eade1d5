"""Campaigns (``run.target``): keep drawing seeds until N verified tasks or trajectories exist.

Whole runs through the real CLI on the real ``seeds`` stage (file and taxonomy
seed sources), the real run store and scripted model replies; the stage that
"verifies" a seed is a test component with a known yield (seeds saying
"reject" are rejected).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import TEST_PLUGIN, read_jsonl, run_cli, stop, wait_for, write_yaml

SEEDS = [
    "Configure nginx reverse proxy caching headers",
    "reject: compile legacy fortran numerical library",
    "Rotate journald archives under quota limits",
    "Repair broken python virtualenv after interpreter upgrade",
    "reject: benchmark sqlite indexes on timestamp queries",
    "Decode base64 email attachments into files",
    "Schedule cron backups with retention pruning",
    "reject: trace zombie processes left by shell scripts",
    "Parse apache combined logs into hourly histograms",
    "Sign release tarballs with gpg detached signatures",
]


def campaign_pipeline(tmp_path: Path, *, target: dict, limit: int = 2, seeds: list[str] = SEEDS, run: dict | None = None,
                      fan: bool = False) -> Path:
    (tmp_path / "seeds.txt").write_text("\n".join(seeds) + "\n", encoding="utf-8")
    (tmp_path / "script.yaml").write_text('- role: worker\n  response: "fine"\n  cost_usd: 0.01\n', encoding="utf-8")
    stages = [
        {"use": "seeds", "with": {"source": {"use": "file", "with": {"path": "seeds.txt"}}, "limit": limit}},
        {"use": "check_seed"},
    ]
    exports = [{"use": "jsonl", "with": {"path": "export/tasks.jsonl", "kinds": ["task"]}}]
    if fan:
        stages.append({"use": "fan", "with": {"per_task": 2}})
        exports = [{"use": "jsonl", "with": {"path": "export/trajectories.jsonl", "kinds": ["trajectory"]}}]
    data = {
        "version": 1,
        "run": {"out": str(tmp_path / "run"), "concurrency": 2, "target": target, **(run or {})},
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "stages": stages,
        "exports": exports,
    }
    return write_yaml(tmp_path / "pipeline.yaml", data)


def termigen_run(config: Path, *args: str):
    return run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), *args)


def summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def source_steps(tmp_path: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(tmp_path / "run" / "run.db") as db:
        rows = db.execute(
            "SELECT item_id, status, json_array_length(COALESCE(outputs, '[]')) FROM stage_runs "
            "WHERE stage_index = 0 AND item_id LIKE '\\_\\_source\\_\\_%' ESCAPE '\\' ORDER BY started"
        ).fetchall()
    return [tuple(r) for r in rows]


def test_a_campaign_draws_until_the_target_of_verified_tasks_is_met(tmp_path):
    config = campaign_pipeline(tmp_path, target={"verified_tasks": 4})
    result = termigen_run(config)
    assert result.returncode == 0, result.stderr
    data = summary(tmp_path)
    assert data["status"] == "completed"
    target = data["target"]
    assert target["met"] is True and target["goals"]["verified_tasks"]["wanted"] == 4
    tasks = read_jsonl(tmp_path / "run" / "export" / "tasks.jsonl")
    assert target["goals"]["verified_tasks"]["reached"] == len(tasks) >= 4
    # two seeds per draw, a third of them rejected: more than two draws were needed, and not all five
    steps = source_steps(tmp_path)
    assert steps[0][0] == "__source__" and all(status == "done" for _id, status, _n in steps)
    assert 3 <= len(steps) == target["draws"] < 5
    drawn = [text for text in SEEDS[: 2 * len(steps)]]
    assert sorted(t["data"]["text"] for t in tasks) == sorted(t for t in drawn if not t.startswith("reject"))
    # the funnel counts every draw's seeds
    seeds_stage = data["stages"][0]
    assert seeds_stage["out"] == 2 * len(steps)
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"Target (met): {len(tasks)} of 4 verified tasks, after {len(steps)} draw(s)" in report


def test_resume_replays_every_draw_and_pays_nothing_again(tmp_path):
    config = campaign_pipeline(tmp_path, target={"verified_tasks": 4})
    assert termigen_run(config).returncode == 0
    first = summary(tmp_path)
    again = termigen_run(config)
    assert again.returncode == 0, again.stderr
    second = summary(tmp_path)
    assert second["llm"]["this_invocation"].get("paid", 0) == 0
    assert second["target"]["goals"] == first["target"]["goals"]
    assert second["target"]["draws"] == first["target"]["draws"]
    assert second["final_items"] == first["final_items"]


def test_the_budget_stops_a_campaign_which_says_how_far_it_got_and_resumes(tmp_path):
    # every check costs 0.01: the budget stops the campaign after a few seeds
    config = campaign_pipeline(tmp_path, target={"verified_tasks": 5}, run={"budget_usd": 0.035})
    stopped = termigen_run(config)
    assert stopped.returncode == 3, stopped.stderr
    data = summary(tmp_path)
    assert data["status"] == "budget_exhausted"
    reached = data["target"]["goals"]["verified_tasks"]["reached"]
    assert data["target"]["met"] is False and reached < 5
    assert f"{reached} of 5 verified tasks of run.target so far" in data["message"]
    paid_before = data["llm"]["paid_calls_total"]
    # a bigger budget: the campaign goes on from where it stopped
    resumed = termigen_run(config, "-s", "run.budget_usd=1")
    assert resumed.returncode == 0, resumed.stderr
    done = summary(tmp_path)
    assert done["target"]["met"] is True and done["target"]["goals"]["verified_tasks"]["reached"] >= 5
    # seeds checked before the stop were not paid for again
    assert done["llm"]["paid_calls_total"] == done["target"]["goals"]["verified_tasks"]["reached"] + _rejected(done)
    assert done["llm"]["paid_calls_total"] > paid_before


def _rejected(data: dict) -> int:
    return sum(1 for f in data["failures"] if f["status"] == "rejected")


def test_a_target_the_source_cannot_reach_stops_and_says_how_far_it_got(tmp_path):
    config = campaign_pipeline(tmp_path, target={"verified_tasks": 20})
    result = termigen_run(config)
    assert result.returncode == 5, result.stderr
    data = summary(tmp_path)
    assert data["status"] == "completed_with_problems"
    assert data["target"]["goals"]["verified_tasks"]["reached"] == 7  # every seed the file has, but the rejected
    assert "run.target not met: 7 of 20 verified tasks after 6 draw(s)" in data["message"]
    assert "draw 6 gave no new items" in data["message"]
    assert len(read_jsonl(tmp_path / "run" / "export" / "tasks.jsonl")) == 7  # what was made is exported


def test_max_draws_is_a_hard_stop(tmp_path):
    config = campaign_pipeline(tmp_path, target={"verified_tasks": 20, "max_draws": 2})
    result = termigen_run(config)
    assert result.returncode == 5, result.stderr
    data = summary(tmp_path)
    assert data["target"]["draws"] == 2 and len(source_steps(tmp_path)) == 2
    assert "run.target.max_draws (2) draws were made" in data["message"]


def test_a_trajectory_target_counts_the_trajectories_of_the_last_stage(tmp_path):
    config = campaign_pipeline(tmp_path, target={"trajectories": 6}, fan=True)
    result = termigen_run(config)
    assert result.returncode == 0, result.stderr
    data = summary(tmp_path)
    trajectories = read_jsonl(tmp_path / "run" / "export" / "trajectories.jsonl")
    assert data["target"]["goals"]["trajectories"]["reached"] == len(trajectories) >= 6
    assert data["target"]["goals"]["trajectories"]["stage_index"] == 2


def test_resolved_trajectories_count_only_trajectories_whose_tests_passed(tmp_path):
    config = campaign_pipeline(tmp_path, target={"resolved_trajectories": 3, "trajectories": 4}, fan=True)
    result = termigen_run(config)
    assert result.returncode == 0, result.stderr
    goals = summary(tmp_path)["target"]["goals"]
    trajectories = read_jsonl(tmp_path / "run" / "export" / "trajectories.jsonl")
    resolved = [t for t in trajectories if t["data"]["trajectory"]["resolved"]]
    assert goals["resolved_trajectories"]["reached"] == len(resolved) >= 3
    assert goals["trajectories"]["reached"] == len(trajectories) == 2 * len(resolved)


def test_no_target_draws_once(tmp_path):
    config = campaign_pipeline(tmp_path, target={"verified_tasks": 1})
    raw = yaml.safe_load(config.read_text())
    del raw["run"]["target"]
    write_yaml(config, raw)
    assert termigen_run(config).returncode == 0
    assert [s[0] for s in source_steps(tmp_path)] == ["__source__"]
    assert summary(tmp_path)["target"] is None


@pytest.mark.parametrize(
    ("target", "stages", "path", "words"),
    [
        ({}, None, "run.target", "name a goal"),
        ({"verified_tasks": 0}, None, "run.target.verified_tasks", "greater than or equal to 1"),
        ({"verified_tasks": 3, "every": 2}, None, "run.target.every", "unknown key"),
        ({"trajectories": 3}, None, "run.target.trajectories", "no stage of this pipeline hands on trajectory items"),
        ({"verified_tasks": 3}, [{"use": "count"}, {"use": "ask"}], "run.target", "cannot be asked for more items"),
    ],
)
def test_a_target_the_pipeline_cannot_count_is_a_config_error_with_its_path(tmp_path, target, stages, path, words):
    config = campaign_pipeline(tmp_path, target=target)
    if stages is not None:
        raw = yaml.safe_load(config.read_text())
        raw["stages"] = stages
        write_yaml(config, raw)
    result = run_cli("config", "check", str(config), "--plugin", str(TEST_PLUGIN))
    assert result.returncode == 2, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert path in out and words in out
    assert "Traceback" not in out


TAXONOMY_SCRIPT = """\
- role: seeder
  match: "(?s)proposed already.*Compress nightly postgres dumps"
  json: {seeds: ["Compress the nightly postgres dumps", "Mirror a debian package repository offline"]}
- role: seeder
  match: "proposed already"
  json: {seeds: ["Compress nightly postgres dumps with zstd", "Mirror a debian package repository offline"]}
- role: seeder
  json: {seeds: ["Prune stale docker build caches", "Audit sudoers entries for wildcards"]}
- role: worker
  response: "fine"
"""


def test_taxonomy_draws_tell_the_model_what_it_proposed_and_drop_repeats(tmp_path):
    (tmp_path / "script.yaml").write_text(TAXONOMY_SCRIPT, encoding="utf-8")
    config = write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "run": {"out": str(tmp_path / "run"), "concurrency": 2, "target": {"verified_tasks": 10}},
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "stages": [
            {"use": "seeds", "with": {"source": {"use": "taxonomy", "with": {"per_category": 2, "categories": ["system_admin"]}}}},
            {"use": "check_seed"},
        ],
        "exports": [{"use": "jsonl", "with": {"path": "export/tasks.jsonl", "kinds": ["task"]}}],
    })
    result = termigen_run(config)
    assert result.returncode == 5, result.stderr
    data = summary(tmp_path)
    assert data["target"]["goals"]["verified_tasks"]["reached"] == 4
    assert "draw 3 gave no new items" in data["message"]
    with sqlite3.connect(tmp_path / "run" / "run.db") as db:
        prompts = [json.loads(r[0])["messages"][-1]["content"] for r in db.execute(
            "SELECT request FROM llm_calls WHERE role = 'seeder' ORDER BY id")]
        rejected = dict(db.execute("SELECT item_id, reason FROM stage_runs WHERE stage_index = 0 AND status = 'rejected'").fetchall())
    assert len(prompts) == 3 and "proposed already" not in prompts[0]
    assert "- Prune stale docker build caches" in prompts[1] and "- Audit sudoers entries for wildcards" in prompts[1]
    assert "- Compress nightly postgres dumps with zstd" in prompts[2]
    # the third draw's near-duplicate of an earlier draw's seed is rejected with that seed named
    [reason] = rejected.values()
    assert reason.startswith("near-duplicate") and "of seed drawn earlier: Compress nightly postgres dumps with zstd" in reason


def test_near_duplicates_against_earlier_draws_match_a_plain_all_pairs_search():
    from plugins.stages.similarity import content_words, find_duplicates, similarity

    rng = random.Random(5)
    vocabulary = "nginx cache proxy cron backup prune gpg sign tarball sqlite index query log parse json csv".split()
    texts = [" ".join(rng.sample(vocabulary, rng.randint(2, 5))) for _ in range(300)]
    earlier, new = texts[:120], texts[120:]
    found = {d.index: d for d in find_duplicates(new, 0.6, earlier)}
    kept = [(True, i, content_words(t)) for i, t in enumerate(earlier)]
    for index, text in enumerate(new):
        words = content_words(text)
        scores = [(similarity(words, w), k) for k, (_e, _i, w) in enumerate(kept)]
        best = max(scores, default=(0.0, -1))
        if best[0] >= 0.6:
            from_earlier, of_index, _w = kept[best[1]]
            assert found[index].of_earlier == from_earlier and found[index].of_index == of_index
            assert found[index].score == round(best[0], 3)
        else:
            assert index not in found
            kept.append((False, index, words))


def test_the_report_page_says_how_far_the_campaign_got(tmp_path, page):
    """report.html, opened in headless Chromium, shows the target line the summary holds."""
    config = campaign_pipeline(tmp_path, target={"verified_tasks": 20, "max_draws": 2})
    result = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), env={"TERMIGEN_HTML_PAGES": "1"})
    assert result.returncode == 5, result.stderr
    page.open(tmp_path / "run" / "report.html")
    line = page.locator("#target").inner_text()
    reached = summary(tmp_path)["target"]["goals"]["verified_tasks"]["reached"]
    assert line.startswith("Target (not met):") and f"{reached} of 20 verified tasks" in line
    assert "after 2 draw(s) of the first stage: run.target.max_draws (2) draws were made" in line
    page.screenshot_to("report-campaign-not-met")
    page.assert_clean()


def test_a_campaign_killed_mid_draw_resumes_and_pays_no_check_twice(tmp_path):
    """SIGKILL once the second draw's seeds are being checked; the resume replays every draw and
    the target is met with each seed checked (paid) once, but for checks cut off in flight."""
    config = campaign_pipeline(tmp_path, target={"verified_tasks": 5}, limit=2)
    raw = yaml.safe_load(config.read_text())
    raw["stages"][1]["with"] = {"sleep_s": 0.4}
    write_yaml(config, raw)
    proc = subprocess.Popen(
        [sys.executable, "-m", "termigen_core", "run", str(config), "--plugin", str(TEST_PLUGIN)],
        env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len([s for s in _source_steps_or_none(tmp_path) if s[1] == "done"]) >= 2, proc, "two draws were made")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    paid_before = _paid_checks(tmp_path)
    resumed = termigen_run(config)
    assert resumed.returncode == 0, resumed.stderr
    data = summary(tmp_path)
    assert data["target"]["met"] is True
    checks = _paid_checks(tmp_path)
    # every seed drawn was checked exactly once (a cut-off call was never answered, so never recorded)
    drawn = sum(n for _id, status, n in source_steps(tmp_path) if status == "done")
    assert sum(checks.values()) == drawn and set(checks.values()) == {1}
    assert set(paid_before) <= set(checks)


def _source_steps_or_none(tmp_path: Path) -> list[tuple[str, str, int]]:
    try:
        return source_steps(tmp_path) if (tmp_path / "run" / "run.db").exists() else []
    except sqlite3.OperationalError:  # the store is being created
        return []


def _paid_checks(tmp_path: Path) -> dict[str, int]:
    with sqlite3.connect(tmp_path / "run" / "run.db") as db:
        rows = db.execute("SELECT request FROM llm_calls WHERE role = 'worker' AND status = 'ok' AND source = 'backend'").fetchall()
    asked = [json.loads(r[0])["messages"][-1]["content"] for r in rows]
    return {text: asked.count(text) for text in set(asked)}
