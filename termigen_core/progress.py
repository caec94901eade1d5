"""What a run shows while it works: a live display on a terminal, log lines otherwise.

The reporter is an ordinary plugin object registered for the run: it listens
to the same lifecycle hooks any tracking plugin can implement, which keeps
those hooks honest. Every line also goes to ``<run_dir>/run.log``, because a
run that lasts days is inspected from its log, not from a scrollback.

Model client libraries log a lot (litellm prints several INFO lines per call,
to stdout through a handler of its own, and again through the root logger).
:func:`contain_library_logging` keeps all of that off the console without
importing them: their loggers are configured by name, refuse console handlers
(litellm adds one when it is imported, later, on the first call) and do not
propagate; while a run is on, their records go to ``run.log`` at DEBUG level.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import hookimpl
from .status import StepStatus

if TYPE_CHECKING:
    from .items import Item
    from .report import RunSummary

log = logging.getLogger("termigen")

#: Loggers of the model client libraries (and their HTTP clients): run.log only, never the console.
LIBRARY_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm", "httpx", "httpcore", "openai")


def _is_library(name: str) -> bool:
    return any(name == lib or name.startswith(lib + ".") for lib in LIBRARY_LOGGERS)


def _is_console_handler(handler: logging.Handler) -> bool:
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and not getattr(handler, "termigen_owned", False)
    )


class _ContainedLogger(logging.Logger):
    """A library logger that refuses console handlers (litellm adds one to stdout/stderr at import)."""

    def addHandler(self, hdlr: logging.Handler) -> None:
        if _is_console_handler(hdlr):
            return
        super().addHandler(hdlr)


class _LibraryRecords(logging.Filter):
    """On run.log's handler: library records become DEBUG lines (warnings keep their level);
    their own DEBUG records are dropped unless ``-v`` (they may hold request bodies)."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if not _is_library(record.name):
            return True
        if record.levelno < logging.INFO and not self.verbose:
            return False
        if record.levelno < logging.WARNING:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class _RunLogFormatter(logging.Formatter):
    """``run.log`` lines; a library's are tagged with its logger and kept on one line."""

    def format(self, record: logging.LogRecord) -> str:
        if not _is_library(record.name):
            return super().format(record)
        saved = record.msg, record.args
        try:
            message = " ".join(record.getMessage().split())
        except Exception:  # noqa: BLE001 - a library's bad format string must not break logging
            message = str(record.msg)
        record.msg, record.args = f"[{record.name}] {message}", None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved


_library_verbose = False


