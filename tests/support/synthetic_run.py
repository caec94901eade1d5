"""A big synthetic run directory, written through the real :class:`RunStore` API.

The report and browser pages must stay usable on runs far larger than the quickstart's; making
such a run for real would take days of model calls and container builds. This writes what a
run of the built-in pipeline leaves in its store (the source stage's seeds, each item's steps
with their outcomes, task records, trajectories with injected errors and recoveries, the LLM
ledger) with the same calls the runner makes, so the pages read it exactly as they read a real
run. Everything comes from one ``random.Random(seed)``: the same arguments give the same run.

    make_synthetic_run(run_dir, items=5000, trajectories=2000, seed=0)

Items flow ``seeds → propose → synthesize → build → tests → validate → verify → trajectories``;
each stage rejects or fails a share of them with realistic reasons (some infrastructure
failures among them). Tasks that finish ``verify`` get the trajectories (round-robin, so
``trajectories`` may be more or fewer than the tasks); tasks left without one stay pending at
the last stage, as after a budget stop.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from termigen_core.items import Item
from termigen_core.llm import PARSE_RETRY_PREFIX, LLMRequest, LLMResponse
from termigen_core.records import BuildInfo, CriticVerdict, Review, RunCheck, Step, TaskRecord, TrajectoryRecord, Validation
from termigen_core.status import FailureKind, StepStatus
from termigen_core.store import SOURCE_ITEM, RunStore

STAGES = ("seeds", "propose", "synthesize", "build", "tests", "validate", "verify", "trajectories")
CATEGORIES = {
    "software_build": 1, "system_admin": 1, "security_forensics": 1, "data_processing": 2, "machine_learning": 2,
    "algorithms": 2, "software_dev": 3, "scientific_computing": 3, "interactive_environments": 3,
}
ERROR_MODES = ("analysis", "command", "hallucination", "requirement", "verification")
COMMANDS = (
    "ls -la /app", "cat /app/data/input.csv | head -n 20", "grep -rn 'ERROR' /var/log/app.log | wc -l",
    "python3 /app/main.py --check", "awk -F, '{print $2}' /app/data.csv | sort | uniq -c", "find /app -name '*.py' -newer /app/setup.cfg",
    "sed -i 's/DEBUG/INFO/' /app/config.ini", "make -C /app build", "gcc -O2 -o /app/bin/tool /app/src/tool.c",
    "git -C /app log --oneline | head", "curl -s http://localhost:8080/health", "tar -xzf /app/archive.tar.gz -C /tmp",
    "pip install --no-index /app/wheels/*.whl", "jq '.items[] | .name' /app/data.json", "sqlite3 /app/db.sqlite 'SELECT count(*) FROM t'",
    "systemctl status nginx", "ps aux | grep -v grep | grep worker", "du -sh /app/* | sort -h", "chmod +x /app/run.sh && /app/run.sh",
    "openssl sha256 /app/release.bin", "strace -f -o /tmp/trace.txt /app/bin/tool", "docker ps -a", "mpirun -np 2 /app/bin/solver",
    "cmake -S /app -B /app/build && cmake --build /app/build", "xxd /app/blob.bin | head", "nc -z localhost 5432",
)
#: (stage index, share rejected, share failed, reason templates for a rejection, for a failure)
OUTCOMES: dict[int, tuple[float, float, tuple[str, ...], tuple[str, ...]]] = {
    1: (0.10, 0.01, ("spec below min_score 4 after {n} rounds (last scores complexity={n}, data={n}): {text}",
                     "proposer: reply still malformed after 3 attempts: Expecting ',' delimiter: line {n} column {n}"),
        ("proposer (litellm): still failing after 6 attempts (rate_limit): 429 Too Many Requests",)),
    2: (0.02, 0.02, ("environment too large: {n} files, at most 64",),
        ("constructor (litellm): still failing after 6 attempts (timeout): Request timed out after {n}s",)),
    3: (0.05, 0.01, ("build failed after 3 attempts: E: Unable to locate package '{pkg}'",
                     "unsupported for building: RUN --mount in /app/Dockerfile line {n}"),
        ("APIError: 500 Server Error for http+docker://localhost/v1.41/build: Internal Server Error",)),
    4: (0.03, 0.0, ("judge did not approve the tests after 3 rounds: {text}",), ()),
    5: (0.08, 0.01, ("tests pass on the untouched environment in round {n} (exit code 0): {text}",
                     "solve.sh failed in round {n}: exit code {n}"),
        ("ConnectionError: ('Connection aborted.', RemoteDisconnected('Remote end closed connection'))",)),
    6: (0.02, 0.0, ("{n} blocking finding(s): tests baked into the image at /app/tests/test_{pkg}.py",), ()),
}
FREE_TEXT = ("the success criteria are subjective", "the output file is not named", "checks only that the file exists",
             "depends on wall-clock time", "needs network access")
PACKAGES = ("gawk-not-a-package", "libfoo-dev", "python3-nope", "cuda-toolkit-99")


@dataclass(frozen=True)
class SyntheticRun:
    """What was written (the tests check the pages against it)."""

    run_dir: Path
    seeds: int
    final_tasks: int
    trajectories: int


def make_synthetic_run(run_dir: Path, items: int = 5000, trajectories: int = 2000, seed: int = 0) -> SyntheticRun:
    """Write a synthetic run of ``items`` seeds and ``trajectories`` trajectories into ``run_dir``."""
    run_dir = Path(run_dir)
    rng = random.Random(seed)
    store = RunStore(run_dir)
    try:
        store.set_meta("run_id", f"synthetic-{items}-{trajectories}-{seed}")
        invocation = store.start_invocation(["termigen", "run", "synthetic.yaml"])
        _write_config(run_dir)
        seeds = _seed_items(items, rng)
        store.mark_running(SOURCE_ITEM, 0, STAGES[0])
        duplicates = {i for i in range(len(seeds)) if rng.random() < 0.03}
        kept = [s for i, s in enumerate(seeds) if i not in duplicates]
        for index in sorted(duplicates):
            store.record_outcome(seeds[index].id, 0, STAGES[0], StepStatus.REJECTED,
                                 f"near-duplicate (similarity 0.{rng.randint(60, 99)}) of seed: {kept[0].data['text']}")
        store.finish_stage(SOURCE_ITEM, 0, StepStatus.DONE, outputs=kept)
        _llm(store, rng, SOURCE_ITEM, "seeds", "seeder", calls=len(CATEGORIES))
        current = kept
        for index in range(1, len(STAGES) - 1):
            current = [out for item in current if (out := _step(store, rng, index, item)) is not None]
        made = _trajectories(store, rng, current, trajectories)
        store.finish_invocation(invocation, "budget_exhausted" if made < len(current) or not current else "completed")
    finally:
        store.close()
    return SyntheticRun(run_dir=run_dir, seeds=items, final_tasks=len(current), trajectories=made)


def _write_config(run_dir: Path) -> None:
    config = {
        "version": 1,
        "llm": {"default": {"backend": "scripted", "model": "synthetic"}},
        "stages": [{"use": "seeds", "with": {"source": {"use": "taxonomy", "with": {"taxonomy": "builtin", "categories": list(CATEGORIES)}}}},
                   *({"use": name} for name in STAGES[1:])],
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _seed_items(count: int, rng: random.Random) -> list[Item]:
    names = list(CATEGORIES)
    seeds = []
    for n in range(count):
        category = names[n % len(names)]
        text = f"Seed {n}: {rng.choice(FREE_TEXT)} in a {category.replace('_', ' ')} task"
        seeds.append(Item(id=f"{category}-{n:08x}", kind="seed",
                          data={"text": text, "category": category, "category_name": category.replace("_", " ").title(),
                                "tier": CATEGORIES[category]},
                          meta={"seed_source": "taxonomy"}))
    return seeds


def _task(item: Item, rng: random.Random) -> TaskRecord:
    category = str(item.data.get("category"))
    return TaskRecord(
        id=item.id, title=f"Task {item.id}", instruction=f"{item.data.get('text')}. Write the result to /app/out.txt.",
        category=category, category_name=str(item.data.get("category_name", "")), tier=item.data.get("tier"),
        seed=str(item.data.get("text")), difficulty=rng.choice(("easy", "medium", "hard")),
        environment={"Dockerfile": "FROM termigen/python:bookworm\nWORKDIR /app\nCOPY data /app/data\n",
                     "data/input.csv": "id,value\n" + "".join(f"{i},{rng.randint(0, 999)}\n" for i in range(12))},
        tests={"test_outputs.py": "from pathlib import Path\n\ndef test_out():\n    assert Path('/app/out.txt').read_text().strip()\n"},
        solution="#!/bin/bash\nawk -F, 'NR>1{s+=$2} END{print s}' /app/data/input.csv > /app/out.txt\n",
    )


def _advance(item: Item, index: int, rng: random.Random) -> Item:
    """The item as stage ``index`` hands it on (the task record filled in stage by stage)."""
    if index == 1:
        return item.evolve(kind="spec", data={**item.data, "spec": {"title": f"Task {item.id}"}}, propose_rounds=rng.choice((1, 1, 2)))
    if index == 2:
        return item.with_task(_task(item, rng), kind="task")
    task = item.task()
    meta: dict[str, Any] = {}
    if index == 3:
        attempts = rng.choice((1, 1, 1, 1, 2, 2, 3))
        task.build = BuildInfo(image=f"termigen-task/{item.id}:synthetic", attempts=attempts,
                               errors=[f"E: Unable to locate package {rng.choice(PACKAGES)}"] * (attempts - 1), cached=rng.random() < 0.1)
        meta["build_attempts"] = attempts
    elif index == 4:
        rounds = rng.choice((1, 1, 1, 2, 2, 3))
        task.test_reviews = [Review(round=r + 1, verdict="approve" if r + 1 == rounds else "revise", feedback=rng.choice(FREE_TEXT))
                             for r in range(rounds)]
        meta["test_rounds"] = rounds
    elif index == 5:
        rounds = rng.choice((1, 1, 1, 1, 2))
        checks = [RunCheck(phase=p, passed=p == "after", exit_code=0 if p == "after" else 1, duration_s=0.4)
                  for p in ("before", "before", "after", "after")]
        task.validation = Validation(passed=True, rounds=rounds, checks=checks)
        meta["validation_rounds"] = rounds
        meta["validation_history"] = [{"round": 1, "culprit": rng.choice(("tests", "solution"))}] if rounds > 1 else []
    return item.with_task(task, **meta)


def _step(store: RunStore, rng: random.Random, index: int, item: Item) -> Item | None:
    """One (item, stage) step with its LLM calls and outcome; the output, or None if the item stops here."""
    stage = STAGES[index]
    store.mark_running(item.id, index, stage)
    _llm(store, rng, item.id, stage, _ROLES[stage], calls=rng.randint(1, 3))
    rejected, failed, rejections, failures = OUTCOMES[index]
    draw = rng.random()
    fill = {"n": rng.randint(1, 40), "text": rng.choice(FREE_TEXT), "pkg": rng.choice(PACKAGES)}
    if draw < rejected:
        store.finish_stage(item.id, index, StepStatus.REJECTED, reason=rng.choice(rejections).format(**fill))
        return None
    if failures and draw < rejected + failed:
        store.finish_stage(item.id, index, StepStatus.FAILED, reason=rng.choice(failures).format(**fill),
                           failure_kind=FailureKind.INFRASTRUCTURE)
        return None
    output = _advance(item, index, rng)
    store.finish_stage(item.id, index, StepStatus.DONE, outputs=[output])
    return output


_ROLES = {"propose": "proposer", "synthesize": "constructor", "build": "env_agent", "tests": "judge",
          "validate": "solver", "verify": "linter", "trajectories": "agent"}


def _trajectories(store: RunStore, rng: random.Random, tasks: list[Item], wanted: int) -> int:
    """Share ``wanted`` trajectories among ``tasks``; tasks left without one stay pending (a budget stop)."""
    index = len(STAGES) - 1
    per_task: dict[int, int] = {}
    for n in range(wanted if tasks else 0):
        per_task[n % len(tasks)] = per_task.get(n % len(tasks), 0) + 1
    made = 0
    for position, task_item in enumerate(tasks):
        store.mark_running(task_item.id, index, STAGES[index])
        count = per_task.get(position, 0)
        if not count:
            store.reset_stage(task_item.id, index)
            continue
        outputs = [task_item.child(k, kind="trajectory", data={**task_item.data}).with_trajectory(_trajectory(task_item, k, rng))
                   for k in range(count)]
        _llm(store, rng, task_item.id, STAGES[index], "agent", calls=count * 2)
        _llm(store, rng, task_item.id, STAGES[index], "critic", calls=count)
        store.finish_stage(task_item.id, index, StepStatus.DONE, outputs=outputs)
        made += count
    return made


def _trajectory(task_item: Item, k: int, rng: random.Random) -> TrajectoryRecord:
    steps: list[Step] = []
    context = 600
    pending_error: int | None = None
    for n in range(rng.randint(3, 36)):
        error = rng.random() < 0.2
        command = rng.choice(COMMANDS)
        completion = rng.randint(20, 220)
        steps.append(Step(
            index=n, intent="error" if error else "correct", error_mode=rng.choice(ERROR_MODES) if error else None,
            thought=f"Step {n}: look at what the last command said.", command=command,
            output=(f"bash: {command.split()[0]}: error\n" if error else "ok\n") * rng.randint(1, 4),
            exit_code=1 if error else 0, duration_s=round(rng.random(), 3),
            critic=[CriticVerdict(accepted=True, feedback="Plausible.")], regenerations=int(rng.random() < 0.05),
            recovers_from=pending_error if not error else None, prompt_tokens=context, completion_tokens=completion,
        ))
        pending_error = n if error else None
        context += completion + rng.randint(40, 400)
    steps.append(Step(index=len(steps), action="finish", command="done", prompt_tokens=context, completion_tokens=30))
    passed_total = rng.randint(1, 6)
    passed = passed_total if rng.random() < 0.7 else rng.randint(0, passed_total - 1)
    return TrajectoryRecord(
        id=f"{task_item.id}.{k}", task_id=task_item.id, model="synthetic", steps=steps, finished=True,
        resolved=passed == passed_total, pass_ratio=passed / passed_total, tests_passed=passed, tests_total=passed_total,
        tools_used=sorted({command.split()[0] for command in (s.command for s in steps if s.action == "bash") if command}),
        stats={"stopped": "finished" if rng.random() < 0.9 else "max_steps"},
    )


def _llm(store: RunStore, rng: random.Random, scope: str, stage: str, role: str, *, calls: int) -> None:
    """Paid calls of one step in the ledger; now and then a re-ask for a malformed reply, a retry, a cache read."""
    for occurrence in range(calls):
        reask = rng.random() < 0.03
        messages = [{"role": "user", "content": f"{stage} {scope} {occurrence}"}]
        if reask:
            messages.append({"role": "user", "content": f"{PARSE_RETRY_PREFIX}: Expecting value: line 1 column 1."})
        request = LLMRequest(role=role, model="synthetic", messages=messages, scope=f"{scope}@{stage}", stage=stage)
        if rng.random() < 0.01:
            store.record_llm_call(scope=request.scope, stage=stage, role=role, backend="scripted", request=request,
                                  cache_key=request.cache_key(), occurrence=occurrence, response=None, status="retry:rate_limit",
                                  source="backend", error="429 Too Many Requests", latency_s=0.2)
        prompt = rng.randint(300, 6000)
        response = LLMResponse(
            text=json.dumps({"ok": True}), prompt_tokens=prompt, completion_tokens=rng.randint(20, 600),
            cost_usd=round(prompt * 3e-6, 6), model="synthetic", latency_s=rng.lognormvariate(0.3, 0.6),
            cache_read_tokens=rng.randint(0, prompt) if rng.random() < 0.4 else 0, structured_mode="schema",
        )
        store.record_llm_call(scope=request.scope, stage=stage, role=role, backend="scripted", request=request,
                              cache_key=request.cache_key(), occurrence=occurrence, response=response, status="ok", source="backend")
