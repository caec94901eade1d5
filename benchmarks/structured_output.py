"""Structured output on a real small model: the share of structured replies that parse on the first try.

A benchmark, not a test: it prints figures and never fails on them. The pipeline's own
structured prompts (seeder, proposer, evaluator, critic, judge, test generator), rendered
from termigen's templates for a few seeds, are sent through termigen's LLM layer
(``LLMRouter`` + the ``litellm`` backend) to SmolLM2-135M-Instruct served on 127.0.0.1 by
llama-cpp-python (``scripts/setup-model.sh`` installs both), twice:

1. ``structured_output: off`` -- the baseline: the prompt asks for JSON, nothing constrains it;
2. ``structured_output: schema`` -- the JSON Schema of the pydantic model each role parses into
   is sent (llama.cpp refuses OpenAI's ``json_schema`` form; the backend falls back to the
   inline-schema ``json_object`` form once and remembers it).

Each reply is parsed exactly as the stage parses it, with no re-ask (``max_parse_retries: 0``);
the figure is the share that parses (and validates) on the first try, and the ratio of the
two. ``--requests N`` per role and mode (default 2). Replies are capped at 200 tokens.

    .venv/bin/python benchmarks/structured_output.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from string import Template
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from termigen_core.llm import CallScope, LLMRouter, ParseFailed, RoleSettings, json_model, with_schema  # noqa: E402
from termigen_core.store import RunStore  # noqa: E402
from termigen_plugins.agent.collect import _CriticReply  # noqa: E402
from termigen_plugins.backends.litellm_backend import LiteLLMBackend  # noqa: E402
from termigen_plugins.stages.propose import Evaluation, TaskSpec  # noqa: E402
from termigen_plugins.stages.tests_stage import JudgeVerdict, TestFiles, parse_test_files  # noqa: E402
from termigen_plugins.taxonomy_builtin import SeedList, load_taxonomy, parse_seeds, render_prompt  # noqa: E402
from tests.support.model_server import ModelServer, find_model  # noqa: E402

SEEDS = [
    "Count the HTTP status codes in a web server access log",
    "Archive log files larger than 1 MB with gzip",
    "Find the shortest path between two nodes of a weighted graph in a CSV file",
    "Rotate a service's configuration backups, keeping the newest five",
]
PROMPTS = ROOT / "plugins" / "stages" / "prompts"


def cases(count: int) -> list[tuple[str, str, Callable[[str], Any]]]:
    """(role, prompt, parser) for ``count`` prompts of each structured role."""
    taxonomy = load_taxonomy("builtin")
    seed_template = (ROOT / "plugins" / "taxonomy_builtin" / "seed_prompt.txt").read_text()
    proposer = Template((PROMPTS / "proposer.txt").read_text())
    evaluator = Template((PROMPTS / "evaluator.txt").read_text())
    judge = Template((PROMPTS / "judge.txt").read_text())
    generator = Template((PROMPTS / "test_generator.txt").read_text())
    out: list[tuple[str, str, Callable[[str], Any]]] = []
    for i in range(count):
        seed = SEEDS[i % len(SEEDS)]
        category = taxonomy.categories[i % len(taxonomy.categories)]
        spec = ('{"title": "%s", "objective": "%s in /app.", "success_criteria": ["the output file exists"], "difficulty": "easy"}'
                % (seed[:40], seed))
        context = {"title": seed, "instruction": seed + " in /app.", "spec": spec, "environment": "(none)", "workdir": "/app",
                   "tests_dir": "/tests", "test_command": "pytest /tests", "feedback": "", "tests": "def test_x():\n    assert True\n"}
        out += [
            ("seeder", render_prompt(seed_template, category, taxonomy, 3), with_schema(SeedList, parse_seeds)),
            ("proposer", proposer.safe_substitute(seed=seed, category=category.name, base_image="termigen/python:bookworm", feedback=""), json_model(TaskSpec)),
            ("evaluator", evaluator.safe_substitute(seed=seed, spec=spec), json_model(Evaluation)),
            ("judge", judge.safe_substitute(context), json_model(JudgeVerdict)),
            ("test_generator", generator.safe_substitute(context), with_schema(TestFiles, parse_test_files)),
            ("critic", f"Task: {seed}.\nCandidate step: `ls -la /app`.\nIs it a sensible step? Answer with one JSON object "
                       '{"accepted": true or false, "feedback": "why"}.', json_model(_CriticReply)),
        ]
    return out


def run(base_url: str, mode: str, work: Path, prompts: list[tuple[str, str, Callable[[str], Any]]]) -> dict[str, Any]:
    store = RunStore(work / mode)
    settings = RoleSettings(
        backend="litellm", model="openai/smollm2", api_base=base_url, api_key="local", structured_output=mode,
        max_parse_retries=0, max_tokens=200, temperature=0.7, timeout_s=300, context_tokens=8192,
    )
    router = LLMRouter(default=settings, roles={}, backends={"litellm": LiteLLMBackend}, store=store)
    by_role: dict[str, list[bool]] = {}
    started = time.monotonic()
    for index, (role, prompt, parser) in enumerate(prompts):
        try:
            router.client(role, CallScope(f"{mode}-{index}", "bench")).ask(prompt, parser)
            ok = True
        except ParseFailed:
            ok = False
        by_role.setdefault(role, []).append(ok)
        print(f"  {mode:<6} {index + 1:>3}/{len(prompts)} {role:<15} {'parsed' if ok else 'unusable'}", file=sys.stderr, flush=True)
    modes = sorted({row["structured_mode"] for row in store.llm_calls() if row["status"] == "ok"})
    store.close()
    parsed = sum(sum(v) for v in by_role.values())
    return {"mode": mode, "parsed": parsed, "total": len(prompts), "by_role": by_role, "seconds": time.monotonic() - started,
            "wire_modes": modes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2, help="prompts per role and mode")
    parser.add_argument("--base-url", help="an already running OpenAI-compatible server (default: start SmolLM2 here)")
    args = parser.parse_args()
    prompts = cases(args.requests)
    with tempfile.TemporaryDirectory(prefix="bench-structured-") as tmp:
        work = Path(tmp)
        if args.base_url:
            results = [run(args.base_url, mode, work, prompts) for mode in ("off", "schema")]
        else:
            with ModelServer(find_model(), log_path=work / "server.log") as server:
                results = [run(server.base_url, mode, work, prompts) for mode in ("off", "schema")]
    roles = list(results[0]["by_role"])
    print(f"model: SmolLM2-135M-Instruct (llama-cpp-python, 127.0.0.1); {args.requests} prompt(s) per role and mode, no re-ask")
    print(f"{'structured_output':<18} {'first-try parse':>16}  " + "  ".join(f"{r:>14}" for r in roles) + "  seconds  wire modes")
    for r in results:
        share = r["parsed"] / r["total"]
        cells = "  ".join(f"{sum(r['by_role'][role]):>7}/{len(r['by_role'][role]):<6}" for role in roles)
        print(f"{r['mode']:<18} {r['parsed']:>5}/{r['total']:<4} {share:6.0%}  {cells}  {r['seconds']:7.1f}  {','.join(r['wire_modes'])}")
    off, on = (r["parsed"] / r["total"] for r in results)
    ratio = f"{on / off:.1f}x" if off else "inf (none parsed without it)"
    print(f"first-try parse rate, schema vs off: {on:.0%} vs {off:.0%} ({ratio})")


if __name__ == "__main__":
    main()
