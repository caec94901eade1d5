"""How a run ends, told honestly: failure isolation in seeding, exit codes, infrastructure vs task
failures, the run-stopping errors, and litellm kept off the console.

Every run goes through the real CLI in a subprocess (``tests/helpers.py:run_cli``) on a real
SQLite run store; models are the scripted backend or litellm against the loopback
OpenAI-compatible server. No container engine is needed.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import yaml
from support.openai_server import OpenAIServer, completion, http_error, server_error

from helpers import FIXTURES, ROOT, TEST_PLUGIN, run_cli, write_yaml
from termigen_core.errors import InfrastructureError, ParseError
from termigen_core.failures import classify_failure
from termigen_core.store import RunStore

HEALTH_PLUGIN = FIXTURES / "health_components.py"
EXIT_PROBLEMS = 5


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def db_rows(run_dir: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(run_dir / "run.db", timeout=30) as db:
        return db.execute(sql, params).fetchall()


def judged_pipeline(tmp_path: Path, *, n: int = 4, judge: dict | None = None, run: dict | None = None) -> Path:
    """count → judge: outcomes decided by the judge's config, no model calls."""
    (tmp_path / "script.yaml").write_text('- response: "unused"\n', encoding="utf-8")
    return write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "run": {"out": str(tmp_path / "run"), "concurrency": 2, **(run or {})},
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "stages": [{"use": "count", "with": {"n": n}}, {"use": "judge", "with": judge or {}}],
        "exports": [{"use": "jsonl", "with": {"path": "export/items.jsonl"}}],
    })


def run_judged(config: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), "--plugin", str(HEALTH_PLUGIN), *args)


# --- taxonomy seeding: one category's failure is isolated ----------------------------------------


def seeding_example(tmp_path: Path, *, extra_rules: list[dict], categories: list[str]) -> Path:
    """The propose_only fixture with more categories and rules put first in its script."""
    example = tmp_path / "example"
    shutil.copytree(ROOT / "tests" / "fixtures" / "propose_only", example)
    rules = yaml.safe_load((example / "script.yaml").read_text())
    write_yaml(example / "script.yaml", extra_rules + rules)
    data = yaml.safe_load((example / "pipeline.yaml").read_text())
    data["stages"][0]["with"]["source"]["with"]["categories"] = categories
    return write_yaml(example / "pipeline.yaml", data)


