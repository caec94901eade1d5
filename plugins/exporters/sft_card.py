"""The dataset card (``README.md`` with Hugging Face YAML front matter) and the split by task.

Every SFT exporter adds its own ``configs`` entry (its files per split) and its
statistics to the card in its output folder, so ``export/sft/`` is a ready
dataset repository whatever subset of exporters a run uses. A README.md that
termigen did not write is never overwritten.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from termigen_core.records import TrajectoryRecord

from . import sft_format as fmt

if TYPE_CHECKING:
    from termigen_core.config import SplitSection

TAGS = ["termigen", "terminal-agent", "tool-calling", "sft", "synthetic"]
MARK = "termigen"


def split_of(task_id: str, split: "SplitSection") -> str:
    """``train`` or ``validation`` for a task: a stable hash of (seed, task id), never of the trajectory,
    so all trajectories of one task land in the same split."""
    if split.validation <= 0:
        return "train"
    digest = hashlib.sha256(f"{split.seed}:{task_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < split.validation else "train"


def split_paths(path: Path, splits: list[str]) -> dict[str, Path]:
    """The file of each split: ``path`` for train, ``<stem>.validation<suffix>`` beside it."""
    return {name: path if name == "train" else path.with_name(f"{path.stem}.{name}{path.suffix}") for name in splits}


def statistics(records: list[TrajectoryRecord], train_on: str) -> dict[str, Any]:
    """What the card reports: trajectories, tasks, resolved rate, models, error modes, masked turns."""
    modes: Counter[str] = Counter(s.error_mode or "unlabelled" for r in records for s in r.steps if s.intent == "error")
    return {
        "trajectories": len(records),
        "tasks": len({r.task_id for r in records}),
        "resolved_rate": round(sum(r.resolved for r in records) / len(records), 4) if records else 0.0,
        "models": sorted({r.model for r in records if r.model}),
        "assistant_turns": sum(len(r.steps) for r in records),
        "masked_turns": sum(fmt.masked_turns(r, train_on) for r in records),
        "error_modes": dict(sorted(modes.items())),
        "train_on": train_on,
    }


def read_front_matter(readme: Path) -> dict[str, Any] | None:
    """The YAML front matter of ``readme`` ({} if absent); None if the file is not termigen's."""
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return None
    head, sep, _ = text[4:].partition("\n---\n")
    try:
        data = yaml.safe_load(head) if sep else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) and MARK in data else None


#: Arrow type names that ``datasets`` spells differently in a card's ``features``.
_DTYPE_NAMES = {"double": "float64", "float": "float32", "halffloat": "float16"}


def hf_features(schema: Any) -> list[dict[str, Any]]:
    """A pyarrow schema as the ``features`` list of a dataset card (the form ``datasets`` writes and reads)."""
    return [{"name": f.name, **_hf_type(f.type)} for f in schema]


def _hf_type(arrow_type: Any) -> dict[str, Any]:
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        return {"struct": [{"name": f.name, **_hf_type(f.type)} for f in arrow_type]}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        inner = _hf_type(arrow_type.value_type)
        if set(inner) == {"dtype"}:
            return {"list": inner["dtype"]}
        return {"list": inner["struct"] if set(inner) == {"struct"} else inner}
    return {"dtype": _DTYPE_NAMES.get(str(arrow_type), str(arrow_type))}


def card_dataset_info(config_name: str, rows: dict[str, list[dict[str, Any]]], *, with_features: bool) -> dict[str, Any]:
    """The card's ``dataset_info`` entry of one config: its features (as ``datasets`` infers them from
    the rows). ``datasets`` applies declared features when it loads the
    folder, so a format whose inferred features differ between ``datasets`` versions declares none."""
    import pyarrow as pa

    info: dict[str, Any] = {"config_name": config_name}
    if with_features:
        sample = [row for part in rows.values() for row in part]
        if sample:
            info["features"] = hf_features(pa.Table.from_pylist(sample).schema)
    # no ``splits``: datasets wants their Arrow byte sizes, which only it can compute; the examples
    # per split are in the termigen block and the table below
    return info


