"""One run per run directory, orphaned containers reaped on resume, Ctrl-C stops model calls.

All through the real CLI in subprocesses, real SQLite, real signals; the container test
uses the real Docker engine and the Ctrl-C test a real HTTP server behind litellm.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from support.openai_server import OpenAIServer, slow

from helpers import TEST_PLUGIN, default_sigint, run_cli, stop, wait_for, write_yaml

LABEL_RUN = "io.termigen.run"


def pipeline(tmp_path: Path, stage: dict, *, n: int, llm: dict | None = None, run: dict | None = None, **extra) -> Path:
    (tmp_path / "script.yaml").write_text('- role: worker\n  response: "fine"\n', encoding="utf-8")
    data = {
        "version": 1,
        "run": {"out": str(tmp_path / "run"), "concurrency": 2, **(run or {})},
        "llm": {"default": llm or {"backend": "scripted", "script": "script.yaml"}},
        "stages": [{"use": "count", "with": {"n": n}}, stage],
        **extra,
    }
    return write_yaml(tmp_path / "pipeline.yaml", data)


def start(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "termigen_core", "run", str(config), "--plugin", str(TEST_PLUGIN), "--no-progress"],
        env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=log.open("w"), preexec_fn=default_sigint,
    )


def db_rows(run_dir: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(run_dir / "run.db", timeout=30) as db:
            return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def done_steps(run_dir: Path) -> int:
    rows = db_rows(run_dir, "SELECT COUNT(*) FROM stage_runs WHERE stage_index=1 AND status='done'")
    return rows[0][0] if rows else 0


def test_a_second_run_is_refused_while_the_first_lives_and_kill_9_frees_the_directory(tmp_path):
    n = 8
    config = pipeline(tmp_path, {"use": "ask", "with": {"sleep_s": 0.4}}, n=n, run={"concurrency": 1})
    run_dir = (tmp_path / "run").resolve()
    first = start(config, tmp_path / "first.log")
    try:
        wait_for(lambda: done_steps(run_dir) >= 1, first, "a first step was done")

        started = time.monotonic()
        second = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), timeout=60)
        assert time.monotonic() - started < 30  # refused at once, not after waiting
        assert second.returncode == 2, second.stderr
        assert f"run directory {run_dir} is in use by PID {first.pid} (started at " in second.stderr
        assert "); wait for it or use another --out" in second.stderr
        assert "Traceback" not in second.stderr

        status = run_cli("status", str(run_dir), "--json", timeout=60)  # read-only: works on a running directory
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["invocations"][-1]["status"] == "running"

        assert first.poll() is None, "the first run was disturbed"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first)
    assert done_steps(run_dir) < n

    third = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), timeout=120)
    assert third.returncode == 0, third.stderr
    assert json.loads((run_dir / "summary.json").read_text())["final_items"] == n
    # the refused run never started an invocation, nor marked the live one as killed
    assert [s for (s,) in db_rows(run_dir, "SELECT status FROM invocations ORDER BY id")] == ["killed", "completed"]
    keys = db_rows(run_dir, "SELECT scope, cache_key, occurrence, COUNT(*) FROM llm_calls WHERE status='ok' AND source='backend' GROUP BY 1, 2, 3")
    assert len(keys) == n and all(count == 1 for *_, count in keys)


def run_containers(client, run_id: str) -> set[str]:
    # the low-level list: containers.list() inspects each one and races with their removal (404)
    return {c["Id"] for c in client.api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})}


def test_a_resume_removes_the_containers_a_killed_invocation_left_behind(tmp_path, docker_client):
    base = "termigen/base:bookworm"
    try:
        docker_client.images.get(base)
    except Exception:  # noqa: BLE001
        pytest.skip(f"{base} is not built (termigen images bootstrap)")
    n = 2
    config = pipeline(
        tmp_path, {"use": "shell", "with": {"command": "sleep 600"}}, n=n,
        executor={"use": "docker"}, images={"base": base},
    )
    run_dir = (tmp_path / "run").resolve()

    def run_id() -> str:
        rows = db_rows(run_dir, "SELECT value FROM meta WHERE key='run_id'")
        return rows[0][0] if rows else ""

    first = start(config, tmp_path / "first.log")
    try:
        wait_for(lambda: run_id() and len(run_containers(docker_client, run_id())) == n, first, "both sandboxes were open")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first)
    rid = run_id()
    orphans = run_containers(docker_client, rid)
    assert len(orphans) == n  # kill -9 closes nothing: the containers are left behind

    log = tmp_path / "resume.log"
    resume = start(config, log)
    try:
        wait_for(lambda: f"removed {n} container(s) left behind" in log.read_text(), resume, "the orphans were reaped")
        assert not orphans & run_containers(docker_client, rid)  # the old ones are gone
        wait_for(lambda: len(run_containers(docker_client, rid)) == n, resume, "the resume opened its own sandboxes")
        resume.send_signal(signal.SIGINT)  # Ctrl-C cancels the running commands and closes the sandboxes
        assert resume.wait(timeout=60) == 130, log.read_text()
    finally:
        stop(resume)
        for cid in run_containers(docker_client, rid):
            docker_client.containers.get(cid).remove(force=True)
    assert f"run {rid}" in log.read_text()
    assert not run_containers(docker_client, rid)


def test_ctrl_c_sends_no_new_model_call_and_the_resume_repeats_none(tmp_path):
    items, calls, workers = 2, 10, 2
    with OpenAIServer(default=slow(0.3, "an answer")) as server:
        config = pipeline(
            tmp_path, {"use": "ask", "with": {"calls": calls}}, n=items,
            llm={"backend": "litellm", "model": "openai/test-model", "api_base": server.base_url, "api_key": "sk-test"},
            run={"concurrency": workers},
        )
        run_dir = (tmp_path / "run").resolve()

        def answered() -> int:
            rows = db_rows(run_dir, "SELECT COUNT(*) FROM llm_calls WHERE status='ok' AND source='backend'")
            return rows[0][0] if rows else 0

        log = tmp_path / "first.log"
        first = start(config, log)
        try:
            wait_for(lambda: answered() >= 3, first, "a few calls were answered")
            first.send_signal(signal.SIGINT)
            sent_at_cancel = len(server.requests)
            assert first.wait(timeout=60) == 130, log.read_text()
        finally:
            stop(first)
        sent = len(server.requests)
        # only the calls in flight (at most one per worker) may still reach the server
        assert sent <= sent_at_cancel + workers, (sent, sent_at_cancel)
        assert sent < items * calls
        recorded = answered()
        assert recorded == sent  # every call sent was answered and kept: nothing to pay again
        assert not db_rows(run_dir, "SELECT 1 FROM stage_runs WHERE stage_index=1 AND status IN ('failed', 'rejected', 'done')")
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

        resumed = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["final_items"] == items
        assert summary["llm"]["this_invocation"]["paid"] == items * calls - recorded
        assert summary["llm"]["this_invocation"]["replayed"] == recorded

    questions = Counter(r["messages"][-1]["content"] for r in server.requests if "messages" in r)
    assert questions == Counter({f"item {i} question {k}": 1 for i in range(items) for k in range(calls)})
    keys = db_rows(run_dir, "SELECT scope, cache_key, occurrence, COUNT(*) FROM llm_calls WHERE status='ok' AND source='backend' GROUP BY 1, 2, 3")
    assert len(keys) == items * calls and all(count == 1 for *_, count in keys)