def test_one_malformed_category_is_rejected_and_the_others_go_on(tmp_path):
    # every reply about the algorithms category is prose, the re-asks included
    malformed = {"role": "seeder", "context": "Algorithms & Logic Puzzles", "response": "I would rather not."}
    config = seeding_example(tmp_path, extra_rules=[malformed], categories=["software_build", "algorithms", "data_processing"])
    run_dir = tmp_path / "run"
    result = run_cli("run", str(config), "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    data = summary(run_dir)
    assert data["status"] == "completed" and data["exit_code"] == 0
    assert data["final_items"] == 4  # the two other categories went through propose as before
    (category,) = [f for f in data["failures"] if f["item"] == "category:algorithms"]
    assert category["status"] == "rejected" and category["stage"] == "seeds"
    assert "reply still malformed after 3 attempts" in category["reason"]
    assert data["health"]["failed_items"] == 0  # a rejection is a quality gate, not a failure
    report = (run_dir / "report.md").read_text()
    assert "`category:algorithms` at seeds (rejected)" in report
    status = run_cli("status", str(run_dir))
    assert status.returncode == 0, status.stderr
    assert "rejected: category:algorithms at seeds: seeding category algorithms" in status.stdout

    # a resume replays everything, the malformed answers included: nothing is paid, same outcome
    again = run_cli("run", str(config), "--out", str(run_dir))
    assert again.returncode == 0, again.stderr
    resumed = summary(run_dir)
    assert resumed["llm"]["this_invocation"].get("paid", 0) == 0
    assert resumed["final_items"] == 4
    assert any(f["item"] == "category:algorithms" and f["status"] == "rejected" for f in resumed["failures"])


def test_every_category_failing_fails_the_stage(tmp_path):
    malformed = {"role": "seeder", "response": "no JSON here"}
    config = seeding_example(tmp_path, extra_rules=[malformed], categories=["software_build", "algorithms"])
    run_dir = tmp_path / "run"
    result = run_cli("run", str(config), "--out", str(run_dir))
    assert result.returncode == 1, result.stderr
    data = summary(run_dir)
    assert data["status"] == "failed"
    assert "the first stage (seeds) failed" in data["message"] and "seeding failed for every category (2)" in data["message"]
    # the stage itself failed, and each category is named with its reason
    assert {f["item"] for f in data["failures"]} == {"__source__", "category:software_build", "category:algorithms"}


def test_a_spent_budget_during_seeding_stops_resumably_and_is_no_category_failure(tmp_path):
    costly = [
        {"role": "seeder", "match": "Software Build", "json": {"seeds": ["Fix a broken Makefile dependency"]}, "cost_usd": 0.02},
        {"role": "seeder", "match": "Algorithms", "json": {"seeds": ["Solve a sliding puzzle from a text file"]}, "cost_usd": 0.02},
    ]
    config = seeding_example(tmp_path, extra_rules=costly, categories=["software_build", "algorithms"])
    data = yaml.safe_load(config.read_text())
    data["stages"] = data["stages"][:1]
    data["run"]["budget_usd"] = 0.01
    write_yaml(config, data)
    run_dir = tmp_path / "run"
    stopped = run_cli("run", str(config), "--out", str(run_dir))
    assert stopped.returncode == 3, stopped.stderr
    assert summary(run_dir)["status"] == "budget_exhausted"
    assert db_rows(run_dir, "SELECT item_id FROM stage_runs WHERE item_id LIKE 'category:%'") == []
    resumed = run_cli("run", str(config), "--out", str(run_dir), "-s", "run.budget_usd=1")
    assert resumed.returncode == 0, resumed.stderr
    data = summary(run_dir)
    assert data["final_items"] == 2 and data["llm"]["this_invocation"]["replayed"] == 1


def test_a_category_whose_call_failed_is_asked_again_on_resume(tmp_path):
    """An infrastructure failure of one category: recorded as failed, re-asked (only it) on resume."""
    with OpenAIServer(default=http_error(400, "unexpected request")) as server:
        config = write_yaml(tmp_path / "pipeline.yaml", {
            "version": 1,
            "run": {"out": str(tmp_path / "run")},
            "llm": {"default": {
                "backend": "litellm", "model": "openai/test-model", "api_base": server.base_url, "api_key": "sk-test",
                "max_retries": 1, "retry_base_s": 0, "retry_max_s": 0,
            }},
            "stages": [{"use": "seeds", "with": {"source": "taxonomy", "options": {
                "per_category": 2, "categories": ["software_build", "algorithms"]}}}],
        })
        server.enqueue(
            completion('{"seeds": ["Fix a broken Makefile dependency", "Repair a CMake toolchain file"]}'),
            server_error(500), server_error(503),
        )
        run_dir = tmp_path / "run"
        first = run_cli("run", str(config))
        assert first.returncode == 0, first.stderr  # 1 failed of 3 items, 2 final seeds
        data = summary(run_dir)
        assert data["final_items"] == 2
        (failure,) = data["infrastructure_failures"]
        assert failure["item"] == "category:algorithms" and failure["stage"] == "seeds"
        assert "still failing after 2 attempts" in failure["reason"]
        seeds = data["stages"][0]
        assert (seeds["failed"], seeds["failed_infrastructure"], seeds["failed_task"]) == (1, 1, 0)
        assert data["health"]["failed_infrastructure"] == 1
        assert "| 1 | 0 |" in next(line for line in (run_dir / "report.md").read_text().splitlines() if line.startswith("| 0 seeds"))
        status = run_cli("status", str(run_dir))
        assert "failed (infrastructure): category:algorithms at seeds" in status.stdout

        asked = len(server.requests)
        server.enqueue(completion('{"seeds": ["Solve a sliding puzzle read from a text file"]}'))
        again = run_cli("run", str(config))
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == asked + 1  # only the failed category was asked again
        data = summary(run_dir)
        assert data["final_items"] == 3 and data["failures"] == [] and data["infrastructure_failures"] == []
        assert data["llm"]["this_invocation"] == {"paid": 1, "replayed": 1}
        assert "algorithms" in server.requests[-1]["messages"][-1]["content"].lower()
        # and a third run has nothing left to do
        third = run_cli("run", str(config))
        assert third.returncode == 0 and len(server.requests) == asked + 1


# --- exit codes ------------------------------------------------------------------------------------


def test_every_item_failing_exits_non_zero_and_says_why(tmp_path):
    config = judged_pipeline(tmp_path, n=3, judge={"fail_items": ["item-000", "item-001", "item-002"]})
    result = run_judged(config)
    assert result.returncode == EXIT_PROBLEMS, result.stderr
    data = summary(tmp_path / "run")
    assert data["status"] == "completed_with_problems" and data["exit_code"] == EXIT_PROBLEMS
    assert "no final item" in data["message"] and "3 of 3 items failed" in data["message"]
    assert data["health"] == {
        "finished_items": 3, "failed_items": 3, "failed_infrastructure": 0, "failed_task": 3,
        "failed_fraction": 1.0, "max_failed_fraction": 0.5, "problems": data["health"]["problems"],
    }
    assert "completed_with_problems — completed, but no final item" in result.stdout
    assert "exit code 5" in result.stdout
    report = (tmp_path / "run" / "report.md").read_text()
    assert "no final item" in report and "3 task" in report


def test_file_seeds_whose_proposals_all_fail_do_not_pass_for_a_success(tmp_path):
    """The reported case: file seeds → propose, every proposer reply malformed; it used to exit 0."""
    (tmp_path / "seeds.txt").write_text(
        "Rotate nginx logs with logrotate\nMerge CSV files with mismatched headers\nFix a Makefile missing -lm\n",
        encoding="utf-8",
    )
    write_yaml(tmp_path / "script.yaml", [{"role": "proposer", "response": "Sure, here is a nice task!"}])
    config = write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "run": {"out": str(tmp_path / "run")},
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "stages": [
            {"use": "seeds", "with": {"source": "file", "options": {"path": "seeds.txt"}}},
            {"use": "propose", "with": {"max_rounds": 1}},
        ],
    })
    result = run_cli("run", str(config))
    assert result.returncode == EXIT_PROBLEMS, result.stderr
    data = summary(tmp_path / "run")
    assert data["final_items"] == 0
    assert data["message"].startswith("completed, but no final item")
    assert "exit code 5: completed, but no final item" in result.stdout
    # a reply still malformed after the re-asks is a quality gate (rejected), never an infrastructure failure
    assert len(data["failures"]) == 3 and all("reply still malformed" in f["reason"] for f in data["failures"])
    assert data["infrastructure_failures"] == [] and data["health"]["failed_infrastructure"] == 0


