"""What ``browse.html`` shows, per item, read from a run directory's store: typed, no HTML.

One :class:`ItemRow` per item the store knows (the list), one :class:`TaskView` per item
that is not a trajectory (the task page: whatever the item had become when it stopped,
from a seed to a validated task) and one :class:`TrajectoryView` per trajectory (the
trajectory page). Everything comes from ``run.db`` (step outcomes and the items each step
produced, build logs in the artifact store) plus ``config.yaml`` and ``summary.json`` for
what the exports trained on; nothing here takes the run lock, so a live run can be read
(SQLite's WAL lets readers in, as ``termigen status`` does).

An item's status is the outcome of the last step that ran on it: ``rejected`` and
``failed`` as recorded, ``done`` once it has finished the pipeline's last stage, and
``pending`` otherwise (not started, running, stopped, or waiting for the next stage).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from termigen_core.config import effective_train_on
from termigen_core.items import Item
from termigen_core.records import CriticVerdict, Step, TaskRecord, TrajectoryRecord
from termigen_core.status import StepStatus
from termigen_core.store import RunStore, is_source_item
from termigen_plugins.exporters.sft import SFTConfig, exclusion_reason
from termigen_plugins.exporters.sft_format import step_weight

#: Characters of one text (a command's output, a file) kept in the page: a run's pages stay
#: small enough to open, and a cut says how much it left out.
TEXT_LIMIT = 20_000
#: Characters of a build log's tail shown on a task page.
BUILD_LOG_TAIL = 6_000

ItemStatus = Literal["done", "rejected", "failed", "pending"]


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` cut to about ``limit`` characters (head and tail kept), saying how much was left out."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters not shown ...]\n{text[-half:]}"


def tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, saying how much came before."""
    return text if len(text) <= limit else f"[... {len(text) - limit} earlier characters not shown ...]\n{text[-limit:]}"


class StageOutcome(BaseModel):
    """One step an item went through."""

    index: int
    stage: str
    status: str
    reason: str = ""
    failure_kind: str | None = None
    attempts: int = 0


class ItemRow(BaseModel):
    """One line of the list: enough to search, filter and link."""

    id: str
    kind: str
    title: str
    category: str = ""
    category_name: str = ""
    tier: int | None = None
    status: ItemStatus
    stage: str = Field(default="", description="the stage it finished, stopped at or waits for")
    reason: str = ""
    failure_kind: str | None = None
    parent: str | None = None
    trajectories: list[str] = Field(default_factory=list)
    resolved: bool | None = None
    pass_ratio: float | None = None
    error_modes: list[str] = Field(default_factory=list)
    steps: int | None = None
    recoveries: int | None = None


class TaskView(BaseModel):
    """The task page: what the item had become when it stopped (a seed, a spec or a task)."""

    id: str
    seed: str = ""
    spec: dict[str, Any] = Field(default_factory=dict)
    instruction: str = ""
    workdir: str = ""
    difficulty: str = ""
    dockerfile: str = ""
    files: dict[str, str] = Field(default_factory=dict, description="build context files other than the Dockerfile")
    binary_files: list[str] = Field(default_factory=list)
    tests: dict[str, str] = Field(default_factory=dict)
    solution: str = ""
    build: dict[str, Any] = Field(default_factory=dict)
    build_log_name: str = ""
    build_log_tail: str = ""
    test_reviews: list[dict[str, Any]] = Field(default_factory=list)
    validation: dict[str, Any] = Field(default_factory=dict)
    lint: list[dict[str, str]] = Field(default_factory=list)
    models: dict[str, str] = Field(default_factory=dict)
    history: list[StageOutcome] = Field(default_factory=list)
    detail: str = Field(default="", description="what the stage that rejected or failed it recorded")


class StepView(Step):
    """One turn of a trajectory (the stored step, long texts clipped), with who recovers it and its training weight."""

    recovered_by: list[int] = Field(default_factory=list, description="steps that diagnose this injected error")
    weight: int = Field(description="the assistant turn's training weight under dataset.train_on")


