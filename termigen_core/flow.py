"""The flow of items through a run's stages, and how it stops.

Items flow stage by stage with many in flight: a bounded thread pool runs
(item, stage) steps, and each finished step submits its outputs to the next
stage at once, so a slow item never holds up the others (with ``run.engine``
naming an engine, that engine runs the steps elsewhere and this process stays the
run store's only writer: :mod:`~termigen_core.engine`). Every step's outcome
is written to the run store when it happens (:class:`~termigen_core.status.StepStatus`):
``done`` (outputs move on), ``rejected`` (a quality gate said no: final),
``failed`` (an error: retried on the next resume) or left ``pending``
(stopped by the budget, Ctrl-C or an infrastructure error that ``stops_run``).

:class:`StopState` is the run's one stop switch (the reason, the message, the
cancel event every sandbox command and the LLM router watch); :class:`Flow`
runs the source step once and then the per-item steps; :func:`export_items`
hands the final items to the exporters.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from .campaign import Campaign
from .components import Engine, Exporter, Stage, instantiate
from .context import ExportContext, RunServices, StageContext
from .contracts import check_output_kinds
from .engine import LOCAL_ENGINE, EngineRun, StepOutcome, StepRequest, execute_step
from .errors import BudgetExceeded, Cancelled, ConfigError, InfrastructureError, TermigenError
from .failures import classify_failure, failure_reason
from .items import Item
from .llm import CallScope
from .status import StepStatus
from .store import source_item

if TYPE_CHECKING:
    from .config import PipelineConfig, ResolvedPipeline
    from .plugins import PluginHost

log = logging.getLogger("termigen")

#: Why a run stops early (:attr:`StopState.reason`); empty while it is not stopping.
STOP_BUDGET = "budget"
STOP_INTERRUPTED = "interrupted"
STOP_INFRASTRUCTURE = "infrastructure"

HookCaller = Callable[..., None]


def call_hook(host: PluginHost, name: str, **kwargs: Any) -> None:
    """Lifecycle events never break a run: a raising listener is logged and ignored."""
    try:
        getattr(host.pm.hook, name)(**kwargs)
    except Exception:  # noqa: BLE001
        log.warning("a plugin's %s hook raised:\n%s", name, traceback.format_exc())


class StopState:
    """Whether the run is stopping, why (the first reason wins), and the cancel event."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.reason = ""
        self.message = ""
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def cancel(self, reason: str, message: str = "") -> None:
        """Stop starting new steps (steps in flight finish and are recorded)."""
        with self._lock:
            if not self.reason:
                self.reason = reason
                self.message = message
            self.cancelled.set()

    def stop_for(self, exc: InfrastructureError) -> None:
        """An infrastructure error going on cannot help (a refused key): stop like the budget does."""
        with self._lock:
            if not self.reason:
                self.error = exc
        self.cancel(
            STOP_INFRASTRUCTURE,
            f"stopped by an infrastructure error: {failure_reason(exc)}. Finished work is saved; fix the cause "
            "and re-run the same command to resume (the failed steps are retried).",
        )

    def interrupted(self) -> bool:
        """Ctrl-C or an infrastructure stop cut the steps in flight short (their sandbox commands
        are cancelled too): what they return then is not their real outcome."""
        return self.cancelled.is_set() and self.reason in (STOP_INTERRUPTED, STOP_INFRASTRUCTURE)


