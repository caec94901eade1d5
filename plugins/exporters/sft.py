"""SFT exporters for Phase II trajectories: ``openai_jsonl``, ``sharegpt``, ``parquet``, ``axolotl``.

Each reads items of kind ``trajectory`` (``item.data = {"task", "trajectory"}``),
keeps those whose ``pass_ratio`` reaches ``min_pass_ratio`` (the paper's
inclusion threshold: it finds that imperfect trajectories help, so the default
keeps everything), and writes one training conversation per trajectory through
:mod:`.sft_format`, so every format teaches the same thing.

What is trained on is one run-level choice, ``dataset.train_on``
(:class:`termigen_core.config.DatasetSection`), realised in each trainer's own
mechanism, because a per-exporter switch let the files of one run disagree:

- ``openai_jsonl``: ``weight: 0`` on masked assistant turns (OpenAI fine-tuning);
  each line holds only ``messages`` and ``tools`` (the API rejects other keys);
  the metadata goes to ``<stem>.meta.jsonl``, one line per example, same order.
- ``axolotl``: a per-message ``train`` flag (``message_field_training: train``)
  and the dataset config snippet ``axolotl.yaml`` next to the data.
- ``parquet``: typed columns (``tools`` as structs with ``parameters`` a JSON
  string, so two tools never merge schemas) and ``chat_template.jinja`` for TRL,
  whose ``{% generation %}`` blocks leave masked turns out of the loss.
- ``sharegpt`` (LLaMA-Factory): no per-turn loss exists there, so under
  ``no_injected_errors`` each kept turn becomes its own example ending with it,
  trained with ``mask_history: true`` (written in ``llamafactory.yaml``).

Files are written next to their final path and moved into place, so a crash
never leaves a truncated dataset behind. ``dataset.split`` splits by task.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

import yaml
from pydantic import Field, model_validator

from termigen_core import fileio, hookimpl
from termigen_core.components import ComponentConfig, Exporter
from termigen_core.config import effective_train_on
from termigen_core.records import TrajectoryRecord

from . import sft_card as card
from . import sft_format as fmt
from .taskfiles import check_target

if TYPE_CHECKING:
    from termigen_core.context import ExportContext
    from termigen_core.items import Item

Kept = list[tuple["Item", TrajectoryRecord]]

class SFTConfig(ComponentConfig):
    path: str = Field(description="output file; relative paths are inside the run directory")
    min_pass_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="keep trajectories whose pass ratio is at least this")
    zero_weight_errors: bool | None = Field(
        default=None,
        description="deprecated: use dataset.train_on (true means no_injected_errors; contradicting it is an error)",
    )


class MessagesConfig(SFTConfig):
    observation_role: Literal["tool", "user"] = Field(
        default="tool", description="role of observation messages: tool, or user as a text-only agent sends them"
    )


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """An export file written whole (:func:`termigen_core.fileio.atomic_write`) at a path an export may use."""
    check_target(path, folder=False)
    fileio.atomic_write(path, write)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def exclusion_reason(record: TrajectoryRecord, min_pass_ratio: float) -> str | None:
    """Why an SFT export leaves ``record`` out (None: it is kept); also what the run browser shows."""
    if record.pass_ratio < min_pass_ratio:
        return "below min_pass_ratio"
    if not record.steps:
        return "no steps"
    return None


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


class SFTExporter(Exporter):
    """Shared selection, run-level masking, split by task, dataset card; subclasses render and write."""

    Config = SFTConfig
    config: SFTConfig
    #: the card's config name for this format
    card_name = ""

    def selected(self, items: list["Item"], ctx: "ExportContext") -> tuple[Kept, Counter[str]]:
        """Trajectories that pass the filter, and how many were left out, by reason."""
        kept: Kept = []
        dropped: Counter[str] = Counter()
        found, invalid = fmt.trajectory_records(items, ctx.log, self.name)
        if invalid:
            dropped["invalid record"] += invalid
        for item, record in found:
            reason = exclusion_reason(record, self.config.min_pass_ratio)
            if reason:
                dropped[reason] += 1
            else:
                kept.append((item, record))
        return kept, dropped

    def plan(self, items: list["Item"], ctx: "ExportContext") -> tuple[Kept, Counter[str], str, Path, dict[str, Kept]]:
        """What every SFT export starts from: kept trajectories, drops, train_on, output path, splits."""
        kept, dropped = self.selected(items, ctx)
        return kept, dropped, self.train_on(ctx), ctx.output_path(self.config.path), self.by_split(kept, ctx)

    def train_on(self, ctx: "ExportContext") -> str:
        """The run's ``dataset.train_on`` with this exporter's legacy ``zero_weight_errors`` folded in."""
        return effective_train_on(ctx.dataset_settings().train_on, self.config.zero_weight_errors, f"{self.name}: ")

    def by_split(self, kept: Kept, ctx: "ExportContext") -> dict[str, Kept]:
        """The kept trajectories per split (``train`` only without ``dataset.split.validation``)."""
        split = ctx.dataset_settings().split
        out: dict[str, Kept] = {"train": []}
        if split.validation > 0:
            out["validation"] = []
        for item, record in kept:
            out[card.split_of(record.task_id, split)].append((item, record))
        return out

    def write_splits(self, path: Path, rows: dict[str, list[dict[str, Any]]], render: Callable[[list[dict[str, Any]]], str]) -> dict[str, Path]:
        """Write ``render(rows)`` of each split to its file; the file of each split, by split name."""
        files = card.split_paths(path, list(rows))
        for name, part_rows in rows.items():
            write_text(files[name], render(part_rows))
        return files

    #: whether the format is a loadable config of the card (JSON formats; see :func:`card.update_card`)
    card_config = True
    #: whether the card declares the config's features (only when every ``datasets`` version infers the same)
    card_features = True

    def finish(
        self, ctx: "ExportContext", kept: Kept, files: dict[str, Path], train_on: str,
        rows: dict[str, list[dict[str, Any]]] | None = None,
    ) -> Path | None:
        """Record this format in the folder's dataset card (when ``dataset.card``); ``rows`` are the
        examples written per split, from which the card's features and split sizes come."""
        settings = ctx.dataset_settings()
        if not settings.card:
            return None
        folder = files["train"].parent
        if any(f.parent != folder for f in files.values()):
            return None
        stats = card.statistics([r for _, r in kept], train_on)
        name = self.card_name or self.name
        info = card.card_dataset_info(name, rows, with_features=self.card_features) if self.card_config and rows is not None else None
        readme = card.update_card(folder, config_name=name, files=files, stats=stats,
                                  license=settings.license, run_id=ctx.run_id, info=info)
        if readme is None:
            ctx.log("%s: %s/README.md was not written by termigen; the dataset card is left alone", self.name, folder)
        return readme

    def result(self, files: dict[str, Path], counts: dict[str, int], dropped: Counter[str], train_on: str, **extra: Any) -> dict[str, Any]:
        return {
            "path": str(files["train"]),
            "count": sum(counts.values()),
            "splits": {name: {"path": str(files[name]), "count": n} for name, n in counts.items()},
            "train_on": train_on,
            "filtered_out": sum(dropped.values()),
            "filtered_reasons": dict(dropped),
            **extra,
        }

    @staticmethod
    def task_of(item: "Item") -> dict[str, Any]:
        task = item.data.get("task")
        return task if isinstance(task, dict) else {}

    def openai_examples(self, kept: Kept, train_on: str, arguments_as: str = "string") -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(example, metadata) per trajectory: the example holds only OpenAI's keys."""
        observation_role = getattr(self.config, "observation_role", "tool")
        for item, record in kept:
            messages = fmt.to_openai_messages(record, train_on=train_on, arguments_as=arguments_as, observation_role=observation_role)
            yield {"messages": messages, "tools": fmt.openai_tools(record)}, fmt.metadata(record, self.task_of(item), item_id=item.id)


