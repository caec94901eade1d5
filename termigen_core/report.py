"""What a run did, as data and as a report.

:class:`RunSummary` is what ``termigen run --json`` prints and ``summary.json`` holds;
:func:`summarise` builds it from the run store, :func:`assess_health` judges whether a
run that got to the end did its job (the exit code 5 rule), and :func:`render_report`
writes ``report.md``.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .components import Stage, instantiate
from .config import ResolvedPipeline
from .items import Item
from .llm import LLMRouter
from .status import FailureKind, StepStatus
from .store import RunStore

log = logging.getLogger("termigen")


@dataclass
class RunSummary:
    """What a run did, for the CLI and ``summary.json``."""

    run_id: str
    run_dir: str
    status: str
    stages: list[dict[str, Any]]
    final_items: int
    llm: dict[str, Any]
    exports: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    #: Failed steps whose cause was infrastructure (also listed in ``failures``).
    infrastructure_failures: list[dict[str, Any]] = field(default_factory=list)
    #: What the exit code is judged on (see :func:`assess_health`).
    health: dict[str, Any] = field(default_factory=dict)
    #: A campaign's goals and how far it got (``run.target``; None without one).
    target: dict[str, Any] | None = None
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarise(
    pipeline: ResolvedPipeline, run_dir: Path, store: RunStore, router: LLMRouter, run_id: str, status: str,
    final: int, exports: list[dict[str, Any]], message: str,
) -> RunSummary:
    """The run's summary from its store: per-stage counts and figures, failures, LLM use."""
    usage = store.llm_usage_by_stage()
    stages = store.stage_report()
    done_outputs: dict[int, list[Item]] = {}
    for row in store.stage_rows(StepStatus.DONE):
        done_outputs.setdefault(row["stage_index"], []).extend(store.outputs_of(row))
    for entry in stages:
        calls = usage.get(entry["stage"], {})
        entry["llm_calls"] = calls.get("calls", 0)
        entry["tokens"] = (calls.get("prompt_tokens") or 0) + (calls.get("completion_tokens") or 0)
        entry["cost_usd"] = calls.get("cost_usd") or 0.0
        entry.update(stage_details(pipeline, entry["index"], done_outputs.get(entry["index"], [])))
    rows = [r for r in store.stage_rows() if r["status"] in (StepStatus.FAILED, StepStatus.REJECTED)]
    failures = [{"item": r["item_id"], "stage": r["stage_name"], "status": r["status"], "reason": r["reason"]} for r in rows]
    infrastructure = [
        {"item": r["item_id"], "stage": r["stage_name"], "reason": r["reason"]}
        for r in rows
        if r["status"] == StepStatus.FAILED and r.get("failure_kind") == FailureKind.INFRASTRUCTURE
    ]
    llm = {
        "paid_calls_total": store.llm_call_count(source="backend", status="ok"),
        "this_invocation": dict(router.stats),
        "cost_usd": round(store.total_llm_cost(), 6),
        "unpriced_calls": store.unpriced_call_count(),
        "prompt_cache": store.cache_savings(),
        "by_role": store.llm_usage(),
    }
    return RunSummary(
        run_id, str(run_dir), str(status), stages, final, llm, exports, failures[:200], message,
        infrastructure_failures=infrastructure[:200],
    )

def stage_details(pipeline: ResolvedPipeline, index: int, outputs: list[Item]) -> dict[str, Any]:
    """A stage's own figures (build attempts, error modes...) from its finished outputs."""
    if index >= len(pipeline.stages):
        return {}
    cls, options = pipeline.stages[index]
    try:
        stage: Stage = instantiate(cls, options, pipeline.config_dir)  # type: ignore[assignment]
        details = stage.summarize(outputs)
    except Exception:  # noqa: BLE001 - a report detail must not fail a finished run
        log.warning("stage %s could not summarise its results:\n%s", cls.name, traceback.format_exc())
        return {}
    return {"details": details} if details else {}


def assess_health(store: RunStore, final_items: int, max_failed_fraction: float) -> dict[str, Any]:
    """Whether a run that got to the end did its job; ``problems`` empty means yes.

    Two rules (each adds a problem; either makes ``termigen run`` exit 5):

    * no final item: nothing finished the last stage;
    * ``failed_fraction > max_failed_fraction``, where
      ``failed_fraction = failed_items / finished_items`` over the whole run directory:
      ``finished_items`` counts the distinct items (ids) that reached an outcome in some
      step: done, rejected or failed at any stage, plus every item the source stage
      produced; ``failed_items`` counts those among them whose latest outcome at some
      stage is ``failed`` (an item is counted once however many stages it went through;
      a failed step retried successfully on resume no longer counts). Rejected items are
      quality gates and count only in the denominator. A part of a source stage that
      failed (a taxonomy category) counts as one item. With no finished item the
      fraction is 0.
    """
    finished: set[str] = set()
    failed: dict[str, str] = {}
    for row in store.item_outcomes():
        finished.add(row["item_id"])
        if row["status"] == StepStatus.FAILED and failed.get(row["item_id"]) != FailureKind.INFRASTRUCTURE:
            failed[row["item_id"]] = row["failure_kind"] or FailureKind.TASK
    finished.update(item.id for item in store.source_outputs(0))
    infrastructure = sum(1 for kind in failed.values() if kind == FailureKind.INFRASTRUCTURE)
    fraction = len(failed) / len(finished) if finished else 0.0
    problems = []
    if final_items == 0:
        problems.append("no final item: nothing finished the last stage (see the rejected and failed items)")
    if fraction > max_failed_fraction:
        problems.append(
            f"{len(failed)} of {len(finished)} items failed ({fraction:.0%}, more than run.max_failed_fraction "
            f"{max_failed_fraction:.0%}): {infrastructure} infrastructure, {len(failed) - infrastructure} task; "
            "failed steps are retried when the same command is run again"
        )
    return {
        "finished_items": len(finished),
        "failed_items": len(failed),
        "failed_infrastructure": infrastructure,
        "failed_task": len(failed) - infrastructure,
        "failed_fraction": round(fraction, 4),
        "max_failed_fraction": max_failed_fraction,
        "problems": problems,
    }


