"""Engines: where a run's (item, stage) steps execute.

The core runs every step in its own process by default (``run.engine: local``,
a thread pool in :mod:`~termigen_core.flow`). An *engine* component (kind
``engine``, registered through the ``register_engines`` hook) runs them
somewhere else, e.g. on a cluster, while the driver keeps everything that makes
a run resumable: it alone writes the run store, it decides which steps run
(done steps are skipped, rejected ones stay rejected), and it records each
step's :class:`StepOutcome` exactly as a local step's.

A step is split so that its middle can travel: the driver *prepares* it (marks
it running), :func:`execute_step` runs the stage and classifies what happened
into a :class:`StepOutcome` (no store write, so it can run anywhere), and the
driver *finishes* it (writes the outcome, fires the events, stops the run for
the budget or an infrastructure error). A remote step carries what it needs of
the store (:class:`StepRequest`: the stored answers of its own scope, for replay
on resume) and brings back what it would have written
(:class:`~termigen_core.step_store.StepRecords`).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BudgetExceeded, Cancelled, InfrastructureError, Reject
from .failures import classify_failure, failure_reason
from .status import StepStatus

if TYPE_CHECKING:
    from .components import Stage
    from .config import PipelineConfig
    from .context import RunServices, StageContext
    from .flow import StopState
    from .items import Item
    from .llm import LLMResponse
    from .step_store import StepRecords

#: The engine used when ``run.engine`` names none: the core's own thread pool (no component).
LOCAL_ENGINE = "local"


@dataclass
class StepOutcome:
    """What one step came to, wherever it ran; the driver records it.

    ``status`` is ``done``, ``rejected``, ``failed`` or ``pending`` (to be redone on
    resume: the budget, Ctrl-C, or an engine that lost the step with its node).
    """

    status: StepStatus
    outputs: list[Item] = field(default_factory=list)
    reason: str | None = None
    detail: str | None = None
    failure_kind: str | None = None
    #: An infrastructure error that stops the whole run (a refused key, no container engine left).
    stop_error: InfrastructureError | None = None
    #: Set when the budget stopped the step: the run stops with this message.
    budget_message: str | None = None
    #: What a remote step would have written to the store (None for a local step: it wrote directly).
    records: StepRecords | None = None
    #: Where it ran, in the engine's own terms (a node id); empty for a local step.
    where: str = ""

    @classmethod
    def pending(cls, reason: str = "", *, stop_error: InfrastructureError | None = None) -> StepOutcome:
        return cls(StepStatus.PENDING, reason=reason or None, stop_error=stop_error)


def execute_step(stage: Stage, item: Item, ctx: StageContext, *, interrupted: Callable[[], bool]) -> StepOutcome:
    """Run ``stage`` on ``item`` and classify the result; never raises, writes no step outcome.

    ``interrupted`` says whether Ctrl-C or an infrastructure stop cut the step's
    commands short: what it returned is then not its real outcome, so it stays pending.
    """
    from .flow import checked_outputs

    try:
        outputs = checked_outputs(stage.process(item, ctx), stage)
    except Reject as exc:
        if interrupted():
            return StepOutcome.pending()
        return StepOutcome(StepStatus.REJECTED, reason=exc.reason, detail=json.dumps(exc.details, default=str))
    except BudgetExceeded as exc:
        return StepOutcome(StepStatus.PENDING, budget_message=str(exc))
    except Cancelled:
        # the run is stopping and the router refused a new paid call: redo the step on
        # resume (its answered calls are in the store and replay for free)
        return StepOutcome.pending()
    except Exception as exc:  # noqa: BLE001 - one item's failure never stops the others
        if interrupted():
            return StepOutcome.pending()
        stops = exc if isinstance(exc, InfrastructureError) and exc.stops_run else None
        return StepOutcome(
            StepStatus.FAILED, reason=failure_reason(exc), detail=traceback.format_exc(),
            failure_kind=classify_failure(exc), stop_error=stops,
        )
    if interrupted():
        return StepOutcome.pending()
    return StepOutcome(StepStatus.DONE, outputs=outputs)


@dataclass
class StepRequest:
    """One step as an engine receives it: everything it needs besides the run's setup."""

    stage_index: int
    stage_name: str
    item: Item
    #: The LLM call scope of the step (``item@index``).
    scope: str
    #: The stage opens sandboxes, so the step must run where a container engine is.
    uses_containers: bool
    #: Stored answers of this scope by (request hash, occurrence): a redone step replays them.
    answers: dict[tuple[str, int], LLMResponse] = field(default_factory=dict)
    #: The run's known spend when the step was sent (the budget check adds the step's own).
    spent_usd: float = 0.0


@dataclass
class EngineRun:
    """What an engine gets when a run starts: the run's settings, services and stop switch."""

    cfg: PipelineConfig
    stages: list[Stage]
    services: RunServices
    stop: StopState
    #: The engine's options (``run.<engine name>``), validated against its ``Config`` already.
    options: Any = None

    @property
    def run_dir(self) -> Path:
        return self.services.run_dir
