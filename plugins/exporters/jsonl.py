"""The ``jsonl`` exporter: every item, one JSON object per line.

The lossless dump of a run (id, kind, data, meta, parent), for inspection, for
tools that do their own conversion, and as the fixture other exporters are
compared with. The file is written next to its final path and moved into
place with ``os.replace``, so a crash never leaves a half-written export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, Exporter

from .sft import atomic_write

if TYPE_CHECKING:
    from termigen_core.context import ExportContext
    from termigen_core.items import Item


class JsonlExporter(Exporter):
    """Write items (optionally only some kinds) as JSON Lines."""

    name = "jsonl"
    description = "Every item as one JSON object per line (id, kind, data, meta, parent)."

    class Config(ComponentConfig):
        #: Output file; relative paths are inside the run directory.
        path: str = "export/items.jsonl"
        #: Only items of these kinds (empty: all).
        kinds: list[str] = Field(default_factory=list)

    config: Config

    def export(self, items: list["Item"], ctx: "ExportContext") -> dict[str, Any]:
        wanted = set(self.config.kinds)
        selected = [item for item in items if not wanted or item.kind in wanted]
        path = ctx.output_path(self.config.path)
        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as out:  # streamed: a big run's items never held as one string
                for item in selected:
                    record = {"id": item.id, "kind": item.kind, "data": item.data, "meta": item.meta, "parent": item.parent}
                    out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

        atomic_write(path, write)
        ctx.log("jsonl: wrote %d item(s) to %s", len(selected), path)
        return {"path": str(path), "count": len(selected)}


@hookimpl
def register_exporters() -> list[type[Exporter]]:
    return [JsonlExporter]