class ExportUse(BaseModel):
    """Whether one SFT export of the run took this trajectory, and why not if it did not."""

    exporter: str
    included: bool
    why: str = ""


class TrajectoryView(BaseModel):
    """The trajectory page."""

    id: str
    task_item: str | None = None
    model: str = ""
    agent_format: str = ""
    seed: str = Field(default="", description="a string: 64-bit seeds do not survive a JavaScript number")
    instruction: str = ""
    system_prompt: str = ""
    finished: bool = False
    resolved: bool = False
    pass_ratio: float = 0.0
    tests_passed: int = 0
    tests_total: int = 0
    test_output_tail: str = ""
    tools_used: list[str] = Field(default_factory=list)
    stats: dict[str, Any] = Field(default_factory=dict)
    steps: list[StepView] = Field(default_factory=list)
    train_on: str = "all"
    exports: list[ExportUse] = Field(default_factory=list)
    exported: bool = Field(default=False, description="the run's exports have run (summary.json lists them)")


class BrowseData(BaseModel):
    """Everything ``browse.html`` embeds."""

    run_id: str
    stages: list[str]
    train_on: str
    items: list[ItemRow]
    tasks: dict[str, TaskView]
    trajectories: dict[str, TrajectoryView]


# --- what the run's exports trained on ---------------------------------------------------


class SftExportChoice(BaseModel):
    """One SFT exporter of the run, as it selected trajectories."""

    exporter: str
    min_pass_ratio: float


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def export_choices(run_dir: Path) -> tuple[str, list[SftExportChoice], bool]:
    """``dataset.train_on`` as the run's SFT exports applied it, those exports, and whether they ran.

    The exports' own results (``summary.json``) are the truth once they have run; before that
    (a run still going) the configured choice is what they will apply.
    """
    config = _read_yaml(run_dir / "config.yaml")
    summary = _read_json(run_dir / "summary.json")
    results = [e for e in summary.get("exports") or [] if isinstance(e, dict) and "train_on" in e]
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    if results:
        train_on = str(results[0]["train_on"])
    else:
        try:
            train_on = effective_train_on(dataset.get("train_on"), None)
        except ValueError:
            train_on = "all"
    configured = {
        str(ref.get("use")): ref.get("with") or {} for ref in config.get("exports") or [] if isinstance(ref, dict)
    }
    default_ratio = float(SFTConfig.model_fields["min_pass_ratio"].default)
    choices = []
    for result in results:
        options = configured.get(str(result.get("exporter")), {})
        ratio = options.get("min_pass_ratio", default_ratio) if isinstance(options, dict) else default_ratio
        choices.append(SftExportChoice(exporter=str(result.get("exporter")), min_pass_ratio=float(ratio)))
    return train_on, choices, bool(summary.get("exports"))


def export_use(record: TrajectoryRecord, choice: SftExportChoice) -> ExportUse:
    """Whether ``choice`` kept ``record``: the SFT exporters' filter (``SFTExporter.selected``)."""
    reason = exclusion_reason(record, choice.min_pass_ratio)
    if reason == "below min_pass_ratio":
        reason = f"pass ratio below min_pass_ratio {choice.min_pass_ratio:g}"
    return ExportUse(exporter=choice.exporter, included=reason is None, why=reason or "")


# --- reading the store -----------------------------------------------------------------


def _status_of(rows: list[dict[str, Any]], last_stage: int) -> tuple[ItemStatus, dict[str, Any]]:
    """An item's status and the step row it comes from (its last one)."""
    last = rows[-1]
    status = last["status"]
    if status in (StepStatus.REJECTED, StepStatus.FAILED):
        return status, last
    if status == StepStatus.DONE and last["stage_index"] >= last_stage:
        return "done", last
    return "pending", last