class Flow:
    """Runs the stages over the items of one run: the source step, then every (item, stage) step."""

    def __init__(
        self, cfg: PipelineConfig, stages: list[Stage], services: RunServices, stop: StopState, hook: HookCaller
    ) -> None:
        self.cfg = cfg
        self.stages = stages
        self.services = services
        self.stop = stop
        self._call_hook = hook
        #: ``run.target``'s progress (None: the source stage runs once)
        self.campaign = Campaign.of(cfg, services.registry)
        self._drawn: set[str] = set()

    def _context(self, index: int, item_id: str, draw: int = 0) -> StageContext:
        name = self.cfg.stages[index].use
        return StageContext(self.services, index, name, item_id, CallScope(key=f"{item_id}@{index}", stage=name), draw)

    def run(self) -> list[Item]:
        """The items that finished the last stage, sorted by id.

        With ``run.engine: local`` (the default) the per-item steps run on this
        process's thread pool; another engine is started (and checked) before any
        step, the source step included, and runs them wherever it runs them.
        """
        engine = self._engine()
        if engine is None:
            return self._run_steps(self._source_draws(), None)
        cancel = False
        try:
            engine.start(EngineRun(self.cfg, self.stages, self.services, self.stop, engine.config))
            return self._run_steps(self._source_draws(), engine)
        except KeyboardInterrupt:
            cancel = True
            raise
        finally:
            engine.close(cancel=cancel)

    def _engine(self) -> Engine | None:
        """The configured engine (None: the local thread pool), with its options from ``run.<name>``."""
        name = self.cfg.run.engine
        if name == LOCAL_ENGINE:
            return None
        from pydantic import ValidationError

        from .config import issues_from_validation

        cls = self.services.registry.get("engine", name)
        options = getattr(self.cfg.run, name, None) or {}
        try:
            return instantiate(cls, options, self.services.config_dir)  # type: ignore[return-value]
        except ValidationError as exc:
            raise ConfigError(issues_from_validation(exc, cls.Config, f"run.{name}")) from None

    def _run_steps(self, first: list[Item], engine: Engine | None) -> list[Item]:
        """Feed the source's items through the other stages; each finished step submits its
        outputs to the next stage at once."""
        stages, services, campaign = self.stages, self.services, self.campaign
        if len(stages) == 1:
            return first
        final: list[Item] = []
        started: set[int] = set()
        with ThreadPoolExecutor(max_workers=self.cfg.run.concurrency, thread_name_prefix="termigen") as pool:
            #: each future: the stage it runs and its input (a draw of the source stage: index 0, no item)
            pending: dict[Future[list[Item]], tuple[int, Item | None]] = {}
            remote = _RemoteSteps(self, engine) if engine is not None else None
            drawing = False
            #: steps whose outcome the store already holds (a resume): no draw until they are replayed,
            #: so a resumed campaign judges by what it has, and draws no more than it would have
            replays: set[Future[list[Item]]] = set()

            def submit(items: list[Item], index: int) -> None:
                for item in items:
                    if index == len(stages):
                        final.append(item)
                    elif not self.stop.cancelled.is_set():
                        if index not in started:
                            started.add(index)
                            self._call_hook("termigen_stage_start", run_id=services.run_id, stage_index=index, stage_name=stages[index].name)
                        if campaign is not None:
                            campaign.queued(item)
                        if remote is None:
                            future = pool.submit(self._step, stages[index], index, item)
                        else:
                            future = remote.submit(stages[index], index, item)
                        pending[future] = (index, item)
                        if campaign is not None and self._has_outcome(item, index):
                            replays.add(future)

            submit(first, 1)
            try:
                while True:
                    if (
                        campaign is not None and not drawing and not replays and not self.stop.cancelled.is_set()
                        and campaign.should_draw(len(pending), self.cfg.run.concurrency)
                    ):
                        drawing = True
                        pending[pool.submit(self._draw, campaign.draws)] = (0, None)
                    if not pending:
                        break
                    if remote is not None and remote.has_backlog:
                        remote.flush()
                    done, _ = wait(list(pending), timeout=remote.wait_s if remote else None, return_when=FIRST_COMPLETED)
                    if remote is not None:
                        remote.watch()
                    for future in done:
                        index, item = pending.pop(future)
                        replays.discard(future)
                        outputs = future.result()
                        if item is None:
                            drawing = False
                        elif campaign is not None:
                            campaign.finished(item, index, outputs)
                        submit(outputs, index + 1)
                        if item is not None and campaign is not None:
                            campaign.settle(item)
            except KeyboardInterrupt:
                self.stop.cancel(STOP_INTERRUPTED)
                for future in pending:
                    future.cancel()
                if remote is not None:
                    remote.abandon()
                raise
            finally:
                if remote is not None:
                    remote.close()
        # completion order depends on timing; exports must not
        return sorted(final, key=lambda item: item.id)

    def _has_outcome(self, item: Item, index: int) -> bool:
        """Whether the store holds a final outcome of this step (it will be replayed, not run)."""
        row = self.services.store.stage_run(item.id, index)
        return row is not None and row["status"] in (StepStatus.DONE, StepStatus.REJECTED)

    def _source_draws(self) -> list[Item]:
        """The source stage's first draw, then every later draw a campaign made before: a resume
        replays them all, so their items are finished and exported whatever the target says now."""
        stage = self.stages[0]
        items = self._new_items(0, self._step_source(stage, 0))
        for draw, _row in self.services.store.source_draws(0):
            if draw > 0:
                items += self._new_items(draw, self._step_source(stage, draw))
        return items

    def _new_items(self, draw: int, items: list[Item]) -> list[Item]:
        """The items of a draw that no earlier draw produced (a source that repeats itself adds nothing)."""
        fresh = [item for item in items if item.id not in self._drawn]
        self._drawn.update(item.id for item in fresh)
        if self.campaign is not None:
            self.campaign.drew(draw, fresh)
        return fresh

    def _draw(self, draw: int) -> list[Item]:
        """A campaign's next draw (on a pool thread); never raises: a failure ends the drawing, says why,
        and leaves the draw failed in the store, so the same command retries it."""
        campaign = self.campaign
        assert campaign is not None
        log.info("stage 0 %s: draw %d for run.target (so far: %s)", self.stages[0].name, draw + 1, campaign.progress())
        try:
            return self._new_items(draw, self._step_source(self.stages[0], draw))
        except BudgetExceeded as exc:
            self.stop.cancel(STOP_BUDGET, str(exc))
        except Cancelled:
            pass
        except InfrastructureError as exc:
            if exc.stops_run:
                self.stop.stop_for(exc)
            campaign.stop_drawing(f"draw {draw + 1} failed: {failure_reason(exc)} (run the same command again to retry it)")
        except TermigenError as exc:
            campaign.stop_drawing(f"draw {draw + 1} failed: {failure_reason(exc)}")
        except Exception as exc:  # noqa: BLE001 - a plugin's bug: the loop must go on finishing the items in flight
            log.error("stage 0 %s: draw %d failed: %s", self.stages[0].name, draw + 1, failure_reason(exc))
            campaign.stop_drawing(f"draw {draw + 1} failed: {failure_reason(exc)}")
        return []

    def _step_source(self, stage: Stage, draw: int = 0) -> list[Item]:
        """Run one draw of the source stage; again on a resume if it is not done, or if it recorded
        failed parts (a taxonomy category whose call failed): the stored LLM answers of the
        parts that worked are replayed for free, and only the failed parts are asked again."""
        services = self.services
        store = services.store
        step_id = source_item(draw)
        row = store.stage_run(step_id, 0)
        retry = store.failed_parts(0, draw)
        rerun = row is not None and row["status"] == StepStatus.DONE
        if rerun:
            if not retry:
                return store.outputs_of(row)  # type: ignore[arg-type]
            log.info(
                "stage 0 %s: running again for %d part(s) that failed last time: %s",
                stage.name, len(retry), ", ".join(r["item_id"] for r in retry[:10]),
            )
        started = time.time()
        if draw == 0:
            self._call_hook("termigen_stage_start", run_id=services.run_id, stage_index=0, stage_name=stage.name)
        store.mark_running(step_id, 0, stage.name)
        ctx = self._context(0, step_id, draw)
        try:
            items = checked_outputs(stage.produce(ctx), stage)
        except (BudgetExceeded, Cancelled):
            if rerun:  # keep what the stage had done; its failed parts stay failed for the next resume
                store.finish_stage(step_id, 0, StepStatus.DONE, outputs=store.outputs_of(row))  # type: ignore[arg-type]
            else:
                store.reset_stage(step_id, 0)
            raise
        except Exception as exc:
            store.finish_stage(
                step_id, 0, StepStatus.FAILED, reason=failure_reason(exc), detail=traceback.format_exc(),
                failure_kind=classify_failure(exc),
            )
            if isinstance(exc, TermigenError):
                raise
            raise TermigenError(f"the first stage ({stage.name}) failed: {failure_reason(exc)}") from exc
        store.forget_failed_parts(0, before=started, draw=draw)  # parts that failed before and worked now
        store.finish_stage(step_id, 0, StepStatus.DONE, outputs=items)
        return items

    def _step(self, stage: Stage, index: int, item: Item) -> list[Item]:
        """Run one (item, stage) here; never raises: the outcome is recorded and returned."""
        early = self._prepare(stage, index, item)
        if early is not None:
            return early
        outcome = execute_step(stage, item, self._context(index, item.id), interrupted=self.stop.interrupted)
        return self._finish(stage, index, item, outcome)

    def _prepare(self, stage: Stage, index: int, item: Item) -> list[Item] | None:
        """A step's outputs if it need not run (done or rejected before, or the run is
        stopping); else None, and the step is marked running."""
        store = self.services.store
        row = store.stage_run(item.id, index)
        if row is not None and row["status"] == StepStatus.DONE:
            self._event(index, stage, item, StepStatus.SKIPPED, None)
            return store.outputs_of(row)
        if row is not None and row["status"] == StepStatus.REJECTED:
            self._event(index, stage, item, StepStatus.REJECTED, row["reason"])
            return []
        if self.stop.cancelled.is_set():
            return []
        store.mark_running(item.id, index, stage.name)
        return None

    def _finish(self, stage: Stage, index: int, item: Item, outcome: StepOutcome) -> list[Item]:
        """Record a step's outcome (and, for a remote step, what it wrote); the outputs that move on."""
        store = self.services.store
        if outcome.records is not None:
            from .step_store import apply_records

            apply_records(
                store, outcome.records, emit_llm_call=self._llm_event, call_stats=self.services.router.stats,
                emit_sandbox_event=getattr(self.services, "on_sandbox", None),
            )
        status = outcome.status
        if status == StepStatus.PENDING:
            store.reset_stage(item.id, index)
            if outcome.budget_message is not None:
                self.stop.cancel(STOP_BUDGET, outcome.budget_message)
            elif outcome.stop_error is not None:
                self.stop.stop_for(outcome.stop_error)
            return []
        if status == StepStatus.DONE:
            store.finish_stage(item.id, index, StepStatus.DONE, outputs=outcome.outputs)
            self._event(index, stage, item, StepStatus.DONE, None)
            return outcome.outputs
        if status == StepStatus.REJECTED:
            store.finish_stage(item.id, index, StepStatus.REJECTED, reason=outcome.reason, detail=outcome.detail)
            self._event(index, stage, item, StepStatus.REJECTED, outcome.reason)
            return []
        store.finish_stage(
            item.id, index, StepStatus.FAILED, reason=outcome.reason, detail=outcome.detail, failure_kind=outcome.failure_kind,
        )
        self._event(index, stage, item, StepStatus.FAILED, outcome.reason)
        if outcome.stop_error is not None:
            self.stop.stop_for(outcome.stop_error)  # no new step starts; this one is retried on resume
        return []

    def _llm_event(self, record: dict[str, Any]) -> None:
        self._call_hook("termigen_llm_call", run_id=self.services.run_id, record=record)

    def _event(self, index: int, stage: Stage, item: Item, status: StepStatus, reason: str | None) -> None:
        self._call_hook(
            "termigen_item_event",
            # hooks get the plain string, as they always have
            run_id=self.services.run_id, stage_index=index, stage_name=stage.name, item=item, status=str(status), reason=reason,
        )


