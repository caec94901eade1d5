"""Campaigns: ask for an outcome (``run.target``) instead of guessing a number of seeds.

Users want "1,000 verified tasks", not "3,000 seeds and hope": how many seeds
survive the quality gates is only known once they have run. With ``run.target``
the flow draws the source stage again (a *draw*: ``StageContext.draw`` 1, 2...)
whenever the work in flight is not expected to reach the target, until it is
met. Each draw is a step of its own in the run store (``__source__#n``), so a
resume replays every draw made before and goes on from there.

When to draw is an estimate: each seed (a *root*: the first stage's item and
everything derived from it) that finished every step yielded some number of
counted items; the items still in flight are expected to yield as many on
average (one per root before any root finished, so the first draws are not
over-eager). A draw is only made when the pool has room for more work, so the
estimate is as late, and as informed, as it can be.

The hard stops: the budget (``run.budget_usd``), ``max_draws``, a draw that gives
no new item (the source ran out: a seed file, or a model that repeats itself),
and a draw that fails. The run then says how far it got.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import TARGET_KINDS
from .errors import ConfigIssue
from .items import Item

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .plugins import ComponentRegistry

#: ``run.target`` goal → how the report names it.
GOAL_LABELS = {"verified_tasks": "verified tasks", "trajectories": "trajectories", "resolved_trajectories": "resolved trajectories"}


def _resolved(item: Item) -> bool:
    return item.has_trajectory() and item.trajectory().resolved


#: goals that count only some of the items of their kind (the others count every one)
GOAL_FILTERS: dict[str, Callable[[Item], bool]] = {"resolved_trajectories": _resolved}


def counting_stages(config: PipelineConfig, registry: ComponentRegistry) -> tuple[dict[str, int], list[ConfigIssue]]:
    """For each goal of ``run.target``: the index of the stage it is counted at, and the config issues.

    A goal is counted at the last stage whose outputs are of its kind; the first
    stage must be a source that can be drawn again (``Stage.draws_again``).
    """
    target = config.run.target
    if target is None:
        return {}, []
    from .contracts import stage_output_kinds

    issues: list[ConfigIssue] = []
    first = config.stages[0].use
    if first in registry.names("stage") and not getattr(registry.get("stage", first), "draws_again", False):
        issues.append(ConfigIssue(
            "run.target",
            f"the first stage ({first!r}) cannot be asked for more items; a target needs a source stage that can "
            "(such as seeds)",
        ))
    kinds = stage_output_kinds(config.stages, registry)
    at: dict[str, int] = {}
    for goal in target.goals():
        kind = TARGET_KINDS[goal]
        found = [index for index, out in enumerate(kinds) if out is not None and out == {kind}]
        if found:
            at[goal] = found[-1]
        else:
            issues.append(ConfigIssue(f"run.target.{goal}", f"no stage of this pipeline hands on {kind} items to count"))
    return at, issues


@dataclass
class Goal:
    """One goal of the target: how many items of a kind, counted at which stage."""

    name: str
    wanted: int
    stage_index: int
    reached: int = 0
    #: what each root yielded so far (roots still in flight and finished ones)
    by_root: Counter[str] = field(default_factory=Counter)
    #: the yields of finished roots, summed
    finished_yield: int = 0

    @property
    def label(self) -> str:
        return GOAL_LABELS.get(self.name, self.name)

    def count(self, outputs: list[Item]) -> int:
        """How many of a counting stage's outputs this goal counts."""
        keep = GOAL_FILTERS.get(self.name)
        return len(outputs) if keep is None else sum(1 for item in outputs if keep(item))

    def progress(self) -> str:
        return f"{self.reached} of {self.wanted} {self.label}"


