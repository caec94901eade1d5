"""The ``seeds`` stage: task seeds from a seed source, near-duplicates removed.

It starts a pipeline. The seed source (``taxonomy`` asks a model per category;
``file`` reads a list; plugins add more) is a component of its own, a
reference (``source: taxonomy`` or ``source: {use: file, with: {path: seeds.txt}}``),
so swapping where seeds come from never touches this stage. Each dropped duplicate is recorded in the run
store as a rejected item with the seed it repeats and the similarity score.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, ComponentRef, Stage, ref_field
from termigen_core.items import Item
from termigen_core.status import StepStatus

from .similarity import find_duplicates

if TYPE_CHECKING:
    from termigen_core.context import StageContext


class SeedsConfig(ComponentConfig):
    source: ComponentRef = ref_field("seed_source", default="taxonomy", description="the seed source: NAME or {use: NAME, with: {...}}")
    dedup_threshold: float = Field(default=0.7, gt=0, le=1, description="word-set similarity at which a seed is a duplicate")
    limit: int | None = Field(default=None, ge=1, description="keep at most this many seeds (per draw, in a campaign)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, data: Any) -> Any:
        """The old spelling, ``source: NAME`` plus ``options: {...}`` next to it, is folded into ``source.with``."""
        if not isinstance(data, dict) or "options" not in data:
            return data
        data = dict(data)
        options = data.pop("options")
        source = data.get("source", "taxonomy")
        if options in (None, {}):
            return data
        if isinstance(source, str):
            data["source"] = {"use": source, "with": options}
        elif isinstance(source, dict) and not source.get("with"):
            data["source"] = {**source, "with": options}
        else:
            raise ValueError("options: the seed source's options go under source.with (options: is the old spelling); not in both")
        return data


class SeedsStage(Stage):
    name = "seeds"
    description = "Task seeds from a seed source (taxonomy+LLM, file, ...), near-duplicates dropped."
    Config = SeedsConfig
    source = True
    draws_again = True
    produces = ("seed",)
    roles = ("seeder",)

    def produce(self, ctx: "StageContext") -> list[Item]:
        """The seeds of one draw: the first, or a later one a campaign (``run.target``) asks for.

        A later draw keeps only seeds that no earlier draw kept, neither the same seed
        nor a near-duplicate of one (``limit`` then applies to the new ones, so a seed
        file is handed out ``limit`` seeds per draw).
        """
        config: SeedsConfig = self.config  # type: ignore[assignment]
        source = ctx.component(config.source)
        earlier = ctx.store.source_outputs(ctx.stage_index, before_draw=ctx.draw) if ctx.draw else []
        earlier_ids = {item.id for item in earlier}
        earlier_seeds = [item.data for item in earlier]
        seeds = [dict(seed) for seed in source.seeds(ctx) if str(seed.get("text", "")).strip()]  # type: ignore[attr-defined]
        seeds = [seed for seed in seeds if _seed_id(seed) not in earlier_ids]
        found = find_duplicates([s["text"] for s in seeds], config.dedup_threshold, [s["text"] for s in earlier_seeds])
        duplicates = {d.index: d for d in found}
        items: list[Item] = []
        for index, seed in enumerate(seeds):
            item_id = _seed_id(seed)
            if index in duplicates:
                dup = duplicates[index]
                of = earlier_seeds[dup.of_index] if dup.of_earlier else seeds[dup.of_index]
                when = " drawn earlier" if dup.of_earlier else ""
                ctx.store.record_outcome(
                    item_id, 0, self.name, StepStatus.REJECTED,
                    f"near-duplicate (similarity {dup.score}) of seed{when}: {of['text']}",
                    json.dumps({"seed": seed, "duplicate_of": of}),
                )
                continue
            if any(existing.id == item_id for existing in items):
                continue
            if config.limit is not None and len(items) >= config.limit:
                break
            items.append(Item(id=item_id, kind="seed", data=seed, meta={"seed_source": config.source.use}))
        return items


def _seed_id(seed: dict[str, Any]) -> str:
    """Stable, readable ids: an imported task's own name, else category plus a hash of the text.

    A seed that carries a task record (the ``tasks`` seed source) keeps the
    task's folder name, so an imported task has the same id on every route.
    """
    task = seed.get("task")
    if isinstance(task, dict) and isinstance(task.get("id"), str) and task["id"].strip():
        return task["id"]
    category = str(seed.get("category") or "seed")
    digest = hashlib.sha256(seed["text"].strip().lower().encode()).hexdigest()[:8]
    return f"{category}-{digest}"


@hookimpl
def register_stages() -> list[type[Stage]]:
    return [SeedsStage]