class _RemoteSteps:
    """The driver's side of steps an engine runs elsewhere.

    At most ``run.concurrency`` steps are out at once (the rest wait here, so a
    stop drops them before they start, as on the local thread pool). Each step is
    prepared here (skipped if done, marked running), sent with the stored answers
    of its scope, and finished here when the engine's future completes: what the
    step wrote and its outcome go to the store from this process only.
    """

    def __init__(self, flow: Flow, engine: Engine) -> None:
        from collections import deque

        from .step_store import StoredAnswers

        self.flow = flow
        self.engine = engine
        self.limit = flow.cfg.run.concurrency
        self.wait_s = engine.watch_interval_s
        self.backlog: deque[tuple[Stage, int, Item, Future[list[Item]]]] = deque()
        self._answers = StoredAnswers(flow.services.store)
        self._in_flight: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def submit(self, stage: Stage, index: int, item: Item) -> Future[list[Item]]:
        out: Future[list[Item]] = Future()
        self.backlog.append((stage, index, item, out))
        self.flush()
        return out

    def flush(self) -> None:
        while self.backlog:
            with self._lock:
                if len(self._in_flight) >= self.limit:
                    return
            self._send(*self.backlog.popleft())

    def _send(self, stage: Stage, index: int, item: Item, out: Future[list[Item]]) -> None:
        flow = self.flow
        try:
            early = flow._prepare(stage, index, item)
            if early is not None:
                out.set_result(early)
                return
            scope = flow._context(index, item.id).scope_key
            request = StepRequest(
                stage_index=index, stage_name=stage.name, item=item, scope=scope, uses_containers=stage.uses_executor,
                answers=self._answers.of_scope(scope), spent_usd=flow.services.store.total_llm_cost(),
            )
            with self._lock:
                self._in_flight.add((item.id, index))
            sent = self.engine.submit(request)
        except BaseException as exc:  # noqa: BLE001 - the loop re-raises it
            with self._lock:
                self._in_flight.discard((item.id, index))
            out.set_exception(exc)
            return
        sent.add_done_callback(lambda done: self._finished(done, stage, index, item, out))

    def _finished(self, done: Future[StepOutcome], stage: Stage, index: int, item: Item, out: Future[list[Item]]) -> None:
        try:
            try:
                outcome = done.result()
            except Exception as exc:  # noqa: BLE001 - an engine's own failure: the step is retried on resume
                outcome = StepOutcome(
                    StepStatus.FAILED, reason=failure_reason(exc), detail=traceback.format_exc(), failure_kind=classify_failure(exc),
                )
            with self._lock:
                if (item.id, index) not in self._in_flight:
                    return  # abandoned (Ctrl-C): already put back as pending
                self._in_flight.discard((item.id, index))
            out.set_result(self.flow._finish(stage, index, item, outcome))
        except BaseException as exc:  # noqa: BLE001 - never leave the loop waiting
            if not out.done():
                out.set_exception(exc)

    @property
    def has_backlog(self) -> bool:
        return bool(self.backlog)

    def watch(self) -> None:
        self.engine.watch()

    def abandon(self) -> None:
        """Ctrl-C: the steps out are put back as pending (a resume redoes them)."""
        with self._lock:
            lost, self._in_flight = self._in_flight, set()
        for item_id, index in lost:
            self.flow.services.store.reset_stage(item_id, index)
        self.backlog.clear()

    def close(self) -> None:
        self._answers.close()


