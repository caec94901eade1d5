"""An example termigen plugin: one error mode and one exporter.

It is the package the plugin author guide (docs/plugin-guide.md) walks
through. termigen finds it through the ``termigen`` entry-point group declared
in pyproject.toml, imports this module, and calls the ``@hookimpl`` functions
below to collect component classes. Nothing heavy is imported at module level:
termigen imports every installed plugin at start-up, even for ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# the public API: everything a plugin needs is importable from termigen_core itself
from termigen_core import ComponentConfig, ErrorMode, Exporter, hookimpl

if TYPE_CHECKING:  # annotations only: no import cost at start-up
    from termigen_core import ExportContext, Item


class OffByOnePath(ErrorMode):
    """Operate on a sibling or parent of the right directory: a realistic path slip."""

    name = "off_by_one_path"
    description = "Run the right command in a sibling or parent of the directory the task is about."
    instruction = (
        "Commit a PATH ERROR in this step: do the right thing in the wrong directory. Use the "
        "parent of the correct directory, or a sibling with a similar name (src/ for source/, "
        "app/config/ for app/conf/, ../build for ./build), as someone who misremembers the "
        "layout would. The command must fail or visibly find nothing (No such file or "
        "directory, an empty listing, 'no Makefile found'). Never write, move or delete files "
        "in the wrong place, and never reveal that the mistake is intentional."
    )
    critic_checklist = (
        "Accept the step only if: (1) the command is the right next action but aimed at a "
        "parent or sibling of the correct directory; (2) the wrong path is a plausible slip "
        "given the layout shown so far; (3) running it will report an error or an obviously "
        "empty result that points at the path; (4) it creates, moves or deletes nothing; "
        "(5) the reasoning does not hint that the error is deliberate."
    )
    examples = (
        "Running 'make' in /workspace instead of /workspace/project: "
        "'make: *** No targets specified and no makefile found.'",
        "Running 'pytest tests/' from inside /app/src instead of /app: "
        "'ERROR: file or directory not found: tests/'.",
    )
    weight = 1.0


class MarkdownReport(Exporter):
    """A human-readable table of the run's items, for a quick look or a PR description."""

    name = "markdown_report"
    description = "A Markdown table of items: id, kind, category, status/summary."

    class Config(ComponentConfig):
        #: Output file; relative paths are inside the run directory.
        path: str = "export/report.md"

    def export(self, items: list["Item"], ctx: "ExportContext") -> dict[str, Any]:
        path = ctx.output_path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            f"# termigen run {ctx.run_id}",
            "",
            f"{len(items)} item(s).",
            "",
            "| id | kind | category | status / summary |",
            "|---|---|---|---|",
        ]
        for item in items:
            category = item.data.get("category") or item.meta.get("category") or ""
            lines.append(f"| {_cell(item.id)} | {item.kind} | {_cell(category)} | {_cell(_summary(item))} |")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return {"path": str(path), "count": len(items)}


def _summary(item: "Item") -> str:
    """The item's status if a stage recorded one, else the first descriptive text field."""
    status = item.meta.get("status")
    for key in ("summary", "title", "text", "objective"):
        text = item.data.get(key)
        if isinstance(text, str) and text:
            return f"{status}: {text}" if status else text
    return str(status or "")


def _cell(value: Any, limit: int = 100) -> str:
    """One table cell: single line, pipes escaped, long text cut."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@hookimpl
def register_error_modes() -> list[type[ErrorMode]]:
    return [OffByOnePath]


@hookimpl
def register_exporters() -> list[type[Exporter]]:
    return [MarkdownReport]