def test_a_failed_share_over_the_limit_exits_non_zero(tmp_path):
    config = judged_pipeline(tmp_path, n=4, judge={"fail_items": ["item-000", "item-001", "item-002"]})
    result = run_judged(config)
    assert result.returncode == EXIT_PROBLEMS, result.stderr
    data = summary(tmp_path / "run")
    assert data["final_items"] == 1
    assert "3 of 4 items failed (75%, more than run.max_failed_fraction 50%)" in data["message"]
    assert "no final item" not in data["message"]
    # the limit is a run setting: changing it does not change the run's identity
    relaxed = run_judged(config, "-s", "run.max_failed_fraction=0.8")
    assert relaxed.returncode == 0, relaxed.stderr
    assert summary(tmp_path / "run")["status"] == "completed"


def test_a_failed_share_at_the_limit_is_still_a_success(tmp_path):
    config = judged_pipeline(tmp_path, n=4, judge={"fail_items": ["item-000", "item-001"]})
    result = run_judged(config)
    assert result.returncode == 0, result.stderr
    assert summary(tmp_path / "run")["health"]["failed_fraction"] == 0.5


def test_rejections_never_count_as_failures_but_nothing_produced_is_not_a_success(tmp_path):
    some = tmp_path / "some"
    some.mkdir()
    config = judged_pipeline(some, n=4, judge={"reject_items": ["item-000", "item-001", "item-002"]})
    result = run_judged(config)
    assert result.returncode == 0, result.stderr  # 75% rejected, 1 produced: a healthy run
    data = summary(some / "run")
    assert data["status"] == "completed" and data["health"]["failed_items"] == 0

    every = tmp_path / "every"
    every.mkdir()
    config = judged_pipeline(every, n=2, judge={"reject_items": ["item-000", "item-001"]})
    result = run_judged(config)
    assert result.returncode == EXIT_PROBLEMS, result.stderr
    data = summary(every / "run")
    assert data["message"].startswith("completed, but no final item") and "failed (" not in data["message"]


