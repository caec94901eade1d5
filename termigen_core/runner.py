"""Running a validated pipeline over a run directory, resumably.

Items flow stage by stage with many in flight: a bounded thread pool runs
(item, stage) steps, and each finished step submits its outputs to the next
stage at once, so a slow item never holds up the others. LLM calls and open
sandboxes have their own, separate limits. Every step's outcome is written to
the run store when it happens; re-running on the same directory skips what is
done (and replays stored LLM answers for whatever is redone), so a crash or
``kill -9`` costs at most the steps in flight.

Outcomes of a step: ``done`` (outputs move on), ``rejected`` (a quality gate
said no, with a reason: final), ``failed`` (an error, with its reason: retried
on the next resume), or left ``pending`` (stopped by the budget or Ctrl-C).
A failure is classified as ``infrastructure`` (the model API, the container
engine, the disk, the network: :func:`classify_failure`) or ``task``; an
infrastructure error that says going on cannot help (``stops_run``, e.g. a key
the provider refuses) stops the run like the budget does.

How a run ends (``RunSummary.status`` → exit code of ``termigen run``):

==========================  ====  ==================================================
``completed``               0     finished; something was produced and the failed
                                  share is within ``run.max_failed_fraction``
``completed_with_problems`` 5     finished, but no final item, or too many items
                                  failed (:func:`assess_health`); the message says which
``failed``                  1     the first stage or an exporter failed
``stopped``                 1     an infrastructure error stopped the run (4 if it was
                                  the container engine); resumable
``budget_exhausted``        3     the budget is spent; resumable
``interrupted``             130   Ctrl-C; resumable
==========================  ====  ==================================================
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
import time
import traceback
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .components import Exporter, Stage, instantiate
from .config import ResolvedPipeline
from .context import ExportContext, ImagePolicy, RunServices, StageContext
from .errors import (
    BudgetExceeded,
    Cancelled,
    ExecutorUnavailable,
    InfrastructureError,
    MissingSecret,
    ParseError,
    Reject,
    RunDirectoryMismatch,
    TermigenError,
)
from .items import Item
from .llm import CallScope, LLMRouter, merge_role_settings, role_backend_options
from .plugins import PluginHost
from .runlock import RunLock
from .sandbox import LABEL_RUN, SandboxSpec
from .store import FAILURE_INFRASTRUCTURE, FAILURE_TASK, SOURCE_ITEM, RunStore

log = logging.getLogger("termigen")

STATUS_COMPLETED = "completed"
STATUS_BUDGET = "budget_exhausted"
STATUS_INTERRUPTED = "interrupted"
STATUS_FAILED = "failed"
STATUS_PROBLEMS = "completed_with_problems"
STATUS_STOPPED = "stopped"

#: ``termigen run``'s exit code per status (see the module docstring).
EXIT_CODES = {
    STATUS_COMPLETED: 0,
    STATUS_FAILED: 1,
    STATUS_STOPPED: 1,
    STATUS_BUDGET: 3,
    STATUS_PROBLEMS: 5,
    STATUS_INTERRUPTED: 130,
}


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
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Runner:
    """One invocation of ``termigen run`` on one run directory."""

    def __init__(self, pipeline: ResolvedPipeline, host: PluginHost, run_dir: Path, *, argv: list[str] | None = None) -> None:
        self.pipeline = pipeline
        self.host = host
        self.run_dir = run_dir
        self.argv = argv or []
        self.cfg = pipeline.config
        self.cancelled = threading.Event()
        self._stop_reason = ""
        self._stop_lock = threading.Lock()

    # -- set-up --------------------------------------------------------------

    def _open_store(self) -> tuple[RunStore, str]:
        store = RunStore(self.run_dir)
        fingerprint = self.pipeline.fingerprint()
        previous = store.get_meta("fingerprint")
        if previous is not None and previous != fingerprint:
            store.close()
            raise RunDirectoryMismatch(
                f"{self.run_dir} holds a run of a different pipeline (its stages, models, seed or "
                "images differ from this config), so resuming would mix two pipelines' results. "
                "Use another output directory (--out DIR) or restore the original config. "
                f"(fingerprint {previous} != {fingerprint}; the original config is {self.run_dir / 'config.yaml'})"
            )
        run_id = store.get_meta("run_id")
        if run_id is None:
            run_id = f"{self.run_dir.name[:40]}-{uuid.uuid4().hex[:8]}"
            store.set_meta("run_id", run_id)
            store.set_meta("fingerprint", fingerprint)
            (self.run_dir / "config.yaml").write_text(
                yaml.safe_dump(self.pipeline.redacted(), sort_keys=False), encoding="utf-8"
            )
        store.mark_abandoned_invocations()
        return store, run_id

    def _roles(self) -> dict[str, Any]:
        roles = {"llm.default": self.cfg.llm.default}
        for name, settings in self.cfg.llm.roles.items():
            roles[f"llm.roles.{name}"] = merge_role_settings(self.cfg.llm.default, settings)
        return roles

    def _check_environment(self) -> None:
        """Fail before any work if a key is missing: better now than after an hour of builds."""
        problems = []
        registry = self.host.registry
        for path, settings in self._roles().items():
            options = role_backend_options(self.cfg.llm.backends, settings)
            backend = instantiate(registry.get("llm_backend", settings.backend), options, self.pipeline.config_dir)
            problems += [f"{path}: {p}" for p in backend.validate_environment(settings)]  # type: ignore[attr-defined]
            if self.cfg.run.budget_usd is not None and not backend.capabilities(settings).priced:  # type: ignore[attr-defined]
                problems.append(
                    f"{path}: run.budget_usd is set, but the price of {settings.model} is unknown, so the budget "
                    f"cannot be enforced: set input_cost_per_token and output_cost_per_token under "
                    f"llm.backends.{settings.backend} (0 for a free local model), or remove run.budget_usd"
                )
        if problems:
            raise MissingSecret("cannot start the run:\n  " + "\n  ".join(problems))

    def _make_executor(self) -> Any:
        cls, options = self.pipeline.executor
        return instantiate(cls, options, self.pipeline.config_dir)

    def _call_hook(self, name: str, **kwargs: Any) -> None:
        """Lifecycle events never break a run: a raising listener is logged and ignored."""
        try:
            getattr(self.host.pm.hook, name)(**kwargs)
        except Exception:  # noqa: BLE001
            log.warning("a plugin's %s hook raised:\n%s", name, traceback.format_exc())

    # -- the run ---------------------------------------------------------------

    def run(self) -> RunSummary:
        # first: a second run on this directory is refused before it touches anything
        # (the kernel drops the lock when this process ends, kill -9 included)
        with RunLock(self.run_dir):
            self._check_environment()
            store, run_id = self._open_store()
            invocation = store.start_invocation(self.argv)
            status = STATUS_FAILED
            try:
                summary = self._run(store, run_id)
                status = summary.status
                return summary
            finally:
                store.finish_invocation(invocation, status)
                store.close()

    def _run(self, store: RunStore, run_id: str) -> RunSummary:
        cfg = self.cfg
        registry = self.host.registry
        user_cache = None
        if cfg.run.user_llm_cache:
            from .usercache import UserLLMCache
            from .userdirs import user_dirs

            user_cache = UserLLMCache(user_dirs().llm_cache)
        router = LLMRouter(
            default=cfg.llm.default,
            roles=cfg.llm.roles,
            backends={name: registry.get("llm_backend", name) for name in registry.names("llm_backend")},  # type: ignore[misc]
            store=store,
            budget_usd=cfg.run.budget_usd,
            max_concurrent_calls=cfg.run.llm_concurrency,
            backend_options=cfg.llm.backends,
            on_call=lambda record: self._call_hook("termigen_llm_call", run_id=run_id, record=record),
            user_cache=user_cache,
            base_dir=self.pipeline.config_dir,
            cancelled=self.cancelled,  # after Ctrl-C no new paid call starts
        )
        executor_options = self.pipeline.executor[1]
        services = RunServices(
            run_id=run_id,
            run_dir=self.run_dir,
            config_dir=self.pipeline.config_dir,
            seed=cfg.run.seed,
            store=store,
            registry=registry,
            router=router,
            executor_factory=self._make_executor,
            sandbox_defaults=SandboxSpec(
                image=cfg.images.base,
                cancel=self.cancelled,  # Ctrl-C stops running commands within a fraction of a second
                **{k: getattr(executor_options, k) for k in ("memory_mb", "cpus", "pids_limit", "network") if hasattr(executor_options, k)},
            ),
            images=ImagePolicy(cfg.images.base, dict(cfg.images.aliases)),
            container_slots=threading.BoundedSemaphore(cfg.run.container_concurrency),
            cancelled=self.cancelled,
        )
        stages: list[Stage] = [instantiate(cls, opts, self.pipeline.config_dir) for cls, opts in self.pipeline.stages]  # type: ignore[misc]
        if any(stage.uses_executor for stage in stages):
            services.executor.check()
            self._reap_containers(services.executor, run_id)

        self._call_hook("termigen_run_start", run_id=run_id, run_dir=str(self.run_dir), config=self.pipeline.redacted())
        final: list[Item] = []
        status = STATUS_COMPLETED
        message = ""
        exit_code: int | None = None
        try:
            final = self._flow(stages, services)
        except KeyboardInterrupt:
            self.cancel("interrupted")
        except Cancelled:  # from a source stage: the stop reason is already set
            pass
        except BudgetExceeded as exc:  # from a source stage
            self.cancel("budget", str(exc))
        except InfrastructureError as exc:  # from a source stage
            if exc.stops_run:
                self._stop_for(exc)
            else:
                status, message = STATUS_FAILED, str(exc)
        except TermigenError as exc:
            status, message = STATUS_FAILED, str(exc)
        if self._stop_reason == "budget":
            status, message = STATUS_BUDGET, self._stop_message
        elif self._stop_reason == "interrupted":
            status, message = STATUS_INTERRUPTED, "interrupted: finished work is saved; re-run the same command to resume"
        elif self._stop_reason == "infrastructure":
            status, message = STATUS_STOPPED, self._stop_message
            exit_code = 4 if isinstance(self._stop_error, ExecutorUnavailable) else 1

        exports = []
        if status in (STATUS_COMPLETED, STATUS_BUDGET, STATUS_STOPPED):
            exports = self._export(final, ExportContext(run_id, self.run_dir, store, registry))
            if any("error" in e for e in exports) and status == STATUS_COMPLETED:
                status, message = STATUS_FAILED, "an exporter failed (see exports)"
        health = assess_health(store, len(final), cfg.run.max_failed_fraction)
        if status == STATUS_COMPLETED and health["problems"]:
            status = STATUS_PROBLEMS
            message = "completed, but " + "; ".join(health["problems"])
        summary = self._summarise(store, router, run_id, status, len(final), exports, message)
        summary.health = health
        summary.exit_code = EXIT_CODES.get(status, 1) if exit_code is None else exit_code
        (self.run_dir / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2, default=str), encoding="utf-8")
        (self.run_dir / "report.md").write_text(render_report(summary), encoding="utf-8")
        self._call_hook("termigen_run_end", run_id=run_id, status=status, summary=summary.as_dict())
        return summary

    _stop_message = ""
    _stop_error: BaseException | None = None

    def _reap_containers(self, executor: Any, run_id: str) -> None:
        """Remove this run's containers an earlier, killed invocation left behind.

        Safe because this process holds the run lock: no other live process of this
        run exists, so every container labelled with the run id is an orphan.
        """
        try:
            removed = executor.prune({LABEL_RUN: run_id})
        except Exception as exc:  # noqa: BLE001 - leftovers cost resources, not results
            log.warning("could not remove containers left behind by an earlier run of %s: %s; "
                        "`termigen sandbox prune --run %s` removes them", run_id, _reason(exc), run_id)
            return
        if removed:
            log.info("removed %d container(s) left behind by an earlier, interrupted invocation of run %s", removed, run_id)

    def cancel(self, reason: str, message: str = "") -> None:
        """Stop starting new steps (steps in flight finish and are recorded)."""
        with self._stop_lock:
            if not self._stop_reason:
                self._stop_reason = reason
                self._stop_message = message
            self.cancelled.set()

    def _stop_for(self, exc: InfrastructureError) -> None:
        """An infrastructure error going on cannot help (a refused key): stop like the budget does."""
        with self._stop_lock:
            if not self._stop_reason:
                self._stop_error = exc
        self.cancel(
            "infrastructure",
            f"stopped by an infrastructure error: {_reason(exc)}. Finished work is saved; fix the cause "
            "and re-run the same command to resume (the failed steps are retried).",
        )

    def _interrupted(self) -> bool:
        """Ctrl-C or an infrastructure stop cut the steps in flight short (their sandbox commands
        are cancelled too): what they return then is not their real outcome."""
        return self.cancelled.is_set() and self._stop_reason in ("interrupted", "infrastructure")

    def _context(self, services: RunServices, index: int, item_id: str) -> StageContext:
        name = self.cfg.stages[index].use
        return StageContext(services, index, name, item_id, CallScope(key=f"{item_id}@{index}", stage=name))

    def _flow(self, stages: list[Stage], services: RunServices) -> list[Item]:
        first = self._step_source(stages[0], services)
        if len(stages) == 1:
            return first
        final: list[Item] = []
        started: set[int] = set()
        with ThreadPoolExecutor(max_workers=self.cfg.run.concurrency, thread_name_prefix="termigen") as pool:
            pending: dict[Future[list[Item]], int] = {}

            def submit(items: list[Item], index: int) -> None:
                for item in items:
                    if index == len(stages):
                        final.append(item)
                    elif not self.cancelled.is_set():
                        if index not in started:
                            started.add(index)
                            self._call_hook("termigen_stage_start", run_id=services.run_id, stage_index=index, stage_name=stages[index].name)
                        pending[pool.submit(self._step, stages[index], index, item, services)] = index

            submit(first, 1)
            try:
                while pending:
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for future in done:
                        index = pending.pop(future)
                        submit(future.result(), index + 1)
            except KeyboardInterrupt:
                self.cancel("interrupted")
                for future in pending:
                    future.cancel()
                raise
        # completion order depends on timing; exports must not
        return sorted(final, key=lambda item: item.id)

    def _step_source(self, stage: Stage, services: RunServices) -> list[Item]:
        """Run the source stage once; again on a resume if it is not done, or if it recorded
        failed parts (a taxonomy category whose call failed): the stored LLM answers of the
        parts that worked are replayed for free, and only the failed parts are asked again."""
        store = services.store
        row = store.stage_run(SOURCE_ITEM, 0)
        retry = store.failed_parts(0)
        rerun = row is not None and row["status"] == "done"
        if rerun:
            if not retry:
                return store.outputs_of(row)  # type: ignore[arg-type]
            log.info(
                "stage 0 %s: running again for %d part(s) that failed last time: %s",
                stage.name, len(retry), ", ".join(r["item_id"] for r in retry[:10]),
            )
        started = time.time()
        self._call_hook("termigen_stage_start", run_id=services.run_id, stage_index=0, stage_name=stage.name)
        store.mark_running(SOURCE_ITEM, 0, stage.name)
        ctx = self._context(services, 0, SOURCE_ITEM)
        try:
            items = _checked_outputs(stage.produce(ctx), stage.name)
        except (BudgetExceeded, Cancelled):
            if rerun:  # keep what the stage had done; its failed parts stay failed for the next resume
                store.finish_stage(SOURCE_ITEM, 0, "done", outputs=store.outputs_of(row))  # type: ignore[arg-type]
            else:
                store.reset_stage(SOURCE_ITEM, 0)
            raise
        except Exception as exc:
            store.finish_stage(
                SOURCE_ITEM, 0, "failed", reason=_reason(exc), detail=traceback.format_exc(), failure_kind=classify_failure(exc)
            )
            if isinstance(exc, TermigenError):
                raise
            raise TermigenError(f"the first stage ({stage.name}) failed: {_reason(exc)}") from exc
        store.forget_failed_parts(0, before=started)  # parts that failed before and worked now
        store.finish_stage(SOURCE_ITEM, 0, "done", outputs=items)
        return items

    def _step(self, stage: Stage, index: int, item: Item, services: RunServices) -> list[Item]:
        """Run one (item, stage); never raises: the outcome is recorded and returned."""
        store = services.store
        row = store.stage_run(item.id, index)
        if row is not None and row["status"] == "done":
            self._event(services, index, stage, item, "skipped", None)
            return store.outputs_of(row)
        if row is not None and row["status"] == "rejected":
            self._event(services, index, stage, item, "rejected", row["reason"])
            return []
        if self.cancelled.is_set():
            return []
        store.mark_running(item.id, index, stage.name)
        ctx = self._context(services, index, item.id)
        try:
            outputs = _checked_outputs(stage.process(item, ctx), stage.name)
            if self._interrupted():
                # commands were cut short by Ctrl-C: this result is not the stage's real outcome
                store.reset_stage(item.id, index)
                return []
        except Reject as exc:
            if self._interrupted():
                store.reset_stage(item.id, index)
                return []
            store.finish_stage(item.id, index, "rejected", reason=exc.reason, detail=json.dumps(exc.details, default=str))
            self._event(services, index, stage, item, "rejected", exc.reason)
            return []
        except BudgetExceeded as exc:
            store.reset_stage(item.id, index)
            self.cancel("budget", str(exc))
            return []
        except Cancelled:
            # the run is stopping and the router refused a new paid call: redo the step on
            # resume (its answered calls are in the store and replay for free)
            store.reset_stage(item.id, index)
            return []
        except Exception as exc:  # noqa: BLE001 - one item's failure never stops the others
            if self._interrupted():
                store.reset_stage(item.id, index)
                return []
            reason = _reason(exc)
            kind = classify_failure(exc)
            store.finish_stage(item.id, index, "failed", reason=reason, detail=traceback.format_exc(), failure_kind=kind)
            self._event(services, index, stage, item, "failed", reason)
            if isinstance(exc, InfrastructureError) and exc.stops_run:
                self._stop_for(exc)  # no new step starts; this one is retried on resume
            return []
        store.finish_stage(item.id, index, "done", outputs=outputs)
        self._event(services, index, stage, item, "done", None)
        return outputs

    def _event(self, services: RunServices, index: int, stage: Stage, item: Item, status: str, reason: str | None) -> None:
        self._call_hook(
            "termigen_item_event",
            run_id=services.run_id, stage_index=index, stage_name=stage.name, item=item, status=status, reason=reason,
        )

    # -- the end -----------------------------------------------------------------

    def _export(self, items: list[Item], ctx: ExportContext) -> list[dict[str, Any]]:
        results = []
        for (cls, options), ref in zip(self.pipeline.exports, self.cfg.exports):
            exporter: Exporter = instantiate(cls, options, self.pipeline.config_dir)  # type: ignore[assignment]
            started = time.monotonic()
            try:
                result = {"exporter": ref.use, **exporter.export(items, ctx)}
            except (TermigenError, OSError) as exc:  # a path the user can fix (a file where a folder goes...)
                log.error("exporter %s failed: %s", ref.use, _reason(exc))
                result = {"exporter": ref.use, "error": _reason(exc)}
            except Exception as exc:  # noqa: BLE001 - the items stay in the store; re-run to export again
                log.error("exporter %s failed: %s (traceback in run.log)", ref.use, _reason(exc))
                self._traceback_to_run_log(f"exporter {ref.use} failed:\n{traceback.format_exc()}")
                result = {"exporter": ref.use, "error": _reason(exc)}
            result["seconds"] = round(time.monotonic() - started, 3)
            results.append(result)
        return results

    @staticmethod
    def _traceback_to_run_log(text: str) -> None:
        """A plugin bug's traceback is for its author: run.log keeps it, the console gets one line."""
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (text.rstrip(),), None)
        for handler in log.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    def _summarise(self, store: RunStore, router: LLMRouter, run_id: str, status: str, final: int, exports: list[dict[str, Any]], message: str) -> RunSummary:
        usage = store.llm_usage_by_stage()
        stages = store.stage_report()
        done_outputs: dict[int, list[Item]] = {}
        for row in store.stage_rows("done"):
            done_outputs.setdefault(row["stage_index"], []).extend(store.outputs_of(row))
        for entry in stages:
            calls = usage.get(entry["stage"], {})
            entry["llm_calls"] = calls.get("calls", 0)
            entry["tokens"] = (calls.get("prompt_tokens") or 0) + (calls.get("completion_tokens") or 0)
            entry["cost_usd"] = calls.get("cost_usd") or 0.0
            entry.update(self._stage_details(entry["index"], done_outputs.get(entry["index"], [])))
        rows = [r for r in store.stage_rows() if r["status"] in ("failed", "rejected")]
        failures = [{"item": r["item_id"], "stage": r["stage_name"], "status": r["status"], "reason": r["reason"]} for r in rows]
        infrastructure = [
            {"item": r["item_id"], "stage": r["stage_name"], "reason": r["reason"]}
            for r in rows
            if r["status"] == "failed" and r.get("failure_kind") == FAILURE_INFRASTRUCTURE
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
            run_id, str(self.run_dir), status, stages, final, llm, exports, failures[:200], message,
            infrastructure_failures=infrastructure[:200],
        )

    def _stage_details(self, index: int, outputs: list[Item]) -> dict[str, Any]:
        """A stage's own figures (build attempts, error modes...) from its finished outputs."""
        if index >= len(self.pipeline.stages):
            return {}
        cls, options = self.pipeline.stages[index]
        try:
            stage: Stage = instantiate(cls, options, self.pipeline.config_dir)  # type: ignore[assignment]
            details = stage.summarize(outputs)
        except Exception:  # noqa: BLE001 - a report detail must not fail a finished run
            log.warning("stage %s could not summarise its results:\n%s", cls.name, traceback.format_exc())
            return {}
        return {"details": details} if details else {}


