"""``report.html``: a run's figures and plots in one self-contained page.

:func:`write_report_html` collects the figures (:mod:`.stats`), draws the plots (:mod:`.plots`,
inline SVG) and renders ``templates/report.html.j2`` with autoescaping on: every string from the
run (reasons, categories, tool names) is data, never markup. The page has no script, no
stylesheet link and no font to fetch, so it opens offline and from a ``file://`` URL, and it is
written atomically, so a reader refreshing mid-run never sees half a page.

Large runs stay quick to open: tables are capped (the reason groups, the trajectory list) and
everything else is aggregated into plots; every task and trajectory is one click away in
``browse.html`` (``#task/<item id>``, ``#traj/<item id>``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from termigen_core.fileio import atomic_write_text

from . import plots
from .stats import FAILED_INFRASTRUCTURE, FAILED_TASK, REJECTED, RunStats, collect_run_stats
from .tool_domains import domain_of

REPORT_FILE = "report.html"
TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Reason groups listed in the table (the plot shows the largest ones).
REASON_ROWS = 100
REASON_BARS = 15
TOOL_BARS = 30


@dataclass(frozen=True)
class Page:
    """What the template shows: the figures, the plots (SVG text) and when it was made."""

    stats: RunStats
    plots: dict[str, str]
    generated: str
    reason_rows: int


def write_report_html(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the run's store; the path written."""
    run_dir = Path(run_dir)
    stats = collect_run_stats(run_dir)
    html = render_report(stats)
    target = run_dir / REPORT_FILE
    atomic_write_text(target, html)
    return target


def render_report(stats: RunStats) -> str:
    """The page's HTML for ``stats``."""
    page = Page(
        stats=stats,
        plots=draw_plots(stats),
        generated=datetime.fromtimestamp(stats.generated_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        reason_rows=REASON_ROWS,
    )
    return _environment().get_template("report.html.j2").render(page=page, s=stats)


def draw_plots(stats: RunStats) -> dict[str, str]:
    """Every plot the run has data for, by name; a section with no data has no plot (it says so instead)."""
    drawn: dict[str, str] = {}
    for name, draw in _plot_makers(stats).items():
        drawn[name] = draw()
    return drawn


def _plot_makers(stats: RunStats) -> dict[str, Callable[[], str]]:
    makers: dict[str, Callable[[], str]] = {}
    if stats.stages:
        makers["funnel"] = lambda: plots.funnel(
            [f"{s.index} {s.name}" for s in stats.stages],
            {
                "done": [s.done for s in stats.stages],
                REJECTED: [s.rejected for s in stats.stages],
                FAILED_INFRASTRUCTURE: [s.failed_infrastructure for s in stats.stages],
                FAILED_TASK: [s.failed_task for s in stats.stages],
                "pending": [s.pending for s in stats.stages],
            },
        )
    if stats.reasons:
        top = stats.reasons[:REASON_BARS]
        makers["reasons"] = lambda: plots.bars(
            {f"{g.stage}: {g.pattern}": g.count for g in top}, "Largest groups of rejections and failures", "items", "reasons",
            colours={f"{g.stage}: {g.pattern}": plots.COLOURS[g.outcome] for g in top},
        )
    if stats.llm:
        makers["llm_tokens"] = lambda: plots.stacked_columns(
            [f"{u.stage} · {u.role}" for u in stats.llm],
            {
                "prompt (not cached)": [max(u.prompt_tokens - u.cache_read_tokens, 0) for u in stats.llm],
                "prompt (cache read)": [u.cache_read_tokens for u in stats.llm],
                "completion": [u.completion_tokens for u in stats.llm],
            },
            "Tokens per stage and role (paid calls)", "tokens", "llm_tokens",
        )
    tasks = stats.tasks
    if tasks.build_attempts:
        makers["build_attempts"] = lambda: plots.count_columns(tasks.build_attempts, "Build attempts per task", "attempts", "build_attempts")
    if tasks.judge_rounds:
        makers["judge_rounds"] = lambda: plots.count_columns(tasks.judge_rounds, "Judge rounds per test suite", "rounds", "judge_rounds")
    if tasks.validation_rounds:
        makers["validation_rounds"] = lambda: plots.count_columns(
            tasks.validation_rounds, "Validation rounds per task", "rounds", "validation_rounds"
        )
    traj = stats.trajectories
    if traj.count:
        makers["steps"] = lambda: plots.histogram(
            traj.steps, "Steps per trajectory", "steps", "steps", bins=_integer_bins(traj.steps), integer_x=True
        )
        makers["tokens"] = lambda: plots.histogram(traj.tokens, "Tokens per trajectory", "tokens at the last turn", "tokens")
        makers["pass_ratio"] = lambda: plots.count_columns(
            pass_ratio_buckets(traj.pass_ratios), "Pass ratio (share of tests passed)", "pass ratio", "pass_ratio", ylabel="trajectories"
        )
    if traj.error_modes:
        makers["error_modes"] = lambda: plots.bars(dict(traj.error_modes), "Injected errors by mode", "steps", "error_modes")
    if traj.tool_domains:
        makers["tool_domains"] = lambda: plots.bars(
            dict(traj.tool_domains), "Tool use by functional domain", "trajectory × tool uses", "tool_domains"
        )
        top_tools = dict(list(traj.tools.items())[:TOOL_BARS])
        makers["tools"] = lambda: plots.bars(
            {f"{tool} ({domain_of(tool)})": n for tool, n in top_tools.items()},
            f"The {len(top_tools)} most used tools", "trajectories using it", "tools",
        )
    seeded = stats.taxonomy.covered
    if seeded and stats.stages:
        makers["coverage"] = lambda: plots.heatmap(
            [c.name for c in seeded], [f"{s.index} {s.name}" for s in stats.stages],
            [[c.done_by_stage.get(s.index, 0) for s in stats.stages] for c in seeded],
            "Items done per category and stage", "coverage",
        )
    return makers


def pass_ratio_buckets(ratios: tuple[float, ...]) -> dict[str, int]:
    """Trajectories per pass-ratio bucket (exactly 0, the quarters, exactly 1: the trajectories stage's own buckets)."""
    from termigen_plugins.agent.stats import PASS_BUCKETS, pass_bucket

    counts = Counter(pass_bucket(r) for r in ratios)
    return {bucket: counts[bucket] for bucket in PASS_BUCKETS}


def _integer_bins(values: tuple[int, ...]) -> list[float]:
    """One bin per integer up to 40 distinct values, else about 30 bins: a step count is never split."""
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // 30))
    return [low - 0.5 + i * width for i in range((high - low) // width + 2)]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every string from the run is data
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_number, usd=_usd, secs=_seconds, pct=_percent, svg=_trusted_svg)
    return env


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}" if isinstance(value, float) else str(value)


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _trusted_svg(svg: str) -> Any:
    """matplotlib's SVG output (it escapes every label it writes) goes in as markup."""
    from markupsafe import Markup

    return Markup(svg)  # noqa: S704 - produced by plots.to_svg from escaped matplotlib output