def checked_outputs(result: Any, stage: Stage) -> list[Item]:
    """A stage's return value as a list of items, or ``TypeError``/``ValueError`` naming the bug:
    something that is not an :class:`Item`, two items with one id, or a kind the stage does not
    declare in ``produces``."""
    items = [result] if isinstance(result, Item) else list(result or [])
    for entry in items:
        if not isinstance(entry, Item):
            raise TypeError(f"stage {stage.name!r} returned {type(entry).__name__}, not Item")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"stage {stage.name!r} returned items with duplicate ids")
    check_output_kinds(stage, items)
    return items


def export_items(pipeline: ResolvedPipeline, items: list[Item], ctx: ExportContext) -> list[dict[str, Any]]:
    """Run every exporter over the final items; an exporter's failure is its result's ``error``."""
    results = []
    for (cls, options), ref in zip(pipeline.exports, pipeline.config.exports):
        exporter: Exporter = instantiate(cls, options, pipeline.config_dir)  # type: ignore[assignment]
        started = time.monotonic()
        try:
            result = {"exporter": ref.use, **exporter.export(items, ctx)}
        except (TermigenError, OSError) as exc:  # a path the user can fix (a file where a folder goes...)
            log.error("exporter %s failed: %s", ref.use, failure_reason(exc))
            result = {"exporter": ref.use, "error": failure_reason(exc)}
        except Exception as exc:  # noqa: BLE001 - the items stay in the store; re-run to export again
            log.error("exporter %s failed: %s (traceback in run.log)", ref.use, failure_reason(exc))
            _traceback_to_run_log(f"exporter {ref.use} failed:\n{traceback.format_exc()}")
            result = {"exporter": ref.use, "error": failure_reason(exc)}
        result["seconds"] = round(time.monotonic() - started, 3)
        results.append(result)
    return results


def _traceback_to_run_log(text: str) -> None:
    """A plugin bug's traceback is for its author: run.log keeps it, the console gets one line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (text.rstrip(),), None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
