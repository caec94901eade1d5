"""Building what a run works with, once, before any step runs.

:func:`check_environment` fails early when a key is missing or a budget cannot be
enforced; :func:`open_store` opens the run directory's store and refuses one that
holds another pipeline's run (its fingerprint); :func:`build_services` makes the
LLM router, the :class:`~termigen_core.context.RunServices` every stage context
shares and the stage instances, checks the container engine if a stage needs
one and removes the containers an earlier, killed invocation of the run left.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .components import Stage, instantiate
from .config import PipelineConfig, ResolvedPipeline
from .context import ImagePolicy, RunServices
from .errors import ExecutorUnavailable, MissingSecret, RunDirectoryMismatch
from .failures import failure_reason
from .llm import LLMRouter, role_backend_options
from .plugins import ComponentRegistry, PluginHost
from .sandbox import LABEL_RUN, SandboxSpec
from .store import RunStore

log = logging.getLogger("termigen")


@dataclass
class Assembly:
    """A run's services and stage instances, built by :func:`build_services`."""

    services: RunServices
    router: LLMRouter
    stages: list[Stage]


def open_store(pipeline: ResolvedPipeline, run_dir: Path) -> tuple[RunStore, str]:
    """Open ``run_dir``'s store; the run id (new on a first run, which also writes
    ``config.yaml``). A directory holding another pipeline's run is refused."""
    store = RunStore(run_dir)
    fingerprint = pipeline.fingerprint()
    previous = store.get_meta("fingerprint")
    if previous is not None and previous != fingerprint:
        store.close()
        raise RunDirectoryMismatch(
            f"{run_dir} holds a run of a different pipeline (its stages, models, seed or "
            "images differ from this config), so resuming would mix two pipelines' results. "
            "Use another output directory (--out DIR) or restore the original config. "
            f"(fingerprint {previous} != {fingerprint}; the original config is {run_dir / 'config.yaml'})"
        )
    run_id = store.get_meta("run_id")
    if run_id is None:
        run_id = f"{run_dir.name[:40]}-{uuid.uuid4().hex[:8]}"
        store.set_meta("run_id", run_id)
        store.set_meta("fingerprint", fingerprint)
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(pipeline.redacted(), sort_keys=False), encoding="utf-8"
        )
    store.mark_abandoned_invocations()
    return store, run_id


def check_environment(pipeline: ResolvedPipeline, host: PluginHost) -> None:
    """Fail before any work if a key is missing: better now than after an hour of builds."""
    cfg = pipeline.config
    problems = []
    registry = host.registry
    used = pipeline.roles_used
    for path, settings in pipeline.config.llm.effective_roles().items():
        if not used or (path.startswith("llm.roles.") and path.removeprefix("llm.roles.") not in used):
            continue  # a model no stage asks needs no key and no price
        options = role_backend_options(cfg.llm.backends, settings)
        backend = instantiate(registry.get("llm_backend", settings.backend), options, pipeline.config_dir)
        problems += [f"{path}: {p}" for p in backend.validate_environment(settings)]  # type: ignore[attr-defined]
        if cfg.run.budget_usd is not None and not backend.capabilities(settings).priced:  # type: ignore[attr-defined]
            problems.append(
                f"{path}: run.budget_usd is set, but the price of {settings.model} is unknown, so the budget "
                f"cannot be enforced: set input_cost_per_token and output_cost_per_token under "
                f"llm.backends.{settings.backend} (0 for a free local model), or remove run.budget_usd"
            )
    if problems:
        raise MissingSecret("cannot start the run:\n  " + "\n  ".join(problems))


def build_router(
    cfg: PipelineConfig, registry: ComponentRegistry, store: Any, *, config_dir: Path,
    on_call: Any, cancelled: threading.Event,
) -> LLMRouter:
    """The run's LLM router: the config's roles and backends, the budget, the user cache; ``store``
    is the run store on the driver, or what a remote step records into (an engine's worker)."""
    user_cache = None
    if cfg.run.user_llm_cache:
        from .usercache import UserLLMCache
        from .userdirs import user_dirs

        user_cache = UserLLMCache(user_dirs().llm_cache)
    return LLMRouter(
        default=cfg.llm.default,
        roles=cfg.llm.roles,
        backends={name: registry.get("llm_backend", name) for name in registry.names("llm_backend")},  # type: ignore[misc]
        store=store,
        budget_usd=cfg.run.budget_usd,
        max_concurrent_calls=cfg.run.llm_concurrency,
        backend_options=cfg.llm.backends,
        on_call=on_call,
        user_cache=user_cache,
        base_dir=config_dir,
        cancelled=cancelled,  # after Ctrl-C no new paid call starts
    )


def build_services(
    pipeline: ResolvedPipeline,
    host: PluginHost,
    run_dir: Path,
    store: RunStore,
    run_id: str,
    *,
    cancelled: threading.Event,
    on_llm_call: Any,
) -> Assembly:
    """The router, the shared services and the stages of one invocation; the container
    engine is checked (and this run's orphaned containers removed) if a stage uses it."""
    cfg = pipeline.config
    registry = host.registry
    router = build_router(cfg, registry, store, config_dir=pipeline.config_dir, on_call=on_llm_call, cancelled=cancelled)

    def make_executor() -> Any:
        cls, options = pipeline.executor
        return instantiate(cls, options, pipeline.config_dir)

    services = RunServices(
        run_id=run_id,
        run_dir=run_dir,
        config_dir=pipeline.config_dir,
        seed=cfg.run.seed,
        store=store,
        registry=registry,
        router=router,
        executor_factory=make_executor,
        # limits are the executor's own (its config); Ctrl-C stops running commands at once
        sandbox_defaults=SandboxSpec(image=cfg.images.base, cancel=cancelled),
        images=ImagePolicy.from_config(cfg.images, pipeline.executor[0]),
        container_slots=threading.BoundedSemaphore(cfg.run.container_concurrency),
        cancelled=cancelled,
        run_options=cfg.run,
    )
    stages: list[Stage] = [instantiate(cls, opts, pipeline.config_dir) for cls, opts in pipeline.stages]  # type: ignore[misc]
    if any(stage.uses_executor for stage in stages):
        services.executor.check()
        missing = services.images.missing_catalog(services.executor)
        if missing:
            raise ExecutorUnavailable(f"cannot start the run: {missing}")
        reap_containers(services.executor, run_id)
    return Assembly(services, router, stages)


def reap_containers(executor: Any, run_id: str) -> None:
    """Remove this run's containers an earlier, killed invocation left behind.

    Safe because this process holds the run lock: no other live process of this
    run exists, so every container labelled with the run id is an orphan.
    """
    try:
        removed = executor.prune({LABEL_RUN: run_id})
    except Exception as exc:  # noqa: BLE001 - leftovers cost resources, not results
        log.warning("could not remove containers left behind by an earlier run of %s: %s; "
                    "`termigen sandbox prune --run %s` removes them", run_id, failure_reason(exc), run_id)
        return
    if removed:
        log.info("removed %d container(s) left behind by an earlier, interrupted invocation of run %s", removed, run_id)