# --- infrastructure failures, apart from task failures ------------------------------------------------


def test_infrastructure_failures_are_counted_apart(tmp_path):
    (tmp_path / "script.yaml").write_text(
        "- role: worker\n  match: '^item [01] '\n  error: server\n  times: 5\n  response: never\n"
        "- role: worker\n  response: fine\n",
        encoding="utf-8",
    )
    config = write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "run": {"out": str(tmp_path / "run")},
        "llm": {"default": {"backend": "scripted", "script": "script.yaml", "max_retries": 1, "retry_base_s": 0, "retry_max_s": 0}},
        "stages": [{"use": "count", "with": {"n": 6}}, {"use": "ask", "with": {"fail_items": ["item-005"]}}],
    })
    result = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN))
    assert result.returncode == 0, result.stderr  # 3 of 6 failed: at the limit, not over it
    data = summary(tmp_path / "run")
    ask = data["stages"][1]
    assert (ask["failed"], ask["failed_infrastructure"], ask["failed_task"]) == (3, 2, 1)
    assert {f["item"] for f in data["infrastructure_failures"]} == {"item-000", "item-001"}
    assert data["health"]["failed_infrastructure"] == 2 and data["health"]["failed_task"] == 1
    kinds = dict(db_rows(tmp_path / "run", "SELECT item_id, failure_kind FROM stage_runs WHERE status='failed'"))
    assert kinds == {"item-000": "infrastructure", "item-001": "infrastructure", "item-005": "task"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| 1 ask | 6 | 3 | 3 | 0 | 3 | 0 | 2 | 1 |" in report
    assert "`item-000` at ask (failed, infrastructure)" in report and "`item-005` at ask (failed, task)" in report
    status = run_cli("status", str(tmp_path / "run"))
    assert re.search(r"stage 1 ask\s+failed \(infrastructure\)\s+2", status.stdout), status.stdout
    assert re.search(r"stage 1 ask\s+failed \(task\)\s+1", status.stdout), status.stdout
    as_json = json.loads(run_cli("status", str(tmp_path / "run"), "--json").stdout)
    assert {f["item"]: f["kind"] for f in as_json["failures"]} == {"item-000": "infrastructure", "item-001": "infrastructure", "item-005": "task"}
    assert as_json["last_run"]["exit_code"] == 0
    # stricter limit: the same run directory now exits 5
    strict = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), "-s", "run.max_failed_fraction=0.4")
    assert strict.returncode == EXIT_PROBLEMS


