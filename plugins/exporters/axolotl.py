"""The ``axolotl`` exporter: a ``chat_template`` dataset with a per-message training flag.

axolotl's ``chat_template`` type reads ``message_field_training`` (here ``train``) on each
message and trains exactly the messages where it is true, so the run's
``dataset.train_on`` is honoured turn by turn. Tool-call ``arguments`` and each tool's
``parameters`` are JSON strings, which axolotl decodes, so ``datasets`` (4.x and 5.x)
infers one schema for every row instead of merging the two tools' parameters.
The dataset config snippet (``axolotl.yaml``) is written beside the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field

from . import sft_format as fmt
from .sft import SFTConfig, SFTExporter, jsonl, write_text

if TYPE_CHECKING:
    from termigen_core.context import ExportContext
    from termigen_core.items import Item


class AxolotlExporter(SFTExporter):
    """axolotl chat_template JSONL (messages with a ``train`` flag, tools) and its dataset config snippet."""

    name = "axolotl"
    card_name = "axolotl"
    description = "Trajectories as axolotl chat_template JSONL with a per-message train flag, plus axolotl.yaml."

    class Config(SFTConfig):
        path: str = "export/sft/axolotl.jsonl"
        chat_template: str = Field(default="tokenizer_default", min_length=1, description="axolotl's chat_template option")

    config: Config

    def export(self, items: list["Item"], ctx: "ExportContext") -> dict[str, Any]:
        kept, dropped, train_on, path, parts = self.plan(items, ctx)
        rows = {
            name: [
                {"id": record.id, "task_id": record.task_id, "messages": fmt.to_axolotl_messages(record, train_on=train_on),
                 "tools": fmt.string_parameter_tools(record)}
                for _, record in part
            ]
            for name, part in parts.items()
        }
        files = self.write_splits(path, rows, jsonl)
        snippet = path.parent / "axolotl.yaml"
        write_text(snippet, self.dataset_config(files, path.parent, train_on))
        self.finish(ctx, kept, files, train_on, rows)
        ctx.log("axolotl: wrote %d example(s) to %s and %s", len(kept), path, snippet)
        return self.result(files, {n: len(p) for n, p in parts.items()}, dropped, train_on, dataset_config=str(snippet))

    def dataset_config(self, files: dict[str, Path], folder: Path, train_on: str) -> str:
        """The ``datasets:`` (and ``test_datasets:``) entries to paste into an axolotl config."""

        def entry(path: Path) -> dict[str, Any]:
            return {
                "path": str(path.relative_to(folder)),
                "ds_type": "json",
                "type": "chat_template",
                "chat_template": self.config.chat_template,
                "field_messages": "messages",
                "field_tools": "tools",
                "message_property_mappings": {"role": "role", "content": "content"},
                "message_field_training": "train",
                "roles_to_train": ["assistant"],
                "train_on_eos": "turn",
            }

        config: dict[str, Any] = {"datasets": [entry(files["train"])]}
        if "validation" in files:
            config["test_datasets"] = [{**entry(files["validation"]), "split": "train"}]
        head = (
            f"# termigen: dataset.train_on: {train_on}; paths are relative to this folder.\n"
            "# Messages whose `train` is false (masked injected errors, prompts, observations) are not in the loss.\n"
        )
        return head + yaml.safe_dump(config, sort_keys=False)


__all__ = ["AxolotlExporter"]