class OpenAIJsonlExporter(SFTExporter):
    """OpenAI fine-tuning JSONL (messages with tool calls, tools, weight 0/1) and a metadata sidecar."""

    name = "openai_jsonl"
    card_name = "openai"
    # each tool's parameters have their own properties: datasets < 4.x merges them into one struct
    # (bash gains summary: null) where newer releases infer Json; declaring either would impose it
    card_features = False
    description = "Trajectories as OpenAI fine-tuning JSONL (tool_calls, tools, weight 0/1) plus <stem>.meta.jsonl."

    class Config(MessagesConfig):
        path: str = "export/sft/openai.jsonl"
        arguments_as: Literal["string", "object"] = Field(
            default="string", description="tool-call arguments as a JSON string (OpenAI) or an object (Qwen2.5-style templates)"
        )

    config: Config

    def export(self, items: list["Item"], ctx: "ExportContext") -> dict[str, Any]:
        kept, dropped, train_on, path, parts = self.plan(items, ctx)
        sidecars: dict[str, str] = {}
        rows: dict[str, list[dict[str, Any]]] = {}
        for name, part in parts.items():
            pairs = list(self.openai_examples(part, train_on, self.config.arguments_as))
            rows[name] = [ex for ex, _ in pairs]
            target = card.split_paths(path, [name])[name]
            write_text(target, jsonl(rows[name]))
            meta = target.with_name(f"{target.stem}.meta.jsonl")
            write_text(meta, jsonl([{"id": m["trajectory_id"], "line": n, **m} for n, (_, m) in enumerate(pairs)]))
            sidecars[name] = str(meta)
        files = card.split_paths(path, list(parts))
        self.finish(ctx, kept, files, train_on, rows)
        ctx.log("openai_jsonl: wrote %d example(s) to %s (%d filtered out)", len(kept), path, sum(dropped.values()))
        return self.result(files, {n: len(p) for n, p in parts.items()}, dropped, train_on, metadata=sidecars)