def classify_failure(exc: BaseException) -> str:
    """``infrastructure`` if something outside the task failed, else ``task``.

    Infrastructure: an :class:`InfrastructureError` (a model call that failed for
    good, an unreachable container engine); an ``OSError`` whose errno is about the
    machine or the network (ENOSPC, EIO, ECONNREFUSED, ...) or any ``ConnectionError``
    / ``TimeoutError``; SQLite's "disk full" / "disk I/O error"; and the connection
    and API errors of the Docker and HTTP client libraries, recognised by their
    module and type names so that neither is imported here. The exception's causes
    (``raise ... from``, or an exception raised while handling another) are looked
    at too. Everything else, a :class:`ParseError` included, is ``task``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        if isinstance(current, (ParseError, Reject)):  # a verdict on the reply or the task, whatever led to it
            return FAILURE_TASK
        if _is_infrastructure(current):
            return FAILURE_INFRASTRUCTURE
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return FAILURE_TASK


#: errno values that say the machine or the network failed, not the task.
_INFRA_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOSPC", "EDQUOT", "EIO", "EROFS", "ENOMEM", "EMFILE", "ENFILE", "ECONNREFUSED", "ECONNRESET",
        "ECONNABORTED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "ENETRESET",
    )
    if hasattr(errno, name)
)
#: Client libraries whose connection errors mean the engine or the endpoint is unwell.
_INFRA_MODULES = ("docker.", "requests.", "urllib3.", "httpx", "httpcore", "aiohttp", "openai", "anthropic", "litellm")
_INFRA_NAME_PARTS = (
    "Connection", "Connect", "Timeout", "Network", "RemoteDisconnected", "ServiceUnavailable", "InternalServer",
    "BadGateway", "ProtocolError", "ReadError", "WriteError",
)
#: The Docker SDK's catch-alls: the daemon answered with an error, or could not be talked to.
_DOCKER_INFRA_NAMES = ("APIError", "DockerException")
#: Docker errors that are verdicts on the task (a Dockerfile that does not build, an image it names that does not exist).
_TASK_NAMES = ("BuildError", "ContainerError", "ImageNotFound", "NotFound")


def _is_infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, InfrastructureError):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _INFRA_ERRNOS:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "disk" in text and ("full" in text or "i/o" in text)
    for cls in type(exc).__mro__:
        module = cls.__module__ or ""
        if not module.startswith(_INFRA_MODULES):
            continue
        if cls.__name__ in _TASK_NAMES:
            return False
        if any(part in cls.__name__ for part in _INFRA_NAME_PARTS):
            return True
        if module.startswith("docker.") and cls.__name__ in _DOCKER_INFRA_NAMES:
            return True
    return False


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
        if row["status"] == "failed" and failed.get(row["item_id"]) != FAILURE_INFRASTRUCTURE:
            failed[row["item_id"]] = row["failure_kind"] or FAILURE_TASK
    source = store.stage_run(SOURCE_ITEM, 0)
    if source is not None and source["status"] == "done":
        finished.update(item.id for item in store.outputs_of(source))
    infrastructure = sum(1 for kind in failed.values() if kind == FAILURE_INFRASTRUCTURE)
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
    details = [(s["index"], s["stage"], s["details"]) for s in summary.stages if s.get("details")]
    for index, name, figures in details:
        lines += ["", f"## {index} {name}", "", "```json", json.dumps(figures, indent=2, default=str), "```"]
    infrastructure = {(f["item"], f["stage"]) for f in summary.infrastructure_failures}
    if summary.failures:
        lines += ["", "## Rejected and failed items", ""]
        lines += [
            f"- `{f['item']}` at {f['stage']} ({f['status']}"
            + (", infrastructure" if (f["item"], f["stage"]) in infrastructure else ", task" if f["status"] == "failed" else "")
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


def _checked_outputs(result: Any, stage_name: str) -> list[Item]:
    items = [result] if isinstance(result, Item) else list(result or [])
    for entry in items:
        if not isinstance(entry, Item):
            raise TypeError(f"stage {stage_name!r} returned {type(entry).__name__}, not Item")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"stage {stage_name!r} returned items with duplicate ids")
    return items


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, TermigenError):
        text = f"{type(exc).__name__}: {text}"
    return text[:2000]
