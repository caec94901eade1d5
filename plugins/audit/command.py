"""``termigen audit PATH...``: audit task sets with no model, resumably.

The command builds an ordinary pipeline in code (``import_task_sets`` over the
PATHs → ``build`` with one attempt, so no model repairs anything →
``audit``, which also runs the lint verifier) and runs it with the normal
Runner in a run directory: re-running the same command resumes, and a task
already judged is not run again. The results are then read from the run store
and written as ``audit.jsonl``, ``audit.csv`` and ``audit.md`` in that directory.

Lint runs inside ``audit`` rather than as the ``verify`` stage because
``verify`` rejects a task with an error finding, and an audit drops nothing.

Exit codes: 0 no task's verdict is in ``--fail-on``; 1 some is; 4 some task in
``--fail-on`` ended ``infra_error`` (the engine or the machine failed: re-run
to resume; this wins over 1); 130 interrupted. Errors before any work (a bad
path, no container engine) exit as ``termigen run`` does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

#: The exit code when the gate failed only on tasks, and when infrastructure failed.
EXIT_GATE = 1
EXIT_INFRA = 4


def _aliases(values: tuple[str, ...]) -> dict[str, str]:
    from termigen_core.config import parse_image_aliases

    try:
        return parse_image_aliases(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--alias") from None


def _fail_on(value: str | None) -> set[str]:
    from .report import DEFAULT_FAIL_ON, VERDICTS

    if value is None:
        return set(DEFAULT_FAIL_ON)
    chosen = {v.strip() for v in value.split(",") if v.strip()}
    unknown = sorted(chosen - set(VERDICTS))
    if unknown:
        raise click.BadParameter(
            f"unknown verdict(s) {', '.join(unknown)}; verdicts: {', '.join(VERDICTS)}", param_hint="--fail-on"
        )
    return chosen


def pipeline_data(
    paths: list[Path], out: Path, *, repeats: int, concurrency: int, container_concurrency: int,
    aliases: dict[str, str], lint: bool, keep_images: bool = False,
) -> dict[str, Any]:
    """The audit's pipeline, as a config mapping (what ``config.yaml`` in the run dir will hold)."""
    return {
        "version": 1,
        # every task is expected to reach the end; a run with failures is judged by the audit's gate, not run health
        "run": {"out": str(out), "concurrency": concurrency, "container_concurrency": container_concurrency,
                "max_failed_fraction": 1.0, "keep_images": keep_images},
        "images": {"aliases": aliases},
        "stages": [
            {"use": "import_task_sets", "with": {"paths": [str(p) for p in paths]}},
            {"use": "build", "with": {"max_attempts": 1}},
            {"use": "audit", "with": {"repeats": repeats, "verifiers": ["lint"] if lint else []}},
        ],
    }


def remove_images(pipeline: Any, store: Any, build_stage: int) -> tuple[int, list[str]]:
    """Remove the images of tasks with nothing left to do; keep those a resume still needs."""
    from termigen_core.components import instantiate
    from termigen_core.status import StepStatus
    from termigen_core.store import RunStore

    cls, options = pipeline.executor
    executor = instantiate(cls, options, pipeline.config_dir)
    remover = getattr(executor, "remove_image", None)
    if remover is None:
        return 0, [f"executor {cls.name!r} cannot remove images; they were kept"]
    unfinished = {r["item_id"] for r in store.stage_rows() if r["status"] not in (StepStatus.DONE, StepStatus.REJECTED)}
    removed, notes = 0, []
    for row in store.stage_rows(StepStatus.DONE):
        if row["stage_index"] != build_stage or row["item_id"] in unfinished:
            continue
        for item in RunStore.outputs_of(row):
            image = item.task().build.image if item.has_task() else None
            if not image:
                continue
            try:
                removed += bool(remover(image))
            except Exception as exc:  # noqa: BLE001 - an image in use stays; the audit's results stand
                notes.append(f"could not remove {image}: {' '.join(str(exc).split())[:200]}")
    return removed, notes


