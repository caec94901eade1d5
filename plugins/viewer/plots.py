"""The report's plots: matplotlib figures rendered to SVG text, to be inlined in ``report.html``.

Inline SVG keeps the page one self-contained file that works offline. Text stays text
(``svg.fonttype = none``: small, searchable, drawn with the reader's sans-serif font, nothing to
download), ids are derived from a fixed salt per plot (``svg.hashsalt``) and the date is left out,
so the same run gives the same bytes. Figures are made with :class:`matplotlib.figure.Figure`
directly, never through pyplot's global state, on the ``Agg`` backend (no display needed).
Labels are data (tool names, reasons, categories): mathtext is off, so a ``$`` is just a dollar.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ParamSpec

import matplotlib

matplotlib.use("Agg")

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Outcome colours shared by every plot (colour-blind-safe Okabe-Ito palette).
COLOURS = {
    "done": "#009E73",
    "rejected": "#E69F00",
    "failed: infrastructure": "#D55E00",
    "failed: task": "#CC79A7",
    "pending": "#999999",
    "primary": "#0072B2",
    "secondary": "#56B4E9",
    "muted": "#BBBBBB",
}
#: Longest label drawn in full; longer ones end with "…" (the tables have them whole).
MAX_LABEL = 48
_RC = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Figure, name: str) -> str:
    """``fig`` as an ``<svg>`` element (no XML prolog), with ids salted by ``name``."""
    buffer = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": f"termigen-{name}"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    start = text.find("<svg")
    svg = text[start:] if start >= 0 else text
    return svg.replace("<svg ", f'<svg role="img" aria-label="{_attr(name)}" class="plot" ', 1)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


P = ParamSpec("P")


def _styled(draw: Callable[P, str]) -> Callable[P, str]:
    """Draw inside the report's rc settings (fonts, spines), so every figure looks alike."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> str:
        with matplotlib.rc_context(_RC):
            return draw(*args, **kwargs)

    return wrapper


@_styled
def funnel(stages: Sequence[str], outcomes: Mapping[str, Sequence[int]], name: str = "funnel") -> str:
    """Horizontal stacked bars: per stage, items done / rejected / failed / pending."""
    fig = _figure(7.5, 0.42 * len(stages) + 1.4)
    ax = fig.add_subplot()
    left = [0] * len(stages)
    positions = list(range(len(stages)))[::-1]
    for outcome, values in outcomes.items():
        ax.barh(positions, values, left=left, color=COLOURS.get(outcome, COLOURS["muted"]), label=outcome, height=0.7)
        left = [a + b for a, b in zip(left, values)]
    ax.set_yticks(positions, [_short(s) for s in stages])
    ax.set_xlabel("items")
    ax.set_title("Items per stage and outcome")
    fig.legend(loc="outside lower center", fontsize=8, frameon=False, ncols=len(outcomes))
    _integer_axis(ax, "x")
    return to_svg(fig, name)


