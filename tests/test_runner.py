"""Whole runs through the real CLI: resume, failures, budget, kill -9, refusals, secrets, hooks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from support.openai_server import OpenAIServer, completion

from helpers import ROOT, TEST_PLUGIN, read_jsonl, run_cli, write_yaml


def pipeline(tmp_path: Path, *, n: int = 5, ask: dict | None = None, llm: dict | None = None, run: dict | None = None, **extra) -> Path:
    (tmp_path / "script.yaml").write_text('- role: worker\n  response: "fine"\n  cost_usd: 0.01\n', encoding="utf-8")
    data = {
        "version": 1,
        "run": {"out": str(tmp_path / "run"), "concurrency": 3, **(run or {})},
        "llm": {"default": llm or {"backend": "scripted", "script": "script.yaml"}},
        "stages": [{"use": "count", "with": {"n": n}}, {"use": "ask", "with": ask or {}}],
        "exports": [{"use": "jsonl", "with": {"path": "export/items.jsonl"}}],
        **extra,
    }
    return write_yaml(tmp_path / "pipeline.yaml", data)


def termigen_run(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), *args, env=env)


def db_rows(run_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(run_dir / "run.db", timeout=30) as db:
        return db.execute(sql).fetchall()


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_seeds_and_propose_pipeline_runs_rejects_and_resumes_without_paying_twice(tmp_path):
    example = tmp_path / "quickstart"
    shutil.copytree(ROOT / "tests" / "fixtures" / "propose_only", example)
    run_dir = tmp_path / "qs"
    first = run_cli("run", str(example / "pipeline.yaml"), "--out", str(run_dir))
    assert first.returncode == 0, first.stderr
    result = summary(run_dir)
    assert result["status"] == "completed"
    specs = read_jsonl(run_dir / "export" / "specs.jsonl")
    assert len(specs) == 4 and all(s["kind"] == "spec" for s in specs)
    assert {s["data"]["category"] for s in specs} == {"software_build", "data_processing"}
    gcc = next(s for s in specs if "local library" in s["data"]["spec"]["title"])
    assert gcc["meta"]["propose_rounds"] == 2  # refined after the evaluator's feedback
    reasons = {f["stage"]: f["reason"] for f in result["failures"]}
    assert reasons["seeds"].startswith("near-duplicate")
    assert reasons["propose"].startswith("spec below min_score 4 after 2 rounds")
    # a malformed proposer reply was retried with the parse error shown to the model
    retried = db_rows(run_dir, "SELECT request FROM llm_calls WHERE role='proposer' AND request LIKE '%could not be used%'")
    assert len(retried) == 1
    paid = result["llm"]["paid_calls_total"]
    assert paid == result["llm"]["this_invocation"]["paid"] > 0
    # the run report: per stage items in/out, rejections, LLM calls and tokens
    seeds, propose = result["stages"]
    assert (seeds["in"], seeds["out"], seeds["rejected"]) == (6, 5, 1)
    assert (propose["in"], propose["out"], propose["rejected"], propose["failed"]) == (5, 4, 1, 0)
    assert seeds["llm_calls"] == 2 and propose["llm_calls"] == paid - 2 and propose["tokens"] > 0
    report = (run_dir / "report.md").read_text()
    assert "| 1 propose | 5 | 4 | 4 | 1 | 0 | 0 |" in report and "spec below min_score" in report

    again = run_cli("run", str(example / "pipeline.yaml"), "--out", str(run_dir))
    assert again.returncode == 0, again.stderr
    resumed = summary(run_dir)
    assert resumed["llm"]["this_invocation"].get("paid", 0) == 0
    assert resumed["llm"]["paid_calls_total"] == paid
    assert read_jsonl(run_dir / "export" / "specs.jsonl") == specs


def test_one_item_failing_does_not_stop_the_others(tmp_path):
    config = pipeline(tmp_path, n=5, ask={"fail_items": ["item-002"]})
    result = termigen_run(config)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    data = summary(run_dir)
    assert data["final_items"] == 4
    assert data["failures"] == [
        {"item": "item-002", "stage": "ask", "status": "failed", "reason": "RuntimeError: planned failure for item-002"}
    ]
    assert "item-002 failed: RuntimeError: planned failure" in result.stderr
    assert len(read_jsonl(run_dir / "export" / "items.jsonl")) == 4
    # a resume retries the failed step only; finished ones are skipped
    again = termigen_run(config)
    assert again.returncode == 0
    attempts = dict(db_rows(run_dir, "SELECT item_id, attempts FROM stage_runs WHERE stage_index=1"))
    assert attempts["item-002"] == 2 and attempts["item-000"] == 1


def test_a_run_directory_of_another_pipeline_is_refused(tmp_path):
    config = pipeline(tmp_path, n=2)
    assert termigen_run(config).returncode == 0
    # budgets and concurrency may change between invocations
    assert termigen_run(config, "-s", "run.concurrency=1", "-s", "run.budget_usd=9").returncode == 0
    changed = termigen_run(config, "-s", "stages[0].with.n=3")
    assert changed.returncode == 2
    assert "holds a run of a different pipeline" in changed.stderr
    assert "--out" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_budget_stops_cleanly_and_resumes_without_repeating_calls(tmp_path):
    config = pipeline(tmp_path, n=6, run={"concurrency": 1, "budget_usd": 0.025})
    run_dir = tmp_path / "run"
    stopped = termigen_run(config)
    assert stopped.returncode == 3, stopped.stderr
    data = summary(run_dir)
    assert data["status"] == "budget_exhausted"
    assert "budget is spent" in data["message"] and "run.budget_usd" in data["message"]
    assert data["llm"]["paid_calls_total"] == 3
    assert data["final_items"] == 3  # finished items are exported even when the budget stops the run
    pending = db_rows(run_dir, "SELECT COUNT(*) FROM stage_runs WHERE stage_index=1 AND status NOT IN ('done')")[0][0]
    assert pending <= 1
    resumed = termigen_run(config, "-s", "run.budget_usd=1")
    assert resumed.returncode == 0, resumed.stderr
    data = summary(run_dir)
    assert data["status"] == "completed" and data["final_items"] == 6
    assert data["llm"]["paid_calls_total"] == 6
    assert data["llm"]["cost_usd"] == pytest.approx(0.06)


def test_kill_9_loses_at_most_the_calls_in_flight(tmp_path):
    """A real SIGKILL mid-run, then a resume: no finished LLM call is ever paid twice."""
    concurrency, n, calls = 4, 24, 2
    with OpenAIServer(default=completion("an answer")) as server:
        config = pipeline(
            tmp_path, n=n, ask={"calls": calls, "sleep_s": 0.05},
            llm={"backend": "litellm", "model": "openai/test-model", "api_base": server.base_url, "api_key": "sk-test"},
            run={"concurrency": concurrency},
        )
        run_dir = tmp_path / "run"
        env = {**os.environ, "TERMIGEN_HOME": os.environ["TERMIGEN_HOME"]}
        proc = subprocess.Popen(
            [sys.executable, "-m", "termigen_core", "run", str(config), "--plugin", str(TEST_PLUGIN)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            done = 0
            while time.monotonic() < deadline and proc.poll() is None:
                if (run_dir / "run.db").exists():
                    try:
                        done = db_rows(run_dir, "SELECT COUNT(*) FROM stage_runs WHERE stage_index=1 AND status='done'")[0][0]
                    except sqlite3.OperationalError:
                        done = 0
                if done >= 6:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        before_kill = len(server.requests)
        recorded = db_rows(run_dir, "SELECT COUNT(*) FROM llm_calls WHERE status='ok' AND source='backend'")[0][0]
        assert recorded < n * calls

        resumed = termigen_run(config)
        assert resumed.returncode == 0, resumed.stderr
        data = summary(run_dir)
        assert data["status"] == "completed" and data["final_items"] == n
        invocations = db_rows(run_dir, "SELECT status FROM invocations ORDER BY id")
        assert [s for (s,) in invocations] == ["killed", "completed"]

        # a request cut off by the kill before its body arrived was never answered: not a call
        questions = Counter(r["messages"][-1]["content"] for r in server.requests if "messages" in r)
        assert set(questions) == {f"item {i} question {k}" for i in range(n) for k in range(calls)}
        repeated = sum(c - 1 for c in questions.values())
        # only calls sent but not yet recorded when the process died may be sent again
        assert repeated <= before_kill - recorded <= concurrency
        assert data["llm"]["this_invocation"]["paid"] == n * calls - recorded
        keys = db_rows(run_dir, "SELECT scope, cache_key, occurrence, COUNT(*) FROM llm_calls WHERE status='ok' GROUP BY 1, 2, 3")
        assert all(count == 1 for *_, count in keys) and len(keys) == n * calls


def test_secrets_from_the_environment_are_used_but_never_stored(tmp_path):
    secret = "sk-test-8c1f9e77d0a4-do-not-leak"
    with OpenAIServer(default=completion("fine")) as server:
        config = pipeline(
            tmp_path, n=2,
            llm={"backend": "litellm", "model": "openai/test-model", "api_base": server.base_url, "api_key": {"$env": "MY_LLM_KEY"}},
        )
        missing = termigen_run(config)
        assert missing.returncode == 2
        assert "llm.default.api_key: environment variable MY_LLM_KEY is not set" in missing.stderr
        result = termigen_run(config, env={"MY_LLM_KEY": secret})
        assert result.returncode == 0, result.stderr
        assert any(h.get("authorization") == f"Bearer {secret}" for h in server.request_headers)
    run_dir = tmp_path / "run"
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"secret leaked into {path}"
    assert secret not in result.stdout + result.stderr


def test_missing_provider_key_is_reported_before_any_work(tmp_path):
    config = pipeline(tmp_path, n=2, llm={"backend": "litellm", "model": "anthropic/claude-sonnet-4-5"})
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "termigen_core", "run", str(config), "--plugin", str(TEST_PLUGIN)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "run.db").exists()


def test_a_stopped_docker_daemon_is_a_clear_error(tmp_path):
    config = pipeline(tmp_path, n=2)
    data = __import__("yaml").safe_load(config.read_text())
    data["stages"][1] = {"use": "shell"}
    data["executor"] = {"use": "docker", "with": {"base_url": f"unix://{tmp_path}/no-docker.sock"}}
    write_yaml(config, data)
    result = termigen_run(config)
    assert result.returncode == 4, result.stderr
    assert "no-docker.sock" in result.stderr
    assert "Traceback" not in result.stderr


def test_lifecycle_hooks_reach_plugins_and_a_raising_listener_breaks_nothing(tmp_path):
    events = tmp_path / "events.jsonl"
    tracker = tmp_path / "tracker.py"
    tracker.write_text(
        "import json, os\n"
        "from termigen_core import hookimpl\n"
        f"OUT = {str(events)!r}\n"
        "def _log(**kw):\n"
        "    with open(OUT, 'a') as f:\n"
        "        f.write(json.dumps(kw, default=str) + '\\n')\n"
        "@hookimpl\ndef termigen_run_start(run_id, run_dir, config): _log(event='run_start')\n"
        "@hookimpl\ndef termigen_stage_start(run_id, stage_index, stage_name): _log(event='stage_start', stage=stage_name)\n"
        "@hookimpl\ndef termigen_item_event(run_id, stage_index, stage_name, item, status, reason):\n"
        "    _log(event='item', stage=stage_name, item=item.id, status=status)\n"
        "    raise RuntimeError('listener bug')\n"
        "@hookimpl\ndef termigen_llm_call(run_id, record): _log(event='llm', role=record['role'], cached=record['cached'])\n"
        "@hookimpl\ndef termigen_run_end(run_id, status, summary): _log(event='run_end', status=status)\n"
    )
    config = pipeline(tmp_path, n=3)
    result = termigen_run(config, "--plugin", str(tracker))
    assert result.returncode == 0, result.stderr
    logged = read_jsonl(events)
    kinds = [e["event"] for e in logged]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert logged[-1]["status"] == "completed"
    assert sum(1 for e in logged if e["event"] == "item" and e["status"] == "done") == 3
    assert sum(1 for e in logged if e["event"] == "llm") == 3
    assert {"stage_start"} <= set(kinds)
    assert summary(tmp_path / "run")["final_items"] == 3