#: LLaMA-Factory template families (by name prefix) that crash on function_call/observation
#: turns in 0.9.5 ("Invalid JSON format in function message"): their turns are written as text.
TEXT_ONLY_TEMPLATES = ("gemma", "mistral", "llama2", "lfm2", "paligemma")
#: Families whose tool format is the Hermes ``<tool_call>`` block the agent itself writes.
HERMES_TEMPLATES = ("qwen",)
#: The oldest LLaMA-Factory release that reads our function_call turns (0.9.3 and older crash on them).
MIN_LLAMAFACTORY = "0.9.4"


class ShareGPTExporter(SFTExporter):
    """LLaMA-Factory ShareGPT JSON rendered for one chat template, its dataset_info.json entry and training args."""

    name = "sharegpt"
    card_name = "sharegpt"
    description = "Trajectories as LLaMA-Factory ShareGPT JSON for a chat template, plus dataset_info.json and llamafactory.yaml."

    class Config(SFTConfig):
        path: str = "export/sft/sharegpt.json"
        dataset_name: str = Field(default="termigen_trajectories", min_length=1, description="the key in dataset_info.json")
        template: str = Field(default="qwen", min_length=1, description="the LLaMA-Factory chat template the data is rendered for")
        call_style: Literal["function_call", "text"] | None = Field(
            default=None,
            description="assistant turns as function_call (reasoning + <tool_call>) or gpt text (default: by template)",
        )

        @model_validator(mode="after")
        def _template_accepts_calls(self) -> "ShareGPTExporter.Config":
            if self.call_style == "function_call" and self.template.lower().startswith(TEXT_ONLY_TEMPLATES):
                raise ValueError(
                    f"template {self.template!r} crashes on function_call turns in LLaMA-Factory; "
                    "leave call_style unset (text is chosen for it) or set call_style: text"
                )
            return self

    config: Config

    def style(self) -> tuple[str, str]:
        """(call_style, system-prompt instructions) for the template, so prompt and calls agree."""
        template = self.config.template.lower()
        style = self.config.call_style or ("text" if template.startswith(TEXT_ONLY_TEMPLATES) else "function_call")
        if style == "text" or template.startswith(HERMES_TEMPLATES):
            return style, "hermes"  # the text, or the template, writes <tool_call> blocks
        return style, "neutral"  # the template renders calls in its own syntax

    def examples(self, item: "Item", record: TrajectoryRecord, train_on: str) -> list[dict[str, Any]]:
        style, instructions = self.style()
        example = fmt.to_sharegpt(record, train_on=train_on, call_style=style, instructions=instructions, with_tools=style != "text")
        if fmt.sharegpt_problems(example["conversations"]):
            return []
        example["metadata"] = fmt.metadata(record, self.task_of(item), item_id=item.id)
        return fmt.kept_turn_examples(example) if train_on == "no_injected_errors" else [example]

    def export(self, items: list["Item"], ctx: "ExportContext") -> dict[str, Any]:
        kept, dropped, train_on, path, parts = self.plan(items, ctx)
        rows = {name: [ex for item, record in part for ex in self.examples(item, record, train_on)] for name, part in parts.items()}
        counts = {name: len(r) for name, r in rows.items()}
        files = self.write_splits(path, rows, lambda part_rows: json.dumps(part_rows, ensure_ascii=False, indent=1) + "\n")
        info_path = path.parent / "dataset_info.json"
        write_text(info_path, json.dumps(self.merged_dataset_info(info_path, files), ensure_ascii=False, indent=2) + "\n")
        args_path = path.parent / "llamafactory.yaml"
        write_text(args_path, self.training_args(train_on, "validation" in files))
        self.finish(ctx, kept, files, train_on, rows)
        ctx.log("sharegpt: wrote %d example(s) for template %s to %s", sum(counts.values()), self.config.template, path)
        return self.result(files, counts, dropped, train_on, dataset_info=str(info_path), training_args=str(args_path),
                           template=self.config.template, call_style=self.style()[0], trajectories=len(kept))

    def training_args(self, train_on: str, validation: bool) -> str:
        """The LLaMA-Factory arguments the data needs (merge into a training YAML)."""
        args: dict[str, Any] = {
            "dataset": self.config.dataset_name,
            "template": self.config.template,
            # no_injected_errors: each example ends with the one turn it trains (see kept_turn_examples)
            "mask_history": train_on == "no_injected_errors",
            "train_on_prompt": False,
        }
        if validation:
            args["eval_dataset"] = f"{self.config.dataset_name}_validation"
        note = f"# termigen: LLaMA-Factory >= {MIN_LLAMAFACTORY}; dataset.train_on: {train_on}\n"
        return note + yaml.safe_dump(args, sort_keys=False)

    def dataset_info_entry(self, file_name: str) -> dict[str, Any]:
        """The LLaMA-Factory dataset description for the exported file."""
        columns = {"messages": "conversations", "system": "system"}
        if self.style()[0] != "text":
            columns["tools"] = "tools"
        return {"file_name": file_name, "formatting": "sharegpt", "columns": columns, "tags": dict(fmt.SHAREGPT_TAGS)}

    def merged_dataset_info(self, info_path: Path, files: dict[str, Path]) -> dict[str, Any]:
        """An existing dataset_info.json (e.g. LLaMA-Factory's data folder) with our entries set."""
        info: dict[str, Any] = {}
        if info_path.is_file():
            try:
                loaded = json.loads(info_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{info_path} exists but is not valid JSON ({exc}); fix or remove it") from exc
            if not isinstance(loaded, dict):
                raise ValueError(f"{info_path} exists but is not a JSON object; fix or remove it")
            info = loaded
        for split, file in files.items():
            key = self.config.dataset_name if split == "train" else f"{self.config.dataset_name}_{split}"
            info[key] = self.dataset_info_entry(file.name)
        return info


def trl_template() -> str:
    """The shipped TRL chat template (ChatML/Hermes with ``{% generation %}`` around trained turns)."""
    return resources.files("termigen_plugins.exporters.templates.trl").joinpath("chat_template.j2").read_text(encoding="utf-8")


class ParquetExporter(SFTExporter):
    """Hugging Face datasets parquet of OpenAI-format examples with typed columns, and TRL's chat template."""

    name = "parquet"
    card_name = "parquet"
    # the card's configs are JSON files (one datasets builder per folder): parquet is loaded by its file
    card_config = False
    description = "Trajectories as typed parquet (messages, tools, metadata) plus chat_template.jinja for TRL."

    class Config(MessagesConfig):
        path: str = "export/sft/trajectories.parquet"
        trl_template: bool = Field(default=True, description="write chat_template.jinja (TRL assistant_only_loss) beside the file")

    config: Config

    def export(self, items: list["Item"], ctx: "ExportContext") -> dict[str, Any]:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:  # reported as this exporter's error; the run's items stay in the store
            raise RuntimeError("the parquet exporter needs pyarrow: pip install pyarrow") from exc
        kept, dropped, train_on, path, parts = self.plan(items, ctx)
        files = card.split_paths(path, list(parts))
        for name, part in parts.items():
            rows = [
                {**ex, "tools": fmt.string_parameter_tools(record), "metadata": meta}
                for (ex, meta), (_, record) in zip(self.openai_examples(part, train_on), part)
            ]
            table = pa.Table.from_pylist(rows, schema=parquet_schema(pa))
            atomic_write(files[name], lambda tmp, table=table: pq.write_table(table, tmp))
        extra: dict[str, Any] = {}
        if self.config.trl_template:
            template_path = path.parent / "chat_template.jinja"
            write_text(template_path, trl_template())
            extra["chat_template"] = str(template_path)
        self.finish(ctx, kept, files, train_on)
        ctx.log("parquet: wrote %d example(s) to %s", len(kept), path)
        return self.result(files, {n: len(p) for n, p in parts.items()}, dropped, train_on, **extra)


def parquet_schema(pa: Any) -> Any:
    """The table's schema, fixed so that every export (and every shard) has the same features."""
    string = pa.string()
    call = pa.struct([
        ("id", string),
        ("type", string),
        ("function", pa.struct([("name", string), ("arguments", string)])),
    ])
    message = pa.struct([
        ("role", string),
        ("content", string),
        ("tool_calls", pa.list_(call)),
        ("tool_call_id", string),
        ("weight", pa.int8()),
    ])
    meta = pa.struct([
        ("task_id", string),
        ("trajectory_id", string),
        ("item_id", string),
        ("run_id", string),
        ("model", string),
        ("seed", pa.int64()),
        ("resolved", pa.bool_()),
        ("pass_ratio", pa.float64()),
        ("tests_passed", pa.int64()),
        ("tests_total", pa.int64()),
        ("finished", pa.bool_()),
        ("category", string),
        ("difficulty", string),
        ("agent_format", string),
        ("steps", pa.int64()),
        ("error_steps", pa.list_(pa.int64())),
        ("error_modes", pa.list_(string)),
        ("recovery_steps", pa.list_(pa.int64())),
    ])
    # tools as structs whose parameters is a JSON string: typed, and two tools never merge schemas
    tool = pa.struct([("type", string), ("function", pa.struct([("name", string), ("description", string), ("parameters", string)]))])
    return pa.schema([("messages", pa.list_(message)), ("tools", pa.list_(tool)), ("metadata", meta)])


@hookimpl
def register_exporters() -> list[type[Exporter]]:
    from .axolotl import AxolotlExporter

    return [OpenAIJsonlExporter, ShareGPTExporter, ParquetExporter, AxolotlExporter]