def contain_library_logging(*, verbose: bool = False) -> None:
    """Keep the model libraries' logging off the console (call before any of them is imported).

    Works by logger name, so nothing is imported: each library logger gets a class that
    refuses console handlers, loses any it already has, stops propagating to the root
    logger's console handler, and keeps a ``NullHandler`` (so Python's last-resort handler
    never prints its warnings either). :class:`Reporter` adds ``run.log`` to them for a run.
    """
    global _library_verbose
    _library_verbose = verbose
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if type(logger) is logging.Logger:
            logger.__class__ = _ContainedLogger
        for handler in list(logger.handlers):
            if _is_console_handler(handler):
                logger.removeHandler(handler)
        logger.propagate = False
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a title line."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RunProgress:
    """What a long run's display shows beyond the counts: spend and its rate, sandboxes open, an ETA.

    The ETA counts (item, stage) steps: each item the source produced has one step per later
    stage, an item rejected or failed at a stage has no later ones, and the steps still to go
    are divided by the rate of the steps done in this invocation (steps skipped because an
    earlier invocation did them are free and do not count towards the rate). Stages that turn
    one item into several make it an underestimate until their outputs arrive; it is an
    estimate, shown as one.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.stages = 0
        self.planned_items: int | None = None
        self.finished_steps = 0
        self.worked_steps = 0
        self.cancelled_steps = 0
        self.first_work: float | None = None
        self.calls = 0
        self.cost = 0.0
        #: containers open now (None until the run reports sandboxes: runs without any show nothing)
        self.sandboxes_open: int | None = None

    def step(self, stage_index: int, status: str) -> None:
        """One (item, stage) outcome."""
        self.finished_steps += 1
        if status != StepStatus.SKIPPED:
            self.worked_steps += 1
            if self.first_work is None:
                self.first_work = self._clock()
        if status in (StepStatus.REJECTED, StepStatus.FAILED) and self.stages:
            self.cancelled_steps += max(0, self.stages - 1 - stage_index)

    def sandbox(self, event: str) -> None:
        """A container opened (``open``) or closed (``close``)."""
        self.sandboxes_open = max(0, (self.sandboxes_open or 0) + (1 if event == "open" else -1))

    def llm_call(self, cost: float | None) -> None:
        self.calls += 1
        self.cost += cost or 0.0

    def elapsed(self) -> float:
        return self._clock() - self.started

    def remaining_steps(self) -> int | None:
        if self.planned_items is None or self.stages < 2:
            return None
        return max(0, self.planned_items * (self.stages - 1) - self.finished_steps - self.cancelled_steps)

    def eta_s(self) -> float | None:
        """Seconds to go at the recent step rate; None until there is a rate to go by."""
        remaining = self.remaining_steps()
        if remaining is None or self.first_work is None or self.worked_steps < 1:
            return None
        spent = self._clock() - self.first_work
        if spent <= 0:
            return None
        return remaining / (self.worked_steps / spent)

    def title(self) -> str:
        elapsed = self.elapsed()
        per_min = self.calls / elapsed * 60 if elapsed > 0 else 0.0
        per_hour = self.cost / elapsed * 3600 if elapsed > 0 else 0.0
        eta = self.eta_s()
        remaining = self.remaining_steps()
        if remaining == 0:
            eta_text = "finishing"
        elif eta is None:
            eta_text = "ETA —"
        else:
            eta_text = f"ETA ~{format_duration(eta)}"
        containers = "" if self.sandboxes_open is None else f"{self.sandboxes_open} container(s) open, "
        return (
            f"termigen — {format_duration(elapsed)}, {self.calls} LLM calls ({per_min:.0f}/min), "
            f"${self.cost:.4f} (${per_hour:.2f}/h), {containers}{eta_text}"
        )


class Reporter:
    """Counts per stage and status, LLM spend; prints plain lines."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.counts: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.progress = RunProgress()
        self._lock = threading.Lock()
        self._file_handler: logging.Handler | None = None

    @property
    def calls(self) -> int:
        return self.progress.calls

    @property
    def cost(self) -> float:
        return self.progress.cost

    def __enter__(self) -> Reporter:
        handler = logging.FileHandler(self.run_dir / "run.log", encoding="utf-8")
        handler.setFormatter(_RunLogFormatter("%(asctime)s %(levelname)s %(message)s"))
        handler.addFilter(_LibraryRecords(_library_verbose))
        log.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            if isinstance(logger, _ContainedLogger):  # contained by the CLI: their lines belong in run.log
                logger.addHandler(handler)
        self._file_handler = handler
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file_handler is not None:
            for name in LIBRARY_LOGGERS:
                logging.getLogger(name).removeHandler(self._file_handler)
            log.removeHandler(self._file_handler)
            self._file_handler.close()

    # -- hooks ----------------------------------------------------------------

    @hookimpl
    def termigen_run_start(self, run_id: str, run_dir: str, config: dict[str, Any]) -> None:
        self.progress.stages = len(config.get("stages") or [])
        log.info("run %s in %s", run_id, run_dir)

    @hookimpl
    def termigen_stage_start(self, run_id: str, stage_index: int, stage_name: str) -> None:
        if stage_index == 1 and self.progress.planned_items is None:
            self.progress.planned_items = self._source_items()
        log.info("stage %d %s: started", stage_index, stage_name)

    def _source_items(self) -> int | None:
        """How many items the source stage produced (stage 1 starts once it has): the ETA's base."""
        from .store import RunStore

        try:
            store = RunStore(self.run_dir)
            try:
                return len(store.source_outputs(0)) if store.source_draws(0) else None
            finally:
                store.close()
        except Exception:  # noqa: BLE001 - the display never breaks a run
            log.debug("progress: could not count the source's items", exc_info=True)
            return None

    @hookimpl
    def termigen_item_event(self, run_id: str, stage_index: int, stage_name: str, item: Item, status: str, reason: str | None) -> None:
        with self._lock:
            self.counts[(stage_index, stage_name)][status] += 1
            self.progress.step(stage_index, status)
        self.show_item(stage_index, stage_name, item, status, reason)

    @hookimpl
    def termigen_llm_call(self, run_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            self.progress.llm_call(record.get("cost_usd"))  # None: a price the backend does not know
        self.refresh()

    @hookimpl
    def termigen_sandbox_event(self, run_id: str, item_id: str, stage_name: str, event: str, image: str) -> None:
        with self._lock:
            self.progress.sandbox(event)
        self.refresh()

    @hookimpl
    def termigen_run_end(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        log.info("run %s ended: %s", run_id, status)

    # -- display -----------------------------------------------------------------

    def show_item(self, stage_index: int, stage_name: str, item: Item, status: str, reason: str | None) -> None:
        suffix = f": {reason}" if reason else ""
        level = logging.WARNING if status == StepStatus.FAILED else logging.INFO
        log.log(level, "stage %d %s: %s %s%s", stage_index, stage_name, item.id, status, suffix)

    def refresh(self) -> None:
        """Live displays redraw here; plain output has nothing to do."""

    def print_summary(self, summary: RunSummary) -> None:
        import click

        click.echo(f"\nrun {summary.run_id}: {summary.status}" + (f" — {summary.message}" if summary.message else ""))
        click.echo(
            f"  {'stage':<20}{'in':>6}{'out':>6}{'rejected':>10}{'failed':>8}{'(infra':>8}{'task)':>7}"
            f"{'pending':>9}{'LLM calls':>11}{'tokens':>9}"
        )
        for stage in summary.stages:
            click.echo(
                f"  {str(stage['index']) + ' ' + stage['stage']:<20}{stage['in']:>6}{stage['out']:>6}{stage['rejected']:>10}"
                f"{stage['failed']:>8}{stage.get('failed_infrastructure', 0):>8}{stage.get('failed_task', stage['failed']):>7}"
                f"{stage['pending']:>9}{stage['llm_calls']:>11}{stage['tokens']:>9}"
            )
        llm = summary.llm
        now = llm["this_invocation"]
        click.echo(
            f"  LLM: {now.get('paid', 0)} paid calls this time, {now.get('replayed', 0)} replayed from the store; "
            f"${llm['cost_usd']:.4f} spent in this run directory"
        )
        for export in summary.exports:
            detail = export.get("error") or export.get("path") or ", ".join(
                f"{k}={v}" for k, v in export.items() if k not in ("exporter", "seconds")
            )
            click.echo(f"  export {export['exporter']}: {detail}")
        health = summary.health
        if health and health.get("failed_items"):
            click.echo(
                f"  failed items: {health['failed_items']} of {health['finished_items']} "
                f"({health['failed_fraction']:.0%}; limit run.max_failed_fraction {health['max_failed_fraction']:.0%}): "
                f"{health['failed_infrastructure']} infrastructure, {health['failed_task']} task"
            )
        click.echo(f"  {summary.final_items} final items; report: {summary.run_dir}/report.md")
        if summary.exit_code:
            click.echo(f"  exit code {summary.exit_code}: {summary.message or summary.status}")


class LiveReporter(Reporter):
    """A rich live table on a terminal (log lines still go to run.log)."""

    def __enter__(self) -> LiveReporter:
        super().__enter__()
        from rich.console import Console
        from rich.live import Live

        self._console = Console(stderr=True)
        # get_renderable: rich redraws on its own (elapsed time, rates and ETA move between events)
        self._live = Live(get_renderable=self._render, console=self._console, refresh_per_second=2, transient=False)
        self._live.__enter__()
        self._quiet_stderr()
        return self

    def _quiet_stderr(self) -> None:
        """Item lines go to run.log only; the table shows the counts."""
        root = logging.getLogger()
        self._muted = [h for h in root.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        for handler in self._muted:
            handler.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        self._live.update(self._render())
        self._live.__exit__(None, None, None)
        for handler in getattr(self, "_muted", []):
            handler.setLevel(logging.NOTSET)
        super().__exit__(*exc)

    def _render(self) -> Any:
        from rich.table import Table

        with self._lock:
            title = self.progress.title()
        table = Table(title=title, expand=False)
        shown = (StepStatus.DONE, StepStatus.SKIPPED, StepStatus.REJECTED, StepStatus.FAILED)
        for column in ("stage", *shown):
            table.add_column(column, justify="left" if column == "stage" else "right")
        with self._lock:
            for (index, name), counts in sorted(self.counts.items()):
                table.add_row(f"{index} {name}", *(str(counts.get(k, 0)) for k in shown))
        return table

    def show_item(self, stage_index: int, stage_name: str, item: Item, status: str, reason: str | None) -> None:
        super().show_item(stage_index, stage_name, item, status, reason)
        self.refresh()

    def refresh(self) -> None:
        live = getattr(self, "_live", None)
        if live is not None:
            live.update(self._render())


def make_reporter(*, live: bool, run_dir: Path) -> Reporter:
    return LiveReporter(run_dir) if live else Reporter(run_dir)
