"""The figures of ``report.html``, aggregated from a run directory's store (data only, no HTML).

:func:`collect_run_stats` reads ``run.db`` (never taking the run lock: SQLite's WAL lets a
reader see a live run) and returns a :class:`RunStats`, a tree of frozen dataclasses that
:mod:`.plots` and :mod:`.report_page` turn into a page. Every part is computed from what the
store holds, so each section exists (possibly empty) for any run: an audit, an eval, a run
stopped after its second stage, an empty run.

Only the latest finished output of each item is read (plus the source stage's): an item's
record grows stage by stage (the task record carries its build, test reviews and validation),
so the latest one holds everything the earlier ones did, and a 5,000-item run is read once,
not once per stage.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from termigen_core.errors import TermigenError
from termigen_core.llm import PARSE_RETRY_PREFIX
from termigen_core.runlock import is_locked
from termigen_core.status import FailureKind, StepStatus
from termigen_core.store import RunStore, is_source_item, source_row_sql

from .tool_domains import domain_of

#: Outcome labels of a rejected or failed step, as the report shows them.
REJECTED = "rejected"
FAILED_INFRASTRUCTURE = "failed: infrastructure"
FAILED_TASK = "failed: task"
#: Item ids shown per reason group (the rest are in browse.html).
EXAMPLES_PER_REASON = 5
#: Rows of the per-trajectory table (the plots cover all of them; browse.html lists every one).
TRAJECTORY_ROWS = 50
UNKNOWN_CATEGORY = "(unknown)"


# --- the figures ------------------------------------------------------------------


@dataclass(frozen=True)
class StageFunnel:
    """One stage's row of the funnel (the numbers of ``RunStore.stage_report``)."""

    index: int
    name: str
    items_in: int
    items_out: int
    done: int
    rejected: int
    failed_infrastructure: int
    failed_task: int
    pending: int


@dataclass(frozen=True)
class ReasonGroup:
    """Rejections or failures at one stage whose reasons differ only in ids, numbers and quoted text."""

    stage: str
    outcome: str
    pattern: str
    count: int
    example_reason: str
    example_items: tuple[str, ...]


@dataclass(frozen=True)
class LLMUse:
    """Model use of one (stage, role, model): what was paid for, and how it went."""

    stage: str
    role: str
    model: str
    calls: int
    reasks: int
    retries: int
    failed_calls: int
    from_user_cache: int
    prompt_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    completion_tokens: int
    #: None when a model's price is unknown (never a silent 0).
    cost_usd: float | None
    latency_p50_s: float | None
    latency_p90_s: float | None
    latency_p99_s: float | None


@dataclass(frozen=True)
class LLMTotals:
    paid_calls: int
    cost_usd: float
    unpriced_calls: int
    reasks: int
    prompt_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    saved_usd: float


@dataclass(frozen=True)
class TaskFigures:
    """Build attempts and repairs, judge rounds, validation rounds and repairs, over the latest task records."""

    tasks: int = 0
    built: int = 0
    build_attempts: Mapping[int, int] = field(default_factory=dict)
    build_repaired: int = 0
    build_cached: int = 0
    build_errors: int = 0
    reviewed: int = 0
    judge_rounds: Mapping[int, int] = field(default_factory=dict)
    judge_revisions: int = 0
    validated: int = 0
    validation_passed: int = 0
    validation_rounds: Mapping[int, int] = field(default_factory=dict)
    validation_repairs: Mapping[str, int] = field(default_factory=dict)

    @property
    def build_attempts_total(self) -> int:
        return sum(k * v for k, v in self.build_attempts.items())


@dataclass(frozen=True)
class TrajectoryRow:
    """One trajectory as the report's table lists it."""

    item_id: str
    task_id: str
    category: str
    steps: int
    tokens: int
    errors: int
    error_modes: tuple[str, ...]
    recoveries: int
    resolved: bool
    pass_ratio: float


@dataclass(frozen=True)
class TrajectoryFigures:
    count: int = 0
    resolved: int = 0
    finished: int = 0
    steps: tuple[int, ...] = ()
    #: Tokens of the conversation at its last turn (prompt + reply): the trajectory's length.
    tokens: tuple[int, ...] = ()
    pass_ratios: tuple[float, ...] = ()
    errors_injected: int = 0
    error_modes: Mapping[str, int] = field(default_factory=dict)
    recoveries: int = 0
    #: Injected errors whose very next step diagnoses them.
    errors_followed_by_recovery: int = 0
    regenerations: int = 0
    #: Trajectories using each tool (each counted once per trajectory, as the paper does).
    tools: Mapping[str, int] = field(default_factory=dict)
    #: Domain → tool uses (trajectory, tool) in it.
    tool_domains: Mapping[str, int] = field(default_factory=dict)
    stopped: Mapping[str, int] = field(default_factory=dict)
    #: Category → (trajectories, resolved).
    by_category: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    rows: tuple[TrajectoryRow, ...] = ()

    @property
    def resolved_rate(self) -> float | None:
        return self.resolved / self.count if self.count else None