class Campaign:
    """What the flow needs to keep drawing until a target is met; thread-safe (steps finish on many threads)."""

    def __init__(self, goals: list[Goal], max_draws: int) -> None:
        self.goals = goals
        self.max_draws = max_draws
        #: draws made so far (the first included)
        self.draws = 0
        #: why no further draw will be made ("" while drawing may go on)
        self.ended = ""
        self._root_of: dict[str, str] = {}
        self._alive: Counter[str] = Counter()
        self._finished_roots = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, config: PipelineConfig, registry: ComponentRegistry) -> Campaign | None:
        """The campaign ``run.target`` asks for (None without one). The config check has
        already refused a target this pipeline cannot count."""
        target = config.run.target
        if target is None:
            return None
        at, _issues = counting_stages(config, registry)
        goals = [Goal(name, wanted, at[name]) for name, wanted in target.goals().items() if name in at]
        return cls(goals, target.max_draws)

    # -- what the flow reports ------------------------------------------------

    def drew(self, draw: int, items: list[Item]) -> None:
        """Draw ``draw`` gave ``items`` (none: the source ran out)."""
        with self._lock:
            self.draws = max(self.draws, draw + 1)
            for item in items:
                self._root_of[item.id] = item.id
            if not items and draw > 0 and not self.ended:
                self.ended = f"draw {draw + 1} gave no new items (the source ran out, or repeated itself)"

    def stop_drawing(self, why: str) -> None:
        with self._lock:
            if not self.ended:
                self.ended = why

    def queued(self, item: Item) -> None:
        """A step of ``item`` was queued."""
        with self._lock:
            self._alive[self._root_of.setdefault(item.id, item.id)] += 1

    def finished(self, item: Item, stage_index: int, outputs: list[Item]) -> None:
        """A step of ``item`` at ``stage_index`` finished with ``outputs`` (call before queueing them)."""
        with self._lock:
            root = self._root_of.setdefault(item.id, item.id)
            for out in outputs:
                self._root_of[out.id] = root
            for goal in self.goals:
                if goal.stage_index == stage_index and outputs:
                    counted = goal.count(outputs)
                    goal.reached += counted
                    goal.by_root[root] += counted
            self._alive[root] -= 1

    def settle(self, item: Item) -> None:
        """After a finished step's outputs were queued: if its root has no step left, it counts as finished."""
        with self._lock:
            root = self._root_of.get(item.id, item.id)
            if self._alive.get(root, 1) <= 0:
                del self._alive[root]
                self._finished_roots += 1
                for goal in self.goals:
                    goal.finished_yield += goal.by_root.get(root, 0)

    # -- decisions ------------------------------------------------------------

    def met(self) -> bool:
        return all(goal.reached >= goal.wanted for goal in self.goals)

    def should_draw(self, steps_waiting: int, room: int) -> bool:
        """Whether to draw now: the target is not met, nothing ended the drawing, the pool has
        room (fewer than ``room`` steps waiting) and the work in flight is not expected to reach it."""
        with self._lock:
            if self.ended:
                return False
            if all(goal.reached >= goal.wanted for goal in self.goals):
                self.ended = "the target is met"
                return False
            if self.draws >= self.max_draws:
                self.ended = f"run.target.max_draws ({self.max_draws}) draws were made"
                return False
            if steps_waiting >= room:
                return False
            return any(self._expected(goal) < goal.wanted for goal in self.goals)

    def _expected(self, goal: Goal) -> float:
        """What ``goal`` is expected to reach once the work in flight is done."""
        per_root = (goal.finished_yield + 1) / (self._finished_roots + 1)
        in_flight = sum(max(goal.by_root.get(root, 0), per_root) for root in self._alive)
        return goal.finished_yield + in_flight

    # -- how far it got -------------------------------------------------------

    def progress(self) -> str:
        return ", ".join(goal.progress() for goal in self.goals)

    def shortfall(self) -> str:
        """Why the target was not met, and how far the run got."""
        return f"run.target not met: {self.progress()} after {self.draws} draw(s); {self.ended or 'stopped'}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "met": self.met(),
            "draws": self.draws,
            "max_draws": self.max_draws,
            "ended": self.ended,
            "goals": {goal.name: {"wanted": goal.wanted, "reached": goal.reached, "stage_index": goal.stage_index}
                      for goal in self.goals},
        }
