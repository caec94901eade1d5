"""The ``viewer`` plugin: see a run's data in a browser, offline.

- :mod:`.report_page`: ``report.html``, the run's figures and plots (funnel, rejections, LLM
  use, builds and repairs, trajectories, tool diversity, taxonomy coverage);
- :mod:`.browse_page`: ``browse.html``, a searchable list of tasks and trajectories with a page
  per task and per trajectory (injected errors, critic verdicts and recoveries marked);
- :mod:`.serve`: ``termigen view RUN_DIR``, both pages served on loopback while a run goes on.

Both pages are single self-contained files (no CDN, no network): they are written at the end of
every run and by ``termigen report RUN_DIR`` at any time, mid-run included.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from termigen_core import hookimpl

if TYPE_CHECKING:
    import click

log = logging.getLogger("termigen")

__all__ = ["register_commands", "termigen_run_end", "write_pages"]


def page_writers() -> list[tuple[str, Callable[[Path], Path]]]:
    """Each page's name and writer (``run_dir`` → the path written)."""
    from .browse_page import write_browse_html
    from .report_page import write_report_html

    return [("report.html", write_report_html), ("browse.html", write_browse_html)]


def write_pages(run_dir: Path) -> list[Path]:
    """Write ``report.html`` and ``browse.html`` into ``run_dir``; the paths written.

    Each page is tried on its own, so one that cannot be built never costs the other;
    a failure is raised after both were tried, naming the page(s).
    """
    written: list[Path] = []
    failed: list[str] = []
    for name, write in page_writers():
        try:
            written.append(write(run_dir))
        except Exception as exc:  # noqa: BLE001 - reported below with the page's name
            log.debug("could not write %s", name, exc_info=True)
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    if failed:
        raise PageError(written, failed)
    return written


class PageError(Exception):
    """Some page could not be written (the others were)."""

    def __init__(self, written: list[Path], failed: list[str]) -> None:
        super().__init__("could not write " + "; ".join(failed))
        self.written = written
        self.failed = failed


@hookimpl
def register_commands(cli: "click.Group") -> None:
    from .command import register

    register(cli)


#: Set to 0 to skip writing the pages at the end of each run (scripts that run many small
#: pipelines; ``termigen report RUN_DIR`` writes them later). Drawing the plots takes seconds.
PAGES_ENV = "TERMIGEN_HTML_PAGES"


@hookimpl
def termigen_run_end(run_id: str, status: str, summary: dict[str, Any]) -> None:
    """Every run leaves its pages next to ``report.md`` (a failure here never fails the run)."""
    run_dir = summary.get("run_dir")
    if not run_dir or os.environ.get(PAGES_ENV, "1").strip() == "0":
        return
    try:
        for path in write_pages(Path(run_dir)):
            log.info("wrote %s", path)
    except PageError as exc:  # the run's data is safe in the store; `termigen report` rewrites the pages
        log.warning("%s (termigen report %s rewrites them)", exc, run_dir)
    except Exception:  # noqa: BLE001 - an unexpected error in a page never fails the run
        log.warning("could not write the run's HTML pages (termigen report %s rewrites them)", run_dir, exc_info=True)