@dataclass(frozen=True)
class CategoryCoverage:
    """How far one category's items got: items done at each stage index."""

    id: str
    name: str
    tier: int | None
    in_taxonomy: bool
    done_by_stage: Mapping[int, int]
    trajectories: int
    resolved: int

    @property
    def seeded(self) -> bool:
        return any(self.done_by_stage.values())


@dataclass(frozen=True)
class TierCoverage:
    tier: int
    name: str
    categories: int
    categories_in: int


@dataclass(frozen=True)
class TaxonomyCoverage:
    """Categories and tiers of the run's taxonomy that its items cover, and those they do not."""

    taxonomy: str
    note: str
    categories: tuple[CategoryCoverage, ...] = ()
    tiers: tuple[TierCoverage, ...] = ()

    @property
    def covered(self) -> tuple[CategoryCoverage, ...]:
        return tuple(c for c in self.categories if c.seeded)

    @property
    def not_covered(self) -> tuple[CategoryCoverage, ...]:
        return tuple(c for c in self.categories if not c.seeded and c.in_taxonomy)


@dataclass(frozen=True)
class RunStats:
    run_id: str
    run_dir: Path
    generated_at: float
    live: bool
    last_status: str | None
    #: ``run.target`` as the last invocation left it (``summary.json``'s ``target``; None without one)
    target: dict[str, Any] | None
    stages: tuple[StageFunnel, ...]
    reasons: tuple[ReasonGroup, ...]
    llm: tuple[LLMUse, ...]
    llm_totals: LLMTotals
    tasks: TaskFigures
    trajectories: TrajectoryFigures
    taxonomy: TaxonomyCoverage


# --- reading the store --------------------------------------------------------------


def collect_run_stats(run_dir: Path) -> RunStats:
    """Every figure of the report for ``run_dir`` (a live run included; see the module docstring)."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.db").is_file():
        raise TermigenError(f"{run_dir} is not a run directory (it has no run.db): give the --out folder of a `termigen run`")
    store = RunStore(run_dir)
    try:
        stage_report = store.stage_report()
        run_id = store.get_meta("run_id") or run_dir.name
        rows = [*store.stage_rows(StepStatus.REJECTED), *store.stage_rows(StepStatus.FAILED)]
        cache = store.cache_savings()
        totals_cost, unpriced = store.total_llm_cost(), store.unpriced_call_count()
    finally:
        store.close()
    with _read_only(run_dir / "run.db") as db:
        latest = list(_latest_outputs(db))
        steps = _step_outcomes(db)
        llm = tuple(_llm_use(db))
    items = _ItemIndex(latest)
    stages = tuple(_funnel(stage_report))
    trajectories = _trajectory_figures(items)
    last = _last_summary(run_dir)
    return RunStats(
        run_id=run_id,
        run_dir=run_dir,
        generated_at=time.time(),
        live=is_locked(run_dir),
        last_status=str(last.get("status") or "") or None,
        target=last.get("target") or None,
        stages=stages,
        reasons=tuple(group_reasons(rows)),
        llm=llm,
        llm_totals=LLMTotals(
            paid_calls=sum(u.calls for u in llm), cost_usd=round(totals_cost, 6), unpriced_calls=unpriced,
            reasks=sum(u.reasks for u in llm), prompt_tokens=int(cache["prompt_tokens"] or 0),
            cache_read_tokens=int(cache["cache_read_tokens"] or 0), cache_write_tokens=int(cache["cache_write_tokens"] or 0),
            saved_usd=float(cache["saved_usd"] or 0.0),
        ),
        tasks=_task_figures(items),
        trajectories=trajectories,
        taxonomy=_taxonomy_coverage(run_dir, items, steps, trajectories),
    )


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that can only read (``query_only``), for the aggregates the store has no method for.

    Its queries run in one read transaction: on a live run they all see the same snapshot.
    """
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA query_only = ON")
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("ROLLBACK")
        db.close()