def test_a_full_disk_is_an_infrastructure_failure(tmp_path):
    config = judged_pipeline(tmp_path, n=3, judge={"disk_full_items": ["item-001"]})
    result = run_judged(config)
    assert result.returncode == 0, result.stderr
    data = summary(tmp_path / "run")
    (failure,) = data["infrastructure_failures"]
    assert failure["item"] == "item-001" and "No space left on device" in failure["reason"]


def test_classify_failure():
    assert classify_failure(InfrastructureError("api down")) == "infrastructure"
    assert classify_failure(OSError(errno.ENOSPC, "No space left on device")) == "infrastructure"
    assert classify_failure(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) == "infrastructure"
    assert classify_failure(TimeoutError("read timed out")) == "infrastructure"
    assert classify_failure(sqlite3.OperationalError("database or disk is full")) == "infrastructure"
    assert classify_failure(FileNotFoundError(errno.ENOENT, "no such file")) == "task"
    assert classify_failure(ParseError("bad JSON")) == "task"
    assert classify_failure(ValueError("bad value")) == "task"

    def library_error(module: str, name: str, base: type = Exception) -> type:
        return type(name, (base,), {"__module__": module})

    api_error = library_error("docker.errors", "APIError")
    assert classify_failure(api_error("500 Server Error: Internal Server Error")) == "infrastructure"
    assert classify_failure(library_error("docker.errors", "NotFound", api_error)("No such image")) == "task"
    assert classify_failure(library_error("docker.errors", "BuildError")("RUN make failed")) == "task"
    assert classify_failure(library_error("requests.exceptions", "ConnectionError", OSError)("aborted")) == "infrastructure"
    assert classify_failure(library_error("httpx", "ConnectError")("refused")) == "infrastructure"
    # causes count: a stage wrapping an engine error is still an outage
    try:
        try:
            raise api_error("502 Bad Gateway")
        except Exception as inner:
            raise RuntimeError("could not start the sandbox") from inner
    except RuntimeError as outer:
        assert classify_failure(outer) == "infrastructure"


# --- errors that stop the run -------------------------------------------------------------------------


def test_a_run_stopping_error_stops_at_once_and_a_resume_continues(tmp_path):
    flag = tmp_path / "key-refused"
    flag.touch()
    config = judged_pipeline(
        tmp_path, n=6, run={"concurrency": 1}, judge={"stop_items": ["item-002"], "stop_while": str(flag)},
    )
    stopped = run_judged(config)
    assert stopped.returncode == 1, stopped.stderr
    run_dir = tmp_path / "run"
    data = summary(run_dir)
    assert data["status"] == "stopped" and data["exit_code"] == 1
    assert "stopped by an infrastructure error: the key for item-002 was refused (HTTP 401)" in data["message"]
    assert "re-run the same command to resume" in data["message"]
    assert "the key for item-002 was refused" in stopped.stdout
    rows = dict(db_rows(run_dir, "SELECT item_id, status FROM stage_runs WHERE stage_index = 1"))
    assert rows == {"item-000": "done", "item-001": "done", "item-002": "failed"}  # nothing started after the stop
    assert db_rows(run_dir, "SELECT failure_kind FROM stage_runs WHERE item_id='item-002'") == [("infrastructure",)]

    flag.unlink()  # the key is fixed
    resumed = run_judged(config)
    assert resumed.returncode == 0, resumed.stderr
    data = summary(run_dir)
    assert data["status"] == "completed" and data["final_items"] == 6 and data["failures"] == []
    assert db_rows(run_dir, "SELECT attempts FROM stage_runs WHERE item_id='item-000'") == [(1,)]


def litellm_pipeline(tmp_path: Path, server: OpenAIServer, *, n: int, concurrency: int = 1, direct: bool = True) -> Path:
    (tmp_path / "script.yaml").write_text('- response: "unused"\n', encoding="utf-8")
    return write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "run": {"out": str(tmp_path / "run"), "concurrency": concurrency},
        "llm": {"default": {
            "backend": "litellm", "model": "openai/test-model", "api_base": server.base_url, "api_key": "sk-test-key-1234",
            "max_retries": 1, "retry_base_s": 0, "retry_max_s": 0, "direct_openai": direct,
        }},
        "stages": [{"use": "count", "with": {"n": n}}, {"use": "ask"}],
    })


