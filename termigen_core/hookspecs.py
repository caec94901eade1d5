"""Every hook termigen calls, in one place.

Collection hooks (``register_*``) return component *classes*; the plugin
manager gathers them per kind and refuses two classes of one kind with one
name. Lifecycle hooks (``termigen_*``) are events for loggers and trackers:
they are called from worker threads, must be quick, and their exceptions are
logged, never allowed to break a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from . import PROJECT_NAME

if TYPE_CHECKING:
    import click

    from .components import (
        Engine,
        ErrorMode,
        Executor,
        Exporter,
        LLMBackend,
        SeedSource,
        Stage,
        Verifier,
    )
    from .config import ResolvedPipeline
    from .items import Item

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# --- component collection: one hook per kind --------------------------------


@hookspec
def register_seed_sources() -> list[type["SeedSource"]]:
    """Return the plugin's seed source classes (subclasses of ``SeedSource``).

    Called once per process, the first time the component registry is needed
    (``termigen run``, ``config check``, ``components``...). Return classes, not
    instances: the core instantiates them from config (``use:`` + ``with:``).
    """


@hookspec
def register_llm_backends() -> list[type["LLMBackend"]]:
    """Return the plugin's LLM backend classes (subclasses of ``LLMBackend``).

    Called once per process, when the registry is built. A backend does transport
    only: the core's LLM facade renders prompts, retries, caches, budgets and parses.
    """


@hookspec
def register_executors() -> list[type["Executor"]]:
    """Return the plugin's executor classes (container engines; subclasses of ``Executor``).

    Called once per process, when the registry is built.
    """


@hookspec
def register_error_modes() -> list[type["ErrorMode"]]:
    """Return the plugin's error-injection modes for trajectories (subclasses of ``ErrorMode``).

    Called once per process, when the registry is built. Every installed mode is
    injected unless a ``trajectories`` stage names its own list.
    """


@hookspec
def register_verifiers() -> list[type["Verifier"]]:
    """Return the plugin's verifier classes (checks on tasks; subclasses of ``Verifier``).

    Called once per process, when the registry is built.
    """


@hookspec
def register_stages() -> list[type["Stage"]]:
    """Return the plugin's pipeline stage classes (subclasses of ``Stage``).

    Called once per process, when the registry is built. A stage declares the item
    kinds it ``accepts`` and ``produces``; the config check refuses a pipeline whose
    chain does not fit.
    """


@hookspec
def register_exporters() -> list[type["Exporter"]]:
    """Return the plugin's exporter classes (benchmark folders, SFT datasets; subclasses of ``Exporter``).

    Called once per process, when the registry is built.
    """


@hookspec
def register_engines() -> list[type["Engine"]]:
    """Return the plugin's engine classes (where a run's steps execute; subclasses of ``Engine``).

    Called once per process, when the registry is built. ``run.engine: NAME`` picks
    one (default ``local``: the core's own thread pool, no component); its options
    are ``run.NAME``. The driver stays the run store's only writer: an engine runs
    each step's middle (``termigen_core.engine.execute_step``) elsewhere and returns
    its outcome with what it would have written.
    """


# --- CLI -------------------------------------------------------------------


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add ``click`` commands or command groups to the ``termigen`` CLI (``cli``); return nothing.

    Called once when the CLI starts, after the built-in commands exist. Keep the
    body cheap (it runs for every ``termigen`` invocation, ``--help`` included):
    import heavy modules inside the command functions.
    """


# --- lifecycle events ------------------------------------------------------


@hookspec
def termigen_run_listeners(pipeline: "ResolvedPipeline") -> list[object]:
    """Return objects to register as plugins for one run only (may be empty).

    Called once per run, before anything else of it, with the resolved pipeline.
    Each object implements lifecycle hooks (below) with the run's own state, is
    unregistered when the run ends, and has its ``close()`` called if it has one.
    The built-in executors plugin returns its image janitor here (task images
    removed after their last stage unless ``run.keep_images``).
    """


@hookspec
def termigen_run_start(run_id: str, run_dir: str, config: dict[str, Any]) -> None:
    """A run, or its resumption, starts; return nothing.

    Called once per ``termigen run`` invocation, after the run store is open and
    the environment is checked, before the first stage. ``config`` is the pipeline
    as written, with secrets still as ``{$env: NAME}`` references.
    """


@hookspec
def termigen_stage_start(run_id: str, stage_index: int, stage_name: str) -> None:
    """A stage starts its first item in this invocation; return nothing.

    Called at most once per stage and invocation, from a worker thread.
    """


@hookspec
def termigen_item_event(
    run_id: str,
    stage_index: int,
    stage_name: str,
    item: "Item",
    status: str,
    reason: str | None,
) -> None:
    """An item finished a stage; return nothing.

    Called from a worker thread for every (item, stage) step: ``status`` is a
    ``StepStatus`` value: ``done``, ``skipped`` (done in an earlier invocation),
    ``rejected`` (a quality gate said no; ``reason`` says why) or ``failed`` (an
    error; ``reason`` says which).
    """


@hookspec
def termigen_llm_call(run_id: str, record: dict[str, Any]) -> None:
    """A model call was answered, by the backend or from a stored answer; return nothing.

    Called from the thread that made the call (failed attempts are in the run
    store's ledger, not here). ``record`` holds role, stage, scope, backend, model,
    tokens (with cache reads and writes), cost in USD (``None`` when the price is
    unknown, 0 for a replayed answer), latency, ``cached`` (replayed) and the
    structured-output mode used; it never holds a key.
    """


@hookspec
def termigen_sandbox_event(run_id: str, item_id: str, stage_name: str, event: str, image: str) -> None:
    """A stage opened (``event`` ``open``) or closed (``close``) a container for an item; return nothing.

    Called from the worker thread that runs the step, around every ``ctx.sandbox``
    (the executor's own sandboxes: builds are not sandboxes). ``image`` is the image
    the container runs after the run's image aliases are applied. Live displays
    count the containers in use with it; trackers can attribute container time.
    """


@hookspec
def termigen_run_end(run_id: str, status: str, summary: dict[str, Any]) -> None:
    """A run ends; return nothing.

    Called once per invocation, after exports and the report are written.
    ``status`` is a ``RunStatus`` value (``completed``, ``completed_with_problems``,
    ``budget_exhausted``, ``interrupted``, ``stopped`` or ``failed``); ``summary`` is
    what ``summary.json`` holds.
    """


#: The sections of the generated hook reference (docs/hooks.md), in order: title, what
#: the hooks in it have in common, and their names.
SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "Collection hooks: one per kind of component",
        "Each returns a list of component **classes**. The plugin manager gathers them per kind "
        "and refuses two classes of one kind with one name, naming both plugins.",
        (
            "register_seed_sources", "register_llm_backends", "register_executors", "register_error_modes",
            "register_verifiers", "register_stages", "register_exporters", "register_engines",
        ),
    ),
    ("CLI hook", "Plugins may add commands to `termigen`.", ("register_commands",)),
    (
        "Lifecycle events",
        "For loggers, trackers and dashboards. They are called from worker threads, must return "
        "quickly, and an exception in one is logged, never allowed to break a run.",
        (
            "termigen_run_listeners", "termigen_run_start", "termigen_stage_start", "termigen_item_event", "termigen_llm_call",
            "termigen_sandbox_event", "termigen_run_end",
        ),
    ),
)