def _latest_outputs(db: sqlite3.Connection) -> Iterator[tuple[int, str, list[dict[str, Any]]]]:
    """``(stage_index, input item id, outputs)`` of each item's latest done step, and of the source steps."""
    cursor = db.execute(
        f"""SELECT s.stage_index, s.item_id, s.outputs FROM stage_runs s
           WHERE s.status = 'done' AND s.outputs IS NOT NULL
             AND ({source_row_sql("s.item_id")} OR s.stage_index =
                  (SELECT MAX(t.stage_index) FROM stage_runs t WHERE t.item_id = s.item_id AND t.status = 'done'))
           ORDER BY s.stage_index"""
    )
    for row in cursor:
        try:
            outputs = json.loads(row["outputs"])
        except ValueError:
            continue  # a row being written: the next report has it
        if isinstance(outputs, list):
            yield row["stage_index"], row["item_id"], [o for o in outputs if isinstance(o, dict)]


class _ItemIndex:
    """The latest outputs by item id, with each item's category (inherited from its parent if it has none)."""

    def __init__(self, latest: Iterable[tuple[int, str, list[dict[str, Any]]]]) -> None:
        self.items: dict[str, tuple[int, dict[str, Any]]] = {}
        self.done_by_stage: dict[int, Counter[str]] = defaultdict(Counter)
        self.category: dict[str, str] = {}
        self.tier: dict[str, int | None] = {}
        self.category_name: dict[str, str] = {}
        self._parent: dict[str, str] = {}
        self.source_outputs: list[tuple[int, dict[str, Any]]] = []
        for stage_index, input_id, outputs in latest:
            if is_source_item(input_id):
                self.source_outputs.extend((stage_index, item) for item in outputs)
            for item in outputs:
                item_id = str(item.get("id", ""))
                self.items[item_id] = (stage_index, item)  # rows come in stage order: the latest wins
                if item.get("parent"):
                    self._parent[item_id] = str(item["parent"])
                data = item.get("data") or {}
                task = data.get("task") if isinstance(data.get("task"), dict) else {}
                category = task.get("category") or data.get("category")
                if category and item_id not in self.category:
                    self.category[item_id] = str(category)
                    self.tier[str(category)] = _int_or_none(task.get("tier", data.get("tier")))
                    self.category_name.setdefault(str(category), str(task.get("category_name") or data.get("category_name") or ""))

    def category_of(self, item_id: str) -> str:
        seen = 0
        current: str | None = item_id
        while current is not None and seen < 16:
            if current in self.category:
                return self.category[current]
            current, seen = self._parent.get(current), seen + 1
        head = item_id.rsplit("-", 1)[0] if "-" in item_id else ""
        return head if head in self.tier else UNKNOWN_CATEGORY

    def tasks(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """``(task record, item meta)`` of each task's latest record (a trajectory item's copy when that is the latest)."""
        best: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {}
        for stage_index, item in self.items.values():
            task = (item.get("data") or {}).get("task")
            if isinstance(task, dict) and task.get("id"):
                key = str(task["id"])
                if key not in best or best[key][0] <= stage_index:
                    best[key] = (stage_index, task, item.get("meta") or {})
        for _, task, meta in best.values():
            yield task, meta

    def trajectories(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for item_id, (_, item) in self.items.items():
            trajectory = (item.get("data") or {}).get("trajectory")
            if isinstance(trajectory, dict):
                yield item_id, trajectory


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _funnel(report: list[dict[str, Any]]) -> Iterator[StageFunnel]:
    for entry in report:
        yield StageFunnel(
            index=entry["index"], name=entry["stage"], items_in=entry["in"], items_out=entry["out"], done=entry["done"],
            rejected=entry["rejected"], failed_infrastructure=entry["failed_infrastructure"], failed_task=entry["failed_task"],
            pending=entry["pending"],
        )


def _last_summary(run_dir: Path) -> dict[str, Any]:
    """What the last invocation wrote to ``summary.json`` (empty while there is none, or it is unreadable)."""
    try:
        data = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- rejection and failure reasons ------------------------------------------------------

_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|`[^`\n]*`")
_PARENTHESISED = re.compile(r"\s*\([^()]*\)")
_PATH = re.compile(r"(?<![\w.])/[\w.@+-]+(?:/[\w.@+-]+)+")
_HEX_ID = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{6,}\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_SPACES = re.compile(r"\s+")
#: A reason is cut at its first ": " once the kept part has this many words (the rest is per-item detail).
_WORDS_BEFORE_DETAIL = 3
MAX_PATTERN = 140
NO_REASON = "(no reason given)"


def reason_pattern(reason: str | None) -> str:
    """A reason with what differs between items replaced, so that alike reasons group together.

    Quoted text becomes ``'…'``, paths ``PATH``, hex ids ``ID``, numbers ``N``; parenthesised
    asides go; and the reason is cut at the first ``": "`` after a few words, where the
    per-item detail starts (``spec below min_score N after N rounds: <the evaluator's words>``).
    """
    if not (reason or "").strip():
        return NO_REASON
    text = (reason or "").strip().splitlines()[0]
    text = _QUOTED.sub("'…'", text)
    text = _PARENTHESISED.sub("", text)
    text = _PATH.sub("PATH", text)
    text = _HEX_ID.sub("ID", text)
    text = _NUMBER.sub("N", text)
    kept: list[str] = []
    for part in text.split(": "):
        kept.append(part)
        if len(" ".join(kept).split()) >= _WORDS_BEFORE_DETAIL:
            break
    pattern = _SPACES.sub(" ", ": ".join(kept)).strip()
    return pattern if len(pattern) <= MAX_PATTERN else pattern[: MAX_PATTERN - 1] + "…"


def outcome_of(row: Mapping[str, Any]) -> str:
    if row["status"] == StepStatus.REJECTED:
        return REJECTED
    return FAILED_INFRASTRUCTURE if row.get("failure_kind") == FailureKind.INFRASTRUCTURE else FAILED_TASK


def group_reasons(rows: Iterable[Mapping[str, Any]]) -> list[ReasonGroup]:
    """Rejected and failed steps grouped by (stage, outcome, reason pattern), largest group first."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(str(row["stage_name"]), outcome_of(row), reason_pattern(row.get("reason")))].append(row)
    result = [
        ReasonGroup(
            stage=stage, outcome=outcome, pattern=pattern, count=len(members),
            example_reason=str(members[0].get("reason") or "")[:500],
            example_items=tuple(str(m["item_id"]) for m in members[:EXAMPLES_PER_REASON]),
        )
        for (stage, outcome, pattern), members in groups.items()
    ]
    return sorted(result, key=lambda g: (-g.count, g.stage, g.outcome, g.pattern))


# --- LLM use ----------------------------------------------------------------------------


def _llm_use(db: sqlite3.Connection) -> Iterator[LLMUse]:
    """Per (stage, role, model): paid calls, re-asks, retries, tokens, cost and latency percentiles."""
    import numpy

    reask_marker = f"%{PARSE_RETRY_PREFIX}%"
    rows = db.execute(
        """SELECT COALESCE(stage, '') AS stage, COALESCE(role, '') AS role, COALESCE(model, '') AS model,
                  status, source, prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_s,
                  CASE WHEN status = 'ok' AND source = 'backend' AND request LIKE ? AND json_valid(request)
                       THEN json_extract(request, '$.messages[#-1].content') END AS last_message
           FROM llm_calls ORDER BY stage, role, model""",
        (reask_marker,),
    )
    grouped: dict[tuple[str, str, str], list[sqlite3.Row]] = defaultdict(list)
    for row in rows:
        grouped[(row["stage"], row["role"], row["model"])].append(row)
    for (stage, role, model), calls in sorted(grouped.items()):
        paid = [c for c in calls if c["status"] == "ok" and c["source"] == "backend"]
        latencies = [float(c["latency_s"] or 0.0) for c in paid]
        p50, p90, p99 = (
            (float(v) for v in numpy.percentile(latencies, [50, 90, 99])) if latencies else (None, None, None)
        )
        yield LLMUse(
            stage=stage, role=role, model=model, calls=len(paid),
            reasks=sum(1 for c in paid if isinstance(c["last_message"], str) and c["last_message"].startswith(PARSE_RETRY_PREFIX)),
            retries=sum(1 for c in calls if str(c["status"]).startswith("retry")),
            failed_calls=sum(1 for c in calls if c["status"] == "failed"),
            from_user_cache=sum(1 for c in calls if c["source"] == "user_cache"),
            prompt_tokens=sum(int(c["prompt_tokens"] or 0) for c in paid),
            cache_read_tokens=sum(int(c["cache_read_tokens"] or 0) for c in paid),
            cache_write_tokens=sum(int(c["cache_write_tokens"] or 0) for c in paid),
            completion_tokens=sum(int(c["completion_tokens"] or 0) for c in paid),
            cost_usd=None if any(c["cost_usd"] is None for c in paid) else round(sum(float(c["cost_usd"]) for c in paid), 6),
            latency_p50_s=p50, latency_p90_s=p90, latency_p99_s=p99,
        )


# --- tasks: builds, judge rounds, validation --------------------------------------------


def _task_figures(items: _ItemIndex) -> TaskFigures:
    tasks = list(items.tasks())
    build_attempts: Counter[int] = Counter()
    judge_rounds: Counter[int] = Counter()
    validation_rounds: Counter[int] = Counter()
    repairs: Counter[str] = Counter()
    repaired = cached = build_errors = revisions = passed = 0
    for task, meta in tasks:
        build = task.get("build") or {}
        attempts = int(build.get("attempts") or 0)
        if attempts or build.get("cached"):
            build_attempts[attempts] += 1
            repaired += attempts > 1
            cached += bool(build.get("cached"))
            build_errors += len(build.get("errors") or [])
        reviews = task.get("test_reviews") or []
        if reviews:
            judge_rounds[len(reviews)] += 1
            revisions += sum(1 for r in reviews if isinstance(r, dict) and r.get("verdict") != "approve")
        validation = task.get("validation") or {}
        if int(validation.get("rounds") or 0):
            validation_rounds[int(validation["rounds"])] += 1
            passed += bool(validation.get("passed"))
        for entry in meta.get("validation_history") or []:
            if isinstance(entry, dict) and entry.get("culprit"):
                repairs[str(entry["culprit"])] += 1
    return TaskFigures(
        tasks=len(tasks), built=sum(build_attempts.values()), build_attempts=dict(sorted(build_attempts.items())),
        build_repaired=repaired, build_cached=cached, build_errors=build_errors,
        reviewed=sum(judge_rounds.values()), judge_rounds=dict(sorted(judge_rounds.items())), judge_revisions=revisions,
        validated=sum(validation_rounds.values()), validation_passed=passed,
        validation_rounds=dict(sorted(validation_rounds.items())), validation_repairs=dict(repairs.most_common()),
    )


# --- trajectories -------------------------------------------------------------------------


def _trajectory_figures(items: _ItemIndex) -> TrajectoryFigures:
    from termigen_plugins.agent.tools import tools_used

    rows: list[TrajectoryRow] = []
    modes: Counter[str] = Counter()
    tools: Counter[str] = Counter()
    stopped: Counter[str] = Counter()
    followed = regenerations = finished = 0
    for item_id, record in items.trajectories():
        steps = [s for s in record.get("steps") or [] if isinstance(s, dict)]
        errors = [s for s in steps if s.get("intent") == "error"]
        modes.update(str(s.get("error_mode") or "?") for s in errors)
        followed += sum(
            1 for a, b in zip(steps, steps[1:]) if a.get("intent") == "error" and b.get("recovers_from") == a.get("index")
        )
        regenerations += sum(int(s.get("regenerations") or 0) for s in steps)
        used = record.get("tools_used") or tools_used(s.get("command") for s in steps if s.get("action") == "bash")
        tools.update(set(used))
        stats = record.get("stats") if isinstance(record.get("stats"), dict) else {}
        stopped[str(stats.get("stopped", "?"))] += 1
        finished += bool(record.get("finished"))
        task_id = str(record.get("task_id") or "")
        rows.append(TrajectoryRow(
            item_id=item_id, task_id=task_id, category=items.category_of(task_id or item_id), steps=len(steps),
            tokens=max((int(s.get("prompt_tokens") or 0) + int(s.get("completion_tokens") or 0) for s in steps), default=0),
            errors=len(errors), error_modes=tuple(sorted({str(s.get("error_mode") or "?") for s in errors})),
            recoveries=sum(1 for s in steps if s.get("recovers_from") is not None),
            resolved=bool(record.get("resolved")), pass_ratio=float(record.get("pass_ratio") or 0.0),
        ))
    by_category: dict[str, tuple[int, int]] = {}
    for row in rows:
        count, resolved = by_category.get(row.category, (0, 0))
        by_category[row.category] = (count + 1, resolved + row.resolved)
    domains: Counter[str] = Counter()
    for tool, count in tools.items():
        domains[domain_of(tool)] += count
    # the table shows the trajectories a reader most wants to open: unresolved first, then the most errors
    listed = sorted(rows, key=lambda r: (r.resolved, -r.errors, -r.steps, r.item_id))[:TRAJECTORY_ROWS]
    return TrajectoryFigures(
        count=len(rows), resolved=sum(r.resolved for r in rows), finished=finished,
        steps=tuple(r.steps for r in rows), tokens=tuple(r.tokens for r in rows), pass_ratios=tuple(r.pass_ratio for r in rows),
        errors_injected=sum(modes.values()), error_modes=dict(modes.most_common()),
        recoveries=sum(r.recoveries for r in rows), errors_followed_by_recovery=followed, regenerations=regenerations,
        tools=dict(tools.most_common()), tool_domains=dict(domains.most_common()), stopped=dict(stopped.most_common()),
        by_category=by_category, rows=tuple(listed),
    )


# --- taxonomy coverage -----------------------------------------------------------------------


def _step_outcomes(db: sqlite3.Connection) -> list[tuple[str, int, str]]:
    """``(item id, stage index, status)`` of every step of a real item (no outputs read)."""
    rows = db.execute(f"SELECT item_id, stage_index, status FROM stage_runs WHERE NOT {source_row_sql()}")
    return [(str(r["item_id"]), int(r["stage_index"]), str(r["status"])) for r in rows]


def _taxonomy_coverage(
    run_dir: Path, items: _ItemIndex, steps: list[tuple[str, int, str]], trajectories: TrajectoryFigures,
) -> TaxonomyCoverage:
    """The run's categories against its taxonomy: items done per stage for each category, tiers in and out."""
    taxonomy, note = _run_taxonomy(run_dir)
    done: dict[str, Counter[int]] = defaultdict(Counter)
    for stage_index, item in items.source_outputs:  # a source stage's items are done where they were made
        done[items.category_of(str(item.get("id", "")))][stage_index] += 1
    for item_id, stage_index, status in steps:
        if status == StepStatus.DONE:
            done[items.category_of(item_id)][stage_index] += 1
    categories: list[CategoryCoverage] = []
    known: set[str] = set()

    def coverage(category_id: str, name: str, tier: int | None, in_taxonomy: bool) -> CategoryCoverage:
        count, resolved = trajectories.by_category.get(category_id, (0, 0))
        return CategoryCoverage(id=category_id, name=name, tier=tier, in_taxonomy=in_taxonomy,
                                done_by_stage=dict(sorted(done.get(category_id, Counter()).items())),
                                trajectories=count, resolved=resolved)

    if taxonomy is not None:
        for category in taxonomy.categories:
            known.add(category.id)
            categories.append(coverage(category.id, category.name, category.tier, True))
    for category_id in sorted(set(done) - known):
        categories.append(coverage(category_id, items.category_name.get(category_id) or category_id, items.tier.get(category_id), False))
    tiers: list[TierCoverage] = []
    if taxonomy is not None:
        for tier in sorted({c.tier for c in taxonomy.categories}):
            members = [c for c in categories if c.in_taxonomy and c.tier == tier]
            tiers.append(TierCoverage(tier=tier, name=taxonomy.tier_name(tier), categories=len(members),
                                      categories_in=sum(1 for c in members if c.seeded)))
    return TaxonomyCoverage(taxonomy=taxonomy.name if taxonomy is not None else "", note=note,
                            categories=tuple(categories), tiers=tuple(tiers))


def _run_taxonomy(run_dir: Path) -> tuple[Any, str]:
    """The taxonomy the run's seed source used (from the run's ``config.yaml``), and a note saying which."""
    from termigen_plugins.taxonomy_builtin import load_taxonomy

    reference = _taxonomy_reference(run_dir / "config.yaml")
    if reference is None:
        return None, "the run's seed source is not a taxonomy: the categories below are those its items carry"
    try:
        if reference == "builtin":
            return load_taxonomy("builtin"), "the built-in taxonomy (the paper's Table 5)"
        path = Path(reference)
        if not path.is_absolute():
            path = run_dir / path
        return load_taxonomy(path), f"taxonomy file {reference}"
    except TermigenError as exc:
        return None, f"the run's taxonomy {reference} could not be read ({exc}): the categories below are those its items carry"


def _taxonomy_reference(config_file: Path) -> str | None:
    """``taxonomy`` of the first stage's ``source`` when that source is ``taxonomy``, else None."""
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        first = (config.get("stages") or [{}])[0] or {}
        source = (first.get("with") or {}).get("source")
    except (OSError, yaml.YAMLError, AttributeError, IndexError, TypeError):
        return None
    if isinstance(source, str):
        return "builtin" if source == "taxonomy" else None
    if isinstance(source, dict) and source.get("use") == "taxonomy":
        return str((source.get("with") or {}).get("taxonomy") or "builtin")
    return None
