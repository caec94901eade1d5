"""Running a validated pipeline over a run directory, resumably.

:class:`Runner` ties the parts together: it takes the run lock, builds the run's
services (:mod:`~termigen_core.assembly`), lets the items flow through the stages
(:mod:`~termigen_core.flow`), exports, judges and reports the run
(:mod:`~termigen_core.report`), and maps how it ended to an exit code. Every
step's outcome is written to the run store when it happens; re-running on the
same directory skips what is done (and replays stored LLM answers for whatever is
redone), so a crash or ``kill -9`` costs at most the steps in flight.

Outcomes of a step (:class:`~termigen_core.status.StepStatus`): ``done``,
``rejected`` (final), ``failed`` (retried on the next resume; classified as
``infrastructure`` or ``task`` by :func:`~termigen_core.failures.classify_failure`),
or left ``pending`` (stopped by the budget or Ctrl-C). An infrastructure error
that says going on cannot help (``stops_run``, e.g. a key the provider refuses)
stops the run like the budget does.

How a run ends (``RunSummary.status``, a :class:`~termigen_core.status.RunStatus`
→ exit code of ``termigen run``):

==========================  ====  ==================================================
``completed``               0     finished; something was produced and the failed
                                  share is within ``run.max_failed_fraction``
``completed_with_problems`` 5     finished, but no final item, too many items
                                  failed (:func:`~termigen_core.report.assess_health`),
                                  or ``run.target`` not met (the source ran out,
                                  ``max_draws``); the message says which
``failed``                  1     the first stage or an exporter failed
``stopped``                 1     an infrastructure error stopped the run (4 if it was
                                  the container engine); resumable
``budget_exhausted``        3     the budget is spent; resumable
``interrupted``             130   Ctrl-C; resumable
==========================  ====  ==================================================
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from .assembly import build_services, check_environment, open_store
from .config import ResolvedPipeline
from .context import ExportContext
from .errors import BudgetExceeded, Cancelled, ExecutorUnavailable, InfrastructureError, TermigenError
from .flow import STOP_BUDGET, STOP_INFRASTRUCTURE, STOP_INTERRUPTED, Flow, StopState, call_hook, export_items
from .items import Item
from .plugins import PluginHost
from .report import RunSummary, assess_health, render_report, summarise
from .runlock import RunLock
from .status import RunStatus
from .store import RunStore

log = logging.getLogger("termigen")

__all__ = ["EXIT_CODES", "RunSummary", "Runner"]

#: ``termigen run``'s exit code per status (see the module docstring).
EXIT_CODES = {
    RunStatus.COMPLETED: 0,
    RunStatus.FAILED: 1,
    RunStatus.STOPPED: 1,
    RunStatus.BUDGET_EXHAUSTED: 3,
    RunStatus.COMPLETED_WITH_PROBLEMS: 5,
    RunStatus.INTERRUPTED: 130,
}


class Runner:
    """One invocation of ``termigen run`` on one run directory."""

    def __init__(self, pipeline: ResolvedPipeline, host: PluginHost, run_dir: Path, *, argv: list[str] | None = None) -> None:
        self.pipeline = pipeline
        self.host = host
        self.run_dir = run_dir
        self.argv = argv or []
        self.cfg = pipeline.config
        self.stop = StopState()
        #: Set when the run is stopping (Ctrl-C, budget, infrastructure): no new step starts.
        self.cancelled: threading.Event = self.stop.cancelled

    def cancel(self, reason: str, message: str = "") -> None:
        """Stop starting new steps (steps in flight finish and are recorded)."""
        self.stop.cancel(reason, message)

    def _call_hook(self, name: str, **kwargs: Any) -> None:
        call_hook(self.host, name, **kwargs)

    def run(self) -> RunSummary:
        # first: a second run on this directory is refused before it touches anything
        # (the kernel drops the lock when this process ends, kill -9 included)
        with RunLock(self.run_dir):
            check_environment(self.pipeline, self.host)
            store, run_id = open_store(self.pipeline, self.run_dir)
            invocation = store.start_invocation(self.argv)
            status: str = RunStatus.FAILED
            listeners = self._register_run_listeners()
            try:
                summary = self._run(store, run_id)
                status = summary.status
                return summary
            finally:
                self._unregister_run_listeners(listeners)
                store.finish_invocation(invocation, status)
                store.close()

    def _register_run_listeners(self) -> list[Any]:
        """The plugins' per-run listeners (``termigen_run_listeners``), registered for this run only."""
        listeners = [obj for objs in self.host.pm.hook.termigen_run_listeners(pipeline=self.pipeline) for obj in objs or []]
        for n, listener in enumerate(listeners):
            self.host.pm.register(listener, name=f"termigen.run-listener.{n}.{id(listener)}")
        return listeners

    def _unregister_run_listeners(self, listeners: list[Any]) -> None:
        for listener in listeners:
            self.host.pm.unregister(listener)
            close = getattr(listener, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - a listener's cleanup never hides the run's outcome
                    log.warning("a run listener's close() raised", exc_info=True)

    def _run(self, store: RunStore, run_id: str) -> RunSummary:
        cfg = self.cfg
        built = build_services(
            self.pipeline, self.host, self.run_dir, store, run_id, cancelled=self.cancelled,
            on_llm_call=lambda record: self._call_hook("termigen_llm_call", run_id=run_id, record=record),
        )
        built.services.on_sandbox = lambda item_id, stage_name, event, image: self._call_hook(
            "termigen_sandbox_event", run_id=run_id, item_id=item_id, stage_name=stage_name, event=event, image=image,
        )
        self._call_hook("termigen_run_start", run_id=run_id, run_dir=str(self.run_dir), config=self.pipeline.redacted())
        final: list[Item] = []
        status, message, exit_code = RunStatus.COMPLETED, "", None
        flow = Flow(cfg, built.stages, built.services, self.stop, self._call_hook)
        try:
            final = flow.run()
        except KeyboardInterrupt:
            self.cancel(STOP_INTERRUPTED)
        except Cancelled:  # from a source stage: the stop reason is already set
            pass
        except BudgetExceeded as exc:  # from a source stage
            self.cancel(STOP_BUDGET, str(exc))
        except InfrastructureError as exc:  # from a source stage
            if exc.stops_run:
                self.stop.stop_for(exc)
            else:
                status, message = RunStatus.FAILED, str(exc)
        except TermigenError as exc:
            status, message = RunStatus.FAILED, str(exc)
        status, message, exit_code = self._stopped_status(status, message)

        exports = []
        if status in (RunStatus.COMPLETED, RunStatus.BUDGET_EXHAUSTED, RunStatus.STOPPED):
            exports = export_items(self.pipeline, final, ExportContext(run_id, self.run_dir, store, self.host.registry, cfg.dataset))
            if any("error" in e for e in exports) and status == RunStatus.COMPLETED:
                status, message = RunStatus.FAILED, "an exporter failed (see exports)"
        health = assess_health(store, len(final), cfg.run.max_failed_fraction)
        campaign = flow.campaign
        if campaign is not None and not campaign.met():
            # a target not met is a problem of a finished run; a stopped run says how far it got
            if status == RunStatus.COMPLETED:
                health["problems"].append(campaign.shortfall())
            elif status != RunStatus.FAILED:
                message = f"{message} ({campaign.progress()} of run.target so far)"
        if status == RunStatus.COMPLETED and health["problems"]:
            status = RunStatus.COMPLETED_WITH_PROBLEMS
            message = "completed, but " + "; ".join(health["problems"])
        summary = summarise(self.pipeline, self.run_dir, store, built.router, run_id, status, len(final), exports, message)
        summary.health = health
        summary.target = campaign.as_dict() if campaign is not None else None
        summary.exit_code = EXIT_CODES.get(status, 1) if exit_code is None else exit_code
        (self.run_dir / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2, default=str), encoding="utf-8")
        (self.run_dir / "report.md").write_text(render_report(summary), encoding="utf-8")
        self._call_hook("termigen_run_end", run_id=run_id, status=str(status), summary=summary.as_dict())
        return summary

    def _stopped_status(self, status: RunStatus, message: str) -> tuple[RunStatus, str, int | None]:
        """The run's status once a stop reason (budget, Ctrl-C, infrastructure) is taken into account;
        the exit code when it is not the status's own (4: the container engine stopped the run)."""
        stop = self.stop
        if stop.reason == STOP_BUDGET:
            return RunStatus.BUDGET_EXHAUSTED, stop.message, None
        if stop.reason == STOP_INTERRUPTED:
            return RunStatus.INTERRUPTED, "interrupted: finished work is saved; re-run the same command to resume", None
        if stop.reason == STOP_INFRASTRUCTURE:
            return RunStatus.STOPPED, stop.message, 4 if isinstance(stop.error, ExecutorUnavailable) else 1
        return status, message, None


def run_with_progress(pipeline: ResolvedPipeline, host: PluginHost, run_dir: Path, *, live: bool, argv: list[str] | None = None) -> tuple[RunSummary, Any]:
    """Run ``pipeline`` with the progress reporter registered for the run only; the summary and the reporter.

    What ``termigen run`` does, and what commands that build a pipeline in code
    (``termigen audit``, ``termigen eval``) share with it: the live display while it works, its summary after.
    """
    from .progress import make_reporter

    reporter = make_reporter(live=live, run_dir=run_dir)
    host.pm.register(reporter, name="termigen.progress")
    try:
        with reporter:
            summary = Runner(pipeline, host, run_dir, argv=argv).run()
    finally:
        host.pm.unregister(reporter)
    return summary, reporter
