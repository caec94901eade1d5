"""What runs inside a Ray worker process: a run's services, built once, and one step at a time.

The driver puts a :class:`WorkerSetup` (the validated config, the stage
instances, the component registry) in the object store once per invocation;
the first step a worker process runs builds the run's services from it (LLM
router, executor, sandbox limits) and keeps them for every later step of that
invocation. The services write to a :class:`~termigen_core.step_store.StepBuffer`
per step, which travels back with the outcome: the driver is the only writer of
``run.db``. Ray runs one task at a time in a worker process, so one "current
step" slot is enough.

Nothing here imports Ray: the engine (:mod:`.ray_engine`) wraps :func:`run_step`
as a Ray task and passes a reader for the driver's artifacts.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from termigen_core.engine import StepOutcome, StepRequest, execute_step
from termigen_core.errors import InfrastructureError
from termigen_core.status import StepStatus
from termigen_core.step_store import StepBuffer, StepLogCapture

if TYPE_CHECKING:
    from termigen_core.components import Stage
    from termigen_core.config import PipelineConfig
    from termigen_core.context import RunServices
    from termigen_core.plugins import ComponentRegistry

log = logging.getLogger("termigen")


@dataclass
class WorkerSetup:
    """What every step of one invocation shares; sent to the cluster once."""

    #: New per invocation: a worker never mixes services of two invocations.
    token: str
    run_id: str
    run_dir: str
    config_dir: str
    cfg: PipelineConfig
    stages: list[Stage]
    registry: ComponentRegistry


class _CurrentStep:
    """The run store the worker's services hold: it forwards to the buffer of the step in progress."""

    def __init__(self) -> None:
        self.buffer: StepBuffer | None = None

    def __getattr__(self, name: str) -> Any:
        buffer = self.__dict__.get("buffer")
        if buffer is None:
            raise RuntimeError(f"the run store was used outside a step ({name})")
        return getattr(buffer, name)


class WorkerRun:
    """One invocation's services in this worker process."""

    def __init__(self, setup: WorkerSetup) -> None:
        from termigen_core.assembly import build_router
        from termigen_core.components import instantiate
        from termigen_core.context import ImagePolicy, RunServices
        from termigen_core.sandbox import SandboxSpec

        cfg = setup.cfg
        config_dir = Path(setup.config_dir)
        registry = setup.registry
        self.setup = setup
        self.store = _CurrentStep()
        self.cancelled = threading.Event()  # the driver cancels a step by cancelling its Ray task
        router = build_router(
            cfg, registry, self.store, config_dir=config_dir,
            on_call=lambda record: self.store.records.llm_events.append(record), cancelled=self.cancelled,
        )
        executor_ref = cfg.executor
        assert executor_ref is not None  # the config's second pass names one

        def make_executor() -> Any:
            return instantiate(registry.get("executor", executor_ref.use), executor_ref.with_, config_dir)

        self.services: RunServices = RunServices(
            run_id=setup.run_id,
            run_dir=_work_root(setup.run_dir, setup.run_id),
            config_dir=config_dir,
            seed=cfg.run.seed,
            store=self.store,  # type: ignore[arg-type]
            registry=registry,
            router=router,
            executor_factory=make_executor,
            sandbox_defaults=SandboxSpec(image=cfg.images.base or "", cancel=self.cancelled),
            images=ImagePolicy.from_config(cfg.images, registry.get("executor", executor_ref.use)),
            container_slots=threading.BoundedSemaphore(cfg.run.container_concurrency),
            cancelled=self.cancelled,
            run_options=cfg.run,
        )
        # sandbox events (live displays, image janitors) go to the driver's listeners with the outcome
        self.services.on_sandbox = lambda *event: self.store.records.sandbox_events.append(event)  # type: ignore[attr-defined]
        self._executor_checked = False

    def run(self, step: StepRequest, read_artifact: Callable[[str], bytes], where: str) -> StepOutcome:
        from termigen_core.context import StageContext
        from termigen_core.llm import CallScope

        stage = self.setup.stages[step.stage_index]
        buffer = StepBuffer(answers=step.answers, scope=step.scope, spent_usd=step.spent_usd, read_remote_artifact=read_artifact)
        self.store.buffer = buffer
        _LOG_CAPTURE.current = buffer.records
        try:
            if step.uses_containers and not self._executor_checked:
                self.services.executor.check()  # once per worker process: this node's container engine
                self._executor_checked = True
            ctx = StageContext(self.services, step.stage_index, step.stage_name, step.item.id, CallScope(key=step.scope, stage=step.stage_name))
            outcome = execute_step(stage, step.item, ctx, interrupted=lambda: False)
        except Exception as exc:  # noqa: BLE001 - the engine check failed: an infrastructure failure of this step
            from termigen_core.failures import classify_failure, failure_reason

            outcome = StepOutcome(
                StepStatus.FAILED, reason=failure_reason(exc), detail=repr(exc), failure_kind=classify_failure(exc),
            )
        finally:
            self.store.buffer = None
            _LOG_CAPTURE.current = None
        outcome.records = buffer.records
        outcome.where = where
        outcome.stop_error = _picklable(outcome.stop_error)
        return outcome


def _work_root(run_dir: str, run_id: str) -> Path:
    """Where steps here keep scratch files: the run directory's path if it can be made on this
    machine (the same folder when the driver runs here), else a folder in the temp dir."""
    path = Path(run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        fallback = Path(tempfile.gettempdir()) / "termigen-ray" / run_id
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _picklable(error: InfrastructureError | None) -> InfrastructureError | None:
    """A stop error that can travel back to the driver (a plugin's own class might not)."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return InfrastructureError(str(error), stops_run=True)


_RUNS: dict[str, WorkerRun] = {}
_RUNS_LOCK = threading.Lock()
_LOG_CAPTURE = StepLogCapture()


def run_step(setup: WorkerSetup, step: StepRequest, read_artifact: Callable[[str], bytes], where: str) -> StepOutcome:
    """Run one step of ``setup``'s invocation in this process (services built on first use)."""
    with _RUNS_LOCK:
        run = _RUNS.get(setup.token)
        if run is None:
            _RUNS.clear()  # an earlier invocation's services are not needed again
            termigen_log = logging.getLogger("termigen")
            if _LOG_CAPTURE not in termigen_log.handlers:
                termigen_log.addHandler(_LOG_CAPTURE)
                termigen_log.setLevel(logging.INFO)
            run = _RUNS[setup.token] = WorkerRun(setup)
    return run.run(step, read_artifact, where)