@_styled
def bars(counts: Mapping[str, float], title: str, xlabel: str, name: str, *, colours: Mapping[str, str] | None = None) -> str:
    """Horizontal bars, largest first (reasons, error modes, tools, domains)."""
    labels = list(counts)
    fig = _figure(7.5, 0.3 * len(labels) + 1.0)
    ax = fig.add_subplot()
    positions = list(range(len(labels)))[::-1]
    colour = [(colours or {}).get(label, COLOURS["primary"]) for label in labels]
    ax.barh(positions, [counts[k] for k in labels], color=colour, height=0.7)
    ax.set_yticks(positions, [_short(k) for k in labels])
    for position, label in zip(positions, labels):
        ax.annotate(f"{counts[label]:g}", (counts[label], position), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    _integer_axis(ax, "x")
    return to_svg(fig, name)


@_styled
def histogram(
    values: Sequence[float], title: str, xlabel: str, name: str, *, bins: int | Sequence[float] = 20, integer_x: bool = False,
) -> str:
    """A histogram of ``values`` (steps, tokens...); ``integer_x`` puts ticks on whole numbers only."""
    fig = _figure(3.8, 2.6)
    ax = fig.add_subplot()
    ax.hist(list(values), bins=bins, color=COLOURS["primary"], edgecolor="white", linewidth=0.5)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    _integer_axis(ax, "y")
    if integer_x:
        _integer_axis(ax, "x")
    _thousands(ax, "x")
    ax.tick_params(axis="x", labelrotation=30)
    return to_svg(fig, name)


@_styled
def count_columns(counts: Mapping[int, int] | Mapping[str, int], title: str, xlabel: str, name: str, *, ylabel: str = "tasks") -> str:
    """Columns of a small distribution, in the order given (build attempts, judge rounds, pass-ratio buckets)."""
    fig = _figure(3.8 if len(counts) > 4 else 3.2, 2.6)
    ax = fig.add_subplot()
    positions = range(len(counts))  # positions, not the labels: matplotlib logs about number-like category names
    ax.bar(positions, list(counts.values()), color=COLOURS["primary"], width=0.6)
    ax.set_xticks(positions, [str(k) for k in counts])
    if len(counts) > 4:
        ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _integer_axis(ax, "y")
    return to_svg(fig, name)


@_styled
def stacked_columns(groups: Sequence[str], series: Mapping[str, Sequence[int]], title: str, ylabel: str, name: str) -> str:
    """Vertical stacked columns (tokens per stage and role: uncached prompt, cache reads, completion)."""
    fig = _figure(7.5, 3.4)
    ax = fig.add_subplot()
    bottom = [0] * len(groups)
    palette = [COLOURS["primary"], COLOURS["secondary"], COLOURS["done"], COLOURS["rejected"]]
    for colour, (label, values) in zip(palette, series.items()):
        ax.bar(range(len(groups)), values, bottom=bottom, label=label, color=colour, width=0.7)
        bottom = [a + b for a, b in zip(bottom, values)]
    ax.set_xticks(range(len(groups)), [_short(g) for g in groups], rotation=35, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _thousands(ax, "y")
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return to_svg(fig, name)


@_styled
def heatmap(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[int]], title: str, name: str) -> str:
    """Counts in a grid (categories × stages), each cell labelled with its count."""
    import numpy

    grid = numpy.array(values, dtype=float) if rows and columns else numpy.zeros((1, 1))
    fig = _figure(7.5, 0.32 * max(len(rows), 1) + 1.6)
    ax = fig.add_subplot()
    # pcolormesh draws vector cells (imshow would embed a PNG in the SVG)
    ax.pcolormesh(grid, cmap="Blues", vmin=0, vmax=max(float(grid.max()), 1.0), edgecolors="white", linewidth=0.5)
    ax.invert_yaxis()
    ax.set_xticks([c + 0.5 for c in range(len(columns))], [_short(c) for c in columns], rotation=35, ha="right")
    ax.set_yticks([r + 0.5 for r in range(len(rows))], [_short(r) for r in rows])
    top = float(grid.max()) or 1.0
    for (r, c), value in numpy.ndenumerate(grid):
        if rows and columns:
            ax.text(c + 0.5, r + 0.5, f"{int(value)}", ha="center", va="center", fontsize=7, color="white" if value > top * 0.6 else "black")
    ax.set_title(title)
    ax.spines[:].set_visible(False)
    return to_svg(fig, name)


def _integer_axis(ax: Axes, which: str) -> None:
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if which == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _thousands(ax: Axes, which: str) -> None:
    """Plain numbers with thousands separators (12,000 rather than 1.2 with a 1e4 offset)."""
    from matplotlib.ticker import StrMethodFormatter

    (ax.xaxis if which == "x" else ax.yaxis).set_major_formatter(StrMethodFormatter("{x:,.0f}"))