class _Outputs:
    """The items each step produced, parsed only when asked for (a big run has thousands of steps)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self._raw = {(r["item_id"], r["stage_index"]): r.get("outputs") for r in rows if r["status"] == StepStatus.DONE}
        self._parsed: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}

    def ids(self, item_id: str, stage_index: int) -> dict[str, dict[str, Any]]:
        """The outputs of one step, by id (as stored: validated by :meth:`get` when used)."""
        key = (item_id, stage_index)
        if key not in self._parsed:
            parsed = json.loads(self._raw.get(key) or "[]")
            self._parsed[key] = {str(o["id"]): o for o in parsed if isinstance(o, dict) and "id" in o}
        return self._parsed[key]

    def get(self, step: tuple[str, int], output_id: str) -> Item | None:
        raw = self.ids(*step).get(output_id)
        if raw is None:
            return None
        try:
            return Item.model_validate(raw)
        except ValidationError:
            return None


class _Payloads:
    """Where each item was last produced, found by reading as few steps' outputs as possible.

    An item that went on to a stage was an output of its previous step, and a step that fans
    out (one task, several trajectories) does so at the item's last step; so each item's own
    last finished step, plus the source stage's, name every item and hold its latest payload.
    """

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.outputs = _Outputs(rows)
        self.by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in sorted(rows, key=lambda r: r["stage_index"]):
            if not is_source_item(row["item_id"]):
                self.by_item[row["item_id"]].append(row)
        self.made_at: dict[str, tuple[str, int]] = {}  # item id -> the step whose outputs hold its latest payload
        self.produced_only: dict[str, int] = {}  # items with no step of their own -> the stage that made them
        for row in rows:
            if is_source_item(row["item_id"]) and row["status"] == StepStatus.DONE:
                self._read((row["item_id"], row["stage_index"]))
        for item_id, own in self.by_item.items():
            for row in reversed(own):
                if row["status"] == StepStatus.DONE:
                    self._read((item_id, row["stage_index"]))
                    if item_id in self.outputs.ids(item_id, row["stage_index"]):
                        break

    def _read(self, step: tuple[str, int]) -> None:
        for output_id in self.outputs.ids(*step):
            if output_id not in self.made_at or self.made_at[output_id][1] < step[1]:
                self.made_at[output_id] = step
            if output_id not in self.by_item:
                self.produced_only.setdefault(output_id, step[1])

    def item_ids(self) -> list[str]:
        return sorted(set(self.by_item) | set(self.produced_only))

    def latest(self, item_id: str) -> Item | None:
        """The item as the last step that produced it left it (its own, its parent's, or the source's)."""
        step = self.made_at.get(item_id)
        if step is None:
            parent = item_id.rsplit(".", 1)[0]  # Item.child ids; an item rejected at its first step of its own
            for row in reversed(self.by_item.get(parent, [])):
                if row["status"] == StepStatus.DONE and item_id in self.outputs.ids(parent, row["stage_index"]):
                    step = (parent, row["stage_index"])
                    break
        return self.outputs.get(step, item_id) if step is not None else None


def _title(data: dict[str, Any], item_id: str) -> str:
    task = data.get("task") if isinstance(data.get("task"), dict) else {}
    spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
    seed = data.get("seed") if isinstance(data.get("seed"), dict) else {}
    for candidate in (task.get("title"), spec.get("title"), data.get("text"), seed.get("text")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return item_id


def _field(data: dict[str, Any], name: str) -> Any:
    """``name`` from the task record, else from the item's own data, else from a recorded seed."""
    for source in (data.get("task"), data, data.get("seed")):
        if isinstance(source, dict) and source.get(name) not in (None, ""):
            return source[name]
    return None