def render_report(summary: RunSummary) -> str:
    """The run report as Markdown: per stage items in/out, rejections with reasons, LLM use."""
    lines = [f"# Run {summary.run_id}: {summary.status}", ""]
    if summary.message:
        lines += [summary.message, ""]
    lines += ["| stage | in | out | done | rejected | failed | pending | failed: infrastructure | failed: task | LLM calls | tokens | cost USD |",
              "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |"]
    for s in summary.stages:
        lines.append(
            f"| {s['index']} {s['stage']} | {s['in']} | {s['out']} | {s['done']} | {s['rejected']} | {s['failed']} "
            f"| {s['pending']} | {s.get('failed_infrastructure', 0)} | {s.get('failed_task', s['failed'])} "
            f"| {s['llm_calls']} | {s['tokens']} | {s['cost_usd']:.4f} |"
        )
    health = summary.health
    if health:
        health_line = (
            f"Items finished: {health['finished_items']}; failed: {health['failed_items']} "
            f"({health['failed_infrastructure']} infrastructure, {health['failed_task']} task; "
            f"{health['failed_fraction']:.0%} of finished, limit run.max_failed_fraction {health['max_failed_fraction']:.0%}); "
            f"final items: {summary.final_items}; exit code {summary.exit_code}."
        )
        lines += ["", health_line]
    if summary.target:
        goals = ", ".join(f"{g['reached']} of {g['wanted']} {name.replace('_', ' ')}" for name, g in summary.target["goals"].items())
        state = "met" if summary.target["met"] else "not met"
        ended = f"; {summary.target['ended']}" if summary.target["ended"] and not summary.target["met"] else ""
        lines += ["", f"Target ({state}): {goals}, after {summary.target['draws']} draw(s) of the source stage{ended}."]
    details = [(s["index"], s["stage"], s["details"]) for s in summary.stages if s.get("details")]
    for index, name, figures in details:
        lines += ["", f"## {index} {name}", "", "```json", json.dumps(figures, indent=2, default=str), "```"]
    infrastructure = {(f["item"], f["stage"]) for f in summary.infrastructure_failures}
    if summary.failures:
        lines += ["", "## Rejected and failed items", ""]
        lines += [
            f"- `{f['item']}` at {f['stage']} ({f['status']}"
            + (", infrastructure" if (f["item"], f["stage"]) in infrastructure else ", task" if f["status"] == StepStatus.FAILED else "")
            + f"): {f['reason']}"
            for f in summary.failures
        ]
    if summary.exports:
        lines += ["", "## Exports", ""]
        lines += [f"- {e['exporter']}: " + ", ".join(f"{k}={v}" for k, v in e.items() if k != "exporter") for e in summary.exports]
    lines += ["", *render_llm_use(summary.llm), ""]
    return "\n".join(lines)


def render_llm_use(llm: dict[str, Any]) -> list[str]:
    """The report's LLM section: spend (and what is unpriced), prompt cache, use per stage and role."""
    unpriced = llm.get("unpriced_calls", 0)
    lines = ["## LLM use", "", f"{llm['paid_calls_total']} paid calls, ${llm['cost_usd']:.4f} in this run directory"
             + (f"; {unpriced} call(s) of models without a known price are not in that sum" if unpriced else "") + "."]
    cache = llm.get("prompt_cache") or {}
    if cache.get("cache_read_tokens") or cache.get("cache_write_tokens"):
        lines.append(
            f"Prompt cache: {cache['cache_read_tokens']} of {cache['prompt_tokens']} prompt tokens read from the cache, "
            f"{cache['cache_write_tokens']} written; spend saved ${cache['saved_usd']:.4f}."
        )
    rows = llm.get("by_role") or []
    if rows:
        lines += ["", "| stage | role | model | calls | prompt tokens | cache read | cache write | completion tokens | cost USD | structured output |",
                  "| --- | --- | --- | --: | --: | --: | --: | --: | --: | --- |"]
        for r in rows:
            cost = "unknown" if r.get("cost_usd") is None else f"{r['cost_usd']:.4f}"
            lines.append(
                f"| {r['stage']} | {r['role']} | {r['model']} | {r['calls']} | {r['prompt_tokens'] or 0} | {r.get('cache_read_tokens') or 0} "
                f"| {r.get('cache_write_tokens') or 0} | {r['completion_tokens'] or 0} | {cost} | {r.get('structured_modes') or ''} |"
            )
    return lines