def register(cli: click.Group) -> None:
    @cli.command("audit")
    @click.argument("paths", nargs=-1, required=True,
                    type=click.Path(exists=True, file_okay=False, resolve_path=True, path_type=Path))
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("audit.out"),
                  show_default=True, help="Run directory (re-running the same command here resumes).")
    @click.option("--repeats", type=click.IntRange(1, 10), default=2, show_default=True,
                  help="No-op and oracle runs per task, each in a fresh container (flaky tests show as mixed results).")
    @click.option("--concurrency", type=click.IntRange(1, 512), default=4, show_default=True, help="Tasks at once.")
    @click.option("--container-concurrency", type=click.IntRange(1, 256), default=2, show_default=True,
                  help="Containers open at once.")
    @click.option("--alias", "aliases", multiple=True, metavar="PATTERN=IMAGE",
                  help="Build FROM PATTERN on IMAGE instead (images.aliases), e.g. an unreachable registry's base image.")
    @click.option("--lint/--no-lint", default=True, show_default=True, help="Report the lint verifier's findings.")
    @click.option("--keep-images/--remove-images", default=False, show_default=True,
                  help="Keep the tasks' built images after the audit.")
    @click.option("--fail-on", "fail_on", metavar="VERDICT,...",
                  help="Verdicts that make the exit code non-zero (default: all but valid and no_solution).")
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
    @click.option("--progress/--no-progress", default=None, help="Live progress display (default: on a terminal).")
    @click.pass_context
    def audit(ctx: click.Context, paths: tuple[Path, ...], out_dir: Path, repeats: int, concurrency: int,
              container_concurrency: int, aliases: tuple[str, ...], lint: bool, keep_images: bool,
              fail_on: str | None, as_json: bool, progress: bool | None) -> None:
        """Audit task folders (Harbor or TB1): build, no-op and oracle runs, lint; no model needed.

        Writes audit.jsonl, audit.csv and audit.md into the run directory. Exit
        code: 0 gate passed, 1 a task's verdict is in --fail-on, 4 infrastructure
        errors (re-run to resume), 130 interrupted.
        """
        from termigen_core.config import deep_merge, load_user_defaults, resolve_pipeline
        from termigen_core.errors import TermigenError
        from termigen_core.runner import run_with_progress
        from termigen_core.status import RunStatus
        from termigen_core.store import RunStore
        from termigen_core.userdirs import user_dirs

        from .report import audit_rows, verdict_counts, write_reports

        gate = _fail_on(fail_on)
        host = ctx.obj["host"]
        run_dir = out_dir.expanduser().resolve()
        data = pipeline_data(list(paths), run_dir, repeats=repeats, concurrency=concurrency,
                             container_concurrency=container_concurrency, aliases=_aliases(aliases), lint=lint,
                             keep_images=keep_images)
        defaults = {k: v for k, v in load_user_defaults(user_dirs().user_config).items() if k in ("executor", "images")}
        pipeline = resolve_pipeline(deep_merge(defaults, data), host.registry)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TermigenError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
        live = sys.stderr.isatty() if progress is None else progress
        summary, _ = run_with_progress(pipeline, host, run_dir, live=live, argv=sys.argv[1:])
        store = RunStore(run_dir)
        try:
            results = audit_rows(store, audit_stage=2)
            removed, notes = (0, []) if keep_images else remove_images(pipeline, store, build_stage=1)
        finally:
            store.close()
        files = write_reports(run_dir, results, gate)
        failing = [r for r in results if r["verdict"] in gate]
        if summary.status == RunStatus.INTERRUPTED:
            code = 130
        elif any(r["verdict"] == "infra_error" for r in failing):
            code = EXIT_INFRA
        else:
            code = EXIT_GATE if failing else 0
        if as_json:
            click.echo(json.dumps({
                "run_dir": str(run_dir), "run_status": summary.status, "exit_code": code,
                "verdicts": verdict_counts(results), "fail_on": sorted(gate), "tasks": results,
                "files": {k: str(v) for k, v in files.items()}, "images_removed": removed, "notes": notes,
            }, indent=2, default=str))
        else:
            for verdict, n in verdict_counts(results).items():
                click.echo(f"{verdict:22} {n}{'   (fails the gate)' if verdict in gate else ''}")
            for note in notes:
                click.echo(f"note: {note}", err=True)
            click.echo(f"{len(results)} task(s); {len(failing)} fail the gate; results: {files['md']}")
        ctx.exit(code)