def _detail(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A step's recorded detail as readable text, and as data when it is a JSON object."""
    raw = row.get("detail") or ""
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        return clip(raw), {}
    if isinstance(parsed, dict):
        return clip(json.dumps(parsed, indent=2, ensure_ascii=False)), parsed
    return clip(raw), {}


def _build_log(store: RunStore, item_id: str) -> tuple[str, str]:
    """The name and tail of the item's last build log (``build-N.log`` artifacts of the build stage)."""
    logs = [(stage, name, digest) for stage, name, digest in store.item_artifacts(item_id) if name.endswith(".log")]
    if not logs:
        return "", ""

    def attempt(entry: tuple[int, str, str]) -> tuple[int, int, str]:
        stem = entry[1].rsplit(".", 1)[0]
        number = stem.rsplit("-", 1)[-1]
        return entry[0], int(number) if number.isdigit() else 0, entry[1]

    _, name, digest = max(logs, key=attempt)
    try:
        text = store.read_artifact(digest).decode("utf-8", errors="replace")
    except OSError as exc:
        return name, f"(the log is not in the artifact store: {exc})"
    return name, tail(text, BUILD_LOG_TAIL)


def task_view(item_id: str, data: dict[str, Any], history: list[StageOutcome], detail: str, store: RunStore) -> TaskView:
    """The task page of an item whose latest payload is ``data`` (a task record, a spec or a seed)."""
    view = TaskView(id=item_id, history=history, detail=detail)
    seed = data.get("seed")
    if isinstance(seed, str):
        view.seed = seed
    elif isinstance(seed, dict):
        view.seed = str(seed.get("text") or "")
    else:
        view.seed = str(data.get("text") or "")
    if isinstance(data.get("spec"), dict):
        view.spec = data["spec"]
    task: TaskRecord | None = None
    if isinstance(data.get("task"), dict):
        try:
            task = TaskRecord.model_validate(data["task"])
        except ValidationError:
            task = None
    if task is not None:
        environment = dict(task.environment)
        view.dockerfile = clip(environment.pop("Dockerfile", ""))
        view.files = {path: clip(text) for path, text in environment.items()}
        view.binary_files = sorted(task.binary_files)
        view.tests = {path: clip(text) for path, text in task.tests.items()}
        view.solution = clip(task.solution)
        view.instruction = clip(task.instruction)
        view.workdir = task.workdir
        view.difficulty = task.difficulty
        view.spec = task.spec or view.spec
        view.seed = task.seed or view.seed
        view.build = task.build.model_dump(mode="json")
        view.test_reviews = [r.model_dump(mode="json") for r in task.test_reviews]
        view.validation = task.validation.model_dump(mode="json")
        for check in view.validation["checks"]:
            check["output_tail"] = clip(check["output_tail"])
        view.lint = task.lint
        view.models = task.models
        view.build_log_name, view.build_log_tail = _build_log(store, item_id)
    return view


def trajectory_view(
    item: Item, record: TrajectoryRecord, train_on: str, choices: list[SftExportChoice], exported: bool
) -> TrajectoryView:
    """The trajectory page: each step with its labels, what recovered from what, and its weight."""
    recovered_by: dict[int, list[int]] = defaultdict(list)
    for step in record.steps:
        if step.recovers_from is not None:
            recovered_by[step.recovers_from].append(step.index)
    steps = [_step_view(step, train_on, recovered_by.get(step.index, [])) for step in record.steps]
    return TrajectoryView(
        id=item.id,
        task_item=item.parent,
        model=record.model,
        agent_format=record.agent_format,
        seed=str(record.seed),
        instruction=clip(record.instruction),
        system_prompt=clip(record.system_prompt),
        finished=record.finished,
        resolved=record.resolved,
        pass_ratio=float(record.pass_ratio),
        tests_passed=record.tests_passed,
        tests_total=record.tests_total,
        test_output_tail=clip(record.test_output_tail),
        tools_used=record.tools_used,
        stats=record.stats,
        steps=steps,
        train_on=train_on,
        exports=[export_use(record, choice) for choice in choices],
        exported=exported,
    )


def _step_view(step: Step, train_on: str, recovered_by: list[int]) -> StepView:
    # built from a validated Step: model_construct skips validating it again (a big run has ~10^5 steps)
    return StepView.model_construct(
        **{
            **step.__dict__,
            "thought": clip(step.thought),
            "command": clip(step.command) if step.command is not None else None,
            "output": clip(step.output),
            "critic": [CriticVerdict.model_construct(accepted=v.accepted, feedback=clip(v.feedback)) for v in step.critic],
        },
        recovered_by=recovered_by,
        weight=step_weight(step, train_on),
    )


def _stage_names(run_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The pipeline's stage names in order: from ``config.yaml``, else as far as the store knows them."""
    names = {r["stage_index"]: r["stage_name"] for r in rows}
    configured = [s.get("use") for s in _read_yaml(run_dir / "config.yaml").get("stages") or [] if isinstance(s, dict)]
    count = max([len(configured)] + [index + 1 for index in names])
    return [str(configured[i]) if i < len(configured) and configured[i] else names.get(i, f"stage {i}") for i in range(count)]


def load_browse_data(run_dir: Path) -> BrowseData:
    """Every item of ``run_dir``'s store as the browser shows it (read-only use of the store)."""
    store = RunStore(run_dir)
    try:
        run_id = store.get_meta("run_id") or run_dir.name
        rows = store.stage_rows()
        return _assemble(run_dir, run_id, rows, store)
    finally:
        store.close()


def _assemble(run_dir: Path, run_id: str, rows: list[dict[str, Any]], store: RunStore) -> BrowseData:
    stages = _stage_names(run_dir, rows)
    last_stage = len(stages) - 1
    train_on, choices, exported = export_choices(run_dir)
    payloads = _Payloads(rows)

    items: list[ItemRow] = []
    tasks: dict[str, TaskView] = {}
    trajectories: dict[str, TrajectoryView] = {}
    children: dict[str, list[str]] = defaultdict(list)

    for item_id in payloads.item_ids():
        own = payloads.by_item.get(item_id, [])
        payload = payloads.latest(item_id)
        if own:
            status, last = _status_of(own, last_stage)
            detail_text, detail_data = _detail(last)
            stage_index = last["stage_index"] + 1 if status == "pending" and last["status"] == StepStatus.DONE else last["stage_index"]
            reason, failure_kind = last.get("reason") or "", last.get("failure_kind")
        else:
            made_at = payloads.produced_only[item_id]
            status = "done" if made_at >= last_stage else "pending"
            stage_index = made_at if status == "done" else made_at + 1
            detail_text, detail_data, reason, failure_kind = "", {}, "", None
        data = payload.data if payload is not None else {}
        if not data and isinstance(detail_data.get("seed"), dict):
            data = {"seed": detail_data["seed"]}  # a seed dropped before any step produced it
        kind = payload.kind if payload is not None else ("seed" if "seed" in data else "item")
        row = ItemRow(
            id=item_id,
            kind=kind,
            title=_title(data, item_id),
            category=str(_field(data, "category") or ""),
            category_name=str(_field(data, "category_name") or ""),
            tier=_field(data, "tier") if isinstance(_field(data, "tier"), int) else None,
            status=status,
            stage=stages[stage_index] if 0 <= stage_index < len(stages) else "",
            reason=reason,
            failure_kind=failure_kind if status == "failed" else None,
            parent=payload.parent if payload is not None else None,
        )
        history = [
            StageOutcome.model_construct(index=r["stage_index"], stage=r["stage_name"], status=r["status"], reason=r.get("reason") or "",
                         failure_kind=r.get("failure_kind"), attempts=r.get("attempts") or 0)
            for r in own
        ]
        record = _trajectory(payload)
        if record is not None and payload is not None:
            view = trajectory_view(payload, record, train_on, choices, exported)
            trajectories[item_id] = view
            row.resolved, row.pass_ratio = record.resolved, float(record.pass_ratio)
            row.error_modes = sorted({s.error_mode for s in record.steps if s.intent == "error" and s.error_mode})
            row.steps = len(record.steps)
            row.recoveries = sum(1 for s in record.steps if s.recovers_from is not None)
            if payload.parent:
                children[payload.parent].append(item_id)
        else:
            tasks[item_id] = task_view(item_id, data, history, detail_text, store)
        items.append(row)
    for row in items:
        row.trajectories = sorted(children.get(row.id, []))
    return BrowseData(run_id=run_id, stages=stages, train_on=train_on, items=items, tasks=tasks, trajectories=trajectories)


def _trajectory(item: Item | None) -> TrajectoryRecord | None:
    if item is None or not item.has_trajectory():
        return None
    try:
        return item.trajectory()
    except ValidationError:
        return None
