"""The ``atif`` exporter: trajectories in Harbor's Agent Trajectory Interchange Format.

ATIF (Harbor's RFC 0001, ``harbor.models.trajectories``) is what Harbor's
agents write as ``agent/trajectory.json`` and what ``harbor view`` and the
tools around it read, so writing it lets those tools open termigen's
trajectories without a converter of their own. ``layout: files`` writes one
JSON file per trajectory, ``<path>/<trajectory id>.json``; ``layout:
harbor_jobs`` writes the folder of jobs and trials ``harbor view PATH`` lists
(see :func:`job_files`). The folder is written beside its final place and
swapped in whole, so a re-export never leaves files of an older one.

How a :class:`~termigen_core.records.TrajectoryRecord` maps onto the schema:

- step 1 ``system`` (the system prompt, when there is one), then a ``user``
  step with the task's instruction; then one ``agent`` step per termigen step,
  numbered on from there (ATIF requires ``step_id`` 1, 2, 3, ... in order);
- an agent step's ``message`` is its reasoning (what the model said), its one
  ``tool_calls`` entry the ``bash`` or ``finish`` call, and its
  ``observation`` the shell's answer as the agent was shown it, whose
  ``source_call_id`` is the call's id (``finish`` gets no observation, as in
  the agent's own history); ``metrics`` carry the step's tokens;
- the generator's private labels are not dialogue, so they go where ATIF
  allows custom data: each agent step's ``extra.termigen`` holds ``intent``,
  ``error_mode``, the critic's verdicts, ``regenerations``, the exit code and,
  for a recovery, ``recovers_from_step_id`` (the ATIF ``step_id`` of the error
  step it diagnoses) next to termigen's own step index;
- the root ``extra.termigen`` links the file to its task, run and score (the
  same fields as the SFT exports' metadata); ``final_metrics`` sums the tokens.

``schema_version`` is ``ATIF-v1.6``: every field used here exists in it, and
Harbor releases that know a later version still read it (the version is a
literal list there), while naming a newer one would lock out older readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, Exporter
from termigen_core.records import Step, TrajectoryRecord

from . import sft_format as fmt
from .taskfiles import STAGING_PREFIX, check_target, drop_none, generator_name, publish

if TYPE_CHECKING:
    from termigen_core.context import ExportContext
    from termigen_core.items import Item

SCHEMA_VERSION = "ATIF-v1.6"
AGENT_NAME = "termigen"


def call_id(step: Step) -> str:
    """The id of a step's tool call, unique within the trajectory (the observation refers to it)."""
    return f"call_{step.index}"


def agent_version() -> str:
    name = generator_name()
    return name.split(" ", 1)[1] if " " in name else "unknown"


#: The fields of a step that go to ``extra.termigen`` (its text is the ATIF step itself; tokens are ``metrics``).
STEP_LABELS = {"index", "intent", "error_mode", "critic", "regenerations", "exit_code", "timed_out", "duration_s"}


def step_labels(step: Step, step_ids: dict[int, int]) -> dict[str, Any]:
    """The generator's labels of one step, for ``extra.termigen`` (never in the message text)."""
    labels = step.model_dump(include=STEP_LABELS)
    if step.recovers_from is not None:
        labels["recovers_from"] = step.recovers_from
        labels["recovers_from_step_id"] = step_ids.get(step.recovers_from)
    return labels


def agent_step(step: Step, step_id: int, step_ids: dict[int, int]) -> dict[str, Any]:
    call = fmt.call_of(step)
    out: dict[str, Any] = {
        "step_id": step_id,
        "source": "agent",
        "message": step.thought.strip(),
        "tool_calls": [{"tool_call_id": call_id(step), "function_name": call.name, "arguments": call.arguments}],
    }
    if step.action != "finish":
        out["observation"] = {"results": [{"source_call_id": call_id(step), "content": fmt.observation_text(step)}]}
    if step.prompt_tokens or step.completion_tokens:
        out["metrics"] = {"prompt_tokens": step.prompt_tokens, "completion_tokens": step.completion_tokens}
    out["extra"] = {"termigen": step_labels(step, step_ids)}
    return out


def to_atif(record: TrajectoryRecord, task: dict[str, Any] | None = None, *, item_id: str = "") -> dict[str, Any]:
    """One trajectory as an ATIF document (a plain dict, ``None`` values left out)."""
    steps: list[dict[str, Any]] = []
    if record.system_prompt.strip():
        steps.append({"step_id": 1, "source": "system", "message": record.system_prompt})
    steps.append({"step_id": len(steps) + 1, "source": "user", "message": record.instruction})
    first = len(steps) + 1
    step_ids = {step.index: first + n for n, step in enumerate(record.steps)}
    steps += [agent_step(step, step_ids[step.index], step_ids) for step in record.steps]
    agent: dict[str, Any] = {"name": AGENT_NAME, "version": agent_version(), "tool_definitions": fmt.openai_tools(record)}
    if record.model:
        agent["model_name"] = record.model
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "session_id": record.run_id or record.id,
        "trajectory_id": record.id,
        "agent": agent,
        "steps": steps,
        "final_metrics": {
            "total_prompt_tokens": sum(s.prompt_tokens for s in record.steps),
            "total_completion_tokens": sum(s.completion_tokens for s in record.steps),
            "total_steps": len(steps),
        },
        "extra": {"termigen": fmt.metadata(record, task, item_id=item_id)},
    }
    return drop_none(document)


