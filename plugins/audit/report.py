"""The audit's results, read from the run store: ``audit.jsonl``, ``audit.csv``, ``audit.md``.

Every task's outcome comes from ``run.db`` (never from the process that ran it),
so a resumed or interrupted audit reports the same way: the ``audit`` step's
output carries the verdict and its evidence; a task that never got there is
judged by the row that stopped it:

- rejected at the source (``import skipped: ...``): ``import_failed``;
- rejected or failed (task) at ``build``: ``build_failed``, with the build error's tail;
- failed with ``failure_kind = infrastructure`` at any stage: ``infra_error``
  (the container engine, the disk; re-running the command resumes it);
- failed (task) at ``audit``: ``error`` (the step raised; the reason says why);
- no final row yet (the run was stopped): ``pending``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from termigen_core.status import FailureKind, StepStatus
from termigen_core.store import RunStore, is_source_item

from .stage import BUILD_FAILED, ERROR, IMPORT_FAILED, INFRA_ERROR, NO_SOLUTION, PENDING, VALID, VERDICTS, clip

#: ``--fail-on`` default: everything but a proven or plausibly valid task.
DEFAULT_FAIL_ON = tuple(v for v in VERDICTS if v not in (VALID, NO_SOLUTION))
CSV_COLUMNS = (
    "id", "verdict", "stage", "reason", "has_solution", "noop_passed", "noop_runs", "oracle_passed", "oracle_runs",
    "tests_passed", "tests_total", "reward", "lint_errors", "lint_warnings", "build_s", "audit_s", "source",
)


def _seconds(row: dict[str, Any] | None) -> float | None:
    if not row or row.get("started") is None or row.get("finished") is None:
        return None
    return round(float(row["finished"]) - float(row["started"]), 3)


def _build_error_tail(row: dict[str, Any]) -> str:
    try:
        detail = json.loads(row.get("detail") or "{}")
    except json.JSONDecodeError:
        detail = {}
    errors = detail.get("errors") if isinstance(detail, dict) else None
    return clip(str(errors[-1])) if isinstance(errors, list) and errors else clip(row.get("reason") or "")


def audit_rows(store: RunStore, audit_stage: int) -> list[dict[str, Any]]:
    """One result per task the run knows of, sorted by id."""
    by_item: dict[str, dict[int, dict[str, Any]]] = {}
    for row in store.stage_rows():
        if not is_source_item(row["item_id"]):
            by_item.setdefault(row["item_id"], {})[row["stage_index"]] = row
    results = []
    for item_id in sorted(by_item):
        rows = by_item[item_id]
        results.append(_result(item_id, rows, audit_stage))
    return results


def _result(item_id: str, rows: dict[int, dict[str, Any]], audit_stage: int) -> dict[str, Any]:
    result: dict[str, Any] = {"id": item_id, "verdict": PENDING, "stage": "", "reason": ""}
    first = rows[min(rows)]
    outputs = RunStore.outputs_of(first) if first.get("outputs") else []
    if outputs:
        result["source"] = outputs[0].meta.get("imported_from", "")
    build_row = next((r for r in rows.values() if r["stage_name"] == "build"), None)
    result["build_s"] = _seconds(build_row) if build_row and build_row["status"] in (StepStatus.DONE, StepStatus.REJECTED) else None
    for index in sorted(rows):
        row = rows[index]
        status = row["status"]
        if status in (StepStatus.DONE,) and index != audit_stage:
            continue
        result["stage"] = row["stage_name"]
        result["reason"] = row.get("reason") or ""
        if status == StepStatus.FAILED and row.get("failure_kind") == FailureKind.INFRASTRUCTURE:
            result["verdict"] = INFRA_ERROR
        elif status == StepStatus.DONE:  # the audit step: its output carries the verdict
            audit = RunStore.outputs_of(row)[0].meta.get("audit", {})
            result.update({k: v for k, v in audit.items() if k not in ("summary",)})
            result["reason"] = audit.get("summary", "")
            result["audit_s"] = _seconds(row)
            last = next((r for r in reversed(audit.get("runs", [])) if r.get("tests_total") is not None), None)
            if last is not None:
                result.update(tests_passed=last.get("tests_passed"), tests_total=last.get("tests_total"), reward=last.get("reward"))
        elif status in (StepStatus.REJECTED, StepStatus.FAILED) and row["stage_name"] == "build":
            result["verdict"] = BUILD_FAILED
            result["build_error_tail"] = _build_error_tail(row)
        elif status == StepStatus.REJECTED and index == min(rows) and (row.get("reason") or "").startswith("import skipped"):
            result["verdict"] = IMPORT_FAILED
        elif status in (StepStatus.REJECTED, StepStatus.FAILED):
            result["verdict"] = ERROR
        else:
            result["verdict"] = PENDING
        break
    return result


def write_reports(run_dir: Path, results: list[dict[str, Any]], fail_on: set[str]) -> dict[str, Path]:
    """``audit.jsonl`` (everything), ``audit.csv`` (one flat row per task), ``audit.md`` (the summary)."""
    paths = {name: run_dir / f"audit.{name}" for name in ("jsonl", "csv", "md")}
    with paths["jsonl"].open("w", encoding="utf-8") as handle:
        for result in results:
            handle.write(json.dumps(result, default=str) + "\n")
    with paths["csv"].open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for result in results:
            writer.writerow({k: ("" if result.get(k) is None else result.get(k)) for k in CSV_COLUMNS})
    paths["md"].write_text(markdown(results, fail_on), encoding="utf-8")
    return paths


def verdict_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    counts = {v: 0 for v in VERDICTS}
    for result in results:
        counts[result["verdict"]] = counts.get(result["verdict"], 0) + 1
    return {v: n for v, n in counts.items() if n}


def _cell(text: Any, limit: int = 160) -> str:
    value = " ".join(str(text if text is not None else "").split())
    value = value if len(value) <= limit else value[: limit - 3] + "..."
    return value.replace("|", "\\|")


def markdown(results: list[dict[str, Any]], fail_on: set[str]) -> str:
    lines = ["# Audit", "", f"{len(results)} task(s).", "", "| verdict | tasks | fails the gate | meaning |", "| --- | ---: | --- | --- |"]
    for verdict, n in verdict_counts(results).items():
        lines.append(f"| {verdict} | {n} | {'yes' if verdict in fail_on else 'no'} | {_cell(VERDICTS.get(verdict, ''))} |")
    lines += ["", "| task | verdict | no-op passed | oracle passed | lint errors | reason |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in results:
        noop = f"{r['noop_passed']}/{r['noop_runs']}" if "noop_runs" in r else ""
        oracle = f"{r['oracle_passed']}/{r['oracle_runs']}" if r.get("oracle_runs") else ""
        reason = r.get("build_error_tail") or r.get("reason") or ""
        lines.append(f"| {_cell(r['id'], 80)} | {r['verdict']} | {noop} | {oracle} | {r.get('lint_errors', '')} | {_cell(reason)} |")
    return "\n".join(lines) + "\n"