def test_a_refused_api_key_stops_the_run_and_a_resume_after_fixing_continues(tmp_path):
    with OpenAIServer(default=completion("fine")) as server:
        config = litellm_pipeline(tmp_path, server, n=5)
        server.enqueue(completion("first"), http_error(401, "Incorrect API key provided"))
        stopped = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN))
        assert stopped.returncode == 1, stopped.stderr
        assert len(server.requests) == 2  # no call after the refusal
        run_dir = tmp_path / "run"
        data = summary(run_dir)
        assert data["status"] == "stopped"
        message = data["message"]
        assert "401" in message and "worker" in message and "litellm" in message and "openai/test-model" in message
        assert "sk-test-key-1234" not in stopped.stdout + stopped.stderr
        assert f"exit code 1: {message}" in stopped.stdout
        assert "LiteLLM" not in stopped.stdout + stopped.stderr
        (failure,) = data["infrastructure_failures"]
        assert failure["item"] == "item-001"

        resumed = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN))
        assert resumed.returncode == 0, resumed.stderr
        data = summary(run_dir)
        assert data["status"] == "completed" and data["final_items"] == 5
        assert data["llm"]["this_invocation"] == {"paid": 4}  # item-000 was done: skipped, not asked again
        assert len(server.requests) == 6


# --- litellm stays off the console ---------------------------------------------------------------------


def test_litellm_logging_goes_to_run_log_only(tmp_path):
    with OpenAIServer(default=completion("fine")) as server:
        config = litellm_pipeline(tmp_path, server, n=2, concurrency=2, direct=False)  # litellm's own logging
        result = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN))
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    assert "LiteLLM" not in console
    assert "HTTP Request" not in console
    assert "stage 1 ask: item-000 done" in result.stderr  # termigen's own lines still show
    lines = (tmp_path / "run" / "run.log").read_text().splitlines()
    library = [line for line in lines if "[LiteLLM" in line]
    assert library, "litellm's lines should be in run.log"
    assert all(" DEBUG [LiteLLM" in line for line in library)
    assert any("item-000 done" in line for line in lines)


# --- the store migration ------------------------------------------------------------------------------


OLD_STAGE_RUNS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE stage_runs (
    item_id TEXT NOT NULL, stage_index INTEGER NOT NULL, stage_name TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT, detail TEXT, outputs TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL,
    PRIMARY KEY (item_id, stage_index)
);
INSERT INTO meta VALUES ('run_id', 'old-run');
INSERT INTO stage_runs(item_id, stage_index, stage_name, status, reason, attempts) VALUES
    ('a', 1, 'ask', 'failed', 'RuntimeError: old failure', 1),
    ('b', 1, 'ask', 'done', NULL, 1);
"""


def test_a_run_db_from_before_gets_the_failure_kind_column(tmp_path):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    with sqlite3.connect(run_dir / "run.db") as db:
        db.executescript(OLD_STAGE_RUNS)
    store = RunStore(run_dir)
    try:
        columns = [row[1] for row in store._query("PRAGMA table_info(stage_runs)")]
        assert "failure_kind" in columns
        (ask,) = store.stage_report()
        assert (ask["failed"], ask["failed_infrastructure"], ask["failed_task"]) == (1, 0, 1)  # unclassified counts as task
        store.mark_running("a", 1, "ask")
        store.finish_stage("a", 1, "failed", reason="ConnectionError", failure_kind="infrastructure")
        assert store.stage_run("a", 1)["failure_kind"] == "infrastructure"
    finally:
        store.close()
    RunStore(run_dir).close()  # opening again (the column is there now) is fine
    status = run_cli("status", str(run_dir))
    assert status.returncode == 0, status.stderr
    assert "failed (infrastructure): a at ask: ConnectionError" in status.stdout