def update_card(
    folder: Path, *, config_name: str, files: dict[str, Path], stats: dict[str, Any], license: str, run_id: str,
    info: dict[str, Any] | None = None,
) -> Path | None:
    """Add or replace ``config_name`` in ``folder/README.md``; None when the README is someone else's.

    ``info`` (see :func:`card_dataset_info`) makes the format a loadable config of the folder; without
    it, the format is described in the card's text only (a folder is loaded with one ``datasets``
    builder, chosen by its first config's files: JSON and parquet configs cannot share a card).
    """
    readme = folder / "README.md"
    front = read_front_matter(readme)
    if front is None:
        return None
    configs = [c for c in front.get("configs", []) if c.get("config_name") != config_name]
    infos = [i for i in front.get("dataset_info", []) if i.get("config_name") != config_name]
    if info is not None:
        configs.append({
            "config_name": config_name,
            "data_files": [{"split": split, "path": str(path.relative_to(folder))} for split, path in files.items()],
        })
        infos.append(info)
    configs.sort(key=lambda c: c["config_name"])
    infos.sort(key=lambda i: i["config_name"])
    ours = dict(front.get(MARK) or {})
    ours["run_id"] = run_id
    ours.setdefault("exports", {})[config_name] = {**stats, "files": {split: str(path.relative_to(folder)) for split, path in files.items()}}
    front = {
        "license": license,
        "tags": TAGS,
        "task_categories": ["text-generation"],
        "language": ["en"],
        "pretty_name": "termigen terminal-agent trajectories",
        "configs": configs,
        "dataset_info": infos,
        MARK: ours,
    }
    from .sft import write_text  # the atomic writer shared by the exporters

    write_text(readme, "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + card_body(ours, {c["config_name"] for c in configs}))
    return readme


def card_body(ours: dict[str, Any], configs: set[str]) -> str:
    """The human part of the card: one row of statistics per exported format, and how to load each."""
    lines = [
        "# termigen terminal-agent trajectories\n",
        "Multi-turn trajectories of a terminal agent solving generated tasks in Docker environments,",
        f"exported by termigen (run `{ours.get('run_id', '')}`). Each format below holds the same conversations.\n",
        "| config | trajectories | tasks | resolved rate | assistant turns | masked turns | train_on | models | error modes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in sorted(ours.get("exports", {}).items()):
        modes = ", ".join(f"{k} {v}" for k, v in s.get("error_modes", {}).items()) or "none"
        lines.append(
            f"| {name} | {s['trajectories']} | {s['tasks']} | {s['resolved_rate']:.2f} | {s['assistant_turns']} | "
            f"{s['masked_turns']} | {s['train_on']} | {', '.join(s['models'])} | {modes} |"
        )
    lines.append(
        "\nMasked turns are assistant actions the generator injected as mistakes: they stay in the conversation "
        "as context and are excluded from the loss (OpenAI `weight: 0`, axolotl `train: false`, outside "
        "`{% generation %}` in `chat_template.jinja` for TRL, one example per kept turn with `mask_history` for LLaMA-Factory)."
    )
    lines.append("Splits, when present, are by task: one task's trajectories are never in two splits.\n")
    lines.append("## Loading\n")
    lines.append("```python\nimport datasets\n")
    for name, s in sorted(ours.get("exports", {}).items()):
        files = s.get("files") or {}
        if name in configs:
            lines.append(f'datasets.load_dataset("path/to/this/folder", "{name}")')
        elif files:
            kind = "parquet" if str(files.get("train", "")).endswith(".parquet") else "json"
            spec = ", ".join(f'"{split}": "{path}"' for split, path in files.items())
            lines.append(f'datasets.load_dataset("{kind}", data_files={{{spec}}})  # {name}')
    lines.append("```\n")
    return "\n".join(lines)