def file_names(ids: list[str]) -> list[str]:
    """A safe, unique file name per trajectory id (``<id>.json``; ``-2``, ``-3`` on a clash)."""
    names: list[str] = []
    seen: set[str] = set()
    for trajectory_id in ids:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", trajectory_id).lstrip(".")[:150] or "trajectory"
        name, n = stem, 1
        while name.lower() in seen:
            n += 1
            name = f"{stem}-{n}"
        seen.add(name.lower())
        names.append(f"{name}.json")
    return names


def job_files(run_id: str, trials: list[tuple[str, TrajectoryRecord, dict[str, Any] | None, dict[str, Any]]], root: Path) -> dict[str, Any]:
    """A Harbor job folder's documents for ``harbor view``: the job's config and result, and per
    trial its config, result (the test score as the verifier's reward) and ``agent/trajectory.json``.

    Harbor's viewer lists *jobs* of *trials*, so a run becomes one job (``termigen-<run id>``) and
    each trajectory one trial of its task; ids are derived from the run and trajectory ids, so a
    re-export writes the same ids.
    """
    now = datetime.now(timezone.utc).isoformat()
    job = f"termigen-{run_id or 'run'}"
    files: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    for trial, record, task, document in trials:
        model = {"name": record.model, "provider": record.model.split("/", 1)[0] if "/" in record.model else None} if record.model else None
        config = {"task": {"path": f"tasks/{record.task_id}"}, "trial_name": trial,
                  "agent": {"name": AGENT_NAME, "model_name": record.model or None}}
        result = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"termigen:{run_id}:{record.id}")),
            "task_name": record.task_id,
            "trial_name": trial,
            "trial_uri": (root / job / trial).resolve().as_uri(),
            "task_id": {"path": f"tasks/{record.task_id}"},
            "source": "termigen",
            "task_checksum": hashlib.sha256(json.dumps(task or {}, sort_keys=True, default=str).encode()).hexdigest(),
            "config": config,
            "agent_info": {"name": AGENT_NAME, "version": agent_version(), "model_info": model},
            "agent_result": {
                "n_input_tokens": sum(s.prompt_tokens for s in record.steps),
                "n_output_tokens": sum(s.completion_tokens for s in record.steps),
            },
            "verifier_result": {"rewards": {"reward": record.pass_ratio}},
            "started_at": now,
            "finished_at": now,
        }
        results.append(result)
        files[f"{job}/{trial}/config.json"] = drop_none(config)
        files[f"{job}/{trial}/result.json"] = drop_none(result)
        files[f"{job}/{trial}/agent/trajectory.json"] = document
    models = sorted({record.model for _, record, _, _ in trials if record.model}) or [None]
    files[f"{job}/config.json"] = drop_none({"job_name": job, "n_attempts": 1, "agents": [{"name": AGENT_NAME, "model_name": m} for m in models]})
    files[f"{job}/result.json"] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"termigen:{run_id}")),
        "started_at": now,
        "finished_at": now,
        "n_total_trials": len(trials),
        "stats": {
            "n_completed_trials": len(trials),
            "n_input_tokens": sum(r["agent_result"]["n_input_tokens"] for r in results),
            "n_output_tokens": sum(r["agent_result"]["n_output_tokens"] for r in results),
        },
    }
    return files


class AtifConfig(ComponentConfig):
    #: Output folder; relative paths are inside the run directory.
    path: str = "export/atif"
    layout: Literal["files", "harbor_jobs"] = Field(
        default="files",
        description="files: one <trajectory id>.json each; harbor_jobs: a Harbor job folder (trials with "
        "agent/trajectory.json, config.json, result.json) that `harbor view PATH` opens",
    )


class AtifExporter(Exporter):
    """Trajectories as Harbor ATIF files, injected-error labels as step ``extra``."""

    name = "atif"
    description = "Trajectories in Harbor's Agent Trajectory Interchange Format (ATIF): a file each, or a Harbor job folder."
    Config = AtifConfig

    config: AtifConfig

    def export(self, items: list["Item"], ctx: "ExportContext") -> dict[str, Any]:
        trials: list[tuple[str, TrajectoryRecord, dict[str, Any] | None, dict[str, Any]]] = []
        found, invalid = fmt.trajectory_records(items, ctx.log, self.name)
        names = file_names([record.id for _, record in found])
        for name, (item, record) in zip(names, found):
            task = item.data.get("task") if isinstance(item.data.get("task"), dict) else None
            trials.append((name.removesuffix(".json"), record, task, to_atif(record, task, item_id=item.id)))
        root = ctx.output_path(self.config.path)
        if self.config.layout == "harbor_jobs":
            files = job_files(ctx.run_id, trials, root)
        else:
            files = {f"{name}.json": document for name, _, _, document in trials}
        check_target(root, folder=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        for stale in root.parent.glob(f"{STAGING_PREFIX}{root.name}-*"):  # left by an interrupted export
            shutil.rmtree(stale, ignore_errors=True)
        staging = root.with_name(f"{STAGING_PREFIX}{root.name}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            for name, document in files.items():
                _write(staging / name, document)
            publish(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        ctx.log("atif: wrote %d trajectory file(s) to %s (%s)", len(trials), root, self.config.layout)
        return {"path": str(root), "count": len(trials), "invalid": invalid, "layout": self.config.layout}


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")


@hookimpl
def register_exporters() -> list[type[Exporter]]:
    return [AtifExporter]
